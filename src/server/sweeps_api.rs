//! The sweeps' JSON API: create (or plan) a sweep, list, get with its table, export the table,
//! cancel, resume and delete.
use super::api::parse_body;
use super::error::{SweepId, WebError};
use super::AppState;
use crate::db;
use crate::sweep::{recipes, table, SweepSpec};
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
        .route("/sweeps", get(list).post(create))
        .route("/sweeps/plan", post(plan))
        .route("/sweeps/{id}", get(get_one).delete(delete))
        .route("/sweeps/{id}/table", get(export_table))
        .route("/sweeps/{id}/cancel", post(cancel))
        .route("/sweeps/{id}/resume", post(resume))
        .route("/sweep-recipes", get(list_recipes))
}

/// A request body as a spec, or the error naming what is wrong with it.
pub fn parse_spec(doc: Value) -> Result<SweepSpec, WebError> {
    serde_json::from_value(doc).map_err(|e| {
        WebError::invalid(vec![crate::config::FieldError::new(
            "",
            format!("not a sweep: {e} (expected name, recipe, base and vary)"),
        )])
    })
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, WebError> {
    Ok(Json(
        json!({ "sweeps": db::sweeps::list(&state.db).await? }),
    ))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let spec = parse_spec(parse_body(&body)?)?;
    let sweep = state.scheduler.create_sweep(&spec).await?;
    let location = format!("/api/sweeps/{}", sweep.id);
    let mut resp = (StatusCode::CREATED, Json(detail(&state, sweep.id).await?)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// What a sweep would be, stored nowhere: its members' names, the grid points a recipe leaves
/// out, and the estimated duration of all members one after another.
pub async fn plan_of(state: &AppState, spec: &SweepSpec) -> Result<Value, WebError> {
    let expanded = state.scheduler.expand_sweep(spec).await?;
    let mut seconds = 0.0;
    for m in &expanded.members {
        let estimate = super::estimate::for_run_config(state, m.config.clone())
            .await
            .map_err(WebError::invalid)?;
        seconds += estimate.estimate.seconds;
    }
    let members: Vec<String> = expanded.members.iter().map(|m| m.label()).collect();
    Ok(json!({
        "name": expanded.name,
        "members": members,
        "runs": members.len(),
        "skipped": expanded.skipped,
        "estimate_seconds": seconds,
        "text": format!(
            "{} run{}, {} one after another",
            members.len(),
            if members.len() == 1 { "" } else { "s" },
            crate::train::estimate::duration_words(seconds)
        ),
    }))
}

async fn plan(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, WebError> {
    let spec = parse_spec(parse_body(&body)?)?;
    Ok(Json(plan_of(&state, &spec).await?))
}

/// A sweep with its members, the table of its grid and, for a recipe, the paper's figures.
pub async fn detail(state: &AppState, id: i64) -> Result<Value, WebError> {
    let (sweep, members, spec) = db::sweeps::get(&state.db, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no sweep {id}")))?;
    let results = db::sweeps::results(&state.db, &members).await?;
    let recipe = sweep.recipe.as_deref().and_then(recipes::find);
    let rows = table::rows(&results, recipe);
    let members: Vec<Value> = members
        .iter()
        .zip(&results)
        .map(|(m, r)| {
            json!({
                "position": m.position,
                "values": crate::sweep::values_object(&m.values),
                "label": crate::sweep::label_of(&m.values),
                "outcome": r.outcome(),
                "negatives": r.negatives,
                "linear_top1": r.linear_top1,
                "run": m.run,
            })
        })
        .collect();
    Ok(json!({
        "sweep": sweep,
        "spec": spec,
        "members": members,
        "rows": rows,
        "paper_source": recipe.map(|_| recipes::PAPER_SOURCE),
    }))
}

async fn get_one(
    State(state): State<AppState>,
    SweepId(id): SweepId,
) -> Result<Json<Value>, WebError> {
    Ok(Json(detail(&state, id).await?))
}

#[derive(Debug, Deserialize)]
pub struct TableQuery {
    format: Option<String>,
}

/// The table as a file: `format=csv` (the default) or `format=md`.
async fn export_table(
    State(state): State<AppState>,
    SweepId(id): SweepId,
    Query(q): Query<TableQuery>,
) -> Result<Response, WebError> {
    let (sweep, members, _) = db::sweeps::get(&state.db, id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("there is no sweep {id}")))?;
    let results = db::sweeps::results(&state.db, &members).await?;
    let recipe = sweep.recipe.as_deref().and_then(recipes::find);
    let rows = table::rows(&results, recipe);
    let (body, content_type, extension) = match q.format.as_deref().unwrap_or("csv") {
        "csv" => (
            table::csv(&rows, &sweep.fields, recipe),
            "text/csv; charset=utf-8",
            "csv",
        ),
        "md" | "markdown" => (
            table::markdown(&rows, &sweep.fields, recipe),
            "text/markdown; charset=utf-8",
            "md",
        ),
        other => {
            return Err(WebError::bad_request(
                "format",
                format!("unknown format {other:?}; expected csv or md"),
            ))
        }
    };
    let disposition = format!("attachment; filename=\"sweep-{id}.{extension}\"");
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

async fn cancel(
    State(state): State<AppState>,
    SweepId(id): SweepId,
) -> Result<Json<Value>, WebError> {
    let sweep = state.scheduler.cancel_sweep(id).await?;
    Ok(Json(json!({ "sweep": sweep })))
}

async fn resume(
    State(state): State<AppState>,
    SweepId(id): SweepId,
) -> Result<Json<Value>, WebError> {
    let sweep = state.scheduler.resume_sweep(id).await?;
    Ok(Json(json!({ "sweep": sweep })))
}

async fn delete(
    State(state): State<AppState>,
    SweepId(id): SweepId,
) -> Result<StatusCode, WebError> {
    state.scheduler.delete_sweep(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_recipes() -> Json<Value> {
    Json(json!({ "recipes": recipes::RECIPES, "paper_source": recipes::PAPER_SOURCE }))
}
