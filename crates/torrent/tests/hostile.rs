//! Hostile input into every torrent decoder (issue #9), the proptest twins of the `piece_wire`,
//! `metainfo` and `resume` fuzz targets: random bytes, every truncation and bit flips of the
//! committed seed corpus (`fuzz/corpus/`), and hand-made huge length fields. Each must end in a
//! clean error, never a panic, with bounded allocation; names from the network never become
//! more than one path component.

use std::fs::{self, File};
use std::path::Path;

use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use sha1::{Digest, Sha1};
use shardswarm_proto::InfoHash;
use shardswarm_torrent::metainfo::{self, Info, Metainfo, MetainfoError};
use shardswarm_torrent::wire::{self, Frame, FrameDecoder, WireError};
use shardswarm_torrent::{Bitfield, PieceStore, StorageError};

#[path = "../../../fuzz/support/seeds.rs"]
mod corpus;
use corpus::seeds;

#[global_allocator]
static PEAK: PeakAlloc = PeakAlloc;

/// The growth of the allocator's peak while `f` runs (an upper bound of what `f` held at once;
/// other test threads can only add to it).
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = PEAK.current_usage();
    PEAK.reset_peak_usage();
    let out = f();
    (out, PEAK.peak_usage().saturating_sub(before))
}

/// Both wire decoders over `data` cut into `chunk`-byte pieces: they agree and every frame
/// re-encodes to its bytes.
fn check_wire(data: &[u8], chunk: usize) {
    let mut dec = FrameDecoder::new();
    let mut incremental = Vec::new();
    'feed: for part in data.chunks(chunk.max(1)) {
        dec.push(part);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => incremental.push(f),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let mut oneshot = Vec::new();
    let mut rest = data;
    while let Ok(Some((f, used))) = wire::decode(rest) {
        assert_eq!(f.to_vec(), rest[..used]);
        oneshot.push(f);
        rest = &rest[used..];
    }
    assert_eq!(incremental, oneshot);
    for f in &oneshot {
        if let Frame::Bitfield { bits, .. } = f {
            for len in [0, 1, 8, 9, u32::MAX] {
                if let Ok(b) = Bitfield::from_bytes(bits, len) {
                    assert!(b.iter_ones().all(|i| i < len));
                }
            }
        }
    }
}

fn check_metainfo(data: &[u8]) {
    if let Ok(m) = Metainfo::from_torrent_bytes(data) {
        metainfo::validate_name(&m.info.name).expect("valid name");
        assert_eq!(
            m.info.length.div_ceil(m.info.piece_length),
            m.info.pieces.len() as u64
        );
    }
    let hash = InfoHash(Sha1::digest(data).into());
    if let Ok(m) = Metainfo::from_info_bytes(data, Some(hash)) {
        assert_eq!(m.info_bytes(), data);
    }
}

#[test]
fn every_truncation_of_every_seed_is_handled() {
    for seed in seeds("piece_wire") {
        for cut in 1..=seed.len() {
            check_wire(&seed[1..cut], usize::from(seed[0]) + 1);
            check_wire(&seed[1..cut], 1);
        }
    }
    for seed in seeds("metainfo") {
        for cut in 0..seed.len() {
            check_metainfo(&seed[..cut]);
            if seed.first() == Some(&b'd') {
                assert!(Metainfo::from_info_bytes(&seed[..cut], None).is_err());
            }
        }
    }
}

#[test]
fn huge_wire_length_prefixes_are_refused_before_buffering() {
    for len in [u32::MAX, 1 << 31, wire::MAX_FRAME_LEN as u32 + 1] {
        let (res, grew) = peak_growth(|| {
            let mut d = FrameDecoder::new();
            d.push(&len.to_be_bytes());
            d.push(&[6, 0, 0]);
            d.next_frame()
        });
        assert!(matches!(res, Err(WireError::TooLong { .. })), "{res:?}");
        assert!(grew < 64 * 1024, "{grew} bytes for a {len}-byte claim");
        assert!(matches!(
            wire::decode(&len.to_be_bytes()),
            Err(WireError::TooLong { .. })
        ));
    }
    // The largest accepted claim reserves the frame, never more than MAX_FRAME_LEN (+ prefix).
    let (res, grew) = peak_growth(|| {
        let mut d = FrameDecoder::new();
        d.push(&(wire::MAX_FRAME_LEN as u32).to_be_bytes());
        d.next_frame()
    });
    assert!(matches!(res, Ok(None)));
    assert!(grew <= wire::MAX_FRAME_LEN + 4096, "{grew}");
}

#[test]
fn huge_bencode_lengths_and_deep_nesting_are_clean_errors() {
    let cases: Vec<Vec<u8>> = vec![
        b"d4:infod6:lengthi1e4:name1152921504606846976:x".to_vec(),
        b"d6:lengthi18446744073709551616e4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae".to_vec(),
        b"d6:lengthi-1e4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae".to_vec(),
        b"d6:lengthi1e4:name1:a12:piece lengthi0e6:pieces0:e".to_vec(),
        // 2^40 pieces claimed by the length with 20 bytes of hashes.
        b"d6:lengthi18014398509481984e4:name1:a12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae".to_vec(),
        b"99999999999999999999999999999:".to_vec(),
        [b"d4:info".as_slice(), &[b'l'; 50_000], &[b'e'; 50_001]].concat(),
    ];
    for c in &cases {
        let (_, grew) = peak_growth(|| {
            assert!(Metainfo::from_torrent_bytes(c).is_err());
            assert!(Metainfo::from_info_bytes(c, None).is_err());
        });
        assert!(
            grew < 1 << 20,
            "{grew} bytes for {:?}",
            String::from_utf8_lossy(&c[..40.min(c.len())])
        );
    }
}

#[test]
fn oversized_torrent_and_info_bytes_are_refused_by_size() {
    let big = vec![b'd'; metainfo::MAX_TORRENT_BYTES + 1];
    assert!(matches!(
        Metainfo::from_torrent_bytes(&big),
        Err(MetainfoError::TooLarge { .. })
    ));
    assert!(matches!(
        Metainfo::from_info_bytes(&big, None),
        Err(MetainfoError::TooLarge { .. })
    ));
}

/// Names a peer or a torrent file could carry, each of which must stay out of a path.
const HOSTILE_NAMES: &[&str] = &[
    "",
    ".",
    "..",
    "../x",
    "..\\x",
    "/etc/passwd",
    "\\\\server\\share",
    "a/b",
    "a\\b",
    "x\0y",
    "C:\\x",
    "line\nbreak",
    "\u{7f}",
    "CON",
    "nul",
    "Aux.gguf",
    "com1",
    "LPT9.txt",
    "trailing.",
    "trailing ",
];

#[test]
fn hostile_torrent_names_are_refused_with_a_clear_error() {
    let mut names: Vec<String> = HOSTILE_NAMES.iter().map(|s| s.to_string()).collect();
    names.push("a".repeat(256));
    for name in &names {
        let err = metainfo::validate_name(name).expect_err(name);
        assert!(err.to_string().contains("refusing torrent name"), "{err}");
    }
    // And end to end: an info dictionary naming one of them does not parse, and a store will
    // not open a file for it.
    let dir = tempfile::tempdir().expect("tempdir");
    for name in &names {
        let info = bencode_info(name, 1, 16384, &[[0u8; 20]]);
        assert!(
            matches!(
                Metainfo::from_info_bytes(&info, None),
                Err(MetainfoError::InvalidName { .. })
            ),
            "{name:?}"
        );
        let meta = Metainfo {
            info: Info {
                name: name.clone(),
                length: 1,
                piece_length: 16384,
                pieces: vec![[0; 20]],
            },
            announce: None,
            created_by: None,
        };
        assert!(matches!(
            PieceStore::open(dir.path(), &meta, false),
            Err(StorageError::BadName { .. })
        ));
    }
    assert_eq!(
        fs::read_dir(dir.path()).expect("read dir").count(),
        0,
        "nothing was created"
    );
}

#[test]
fn names_that_merely_look_reserved_are_fine() {
    for name in [
        "console",
        "COM10",
        "LPT",
        "nul-device.gguf",
        "shard-0.gguf",
        "a..b",
        ".hidden",
    ] {
        metainfo::validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn bencode_info(name: &str, length: u64, piece_length: u64, pieces: &[[u8; 20]]) -> Vec<u8> {
    let mut out = format!("d6:lengthi{length}e4:name{}:", name.len()).into_bytes();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(
        format!(
            "12:piece lengthi{piece_length}e6:pieces{}:",
            pieces.len() * 20
        )
        .as_bytes(),
    );
    out.extend_from_slice(pieces.as_flattened());
    out.push(b'e');
    out
}

/// The fixture of the `resume` fuzz target: 19 zero pieces of 16 KiB (the last 1000 bytes),
/// odd pieces with a wrong hash.
fn resume_fixture() -> Metainfo {
    const PIECE: u64 = 16384;
    let full: [u8; 20] = Sha1::digest(vec![0u8; PIECE as usize]).into();
    let last: [u8; 20] = Sha1::digest(vec![0u8; 1000]).into();
    let pieces = (0..19u64)
        .map(|i| {
            if i % 2 == 1 {
                [0xee; 20]
            } else if i == 18 {
                last
            } else {
                full
            }
        })
        .collect();
    Metainfo {
        info: Info {
            name: "shard-0.gguf".into(),
            length: PIECE * 18 + 1000,
            piece_length: PIECE,
            pieces,
        },
        announce: None,
        created_by: None,
    }
}

/// Opens a store over a zero `.part` with `resume` as its resume file.
fn open_with_resume(dir: &Path, meta: &Metainfo, resume: &[u8]) -> Bitfield {
    let _ = fs::remove_file(dir.join("shard-0.gguf"));
    File::create(dir.join("shard-0.gguf.part"))
        .and_then(|f| f.set_len(meta.info.length))
        .expect("part");
    fs::write(dir.join("shard-0.gguf.resume"), resume).expect("resume");
    let store = PieceStore::open(dir, meta, false).expect("a bad resume file is ignored");
    let have = store.have().clone();
    assert!(have.iter_ones().all(|p| p < 19));
    have
}

fn with_trailer(seed: &[u8]) -> Vec<u8> {
    let (&flag, body) = seed.split_first().expect("flag byte");
    let mut out = body.to_vec();
    if flag & 1 == 1 {
        let sum: [u8; 20] = Sha1::digest(&out).into();
        out.extend_from_slice(&sum);
    }
    out
}

#[test]
fn resume_seeds_truncated_anywhere_are_ignored_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let meta = resume_fixture();
    let seeds = seeds("resume");
    // The seed with a valid trailer is accepted: synced 0 and 2 trusted; unsynced 4, 5, 6, 8
    // and 18 re-hashed, and 5 (a wrong hash) dropped.
    let good = with_trailer(&seeds[0]);
    let have = open_with_resume(dir.path(), &meta, &good);
    assert_eq!(
        have.iter_ones().collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8, 18]
    );
    for cut in 0..good.len() {
        let have = open_with_resume(dir.path(), &meta, &good[..cut]);
        assert_eq!(
            have.count_ones(),
            0,
            "a truncated resume file at {cut} was trusted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_are_clean_errors(bytes in proptest::collection::vec(any::<u8>(), 0..1024), chunk in 1usize..64) {
        check_wire(&bytes, chunk);
        check_metainfo(&bytes);
    }

    #[test]
    fn bit_flips_of_seeds_are_handled(
        target in prop::sample::select(vec!["piece_wire", "metainfo"]),
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let all = seeds(target);
        let mut bytes = all[pick.index(all.len())].clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        if target == "piece_wire" {
            check_wire(&bytes[1..], usize::from(bytes[0]) + 1);
        } else {
            check_metainfo(&bytes);
        }
    }

    #[test]
    fn flipped_resume_files_never_fail_the_open(
        pick in any::<prop::sample::Index>(),
        fix_trailer in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = seeds("resume");
        let mut seed = all[pick.index(all.len())].clone();
        for (at, bit) in flips {
            let i = 1 + at.index(seed.len() - 1);
            seed[i] ^= 1 << bit;
        }
        seed[0] = u8::from(fix_trailer);
        open_with_resume(dir.path(), &resume_fixture(), &with_trailer(&seed));
    }

    #[test]
    fn bitfields_of_any_claimed_length_are_checked(bytes in proptest::collection::vec(any::<u8>(), 0..64), len in any::<u32>()) {
        match Bitfield::from_bytes(&bytes, len) {
            Ok(b) => {
                prop_assert_eq!(b.as_bytes(), &bytes[..]);
                prop_assert!(b.iter_ones().all(|i| i < len));
            }
            Err(_) => prop_assert!(bytes.len() != (len as usize).div_ceil(8) || bytes.last().is_some_and(|l| *l != 0)),
        }
    }
}
