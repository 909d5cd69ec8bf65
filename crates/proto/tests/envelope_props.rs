//! Property tests of the envelope codec: round trips, and garbage never panics.

use proptest::prelude::*;
use serde_json::json;
use shardswarm_proto::codec::{decode_request, decode_response, encode_request, encode_response};
use shardswarm_proto::command::{CatalogChangedParams, SyncTorrentsParams};
use shardswarm_proto::{Command, ErrorBody, ErrorCode, Header, Request, Response, Status};

fn header() -> impl Strategy<Value = Header> {
    (".{0,40}", ".{0,60}", ".{0,60}", any::<u64>()).prop_map(|(request_id, from, to, timestamp)| {
        Header {
            request_id,
            from,
            to,
            timestamp,
        }
    })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u32>()
            .prop_map(|total_shards| Command::SyncTorrents(SyncTorrentsParams { total_shards })),
        Just(Command::ListFiles),
        Just(Command::SwarmStatus),
        Just(Command::GetNodeStatus),
        (".{0,20}", any::<u32>()).prop_map(|(model_id, total_shards)| Command::CatalogChanged(
            CatalogChangedParams {
                model_id,
                total_shards
            }
        )),
    ]
}

proptest! {
    #[test]
    fn request_round_trips(header in header(), command in command()) {
        let req = Request { header, command };
        let bytes = encode_request(&req.to_raw());
        let back = decode_request(&bytes).unwrap().typed().unwrap();
        prop_assert_eq!(back, req);
    }

    #[test]
    fn response_round_trips(header in header(), n in any::<u32>(), msg in ".{0,80}") {
        let ok = Response::success("X", header.clone(), json!({"n": n, "s": msg}));
        prop_assert_eq!(decode_response(&encode_response(&ok)).unwrap(), ok);
        let err = Response::error("X", header, ErrorBody::new(ErrorCode::Forbidden, msg));
        let back = decode_response(&encode_response(&err)).unwrap();
        prop_assert_eq!(back.status, Status::Error);
        prop_assert_eq!(back.error_body().unwrap().code, ErrorCode::Forbidden);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(raw) = decode_request(&bytes) {
            let _ = raw.typed();
        }
        let _ = decode_response(&bytes);
    }

    #[test]
    fn random_json_never_panics(s in "\\{(\"[a-z_]{1,12}\":(\"[A-Z_]{0,16}\"|[0-9]{1,25}|null|\\{\\}|\\[\\]),?){0,8}\\}") {
        if let Ok(raw) = decode_request(s.as_bytes()) {
            let _ = raw.typed();
        }
    }
}

#[test]
fn seed_document_request_decodes() {
    let seed = r#"{
  "command":"SYNC_TORRENTS",
  "request_id":"req-1769057962082929400",
  "from":"12D3KooW9wq5eFDwWnV8bBmB31hFy4MSdJsaWTJ9ba6GBDdys9A6",
  "to":"12D3KooWKk3zSVNqbNdPFsNXQkWVSAKrhJFXwGubV7WZ13fh6wBt",
  "timestamp":1769057962,
  "params":{"total_shards":8}
}"#;
    let req = decode_request(seed.as_bytes()).unwrap().typed().unwrap();
    assert_eq!(
        req.command,
        Command::SyncTorrents(SyncTorrentsParams { total_shards: 8 })
    );
    assert_eq!(req.header.timestamp, 1769057962);
}

#[test]
fn unknown_command_and_bad_params_get_codes() {
    let raw = |cmd: &str, params: serde_json::Value| {
        serde_json::to_vec(
            &json!({"command": cmd, "request_id": "r", "from": "a", "to": "b",
            "timestamp": 1, "params": params}),
        )
        .unwrap()
    };
    let e = decode_request(&raw("FLY", json!({})))
        .unwrap()
        .typed()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownCommand);
    let e = decode_request(&raw("SYNC_TORRENTS", json!({"total_shards": "x"})))
        .unwrap()
        .typed()
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        decode_request(b"{not json").unwrap_err().code,
        ErrorCode::BadRequest
    );
    let big = vec![b' '; shardswarm_proto::codec::MAX_REQUEST_BYTES + 1];
    assert_eq!(decode_request(&big).unwrap_err().code, ErrorCode::TooLarge);
}

#[test]
fn success_payload_fields_are_top_level() {
    let h = Header {
        request_id: "r".into(),
        from: "a".into(),
        to: "b".into(),
        timestamp: 5,
    };
    let resp = Response::success("SYNC_TORRENTS", h, json!({"model_id": "m", "files": []}));
    let v: serde_json::Value = serde_json::from_slice(&encode_response(&resp)).unwrap();
    assert_eq!(v["status"], "success");
    assert_eq!(v["model_id"], "m");
    assert_eq!(v["command"], "SYNC_TORRENTS");
    assert_eq!(v["request_id"], "r");
}
