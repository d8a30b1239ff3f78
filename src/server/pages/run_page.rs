//! `/runs/{id}`: one run. Numbers, checkpoints, the event log and the config are rendered here;
//! static/run.js draws the curves and follows the run over SSE. Cancel and resume are forms that
//! post to this module and come back with a 303.
use super::evals::{EvalFormView, EvalRowView};
use super::view::{self, RunView};
use super::{backend, form, format, render, Layout};
use crate::config::RunConfig;
use crate::db::runs::RunSummary;
use crate::jobs::scheduler::SchedulerError;
use crate::server::error::{RunId, WebError};
use crate::server::AppState;
use crate::train::events::metric;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// One latest-value tile (the page's script keeps it current).
pub struct MetricStat {
    label: &'static str,
    metric: &'static str,
    value: String,
}

/// One rank of a run on several processes: its device and latest figures (kept current by the
/// page's script).
pub struct RankView {
    rank: usize,
    device: String,
    images_metric: String,
    images: String,
    comm_metric: String,
    comm: String,
}

pub struct CheckpointView {
    id: i64,
    kind: String,
    kind_label: &'static str,
    epoch: i64,
    step: i64,
    size: String,
    sha256: String,
    sha256_short: String,
    download_url: String,
}

pub struct LogView {
    id: i64,
    time: String,
    time_short: String,
    level: String,
    message: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    layout: Layout,
    run: RunView,
    can_cancel: bool,
    can_resume: bool,
    flash: String,
    flash_bad: bool,
    last_event_id: i64,
    queue_stats: Vec<MetricStat>,
    /// The panel's title and help: the queue (moco), or the batch's keys (v3, which has none).
    queue_title: &'static str,
    queue_help: &'static str,
    grad_spike_factor: String,
    /// Memory and loss scale; empty for CPU runs, which have neither.
    device_stats: Vec<MetricStat>,
    /// The ranks of a run on several processes; empty for one process.
    ranks: Vec<RankView>,
    augmentation: String,
    image_size: i64,
    checkpoints: Vec<CheckpointView>,
    log: Vec<LogView>,
    config_rows: Vec<(String, String)>,
    run_json: String,
    /// Every evaluation of the run's checkpoints, and the form for a new one.
    evals: Vec<EvalRowView>,
    form: EvalFormView,
}

#[derive(Debug, Default, Deserialize)]
pub struct RunQuery {
    /// Set by the redirect after a cancel or resume: "cancel" or "resume".
    #[serde(default)]
    done: Option<String>,
}

const QUEUE_METRICS: [(&str, &str); 6] = [
    ("Queue fill", metric::QUEUE_FILL),
    ("Queue pointer", metric::QUEUE_PTR),
    ("Key age, mean (steps)", metric::KEY_AGE_MEAN),
    ("Key age, max (steps)", metric::KEY_AGE_MAX),
    ("Queue similarity", metric::QUEUE_SIMILARITY),
    ("Encoder drift", metric::DRIFT),
];

/// MoCo v3 keeps no queue: its keys are the current batch's.
const V3_KEY_METRICS: [(&str, &str); 2] = [
    ("Key similarity (this batch)", metric::QUEUE_SIMILARITY),
    ("Encoder drift", metric::DRIFT),
];

/// The end-to-end mechanism's keys are the current batch's, from the query encoder.
const END_TO_END_KEY_METRICS: [(&str, &str); 1] =
    [("Key similarity (this batch)", metric::QUEUE_SIMILARITY)];

/// The memory bank's fill (entries that have held a query) and the batch's queries.
const MEMORY_BANK_METRICS: [(&str, &str); 2] = [
    ("Bank fill", metric::QUEUE_FILL),
    ("Query similarity (this batch)", metric::QUEUE_SIMILARITY),
];

/// The panel of where the negatives come from, for the run's framework and mechanism: its
/// metrics, title and help.
fn negatives_panel(
    config: &serde_json::Value,
) -> (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
) {
    let get = |key: &str| config.get(key).and_then(|v| v.as_str());
    if get("framework") == Some("v3") {
        return (
            &V3_KEY_METRICS,
            "Keys and momentum encoder",
            "MoCo v3 keeps no queue: each view is contrasted with the other view's keys of the \
             batch. Their mean pairwise similarity near 1 means the keys collapsed; drift is \
             ‖θq − θk‖ / ‖θq‖ over the mirrored parameters.",
        );
    }
    match get("mechanism") {
        Some("end_to_end") => (
            &END_TO_END_KEY_METRICS,
            "Keys (end-to-end)",
            "The keys come from the query encoder itself and the other keys of the batch are the \
             negatives: no queue, no momentum encoder. Similarity near 1 means they collapsed.",
        ),
        Some("memory_bank") => (
            &MEMORY_BANK_METRICS,
            "Memory bank",
            "One stored feature per training image: the positive is the image's own entry, the \
             negatives are drawn from the bank. Until the fill reaches 1 some entries are still \
             random; query similarity near 1 means the representation collapsed.",
        ),
        _ => (
            &QUEUE_METRICS,
            "Queue and key encoder",
            "Mean pairwise similarity near 1 means the keys collapsed; drift is ‖θq − θk‖ / ‖θq‖.",
        ),
    }
}

const DEVICE_METRICS: [(&str, &str); 3] = [
    ("Device memory reserved", metric::DEVICE_MEMORY_MB),
    (
        "Device memory peak (tensors)",
        metric::DEVICE_MEMORY_PEAK_MB,
    ),
    ("Loss scale (fp16)", metric::LOSS_SCALE),
];

fn metric_value(name: &str, v: Option<f64>) -> String {
    let Some(v) = v else {
        return "—".into();
    };
    match name {
        metric::QUEUE_FILL => format!("{:.1} %", v * 100.0),
        metric::QUEUE_PTR | metric::KEY_AGE_MAX => format!("{}", v.round() as i64),
        metric::KEY_AGE_MEAN => format!("{v:.1}"),
        metric::DEVICE_MEMORY_MB | metric::DEVICE_MEMORY_PEAK_MB => {
            format!("{} MiB", v.round() as i64)
        }
        metric::LOSS_SCALE => format!("{}", v.round() as i64),
        _ => format::num(v, 4),
    }
}

/// The ranks of a run stored on several devices ("cpu,cpu", "cuda:0,cuda:1"), with their latest
/// figures.
async fn rank_views(state: &AppState, id: i64, devices: &str) -> anyhow::Result<Vec<RankView>> {
    let devices: Vec<&str> = devices.split(',').collect();
    if devices.len() < 2 {
        return Ok(Vec::new());
    }
    let names: Vec<(String, String)> = (0..devices.len())
        .map(|r| {
            (
                metric::per_rank(metric::RANK_IMAGES_PER_SEC, r),
                metric::per_rank(metric::RANK_COMM_MS, r),
            )
        })
        .collect();
    let all: Vec<&str> = names
        .iter()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    let latest = backend::latest_metrics(state, id, &all).await?;
    Ok(devices
        .iter()
        .zip(names)
        .enumerate()
        .map(|(rank, (device, (images_metric, comm_metric)))| RankView {
            rank,
            device: device.to_string(),
            images: metric_value(&images_metric, latest.get(&images_metric).copied()),
            comm: metric_value(&comm_metric, latest.get(&comm_metric).copied()),
            images_metric,
            comm_metric,
        })
        .collect())
}

/// GET /runs/{id}
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RunId(id): RunId,
    Query(query): Query<RunQuery>,
) -> Result<Response, WebError> {
    let flash = match query.done.as_deref() {
        Some("cancel") => {
            "Cancel requested: the run stops after its current step and keeps a resumable checkpoint."
        }
        Some("resume") => "The run is queued again and continues from its last full checkpoint.",
        _ => "",
    };
    render_page(
        &state,
        &headers,
        id,
        flash.to_string(),
        false,
        StatusCode::OK,
        None,
    )
    .await
}

/// The run's page with the evaluation form showing why a submission was refused (422).
pub(super) async fn render_with_eval_form(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    form: EvalFormView,
) -> Result<Response, WebError> {
    let flash = "The evaluation was not queued: see the form below.".to_string();
    render_page(
        state,
        headers,
        id,
        flash,
        true,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some(form),
    )
    .await
}

async fn render_page(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    flash: String,
    flash_bad: bool,
    status: StatusCode,
    form: Option<EvalFormView>,
) -> Result<Response, WebError> {
    let (run, config) = backend::get_run(state, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no run {id}")))?;
    let (key_metrics, queue_title, queue_help) = negatives_panel(&config);
    let names: Vec<&str> = key_metrics
        .iter()
        .chain(&DEVICE_METRICS)
        .map(|(_, m)| *m)
        .collect();
    let latest = backend::latest_metrics(state, id, &names).await?;
    let stats = |table: &[(&'static str, &'static str)]| -> Vec<MetricStat> {
        table
            .iter()
            .map(|&(label, name)| MetricStat {
                label,
                metric: name,
                value: metric_value(name, latest.get(name).copied()),
            })
            .collect()
    };
    let queue_stats = stats(key_metrics);
    let device_stats = if run.device.split(',').all(|d| d == "cpu") {
        Vec::new()
    } else {
        stats(&DEVICE_METRICS)
    };
    let ranks = rank_views(state, id, &run.device).await?;
    let checkpoints = backend::checkpoints(state, id)
        .await?
        .into_iter()
        .map(|c| CheckpointView {
            kind_label: if c.kind == "full" {
                "full (resumable)"
            } else {
                "encoder (safetensors)"
            },
            size: format::bytes(c.size_bytes),
            sha256_short: c.sha256.chars().take(12).collect(),
            id: c.id,
            kind: c.kind,
            epoch: c.epoch,
            step: c.step,
            sha256: c.sha256,
            download_url: c.download_url,
        })
        .collect();
    let events = backend::log_events(state, id).await?;
    let last_event_id = backend::last_event_id(state, id).await?;
    let log = events
        .into_iter()
        .map(|e| LogView {
            id: e.id,
            time_short: format::short_time(&e.created_at),
            time: e.created_at,
            level: e.level,
            message: e.message,
        })
        .collect();
    let augmentation = config
        .get("augmentation")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let run_json = serde_json::json!({
        "id": run.id,
        "ranks": ranks.len(),
        "resumable_states": view::resumable_states(),
        "cancellable_states": view::cancellable_states(),
    });
    let evals = crate::db::evals::list(&state.db, Some(&[id]), 500).await?;
    let evals = super::evals::rows(state, &evals).await?;
    let form = match form {
        Some(form) => form,
        None => EvalFormView::for_run(state, id, &Default::default(), Vec::new()).await?,
    };
    let page = RunPage {
        evals,
        form,
        layout: Layout::for_request("", state, headers),
        can_cancel: run.state.can_cancel(),
        can_resume: run.state.can_resume(),
        run: RunView::new(&run),
        flash,
        flash_bad,
        last_event_id,
        queue_stats,
        queue_title,
        queue_help,
        grad_spike_factor: config
            .get("grad_spike_factor")
            .and_then(|v| v.as_f64())
            .map_or_else(|| "5".into(), |v| format::num(v, 3)),
        device_stats,
        ranks,
        augmentation,
        image_size: config
            .get("image_size")
            .and_then(|v| v.as_i64())
            .unwrap_or(0),
        checkpoints,
        log,
        config_rows: form::config_rows(&config),
        run_json: format::script_json(&run_json),
    };
    Ok(render(status, &page))
}

/// After a cancel or resume form: back to the run with `done` for its flash, or the run page
/// with the reason the scheduler refused.
async fn after_action(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    done: &str,
    result: Result<RunSummary, SchedulerError>,
) -> Result<Response, WebError> {
    backend::after_action(result, format!("/runs/{id}?done={done}"), |problem| {
        render_page(
            state,
            headers,
            id,
            problem,
            true,
            StatusCode::CONFLICT,
            None,
        )
    })
    .await
}

/// POST /runs/{id}/cancel
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    RunId(id): RunId,
) -> Result<Response, WebError> {
    let result = state.scheduler.cancel(id).await;
    after_action(&state, &headers, id, "cancel", result).await
}

/// POST /runs/{id}/resume
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    RunId(id): RunId,
) -> Result<Response, WebError> {
    let result = state.scheduler.resume(id).await;
    after_action(&state, &headers, id, "resume", result).await
}

/// POST /runs/{id}/evaluate: 303 to the new evaluation, or this page with the form's errors.
pub async fn evaluate(
    State(state): State<AppState>,
    headers: HeaderMap,
    RunId(id): RunId,
    axum::Form(pairs): axum::Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    if !crate::db::runs::exists(&state.db, id).await? {
        return Err(WebError::not_found(format!("there is no run {id}")));
    }
    super::evals::evaluate_run(&state, &headers, id, pairs).await
}

/// GET /runs/{id}/augment-preview.png: view pairs of a few images under the run's recipe.
pub async fn augment_preview(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<Response, WebError> {
    let (_, config) = backend::get_run(&state, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no run {id}")))?;
    let config: RunConfig = serde_json::from_value(config)
        .map_err(|e| anyhow::anyhow!("run {id} has an unreadable config: {e}"))?;
    let png = backend::augment_preview_png(&state, id, &config).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            // The recipe of a run never changes.
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        png.as_ref().clone(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_values_read_as_the_panel_shows_them() {
        assert_eq!(metric_value(metric::QUEUE_FILL, Some(0.5)), "50.0 %");
        assert_eq!(metric_value(metric::QUEUE_PTR, Some(256.0)), "256");
        assert_eq!(metric_value(metric::DRIFT, Some(0.0123456)), "0.01235");
        assert_eq!(metric_value(metric::DRIFT, None), "—");
    }
}
