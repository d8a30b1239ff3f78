//! GET /api/runs/{id}/checkpoints/{ckpt}/download: a registered checkpoint file, streamed from
//! disk with its length, a clean file name and Range support.
//!
//! Only the two integer ids come from the request; the file path comes from the database and must
//! still resolve to a regular file inside the data directory.
use super::error::{parse_id, RunId, WebError};
use super::AppState;
use crate::db;
use crate::jobs::paths;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tower::ServiceExt;
use tower_http::services::ServeFile;

pub async fn download(
    State(state): State<AppState>,
    RunId(run_id): RunId,
    Path((_, ckpt)): Path<(String, String)>,
    req: Request,
) -> Result<Response, WebError> {
    let ckpt_id = parse_id(&ckpt, "checkpoint")?;
    let row = db::checkpoints::get(&state.db, run_id, ckpt_id)
        .await?
        .ok_or_else(|| WebError::not_found(format!("run {run_id} has no checkpoint {ckpt_id}")))?;
    let path = paths::registered_file(&state.data_dir, &row.path).ok_or_else(|| {
        WebError::not_found(format!(
            "the file of checkpoint {ckpt_id} is no longer in the data directory"
        ))
    })?;
    // ServeFile answers Range (206 / 416), HEAD, Content-Length and Last-Modified.
    let resp = ServeFile::new(&path)
        .oneshot(req)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut resp = resp.map(Body::new);
    let headers = resp.headers_mut();
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}\"", row.download_name()))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if resp.status().is_success() {
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(v) = HeaderValue::from_str(&row.sha256) {
            headers.insert("x-checksum-sha256", v);
        }
    }
    Ok(resp)
}
