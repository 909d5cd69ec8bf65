//! The JSON command envelope of BRIEF §3, exactly as the seed document shows it.
//!
//! A request is `{"command","request_id","from","to","timestamp","params"}`; a response repeats
//! `command`, `request_id`, `from`, `to`, `timestamp`, adds `status` (`"success"`/`"error"`) and
//! puts the command's payload fields at top level (or `error: {code, message}`).
//!
//! Decoding is two-step so that every failure can still be answered: [`RawRequest`] accepts any
//! command name and any `params`; [`RawRequest::typed`] then turns it into a [`Request`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::command::{Command, CommandParseError};
use crate::error::{ErrorBody, ErrorCode};

/// A request envelope with its command still a string and its params untyped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawRequest {
    /// Command name, e.g. `SYNC_TORRENTS`.
    pub command: String,
    /// Caller-chosen id, echoed in the response (`req-<unix nanos>`).
    pub request_id: String,
    /// Sender's peer ID (must be the authenticated sender).
    pub from: String,
    /// Receiver's peer ID.
    pub to: String,
    /// Unix seconds when the request was made.
    pub timestamp: u64,
    /// Command parameters.
    #[serde(default = "empty_object")]
    pub params: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A request whose command is known and whose params parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The envelope fields other than command and params.
    pub header: Header,
    /// The typed command with its parameters.
    pub command: Command,
}

/// The envelope fields shared by requests and responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Request id, echoed in the response.
    pub request_id: String,
    /// Sender's peer ID.
    pub from: String,
    /// Receiver's peer ID.
    pub to: String,
    /// Unix seconds.
    pub timestamp: u64,
}

/// Outcome field of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The command succeeded; payload fields follow at top level.
    Success,
    /// The command failed; an `error` object follows.
    Error,
}

/// A response envelope: header, command name, status and the payload fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Echo of the request's command name (as sent, even when unknown).
    pub command: String,
    /// Envelope fields; `from` is the responder.
    #[serde(flatten)]
    pub header: Header,
    /// Success or error.
    pub status: Status,
    /// Payload fields (on success) or `{"error": {...}}` (on error), at top level.
    #[serde(flatten)]
    pub body: Map<String, Value>,
}

impl RawRequest {
    /// The envelope header.
    pub fn header(&self) -> Header {
        Header {
            request_id: self.request_id.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            timestamp: self.timestamp,
        }
    }

    /// Resolves the command name and parses its params.
    pub fn typed(&self) -> Result<Request, ErrorBody> {
        let command = Command::from_parts(&self.command, &self.params).map_err(|e| match e {
            CommandParseError::Unknown(name) => ErrorBody::new(
                ErrorCode::UnknownCommand,
                format!("unknown command {name:?}"),
            ),
            CommandParseError::BadParams { command, reason } => ErrorBody::new(
                ErrorCode::BadRequest,
                format!("bad params for {command}: {reason}"),
            ),
        })?;
        Ok(Request {
            header: self.header(),
            command,
        })
    }
}

impl Request {
    /// The wire form of this request.
    pub fn to_raw(&self) -> RawRequest {
        let (command, params) = self.command.to_parts();
        RawRequest {
            command: command.to_owned(),
            request_id: self.header.request_id.clone(),
            from: self.header.from.clone(),
            to: self.header.to.clone(),
            timestamp: self.header.timestamp,
            params,
        }
    }
}

impl Response {
    /// A success response carrying `payload`'s fields at top level.
    ///
    /// `payload` must serialize to a JSON object; anything else is carried under `"result"`.
    pub fn success(command: &str, header: Header, payload: impl Serialize) -> Self {
        let body = match serde_json::to_value(payload) {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => Map::new(),
            Ok(other) => Map::from_iter([("result".to_owned(), other)]),
            Err(e) => {
                return Self::error(
                    command,
                    header,
                    ErrorBody::new(ErrorCode::Internal, e.to_string()),
                );
            }
        };
        Response {
            command: command.to_owned(),
            header,
            status: Status::Success,
            body,
        }
    }

    /// An error response.
    pub fn error(command: &str, header: Header, error: ErrorBody) -> Self {
        let mut body = Map::new();
        body.insert(
            "error".to_owned(),
            serde_json::to_value(&error).unwrap_or(Value::Null),
        );
        Response {
            command: command.to_owned(),
            header,
            status: Status::Error,
            body,
        }
    }

    /// The error object of an error response.
    pub fn error_body(&self) -> Option<ErrorBody> {
        match self.status {
            Status::Error => self
                .body
                .get("error")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            Status::Success => None,
        }
    }

    /// Parses the payload of a success response as `T`; errors become `Err(ErrorBody)`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, ErrorBody> {
        if let Some(err) = self.error_body() {
            return Err(err);
        }
        if self.status == Status::Error {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "error response without error object",
            ));
        }
        serde_json::from_value(Value::Object(self.body.clone())).map_err(|e| {
            ErrorBody::new(
                ErrorCode::BadRequest,
                format!("bad {} payload: {e}", self.command),
            )
        })
    }
}
