//! SQLite through sqlx: opening the database (WAL, foreign keys, migrations) and the queries.
pub mod checkpoints;
pub mod evals;
pub mod evaluations;
pub mod events;
pub mod metrics;
pub mod runs;
pub mod sweeps;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Opens (creating if needed) the database file and applies the migrations in migrations/.
pub async fn open(path: &Path) -> anyhow::Result<SqlitePool> {
    let url = format!("sqlite://{}", path.display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .with_context(|| format!("cannot apply migrations to {}", path.display()))?;
    Ok(pool)
}

/// Whether the database answers (the health check).
pub async fn ping(pool: &SqlitePool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// Now, as the RFC 3339 text stored in the database.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339 formats any date")
}
