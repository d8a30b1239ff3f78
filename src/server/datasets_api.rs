//! The dataset endpoints beyond the listing: downloads (`/api/datasets/downloads`) and the mean/std
//! of a listed set (`/api/datasets/stats`).
//!
//! A request names an archive or a listed dataset by value; nothing it sends becomes a path. The
//! download address is the server's (fetch_jobs.rs) unless its policy lets requests choose.
use super::error::{without_data_dir, WebError};
use super::fetch_jobs::Source;
use super::AppState;
use crate::config::FieldError;
use crate::data::fetch::{self, Archive};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

/// GET /api/datasets/downloads: every archive, present or not, with its latest download.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "downloads": state.fetch_jobs.statuses(&state.data_dir) }))
}

/// What POST /api/datasets/downloads takes, checked field by field.
struct DownloadRequest {
    archive: Archive,
    source: Option<Source>,
}

fn archive_names() -> String {
    let names: Vec<&str> = Archive::ALL.iter().map(|a| a.name()).collect();
    names.join(", ")
}

fn parse_request(body: &Value, allow_source: bool) -> Result<DownloadRequest, Vec<FieldError>> {
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new(
            "",
            "the body must be a JSON object such as {\"dataset\": \"cifar10\"}",
        )]);
    };
    let mut errors = Vec::new();
    for key in obj.keys() {
        if !["dataset", "url", "md5"].contains(&key.as_str()) {
            errors.push(FieldError::new(
                key,
                "unknown field; expected dataset (and url, md5 where the server allows them)",
            ));
        }
    }
    let archive = match obj.get("dataset") {
        None | Some(Value::Null) => {
            errors.push(FieldError::new(
                "dataset",
                format!("required: one of {}", archive_names()),
            ));
            None
        }
        Some(Value::String(name)) => match Archive::parse(name.trim()) {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(FieldError::new(
                    "dataset",
                    format!(
                        "unknown dataset {name:?}; expected one of {}",
                        archive_names()
                    ),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(
                "dataset",
                format!("must be a string: one of {}", archive_names()),
            ));
            None
        }
    };
    let text = |key: &str, errors: &mut Vec<FieldError>| -> Option<String> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(_) => {
                errors.push(FieldError::new(key, "must be a non-empty string"));
                None
            }
        }
    };
    let url = text("url", &mut errors);
    let md5 = text("md5", &mut errors);
    let mut source = None;
    if url.is_some() || md5.is_some() {
        if !allow_source {
            let field = if url.is_some() { "url" } else { "md5" };
            errors.push(FieldError::new(
                field,
                "this server takes download addresses only from its operator (the \
                 MOCO_FETCH_MIRROR_<NAME> variables); start it with --allow-fetch-source to let \
                 requests choose",
            ));
        } else {
            match &url {
                None => errors.push(FieldError::new("md5", "needs url: the archive it checks")),
                Some(u) => {
                    if let Err(e) = fetch::check_url(u) {
                        errors.push(FieldError::new("url", e));
                    }
                }
            }
            let md5 = match md5.as_deref().map(fetch::normalize_md5) {
                Some(Err(e)) => {
                    errors.push(FieldError::new("md5", e));
                    None
                }
                Some(Ok(m)) => Some(m),
                None => None,
            };
            source = url.map(|url| Source { url, md5 });
        }
    }
    match archive {
        Some(archive) if errors.is_empty() => Ok(DownloadRequest { archive, source }),
        _ => Err(errors),
    }
}

/// POST /api/datasets/downloads {"dataset": "cifar10"}: 202 with the job's status; 409 while one
/// of the same archive runs or when it is already there; 422 naming every bad field.
pub async fn start(State(state): State<AppState>, body: Bytes) -> Result<Response, WebError> {
    let doc = super::api::parse_body(&body)?;
    let req = parse_request(&doc, state.fetch_jobs.policy().allow_request_source)
        .map_err(WebError::invalid)?;
    let done_state = state.clone();
    let status = state.fetch_jobs.start(
        req.archive,
        state.data_dir.clone(),
        req.source,
        state.shutdown_signal(),
        // The new set must be in the next listing (and the New run picker) at once.
        move || done_state.forget_datasets(),
    )?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "download": status }))).into_response())
}

#[derive(Debug, Deserialize)]
pub struct StatsQuery {
    dataset: Option<String>,
}

/// GET /api/datasets/stats?dataset=kind:path: mean/std of a listed dataset (computed the first
/// time, then remembered; see dataset_stats.rs).
pub async fn stats(
    State(state): State<AppState>,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, WebError> {
    let wanted = q.dataset.unwrap_or_default();
    if wanted.trim().is_empty() {
        return Err(WebError::bad_request(
            "dataset",
            "required: a value from GET /api/datasets (\"synthetic\" or kind:path)",
        ));
    }
    // Only what the scan found is opened: the request never names a file itself.
    let listed = state.datasets().await?;
    let entry = listed
        .iter()
        .find(|e| super::dataset_stats::value_of(e) == wanted.trim())
        .ok_or_else(|| {
            WebError::not_found(format!(
                "there is no dataset {wanted:?} in the data directory (see GET /api/datasets)"
            ))
        })?;
    match state.dataset_stats.get(&state.data_dir, entry).await {
        Ok(stats) => Ok(Json(json!(stats))),
        Err(e) => {
            tracing::warn!("mean/std of {wanted}: {e:#}");
            Err(WebError::Status(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "cannot read {wanted}: {}",
                    without_data_dir(&format!("{e:#}"), &state.data_dir)
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(r: Result<DownloadRequest, Vec<FieldError>>) -> Vec<String> {
        match r {
            Ok(_) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = parse_request(&json!({"dataset": "stl10"}), false).unwrap();
        assert_eq!(ok.archive, Archive::Stl10);
        assert_eq!(ok.source, None);
        assert_eq!(fields(parse_request(&json!({}), false)), ["dataset"]);
        assert_eq!(
            fields(parse_request(&json!({"dataset": "mnist"}), false)),
            ["dataset"]
        );
        assert_eq!(
            fields(parse_request(&json!({"dataset": 3, "colour": 1}), false)),
            ["colour", "dataset"]
        );
        assert_eq!(fields(parse_request(&json!([1]), false)), [""]);
        // A request's own address only where the server allows it.
        assert_eq!(
            fields(parse_request(
                &json!({"dataset": "cifar10", "url": "http://m/x"}),
                false
            )),
            ["url"]
        );
        let ok = parse_request(
            &json!({"dataset": "cifar10", "url": "http://m/x", "md5": "C32A1D4AB5D03F1284B67883E8D87530"}),
            true,
        )
        .unwrap();
        assert_eq!(
            ok.source,
            Some(Source {
                url: "http://m/x".into(),
                md5: Some("c32a1d4ab5d03f1284b67883e8d87530".into())
            })
        );
        assert_eq!(
            fields(parse_request(
                &json!({"dataset": "cifar10", "url": "file:///etc/passwd", "md5": "zz"}),
                true
            )),
            ["url", "md5"]
        );
        assert_eq!(
            fields(parse_request(
                &json!({"dataset": "cifar10", "md5": "c32a1d4ab5d03f1284b67883e8d87530"}),
                true
            )),
            ["md5"]
        );
    }
}
