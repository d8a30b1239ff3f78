//! The `events` table: every event a client can receive over SSE, in order. Its id is the SSE
//! event id, so a reconnecting client's gap is a range query.
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

/// One stored event. `data` is the JSON text sent as the SSE `data:` line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct EventRow {
    pub id: i64,
    pub run_id: i64,
    /// metrics | state | evaluation | checkpoint | log
    pub kind: String,
    pub data: String,
    pub created_at: String,
}

/// Appends an event; returns it with its id.
pub async fn insert(
    conn: &mut SqliteConnection,
    run_id: i64,
    kind: &str,
    data: &serde_json::Value,
) -> anyhow::Result<EventRow> {
    let created_at = super::now();
    let data = data.to_string();
    let id = sqlx::query("INSERT INTO events (run_id, kind, data, created_at) VALUES (?, ?, ?, ?)")
        .bind(run_id)
        .bind(kind)
        .bind(&data)
        .bind(&created_at)
        .execute(conn)
        .await
        .with_context(|| format!("cannot store a {kind} event of run {run_id}"))?
        .last_insert_rowid();
    Ok(EventRow {
        id,
        run_id,
        kind: kind.to_string(),
        data,
        created_at,
    })
}

/// Up to `limit` events of a run with id > `after_id`, in order.
pub async fn after(
    pool: &SqlitePool,
    run_id: i64,
    after_id: i64,
    limit: i64,
) -> anyhow::Result<Vec<EventRow>> {
    sqlx::query_as(
        "SELECT id, run_id, kind, data, created_at FROM events WHERE run_id = ? AND id > ? \
         ORDER BY id LIMIT ?",
    )
    .bind(run_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the events of run {run_id}"))
}

/// The id of the newest event (0 when there is none).
pub async fn last_id(pool: &SqlitePool) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// The kinds of event a run's log shows.
const LOG_KINDS: &str = "'log', 'state', 'evaluation', 'checkpoint'";

/// The newest `limit` events of a run's log (messages, state changes, evaluations, checkpoints),
/// oldest first.
pub async fn log_tail(pool: &SqlitePool, run_id: i64, limit: i64) -> anyhow::Result<Vec<EventRow>> {
    sqlx::query_as(&format!(
        "SELECT id, run_id, kind, data, created_at FROM (SELECT id, run_id, kind, data, \
         created_at FROM events WHERE run_id = ? AND kind IN ({LOG_KINDS}) ORDER BY id DESC \
         LIMIT ?) ORDER BY id"
    ))
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the log of run {run_id}"))
}

/// The id of run `run_id`'s newest event (0 when there is none).
pub async fn last_id_of_run(pool: &SqlitePool, run_id: i64) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = ?")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .with_context(|| format!("cannot read the events of run {run_id}"))?;
    Ok(n)
}
