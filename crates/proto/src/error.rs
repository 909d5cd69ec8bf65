//! Error codes and the `error` object of an error response (BRIEF §3).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The error codes a response may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Malformed JSON, missing fields or bad parameter values.
    BadRequest,
    /// The command name is not one this peer knows.
    UnknownCommand,
    /// The sender is not allowed to do this (e.g. `from` is not the authenticated sender).
    Forbidden,
    /// The message exceeds the size cap.
    TooLarge,
    /// The peer cannot answer yet (e.g. no catalog).
    NotReady,
    /// Something went wrong on the answering side.
    Internal,
}

impl ErrorCode {
    /// The wire spelling, e.g. `BAD_REQUEST`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::UnknownCommand => "UNKNOWN_COMMAND",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::NotReady => "NOT_READY",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl ErrorBody {
    /// Builds an error object.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            code,
            message: message.into(),
        }
    }
}
