//! `/`: every run with its state and progress; filter by state and sort through query
//! parameters (plain links, so they work without JavaScript). The database filters, counts and
//! sorts (`db::runs::list`), as it does for the JSON API.
use super::view::RunView;
use super::{render, Layout};
use crate::config::Choice;
use crate::db::runs::{self, RunFilter, RunSort, RunState, SortKey};
use crate::server::error::WebError;
use crate::server::AppState;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    sort: Option<String>,
}

/// The table's columns: (sort key, header, numeric, first click sorts descending).
const COLUMNS: [(Option<SortKey>, &str, bool, bool); 10] = [
    (Some(SortKey::Name), "Run", false, false),
    (Some(SortKey::Preset), "Preset", false, false),
    (None, "Dataset", false, false),
    (Some(SortKey::State), "State", false, false),
    (Some(SortKey::Progress), "Progress", false, true),
    (Some(SortKey::Loss), "Last loss", true, false),
    (Some(SortKey::Knn), "Best kNN", true, true),
    (Some(SortKey::Speed), "Images/s", true, true),
    (Some(SortKey::Started), "Started", false, true),
    (Some(SortKey::Finished), "Finished", false, true),
];

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

fn href(state: &str, sort: &str) -> String {
    let mut params = Vec::new();
    if !state.is_empty() {
        params.push(format!("state={state}"));
    }
    if sort != RunSort::default().name() {
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
) -> Result<Response, WebError> {
    let filter_name = query.state.unwrap_or_default();
    let filter = match filter_name.as_str() {
        "" => None,
        name => Some(RunState::parse(name).ok_or_else(|| {
            WebError::bad_request(
                "state",
                format!(
                    "unknown state {name:?}; the states are {}",
                    RunState::names_joined()
                ),
            )
        })?),
    };
    let sort_name = query.sort.filter(|s| !s.is_empty()).unwrap_or_default();
    let sort = match sort_name.as_str() {
        "" => RunSort::default(),
        name => RunSort::parse(name).ok_or_else(|| {
            WebError::bad_request(
                "sort",
                format!(
                    "unknown sort {name:?}; use a column and a direction such as created_desc \
                     or knn_desc"
                ),
            )
        })?,
    };
    let sort_name = sort.name();

    let counts = runs::count_by_state(&state.db).await?;
    let mut tabs = vec![Tab {
        label: "All".into(),
        href: href("", &sort_name),
        count: counts.iter().map(|(_, n)| *n as usize).sum(),
        current: filter.is_none(),
    }];
    for &s in RunState::all() {
        tabs.push(Tab {
            label: s.to_string(),
            href: href(s.as_str(), &sort_name),
            count: counts
                .iter()
                .find(|(c, _)| *c == s)
                .map_or(0, |(_, n)| *n as usize),
            current: filter == Some(s),
        });
    }
    let shown = runs::list(
        &state.db,
        &RunFilter {
            state: filter,
            sort,
            ..RunFilter::default()
        },
    )
    .await?;

    let columns = COLUMNS
        .iter()
        .map(|&(key, label, numeric, default_desc)| {
            let Some(key) = key else {
                return Column {
                    label,
                    href: String::new(),
                    numeric,
                    sort_dir: "",
                };
            };
            let current = sort.key == key;
            // A click on the current column flips it; on another column it takes its natural order.
            let next = RunSort {
                key,
                descending: if current {
                    !sort.descending
                } else {
                    default_desc
                },
            };
            Column {
                label,
                href: href(&filter_name, &next.name()),
                numeric,
                sort_dir: match (current, sort.descending) {
                    (false, _) => "",
                    (true, true) => "descending",
                    (true, false) => "ascending",
                },
            }
        })
        .collect();

    let page = RunsPage {
        layout: Layout::for_request("runs", &state, &headers),
        tabs,
        columns,
        rows: shown.iter().map(RunView::new).collect(),
        filter_state: filter_name,
        sort: sort_name,
    };
    Ok(render(StatusCode::OK, &page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_keep_the_filter_and_drop_defaults() {
        assert_eq!(href("", "created_desc"), "/");
        assert_eq!(href("running", "created_desc"), "/?state=running");
        assert_eq!(href("failed", "knn_desc"), "/?state=failed&sort=knn_desc");
    }
}
