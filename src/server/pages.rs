//! The HTML dashboard: server-rendered askama pages (templates/) with small scripts (static/)
//! that keep them live. Lists, forms and tables work without JavaScript; charts need it.
//!
//! Routes: `/` runs, `/runs/new` (GET form, POST form-encoded), `/runs/{id}`, its cancel / resume
//! forms and augmentation preview, `/compare?ids=1,2,3`, `/datasets` (and its download form),
//! `/login` (servers that want their access token for changes), and the embedded files under
//! `/static/`.
use super::AppState;
use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

mod assets;
mod backend;
mod compare;
mod datasets;
mod form;
mod format;
mod login;
mod new_run;
mod run_page;
mod runs;
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
        .route("/compare", get(compare::page))
        .route("/datasets", get(datasets::page))
        .route("/datasets/downloads", post(datasets::start))
        .route("/login", get(login::page))
        .route("/static/{*path}", get(assets::serve))
}

/// What the base layout needs from every page.
pub struct Layout {
    /// The navigation entry shown as current: "runs", "new", "datasets" or "".
    pub nav: &'static str,
    pub version: &'static str,
    /// The server wants its access token for changes and this browser has not given it: the
    /// navigation offers the sign-in page.
    pub sign_in: bool,
}

impl Layout {
    pub fn new(nav: &'static str) -> Layout {
        Layout {
            nav,
            version: env!("CARGO_PKG_VERSION"),
            sign_in: false,
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

/// A page that could not be shown: a status and a sentence for the reader.
#[derive(Debug)]
pub struct PageError {
    pub status: StatusCode,
    pub message: String,
}

impl PageError {
    pub fn not_found(message: impl Into<String>) -> PageError {
        PageError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> PageError {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> PageError {
        tracing::error!("page error: {e:#}");
        PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("Something went wrong on the server: {e:#}"),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = match self.status {
            StatusCode::NOT_FOUND => "Not found".to_string(),
            StatusCode::BAD_REQUEST => "Bad request".to_string(),
            s => s.canonical_reason().unwrap_or("Error").to_string(),
        };
        render(
            self.status,
            &MessagePage {
                layout: Layout::new(""),
                title,
                message: self.message,
            },
        )
    }
}

/// A run id from the path: a positive integer, or a 404 naming what was asked for.
fn parse_run_id(raw: &str) -> Result<i64, PageError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| PageError::not_found(format!("There is no run {raw:?}.")))
}
