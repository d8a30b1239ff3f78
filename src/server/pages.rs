//! The HTML dashboard: server-rendered askama pages (templates/) with small scripts (static/)
//! that keep them live. Lists, forms and tables work without JavaScript; charts need it.
//!
//! Routes: `/` runs, `/runs/new` (GET form, POST form-encoded), `/runs/{id}`, its cancel / resume
//! forms and augmentation preview, `/compare?ids=1,2,3`, `/datasets` (and its download form),
//! `/login` (servers that want their access token for changes), and the embedded files under
//! `/static/`.
use super::error::WebError;
use super::AppState;
use crate::config::Choice;
use crate::db::runs::RunState;
use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

mod assets;
mod backend;
mod compare;
mod datasets;
mod evals;
mod form;
mod format;
mod login;
mod new_run;
mod run_page;
mod runs;
mod sweeps;
mod view;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(runs::page))
        .route("/runs/new", get(new_run::page).post(new_run::submit))
        .route("/runs/new/estimate", post(new_run::estimate))
        .route("/runs/{id}", get(run_page::page))
        .route("/runs/{id}/cancel", post(run_page::cancel))
        .route("/runs/{id}/resume", post(run_page::resume))
        .route(
            "/runs/{id}/augment-preview.png",
            get(run_page::augment_preview),
        )
        .route("/runs/{id}/evaluate", post(run_page::evaluate))
        .route("/evals", get(evals::list_page).post(evals::submit))
        .route("/evals/{id}", get(evals::page))
        .route("/evals/{id}/cancel", post(evals::cancel))
        .route("/evals/{id}/restart", post(evals::restart))
        .route("/sweeps", get(sweeps::list_page).post(sweeps::submit))
        .route("/sweeps/plan", post(sweeps::plan))
        .route("/sweeps/{id}", get(sweeps::page))
        .route("/sweeps/{id}/cancel", post(sweeps::cancel))
        .route("/sweeps/{id}/resume", post(sweeps::resume))
        .route("/compare", get(compare::page))
        .route("/datasets", get(datasets::page))
        .route("/datasets/downloads", post(datasets::start))
        .route("/login", get(login::page))
        .route("/static/{*path}", get(assets::serve))
        .layer(axum::middleware::map_response(errors_as_pages))
}

/// The page's upload form, which takes large bodies (mounted outside the usual limit).
pub fn upload_routes() -> Router<AppState> {
    Router::new()
        .route("/evals/encoders", post(evals::upload))
        .layer(axum::middleware::map_response(errors_as_pages))
}

pub use format::bytes as format_bytes;

/// What the base layout needs from every page.
pub struct Layout {
    /// The navigation entry shown as current: "runs", "new", "evals", "sweeps", "datasets" or "".
    pub nav: &'static str,
    pub version: &'static str,
    /// The server wants its access token for changes and this browser has not given it: the
    /// navigation offers the sign-in page.
    pub sign_in: bool,
    /// The run states for the scripts (`{"all": […], "active": […]}`), from `RunState`.
    pub run_states: &'static str,
}

impl Layout {
    pub fn new(nav: &'static str) -> Layout {
        static RUN_STATES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let all: Vec<&str> = RunState::all().iter().map(|s| s.as_str()).collect();
            let active: Vec<&str> = RunState::all()
                .iter()
                .filter(|s| !s.is_finished())
                .map(|s| s.as_str())
                .collect();
            format::script_json(&serde_json::json!({"all": all, "active": active}))
        });
        Layout {
            nav,
            version: env!("CARGO_PKG_VERSION"),
            sign_in: false,
            run_states: &RUN_STATES,
        }
    }

    /// The layout for a request: with the sign-in link when the server needs a token the
    /// request's cookie does not carry.
    pub fn for_request(nav: &'static str, state: &AppState, headers: &HeaderMap) -> Layout {
        Layout {
            sign_in: login::needs_sign_in(state, headers),
            ..Layout::new(nav)
        }
    }
}

/// Renders a page with a status; a template error becomes a plain 500 (it is a bug).
fn render<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!("template error: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    title: String,
    message: String,
}

/// A `WebError` from a page's handler, shown as a page: the status, its name as the title and
/// the error's sentence (the JSON API sends the same error as JSON).
async fn errors_as_pages(mut response: Response) -> Response {
    match response.extensions_mut().remove::<WebError>() {
        Some(error) => error_page(&error),
        None => response,
    }
}

fn error_page(error: &WebError) -> Response {
    let status = error.status();
    let title = match status {
        StatusCode::NOT_FOUND => "Not found".to_string(),
        StatusCode::BAD_REQUEST => "Bad request".to_string(),
        s => s.canonical_reason().unwrap_or("Error").to_string(),
    };
    // A page names no fields: each problem is a sentence of its own.
    let sentences = match error {
        WebError::Fields(_, errors) => errors.iter().map(|e| e.message.clone()).collect(),
        other => vec![other.message()],
    };
    let message = sentences
        .iter()
        .map(|s| {
            let s = backend::capitalised(s);
            if s.ends_with('.') {
                s
            } else {
                format!("{s}.")
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    render(
        status,
        &MessagePage {
            layout: Layout::new(""),
            title,
            message,
        },
    )
}
