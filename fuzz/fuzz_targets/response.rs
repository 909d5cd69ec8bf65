//! Response envelopes and every payload a peer can send back (catalog, file list, assignment,
//! status documents, error bodies). Never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_proto::codec::{decode_response, encode_response};
use shardswarm_proto::command::{Assignment, ListFilesResponse};
use shardswarm_proto::{NodeStatus, SwarmStatus, SyncTorrentsResponse};

fuzz_target!(|data: &[u8]| {
    let Ok(resp) = decode_response(data) else {
        return;
    };
    let again = decode_response(&encode_response(&resp)).expect("re-encoded response decodes");
    assert_eq!(again.header, resp.header);
    let _ = resp.error_body();
    let _ = resp.payload::<SyncTorrentsResponse>();
    let _ = resp.payload::<ListFilesResponse>();
    let _ = resp.payload::<Assignment>();
    let _ = resp.payload::<SwarmStatus>();
    let _ = resp.payload::<NodeStatus>();
});
