//! What the pages read and ask of the rest of the server, in one place: runs, checkpoints, the
//! event log, the latest metrics, the scheduler and the dataset listing.
use crate::config::RunConfig;
use crate::db::runs::RunSummary;
use crate::server::AppState;
use crate::{data, db, jobs};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

/// One run and its config (as JSON), or None when there is no such run.
pub async fn get_run(state: &AppState, id: i64) -> anyhow::Result<Option<(RunSummary, Value)>> {
    match db::runs::get_with_config(&state.db, id).await? {
        Some((summary, config)) => Ok(Some((summary, serde_json::to_value(config)?))),
        None => Ok(None),
    }
}

/// The message with its first letter in upper case (for a sentence on a page).
pub fn capitalised(message: &str) -> String {
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub struct Checkpoint {
    pub id: i64,
    pub kind: String,
    pub epoch: i64,
    pub step: i64,
    pub size_bytes: u64,
    pub sha256: String,
    pub download_url: String,
}

pub async fn checkpoints(state: &AppState, run_id: i64) -> anyhow::Result<Vec<Checkpoint>> {
    Ok(db::checkpoints::list(&state.db, run_id)
        .await?
        .into_iter()
        .map(|c| Checkpoint {
            download_url: c.download_url(),
            id: c.id,
            kind: c.kind,
            epoch: c.epoch,
            step: c.step,
            size_bytes: c.size_bytes.max(0) as u64,
            sha256: c.sha256,
        })
        .collect())
}

pub struct LogEvent {
    pub id: i64,
    pub created_at: String,
    pub level: String,
    pub message: String,
}

/// How many events the run page's log shows (the newest).
const LOG_LIMIT: i64 = 500;

/// The run's log: its messages, state changes, evaluations and checkpoints, oldest first.
pub async fn log_events(state: &AppState, run_id: i64) -> anyhow::Result<Vec<LogEvent>> {
    let rows = db::events::log_tail(&state.db, run_id, LOG_LIMIT).await?;
    let mut out = Vec::new();
    let mut last_state = String::new();
    for r in rows {
        let data: Value = serde_json::from_str(&r.data).unwrap_or(Value::Null);
        let Some((level, message)) = log_line(&r.kind, &data, &mut last_state) else {
            continue;
        };
        out.push(LogEvent {
            id: r.id,
            created_at: r.created_at,
            level,
            message,
        });
    }
    Ok(out)
}

/// One event as a line of the log (static/run.js writes live events the same way); None for a
/// state event that repeats the state (a progress update).
pub fn log_line(kind: &str, data: &Value, last_state: &mut String) -> Option<(String, String)> {
    let text = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let int = |k: &str| data.get(k).and_then(Value::as_i64).unwrap_or(0);
    Some(match kind {
        "state" => {
            let s = text("state");
            if s == *last_state {
                return None;
            }
            last_state.clone_from(&s);
            let error = text("error");
            let level = if s == "failed" { "error" } else { "info" };
            let message = if error.is_empty() {
                format!("state: {s}")
            } else {
                format!("state: {s} — {error}")
            };
            (level.to_string(), message)
        }
        "evaluation" => {
            let knn = data.get("knn_top1").and_then(Value::as_f64);
            // The same sentence as static/run.js writes for live events.
            let when = match int("epoch") {
                0 => "of the untrained encoder (epoch 0)".to_string(),
                epoch => format!("after epoch {epoch}"),
            };
            (
                "info".to_string(),
                format!("kNN top-1 {when}: {}", super::format::opt_percent(knn)),
            )
        }
        "checkpoint" => {
            let size = data.get("size_bytes").and_then(Value::as_u64).unwrap_or(0);
            (
                "info".to_string(),
                format!(
                    "{} checkpoint saved at epoch {}, step {} ({})",
                    text("kind"),
                    int("epoch"),
                    int("step"),
                    super::format::bytes(size)
                ),
            )
        }
        _ => (text("level"), text("message")),
    })
}

/// The id of the run's newest event (0 when none): the page's live stream continues after it.
pub async fn last_event_id(state: &AppState, run_id: i64) -> anyhow::Result<i64> {
    db::events::last_id_of_run(&state.db, run_id).await
}

/// The newest value of each of `names` (metrics are keyed by run, name and step).
pub async fn latest_metrics(
    state: &AppState,
    run_id: i64,
    names: &[&str],
) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for name in names {
        if let Some(v) = db::metrics::latest(&state.db, run_id, name).await? {
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

/// An entry of the dataset picker: the value posted ("synthetic" or "kind:path") and its label.
pub struct DatasetChoice {
    pub value: String,
    pub label: String,
}

/// The built-in synthetic set, then every dataset found under the data directory, with counts.
pub async fn list_datasets(state: &AppState) -> anyhow::Result<Vec<DatasetChoice>> {
    let entries = state.datasets().await?;
    Ok(entries
        .into_iter()
        .map(|d| {
            let value = match &d.path {
                Some(path) => format!("{}:{path}", d.kind),
                None => d.kind.clone(),
            };
            let size = d
                .image_size
                .map(|s| format!(", {s}×{s}"))
                .unwrap_or_default();
            let label = format!(
                "{} — {} + {} held-out images, {} classes{size}",
                d.label, d.images, d.test_images, d.classes
            );
            DatasetChoice { value, label }
        })
        .collect())
}

/// Rows in the augmentation preview.
const PREVIEW_IMAGES: usize = 4;
/// Previews kept in memory (a run's recipe and data never change, so its picture does not).
const PREVIEW_CACHE: usize = 32;

/// Recently drawn previews by run id, oldest first.
type PreviewCache = Mutex<VecDeque<(i64, Arc<Vec<u8>>)>>;

fn preview_cache() -> &'static PreviewCache {
    static CACHE: OnceLock<PreviewCache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(VecDeque::new()))
}

/// The augmentation preview of run `id` as PNG bytes: a few training images, each with two views
/// under the run's recipe, crop size and crop minimum.
pub async fn augment_preview_png(
    state: &AppState,
    id: i64,
    config: &RunConfig,
) -> anyhow::Result<Arc<Vec<u8>>> {
    if let Some((_, png)) = preview_cache()
        .lock()
        .expect("preview cache")
        .iter()
        .find(|(k, _)| *k == id)
    {
        return Ok(png.clone());
    }
    let mut dataset = config.dataset.clone();
    // Only what the scheduler accepted is opened, and only inside the data directory.
    if let Some(rel) = dataset.path.as_deref() {
        let path = jobs::paths::resolve_inside(&state.data_dir, rel)
            .map_err(|e| anyhow::anyhow!("dataset.path {e}"))?;
        dataset.path = Some(path.to_string_lossy().into_owned());
    }
    let data_dir = state.data_dir.clone();
    let config = config.clone();
    let png = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
        let splits = data::open_splits(&dataset, &data_dir)?;
        let images = PREVIEW_IMAGES.min(splits.train.len());
        anyhow::ensure!(images > 0, "the dataset has no training images");
        let augmenter = data::Augmenter::for_run(&config, splits.mean, splits.std);
        data::preview::render_preview_png(splits.train.as_ref(), &augmenter, images, config.seed)
    })
    .await??;
    let png = Arc::new(png);
    let mut cache = preview_cache().lock().expect("preview cache");
    cache.push_back((id, png.clone()));
    while cache.len() > PREVIEW_CACHE {
        cache.pop_front();
    }
    Ok(png)
}

/// 303 See Other to `location`: where a form post sends the browser when it worked.
pub fn see_other(location: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SEE_OTHER,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response()
}

/// After an action form (cancel, resume, restart): 303 to `done` when the scheduler did it, or
/// the page again from `refused` with the reason it refused, capitalised (a 409 page); any other
/// error is the error page.
pub async fn after_action<T, Page>(
    result: Result<T, jobs::SchedulerError>,
    done: String,
    refused: impl FnOnce(String) -> Page,
) -> Result<axum::response::Response, crate::server::error::WebError>
where
    Page: std::future::Future<
        Output = Result<axum::response::Response, crate::server::error::WebError>,
    >,
{
    match result {
        Ok(_) => Ok(see_other(done)),
        Err(jobs::SchedulerError::Conflict(problem)) => refused(capitalised(&problem)).await,
        Err(other) => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_what_happened_and_skip_repeated_states() {
        let mut last = String::new();
        let line = |kind: &str, data: Value, last: &mut String| log_line(kind, &data, last);
        assert_eq!(
            line("state", serde_json::json!({"state": "running"}), &mut last),
            Some(("info".into(), "state: running".into()))
        );
        assert_eq!(
            line(
                "state",
                serde_json::json!({"state": "running", "total_steps": 8}),
                &mut last
            ),
            None
        );
        assert_eq!(
            line(
                "state",
                serde_json::json!({"state": "failed", "error": "loss is NaN"}),
                &mut last
            ),
            Some(("error".into(), "state: failed — loss is NaN".into()))
        );
        assert_eq!(
            line(
                "evaluation",
                serde_json::json!({"epoch": 3, "knn_top1": 41.5}),
                &mut last
            ),
            Some(("info".into(), "kNN top-1 after epoch 3: 41.50 %".into()))
        );
        assert_eq!(
            line(
                "checkpoint",
                serde_json::json!({"kind": "encoder", "epoch": 2, "step": 8, "size_bytes": 2048}),
                &mut last
            ),
            Some((
                "info".into(),
                "encoder checkpoint saved at epoch 2, step 8 (2.0 KiB)".into()
            ))
        );
        assert_eq!(
            line(
                "log",
                serde_json::json!({"level": "warn", "message": "slow loader"}),
                &mut last
            ),
            Some(("warn".into(), "slow loader".into()))
        );
    }
}
