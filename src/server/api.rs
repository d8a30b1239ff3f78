//! The JSON API under /api (described by /api/openapi.json).
use super::error::{RunId, WebError};
use super::{auth, datasets_api, downloads, events, openapi, AppState};
use crate::config::{Choice, Preset, RunConfig};
use crate::db::{self, runs::RunFilter, runs::RunSort, runs::RunState};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// Routes relative to /api.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/runs", get(list_runs).post(create_run))
        .route("/runs/{id}", get(get_run).delete(delete_run))
        .route("/runs/{id}/cancel", post(cancel_run))
        .route("/runs/{id}/resume", post(resume_run))
        .route("/runs/{id}/metrics", get(metrics))
        .route("/runs/{id}/evaluations", get(evaluations))
        .route("/runs/{id}/checkpoints", get(checkpoints))
        .route(
            "/runs/{id}/checkpoints/{ckpt}/download",
            get(downloads::download),
        )
        .route("/runs/{id}/events", get(events::stream))
        .route("/estimate", post(estimate_run))
        .route("/presets", get(presets))
        .route("/datasets", get(list_datasets))
        .route(
            "/datasets/downloads",
            get(datasets_api::list).post(datasets_api::start),
        )
        .route("/datasets/stats", get(datasets_api::stats))
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/devices", get(devices))
        .route("/openapi.json", get(openapi_doc))
        .route("/login", post(login))
        .merge(super::evals_api::routes())
        .merge(super::sweeps_api::routes())
        .merge(super::encoders::routes())
        .fallback(not_found)
}

async fn not_found() -> WebError {
    WebError::not_found("no such API endpoint (see /api/openapi.json)")
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    preset: Option<String>,
    search: Option<String>,
    sort: Option<String>,
    limit: Option<String>,
}

async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, WebError> {
    let mut filter = RunFilter::default();
    if let Some(s) = q.state.as_deref().filter(|s| !s.is_empty()) {
        filter.state = Some(RunState::parse(s).ok_or_else(|| {
            WebError::bad_request(
                "state",
                format!(
                    "unknown state {s:?}; expected one of {}",
                    RunState::names_joined()
                ),
            )
        })?);
    }
    if let Some(p) = q.preset.as_deref().filter(|s| !s.is_empty()) {
        if Preset::parse(p).is_none() {
            return Err(WebError::bad_request(
                "preset",
                format!(
                    "unknown preset {p:?}; expected one of {}",
                    Preset::names_joined()
                ),
            ));
        }
        filter.preset = Some(p.to_string());
    }
    filter.search = q.search.filter(|s| !s.trim().is_empty());
    if let Some(s) = q.sort.as_deref().filter(|s| !s.is_empty()) {
        filter.sort = RunSort::parse(s).ok_or_else(|| {
            WebError::bad_request(
                "sort",
                format!(
                    "unknown sort {s:?}; expected one of {}",
                    RunSort::names().join(", ")
                ),
            )
        })?;
    }
    if let Some(l) = q.limit.as_deref().filter(|s| !s.is_empty()) {
        let n: i64 = l
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| WebError::bad_request("limit", "must be a positive integer"))?;
        filter.limit = Some(n);
    }
    let runs = db::runs::list(&state.db, &filter).await?;
    Ok(Json(json!({ "runs": runs })))
}

/// Reads a JSON object body; a body that is not JSON is a 400 naming the problem.
pub(super) fn parse_body(body: &Bytes) -> Result<Value, WebError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| WebError::bad_request("", format!("the body is not valid JSON: {e}")))
}

async fn create_run(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let doc = parse_body(&body)?;
    let created = state.scheduler.create(&doc).await?;
    let location = format!("/api/runs/{}", created.run.id);
    let mut resp = (StatusCode::CREATED, Json(json!(created))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// POST /api/estimate: how long a run of this (partial) config would take here.
async fn estimate_run(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let doc = parse_body(&body)?;
    match crate::server::estimate::for_config(&state, &doc).await {
        Ok(estimate) => Ok(Json(json!(estimate)).into_response()),
        Err(errors) => Err(WebError::invalid(errors)),
    }
}

async fn get_run(State(state): State<AppState>, RunId(id): RunId) -> Result<Json<Value>, WebError> {
    let (run, config) = db::runs::get_with_config(&state.db, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no run {id}")))?;
    Ok(Json(json!({"run": run, "config": config})))
}

async fn cancel_run(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<Json<Value>, WebError> {
    let run = state.scheduler.cancel(id).await?;
    Ok(Json(json!({ "run": run })))
}

async fn resume_run(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<Json<Value>, WebError> {
    let run = state.scheduler.resume(id).await?;
    Ok(Json(json!({ "run": run })))
}

async fn delete_run(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<StatusCode, WebError> {
    state.scheduler.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The run must exist (404 otherwise).
async fn existing_run(state: &AppState, id: i64) -> Result<(), WebError> {
    if db::runs::exists(&state.db, id).await? {
        Ok(())
    } else {
        Err(WebError::not_found(format!("there is no run {id}")))
    }
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    names: Option<String>,
    since_step: Option<String>,
    max_points: Option<String>,
}

/// Points per series when the client does not say.
const DEFAULT_MAX_POINTS: usize = 1000;
const MAX_MAX_POINTS: usize = 100_000;

async fn metrics(
    State(state): State<AppState>,
    RunId(id): RunId,
    Query(q): Query<MetricsQuery>,
) -> Result<Json<Value>, WebError> {
    existing_run(&state, id).await?;
    let since_step = match q.since_step.as_deref().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| WebError::bad_request("since_step", "must be an integer"))?,
    };
    let max_points = match q.max_points.as_deref().filter(|s| !s.is_empty()) {
        None => DEFAULT_MAX_POINTS,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (2..=MAX_MAX_POINTS).contains(n))
            .ok_or_else(|| {
                WebError::bad_request(
                    "max_points",
                    format!("must be an integer between 2 and {MAX_MAX_POINTS}"),
                )
            })?,
    };
    let names: Vec<String> = match q.names.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(list) => {
            let names: Vec<String> = list
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect();
            if names.len() > 64 {
                return Err(WebError::bad_request("names", "at most 64 names"));
            }
            names
        }
        None => db::metrics::names(&state.db, id).await?,
    };
    let series = db::metrics::series(&state.db, id, &names, since_step, max_points).await?;
    Ok(Json(json!({ "series": series })))
}

async fn evaluations(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<Json<Value>, WebError> {
    existing_run(&state, id).await?;
    let evals = db::evaluations::list(&state.db, id).await?;
    Ok(Json(json!({ "evaluations": evals })))
}

async fn checkpoints(
    State(state): State<AppState>,
    RunId(id): RunId,
) -> Result<Json<Value>, WebError> {
    existing_run(&state, id).await?;
    let rows = db::checkpoints::list(&state.db, id).await?;
    let list: Vec<_> = rows.iter().map(|r| r.summary()).collect();
    Ok(Json(json!({ "checkpoints": list })))
}

async fn presets() -> Json<Value> {
    let list: Vec<Value> = Preset::all()
        .iter()
        .map(|&p| {
            json!({
                "name": p.name(),
                "description": p.description(),
                "config": RunConfig::preset(p),
            })
        })
        .collect();
    Json(json!({ "presets": list }))
}

async fn list_datasets(State(state): State<AppState>) -> Result<Json<Value>, WebError> {
    let list = state.datasets().await?;
    Ok(Json(json!({ "datasets": list })))
}

async fn health(State(state): State<AppState>) -> Response {
    let db_ok = db::ping(&state.db).await;
    let body = json!({
        "status": if db_ok { "ok" } else { "degraded" },
        "database": if db_ok { "ok" } else { "unavailable" },
        "active_runs": state.scheduler.active_runs(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn version() -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "tch": crate::doctor::TCH_VERSION,
        "libtorch": crate::doctor::LIBTORCH_VERSION,
    }))
}

async fn devices(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "devices": state.devices }))
}

async fn openapi_doc() -> Json<Value> {
    Json(openapi::document())
}

#[derive(Debug, Deserialize)]
struct LoginBody {
    token: String,
}

/// Checks a token and sets it as an HttpOnly, same-site cookie, so a browser's forms can make
/// changes on a server that requires the token.
async fn login(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let parsed: Option<LoginBody> = serde_json::from_slice(&body)
        .ok()
        .or_else(|| serde_urlencoded_token(&body).map(|token| LoginBody { token }));
    let Some(LoginBody { token }) = parsed else {
        return Err(WebError::bad_request("token", "send {\"token\": \"…\"}"));
    };
    if state.auth.token.is_none() {
        return Ok(Json(json!({"ok": true, "required": false})).into_response());
    }
    if !state.auth.matches(&token) {
        return Err(WebError::Status(
            StatusCode::UNAUTHORIZED,
            "the token is not this server's".into(),
        ));
    }
    let mut resp = Json(json!({"ok": true, "required": true})).into_response();
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict",
        auth::COOKIE,
        token.trim()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `token=…` from a form-encoded body (the token is hex, so no decoding is needed).
fn serde_urlencoded_token(body: &[u8]) -> Option<String> {
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| v.to_string())
}
