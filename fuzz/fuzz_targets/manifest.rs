//! `manifest.json` (from a shards directory) and shard file names. Never panics; an accepted
//! manifest validates and round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_proto::{Manifest, parse_shard_filename, shard_filename};

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data)
        && let Some(n) = parse_shard_filename(name)
    {
        assert_eq!(shard_filename(n), name);
    }
    let Ok(m) = Manifest::from_json(data) else {
        return;
    };
    m.validate().expect("an accepted manifest is valid");
    assert_eq!(
        Manifest::from_json(m.to_json().as_bytes()).expect("round trip"),
        m
    );
});
