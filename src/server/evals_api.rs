//! The evaluations' JSON API: create, list, get, cancel, restart and delete evaluation jobs.
use super::api::parse_body;
use super::error::{EvalId, WebError};
use super::AppState;
use crate::db;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

/// Listed at most when the client does not say.
const DEFAULT_LIMIT: i64 = 200;

/// Routes relative to /api.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/evals", get(list).post(create))
        .route("/evals/{id}", get(get_one).delete(delete))
        .route("/evals/{id}/cancel", post(cancel))
        .route("/evals/{id}/restart", post(restart))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Comma-separated run ids: only the evaluations of these runs' checkpoints.
    runs: Option<String>,
    limit: Option<String>,
}

/// `1,2,3` as run ids, or the error naming `field`.
pub fn parse_ids(raw: &str, field: &str) -> Result<Vec<i64>, WebError> {
    let ids: Result<Vec<i64>, _> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().ok().filter(|id| *id > 0).ok_or(s))
        .collect();
    let ids = ids.map_err(|bad| {
        WebError::bad_request(
            field,
            format!("{bad:?} is not a run id (a positive integer)"),
        )
    })?;
    if ids.len() > 100 {
        return Err(WebError::bad_request(field, "at most 100 ids"));
    }
    Ok(ids)
}

async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, WebError> {
    let runs = match q.runs.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(raw) => Some(parse_ids(raw, "runs")?),
        None => None,
    };
    let limit = match q.limit.as_deref().filter(|s| !s.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| WebError::bad_request("limit", "must be a positive integer"))?,
    };
    let evals = db::evals::list(&state.db, runs.as_deref(), limit).await?;
    Ok(Json(json!({ "evals": evals })))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let doc = parse_body(&body)?;
    let created = state.scheduler.create_eval(&doc).await?;
    let location = format!("/api/evals/{}", created.eval.id);
    let mut resp = (StatusCode::CREATED, Json(json!(created))).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// An evaluation with its settings, its epochs so far and, once completed, its result.
pub async fn detail(state: &AppState, id: i64) -> Result<Value, WebError> {
    let row = db::evals::get(&state.db, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no evaluation {id}")))?;
    let epochs = db::evals::epochs(&state.db, id).await?;
    let settings: Value = serde_json::from_str(&row.config).unwrap_or(Value::Null);
    let result: Value = row
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    Ok(json!({
        "eval": row.summary(),
        "settings": settings,
        "epochs": epochs,
        "result": result,
    }))
}

async fn get_one(
    State(state): State<AppState>,
    EvalId(id): EvalId,
) -> Result<Json<Value>, WebError> {
    Ok(Json(detail(&state, id).await?))
}

async fn cancel(
    State(state): State<AppState>,
    EvalId(id): EvalId,
) -> Result<Json<Value>, WebError> {
    let eval = state.scheduler.cancel_eval(id).await?;
    Ok(Json(json!({ "eval": eval })))
}

async fn restart(
    State(state): State<AppState>,
    EvalId(id): EvalId,
) -> Result<Json<Value>, WebError> {
    let eval = state.scheduler.restart_eval(id).await?;
    Ok(Json(json!({ "eval": eval })))
}

async fn delete(State(state): State<AppState>, EvalId(id): EvalId) -> Result<StatusCode, WebError> {
    state.scheduler.delete_eval(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
