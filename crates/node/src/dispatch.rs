//! Turning inbound request bytes into a response: size cap, JSON shape, sender authentication,
//! addressing and command resolution, then the role's handler. Pure: no IO, no clock.
//!
//! Every failure becomes an error response; nothing here can panic on input.

use libp2p::PeerId;
use serde_json::Value;
use shardswarm_proto::codec::{MAX_REQUEST_BYTES, decode_request, too_large};
use shardswarm_proto::{ErrorBody, ErrorCode, Header, Request, Response};

use crate::codec::InboundBytes;

/// A role's answer to a well-formed, authenticated request.
pub(crate) trait Handler {
    /// The payload of the success response (a JSON object), or an error.
    fn handle(&mut self, peer: PeerId, request: &Request) -> Result<Value, ErrorBody>;
}

/// What [`dispatch`] decided, for logs, events and metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The response to send back.
    pub(crate) response: Response,
    /// The typed request when it got that far.
    pub(crate) request: Option<Request>,
}

/// Answers `bytes` sent by the authenticated `peer` to `local`, at unix time `now`.
pub(crate) fn dispatch(
    handler: &mut dyn Handler,
    local: PeerId,
    peer: PeerId,
    bytes: &InboundBytes,
    now: u64,
) -> Outcome {
    let reply_header = |request_id: String| Header {
        request_id,
        from: local.to_string(),
        to: peer.to_string(),
        timestamp: now,
    };
    let fail = |command: &str, request_id: String, err: ErrorBody| Outcome {
        response: Response::error(command, reply_header(request_id), err),
        request: None,
    };
    if bytes.oversized() {
        return fail(
            "",
            String::new(),
            too_large(bytes.total_len as usize, MAX_REQUEST_BYTES),
        );
    }
    let raw = match decode_request(&bytes.bytes) {
        Ok(raw) => raw,
        Err(err) => {
            // Echo what can be salvaged so the sender can match the error to its request.
            let v: Value = serde_json::from_slice(&bytes.bytes).unwrap_or(Value::Null);
            let field = |k: &str| -> String {
                v.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .chars()
                    .take(128)
                    .collect()
            };
            return fail(&field("command"), field("request_id"), err);
        }
    };
    let command: String = raw.command.chars().take(64).collect();
    let request_id: String = raw.request_id.chars().take(128).collect();
    if raw.from != peer.to_string() {
        let err = ErrorBody::new(
            ErrorCode::Forbidden,
            format!(
                "`from` is {:?} but the authenticated sender is {peer}",
                cut(&raw.from)
            ),
        );
        return fail(&command, request_id, err);
    }
    if raw.to != local.to_string() {
        let err = ErrorBody::new(
            ErrorCode::BadRequest,
            format!("`to` is {:?} but this peer is {local}", cut(&raw.to)),
        );
        return fail(&command, request_id, err);
    }
    let request = match raw.typed() {
        Ok(r) => r,
        Err(err) => return fail(&command, request_id, err),
    };
    let response = match handler.handle(peer, &request) {
        Ok(payload) => Response::success(&command, reply_header(request_id), payload),
        Err(err) => Response::error(&command, reply_header(request_id), err),
    };
    Outcome {
        response,
        request: Some(request),
    }
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use shardswarm_proto::Status;

    use super::*;

    struct Echo;
    impl Handler for Echo {
        fn handle(&mut self, _: PeerId, r: &Request) -> Result<Value, ErrorBody> {
            Ok(json!({"echo": r.command.name()}))
        }
    }

    fn bytes(v: Value) -> InboundBytes {
        let bytes = serde_json::to_vec(&v).unwrap();
        InboundBytes {
            total_len: bytes.len() as u64,
            bytes,
        }
    }

    fn env(cmd: &str, from: PeerId, to: PeerId) -> Value {
        json!({"command": cmd, "request_id": "req-1", "from": from.to_string(),
            "to": to.to_string(), "timestamp": 1, "params": {"total_shards": 8}})
    }

    fn code(o: &Outcome) -> Option<ErrorCode> {
        o.response.error_body().map(|e| e.code)
    }

    #[test]
    fn answers_an_authenticated_request() {
        let (local, peer) = (PeerId::random(), PeerId::random());
        let o = dispatch(
            &mut Echo,
            local,
            peer,
            &bytes(env("SYNC_TORRENTS", peer, local)),
            7,
        );
        assert_eq!(o.response.status, Status::Success);
        assert_eq!(o.response.header.request_id, "req-1");
        assert_eq!(o.response.header.from, local.to_string());
        assert_eq!(o.response.header.timestamp, 7);
    }

    #[test]
    fn spoofed_from_is_forbidden() {
        let (local, peer, other) = (PeerId::random(), PeerId::random(), PeerId::random());
        let o = dispatch(
            &mut Echo,
            local,
            peer,
            &bytes(env("SYNC_TORRENTS", other, local)),
            7,
        );
        assert_eq!(code(&o), Some(ErrorCode::Forbidden));
        assert_eq!(o.response.header.request_id, "req-1");
        assert!(o.request.is_none());
    }

    #[test]
    fn misaddressed_unknown_malformed_and_oversized_get_codes() {
        let (local, peer) = (PeerId::random(), PeerId::random());
        let o = dispatch(
            &mut Echo,
            local,
            peer,
            &bytes(env("SYNC_TORRENTS", peer, peer)),
            7,
        );
        assert_eq!(code(&o), Some(ErrorCode::BadRequest));
        let o = dispatch(
            &mut Echo,
            local,
            peer,
            &bytes(env("LAUNCH", peer, local)),
            7,
        );
        assert_eq!(code(&o), Some(ErrorCode::UnknownCommand));
        let junk = InboundBytes {
            bytes: b"{\"command\":".to_vec(),
            total_len: 11,
        };
        assert_eq!(
            code(&dispatch(&mut Echo, local, peer, &junk, 7)),
            Some(ErrorCode::BadRequest)
        );
        let big = InboundBytes {
            bytes: vec![b' '; 10],
            total_len: (MAX_REQUEST_BYTES + 1) as u64,
        };
        assert_eq!(
            code(&dispatch(&mut Echo, local, peer, &big, 7)),
            Some(ErrorCode::TooLarge)
        );
    }
}
