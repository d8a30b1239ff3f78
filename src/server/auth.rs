//! The access token: when the server listens beyond loopback (or a token was given), every request
//! that changes something (POST, PUT, PATCH, DELETE) must carry `Authorization: Bearer <token>`
//! or the `moco_token` cookie set by `POST /api/login`. Reading stays open.
use super::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::net::IpAddr;

/// Name of the cookie the dashboard's forms authenticate with.
pub const COOKIE: &str = "moco_token";

/// The token policy of a server.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Some(token): mutating requests must present it.
    pub token: Option<String>,
    /// The token was generated at start (it is printed so the user can use it).
    pub generated: bool,
}

impl Auth {
    /// A token is required when one is given, or when `host` is not a loopback address (then one
    /// is generated if none was given).
    pub fn for_host(host: &str, token: Option<String>) -> Auth {
        let token = token.filter(|t| !t.trim().is_empty());
        if token.is_some() {
            return Auth {
                token,
                generated: false,
            };
        }
        if is_loopback(host) {
            return Auth::default();
        }
        Auth {
            token: Some(generate()),
            generated: true,
        }
    }

    /// Whether `req` may change things.
    fn allows(&self, req: &Request) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes())) {
            return true;
        }
        cookie(req.headers(), COOKIE)
            .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.as_bytes()))
    }

    /// Compares a presented token with the expected one.
    pub fn matches(&self, presented: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| constant_time_eq(presented.trim().as_bytes(), t.as_bytes()))
    }
}

/// "localhost", 127.0.0.0/8 and ::1 are loopback; anything else (0.0.0.0, a LAN address, a name)
/// is reachable from elsewhere.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request headers, if any.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Middleware: refuses mutating requests without the token (401), except the login itself.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || req.uri().path() == "/api/login" || state.auth.allows(&req) {
        return next.run(req).await;
    }
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": "this server requires its access token for changes: send \
                      `Authorization: Bearer <token>` (the token was given with --token or \
                      MOCO_TOKEN, or printed when the server started)"
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_need_no_token() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("::1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("0.0.0.0"));
        assert!(!is_loopback("192.168.1.4"));
        assert!(Auth::for_host("127.0.0.1", None).token.is_none());
        let open = Auth::for_host("0.0.0.0", None);
        assert!(open.generated);
        assert_eq!(open.token.as_ref().unwrap().len(), 48);
        let given = Auth::for_host("127.0.0.1", Some("s3cret".into()));
        assert!(given.matches("s3cret"));
        assert!(!given.matches("s3cre"));
    }
}
