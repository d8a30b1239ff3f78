//! The web layer's one error type. A handler returns `WebError` whether it serves JSON or HTML:
//! the response carries the JSON body (`{"error": "…"}`, or `{"errors": [{field, message}]}` for
//! invalid input) and the error itself; the pages' router turns the latter into an HTML page
//! (`pages::error_page`). Internal errors are logged with an id, and the client gets a sentence
//! with that id, never the error's text.
use crate::config::FieldError;
use crate::jobs::scheduler::SchedulerError;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::collections::HashMap;

pub use crate::jobs::paths::without_data_dir;

#[derive(Debug, Clone)]
pub enum WebError {
    /// 404, with a sentence naming what was asked for.
    NotFound(String),
    /// 409: the state of what was asked for does not allow it.
    Conflict(String),
    /// 400 (unreadable) or 422 (invalid) input: every bad field named.
    Fields(StatusCode, Vec<FieldError>),
    /// Any other status a client can act on (401, 413, 416 …), with a sentence.
    Status(StatusCode, String),
    /// 500. The cause is in the server's log under `id`.
    Internal { id: String },
}

impl WebError {
    pub fn not_found(message: impl Into<String>) -> WebError {
        WebError::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> WebError {
        WebError::Conflict(message.into())
    }

    /// A 400 about one field (`""` for the request as a whole).
    pub fn bad_request(field: &str, message: impl Into<String>) -> WebError {
        WebError::Fields(
            StatusCode::BAD_REQUEST,
            vec![FieldError::new(field, message)],
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> WebError {
        WebError::Fields(StatusCode::UNPROCESSABLE_ENTITY, errors)
    }

    /// Logs `cause` under a fresh id and answers 500 with that id.
    pub fn internal(cause: impl std::fmt::Display) -> WebError {
        let id = format!("{:08x}", rand::random::<u32>());
        tracing::error!(error_id = %id, "request failed: {cause:#}");
        WebError::Internal { id }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::Conflict(_) => StatusCode::CONFLICT,
            WebError::Fields(status, _) | WebError::Status(status, _) => *status,
            WebError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told, as one sentence (field errors joined).
    pub fn message(&self) -> String {
        match self {
            WebError::NotFound(m) | WebError::Conflict(m) | WebError::Status(_, m) => m.clone(),
            WebError::Fields(_, errors) => crate::config::describe_errors(errors),
            WebError::Internal { id } => format!(
                "something went wrong on the server (error id {id}; its log has the details)"
            ),
        }
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> WebError {
        WebError::internal(e)
    }
}

impl From<sqlx::Error> for WebError {
    fn from(e: sqlx::Error) -> WebError {
        WebError::internal(e)
    }
}

impl From<tokio::task::JoinError> for WebError {
    fn from(e: tokio::task::JoinError) -> WebError {
        WebError::internal(e)
    }
}

impl From<SchedulerError> for WebError {
    fn from(e: SchedulerError) -> WebError {
        match e {
            SchedulerError::NotFound(_)
            | SchedulerError::NoEval(_)
            | SchedulerError::NoSweep(_) => WebError::NotFound(e.to_string()),
            SchedulerError::Conflict(m) => WebError::Conflict(m),
            SchedulerError::Invalid(errors) => WebError::invalid(errors),
            SchedulerError::Internal(e) => WebError::internal(e),
        }
    }
}

impl From<crate::server::fetch_jobs::StartRefused> for WebError {
    fn from(e: crate::server::fetch_jobs::StartRefused) -> WebError {
        WebError::Conflict(e.0)
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let body = match &self {
            WebError::Fields(_, errors) => json!({ "errors": errors }),
            other => json!({ "error": other.message() }),
        };
        let mut response = (self.status(), Json(body)).into_response();
        // For the pages' router, which renders it as HTML instead.
        response.extensions_mut().insert(self);
        response
    }
}

/// An id from the path: a positive integer, or a 404 (nothing else is looked up).
pub fn parse_id(raw: &str, what: &str) -> Result<i64, WebError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| WebError::not_found(format!("there is no {what} {raw:?}")))
}

/// Declares the extractor of a route's `{id}`: parsed (not looked up), any value that is not a
/// positive integer a 404 naming what was asked for.
macro_rules! path_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name(pub i64);

        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = WebError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<$name, WebError> {
                let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
                    .await
                    .map_err(|_| WebError::not_found(concat!("there is no such ", $what)))?;
                let raw = params.get("id").map(String::as_str).unwrap_or_default();
                parse_id(raw, $what).map($name)
            }
        }
    };
}

path_id!(
    /// The `{id}` of a run's route.
    RunId,
    "run"
);
path_id!(
    /// The `{id}` of an evaluation's route.
    EvalId,
    "evaluation"
);
path_id!(
    /// The `{id}` of a sweep's route.
    SweepId,
    "sweep"
);
