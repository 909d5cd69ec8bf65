//! Property tests: hostile bytes into `GgufFile` never panic and never claim tensors outside
//! the input.

mod split_support;

use proptest::prelude::*;
use shardswarm_model::gguf::GgufFile;
use split_support::{Tiny, build};

fn valid() -> Vec<u8> {
    build(&Tiny {
        blocks: 2,
        ..Tiny::default()
    })
}

/// Whatever parses must be self-consistent.
fn check(bytes: Vec<u8>) {
    let len = bytes.len() as u64;
    if let Ok(g) = GgufFile::from_bytes(bytes) {
        for t in g.tensors() {
            assert!(t.data_offset + t.size <= len);
            assert!(g.read_tensor(t).is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..4096), magic in any::<bool>()) {
        if magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&[b'G', b'G', b'U', b'F', 3, 0, 0, 0]);
        }
        check(bytes);
    }

    #[test]
    fn truncations_of_a_valid_file_are_refused(cut in any::<prop::sample::Index>()) {
        let bytes = valid();
        let full = GgufFile::from_bytes(bytes.clone()).unwrap();
        let last_end = full.tensors().iter().map(|t| t.data_offset + t.size).max().unwrap() as usize;
        let cut = cut.index(last_end);
        prop_assert!(GgufFile::from_bytes(bytes[..cut].to_vec()).is_err());
    }

    #[test]
    fn mutations_of_a_valid_file_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = valid();
        let header = GgufFile::from_bytes(bytes.clone()).unwrap().data_offset() as usize;
        for (at, b) in edits {
            // Mostly hit the header, where the structure is.
            let i = at.index(header);
            bytes[i] = b;
        }
        check(bytes);
    }

    #[test]
    fn huge_counts_are_refused_without_allocating(n in any::<u64>(), which in 0usize..2) {
        let mut bytes = valid();
        let at = 8 + 8 * which;
        bytes[at..at + 8].copy_from_slice(&n.to_le_bytes());
        check(bytes);
    }
}
