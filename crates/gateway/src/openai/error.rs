//! The one error type of the OpenAI-compatible routes, rendered as OpenAI renders its errors:
//! `{"error": {"message", "type", "param", "code"}}` with the matching HTTP status.
//!
//! The same body is sent as a `data:` event when a stream fails after it started.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::backend::BackendError;

/// Why an OpenAI-compatible request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenAiError {
    /// The request is malformed or asks for something this server cannot do (400).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, for the client.
        message: String,
        /// The offending request field, when there is one.
        param: Option<String>,
        /// A machine-readable code (`context_length_exceeded`, `invalid_value`, …).
        code: Option<&'static str>,
    },
    /// The request body exceeds the server's body limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The swarm is not ready: these shards are loaded by no node (503).
    #[error("the swarm is not ready: {}", describe_missing(missing))]
    NotReady {
        /// The missing shard indices.
        missing: Vec<u32>,
    },
    /// The swarm could not run the generation (502).
    #[error("inference failed: {0}")]
    Failed(String),
    /// The generation did not finish within the request timeout (504).
    #[error("inference timed out after {0} s")]
    Timeout(u64),
    /// A bug or an unexpected failure on this server (500).
    #[error("internal error: {0}")]
    Internal(String),
}

fn describe_missing(missing: &[u32]) -> String {
    match missing {
        [] => "no node serves the model yet".to_owned(),
        [one] => format!("shard {one} is not loaded by any node"),
        many => {
            let list: Vec<String> = many.iter().map(u32::to_string).collect();
            format!("shards {} are not loaded by any node", list.join(", "))
        }
    }
}

impl OpenAiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
            code: None,
        }
    }

    /// A 400 `invalid_request_error` with code `invalid_value` about `param`.
    pub fn invalid_value(message: impl Into<String>, param: &str) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
            code: Some("invalid_value"),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Failed(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::TooLarge(_) => "invalid_request_error",
            Self::NotReady { .. } => "service_unavailable",
            Self::Failed(_) | Self::Timeout(_) | Self::Internal(_) => "server_error",
        }
    }

    /// The OpenAI error `code`.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::InvalidRequest { code, .. } => *code,
            Self::TooLarge(_) => Some("request_too_large"),
            Self::NotReady { .. } => Some("swarm_not_ready"),
            Self::Failed(_) => Some("inference_failed"),
            Self::Timeout(_) => Some("timeout"),
            Self::Internal(_) => None,
        }
    }

    /// The OpenAI error `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
            "code": self.code(),
        }})
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<BackendError> for OpenAiError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::NotReady { missing } => Self::NotReady { missing },
            BackendError::BadRequest(message) => Self::invalid(message, None),
            BackendError::Failed(why) => Self::Failed(why),
            BackendError::Timeout(secs) => Self::Timeout(secs),
        }
    }
}

impl From<JsonRejection> for OpenAiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "the request body must be JSON with `Content-Type: application/json`".to_owned()
            }
            _ => format!("invalid JSON body: {}", rejection.body_text()),
        };
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge(message)
        } else {
            Self::invalid(message, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_names_every_missing_shard() {
        let e = OpenAiError::from(BackendError::NotReady {
            missing: vec![2, 5],
        });
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_string(),
            "the swarm is not ready: shards 2, 5 are not loaded by any node"
        );
        let one = OpenAiError::NotReady { missing: vec![0] };
        assert!(one.to_string().contains("shard 0 is not loaded"));
    }

    #[test]
    fn body_has_the_four_openai_fields() {
        let e = OpenAiError::invalid_value("temperature must be in [0, 2]", "temperature");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "temperature must be in [0, 2]",
                "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}})
        );
        assert_eq!(
            OpenAiError::Timeout(3).body()["error"]["param"],
            Value::Null
        );
    }

    #[test]
    fn backend_errors_map_to_gateway_statuses() {
        let status = |e| OpenAiError::from(e).status();
        assert_eq!(
            status(BackendError::Failed("x".into())),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            status(BackendError::Timeout(1)),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            status(BackendError::BadRequest("x".into())),
            StatusCode::BAD_REQUEST
        );
    }
}
