//! The services' database: SQLite (the embedded default: one file, WAL, a busy
//! timeout, foreign keys) or Postgres, chosen by the URL, behind one `AnyPool`;
//! migrations that two replicas may run at once on either.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, Executor, Transaction};

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path/to/file.db`
    Sqlite,
    /// `postgres://user@host:5432/db` (or `postgresql://`)
    Postgres,
}

impl Backend {
    /// The database `url` names, or why it is none this service can use.
    pub fn of(url: &str) -> Result<Self, sqlx::Error> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("sqlite") => Ok(Self::Sqlite),
            Some("postgres" | "postgresql") => Ok(Self::Postgres),
            _ => Err(sqlx::Error::Configuration(
                format!(
                    "DATABASE_URL must be sqlite://PATH or postgres://USER@HOST:PORT/DATABASE, not {:?}",
                    url.split_once("://").map_or(url, |(scheme, _)| scheme)
                )
                .into(),
            )),
        }
    }

    /// The kind of the database this process opened last: what its spans say.
    /// (A process's services share one kind: the demo's all use SQLite.)
    fn in_use() -> Self {
        if IN_USE.load(Ordering::Relaxed) { Self::Postgres } else { Self::Sqlite }
    }

    fn of_pool(pool: &AnyPool) -> Self {
        Self::of(pool.connect_options().database_url.as_str()).unwrap_or(Self::Sqlite)
    }

    /// OpenTelemetry's `db.system.name`.
    fn system(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgresql",
        }
    }
}

static IN_USE: AtomicBool = AtomicBool::new(false);

/// A service's schema, once for each database.
#[derive(Debug)]
pub struct Migrations {
    /// For SQLite (`migrations/sqlite/<service>`).
    pub sqlite: &'static Migrator,
    /// The same schema for Postgres (`migrations/postgres/<service>`).
    pub postgres: &'static Migrator,
}

/// How many connections a service holds at most, and how long a request waits
/// for one: `DATABASE_MAX_CONNECTIONS` (default 8) and
/// `DATABASE_ACQUIRE_TIMEOUT_MS` (default 5000). A request that waits longer is
/// answered 503.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// The most connections open at once.
    pub max_connections: u32,
    /// How long to wait for a free one.
    pub acquire_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { max_connections: 8, acquire_timeout: Duration::from_secs(5) }
    }
}

impl PoolLimits {
    /// The limits the environment gives, or why they are wrong.
    pub fn from_env() -> Result<Self, String> {
        let read = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> Result<u64, String> {
            match std::env::var(name).ok().filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                    format!("{name} must be a whole number from {} to {}, not {v:?}", range.start(), range.end())
                }),
            }
        };
        let defaults = Self::default();
        Ok(Self {
            max_connections: read("DATABASE_MAX_CONNECTIONS", defaults.max_connections.into(), 1..=1000)? as u32,
            acquire_timeout: Duration::from_millis(read("DATABASE_ACQUIRE_TIMEOUT_MS", 5000, 1..=600_000)?),
        })
    }
}

/// The span of one database call, as OpenTelemetry's database conventions name
/// it (`SELECT products`): a child of the request's span, exported with it.
pub fn span(operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: "demo_services::db",
        "db",
        otel.name = format!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = Backend::in_use().system(),
        db.operation.name = operation,
        db.collection.name = table,
    )
}

/// [`connect_with`] with the [`PoolLimits`] the environment gives.
pub async fn connect(url: &str, migrations: &Migrations) -> Result<AnyPool, sqlx::Error> {
    let limits = PoolLimits::from_env().map_err(|err| sqlx::Error::Configuration(err.into()))?;
    connect_with(url, migrations, limits).await
}

/// Opens the database at `url` — `sqlite://path/to/file.db` (created if
/// missing) or `postgres://…` (the database must exist) — and brings its schema
/// up to date. Any other URL is refused here, before anything is made.
///
/// SQLite: WAL lets readers run beside the single writer; the busy timeout
/// makes a writer wait for another — in this process or in another replica on
/// the same file — instead of failing. Postgres: replicas migrating at once
/// wait for each other on sqlx's advisory lock.
pub async fn connect_with(url: &str, migrations: &Migrations, limits: PoolLimits) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    IN_USE.store(backend == Backend::Postgres, Ordering::Relaxed);
    let (options, migrator) = match backend {
        Backend::Sqlite => {
            // Read as SQLite reads it, to make its directory and to hand the
            // driver a URL that says "create if missing".
            let sqlite = SqliteConnectOptions::from_str(url)?;
            let file = sqlite.get_filename().to_owned();
            if let Some(dir) = file.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
            }
            (AnyConnectOptions::from_str(&format!("sqlite://{}?mode=rwc", file.display()))?, migrations.sqlite)
        }
        Backend::Postgres => (AnyConnectOptions::from_str(url)?, migrations.postgres),
    };
    let pool_options = AnyPoolOptions::new()
        .max_connections(limits.max_connections)
        .acquire_timeout(limits.acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // sqlx's SQLite defaults (WAL, a 5 s busy timeout, foreign keys)
                // hold through Any; only the sync level is ours.
                if backend == Backend::Sqlite {
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                }
                Ok(())
            })
        });
    // Two replicas starting together on a new SQLite file race twice: to switch
    // it to WAL, which needs an exclusive lock — when both ask at the same moment
    // SQLite refuses one with SQLITE_BUSY at once rather than wait into a
    // deadlock, busy timeout or not —, and to migrate, where the loser finds the
    // work done. Both are retried a few times, with a growing pause.
    let pool = retry("open", is_busy, || pool_options.clone().connect_with(options.clone())).await?;
    retry("migrate", |_| true, || async { migrator.run(&pool).await.map_err(sqlx::Error::from) }).await?;
    Ok(pool)
}

/// Runs `attempt` until it succeeds, `retryable` refuses its error, or it has
/// failed six times (pauses of 0.1 to 0.5 s between, 1.5 s in all).
async fn retry<T, F, Fut>(what: &str, retryable: fn(&sqlx::Error) -> bool, mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if failures < 5 && retryable(&err) => {
                failures += 1;
                tracing::warn!(%err, attempt = failures, "database {what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * failures)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// A failure of contention, not of the request, that a later try may not meet:
/// SQLite's SQLITE_BUSY (5) or SQLITE_LOCKED (6), extended codes (such as 517,
/// SQLITE_BUSY_SNAPSHOT) included; Postgres's serialization failure (40001),
/// deadlock (40P01) or lock not available (55P03).
pub(crate) fn is_busy(err: &sqlx::Error) -> bool {
    let Some(code) = err.as_database_error().and_then(|db| db.code()) else { return false };
    match code.parse::<u32>() {
        Ok(sqlite) => matches!(sqlite & 0xff, 5 | 6),
        Err(_) => matches!(&*code, "40001" | "40P01" | "55P03"),
    }
}

/// The key of the lock every write transaction of a Postgres database takes
/// (`pg_advisory_xact_lock`): "tgw" in ASCII.
const WRITE_LOCK: i64 = 0x74_67_77;

/// A write transaction that has the database's writes to itself until it ends,
/// as SQLite gives them: `BEGIN IMMEDIATE` there, so that two writers never both
/// read and then fail to upgrade; on Postgres, a transaction-scoped advisory
/// lock taken first, so that a read-then-write (an idempotency key claimed, a
/// reservation looked up then made, a signing key rotated) is never raced by
/// another replica's.
pub async fn begin_write(pool: &AnyPool) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match Backend::of_pool(pool) {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *tx).await?;
            Ok(tx)
        }
    }
}

/// Whether the database answers (for `/readyz`).
pub async fn ping(pool: &AnyPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::{ConnectOptions, Connection};

    use super::*;

    use sqlx::sqlite::SqliteJournalMode;

    static MIGRATIONS: &Migrations = &crate::products::MIGRATIONS;

    /// A file another connection holds locked makes opening it fail with an
    /// error [`connect`] retries; once the lock is let go, it opens.
    #[tokio::test]
    async fn a_locked_file_is_busy_to_open_and_opens_once_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("race.db").display());
        let other = SqliteConnectOptions::from_str(&url).unwrap().create_if_missing(true);
        let mut holder = other.connect().await.unwrap();
        sqlx::query("CREATE TABLE t (x)").execute(&mut holder).await.unwrap();
        let mut reading = holder.begin().await.unwrap();
        sqlx::query("SELECT * FROM t").fetch_all(&mut *reading).await.unwrap();

        let wal = other.clone().journal_mode(SqliteJournalMode::Wal).busy_timeout(Duration::ZERO);
        let refused = wal.connect().await.expect_err("the switch to WAL needs the file to itself");
        assert!(is_busy(&refused), "{refused}");

        reading.commit().await.unwrap();
        let pool = connect(&url, MIGRATIONS).await.unwrap();
        assert!(ping(&pool).await);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_after_six_busy_failures_and_not_at_all_on_others() {
        let tries = AtomicU32::new(0);
        let busy = || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(sqlx::Error::PoolTimedOut)
        };
        let started = tokio::time::Instant::now();
        assert!(retry("open", |_| true, busy).await.is_err());
        assert_eq!(tries.swap(0, Ordering::Relaxed), 6);
        assert_eq!(started.elapsed(), Duration::from_millis(100 + 200 + 300 + 400 + 500));

        assert!(retry("open", is_busy, busy).await.is_err());
        assert_eq!(tries.swap(0, Ordering::Relaxed), 1, "a failure that is not SQLITE_BUSY is not retried");

        let third_time = || async {
            let n = tries.fetch_add(1, Ordering::Relaxed);
            if n < 2 { Err(sqlx::Error::PoolTimedOut) } else { Ok(n) }
        };
        assert_eq!(retry("open", |_| true, third_time).await.unwrap(), 2);
    }
}
