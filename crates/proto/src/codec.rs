//! Byte-level encoding of envelopes, with the size caps of the command protocol.
//!
//! Decoding never panics and never allocates more than the input: malformed JSON, a wrong
//! shape or an oversized message become an [`ErrorBody`] that can be sent back.

use crate::envelope::{RawRequest, Response};
use crate::error::{ErrorBody, ErrorCode};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response accepted, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 10 * 1024 * 1024;

/// Serializes a request.
pub fn encode_request(req: &RawRequest) -> Vec<u8> {
    serde_json::to_vec(req).unwrap_or_default()
}

/// Serializes a response.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    serde_json::to_vec(resp).unwrap_or_default()
}

/// Parses a request envelope (the command is not resolved yet; see [`RawRequest::typed`]).
pub fn decode_request(bytes: &[u8]) -> Result<RawRequest, ErrorBody> {
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(too_large(bytes.len(), MAX_REQUEST_BYTES));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("malformed request: {e}")))
}

/// Parses a response envelope.
pub fn decode_response(bytes: &[u8]) -> Result<Response, ErrorBody> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(too_large(bytes.len(), MAX_RESPONSE_BYTES));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ErrorBody::new(ErrorCode::BadRequest, format!("malformed response: {e}")))
}

/// The error for a message of `len` bytes over `cap`.
pub fn too_large(len: usize, cap: usize) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::TooLarge,
        format!("message of at least {len} bytes exceeds the {cap}-byte limit"),
    )
}
