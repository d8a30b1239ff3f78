//! JSON errors of the API: `{"error": "…"}` with a status, or `{"errors": [{field, message}]}`
//! for invalid input.
use crate::config::FieldError;
use crate::jobs::Refused;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    /// A status and a sentence.
    Status(StatusCode, String),
    /// Invalid input: every bad field named.
    Fields(StatusCode, Vec<FieldError>),
}

impl ApiError {
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::Status(StatusCode::NOT_FOUND, message.into())
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Fields(
            StatusCode::BAD_REQUEST,
            vec![FieldError::new(field, message)],
        )
    }

    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        ApiError::Fields(StatusCode::UNPROCESSABLE_ENTITY, errors)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        tracing::error!("request failed: {e:#}");
        ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        match r {
            Refused::NotFound(m) => ApiError::Status(StatusCode::NOT_FOUND, m),
            Refused::Conflict(m) => ApiError::Status(StatusCode::CONFLICT, m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Status(status, message) => {
                (status, Json(json!({"error": message}))).into_response()
            }
            ApiError::Fields(status, errors) => {
                (status, Json(json!({"errors": errors}))).into_response()
            }
        }
    }
}

/// A message about files for clients: paths inside the data directory become relative to it and
/// the directory itself "the data directory", so the server's own layout stays its own.
pub fn without_data_dir(message: &str, data_dir: &std::path::Path) -> String {
    let dir = data_dir.display().to_string();
    message
        .replace(&format!("{dir}/"), "")
        .replace(&dir, "the data directory")
}

/// A run or checkpoint id from the path: a positive integer, or a 404 (nothing else is looked up).
pub fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::not_found(format!("there is no {what} {raw:?}")))
}
