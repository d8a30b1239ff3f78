//! `/datasets`: what the data directory holds (counts from the scan, mean/std when known) and the
//! archives the server can download, each with its live progress. `POST /datasets/downloads`
//! (form-encoded `dataset=cifar10`) starts a download without JavaScript; static/datasets.js
//! starts it through the JSON API instead, follows it and refreshes the table when it is done.
use super::{backend, format, render, Layout};
use crate::data::fetch::Archive;
use crate::server::dataset_stats::{self, DatasetStats};
use crate::server::error::WebError;
use crate::server::fetch_jobs::{DownloadStatus, JobState};
use crate::server::AppState;
use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

pub struct DatasetRow {
    /// The picker value ("synthetic" or "kind:path"), which /api/datasets/stats takes.
    value: String,
    kind: String,
    path: String,
    images: u64,
    test_images: u64,
    classes: u64,
    image_size: String,
    /// "0.4914 0.4822 0.4465", or empty when not computed yet (the script asks for it).
    mean: String,
    std: String,
}

pub struct DownloadView {
    name: &'static str,
    title: &'static str,
    dir: &'static str,
    approx: String,
    present: bool,
    running: bool,
    failed: bool,
    /// 0–1 for the bar.
    fraction: f64,
    percent: String,
    text: String,
    error: String,
}

#[derive(Template)]
#[template(path = "datasets.html")]
struct DatasetsPage {
    layout: Layout,
    rows: Vec<DatasetRow>,
    downloads: Vec<DownloadView>,
    /// A refused form submission, shown above the downloads.
    problem: String,
}

fn three(v: [f64; 3]) -> String {
    format!("{:.4} {:.4} {:.4}", v[0], v[1], v[2])
}

/// The bar's fraction and its text (static/datasets.js writes the same text).
fn progress(s: &DownloadStatus) -> (f64, String) {
    match s.state {
        JobState::Running if s.stage == Some("extracting") => {
            (1.0, "100.0 % · unpacking and checking the files…".into())
        }
        JobState::Running => {
            let Some(total) = s.total.filter(|t| *t > 0) else {
                return (0.0, format!("{} received", format::bytes(s.bytes)));
            };
            let f = (s.bytes as f64 / total as f64).clamp(0.0, 1.0);
            let mut text = format!(
                "{:.1} % · {} of {}",
                f * 100.0,
                format::bytes(s.bytes),
                format::bytes(total)
            );
            if let Some(rate) = s.bytes_per_sec {
                text += &format!(" · {}/s", format::bytes(rate as u64));
            }
            if let Some(eta) = s.eta_seconds {
                text += &format!(" · ETA {}", format::duration(eta));
            }
            (f, text)
        }
        JobState::Done => (1.0, "100.0 % · done".into()),
        JobState::Failed => (0.0, "failed".into()),
        JobState::Idle => (0.0, String::new()),
    }
}

fn download_view(s: DownloadStatus) -> DownloadView {
    let (fraction, text) = progress(&s);
    DownloadView {
        name: s.dataset,
        title: s.title,
        dir: s.dir,
        approx: format::bytes(s.approx_bytes),
        present: s.present,
        running: s.state == JobState::Running,
        failed: s.state == JobState::Failed,
        percent: format!("{:.0} %", fraction * 100.0),
        fraction,
        text,
        error: s.error.unwrap_or_default(),
    }
}

async fn build(state: &AppState, headers: &HeaderMap, problem: String) -> DatasetsPage {
    let listed = state.datasets().await.unwrap_or_else(|e| {
        tracing::warn!("cannot list datasets: {e:#}");
        Vec::new()
    });
    let rows = listed
        .iter()
        .map(|d| {
            let stats: Option<DatasetStats> = state.dataset_stats.cached(&state.data_dir, d);
            DatasetRow {
                value: dataset_stats::value_of(d),
                kind: d.kind.clone(),
                path: d.path.clone().unwrap_or_else(|| "(built in)".into()),
                images: d.images,
                test_images: d.test_images,
                classes: d.classes,
                image_size: d
                    .image_size
                    .map(|s| format!("{s}×{s}"))
                    .unwrap_or_else(|| "—".into()),
                mean: stats.as_ref().map(|s| three(s.mean)).unwrap_or_default(),
                std: stats.as_ref().map(|s| three(s.std)).unwrap_or_default(),
            }
        })
        .collect();
    let downloads = state
        .fetch_jobs
        .statuses(&state.data_dir)
        .into_iter()
        .map(download_view)
        .collect();
    DatasetsPage {
        layout: Layout::for_request("datasets", state, headers),
        rows,
        downloads,
        problem,
    }
}

/// GET /datasets
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let page = build(&state, &headers, String::new()).await;
    render(StatusCode::OK, &page)
}

#[derive(Debug, Deserialize)]
pub struct DownloadForm {
    #[serde(default)]
    dataset: String,
}

/// POST /datasets/downloads (form): 303 back to the page, or the page with the reason (422 for an
/// unknown archive, 409 while it runs or when it is there).
pub async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<DownloadForm>,
) -> Result<Response, WebError> {
    let Ok(archive) = Archive::parse(form.dataset.trim()) else {
        let page = build(
            &state,
            &headers,
            format!(
                "Unknown dataset {:?}: choose CIFAR-10, CIFAR-100 or STL-10.",
                form.dataset
            ),
        )
        .await;
        return Ok(render(StatusCode::UNPROCESSABLE_ENTITY, &page));
    };
    let done_state = state.clone();
    match state.fetch_jobs.start(
        archive,
        state.data_dir.clone(),
        None,
        state.shutdown_signal(),
        move || done_state.forget_datasets(),
    ) {
        Ok(_) => Ok((
            StatusCode::SEE_OTHER,
            [(header::LOCATION, "/datasets#downloads")],
        )
            .into_response()),
        Err(refused) => {
            let message = backend::capitalised(&refused.to_string());
            let page = build(&state, &headers, format!("{message}.")).await;
            Ok(render(StatusCode::CONFLICT, &page))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: JobState, bytes: u64, total: Option<u64>) -> DownloadStatus {
        DownloadStatus {
            dataset: "cifar10",
            title: "CIFAR-10",
            dir: "cifar-10-batches-bin",
            present: false,
            state,
            stage: (state == JobState::Running).then_some("downloading"),
            bytes,
            total,
            approx_bytes: 1,
            bytes_per_sec: Some(2048.0),
            eta_seconds: Some(75.0),
            error: None,
            started_at: None,
            finished_at: None,
            mirror: false,
        }
    }

    #[test]
    fn progress_reads_percent_bytes_rate_and_eta() {
        let (f, text) = progress(&status(JobState::Running, 512 * 1024, Some(2048 * 1024)));
        assert_eq!(f, 0.25);
        assert_eq!(
            text,
            "25.0 % · 512.0 KiB of 2.0 MiB · 2.0 KiB/s · ETA 1 min 15 s"
        );
        assert_eq!(
            progress(&status(JobState::Running, 2048, None)).1,
            "2.0 KiB received"
        );
        assert_eq!(
            progress(&status(JobState::Done, 9, Some(9))),
            (1.0, "100.0 % · done".into())
        );
    }
}
