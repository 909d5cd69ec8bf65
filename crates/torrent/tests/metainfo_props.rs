//! Property tests for metainfo: arbitrary bytes never panic the decoders, and everything we
//! encode decodes to the same torrent with the same info-hash.

use proptest::prelude::*;
use shardswarm_torrent::metainfo::{Info, Metainfo};

fn arb_metainfo() -> impl Strategy<Value = Metainfo> {
    (
        "[a-zA-Z0-9 ._+-]{1,40}",
        1u64..(1 << 40),
        14u32..=26,
        proptest::option::of("[a-z:/.]{1,30}"),
        proptest::option::of("[a-z/0-9.]{1,20}"),
        any::<[u8; 20]>(),
    )
        .prop_filter("name must be one harmless path component", |(name, ..)| {
            shardswarm_torrent::metainfo::validate_name(name).is_ok()
        })
        .prop_map(|(name, length, shift, announce, created_by, seed)| {
            let piece_length = 1u64 << shift;
            let count = length.div_ceil(piece_length).min(2000);
            let length = length.min(count * piece_length);
            let pieces = (0..count)
                .map(|i| {
                    let mut h = seed;
                    h[0] ^= i as u8;
                    h[1] ^= (i >> 8) as u8;
                    h
                })
                .collect();
            Metainfo {
                info: Info {
                    name,
                    length,
                    piece_length,
                    pieces,
                },
                announce,
                created_by,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Metainfo::from_info_bytes(&bytes, None);
        let _ = Metainfo::from_torrent_bytes(&bytes);
    }

    #[test]
    fn bencode_shaped_garbage_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(b"d".to_vec()), Just(b"l".to_vec()), Just(b"e".to_vec()),
                Just(b"4:info".to_vec()), Just(b"6:length".to_vec()), Just(b"4:name".to_vec()),
                Just(b"12:piece length".to_vec()), Just(b"6:pieces".to_vec()),
                Just(b"i16384e".to_vec()), Just(b"i-1e".to_vec()), Just(b"20:".to_vec()),
                Just(b"99999999999999999999:".to_vec()), Just(b"1:a".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..24),
            ],
            0..40,
        )
    ) {
        let bytes = parts.concat();
        let _ = Metainfo::from_info_bytes(&bytes, None);
        let _ = Metainfo::from_torrent_bytes(&bytes);
    }

    #[test]
    fn encode_decode_round_trips(meta in arb_metainfo()) {
        let info = meta.info_bytes();
        let back = Metainfo::from_info_bytes(&info, Some(meta.info_hash())).unwrap();
        prop_assert_eq!(&back.info, &meta.info);
        prop_assert_eq!(back.info_bytes(), info);
        let torrent = Metainfo::from_torrent_bytes(&meta.to_torrent_bytes()).unwrap();
        prop_assert_eq!(torrent.info_hash(), meta.info_hash());
        prop_assert_eq!(&torrent, &meta);
    }

    #[test]
    fn mutated_torrents_never_panic(meta in arb_metainfo(), at in any::<usize>(), byte in any::<u8>()) {
        let mut bytes = meta.to_torrent_bytes();
        let i = at % bytes.len();
        bytes[i] = byte;
        let _ = Metainfo::from_torrent_bytes(&bytes);
        bytes.truncate(i);
        let _ = Metainfo::from_torrent_bytes(&bytes);
    }
}
