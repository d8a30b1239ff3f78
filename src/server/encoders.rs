//! Encoder files of the data directory (`encoders/`): listed for the evaluation form, uploaded
//! from the page (multipart) or the API (`PUT /api/encoders/{name}`, the file as the body).
//! An upload is written to a temporary name, loaded as an evaluation would load it (format,
//! architecture, shapes), and only then renamed into place; a file of the same name is never
//! replaced.
use super::error::WebError;
use super::AppState;
use crate::eval::FrozenEncoder;
use crate::jobs::paths::without_data_dir;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// Where encoder files live, under the data directory.
pub const DIR: &str = "encoders";
/// The largest upload (a ViT-B's weights are about 350 MB).
pub const UPLOAD_LIMIT: usize = 1 << 30;
/// Room for the multipart envelope around the file.
pub const UPLOAD_BODY_LIMIT: usize = UPLOAD_LIMIT + (1 << 20);

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncoderFile {
    /// Relative to the data directory: what an evaluation's `encoder` takes.
    pub path: String,
    pub size_bytes: u64,
}

/// The `.safetensors` files in `encoders/`, by name.
pub async fn list(data_dir: &Path) -> anyhow::Result<Vec<EncoderFile>> {
    let dir = data_dir.join(DIR);
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(anyhow::Error::from(e).context(format!("cannot list {DIR}/"))),
    };
    while let Some(entry) = entries.next_entry().await? {
        let name = entry.file_name().to_string_lossy().to_string();
        let meta = entry.metadata().await?;
        if meta.is_file() && valid_name(&name).is_ok() {
            out.push(EncoderFile {
                path: format!("{DIR}/{name}"),
                size_bytes: meta.len(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A file name an upload may take: letters, digits, `.`, `_` and `-`, ending in `.safetensors`.
fn valid_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 128 || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "{name:?} is not a file name an encoder can take: up to 128 letters, digits, '.', \
             '_' or '-', not starting with '.'"
        ));
    }
    if !name.ends_with(".safetensors") || name == ".safetensors" {
        return Err(format!("{name:?} must end in .safetensors"));
    }
    Ok(())
}

fn file_error(message: impl Into<String>) -> WebError {
    WebError::invalid(vec![crate::config::FieldError::new("file", message)])
}

/// Writes `body` to a temporary file in `encoders/`, checks it loads as an encoder, and renames
/// it to `name`. Errors name the file and the reason (422, field `file`); nothing is kept.
pub async fn store<S, E>(data_dir: &Path, name: &str, body: S) -> Result<EncoderFile, WebError>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    // Browsers send a bare name; anything with a folder in it is refused, not trimmed.
    valid_name(name).map_err(file_error)?;
    let dir = data_dir.join(DIR);
    let target = dir.join(name);
    if target.exists() {
        return Err(file_error(format!(
            "{DIR}/{name} already exists: upload it under another name, or remove the old file \
             from the data directory"
        )));
    }
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| WebError::internal(format!("cannot create {}: {e}", dir.display())))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".upload-")
        .suffix(".safetensors")
        .tempfile_in(&dir)
        .map_err(|e| {
            WebError::internal(format!("cannot create a file in {}: {e}", dir.display()))
        })?;
    let mut size = 0usize;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| file_error(format!("the upload of {name} broke off: {e}")))?;
        size += chunk.len();
        if size > UPLOAD_LIMIT {
            return Err(file_error(format!(
                "{name} is larger than the {} an upload may be",
                crate::server::pages::format_bytes(UPLOAD_LIMIT as u64)
            )));
        }
        tmp.write_all(&chunk)
            .map_err(|e| WebError::internal(format!("cannot write the upload: {e}")))?;
    }
    if size == 0 {
        return Err(file_error(format!("{name} is empty")));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| WebError::internal(format!("cannot write the upload: {e}")))?;
    let tmp_path = tmp.path().to_path_buf();
    let checked = tokio::task::spawn_blocking(move || {
        FrozenEncoder::load(&tmp_path, tch::Device::Cpu).map(|e| e.info)
    })
    .await?;
    if let Err(e) = checked {
        let message = format!("{e:#}").replace(&tmp.path().display().to_string(), name);
        return Err(file_error(without_data_dir(&message, data_dir)));
    }
    // Never replace a file: persist_noclobber fails when one appeared meanwhile.
    tmp.persist_noclobber(&target)
        .map_err(|e| file_error(format!("{DIR}/{name} could not be stored: {}", e.error)))?;
    tracing::info!(file = %target.display(), bytes = size, "encoder uploaded");
    Ok(EncoderFile {
        path: format!("{DIR}/{name}"),
        size_bytes: size as u64,
    })
}

/// The API's upload route, which takes large bodies (mounted outside the usual limit).
pub fn upload_routes() -> Router<AppState> {
    Router::new().route("/api/encoders/{name}", put(put_encoder))
}

/// Routes relative to /api with the usual limit.
pub fn routes() -> Router<AppState> {
    Router::new().route("/encoders", get(list_encoders))
}

async fn list_encoders(State(state): State<AppState>) -> Result<Json<serde_json::Value>, WebError> {
    Ok(Json(json!({ "encoders": list(&state.data_dir).await? })))
}

/// PUT /api/encoders/{name}: the body is the file.
async fn put_encoder(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Body,
) -> Result<Response, WebError> {
    let stored = store(&state.data_dir, &name, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "encoder": stored }))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_safetensors_files() {
        assert!(valid_name("resnet50-torchvision.safetensors").is_ok());
        for bad in [
            "../x.safetensors",
            "a/b.safetensors",
            ".hidden.safetensors",
            "x.pt",
            "",
            "a b.safetensors",
        ] {
            assert!(valid_name(bad).is_err(), "{bad}");
        }
    }
}
