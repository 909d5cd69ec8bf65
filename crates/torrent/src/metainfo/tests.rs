//! Unit tests for metainfo: the exact info-dict bytes, hashing a file, and every refusal.

use std::io::Write;

use super::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// An info dictionary written by hand, in BEP 3 key order.
fn info_dict(length: u64, name: &[u8], piece_length: u64, pieces: &[u8]) -> Vec<u8> {
    let mut v = format!("d6:lengthi{length}e4:name{}:", name.len()).into_bytes();
    v.extend_from_slice(name);
    v.extend_from_slice(
        format!("12:piece lengthi{piece_length}e6:pieces{}:", pieces.len()).as_bytes(),
    );
    v.extend_from_slice(pieces);
    v.push(b'e');
    v
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn piece_length_rule_grows_in_powers_of_two_between_256k_and_4m() {
    assert_eq!(piece_length_for(0), 256 * KIB);
    assert_eq!(piece_length_for(1), 256 * KIB);
    assert_eq!(piece_length_for(98_362_432), 256 * KIB);
    assert_eq!(piece_length_for(256 * MIB), 256 * KIB);
    assert_eq!(piece_length_for(256 * MIB + 1), 512 * KIB);
    assert_eq!(piece_length_for(1024 * MIB), MIB);
    assert_eq!(piece_length_for(4096 * MIB), 4 * MIB);
    assert_eq!(piece_length_for(4096 * MIB + 1), 4 * MIB);
    assert_eq!(piece_length_for(u64::MAX), 4 * MIB);
    for size in [0, 1, 300 * MIB, 3000 * MIB, u64::MAX / 2] {
        let p = piece_length_for(size);
        assert!(p.is_power_of_two() && (256 * KIB..=4 * MIB).contains(&p));
    }
}

#[test]
fn info_bytes_are_exactly_the_bep3_dictionary() {
    let hash = sha1_of(b"hello");
    let meta = Metainfo {
        info: Info {
            name: "a.bin".into(),
            length: 5,
            piece_length: 16 * KIB,
            pieces: vec![hash],
        },
        announce: None,
        created_by: None,
    };
    let expected = info_dict(5, b"a.bin", 16 * KIB, &hash);
    assert_eq!(meta.info_bytes(), expected);
    assert_eq!(meta.info_hash(), InfoHash(sha1_of(&expected)));
    let mut torrent = b"d4:info".to_vec();
    torrent.extend_from_slice(&expected);
    torrent.push(b'e');
    assert_eq!(meta.to_torrent_bytes(), torrent);
}

#[test]
fn from_file_hashes_each_piece_and_the_short_last_one() {
    let data = pattern(2 * 16 * 1024 + 100);
    let f = write_temp(&data);
    let meta = Metainfo::from_file(f.path(), "shard-0.gguf", Some(16 * KIB)).unwrap();
    assert_eq!(meta.info.length, data.len() as u64);
    assert_eq!(meta.piece_count(), 3);
    for (i, chunk) in data.chunks(16 * 1024).enumerate() {
        let i = i as u32;
        assert_eq!(meta.piece_hash(i), Some(sha1_of(chunk)));
        assert_eq!(meta.piece_size(i), chunk.len() as u64);
        assert_eq!(meta.piece_offset(i), u64::from(i) * 16 * KIB);
    }
    assert_eq!(meta.piece_size(3), 0);
    assert_eq!(meta.piece_hash(3), None);
    assert_eq!(meta.piece_size(u32::MAX), 0);
}

#[test]
fn from_file_defaults_the_piece_length_and_is_deterministic() {
    let f = write_temp(&pattern(300_000));
    let a = Metainfo::from_file(f.path(), "x.gguf", None).unwrap();
    let b = Metainfo::from_file(f.path(), "x.gguf", None).unwrap();
    assert_eq!(a.info.piece_length, 256 * KIB);
    assert_eq!(a.piece_count(), 2);
    assert_eq!(a.to_torrent_bytes(), b.to_torrent_bytes());
    // A different name is a different torrent.
    let c = Metainfo::from_file(f.path(), "y.gguf", None).unwrap();
    assert_ne!(a.info_hash(), c.info_hash());
}

#[test]
fn from_file_refuses_empty_files_bad_names_and_bad_piece_lengths() {
    let empty = write_temp(b"");
    assert!(matches!(
        Metainfo::from_file(empty.path(), "e", None),
        Err(MetainfoError::EmptyFile { .. })
    ));
    let f = write_temp(b"abc");
    assert!(matches!(
        Metainfo::from_file(f.path(), "../evil", None),
        Err(MetainfoError::InvalidName { .. })
    ));
    for bad in [0, 1000, 8 * KIB, 3 * 16 * KIB, 128 * MIB] {
        assert!(matches!(
            Metainfo::from_file(f.path(), "ok", Some(bad)),
            Err(MetainfoError::InvalidPieceLength { .. })
        ));
    }
    assert!(matches!(
        Metainfo::from_file(Path::new("/nonexistent/shardswarm"), "ok", None),
        Err(MetainfoError::Io { .. })
    ));
}

#[test]
fn info_and_torrent_bytes_round_trip() {
    let f = write_temp(&pattern(70_000));
    let mut meta = Metainfo::from_file(f.path(), "shard-3.gguf", Some(16 * KIB)).unwrap();
    let info = meta.info_bytes();
    let back = Metainfo::from_info_bytes(&info, Some(meta.info_hash())).unwrap();
    assert_eq!(back.info, meta.info);
    meta.announce = Some("http://tracker.invalid/announce".into());
    let torrent = Metainfo::from_torrent_bytes(&meta.to_torrent_bytes()).unwrap();
    assert_eq!(torrent, meta);
    assert_eq!(torrent.info_hash(), meta.info_hash());
}

#[test]
fn from_info_bytes_checks_the_expected_hash() {
    let bytes = info_dict(5, b"a", 16 * KIB, &[7; 20]);
    let wrong = InfoHash([0; 20]);
    match Metainfo::from_info_bytes(&bytes, Some(wrong)) {
        Err(MetainfoError::HashMismatch { expected, got }) => {
            assert_eq!(expected, wrong);
            assert_eq!(got, InfoHash(sha1_of(&bytes)));
        }
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
}

#[test]
fn hostile_names_are_refused() {
    for name in [
        &b""[..],
        b"..",
        b".",
        b"a/b",
        b"/etc/passwd",
        b"..\\x",
        b"a\0b",
        b"a\nb",
    ] {
        let bytes = info_dict(5, name, 16 * KIB, &[7; 20]);
        assert!(
            matches!(
                Metainfo::from_info_bytes(&bytes, None),
                Err(MetainfoError::InvalidName { .. })
            ),
            "{name:?}"
        );
    }
    let long = vec![b'a'; 256];
    assert!(Metainfo::from_info_bytes(&info_dict(5, &long, 16 * KIB, &[7; 20]), None).is_err());
    // Non-UTF-8 names cannot become a String: malformed, not a panic.
    assert!(
        Metainfo::from_info_bytes(&info_dict(5, b"\xff\xfe", 16 * KIB, &[7; 20]), None).is_err()
    );
    // Harmless names with dots and spaces are fine.
    for name in ["a..b", "shard 0.gguf", ".hidden", "é.gguf"] {
        Metainfo::from_info_bytes(&info_dict(5, name.as_bytes(), 16 * KIB, &[7; 20]), None)
            .unwrap();
    }
}

#[test]
fn inconsistent_pieces_are_refused() {
    let check = |bytes: Vec<u8>, what: &str| {
        let e = Metainfo::from_info_bytes(&bytes, None).unwrap_err();
        let ok = match what {
            "multiple" => matches!(e, MetainfoError::PiecesNotMultipleOf20 { len: 19 }),
            "count" => matches!(
                e,
                MetainfoError::PieceCountMismatch {
                    expected: 2,
                    got: 1,
                    ..
                }
            ),
            "zero" => matches!(e, MetainfoError::ZeroLength),
            "piece length" => matches!(e, MetainfoError::InvalidPieceLength { .. }),
            _ => false,
        };
        assert!(ok, "{what}: {e}");
    };
    check(info_dict(5, b"a", 16 * KIB, &[7; 19]), "multiple");
    check(info_dict(16 * 1024 + 1, b"a", 16 * KIB, &[7; 20]), "count");
    check(info_dict(0, b"a", 16 * KIB, b""), "zero");
    check(info_dict(5, b"a", 0, &[7; 20]), "piece length");
    check(info_dict(5, b"a", 20_000, &[7; 20]), "piece length");
}

#[test]
fn non_canonical_or_multi_file_info_is_refused() {
    let pieces = [7u8; 20];
    // An extra `private` key: keeping only four keys would change the hash.
    let mut private = info_dict(5, b"a", 16 * KIB, &pieces);
    private.pop();
    private.extend_from_slice(b"7:privatei1ee");
    assert!(matches!(
        Metainfo::from_info_bytes(&private, None),
        Err(MetainfoError::NonCanonicalInfo)
    ));
    // Unsorted keys.
    let mut unsorted = format!(
        "d4:name1:a6:lengthi5e12:piece lengthi{}e6:pieces20:",
        16 * KIB
    )
    .into_bytes();
    unsorted.extend_from_slice(&pieces);
    unsorted.push(b'e');
    assert!(matches!(
        Metainfo::from_info_bytes(&unsorted, None),
        Err(MetainfoError::NonCanonicalInfo)
    ));
    // Non-canonical integer.
    let padded = String::from_utf8(info_dict(5, b"a", 16 * KIB, &pieces))
        .unwrap()
        .replace("i5e", "i05e");
    assert!(matches!(
        Metainfo::from_info_bytes(padded.as_bytes(), None),
        Err(MetainfoError::NonCanonicalInfo)
    ));
    // Multi-file: no `length`.
    let multi = b"d5:filesld6:lengthi5e4:pathl1:aeee4:name1:d12:piece lengthi16384e6:pieces0:e";
    assert!(Metainfo::from_info_bytes(multi, None).is_err());
}

#[test]
fn garbage_and_oversized_input_is_refused() {
    for bad in [
        &b""[..],
        b"de",
        b"le",
        b"i1e",
        b"d4:infoi1ee",
        b"d4:info",
        b"x",
    ] {
        assert!(Metainfo::from_info_bytes(bad, None).is_err());
        assert!(Metainfo::from_torrent_bytes(bad).is_err());
    }
    assert!(matches!(
        Metainfo::from_torrent_bytes(b"d1:ai1ee"),
        Err(MetainfoError::MissingInfo)
    ));
    let big = vec![b'd'; MAX_INFO_BYTES + 1];
    assert!(matches!(
        Metainfo::from_info_bytes(&big, None),
        Err(MetainfoError::TooLarge { .. })
    ));
    let big = vec![b'd'; MAX_TORRENT_BYTES + 1];
    assert!(matches!(
        Metainfo::from_torrent_bytes(&big),
        Err(MetainfoError::TooLarge { .. })
    ));
    // Deep nesting is refused before the recursive decoder sees it.
    let mut deep = b"d4:info".to_vec();
    deep.extend(vec![b'l'; 10_000]);
    deep.extend(vec![b'e'; 10_001]);
    assert!(matches!(
        Metainfo::from_torrent_bytes(&deep),
        Err(MetainfoError::Malformed { .. })
    ));
}

#[test]
fn magnet_link_percent_encodes_the_name() {
    let meta = Metainfo {
        info: Info {
            name: "shard 0+é.gguf".into(),
            length: 5,
            piece_length: 16 * KIB,
            pieces: vec![[7; 20]],
        },
        announce: None,
        created_by: None,
    };
    assert_eq!(
        meta.magnet_link(),
        format!(
            "magnet:?xt=urn:btih:{}&dn=shard%200%2B%C3%A9.gguf&xl=5",
            meta.info_hash()
        )
    );
}
