//! The command envelope as a responder sees it: bytes → `RawRequest` → typed `Request`, and the
//! error reply built for whatever fails. Never panics; a decoded request re-encodes and decodes
//! to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_proto::codec::{decode_request, encode_request, encode_response};
use shardswarm_proto::{Header, Response};

fuzz_target!(|data: &[u8]| {
    let raw = match decode_request(data) {
        Ok(raw) => raw,
        Err(e) => {
            // The error reply to an undecodable request must itself encode.
            let header = Header {
                request_id: String::new(),
                from: String::new(),
                to: String::new(),
                timestamp: 0,
            };
            assert!(!encode_response(&Response::error("?", header, e)).is_empty());
            return;
        }
    };
    // Header and command survive a re-encoding exactly; untyped params may not (serde_json's
    // default float parsing can land a 50-digit number one ulp away from its re-printed form).
    let again = decode_request(&encode_request(&raw)).expect("re-encoded request decodes");
    assert_eq!(
        (again.header(), &again.command),
        (raw.header(), &raw.command)
    );
    match raw.typed() {
        Ok(req) => {
            // The typed command goes back to the wire and parses to the same command.
            let back = req.to_raw().typed().expect("typed request round-trips");
            assert_eq!(back, req);
        }
        Err(e) => {
            let resp = Response::error(&raw.command, raw.header(), e);
            assert!(!encode_response(&resp).is_empty());
        }
    }
});
