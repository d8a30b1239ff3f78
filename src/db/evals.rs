//! The `evals` table: evaluation jobs (a linear probe or a kNN of one encoder file on one
//! labelled set), their state machine — the runs' states and moves — and progress, and
//! `eval_epochs`, a probe's curve. Every query of both tables lives here.
use super::runs::RunState;
use crate::config::{Choice, EvalMethod, Protocol};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

/// An evaluation as lists, pages and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EvalSummary {
    pub id: i64,
    pub method: EvalMethod,
    /// The linear probe's protocol; null for kNN.
    pub protocol: Option<Protocol>,
    /// "linear (fast)", "knn": what produced the numbers.
    pub label: String,
    /// The run whose checkpoint is evaluated; null for an encoder file of the data directory.
    pub run_id: Option<i64>,
    pub checkpoint_id: Option<i64>,
    /// The encoder file, relative to the data directory.
    pub encoder: String,
    pub encoder_sha256: String,
    pub encoder_arch: String,
    /// The epoch the encoder was trained to.
    pub encoder_epoch: i64,
    /// Short label of the labelled dataset.
    pub dataset: String,
    pub state: RunState,
    pub device: String,
    pub error: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    #[schemars(extend("format" = "date-time"))]
    pub started_at: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub finished_at: Option<String>,
    /// Epochs trained so far, of `epochs`.
    pub epoch: i64,
    pub epochs: i64,
    pub step: i64,
    pub total_steps: i64,
    /// In [0, 1].
    pub progress: f64,
    /// Seconds left at the current speed (running evaluations only).
    pub eta_seconds: Option<f64>,
    pub last_loss: Option<f64>,
    /// Held-out accuracy in percent after the last epoch (kNN: top-1 only).
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub best_top1: Option<f64>,
}

/// One row of `evals`, as stored.
#[derive(Debug, Clone, FromRow)]
pub struct EvalRow {
    pub id: i64,
    pub method: String,
    pub protocol: Option<String>,
    pub run_id: Option<i64>,
    pub checkpoint_id: Option<i64>,
    pub encoder: String,
    pub encoder_sha256: String,
    pub encoder_arch: String,
    pub encoder_epoch: i64,
    pub dataset: String,
    pub config: String,
    pub state: RunState,
    pub device: String,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub epoch: i64,
    pub epochs: i64,
    pub step: i64,
    pub total_steps: i64,
    pub steps_per_sec: Option<f64>,
    pub last_loss: Option<f64>,
    pub top1: Option<f64>,
    pub top5: Option<f64>,
    pub best_top1: Option<f64>,
    pub result: Option<String>,
    pub attempts: i64,
}

const COLUMNS: &str = "id, method, protocol, run_id, checkpoint_id, encoder, encoder_sha256, \
     encoder_arch, encoder_epoch, dataset, config, state, device, error, created_at, started_at, \
     finished_at, epoch, epochs, step, total_steps, steps_per_sec, last_loss, top1, top5, \
     best_top1, result, attempts";

impl EvalRow {
    /// Rows are only written with a known method; an unknown one reads as linear.
    pub fn method(&self) -> EvalMethod {
        EvalMethod::parse(&self.method).unwrap_or(EvalMethod::Linear)
    }

    pub fn summary(&self) -> EvalSummary {
        let state = self.state;
        let progress = state.progress(self.step, self.total_steps);
        let eta_seconds = state.eta_seconds(self.step, self.total_steps, self.steps_per_sec);
        let protocol = self.protocol.as_deref().and_then(Protocol::parse);
        EvalSummary {
            id: self.id,
            method: self.method(),
            protocol,
            label: self.method().label(protocol),
            run_id: self.run_id,
            checkpoint_id: self.checkpoint_id,
            encoder: self.encoder.clone(),
            encoder_sha256: self.encoder_sha256.clone(),
            encoder_arch: self.encoder_arch.clone(),
            encoder_epoch: self.encoder_epoch,
            dataset: self.dataset.clone(),
            state,
            device: self.device.clone(),
            error: self.error.clone(),
            created_at: self.created_at.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            epoch: self.epoch,
            epochs: self.epochs,
            step: self.step,
            total_steps: self.total_steps,
            progress,
            eta_seconds,
            last_loss: self.last_loss,
            top1: self.top1,
            top5: self.top5,
            best_top1: self.best_top1,
        }
    }
}

/// One trained epoch of a probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromRow, schemars::JsonSchema)]
pub struct EvalEpoch {
    /// 1-based.
    pub epoch: i64,
    pub step: i64,
    pub lr: f64,
    /// Mean training loss of the epoch.
    pub loss: f64,
    /// Held-out accuracy in percent, on the epochs that were scored.
    pub top1: Option<f64>,
    pub top5: Option<f64>,
}

/// What a new evaluation stores.
#[derive(Debug, Clone)]
pub struct NewEval {
    pub method: EvalMethod,
    pub protocol: Option<Protocol>,
    pub run_id: Option<i64>,
    pub checkpoint_id: Option<i64>,
    pub encoder: String,
    pub encoder_sha256: String,
    pub encoder_arch: String,
    pub encoder_epoch: i64,
    pub dataset: String,
    pub config: serde_json::Value,
    pub epochs: i64,
    pub device: String,
}

/// Stores a queued evaluation; returns its id.
pub async fn insert(pool: &SqlitePool, new: &NewEval) -> anyhow::Result<i64> {
    let done = sqlx::query(
        "INSERT INTO evals (method, protocol, run_id, checkpoint_id, encoder, encoder_sha256, \
         encoder_arch, encoder_epoch, dataset, config, state, device, created_at, epochs) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
    )
    .bind(new.method.name())
    .bind(new.protocol.map(Protocol::name))
    .bind(new.run_id)
    .bind(new.checkpoint_id)
    .bind(&new.encoder)
    .bind(&new.encoder_sha256)
    .bind(&new.encoder_arch)
    .bind(new.encoder_epoch)
    .bind(&new.dataset)
    .bind(new.config.to_string())
    .bind(&new.device)
    .bind(super::now())
    .bind(new.epochs)
    .execute(pool)
    .await
    .context("cannot store the evaluation")?;
    Ok(done.last_insert_rowid())
}

pub async fn get(pool: &SqlitePool, id: i64) -> anyhow::Result<Option<EvalRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM evals WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read evaluation {id}"))
}

/// Evaluations, newest first: all of them, or those of the runs in `runs`.
pub async fn list(
    pool: &SqlitePool,
    runs: Option<&[i64]>,
    limit: i64,
) -> anyhow::Result<Vec<EvalSummary>> {
    let rows: Vec<EvalRow> = match runs {
        None => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM evals ORDER BY id DESC LIMIT ?"
            ))
            .bind(limit)
            .fetch_all(pool)
            .await?
        }
        Some(ids) => {
            let placeholders = vec!["?"; ids.len().max(1)].join(", ");
            let sql = format!(
                "SELECT {COLUMNS} FROM evals WHERE run_id IN ({placeholders}) \
                 ORDER BY id DESC LIMIT ?"
            );
            let mut q = sqlx::query_as(&sql);
            if ids.is_empty() {
                q = q.bind(0i64);
            }
            for id in ids {
                q = q.bind(*id);
            }
            q.bind(limit).fetch_all(pool).await?
        }
    };
    Ok(rows.iter().map(EvalRow::summary).collect())
}

/// A probe's epochs so far, in order.
pub async fn epochs(pool: &SqlitePool, id: i64) -> anyhow::Result<Vec<EvalEpoch>> {
    sqlx::query_as(
        "SELECT epoch, step, lr, loss, top1, top5 FROM eval_epochs WHERE eval_id = ? \
         ORDER BY epoch",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("cannot read the epochs of evaluation {id}"))
}

/// Queued evaluations with their devices and creation times (dispatch order: oldest first).
pub async fn queued(pool: &SqlitePool) -> anyhow::Result<Vec<(i64, String, String)>> {
    sqlx::query_as(
        "SELECT id, device, created_at FROM evals WHERE state = 'queued' ORDER BY id ASC",
    )
    .fetch_all(pool)
    .await
    .context("cannot read the evaluation queue")
}

/// queued → running, starting over: an evaluation keeps no state between attempts, so the
/// curve and the scores of an earlier attempt are removed. False when it is no longer queued.
pub async fn mark_running(conn: &mut SqliteConnection, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE evals SET state = 'running', started_at = ?, finished_at = NULL, error = NULL, \
         epoch = 0, step = 0, total_steps = 0, steps_per_sec = NULL, last_loss = NULL, \
         top1 = NULL, top5 = NULL, best_top1 = NULL, result = NULL, attempts = attempts + 1 \
         WHERE id = ? AND state = 'queued'",
    )
    .bind(super::now())
    .bind(id)
    .execute(&mut *conn)
    .await
    .with_context(|| format!("cannot start evaluation {id}"))?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM eval_epochs WHERE eval_id = ?")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(true)
}

/// The shape of the work once the dataset is open.
pub async fn set_started(
    conn: &mut SqliteConnection,
    id: i64,
    epochs: i64,
    total_steps: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE evals SET epochs = ?, total_steps = ? WHERE id = ?")
        .bind(epochs)
        .bind(total_steps)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_progress(
    conn: &mut SqliteConnection,
    id: i64,
    step: i64,
    steps_per_sec: Option<f64>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE evals SET step = ?, steps_per_sec = COALESCE(?, steps_per_sec) WHERE id = ?",
    )
    .bind(step)
    .bind(steps_per_sec)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a trained epoch and moves the progress and the latest scores to it.
pub async fn insert_epoch(
    conn: &mut SqliteConnection,
    id: i64,
    e: &EvalEpoch,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT OR REPLACE INTO eval_epochs (eval_id, epoch, step, lr, loss, top1, top5) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(e.epoch)
    .bind(e.step)
    .bind(e.lr)
    .bind(e.loss)
    .bind(e.top1)
    .bind(e.top5)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE evals SET epoch = ?, step = ?, last_loss = ?, top1 = COALESCE(?, top1), \
         top5 = COALESCE(?, top5), best_top1 = MAX(COALESCE(best_top1, ?), COALESCE(?, -1)) \
         WHERE id = ?",
    )
    .bind(e.epoch)
    .bind(e.step)
    .bind(e.loss)
    .bind(e.top1)
    .bind(e.top5)
    .bind(e.top1)
    .bind(e.top1)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The scores an evaluation ended with.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalScores {
    pub top1: f64,
    pub top5: Option<f64>,
    pub best_top1: f64,
    pub result: serde_json::Value,
}

/// Ends an evaluation in `state`, with its error or its scores.
pub async fn finish(
    conn: &mut SqliteConnection,
    id: i64,
    state: RunState,
    error: Option<&str>,
    scores: Option<&FinalScores>,
) -> anyhow::Result<()> {
    let completed = state == RunState::Completed;
    sqlx::query(
        "UPDATE evals SET state = ?, error = ?, finished_at = ?, \
         top1 = COALESCE(?, top1), top5 = COALESCE(?, top5), best_top1 = COALESCE(?, best_top1), \
         result = ?, epoch = CASE WHEN ? THEN epochs ELSE epoch END, \
         step = CASE WHEN ? THEN total_steps ELSE step END WHERE id = ?",
    )
    .bind(state.as_str())
    .bind(error)
    .bind(super::now())
    .bind(scores.map(|s| s.top1))
    .bind(scores.and_then(|s| s.top5))
    .bind(scores.map(|s| s.best_top1))
    .bind(scores.map(|s| s.result.to_string()))
    .bind(completed)
    .bind(completed)
    .bind(id)
    .execute(conn)
    .await
    .with_context(|| format!("cannot record the end of evaluation {id}"))?;
    Ok(())
}

/// Moves an evaluation from one of `from` to `to` atomically: false when it was in none of them.
pub async fn transition(
    conn: &mut SqliteConnection,
    id: i64,
    from: &[RunState],
    to: RunState,
    error: Option<&str>,
) -> anyhow::Result<bool> {
    let placeholders = vec!["?"; from.len()].join(", ");
    let sql = format!(
        "UPDATE evals SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state IN \
         ({placeholders})"
    );
    let finished_at = to.is_finished().then(super::now);
    let mut q = sqlx::query(&sql)
        .bind(to.as_str())
        .bind(finished_at)
        .bind(error)
        .bind(id);
    for s in from {
        q = q.bind(s.as_str());
    }
    let done = q
        .execute(conn)
        .await
        .with_context(|| format!("cannot change the state of evaluation {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// Evaluations a dead process left running become interrupted with `reason`; returns their ids.
pub async fn interrupt_stale(
    conn: &mut SqliteConnection,
    reason: &str,
) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<(i64,)> = sqlx::query_as(
        "UPDATE evals SET state = 'interrupted', finished_at = ?, error = ? \
         WHERE state = 'running' RETURNING id",
    )
    .bind(super::now())
    .bind(reason)
    .fetch_all(conn)
    .await
    .context("cannot mark evaluations left running as interrupted")?;
    let mut ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
    ids.sort_unstable();
    Ok(ids)
}

pub async fn ids_in_state(pool: &SqlitePool, state: RunState) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM evals WHERE state = ? ORDER BY id")
        .bind(state.as_str())
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// The evaluations of run `run_id` that are running.
pub async fn running_of_run(pool: &SqlitePool, run_id: i64) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM evals WHERE run_id = ? AND state = 'running' ORDER BY id")
            .bind(run_id)
            .fetch_all(pool)
            .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// Deletes the row unless it is running; false when nothing was deleted.
pub async fn delete_unless_running(pool: &SqlitePool, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM evals WHERE id = ? AND state != 'running'")
        .bind(id)
        .execute(pool)
        .await
        .with_context(|| format!("cannot delete evaluation {id}"))?;
    Ok(done.rows_affected() == 1)
}
