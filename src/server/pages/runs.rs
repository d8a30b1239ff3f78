//! `/`: every run with its state and progress; filter by state and sort through query
//! parameters (plain links, so they work without JavaScript).
use super::view::{RunRecord, RunView, STATES};
use super::{backend, render, Layout, PageError};
use crate::server::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use std::cmp::Ordering;

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    sort: Option<String>,
}

/// Sortable columns: (query name, header, numeric, default direction descending).
const COLUMNS: [(&str, &str, bool, bool); 10] = [
    ("name", "Run", false, false),
    ("preset", "Preset", false, false),
    ("", "Dataset", false, false),
    ("state", "State", false, false),
    ("progress", "Progress", false, true),
    ("loss", "Last loss", true, false),
    ("knn", "Best kNN", true, true),
    ("speed", "Images/s", true, true),
    ("started", "Started", false, true),
    ("finished", "Finished", false, true),
];
const DEFAULT_SORT: &str = "created_desc";

pub struct Tab {
    label: String,
    href: String,
    count: usize,
    current: bool,
}

pub struct Column {
    label: &'static str,
    href: String,
    numeric: bool,
    /// "ascending" / "descending" on the column the list is sorted by.
    sort_dir: &'static str,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    layout: Layout,
    tabs: Vec<Tab>,
    columns: Vec<Column>,
    rows: Vec<RunView>,
    filter_state: String,
    sort: String,
}

/// "knn_desc" → ("knn", true); None for anything that is not a column and a direction.
fn parse_sort(sort: &str) -> Option<(&str, bool)> {
    let (col, dir) = sort.rsplit_once('_')?;
    let desc = match dir {
        "asc" => false,
        "desc" => true,
        _ => return None,
    };
    (col == "created" || COLUMNS.iter().any(|c| !c.0.is_empty() && c.0 == col))
        .then_some((col, desc))
}

fn sort_runs(runs: &mut [RunRecord], col: &str, desc: bool) {
    // Missing values sort last whichever the direction.
    fn opt_f64(a: Option<f64>, b: Option<f64>, desc: bool) -> Ordering {
        match (a, b) {
            (Some(x), Some(y)) => {
                let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                if desc {
                    o.reverse()
                } else {
                    o
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    fn opt_str(a: &Option<String>, b: &Option<String>, desc: bool) -> Ordering {
        match (a, b) {
            (Some(x), Some(y)) => {
                if desc {
                    y.cmp(x)
                } else {
                    x.cmp(y)
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
    let dir = |o: Ordering| if desc { o.reverse() } else { o };
    runs.sort_by(|a, b| {
        let primary = match col {
            "name" => dir(a
                .display_name()
                .to_lowercase()
                .cmp(&b.display_name().to_lowercase())),
            "preset" => dir(a.preset.cmp(&b.preset)),
            "state" => {
                let rank = |s: &str| STATES.iter().position(|x| *x == s).unwrap_or(STATES.len());
                dir(rank(&a.state).cmp(&rank(&b.state)))
            }
            "progress" => dir(a
                .progress
                .partial_cmp(&b.progress)
                .unwrap_or(Ordering::Equal)),
            "loss" => opt_f64(a.last_loss, b.last_loss, desc),
            "knn" => opt_f64(a.best_knn, b.best_knn, desc),
            "speed" => opt_f64(a.images_per_sec, b.images_per_sec, desc),
            "started" => opt_str(&a.started_at, &b.started_at, desc),
            "finished" => opt_str(&a.finished_at, &b.finished_at, desc),
            _ => dir(a.created_at.cmp(&b.created_at)),
        };
        // Ties (and equal creation times): the newer run first.
        primary.then(b.id.cmp(&a.id))
    });
}

fn href(state: &str, sort: &str) -> String {
    let mut params = Vec::new();
    if !state.is_empty() {
        params.push(format!("state={state}"));
    }
    if sort != DEFAULT_SORT {
        params.push(format!("sort={sort}"));
    }
    if params.is_empty() {
        "/".into()
    } else {
        format!("/?{}", params.join("&"))
    }
}

pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<RunsQuery>,
) -> Result<Response, PageError> {
    let (state, headers) = (&state, &headers);
    let filter = query.state.unwrap_or_default();
    if !filter.is_empty() && !STATES.contains(&filter.as_str()) {
        return Err(PageError::bad_request(format!(
            "Unknown state {filter:?}; the states are {}.",
            STATES.join(", ")
        )));
    }
    let sort = query
        .sort
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_SORT.into());
    let Some((sort_col, sort_desc)) = parse_sort(&sort) else {
        return Err(PageError::bad_request(format!(
            "Unknown sort {sort:?}; use a column and a direction such as created_desc or knn_desc."
        )));
    };

    let all = backend::list_runs(state).await?;
    let mut tabs = vec![Tab {
        label: "All".into(),
        href: href("", &sort),
        count: all.len(),
        current: filter.is_empty(),
    }];
    for s in STATES {
        tabs.push(Tab {
            label: s.to_string(),
            href: href(s, &sort),
            count: all.iter().filter(|r| r.state == s).count(),
            current: filter == s,
        });
    }
    let mut shown: Vec<RunRecord> = all
        .into_iter()
        .filter(|r| filter.is_empty() || r.state == filter)
        .collect();
    sort_runs(&mut shown, sort_col, sort_desc);

    let columns = COLUMNS
        .iter()
        .map(|&(key, label, numeric, default_desc)| {
            if key.is_empty() {
                return Column {
                    label,
                    href: String::new(),
                    numeric,
                    sort_dir: "",
                };
            }
            let current = sort_col == key;
            // A click on the current column flips it; on another column it takes its natural order.
            let next_desc = if current { !sort_desc } else { default_desc };
            let next = format!("{key}_{}", if next_desc { "desc" } else { "asc" });
            Column {
                label,
                href: href(&filter, &next),
                numeric,
                sort_dir: match (current, sort_desc) {
                    (false, _) => "",
                    (true, true) => "descending",
                    (true, false) => "ascending",
                },
            }
        })
        .collect();

    let page = RunsPage {
        layout: Layout::for_request("runs", state, headers),
        tabs,
        columns,
        rows: shown.iter().map(RunView::new).collect(),
        filter_state: filter,
        sort,
    };
    Ok(render(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, name: &str, knn: Option<f64>) -> RunRecord {
        RunRecord::from_json(serde_json::json!({
            "id": id, "name": name, "state": "completed", "created_at": format!("2026-01-0{id}T00:00:00Z"),
            "best_knn": knn
        }))
        .unwrap()
    }

    fn ids(runs: &[RunRecord]) -> Vec<i64> {
        runs.iter().map(|r| r.id).collect()
    }

    #[test]
    fn sorts_by_column_with_missing_values_last() {
        let mut runs = vec![
            run(1, "b", Some(40.0)),
            run(2, "A", None),
            run(3, "c", Some(55.0)),
        ];
        sort_runs(&mut runs, "knn", true);
        assert_eq!(ids(&runs), vec![3, 1, 2]);
        sort_runs(&mut runs, "knn", false);
        assert_eq!(ids(&runs), vec![1, 3, 2]);
        sort_runs(&mut runs, "name", false);
        assert_eq!(ids(&runs), vec![2, 1, 3]);
        sort_runs(&mut runs, "created", true);
        assert_eq!(ids(&runs), vec![3, 2, 1]);
    }

    #[test]
    fn sort_parameters_are_checked() {
        assert_eq!(parse_sort("created_desc"), Some(("created", true)));
        assert_eq!(parse_sort("knn_asc"), Some(("knn", false)));
        assert_eq!(parse_sort("knn"), None);
        assert_eq!(parse_sort("dataset_asc"), None);
        assert_eq!(parse_sort("drop table_asc"), None);
    }

    #[test]
    fn links_keep_the_filter_and_drop_defaults() {
        assert_eq!(href("", DEFAULT_SORT), "/");
        assert_eq!(href("running", DEFAULT_SORT), "/?state=running");
        assert_eq!(href("failed", "knn_desc"), "/?state=failed&sort=knn_desc");
    }
}
