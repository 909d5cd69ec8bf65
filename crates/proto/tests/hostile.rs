//! Hostile input into every proto decoder (issue #9), the proptest twins of the `envelope`,
//! `response` and `manifest` fuzz targets: random bytes, every truncation and bit flips of the
//! committed seed corpus (`fuzz/corpus/`), and hand-made huge fields. Each must end in a clean
//! error (or a value that re-encodes), never a panic, with bounded allocation.

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use shardswarm_proto::codec::{
    MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, decode_request, decode_response, encode_request,
};
use shardswarm_proto::command::{Assignment, ListFilesResponse};
use shardswarm_proto::{
    ErrorCode, Manifest, NodeStatus, SwarmStatus, SyncTorrentsResponse, parse_shard_filename,
    shard_filename,
};

#[path = "../../../fuzz/support/seeds.rs"]
mod corpus;
use corpus::seeds;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// Runs `f` and returns the growth of the allocator's peak over what was live before (an upper
/// bound of what `f` held at once; other test threads can only add to it).
fn peak_growth(f: impl FnOnce()) -> usize {
    let before = PEAK.current_usage();
    PEAK.reset_peak_usage();
    f();
    PEAK.peak_usage().saturating_sub(before)
}

fn check_request(bytes: &[u8]) {
    let Ok(raw) = decode_request(bytes) else {
        return;
    };
    // Header and command survive a re-encoding exactly; untyped params may not (serde_json's
    // default float parsing can land a 50-digit number one ulp away from its re-printed form).
    let again = decode_request(&encode_request(&raw)).expect("re-decodes");
    assert_eq!(
        (again.header(), &again.command),
        (raw.header(), &raw.command)
    );
    if let Ok(req) = raw.typed() {
        assert_eq!(req.to_raw().typed().expect("typed round trip"), req);
    }
}

fn check_response(bytes: &[u8]) {
    let Ok(resp) = decode_response(bytes) else {
        return;
    };
    let _ = resp.error_body();
    let _ = resp.payload::<SyncTorrentsResponse>();
    let _ = resp.payload::<ListFilesResponse>();
    let _ = resp.payload::<Assignment>();
    let _ = resp.payload::<SwarmStatus>();
    let _ = resp.payload::<NodeStatus>();
}

fn check_manifest(bytes: &[u8]) {
    if let Ok(name) = std::str::from_utf8(bytes)
        && let Some(n) = parse_shard_filename(name)
    {
        assert_eq!(shard_filename(n), name);
    }
    if let Ok(m) = Manifest::from_json(bytes) {
        m.validate().expect("accepted manifest validates");
    }
}

fn check_all(bytes: &[u8]) {
    check_request(bytes);
    check_response(bytes);
    check_manifest(bytes);
}

#[test]
fn every_truncation_of_every_seed_is_handled() {
    for target in ["envelope", "response", "manifest"] {
        for seed in seeds(target) {
            for cut in 0..=seed.len() {
                check_all(&seed[..cut]);
            }
        }
    }
}

#[test]
fn seeds_decode() {
    for seed in seeds("envelope") {
        decode_request(&seed).expect("envelope seed decodes");
    }
    for seed in seeds("response") {
        decode_response(&seed).expect("response seed decodes");
    }
    Manifest::from_json(&seeds("manifest")[1]).expect("manifest seed");
}

#[test]
fn a_fifty_digit_number_in_untyped_params_is_handled() {
    // The `envelope` fuzz target's first finding: not a decoder bug, a float that does not
    // survive parse → print → parse bit-exactly; the harness now compares header and command.
    let doc = br#"{"command":"SHARD_LOADED","request_id":"r","from":"a","to":"b","timestamp":1,"params":{"verified":[22222222222222222222222222222222222222222222222222222]}}"#;
    check_all(doc);
    assert!(decode_request(doc).expect("decodes").typed().is_err());
}

#[test]
fn oversized_messages_are_refused_by_size_before_parsing() {
    let big = vec![b' '; MAX_REQUEST_BYTES + 1];
    let e = decode_request(&big).expect_err("too large");
    assert_eq!(e.code, ErrorCode::TooLarge);
    let big = vec![b' '; MAX_RESPONSE_BYTES + 1];
    assert_eq!(
        decode_response(&big).expect_err("too large").code,
        ErrorCode::TooLarge
    );
}

#[test]
fn deep_nesting_is_a_clean_error_not_a_stack_overflow() {
    for open in [b'[', b'{'] {
        let mut doc = b"{\"command\":\"X\",\"request_id\":\"r\",\"from\":\"a\",\"to\":\"b\",\"timestamp\":1,\"params\":".to_vec();
        doc.extend(std::iter::repeat_n(open, 100_000));
        check_all(&doc);
        assert!(decode_request(&doc).is_err());
    }
}

#[test]
fn huge_numbers_and_lengths_are_clean_errors() {
    let cases = [
        // A timestamp past u64, a shard count past u32, a vector of 2^40 claimed entries.
        r#"{"command":"SYNC_TORRENTS","request_id":"r","from":"a","to":"b","timestamp":18446744073709551616,"params":{}}"#,
        r#"{"command":"SYNC_TORRENTS","request_id":"r","from":"a","to":"b","timestamp":1,"params":{"total_shards":4294967296}}"#,
        r#"{"command":"SHARD_LOADED","request_id":"r","from":"a","to":"b","timestamp":1,"params":{"model_id":"m","loaded":[1e999],"verified":[]}}"#,
        r#"{"command":"ASSIGN_SHARDS","request_id":"r","from":"a","to":"b","timestamp":1,"params":{"model_id":"m","shards":-1}}"#,
    ];
    for c in cases {
        let grew = peak_growth(|| check_all(c.as_bytes()));
        assert!(grew < 1 << 20, "{c}: {grew} bytes");
        let ok = decode_request(c.as_bytes()).and_then(|r| r.typed());
        assert!(ok.is_err(), "{c}");
    }
}

#[test]
fn a_megabyte_of_array_elements_stays_within_a_small_multiple_of_the_input() {
    // The largest request there is: ~1 MiB of `[0,0,0,…]`. serde_json's Value costs 32 bytes an
    // element, so 2 bytes of input → at most 32 bytes; 1 MiB in stays well under 64 MiB.
    let mut doc = br#"{"command":"SHARD_LOADED","request_id":"r","from":"a","to":"b","timestamp":1,"params":{"model_id":"m","loaded":["#.to_vec();
    while doc.len() < MAX_REQUEST_BYTES - 64 {
        doc.extend_from_slice(b"0,");
    }
    doc.extend_from_slice(b"0],\"verified\":[]}}");
    let grew = peak_growth(|| check_all(&doc));
    assert!(
        grew < 64 << 20,
        "{grew} bytes for {} bytes of input",
        doc.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_are_clean_errors(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        check_all(&bytes);
    }

    #[test]
    fn bit_flips_of_seeds_are_handled(
        target in prop::sample::select(vec!["envelope", "response", "manifest"]),
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let all = seeds(target);
        let mut bytes = all[pick.index(all.len())].clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check_all(&bytes);
    }

    #[test]
    fn hostile_file_names_are_not_shard_names(name in "(\\.\\.|/|\\\\|\\x00|[a-z]|-|\\.){0,20}(shard-[0-9]{1,3}\\.gguf)?") {
        if let Some(n) = parse_shard_filename(&name) {
            prop_assert_eq!(shard_filename(n), name);
        }
    }
}
