//! The evaluations' pages: `/evals` (every evaluation, the form for encoder files, the upload),
//! `/evals/{id}` (one evaluation, kept live by static/eval.js), their cancel / restart forms, and
//! the evaluation form and table that the run and compare pages show too.
use super::form::{config_rows, split_dataset_choice, submitted_values, OptionView, Values};
use super::{backend, format, new_run, render, view, Layout};
use crate::config::{Choice, FieldError, Protocol};
use crate::db::{self, evals::EvalSummary, runs::RunState};
use crate::jobs::scheduler::SchedulerError;
use crate::server::encoders;
use crate::server::error::{EvalId, WebError};
use crate::server::AppState;
use askama::Template;
use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// One evaluation in a table.
pub struct EvalRowView {
    pub id: i64,
    /// 0 for an encoder file.
    pub run_id: i64,
    pub run_name: String,
    pub encoder: String,
    pub label: String,
    pub dataset: String,
    pub encoder_epoch: i64,
    pub top1: String,
    pub top5: String,
    pub state: String,
    pub error: String,
    pub progress_text: String,
}

/// Progress as text, the runs' format (static/app.js `progressText` writes the same).
pub fn progress_text(e: &EvalSummary) -> String {
    view::progress_line(
        e.progress,
        e.epoch,
        e.epochs,
        e.step,
        e.total_steps,
        (e.state == RunState::Running)
            .then_some(e.eta_seconds)
            .flatten(),
    )
}

/// Table rows for `evals`, with the names of the runs they evaluate.
pub async fn rows(state: &AppState, evals: &[EvalSummary]) -> Result<Vec<EvalRowView>, WebError> {
    let mut names: HashMap<i64, String> = HashMap::new();
    for id in evals.iter().filter_map(|e| e.run_id) {
        if let std::collections::hash_map::Entry::Vacant(slot) = names.entry(id) {
            let name = match db::runs::get(&state.db, id).await? {
                Some(run) => view::display_name(&run),
                None => format!("run {id}"),
            };
            slot.insert(name);
        }
    }
    Ok(evals
        .iter()
        .map(|e| EvalRowView {
            id: e.id,
            run_id: e.run_id.unwrap_or(0),
            run_name: e
                .run_id
                .and_then(|id| names.get(&id).cloned())
                .unwrap_or_default(),
            encoder: e.encoder.clone(),
            label: e.label.clone(),
            dataset: e.dataset.clone(),
            encoder_epoch: e.encoder_epoch,
            top1: format::opt_percent(e.top1),
            top5: format::opt_percent(e.top5),
            state: e.state.to_string(),
            error: e.error.clone().unwrap_or_default(),
            progress_text: progress_text(e),
        })
        .collect())
}

/// The evaluation form: what it evaluates (a run's checkpoints or the encoder files), how, on
/// which data.
pub struct EvalFormView {
    pub action: String,
    pub source_key: &'static str,
    pub source_label: &'static str,
    pub sources: Vec<OptionView>,
    pub methods: Vec<OptionView>,
    pub datasets: Vec<OptionView>,
    pub epochs: String,
    pub batch_size: String,
    pub device: String,
    pub errors: Vec<FieldError>,
}

/// The method picker's value for a linear probe of `protocol`, or "knn".
fn method_value(protocol: Option<Protocol>) -> String {
    match protocol {
        Some(p) => format!("linear:{}", p.name()),
        None => "knn".into(),
    }
}

fn method_options(chosen: &str) -> Vec<OptionView> {
    let mut options: Vec<OptionView> = Protocol::all()
        .iter()
        .map(|&p| OptionView {
            value: method_value(Some(p)),
            label: format!("Linear probe, {} protocol: {}", p.name(), p.description()),
            selected: false,
        })
        .collect();
    options.push(OptionView {
        value: method_value(None),
        label: "Weighted kNN (k 200, t 0.1), as the run's monitor".into(),
        selected: false,
    });
    for o in &mut options {
        o.selected = o.value == chosen;
    }
    options
}

impl EvalFormView {
    /// The form with `values` (a re-shown submission) or its defaults: the protocol this
    /// machine runs in reasonable time, the newest checkpoint, the source's own dataset.
    async fn new(
        state: &AppState,
        action: String,
        sources: (&'static str, &'static str, Vec<OptionView>),
        own_dataset: bool,
        values: &Values,
        errors: Vec<FieldError>,
    ) -> EvalFormView {
        let value = |key: &str| values.get(key).cloned().unwrap_or_default();
        let method = values
            .get("method")
            .cloned()
            .unwrap_or_else(|| method_value(Some(Protocol::default_here())));
        let chosen_dataset = value("dataset");
        let mut datasets = new_run::dataset_options(state, &chosen_dataset).await;
        if own_dataset {
            datasets.insert(
                0,
                OptionView {
                    value: String::new(),
                    label: "The run's own dataset (held-out split)".into(),
                    selected: chosen_dataset.is_empty(),
                },
            );
        }
        let (source_key, source_label, mut sources) = sources;
        let chosen_source = value(source_key);
        for o in &mut sources {
            o.selected = o.value == chosen_source;
        }
        EvalFormView {
            action,
            source_key,
            source_label,
            sources,
            methods: method_options(&method),
            datasets,
            epochs: value("epochs"),
            batch_size: value("batch_size"),
            device: values
                .get("device")
                .cloned()
                .unwrap_or_else(|| "auto".into()),
            errors,
        }
    }

    /// The form on a run's page: its checkpoints, newest first.
    pub async fn for_run(
        state: &AppState,
        run_id: i64,
        values: &Values,
        errors: Vec<FieldError>,
    ) -> Result<EvalFormView, WebError> {
        let mut checkpoints = backend::checkpoints(state, run_id).await?;
        checkpoints.sort_by_key(|c| std::cmp::Reverse((c.step, c.id)));
        let mut sources = Vec::new();
        if !checkpoints.is_empty() {
            sources.push(OptionView {
                value: String::new(),
                label: "The newest checkpoint".into(),
                selected: false,
            });
        }
        sources.extend(checkpoints.into_iter().map(|c| OptionView {
            value: c.id.to_string(),
            label: format!(
                "{} · epoch {} (step {})",
                if c.kind == "full" {
                    "full checkpoint"
                } else {
                    "encoder export"
                },
                c.epoch,
                c.step
            ),
            selected: false,
        }));
        Ok(EvalFormView::new(
            state,
            format!("/runs/{run_id}/evaluate"),
            ("checkpoint_id", "Checkpoint", sources),
            true,
            values,
            errors,
        )
        .await)
    }

    /// The form for encoder files of the data directory.
    async fn for_files(
        state: &AppState,
        values: &Values,
        errors: Vec<FieldError>,
    ) -> Result<EvalFormView, WebError> {
        let files = encoders::list(&state.data_dir).await?;
        let sources = files
            .into_iter()
            .map(|f| OptionView {
                label: format!("{} ({})", f.path, format::bytes(f.size_bytes)),
                value: f.path,
                selected: false,
            })
            .collect();
        Ok(EvalFormView::new(
            state,
            "/evals".into(),
            ("encoder", "Encoder file", sources),
            false,
            values,
            errors,
        )
        .await)
    }
}

/// The JSON request a form post describes (the scheduler checks it, naming every bad field).
fn request_from_form(values: &Values, source: Map<String, Value>) -> Value {
    let mut request = source;
    let text = |key: &str| values.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    match text("method") {
        Some("knn") => {
            request.insert("method".into(), json!("knn"));
        }
        Some(choice) => {
            let protocol = choice.strip_prefix("linear:").unwrap_or(choice);
            request.insert("method".into(), json!("linear"));
            request.insert("protocol".into(), json!(protocol));
        }
        None => {}
    }
    if let Some(device) = text("device") {
        request.insert("device".into(), json!(device));
    }
    let mut settings = Map::new();
    for key in ["epochs", "batch_size"] {
        if let Some(v) = text(key) {
            settings.insert(key.into(), json!(v));
        }
    }
    if let Some(choice) = text("dataset") {
        let (kind, path) = split_dataset_choice(choice);
        let mut dataset = Map::new();
        dataset.insert("kind".into(), json!(kind));
        dataset.insert("path".into(), json!(path));
        settings.insert("dataset".into(), Value::Object(dataset));
    }
    request.insert("settings".into(), Value::Object(settings));
    Value::Object(request)
}

/// A refused form: the errors to show (422), or another error as is.
fn form_errors(error: SchedulerError) -> Result<Vec<FieldError>, WebError> {
    match error {
        SchedulerError::Invalid(errors) => Ok(errors),
        SchedulerError::Conflict(message) => Ok(vec![FieldError::new("", message)]),
        other => Err(other.into()),
    }
}

#[derive(Template)]
#[template(path = "evals.html")]
struct EvalsPage {
    layout: Layout,
    evals: Vec<EvalRowView>,
    form: EvalFormView,
    upload_message: String,
    upload_bad: bool,
    upload_limit: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct EvalsQuery {
    /// Set by the redirect after an upload: the stored file's path.
    #[serde(default)]
    uploaded: Option<String>,
}

async fn render_list(
    state: &AppState,
    headers: &HeaderMap,
    form: EvalFormView,
    upload: (String, bool),
    status: StatusCode,
) -> Result<Response, WebError> {
    let evals = db::evals::list(&state.db, None, 500).await?;
    let page = EvalsPage {
        layout: Layout::for_request("evals", state, headers),
        evals: rows(state, &evals).await?,
        form,
        upload_message: upload.0,
        upload_bad: upload.1,
        upload_limit: format::bytes(encoders::UPLOAD_LIMIT as u64),
    };
    Ok(render(status, &page))
}

/// GET /evals
pub async fn list_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EvalsQuery>,
) -> Result<Response, WebError> {
    let mut values = Values::new();
    let upload = match query.uploaded.filter(|p| !p.is_empty()) {
        Some(path) => {
            values.insert("encoder".into(), path.clone());
            (
                format!("Stored as {path}: choose it below to evaluate it."),
                false,
            )
        }
        None => (String::new(), false),
    };
    let form = EvalFormView::for_files(&state, &values, Vec::new()).await?;
    render_list(&state, &headers, form, upload, StatusCode::OK).await
}

/// POST /evals: an evaluation of an encoder file; 303 to it, or the form again with the errors.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let values = submitted_values(pairs);
    let mut source = Map::new();
    if let Some(path) = values.get("encoder").filter(|p| !p.trim().is_empty()) {
        source.insert("encoder".into(), json!(path.trim()));
    }
    match state
        .scheduler
        .create_eval(&request_from_form(&values, source))
        .await
    {
        Ok(created) => Ok(backend::see_other(format!("/evals/{}", created.eval.id))),
        Err(e) => {
            let errors = form_errors(e)?;
            let form = EvalFormView::for_files(&state, &values, errors).await?;
            let upload = (String::new(), false);
            render_list(
                &state,
                &headers,
                form,
                upload,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

/// POST /runs/{id}/evaluate: an evaluation of one of the run's checkpoints.
pub async fn evaluate_run(
    state: &AppState,
    headers: &HeaderMap,
    run_id: i64,
    pairs: Vec<(String, String)>,
) -> Result<Response, WebError> {
    let values = submitted_values(pairs);
    let mut source = Map::new();
    source.insert("run_id".into(), json!(run_id));
    if let Some(id) = values.get("checkpoint_id").filter(|v| !v.trim().is_empty()) {
        source.insert("checkpoint_id".into(), json!(id.trim()));
    }
    match state
        .scheduler
        .create_eval(&request_from_form(&values, source))
        .await
    {
        Ok(created) => Ok(backend::see_other(format!("/evals/{}", created.eval.id))),
        Err(e) => {
            let errors = form_errors(e)?;
            let form = EvalFormView::for_run(state, run_id, &values, errors).await?;
            super::run_page::render_with_eval_form(state, headers, run_id, form).await
        }
    }
}

/// POST /evals/encoders: an uploaded encoder file, checked, then kept under `encoders/`; back to
/// the list with the file chosen, or the list with the reason it was refused (422).
pub async fn upload(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Response, WebError> {
    let refused = |message: String| (message, true);
    let outcome = loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break Err(refused("Choose a .safetensors file to upload.".into())),
            Err(e) => break Err(refused(format!("The upload could not be read: {e}."))),
        };
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or_default().to_string();
        break match encoders::store(&state.data_dir, &name, field).await {
            Ok(stored) => Ok(stored),
            // The messages start with the file's name, kept as the user spelled it.
            Err(WebError::Fields(_, errors)) => Err(refused(
                errors
                    .iter()
                    .map(|e| e.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
            Err(other) => return Err(other),
        };
    };
    match outcome {
        Ok(stored) => Ok(backend::see_other(format!(
            "/evals?uploaded={}",
            urlencode(&stored.path)
        ))),
        Err(upload) => {
            let form = EvalFormView::for_files(&state, &Values::new(), Vec::new()).await?;
            render_list(
                &state,
                &headers,
                form,
                upload,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

/// Percent-encodes everything but unreserved characters (file names are already restricted to
/// letters, digits, `.`, `_`, `-` and the folder's `/`).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One evaluation as its page shows it.
pub struct EvalView {
    id: i64,
    label: String,
    state: String,
    error: String,
    progress: f64,
    progress_percent: String,
    progress_text: String,
    top1: String,
    top5: String,
    best_top1: String,
    last_loss: String,
    run_id: i64,
    run_name: String,
    encoder: String,
    encoder_arch: String,
    encoder_epoch: i64,
    encoder_sha256: String,
    encoder_sha256_short: String,
    dataset: String,
    device: String,
}

pub struct EpochView {
    epoch: i64,
    step: i64,
    lr: String,
    loss: String,
    top1: String,
    top5: String,
}

#[derive(Template)]
#[template(path = "eval.html")]
struct EvalPage {
    layout: Layout,
    eval: EvalView,
    can_cancel: bool,
    can_restart: bool,
    flash: String,
    flash_bad: bool,
    epochs: Vec<EpochView>,
    settings_rows: Vec<(String, String)>,
    eval_json: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct EvalQuery {
    /// Set by the redirect after a cancel or restart.
    #[serde(default)]
    done: Option<String>,
}

/// GET /evals/{id}
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    EvalId(id): EvalId,
    Query(query): Query<EvalQuery>,
) -> Result<Response, WebError> {
    let flash = match query.done.as_deref() {
        Some("cancel") => "Cancel requested: the evaluation stops after its current step.",
        Some("restart") => "The evaluation is queued again and starts over.",
        _ => "",
    };
    render_eval(&state, &headers, id, flash.into(), false, StatusCode::OK).await
}

async fn render_eval(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    flash: String,
    flash_bad: bool,
    status: StatusCode,
) -> Result<Response, WebError> {
    let detail = crate::server::evals_api::detail(state, id).await?;
    let e: EvalSummary = serde_json::from_value(detail["eval"].clone())
        .map_err(|err| anyhow::anyhow!("evaluation {id} reads back unreadable: {err}"))?;
    let row = rows(state, std::slice::from_ref(&e)).await?.remove(0);
    let epochs: Vec<db::evals::EvalEpoch> =
        serde_json::from_value(detail["epochs"].clone()).unwrap_or_default();
    let progress = e.progress.clamp(0.0, 1.0);
    let eval = EvalView {
        id,
        label: e.label.clone(),
        state: row.state,
        error: row.error,
        progress,
        progress_percent: format!("{:.0}", progress * 100.0),
        progress_text: row.progress_text,
        top1: row.top1,
        top5: row.top5,
        best_top1: format::opt_percent(e.best_top1),
        last_loss: format::opt_num(e.last_loss),
        run_id: row.run_id,
        run_name: row.run_name,
        encoder: e.encoder.clone(),
        encoder_arch: e.encoder_arch.clone(),
        encoder_epoch: e.encoder_epoch,
        encoder_sha256_short: e.encoder_sha256.chars().take(12).collect(),
        encoder_sha256: e.encoder_sha256.clone(),
        dataset: e.dataset.clone(),
        device: e.device.clone(),
    };
    let page = EvalPage {
        layout: Layout::for_request("evals", state, headers),
        eval,
        can_cancel: e.state.can_cancel(),
        can_restart: e.state.can_resume(),
        flash,
        flash_bad,
        epochs: epochs
            .iter()
            .map(|x| EpochView {
                epoch: x.epoch,
                step: x.step,
                lr: format::num(x.lr, 4),
                loss: format::num(x.loss, 4),
                top1: format::opt_percent(x.top1),
                top5: format::opt_percent(x.top5),
            })
            .collect(),
        settings_rows: config_rows(&detail["settings"]),
        eval_json: format::script_json(&json!({
            "id": id,
            "cancellable_states": view::cancellable_states(),
            "restartable_states": view::resumable_states(),
            "detail": detail,
        })),
    };
    Ok(render(status, &page))
}

/// After a cancel or restart form: 303 back with `done`, or the page with the reason (409).
async fn after_action(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    done: &str,
    result: Result<EvalSummary, SchedulerError>,
) -> Result<Response, WebError> {
    backend::after_action(result, format!("/evals/{id}?done={done}"), |problem| {
        render_eval(state, headers, id, problem, true, StatusCode::CONFLICT)
    })
    .await
}

/// POST /evals/{id}/cancel
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    EvalId(id): EvalId,
) -> Result<Response, WebError> {
    let result = state.scheduler.cancel_eval(id).await;
    after_action(&state, &headers, id, "cancel", result).await
}

/// POST /evals/{id}/restart
pub async fn restart(
    State(state): State<AppState>,
    headers: HeaderMap,
    EvalId(id): EvalId,
) -> Result<Response, WebError> {
    let result = state.scheduler.restart_eval(id).await;
    after_action(&state, &headers, id, "restart", result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_post_becomes_the_api_request() {
        let values: Values = [
            ("method", "linear:fast"),
            ("dataset", "image_folder:sets/pets"),
            ("epochs", "5"),
            ("batch_size", ""),
            ("device", "cpu"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut source = Map::new();
        source.insert("run_id".into(), json!(3));
        let request = request_from_form(&values, source);
        assert_eq!(
            request,
            json!({"run_id": 3, "method": "linear", "protocol": "fast", "device": "cpu",
                   "settings": {"epochs": "5",
                                "dataset": {"kind": "image_folder", "path": "sets/pets"}}})
        );
        let knn: Values = [("method".to_string(), "knn".to_string())].into();
        assert_eq!(
            request_from_form(&knn, Map::new()),
            json!({"method": "knn", "settings": {}})
        );
        assert_eq!(
            urlencode("encoders/a b.safetensors"),
            "encoders/a%20b.safetensors"
        );
    }
}
