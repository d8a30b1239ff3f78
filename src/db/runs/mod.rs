//! The `runs` table: one row per run, its state machine and the progress columns the recorder
//! keeps current so lists never scan the metrics. Every query of the table lives here (each move
//! of the state machine is one), which is why the file is long; the state and the list order
//! are in `state` and `order`.
use crate::config::Choice;
use crate::config::RunConfig;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

mod order;
mod state;

pub use order::{RunFilter, RunSort, SortKey};
pub use state::RunState;

/// A run as lists, pages and the API show it: the one summary type from the database to the
/// pages and the JSON API's `RunSummary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunSummary {
    pub id: i64,
    pub name: String,
    pub preset: String,
    /// Short label of the dataset: "synthetic" or "cifar10:cifar-10-batches-bin".
    pub dataset: String,
    pub state: RunState,
    /// The device the run trains on: "cpu" or "cuda:N".
    pub device: String,
    /// Why the run failed (failed runs), or the last start error.
    pub error: Option<String>,
    /// RFC 3339 times.
    #[schemars(extend("format" = "date-time"))]
    pub created_at: String,
    #[schemars(extend("format" = "date-time"))]
    pub started_at: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub finished_at: Option<String>,
    /// Optimizer steps taken.
    pub step: i64,
    /// The epoch being trained, 1-based (equal to `epochs` once the run completed); 0 before the
    /// first step.
    pub epoch: i64,
    /// Steps of the whole run (0 until training began and the dataset size is known).
    pub total_steps: i64,
    pub epochs: i64,
    /// step / total_steps in [0, 1].
    pub progress: f64,
    /// Seconds left at the current throughput (running runs only).
    pub eta_seconds: Option<f64>,
    pub last_loss: Option<f64>,
    pub images_per_sec: Option<f64>,
    /// kNN top-1 in percent.
    pub best_knn: Option<f64>,
    pub last_knn: Option<f64>,
}

/// One row of `runs`, as stored.
#[derive(Debug, Clone, FromRow)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub preset: String,
    pub dataset: String,
    pub config: String,
    pub state: RunState,
    pub device: String,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub step: i64,
    pub epoch: i64,
    pub total_steps: i64,
    pub last_loss: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub best_knn: Option<f64>,
    pub last_knn: Option<f64>,
    pub cancel_requested: i64,
    pub epochs: i64,
    pub batch_size: i64,
    pub steps_per_epoch: i64,
    pub attempts: i64,
}

const COLUMNS: &str = "id, name, preset, dataset, config, state, device, error, created_at, \
     started_at, finished_at, step, epoch, total_steps, last_loss, images_per_sec, best_knn, \
     last_knn, cancel_requested, epochs, batch_size, steps_per_epoch, attempts";

impl RunRow {
    /// The stored config; rows are only written from validated configs.
    pub fn config(&self) -> anyhow::Result<RunConfig> {
        serde_json::from_str(&self.config)
            .with_context(|| format!("the stored config of run {} is unreadable", self.id))
    }

    pub fn summary(&self) -> RunSummary {
        let state = self.state;
        let progress = state.progress(self.step, self.total_steps);
        // A run's speed is in images: steps per second are that over the batch.
        let steps_per_sec = self
            .images_per_sec
            .map(|ips| ips / self.batch_size.max(1) as f64);
        let eta_seconds = state.eta_seconds(self.step, self.total_steps, steps_per_sec);
        RunSummary {
            id: self.id,
            name: self.name.clone(),
            preset: self.preset.clone(),
            dataset: self.dataset.clone(),
            state,
            device: self.device.clone(),
            error: self.error.clone(),
            created_at: self.created_at.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
            step: self.step,
            epoch: self.epoch,
            total_steps: self.total_steps,
            epochs: self.epochs,
            progress,
            eta_seconds,
            last_loss: self.last_loss,
            images_per_sec: self.images_per_sec,
            best_knn: self.best_knn,
            last_knn: self.last_knn,
        }
    }
}

/// Runs matching `filter`, in its order.
pub async fn list(pool: &SqlitePool, filter: &RunFilter) -> anyhow::Result<Vec<RunSummary>> {
    let mut sql = format!("SELECT {COLUMNS} FROM runs WHERE 1 = 1");
    if filter.state.is_some() {
        sql.push_str(" AND state = ?");
    }
    if filter.preset.is_some() {
        sql.push_str(" AND preset = ?");
    }
    if filter.search.is_some() {
        sql.push_str(" AND name LIKE ? ESCAPE '\\'");
    }
    if let Some(ids) = &filter.ids {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Ids are integers: inlined, no text from the request reaches the SQL.
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        sql.push_str(&format!(" AND id IN ({})", list.join(",")));
    }
    sql.push_str(" ORDER BY ");
    sql.push_str(&filter.sort.order_by());
    if let Some(limit) = filter.limit {
        sql.push_str(&format!(" LIMIT {}", limit.max(0)));
    }
    let mut query = sqlx::query_as::<_, RunRow>(&sql);
    if let Some(state) = filter.state {
        query = query.bind(state);
    }
    if let Some(preset) = &filter.preset {
        query = query.bind(preset.clone());
    }
    if let Some(search) = &filter.search {
        query = query.bind(format!("%{}%", escape_like(search)));
    }
    let rows = query.fetch_all(pool).await.context("cannot list runs")?;
    Ok(rows.iter().map(RunRow::summary).collect())
}

/// `%`, `_` and `\` match themselves in a search.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The stored row of run `id`.
pub async fn get_row(pool: &SqlitePool, id: i64) -> anyhow::Result<Option<RunRow>> {
    sqlx::query_as::<_, RunRow>(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read run {id}"))
}

/// The steps run `id` has taken, inside a transaction.
pub async fn step_of(conn: &mut SqliteConnection, id: i64) -> anyhow::Result<i64> {
    let (step,): (i64,) = sqlx::query_as("SELECT step FROM runs WHERE id = ?")
        .bind(id)
        .fetch_one(conn)
        .await
        .with_context(|| format!("cannot read the step of run {id}"))?;
    Ok(step)
}

/// Fails a queued (or just started) run with `message`; false when it was in another state.
pub async fn fail_if_queued(
    conn: &mut SqliteConnection,
    id: i64,
    message: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE runs SET state = 'failed', error = ?, finished_at = ? \
         WHERE id = ? AND state IN ('queued', 'running')",
    )
    .bind(message)
    .bind(super::now())
    .bind(id)
    .execute(conn)
    .await
    .with_context(|| format!("cannot fail run {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// Whether run `id` exists.
pub async fn exists(pool: &SqlitePool, id: i64) -> anyhow::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM runs WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
        .with_context(|| format!("cannot read run {id}"))?;
    Ok(found.is_some())
}

/// Run `id` as the API shows it.
pub async fn get(pool: &SqlitePool, id: i64) -> anyhow::Result<Option<RunSummary>> {
    Ok(get_row(pool, id).await?.map(|r| r.summary()))
}

/// Run `id` with its full config.
pub async fn get_with_config(
    pool: &SqlitePool,
    id: i64,
) -> anyhow::Result<Option<(RunSummary, RunConfig)>> {
    match get_row(pool, id).await? {
        Some(row) => Ok(Some((row.summary(), row.config()?))),
        None => Ok(None),
    }
}

/// Number of runs in each state (every state present, zero when none).
pub async fn count_by_state(pool: &SqlitePool) -> anyhow::Result<Vec<(RunState, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM runs GROUP BY state")
            .fetch_all(pool)
            .await
            .context("cannot count runs")?;
    Ok(RunState::all()
        .iter()
        .map(|&s| {
            let n = rows
                .iter()
                .find(|(name, _)| name == s.as_str())
                .map_or(0, |(_, n)| *n);
            (s, n)
        })
        .collect())
}

/// Stores a new queued run for a validated config on `device` ("cpu" / "cuda:N"); an empty name
/// becomes "run-<id>". Returns the id.
pub async fn insert(pool: &SqlitePool, config: &RunConfig, device: &str) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let id = insert_in(&mut tx, config, device).await?;
    tx.commit().await?;
    Ok(id)
}

/// `insert` inside the caller's transaction (a sweep stores all its members in one).
pub async fn insert_in(
    tx: &mut SqliteConnection,
    config: &RunConfig,
    device: &str,
) -> anyhow::Result<i64> {
    let mut stored = config.clone();
    stored.device = device.to_string();
    let id = sqlx::query(
        "INSERT INTO runs (name, preset, dataset, config, state, device, created_at, epochs, \
         batch_size) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
    )
    .bind(&config.name)
    .bind(config.preset.name())
    .bind(config.dataset.label())
    .bind(serde_json::to_string(&stored)?)
    .bind(device)
    .bind(super::now())
    .bind(config.epochs)
    .bind(config.batch_size)
    .execute(&mut *tx)
    .await
    .context("cannot store the run")?
    .last_insert_rowid();
    if config.name.trim().is_empty() {
        stored.name = format!("run-{id}");
        sqlx::query("UPDATE runs SET name = ?, config = ? WHERE id = ?")
            .bind(&stored.name)
            .bind(serde_json::to_string(&stored)?)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(id)
}

/// The queued runs with their devices and creation times, oldest first.
pub async fn queued(pool: &SqlitePool) -> anyhow::Result<Vec<(i64, String, String)>> {
    sqlx::query_as("SELECT id, device, created_at FROM runs WHERE state = 'queued' ORDER BY id ASC")
        .fetch_all(pool)
        .await
        .context("cannot read the queue")
}

/// queued → running. False when the run is no longer queued (cancelled or deleted meanwhile).
pub async fn mark_running(conn: &mut SqliteConnection, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE runs SET state = 'running', started_at = ?, finished_at = NULL, error = NULL, \
         cancel_requested = 0, attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
    )
    .bind(super::now())
    .bind(id)
    .execute(conn)
    .await
    .with_context(|| format!("cannot start run {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// Ends a run in `state` (completed, failed, cancelled or interrupted), with an error for failed
/// runs. `step` is the step it stopped at, when known.
pub async fn finish(
    conn: &mut SqliteConnection,
    id: i64,
    state: RunState,
    error: Option<&str>,
    step: Option<i64>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET state = ?, error = ?, finished_at = ?, step = COALESCE(?, step), \
         epoch = CASE WHEN ? = 'completed' THEN epochs ELSE epoch END WHERE id = ?",
    )
    .bind(state.as_str())
    .bind(error)
    .bind(super::now())
    .bind(step)
    .bind(state.as_str())
    .bind(id)
    .execute(conn)
    .await
    .with_context(|| format!("cannot record the end of run {id}"))?;
    Ok(())
}

/// Moves a run from one of `from` to `to` (cancel a queued run, queue a resumed one) atomically:
/// false when the run was not in one of those states.
pub async fn transition(
    conn: &mut SqliteConnection,
    id: i64,
    from: &[RunState],
    to: RunState,
) -> anyhow::Result<bool> {
    let placeholders = vec!["?"; from.len()].join(", ");
    let finished_at = if to.is_finished() {
        Some(super::now())
    } else {
        None
    };
    let sql = format!(
        "UPDATE runs SET state = ?, finished_at = ?, \
         error = CASE WHEN ? = 'queued' THEN NULL ELSE error END \
         WHERE id = ? AND state IN ({placeholders})"
    );
    let mut q = sqlx::query(&sql)
        .bind(to.as_str())
        .bind(finished_at)
        .bind(to.as_str())
        .bind(id);
    for s in from {
        q = q.bind(s.as_str());
    }
    let done = q
        .execute(conn)
        .await
        .with_context(|| format!("cannot change the state of run {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// Remembers that the user asked a running run to stop (survives until the engine returns).
pub async fn request_cancel(pool: &SqlitePool, id: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Runs a dead process left 'running' become 'interrupted', with `reason` as their error;
/// returns their ids.
pub async fn interrupt_stale(
    conn: &mut SqliteConnection,
    reason: &str,
) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<(i64,)> = sqlx::query_as(
        "UPDATE runs SET state = 'interrupted', finished_at = ?, error = ? \
         WHERE state = 'running' RETURNING id",
    )
    .bind(super::now())
    .bind(reason)
    .fetch_all(conn)
    .await
    .context("cannot mark runs left running as interrupted")?;
    let mut ids: Vec<i64> = ids.into_iter().map(|(id,)| id).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Ids of the runs in `state`, oldest first.
pub async fn ids_in_state(pool: &SqlitePool, state: RunState) -> anyhow::Result<Vec<i64>> {
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM runs WHERE state = ? ORDER BY id")
        .bind(state.as_str())
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().map(|(id,)| id).collect())
}

/// The shape of the run once training began (steps per epoch and in all, where it starts).
pub async fn set_started(
    conn: &mut SqliteConnection,
    id: i64,
    steps_per_epoch: i64,
    total_steps: i64,
    start_step: i64,
    start_epoch: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET steps_per_epoch = ?, total_steps = ?, step = ?, \
         epoch = CASE WHEN ? > 0 THEN ? ELSE epoch END WHERE id = ?",
    )
    .bind(steps_per_epoch)
    .bind(total_steps)
    .bind(start_step)
    .bind(start_step)
    .bind(start_epoch + 1)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The latest progress of a running run (from its newest metric record).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub step: i64,
    /// 1-based epoch being trained.
    pub epoch: i64,
    pub last_loss: Option<f64>,
    pub images_per_sec: Option<f64>,
}

pub async fn set_progress(
    conn: &mut SqliteConnection,
    id: i64,
    p: &Progress,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET step = ?, epoch = ?, last_loss = COALESCE(?, last_loss), \
         images_per_sec = COALESCE(?, images_per_sec) WHERE id = ?",
    )
    .bind(p.step)
    .bind(p.epoch)
    .bind(p.last_loss)
    .bind(p.images_per_sec)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a kNN result: the last one and the best so far.
pub async fn set_knn(conn: &mut SqliteConnection, id: i64, knn_top1: f64) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE runs SET last_knn = ?, best_knn = MAX(COALESCE(best_knn, ?), ?) WHERE id = ?",
    )
    .bind(knn_top1)
    .bind(knn_top1)
    .bind(knn_top1)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rolls the progress back to `step` (a resume continues from a checkpoint taken there): metrics
/// and evaluations recorded after it are removed so series do not overlap.
pub async fn rewind(conn: &mut SqliteConnection, id: i64, step: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM metrics WHERE run_id = ? AND step > ?")
        .bind(id)
        .bind(step)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM evaluations WHERE run_id = ? AND step > ?")
        .bind(id)
        .bind(step)
        .execute(&mut *conn)
        .await?;
    let knn: (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT MAX(knn_top1), (SELECT knn_top1 FROM evaluations WHERE run_id = ?1 \
         ORDER BY step DESC LIMIT 1) FROM evaluations WHERE run_id = ?1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("UPDATE runs SET step = ?, best_knn = ?, last_knn = ? WHERE id = ?")
        .bind(step)
        .bind(knn.0)
        .bind(knn.1)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes the row unless the run is running (metrics, events, evaluations and checkpoint rows go
/// with it). Returns false when nothing was deleted.
pub async fn delete_unless_running(pool: &SqlitePool, id: i64) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM runs WHERE id = ? AND state != 'running'")
        .bind(id)
        .execute(pool)
        .await
        .with_context(|| format!("cannot delete run {id}"))?;
    Ok(done.rows_affected() == 1)
}

/// Distinct presets in use (list filters).
pub async fn presets_in_use(pool: &SqlitePool) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT preset FROM runs ORDER BY preset")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(p,)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    async fn three_runs() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let pool = super::super::open(&dir.path().join("runs.db"))
            .await
            .unwrap();
        for (name, knn, state) in [
            ("beta", Some(40.0), "completed"),
            ("Alpha", None, "failed"),
            ("gamma", Some(55.0), "completed"),
        ] {
            let cfg = RunConfig {
                name: name.into(),
                ..RunConfig::preset(Preset::Demo)
            };
            let id = insert(&pool, &cfg, "cpu").await.unwrap();
            sqlx::query("UPDATE runs SET best_knn = ?, state = ? WHERE id = ?")
                .bind(knn)
                .bind(state)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
        (dir, pool)
    }

    async fn names(pool: &SqlitePool, filter: RunFilter) -> Vec<String> {
        list(pool, &filter)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect()
    }

    #[tokio::test]
    async fn lists_sort_in_sql_with_missing_values_last_either_way() {
        let (_dir, pool) = three_runs().await;
        let sorted = |name: &str| RunFilter {
            sort: RunSort::parse(name).unwrap(),
            ..RunFilter::default()
        };
        assert_eq!(
            names(&pool, sorted("knn_desc")).await,
            ["gamma", "beta", "Alpha"]
        );
        assert_eq!(
            names(&pool, sorted("knn_asc")).await,
            ["beta", "gamma", "Alpha"]
        );
        assert_eq!(
            names(&pool, sorted("name_asc")).await,
            ["Alpha", "beta", "gamma"]
        );
        assert_eq!(
            names(&pool, sorted("created_desc")).await,
            ["gamma", "Alpha", "beta"]
        );
        // Completed runs count as done: progress 1 before the failed run's 0.
        assert_eq!(
            names(&pool, sorted("progress_desc")).await,
            ["gamma", "beta", "Alpha"]
        );
        let failed = RunFilter {
            state: Some(RunState::Failed),
            ..RunFilter::default()
        };
        assert_eq!(names(&pool, failed).await, ["Alpha"]);
        let counts = count_by_state(&pool).await.unwrap();
        assert!(counts.contains(&(RunState::Completed, 2)));
        assert!(counts.contains(&(RunState::Queued, 0)));
    }

    #[test]
    fn sort_names_round_trip() {
        for name in RunSort::names() {
            let sort = RunSort::parse(&name).unwrap();
            if name != "state" {
                assert_eq!(sort.name(), name);
            }
        }
        assert_eq!(RunSort::parse("state").unwrap().name(), "state_asc");
        assert_eq!(RunSort::parse("knn"), None);
        assert_eq!(RunSort::parse("colour_asc"), None);
        assert_eq!(RunSort::default().name(), "created_desc");
    }
}
