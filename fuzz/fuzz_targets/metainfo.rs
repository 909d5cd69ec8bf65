//! Torrent metadata from others: `.torrent` files, info dictionaries received as metadata from
//! peers (checked against an info-hash), and torrent names. Never panics; whatever is accepted
//! describes a valid single-file torrent whose bytes and info-hash round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use shardswarm_proto::InfoHash;
use shardswarm_torrent::metainfo::{self, Metainfo};

fn check(m: &Metainfo) {
    metainfo::validate_name(&m.info.name).expect("accepted name is valid");
    assert!(m.info.length > 0);
    assert!(m.info.piece_length.is_power_of_two());
    assert_eq!(
        m.info.length.div_ceil(m.info.piece_length),
        m.info.pieces.len() as u64
    );
    let last = m.piece_count() - 1;
    assert!(m.piece_size(last) > 0 && m.piece_size(last) <= m.info.piece_length);
    assert_eq!(m.piece_size(m.piece_count()), 0);
    let _ = m.magnet_link();
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::from_torrent_bytes(data) {
        check(&m);
        let again = Metainfo::from_torrent_bytes(&m.to_torrent_bytes()).expect("round trip");
        assert_eq!(again.info_hash(), m.info_hash());
    }
    let hash = InfoHash(Sha1::digest(data).into());
    match Metainfo::from_info_bytes(data, Some(hash)) {
        Ok(m) => {
            check(&m);
            assert_eq!(m.info_bytes(), data, "info bytes are kept exactly");
            assert_eq!(m.info_hash(), hash);
        }
        Err(_) => assert!(Metainfo::from_info_bytes(data, None).is_err()),
    }
    // A wrong expected hash is always refused.
    let mut wrong = hash;
    wrong.0[0] ^= 1;
    assert!(Metainfo::from_info_bytes(data, Some(wrong)).is_err());
    if let Ok(name) = std::str::from_utf8(data)
        && metainfo::validate_name(name).is_ok()
    {
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.contains(['/', '\\', '\0']));
        assert_eq!(std::path::Path::new(name).components().count(), 1);
    }
});
