//! The `evaluations` table: the kNN monitor's result after each evaluated epoch.
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct Evaluation {
    /// Epochs done when it was measured (1-based).
    pub epoch: i64,
    pub step: i64,
    /// Weighted kNN top-1, percent.
    pub knn_top1: f64,
    /// Which features were compared: "backbone" or "head".
    pub features: String,
    pub created_at: String,
}

/// Stores one result (a resumed run that evaluates an epoch again replaces it).
pub async fn insert(
    conn: &mut SqliteConnection,
    run_id: i64,
    epoch: i64,
    step: i64,
    knn_top1: f64,
    features: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT OR REPLACE INTO evaluations (run_id, epoch, step, knn_top1, features, created_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(run_id)
    .bind(epoch)
    .bind(step)
    .bind(knn_top1)
    .bind(features)
    .bind(super::now())
    .execute(conn)
    .await
    .with_context(|| format!("cannot store the evaluation of run {run_id}"))?;
    Ok(())
}

/// Every result of a run, by epoch.
pub async fn list(pool: &SqlitePool, run_id: i64) -> anyhow::Result<Vec<Evaluation>> {
    sqlx::query_as(
        "SELECT epoch, step, knn_top1, features, created_at FROM evaluations WHERE run_id = ? \
         ORDER BY epoch",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the evaluations of run {run_id}"))
}
