//! SQLite set-up shared by the services: WAL, busy timeout, foreign keys,
//! migrations that two replicas may run at once.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

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
    let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
    // Two replicas starting together race to migrate; the loser finds the work done.
    let mut attempt = 0;
    loop {
        match migrator.run(&pool).await {
            Ok(()) => return Ok(pool),
            Err(err) if attempt < 5 => {
                attempt += 1;
                tracing::warn!(%err, attempt, "migration failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
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
