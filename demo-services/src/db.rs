//! SQLite set-up shared by the services: WAL, busy timeout, foreign keys,
//! migrations that two replicas may run at once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

/// The span of one database call, as OpenTelemetry's database conventions name
/// it (`SELECT products`): a child of the request's span, exported with it.
pub fn span(operation: &'static str, table: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: "demo_services::db",
        "db",
        otel.name = format!("{operation} {table}"),
        otel.kind = "client",
        db.system.name = "sqlite",
        db.operation.name = operation,
        db.collection.name = table,
    )
}

/// Opens (creating if needed) the database at `url` (`sqlite://path/to/file.db`)
/// and brings its schema up to date.
///
/// WAL lets readers run beside the single writer; the busy timeout makes a writer
/// wait for another — in this process or in another replica on the same file —
/// instead of failing.
pub async fn connect(url: &str, migrator: &Migrator) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    if let Some(dir) = options.get_filename().parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
    }
    // Two replicas starting together on a new file race twice: to switch it to
    // WAL, which needs an exclusive lock — when both ask at the same moment
    // SQLite refuses one with SQLITE_BUSY at once rather than wait into a
    // deadlock, busy timeout or not —, and to migrate, where the loser finds the
    // work done. Both are retried a few times, with a growing pause.
    let pool =
        retry("open", is_busy, || SqlitePoolOptions::new().max_connections(8).connect_with(options.clone())).await?;
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

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), extended codes (such as 517,
/// SQLITE_BUSY_SNAPSHOT) included.
pub(crate) fn is_busy(err: &sqlx::Error) -> bool {
    let code = err.as_database_error().and_then(|db| db.code()).and_then(|code| code.parse::<u32>().ok());
    matches!(code.map(|code| code & 0xff), Some(5 | 6))
}

/// A write transaction that takes the write lock up front (`BEGIN IMMEDIATE`), so
/// that two writers never both read and then fail to upgrade.
pub async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// Whether the database answers (for `/readyz`).
pub async fn ping(pool: &SqlitePool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::{ConnectOptions, Connection};

    use super::*;

    static MIGRATOR: Migrator = sqlx::migrate!("./migrations/products");

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
        let pool = connect(&url, &MIGRATOR).await.unwrap();
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
