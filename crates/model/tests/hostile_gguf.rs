//! Hostile GGUF files (issue #9), the proptest twin of the `gguf` and `gguf_load` fuzz
//! targets: every truncation and bit flips of the committed seed models (`fuzz/corpus/gguf`),
//! random bytes, and hand-made huge fields (u64::MAX counts, 2^60-byte strings, overflowing
//! dims, `general.alignment = 0`, a 2^32-token context). Every reader a file from others goes
//! through — our `GgufFile` (split, catalog), and `Stage::load`, `ModelInfo::from_file`,
//! `GgufTokenizer::from_file` (candle's reader, the llama config) — must end in a clean error,
//! never a panic, with bounded allocation.

use std::path::Path;

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use shardswarm_model::gguf::GgufFile;
use shardswarm_model::{Device, GgufTokenizer, ModelInfo, Stage};

#[path = "../../../fuzz/support/seeds.rs"]
mod corpus;
use corpus::seeds;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// The growth of the allocator's peak while `f` runs (an upper bound of what `f` held at once;
/// other test threads can only add to it). One-time costs are paid first: the first error
/// formatted with a captured backtrace symbolizes it (~65 MB of debug info, once per process).
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        load_all(&dir.path().join("warm.gguf"), &seeds("gguf")[0]);
        load_all(&dir.path().join("warm.gguf"), b"GGUF\x03\0\0\0");
    });
    let before = PEAK.current_usage();
    PEAK.reset_peak_usage();
    let out = f();
    (out, PEAK.peak_usage().saturating_sub(before))
}

/// What the readers made of one file.
#[derive(Debug, Default)]
struct Outcome {
    ours: bool,
    info: bool,
    tokenizer: bool,
    stage: bool,
}

/// Every reader over `bytes` (written to `path`); whatever our reader accepts is consistent.
fn load_all(path: &Path, bytes: &[u8]) -> Outcome {
    std::fs::write(path, bytes).expect("write");
    let ours = GgufFile::from_bytes(bytes.to_vec());
    if let Ok(g) = &ours {
        for t in g.tensors() {
            assert!(t.data_offset + t.size <= bytes.len() as u64);
            assert!(g.read_tensor(t).is_ok());
        }
    }
    assert_eq!(ours.is_ok(), GgufFile::open(path).is_ok());
    Outcome {
        ours: ours.is_ok(),
        info: ModelInfo::from_file(path).is_ok(),
        tokenizer: GgufTokenizer::from_file(path).is_ok(),
        stage: Stage::load(path, &Device::Cpu).is_ok(),
    }
}

/// Finds `key` followed by a u32-typed value in a GGUF and overwrites the value.
fn patch_u32(bytes: &mut [u8], key: &str, value: u32) {
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(&4u32.to_le_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .unwrap_or_else(|| panic!("{key} as u32 not in the seed"));
    bytes[at + pat.len()..at + pat.len() + 4].copy_from_slice(&value.to_le_bytes());
}

/// Offset of the first byte after the header counts (tensor count at 8, kv count at 16).
const FIRST_KV: usize = 24;

#[test]
fn the_seeds_load_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    let seeds = seeds("gguf");
    let with_tok = load_all(&path, &seeds[0]);
    assert!(
        with_tok.ours && with_tok.info && with_tok.tokenizer && with_tok.stage,
        "{with_tok:?}"
    );
    let without = load_all(&path, &seeds[1]);
    assert!(
        without.ours && without.stage && !without.tokenizer,
        "{without:?}"
    );
}

#[test]
fn every_truncation_is_refused_by_every_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    let seed = &seeds("gguf")[0];
    let g = GgufFile::from_bytes(seed.clone()).expect("seed");
    let end = g
        .tensors()
        .iter()
        .map(|t| t.data_offset + t.size)
        .max()
        .expect("tensors") as usize;
    for cut in 0..end {
        let o = load_all(&path, &seed[..cut]);
        assert!(!o.ours && !o.stage, "cut at {cut}: {o:?}");
    }
}

#[test]
fn huge_counts_and_lengths_are_refused_without_allocating_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    let seed = &seeds("gguf")[0];
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    for (what, at, v) in [
        ("u64::MAX tensors", 8, u64::MAX),
        ("2^40 tensors", 8, 1 << 40),
        ("u64::MAX metadata entries", 16, u64::MAX),
        ("2^60-byte first key", FIRST_KV, 1 << 60),
        ("u64::MAX-byte first key", FIRST_KV, u64::MAX),
    ] {
        let mut b = seed.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        cases.push((what, b));
    }
    // A string value claiming 2^60 bytes, and an array claiming 2^60 elements: the first kv is
    // general.architecture (a string); replace it with an array of u64 of huge length.
    let key_len = u64::from_le_bytes(seed[FIRST_KV..FIRST_KV + 8].try_into().expect("8")) as usize;
    let value_at = FIRST_KV + 8 + key_len;
    let mut b = seed.clone();
    b[value_at + 4..value_at + 12].copy_from_slice(&(1u64 << 60).to_le_bytes());
    cases.push(("2^60-byte string value", b));
    let mut b = seed.clone();
    b[value_at..value_at + 4].copy_from_slice(&9u32.to_le_bytes()); // array
    b[value_at + 4..value_at + 8].copy_from_slice(&10u32.to_le_bytes()); // of u64
    b.splice(value_at + 8..value_at + 8, (1u64 << 60).to_le_bytes());
    cases.push(("2^60-element array", b));
    for (what, bytes) in &cases {
        let (o, grew) = peak_growth(|| load_all(&path, bytes));
        assert!(
            !o.ours && !o.info && !o.tokenizer && !o.stage,
            "{what}: {o:?}"
        );
        assert!(grew < 16 << 20, "{what}: {grew} bytes");
    }
}

#[test]
fn zero_alignment_is_a_clean_error_in_every_reader() {
    // candle's reader divides by `general.alignment`; a file that sets it to 0 must be refused
    // before it gets there.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    let mut b = seeds("gguf")[0].clone();
    patch_u32(&mut b, "general.alignment", 0);
    let o = load_all(&path, &b);
    assert!(!o.ours && !o.info && !o.tokenizer && !o.stage, "{o:?}");
}

#[test]
fn a_huge_context_length_costs_a_bounded_rope_table() {
    // The RoPE table is sized by the file's context length; it stops at 2^22 entries (three
    // 16 MiB tensors while it is built) however long a context the file claims.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    for ctx in [u32::MAX, 1 << 30, 1 << 24] {
        let mut b = seeds("gguf")[0].clone();
        patch_u32(&mut b, "llama.context_length", ctx);
        let (o, grew) = peak_growth(|| load_all(&path, &b));
        assert!(o.ours && o.stage && o.info, "{ctx}: {o:?}");
        assert!(grew < 64 << 20, "context {ctx}: {grew} bytes");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_bytes_are_clean_errors(mut bytes in proptest::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(b"GGUF\x03\0\0\0");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        load_all(&dir.path().join("m.gguf"), &bytes);
    }

    #[test]
    fn bit_flips_of_the_seeds_are_handled(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let all = seeds("gguf");
        let mut bytes = all[pick.index(all.len())].clone();
        let header = GgufFile::from_bytes(bytes.clone()).expect("seed").data_offset() as usize;
        for (at, bit) in flips {
            // Mostly the header, where the structure is.
            let i = at.index(header);
            bytes[i] ^= 1 << bit;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (_, grew) = peak_growth(|| load_all(&dir.path().join("m.gguf"), &bytes));
        prop_assert!(grew < 64 << 20, "{} bytes", grew);
    }
}

#[test]
fn a_huge_block_count_is_refused_by_split_and_the_loader_without_reserving_it() {
    // `gguf_load` found `Stage::load` reserving a Vec of `block_count` blocks up front (117M
    // claimed: out of memory); `split` sized a per-block cost table the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.gguf");
    for blocks in [u32::MAX, 0x0700_0001, 2] {
        let mut b = seeds("gguf")[0].clone();
        patch_u32(&mut b, "llama.block_count", blocks);
        let (o, grew) = peak_growth(|| load_all(&path, &b));
        assert!(o.ours && !o.stage, "{blocks}: {o:?}");
        assert!(grew < 64 << 20, "{blocks} blocks: {grew} bytes");
        let out = dir.path().join("out");
        let (res, grew) = peak_growth(|| shardswarm_model::split::split(&path, 1, &out, |_| {}));
        let err = res.expect_err("refused");
        assert!(
            err.to_string().contains("not a complete llama model"),
            "{err}"
        );
        assert!(grew < 64 << 20, "split, {blocks} blocks: {grew} bytes");
    }
}
