//! `/runs/new`: the form (GET, optionally `?preset=` or `?from=<run id>`) and its submission
//! (POST form-encoded: 303 to the new run, or 422 with every error beside its field and the
//! typed values kept).
use super::form::{self, FieldView, OptionView, Values};
use super::{backend, format, render, view, Layout};
use crate::config::settings::{self, Group};
use crate::config::{Choice, FieldError, Preset, RunConfig};
use crate::jobs::scheduler::SchedulerError;
use crate::server::error::{parse_id, WebError};
use crate::server::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct NewRunQuery {
    #[serde(default)]
    preset: Option<String>,
    /// Start from the settings of this run.
    #[serde(default)]
    from: Option<String>,
}

pub struct ErrorView {
    field: String,
    anchor: String,
    message: String,
}

pub struct SectionView {
    title: &'static str,
    fields: Vec<FieldView>,
}

pub struct PresetLink {
    name: &'static str,
    href: String,
}

#[derive(Template)]
#[template(path = "new_run.html")]
pub(super) struct NewRunPage {
    layout: Layout,
    errors: Vec<ErrorView>,
    source_note: String,
    basics: Vec<FieldView>,
    sections: Vec<SectionView>,
    advanced_open: bool,
    preset_links: Vec<PresetLink>,
    effective_lr: String,
    queue_rule: String,
    /// Whether the queue / batch rule holds for the values shown.
    queue_ok: bool,
    /// The estimated duration, or why there is none yet.
    estimate: String,
    presets_json: String,
    /// The sweep's grid below the settings: the same form started as a sweep.
    pub(super) sweep: super::sweeps::SweepGridView,
}

/// The form's estimate line: the duration, or what keeps it from being computed.
async fn estimate_text(state: &AppState, values: &Values) -> String {
    let (doc, parse_errors) = form::partial_config(values);
    if !parse_errors.is_empty() {
        return NO_ESTIMATE.into();
    }
    match crate::server::estimate::for_config(state, &doc).await {
        Ok(estimate) => estimate.text,
        Err(_) => NO_ESTIMATE.into(),
    }
}

const NO_ESTIMATE: &str = "— (fix the settings marked below to see it)";

/// The dataset picker's entries: the built-in synthetic set, then what the data directory holds.
pub(super) async fn dataset_options(state: &AppState, chosen: &str) -> Vec<OptionView> {
    let listing = backend::list_datasets(state).await.unwrap_or_else(|e| {
        tracing::warn!("cannot list datasets: {e:#}");
        Vec::new()
    });
    let mut options: Vec<OptionView> = listing
        .into_iter()
        .map(|d| OptionView {
            selected: d.value == chosen,
            value: d.value,
            label: d.label,
        })
        .collect();
    if !options.iter().any(|o| o.value == "synthetic") {
        options.insert(
            0,
            OptionView {
                value: "synthetic".into(),
                label: "Synthetic shapes (built in)".into(),
                selected: chosen == "synthetic",
            },
        );
    }
    // A choice that is no longer listed (or a hand-made post) stays selected, so its error shows.
    if !chosen.is_empty() && !options.iter().any(|o| o.value == chosen) {
        options.push(OptionView {
            value: chosen.to_string(),
            label: format!("{chosen} (not found in the data directory)"),
            selected: true,
        });
    }
    options
}

pub(super) async fn build_page(
    state: &AppState,
    headers: &HeaderMap,
    values: &Values,
    errors: &[FieldError],
    source_note: String,
) -> NewRunPage {
    let errors_for = |key: &str| -> Vec<String> {
        errors
            .iter()
            .filter(|e| {
                e.field == key
                    || (key == form::DATASET_KEY
                        && (e.field == "dataset.kind" || e.field == "dataset.path"))
            })
            .map(|e| e.message.clone())
            .collect()
    };
    let preset_name = values
        .get(form::PRESET_KEY)
        .cloned()
        .unwrap_or_else(|| Preset::default_here().name().into());
    let preset = Preset::parse(&preset_name);

    let mut preset_options: Vec<OptionView> = Preset::all()
        .iter()
        .map(|p| OptionView {
            value: p.name().into(),
            label: p.name().to_string(),
            selected: p.name() == preset_name,
        })
        .collect();
    if preset.is_none() {
        preset_options.push(OptionView {
            value: preset_name.clone(),
            label: format!("{preset_name} (unknown)"),
            selected: true,
        });
    }
    let chosen_dataset = values.get(form::DATASET_KEY).cloned().unwrap_or_default();
    let preset_help = match preset {
        Some(p) => format!("{}. Every value can be changed.", p.description()),
        None => "The paper's settings to start from.".to_string(),
    };
    let field = |s: &settings::Setting| FieldView::from_setting(s, values, errors_for(&s.key));
    let mut other_basics = settings::in_group(Group::Basics);
    let name_setting = other_basics
        .next()
        .expect("the form's basics start with the name");
    let mut basics = vec![
        field(name_setting),
        FieldView::select(
            form::PRESET_KEY,
            "Preset",
            &preset_help,
            preset_options,
            errors_for(form::PRESET_KEY),
        ),
        FieldView {
            wide: true,
            ..FieldView::select(
                form::DATASET_KEY,
                "Dataset",
                "The built-in synthetic set, or a dataset found under the server's data \
                 directory (training + held-out images).",
                dataset_options(state, &chosen_dataset).await,
                errors_for(form::DATASET_KEY),
            )
        },
    ];
    basics.extend(other_basics.map(field));
    let sections: Vec<SectionView> = form::advanced_groups()
        .map(|group| SectionView {
            title: group.title(),
            fields: settings::in_group(group).map(field).collect(),
        })
        .collect();
    let advanced_open = sections
        .iter()
        .flat_map(|s| s.fields.iter())
        .any(|f| !f.errors.is_empty());

    let queue_rule = form::queue_rule(values);
    NewRunPage {
        layout: Layout::for_request("new", state, headers),
        errors: errors
            .iter()
            .map(|e| ErrorView {
                field: if e.field.is_empty() {
                    "config".into()
                } else {
                    e.field.clone()
                },
                anchor: form::anchor_for(&e.field).unwrap_or_default(),
                message: e.message.clone(),
            })
            .collect(),
        source_note,
        basics,
        sections,
        advanced_open,
        preset_links: Preset::all()
            .iter()
            .map(|p| PresetLink {
                name: p.name(),
                href: format!("/runs/new?preset={}", p.name()),
            })
            .collect(),
        effective_lr: form::effective_lr(values),
        queue_rule: queue_rule.0,
        queue_ok: queue_rule.1,
        estimate: estimate_text(state, values).await,
        presets_json: format::script_json(&form::presets_json()),
        sweep: super::sweeps::SweepGridView::new(values, errors),
    }
}

/// GET /runs/new
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<NewRunQuery>,
) -> Result<Response, WebError> {
    let (values, note) = match (&query.from, &query.preset) {
        (Some(from), _) if !from.is_empty() => {
            let id = parse_id(from, "run")?;
            let (run, config) = backend::get_run(&state, id)
                .await?
                .ok_or_else(|| WebError::not_found(format!("there is no run {id}")))?;
            let mut cfg: RunConfig = serde_json::from_value(config).map_err(|e| {
                WebError::internal(format!("run {id} has an unreadable config: {e}"))
            })?;
            cfg.name = if run.name.is_empty() {
                String::new()
            } else {
                format!("{} (copy)", run.name)
            };
            (
                form::values_from_config(&cfg),
                format!(
                    "Settings copied from run #{id} ({}). Change what the new run should vary.",
                    view::display_name(&run)
                ),
            )
        }
        (_, Some(p)) if !p.is_empty() => {
            let preset = Preset::parse(p).ok_or_else(|| {
                WebError::bad_request(
                    "preset",
                    format!(
                        "unknown preset {p:?}; the presets are {}",
                        Preset::names_joined()
                    ),
                )
            })?;
            (
                form::values_from_config(&RunConfig::preset(preset)),
                String::new(),
            )
        }
        _ => (
            form::values_from_config(&RunConfig::preset(Preset::default_here())),
            String::new(),
        ),
    };
    let page = build_page(&state, &headers, &values, &[], note).await;
    Ok(render(StatusCode::OK, &page))
}

/// POST /runs/new/estimate (the form's fields, form-encoded): the lines derived from the
/// settings as JSON, for the script that keeps them current as the user types. The rules live
/// here only: the script writes what it is sent.
pub async fn estimate(
    State(state): State<AppState>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let values = form::submitted_values(pairs);
    let (queue_rule, queue_ok) = form::queue_rule(&values);
    axum::Json(serde_json::json!({
        "text": estimate_text(&state, &values).await,
        "effective_lr": form::effective_lr(&values),
        "queue_rule": queue_rule,
        "queue_ok": queue_ok,
    }))
    .into_response()
}

/// What a form shows again after a post: what was typed, over the chosen preset's defaults for
/// anything not sent (those are what the server used).
pub(super) fn shown_again(submitted: Values) -> Values {
    let preset = submitted
        .get(form::PRESET_KEY)
        .and_then(|p| Preset::parse(p.trim()))
        .unwrap_or_else(Preset::default_here);
    let mut values = form::values_from_config(&RunConfig::preset(preset));
    values.extend(submitted);
    values
}

/// POST /runs/new
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, WebError> {
    let submitted = form::submitted_values(pairs);
    let (doc, parse_errors) = form::partial_config(&submitted);
    let values = shown_again(submitted);
    let errors = if parse_errors.is_empty() {
        match state.scheduler.create(&doc).await {
            Ok(created) => {
                return Ok((
                    StatusCode::SEE_OTHER,
                    [(header::LOCATION, format!("/runs/{}", created.run.id))],
                )
                    .into_response())
            }
            Err(SchedulerError::Invalid(errors)) => errors,
            Err(other) => return Err(other.into()),
        }
    } else {
        form::local_errors(&doc, parse_errors)
    };
    let page = build_page(&state, &headers, &values, &errors, String::new()).await;
    Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page))
}
