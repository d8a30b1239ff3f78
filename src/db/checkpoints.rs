//! The `checkpoints` table: every file a run wrote (full resumable state or encoder export), with
//! its size and SHA-256. Only files registered here are ever served.
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow)]
pub struct CheckpointRow {
    pub id: i64,
    pub run_id: i64,
    /// "full" or "encoder".
    pub kind: String,
    /// Relative to the data directory.
    pub path: String,
    pub epoch: i64,
    pub step: i64,
    pub size_bytes: i64,
    pub sha256: String,
    pub created_at: String,
}

const COLUMNS: &str = "id, run_id, kind, path, epoch, step, size_bytes, sha256, created_at";

/// A checkpoint as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub id: i64,
    pub kind: String,
    pub epoch: i64,
    pub step: i64,
    pub size_bytes: i64,
    pub sha256: String,
    pub created_at: String,
    pub download_url: String,
}

impl CheckpointRow {
    pub fn download_url(&self) -> String {
        download_url(self.run_id, self.id)
    }

    pub fn summary(&self) -> CheckpointSummary {
        CheckpointSummary {
            id: self.id,
            kind: self.kind.clone(),
            epoch: self.epoch,
            step: self.step,
            size_bytes: self.size_bytes,
            sha256: self.sha256.clone(),
            created_at: self.created_at.clone(),
            download_url: self.download_url(),
        }
    }

    /// The name a download is saved under: run-3-encoder-epoch10.safetensors.
    pub fn download_name(&self) -> String {
        let ext = std::path::Path::new(&self.path)
            .extension()
            .and_then(|e| e.to_str())
            .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()))
            .unwrap_or(if self.kind == "encoder" {
                "safetensors"
            } else {
                "ckpt"
            });
        format!(
            "run-{}-{}-epoch{}.{}",
            self.run_id,
            if self.kind == "encoder" {
                "encoder"
            } else {
                "full"
            },
            self.epoch,
            ext
        )
    }
}

pub fn download_url(run_id: i64, ckpt_id: i64) -> String {
    format!("/api/runs/{run_id}/checkpoints/{ckpt_id}/download")
}

/// A new checkpoint row; returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut SqliteConnection,
    run_id: i64,
    kind: &str,
    rel_path: &str,
    epoch: i64,
    step: i64,
    size_bytes: i64,
    sha256: &str,
) -> anyhow::Result<CheckpointRow> {
    let created_at = super::now();
    let id = sqlx::query(
        "INSERT INTO checkpoints (run_id, kind, path, epoch, step, size_bytes, sha256, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(run_id)
    .bind(kind)
    .bind(rel_path)
    .bind(epoch)
    .bind(step)
    .bind(size_bytes)
    .bind(sha256)
    .bind(&created_at)
    .execute(conn)
    .await
    .with_context(|| format!("cannot register a checkpoint of run {run_id}"))?
    .last_insert_rowid();
    Ok(CheckpointRow {
        id,
        run_id,
        kind: kind.to_string(),
        path: rel_path.to_string(),
        epoch,
        step,
        size_bytes,
        sha256: sha256.to_string(),
        created_at,
    })
}

/// Every checkpoint of a run, oldest first.
pub async fn list(pool: &SqlitePool, run_id: i64) -> anyhow::Result<Vec<CheckpointRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM checkpoints WHERE run_id = ? ORDER BY step, id"
    ))
    .bind(run_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the checkpoints of run {run_id}"))
}

/// Checkpoint `ckpt_id` of run `run_id` (None when it belongs to another run or does not exist).
pub async fn get(
    pool: &SqlitePool,
    run_id: i64,
    ckpt_id: i64,
) -> anyhow::Result<Option<CheckpointRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM checkpoints WHERE run_id = ? AND id = ?"
    ))
    .bind(run_id)
    .bind(ckpt_id)
    .fetch_optional(pool)
    .await
    .context("cannot read a checkpoint")
}

/// The newest full (resumable) checkpoints of a run, newest first.
pub async fn full_newest_first(
    pool: &SqlitePool,
    run_id: i64,
) -> anyhow::Result<Vec<CheckpointRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM checkpoints WHERE run_id = ? AND kind = 'full' \
         ORDER BY step DESC, id DESC"
    ))
    .bind(run_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the checkpoints of run {run_id}"))
}

/// Forgets checkpoints taken after `step` (a resume from an earlier one overwrites them).
pub async fn delete_after(
    conn: &mut SqliteConnection,
    run_id: i64,
    step: i64,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM checkpoints WHERE run_id = ? AND step > ?")
        .bind(run_id)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}
