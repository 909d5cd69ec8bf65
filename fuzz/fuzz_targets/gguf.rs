//! The GGUF reader (`GgufFile`) as `split`, the catalog builder and the shard check use it on
//! files from others: header, metadata, tensor infos, tensor reads, from memory and from a file.
//! Never panics; allocation stays within a small multiple of the input; every tensor it accepts
//! lies inside the input and reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_model::gguf::GgufFile;

#[path = "../support/scratch.rs"]
mod support;
use support::scratch;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let from_memory = GgufFile::from_bytes(data.to_vec());
    // The file path (a BufReader over a File) must agree with the in-memory one.
    std::fs::write(scratch("input.gguf"), data).expect("write");
    let from_file = GgufFile::open(scratch("input.gguf"));
    assert_eq!(
        from_memory.is_ok(),
        from_file.is_ok(),
        "{from_memory:?} vs {from_file:?}"
    );
    let Ok(g) = from_memory else {
        return;
    };
    assert!(g.alignment().is_power_of_two());
    assert!(g.data_offset() <= len || g.tensors().is_empty());
    for t in g.tensors() {
        assert!(
            t.data_offset
                .checked_add(t.size)
                .is_some_and(|end| end <= len)
        );
        assert_eq!(
            t.data_offset % g.alignment(),
            g.data_offset() % g.alignment()
        );
        let bytes = g.read_tensor(t).expect("an accepted tensor reads");
        assert_eq!(bytes.len() as u64, t.size);
        assert!(g.tensor(&t.name).is_some());
    }
    for (k, v) in g.metadata() {
        assert!(g.get(k).is_some());
        let _ = (v.as_u64(), v.as_f64(), v.as_str(), v.as_array());
    }
});
