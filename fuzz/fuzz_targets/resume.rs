//! The `.resume` file beside a partial download, read back by `PieceStore::open` (a file on
//! disk that a crash, another program or another user may have left in any state).
//!
//! Input: one flag byte, then the file. With bit 0 of the flag set, the harness appends the
//! correct SHA-1 trailer so the fuzzer gets past the checksum to the fields behind it. Never
//! panics, never fails the open (a bad resume file is ignored), and the store never has a piece
//! past the torrent's end.
#![no_main]

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use shardswarm_torrent::PieceStore;
use shardswarm_torrent::metainfo::{Info, Metainfo};

const PIECE: u64 = 16 * 1024;
const PIECES: u64 = 19;
const LENGTH: u64 = PIECE * (PIECES - 1) + 1000;
const NAME: &str = "shard-0.gguf";

struct Fixture {
    dir: tempfile::TempDir,
    meta: Metainfo,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Every piece is zeros, so a zero-filled `.part` verifies wherever the resume file
        // points; odd pieces get a wrong hash so the re-check also has failures to handle.
        let zero_full: [u8; 20] = Sha1::digest(vec![0u8; PIECE as usize]).into();
        let zero_last: [u8; 20] =
            Sha1::digest(vec![0u8; (LENGTH - PIECE * (PIECES - 1)) as usize]).into();
        let pieces = (0..PIECES)
            .map(|i| match (i % 2, i == PIECES - 1) {
                (1, _) => [0xee; 20],
                (_, true) => zero_last,
                _ => zero_full,
            })
            .collect();
        let meta = Metainfo {
            info: Info {
                name: NAME.into(),
                length: LENGTH,
                piece_length: PIECE,
                pieces,
            },
            announce: None,
            created_by: None,
        };
        let base = PathBuf::from("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        Fixture { dir, meta }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, body)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let dir = f.dir.path();
    let mut resume = body.to_vec();
    if flag & 1 == 1 {
        let sum: [u8; 20] = Sha1::digest(&resume).into();
        resume.extend_from_slice(&sum);
    }
    let _ = fs::remove_file(dir.join(NAME));
    File::create(dir.join(format!("{NAME}.part")))
        .and_then(|p| p.set_len(LENGTH))
        .expect("part file");
    fs::write(dir.join(format!("{NAME}.resume")), &resume).expect("resume file");
    let store =
        PieceStore::open(dir, &f.meta, false).expect("a bad resume file is ignored, not fatal");
    let have = store.have();
    assert_eq!(u64::from(have.len()), PIECES);
    for p in have.iter_ones() {
        // (Pieces the file records as synced are trusted by design: no assertion on hashes.)
        assert!(u64::from(p) < PIECES);
    }
});
