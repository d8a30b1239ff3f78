//! `/compare?ids=1,2,3`: several runs side by side: their results, their settings with the
//! differences first and highlighted, and (static/compare.js) chosen metrics overlaid.
use super::view;
use super::{backend, form, format, render, Layout};
use crate::db::runs::RunSummary;
use crate::server::error::WebError;
use crate::server::AppState;
use crate::train::events::metric;
use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// More curves than this on one chart are unreadable.
const MAX_RUNS: usize = 12;

/// Series colours (static/app.js uses the same palette).
const PALETTE: [&str; 8] = [
    "#2f6fdf", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0c8599", "#5c940d", "#d6336c",
];

/// Metrics that can be overlaid: (name, label, per epoch, smoothed).
const METRICS: [(&str, &str, bool, bool); 17] = [
    (metric::LOSS, "Loss", false, true),
    ("knn_top1", "kNN top-1 % (per epoch)", true, false),
    (metric::TOP1, "Contrastive top-1", false, true),
    (metric::LR, "Learning rate", false, false),
    (metric::MOMENTUM, "Momentum m", false, false),
    (metric::POS_LOGIT, "Positive logit", false, true),
    (metric::NEG_LOGIT, "Negative logit (mean)", false, true),
    (metric::QUEUE_SIMILARITY, "Queue similarity", false, true),
    (metric::DRIFT, "Encoder drift", false, true),
    (metric::KEY_AGE_MEAN, "Key age (mean)", false, false),
    (metric::QUEUE_FILL, "Queue fill", false, false),
    (
        metric::GRAD_NORM,
        "Gradient norm (largest per interval)",
        false,
        false,
    ),
    (
        metric::GRAD_NORM_FIRST,
        "First layer's gradient norm",
        false,
        false,
    ),
    (metric::IMAGES_PER_SEC, "Images/s", false, true),
    (metric::DATA_WAIT_MS, "Data wait (ms)", false, true),
    (
        metric::DEVICE_MEMORY_MB,
        "Device memory (MiB, GPU)",
        false,
        false,
    ),
    (metric::LOSS_SCALE, "Loss scale (fp16)", false, false),
];
const DEFAULT_METRICS: [&str; 3] = [metric::LOSS, "knn_top1", metric::TOP1];

pub struct RunColumn {
    id: i64,
    name: String,
    state: String,
    color: &'static str,
    differs: String,
    final_knn: String,
    best_knn: String,
    last_loss: String,
    steps: String,
    images_per_sec: String,
}

pub struct SettingRow {
    key: String,
    values: Vec<String>,
    differs: bool,
}

pub struct MetricChoice {
    name: &'static str,
    label: &'static str,
    selected: bool,
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    layout: Layout,
    problems: Vec<String>,
    runs: Vec<RunColumn>,
    setting_rows: Vec<SettingRow>,
    diff_count: usize,
    metric_choices: Vec<MetricChoice>,
    compare_json: String,
    /// Every evaluation of the compared runs' checkpoints.
    evals: Vec<super::evals::EvalRowView>,
}

/// Run ids from `ids=1,2,3` (and the `ids=1&ids=2` a plain form sends), in order, without
/// repeats; what is not an id is reported.
fn parse_ids(query: &str) -> (Vec<i64>, Vec<String>) {
    let mut ids = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in form_urlencoded_pairs(query) {
        if key != "ids" {
            continue;
        }
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<i64>() {
                Ok(id) if id > 0 => {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                _ => problems.push(format!("{part:?} is not a run id.")),
            }
        }
    }
    (ids, problems)
}

fn query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded_pairs(query)
        .into_iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Decodes `a=1&b=x%2Cy` (the query arrives raw so repeated keys survive).
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    let Ok(uri) = format!("/?{query}").parse::<axum::http::Uri>() else {
        return Vec::new();
    };
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

/// The settings that differ between runs, as "key=value" for one run.
fn differs_text(rows: &[SettingRow], index: usize) -> String {
    let parts: Vec<String> = rows
        .iter()
        .filter(|r| r.differs && r.key != "name")
        .map(|r| format!("{}={}", r.key, r.values[index]))
        .collect();
    if parts.len() > 4 {
        format!("{}, … ({} more)", parts[..4].join(", "), parts.len() - 4)
    } else {
        parts.join(", ")
    }
}

/// The runs' settings in the form's order; rows that differ first.
fn setting_rows(configs: &[serde_json::Value]) -> Vec<SettingRow> {
    let per_run: Vec<Vec<(String, String)>> = configs.iter().map(form::config_rows).collect();
    let mut keys: Vec<String> = Vec::new();
    for rows in &per_run {
        for (k, _) in rows {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut rows: Vec<SettingRow> = keys
        .into_iter()
        .map(|key| {
            let values: Vec<String> = per_run
                .iter()
                .map(|rows| {
                    rows.iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| "—".into())
                })
                .collect();
            let differs = values.iter().any(|v| *v != values[0]);
            SettingRow {
                key,
                values,
                differs,
            }
        })
        .collect();
    // Stable: within each group the form's order stays.
    rows.sort_by_key(|r| !r.differs);
    rows
}

/// GET /compare
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, WebError> {
    let (state, headers) = (&state, &headers);
    let query = query.unwrap_or_default();
    let (ids, mut problems) = parse_ids(&query);
    let selected: Vec<String> = match query_value(&query, "metrics") {
        Some(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| METRICS.iter().any(|m| m.0 == s))
            .collect(),
        _ => DEFAULT_METRICS.iter().map(|s| s.to_string()).collect(),
    };
    let mut ids = ids;
    if ids.len() > MAX_RUNS {
        problems.push(format!(
            "At most {MAX_RUNS} runs can be compared; showing the first {MAX_RUNS}."
        ));
        ids.truncate(MAX_RUNS);
    }

    let mut runs: Vec<RunSummary> = Vec::new();
    let mut configs = Vec::new();
    for id in ids {
        match backend::get_run(state, id).await? {
            Some((run, config)) => {
                runs.push(run);
                configs.push(config);
            }
            None => problems.push(format!("There is no run {id}.")),
        }
    }
    if runs.len() == 1 {
        problems.push("Only one run: tick at least two on the runs page to compare them.".into());
    }
    let rows = setting_rows(&configs);
    let diff_count = rows.iter().filter(|r| r.differs && r.key != "name").count();
    let columns: Vec<RunColumn> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| RunColumn {
            id: r.id,
            name: view::display_name(r),
            state: r.state.to_string(),
            color: PALETTE[i % PALETTE.len()],
            differs: differs_text(&rows, i),
            final_knn: format::opt_percent(r.last_knn),
            best_knn: format::opt_percent(r.best_knn),
            last_loss: format::opt_num(r.last_loss),
            steps: format!("{}/{}", r.step, r.total_steps),
            images_per_sec: format::opt_fixed(r.images_per_sec, 1),
        })
        .collect();
    let compare_json = serde_json::json!({
        "runs": columns.iter().map(|c| {
            let label = if c.differs.is_empty() {
                format!("#{} {}", c.id, c.name)
            } else {
                format!("#{} {} ({})", c.id, c.name, c.differs)
            };
            serde_json::json!({"id": c.id, "label": label, "color": c.color})
        }).collect::<Vec<_>>(),
        "metrics": METRICS.iter().map(|(name, label, per_epoch, smooth)| {
            serde_json::json!({"name": name, "label": label, "per_epoch": per_epoch, "smooth": smooth})
        }).collect::<Vec<_>>(),
    });
    let run_ids: Vec<i64> = runs.iter().map(|r| r.id).collect();
    let evals = crate::db::evals::list(&state.db, Some(&run_ids), 500).await?;
    let evals = super::evals::rows(state, &evals).await?;
    let page = ComparePage {
        evals,
        layout: Layout::for_request("", state, headers),
        problems,
        runs: columns,
        diff_count,
        setting_rows: rows,
        metric_choices: METRICS
            .iter()
            .map(|&(name, label, _, _)| MetricChoice {
                name,
                label,
                selected: selected.iter().any(|s| s == name),
            })
            .collect(),
        compare_json: format::script_json(&compare_json),
    };
    Ok(render(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Preset, RunConfig};

    #[test]
    fn ids_come_from_commas_and_repeats() {
        assert_eq!(parse_ids("ids=3,1,2").0, vec![3, 1, 2]);
        assert_eq!(parse_ids("ids=1&ids=2&ids=1").0, vec![1, 2]);
        assert_eq!(parse_ids("ids=1%2C4").0, vec![1, 4]);
        let (ids, problems) = parse_ids("ids=1,x,-2&metrics=loss");
        assert_eq!(ids, vec![1]);
        assert_eq!(
            problems,
            vec!["\"x\" is not a run id.", "\"-2\" is not a run id."]
        );
        assert_eq!(
            query_value("ids=1&metrics=loss,lr", "metrics").as_deref(),
            Some("loss,lr")
        );
    }

    #[test]
    fn differences_come_first_and_name_the_varied_setting() {
        let mut configs = Vec::new();
        for (name, m) in [("m-0.9", 0.9), ("m-0.99", 0.99), ("m-0.999", 0.999)] {
            let mut cfg = RunConfig::preset(Preset::Cifar);
            cfg.name = name.into();
            cfg.momentum = m;
            configs.push(serde_json::to_value(cfg).unwrap());
        }
        let rows = setting_rows(&configs);
        let differing: Vec<&str> = rows
            .iter()
            .filter(|r| r.differs)
            .map(|r| r.key.as_str())
            .collect();
        assert_eq!(differing, vec!["name", "momentum"]);
        assert_eq!(rows[1].values, vec!["0.9", "0.99", "0.999"]);
        assert!(!rows[2].differs);
        assert_eq!(differs_text(&rows, 2), "momentum=0.999");
    }
}
