//! `--api-key`: every API route asks for `Authorization: Bearer KEY` (BRIEF §6). The dashboard
//! page and its assets (`/`, `/assets/…`) stay open, since the page is what asks for the key;
//! everything it then fetches (`/api/…`, `/v1/…`) sends it.
//!
//! A missing or wrong key is a 401 with `WWW-Authenticate: Bearer`: under `/v1/` in OpenAI's
//! error shape (`invalid_api_key`, as OpenAI answers), elsewhere as [`crate::ApiError`]'s
//! `{"error": {"code": "UNAUTHORIZED", …}}`. Keys are compared in constant time.

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The bearer token the HTTP API asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// A key; `None` when it is empty (or only whitespace), which would protect nothing.
    pub fn new(key: &str) -> Option<Self> {
        let key = key.trim();
        (!key.is_empty()).then(|| ApiKey(key.into()))
    }

    /// Whether `candidate` is this key (constant time in the key's content).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        let diff = a
            .iter()
            .zip(b)
            .fold(u8::from(a.len() != b.len()), |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// What was wrong with a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Wrong,
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn check(key: &ApiKey, req: &Request) -> Result<(), Refusal> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(Refusal::Missing)?;
    match bearer(value) {
        Some(token) if key.matches(token) => Ok(()),
        Some(_) => Err(Refusal::Wrong),
        None => Err(Refusal::Missing),
    }
}

/// The middleware: passes the request on when it carries the key, else answers 401.
pub async fn require_key(State(key): State<ApiKey>, req: Request, next: Next) -> Response {
    match check(&key, &req) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(target: "shardswarm::http", path = req.uri().path(), ?refusal, "unauthorized");
            unauthorized(req.uri().path().starts_with("/v1/"), refusal)
        }
    }
}

fn unauthorized(openai: bool, refusal: Refusal) -> Response {
    let message = match refusal {
        Refusal::Missing => {
            "this API needs a key: send the peer's --api-key as `Authorization: Bearer KEY`"
        }
        Refusal::Wrong => "incorrect API key provided",
    };
    let body = if openai {
        json!({"error": {"message": message, "type": "invalid_request_error",
                         "param": null, "code": "invalid_api_key"}})
    } else {
        json!({"error": {"code": "UNAUTHORIZED", "message": message}})
    };
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let k = ApiKey::new(" sekrit\n").unwrap();
        assert!(k.matches("sekrit"));
        assert!(!k.matches("sekrit2"));
        assert!(!k.matches("sekri"));
        assert!(!k.matches(""));
        assert!(!k.matches("SEKRIT"));
        assert!(ApiKey::new("  ").is_none());
        assert!(!format!("{k:?}").contains("sekrit"));
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(&v("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&v("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&v("Basic abc")), None);
        assert_eq!(bearer(&v("abc")), None);
    }
}
