//! `/sweeps`: every sweep; the New sweep form is the New run form (`/runs/new`) with the grid
//! below its settings — one or two fields with their values, seeds, or a recipe — and the number
//! of runs and the estimated duration shown as the user types. `/sweeps/{id}`: the grid as a live
//! table with the members' curves overlaid, CSV and Markdown exports, cancel and resume.
use super::form::{self, submitted_values, OptionView, Values};
use super::format;
use super::new_run::{build_page, shown_again};
use super::{backend, render, Layout};
use crate::config::FieldError;
use crate::db::{self, sweeps::SweepSummary};
use crate::jobs::SchedulerError;
use crate::server::error::{SweepId, WebError};
use crate::server::AppState;
use crate::sweep::{parse_axis, recipes, SweepSpec, SweepState};
use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

/// One sweep in the list.
pub struct SweepRowView {
    id: i64,
    name: String,
    recipe: String,
    state: &'static str,
    members: usize,
    counts: String,
    progress_percent: String,
    created_at: String,
}

impl SweepRowView {
    fn of(s: &SweepSummary) -> Self {
        SweepRowView {
            id: s.id,
            name: s.name.clone(),
            recipe: s.recipe.clone().unwrap_or_default(),
            state: s.state.as_str(),
            members: s.members,
            counts: s
                .counts
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", "),
            progress_percent: format!("{:.0}", s.progress * 100.0),
            created_at: s.created_at.clone(),
        }
    }
}

/// The grid part of the New run form: the recipe, the varied fields and the seeds as typed.
pub struct SweepGridView {
    pub(super) recipes: Vec<OptionView>,
    pub(super) recipe_help: Vec<(String, String, String)>,
    pub(super) vary1_field: String,
    pub(super) vary1_values: String,
    pub(super) vary2_field: String,
    pub(super) vary2_values: String,
    pub(super) seeds: String,
    /// Every setting's name, for the field pickers.
    pub(super) fields: Vec<String>,
    /// Shown open when something of it was typed or is wrong.
    pub(super) open: bool,
    /// The form came back from "Start a sweep": its problems are the sweep's.
    pub(super) posted: bool,
}

/// The form's keys of the grid (the rest of the form is the run's settings).
const GRID_KEYS: [&str; 6] = [
    "recipe",
    "vary1_field",
    "vary1_values",
    "vary2_field",
    "vary2_values",
    "seeds",
];

impl SweepGridView {
    pub fn new(values: &Values, errors: &[FieldError]) -> Self {
        let get = |k: &str| values.get(k).cloned().unwrap_or_default();
        let recipe = get("recipe");
        let grid_error = errors.iter().any(|e| {
            e.field.starts_with("members[")
                || ["vary", "recipe", "seeds"].contains(&e.field.as_str())
        });
        SweepGridView {
            recipes: std::iter::once(OptionView {
                value: String::new(),
                label: "none: the fields below".into(),
                selected: recipe.is_empty(),
            })
            .chain(recipes::RECIPES.iter().map(|r| OptionView {
                value: r.name.into(),
                label: r.title.into(),
                selected: r.name == recipe,
            }))
            .collect(),
            recipe_help: recipes::RECIPES
                .iter()
                .map(|r| {
                    (
                        r.name.to_string(),
                        r.title.to_string(),
                        r.description.to_string(),
                    )
                })
                .collect(),
            vary1_field: get("vary1_field"),
            vary1_values: get("vary1_values"),
            vary2_field: get("vary2_field"),
            vary2_values: get("vary2_values"),
            seeds: get("seeds"),
            fields: crate::config::settings::all()
                .iter()
                .map(|s| s.key.clone())
                .collect(),
            open: grid_error || GRID_KEYS.iter().any(|k| !get(k).trim().is_empty()),
            posted: false,
        }
    }
}

#[derive(Template)]
#[template(path = "sweeps.html")]
struct SweepsPage {
    layout: Layout,
    sweeps: Vec<SweepRowView>,
}

/// GET /sweeps
pub async fn list_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, WebError> {
    let sweeps = db::sweeps::list(&state.db).await?;
    Ok(render(
        StatusCode::OK,
        &SweepsPage {
            layout: Layout::for_request("sweeps", &state, &headers),
            sweeps: sweeps.iter().map(SweepRowView::of).collect(),
        },
    ))
}

/// The spec a New run form posted with its grid describes: the base is the run the form
/// describes (its preset, dataset and every setting), the grid the recipe, up to two varied fields
/// and the seeds.
pub fn spec_from_form(values: &Values) -> Result<SweepSpec, Vec<FieldError>> {
    let get = |k: &str| {
        values
            .get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (base, mut errors) = form::partial_config(values);
    let mut vary = Vec::new();
    for (field, values_key) in [
        ("vary1_field", "vary1_values"),
        ("vary2_field", "vary2_values"),
    ] {
        let (field, list) = (get(field), get(values_key));
        if field.is_empty() && list.is_empty() {
            continue;
        }
        match parse_axis(&format!("{field}={list}")) {
            Ok(axis) => vary.push(axis),
            Err(e) => errors.push(FieldError::new("vary", e.message)),
        }
    }
    if !get("seeds").is_empty() {
        match parse_axis(&format!("seed={}", get("seeds"))) {
            Ok(axis) => vary.push(axis),
            Err(e) => errors.push(FieldError::new("seeds", e.message)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(SweepSpec {
        name: get("name"),
        recipe: Some(get("recipe")).filter(|r| !r.is_empty()),
        base,
        vary,
    })
}

fn sentences(errors: &[FieldError]) -> Vec<String> {
    errors
        .iter()
        .map(|e| {
            if e.field.is_empty() {
                backend::capitalised(&e.message)
            } else {
                format!("{}: {}", e.field, e.message)
            }
        })
        .collect()
}

/// POST /sweeps (the New run form's "Start a sweep"): 303 to the new sweep, or the form again
/// with every problem.
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let values = submitted_values(pairs);
    let errors = match spec_from_form(&values) {
        Ok(spec) => match state.scheduler.create_sweep(&spec).await {
            Ok(sweep) => return Ok(backend::see_other(format!("/sweeps/{}", sweep.id))),
            Err(SchedulerError::Invalid(errors)) => errors,
            Err(SchedulerError::Conflict(m)) => vec![FieldError::new("", m)],
            Err(other) => return Err(other.into()),
        },
        Err(errors) => errors,
    };
    let values = shown_again(values);
    let mut page = build_page(&state, &headers, &values, &errors, String::new()).await;
    page.sweep.posted = true;
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}

/// POST /sweeps/plan (the form's live line): the plan as JSON, or the problems as sentences.
pub async fn plan(
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let values = submitted_values(pairs);
    let result = match spec_from_form(&values) {
        Ok(spec) => crate::server::sweeps_api::plan_of(&state, &spec).await,
        Err(errors) => Err(WebError::invalid(errors)),
    };
    Ok(match result {
        Ok(plan) => axum::Json(plan).into_response(),
        Err(WebError::Fields(_, errors)) => {
            axum::Json(json!({"problems": sentences(&errors)})).into_response()
        }
        Err(other) => return Err(other),
    })
}

/// One row of the sweep's table as the page draws it.
pub struct TableRowView {
    cells: Vec<String>,
    outcome: String,
    best: String,
    last: String,
    linear: String,
    paper: String,
    negatives: i64,
    runs: Vec<i64>,
}

pub struct MemberView {
    position: usize,
    label: String,
    run_id: i64,
    state: String,
    outcome: String,
    progress_percent: String,
    best_knn: String,
}

#[derive(Template)]
#[template(path = "sweep.html")]
struct SweepPage {
    layout: Layout,
    id: i64,
    name: String,
    state: &'static str,
    progress_percent: String,
    progress: f64,
    counts: String,
    fields: Vec<String>,
    rows: Vec<TableRowView>,
    members: Vec<MemberView>,
    has_paper: bool,
    paper_source: String,
    skipped: Vec<String>,
    compare_href: String,
    can_cancel: bool,
    can_resume: bool,
    flash: String,
    flash_bad: bool,
    detail_json: String,
}

#[derive(Debug, Deserialize)]
pub struct SweepQuery {
    done: Option<String>,
}

/// GET /sweeps/{id}
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    SweepId(id): SweepId,
    Query(query): Query<SweepQuery>,
) -> Result<Response, WebError> {
    let flash = match query.done.as_deref() {
        Some("cancel") => "Cancelled: members still to finish stop (a running one after its step).",
        Some("resume") => "Resumed: the cancelled and interrupted members are queued again.",
        _ => "",
    };
    render_sweep(&state, &headers, id, flash.into(), false, StatusCode::OK).await
}

async fn render_sweep(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    flash: String,
    flash_bad: bool,
    status: StatusCode,
) -> Result<Response, WebError> {
    let detail = crate::server::sweeps_api::detail(state, id).await?;
    let sweep: SweepSummary = serde_json::from_value(detail["sweep"].clone())
        .map_err(|e| anyhow::anyhow!("sweep {id} reads back unreadable: {e}"))?;
    let fields: Vec<String> = sweep
        .fields
        .iter()
        .filter(|f| *f != "seed")
        .cloned()
        .collect();
    let stat = |row: &Value, key: &str| {
        crate::sweep::table::Stat::text(serde_json::from_value(row[key].clone()).ok().flatten())
    };
    let rows = detail["rows"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|row| TableRowView {
            cells: fields
                .iter()
                .map(|f| {
                    row["values"]
                        .as_array()
                        .and_then(|pairs| pairs.iter().find(|p| p[0] == f.as_str()))
                        .map(|p| crate::config::settings::value_text(&p[1]))
                        .unwrap_or_default()
                })
                .collect(),
            outcome: row["outcome"].as_str().unwrap_or_default().into(),
            best: stat(row, "best_knn"),
            last: stat(row, "final_knn"),
            linear: stat(row, "linear_top1"),
            paper: row["paper"].as_str().unwrap_or("—").into(),
            negatives: row["negatives"].as_i64().unwrap_or_default(),
            runs: serde_json::from_value(row["run_ids"].clone()).unwrap_or_default(),
        })
        .collect();
    let members: Vec<MemberView> = detail["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| MemberView {
            position: m["position"].as_u64().unwrap_or_default() as usize + 1,
            label: m["label"].as_str().unwrap_or_default().into(),
            run_id: m["run"]["id"].as_i64().unwrap_or_default(),
            state: m["run"]["state"].as_str().unwrap_or_default().into(),
            outcome: m["outcome"].as_str().unwrap_or_default().into(),
            progress_percent: format!(
                "{:.0}",
                m["run"]["progress"].as_f64().unwrap_or(0.0) * 100.0
            ),
            best_knn: format::opt_percent(m["run"]["best_knn"].as_f64()),
        })
        .collect();
    let ids: Vec<String> = members
        .iter()
        .take(12)
        .map(|m| m.run_id.to_string())
        .collect();
    let active = matches!(sweep.state, SweepState::Running | SweepState::Queued);
    let resumable = members
        .iter()
        .any(|m| m.state == "cancelled" || m.state == "interrupted");
    let page = SweepPage {
        layout: Layout::for_request("sweeps", state, headers),
        id,
        name: sweep.name.clone(),
        state: sweep.state.as_str(),
        progress: sweep.progress.clamp(0.0, 1.0),
        progress_percent: format!("{:.0}", sweep.progress * 100.0),
        counts: sweep
            .counts
            .iter()
            .map(|(state, n)| format!("{n} {state}"))
            .collect::<Vec<_>>()
            .join(", "),
        has_paper: detail["paper_source"].is_string(),
        paper_source: detail["paper_source"].as_str().unwrap_or_default().into(),
        skipped: sweep.skipped.clone(),
        compare_href: format!("/compare?ids={}", ids.join(",")),
        can_cancel: active || members.iter().any(|m| m.state == "interrupted"),
        can_resume: resumable,
        fields,
        rows,
        members,
        flash,
        flash_bad,
        detail_json: format::script_json(&detail),
    };
    Ok(render(status, &page))
}

async fn after_action(
    state: &AppState,
    headers: &HeaderMap,
    id: i64,
    done: &str,
    result: Result<SweepSummary, SchedulerError>,
) -> Result<Response, WebError> {
    backend::after_action(result, format!("/sweeps/{id}?done={done}"), |problem| {
        render_sweep(state, headers, id, problem, true, StatusCode::CONFLICT)
    })
    .await
}

/// POST /sweeps/{id}/cancel
pub async fn cancel(
    State(state): State<AppState>,
    headers: HeaderMap,
    SweepId(id): SweepId,
) -> Result<Response, WebError> {
    let result = state.scheduler.cancel_sweep(id).await;
    after_action(&state, &headers, id, "cancel", result).await
}

/// POST /sweeps/{id}/resume
pub async fn resume(
    State(state): State<AppState>,
    headers: HeaderMap,
    SweepId(id): SweepId,
) -> Result<Response, WebError> {
    let result = state.scheduler.resume_sweep(id).await;
    after_action(&state, &headers, id, "resume", result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_post_becomes_the_sweep_spec() {
        let values: Values = [
            ("name", "m"),
            ("recipe", ""),
            ("preset", "demo"),
            ("dataset", "synthetic"),
            ("epochs", "2"),
            ("dataset.synthetic_train", "500"),
            ("vary1_field", "momentum"),
            ("vary1_values", "0, 0.9,0.99"),
            ("vary2_field", ""),
            ("vary2_values", ""),
            ("seeds", "0,1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let spec = spec_from_form(&values).unwrap();
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"name": "m", "recipe": null,
                   "base": {"preset": "demo", "name": "m", "epochs": 2,
                            "dataset": {"kind": "synthetic", "synthetic_train": 500}},
                   "vary": [{"field": "momentum", "values": [0, 0.9, 0.99]},
                            {"field": "seed", "values": [0, 1]}]})
        );
        let mut bad = values.clone();
        bad.insert("epochs".into(), "two".into());
        assert_eq!(spec_from_form(&bad).unwrap_err()[0].field, "epochs");
    }
}
