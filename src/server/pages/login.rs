//! `/login`: servers that listen beyond loopback (or were given `--token`) want their access token
//! for every change. The page takes it once; `POST /api/login` keeps it in an HttpOnly cookie that
//! the dashboard's forms then carry.
use super::{render, Layout};
use crate::server::{auth, AppState};
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    layout: Layout,
    required: bool,
    signed_in: bool,
    next: String,
}

/// The server wants a token for changes and this request does not carry a valid one.
pub fn needs_sign_in(state: &AppState, headers: &HeaderMap) -> bool {
    state.auth.token.is_some()
        && !auth::cookie(headers, auth::COOKIE).is_some_and(|t| state.auth.matches(t))
}

/// Where to go after signing in: a path on this server, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

/// GET /login
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    let page = LoginPage {
        layout: Layout::new(""),
        required: state.auth.token.is_some(),
        signed_in: !needs_sign_in(&state, &headers),
        next: safe_next(query.next.as_deref()),
    };
    render(StatusCode::OK, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(safe_next(Some("/runs/3")), "/runs/3");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            "a=1; moco_token=abc; b=2".parse().unwrap(),
        );
        assert_eq!(auth::cookie(&headers, auth::COOKIE), Some("abc"));
        assert_eq!(auth::cookie(&headers, "c"), None);
    }
}
