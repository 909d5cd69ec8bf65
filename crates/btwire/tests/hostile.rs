//! Hostile input into the standard BitTorrent wire (issue #9), the proptest twin of the
//! `bt_wire` fuzz target: every truncation and bit flips of the committed seed corpus
//! (`fuzz/corpus/bt_wire`), and hand-made huge lengths. Each must end in a clean error or a
//! value that re-encodes, never a panic, and the decoder never buffers past its cap.

use bytes::Bytes;
use proptest::prelude::*;
use shardswarm_btwire::bencode::Value;
use shardswarm_btwire::extension::{ExtendedHandshake, MetadataMsg};
use shardswarm_btwire::{Handshake, Limits, MessageDecoder, MessageError};

#[path = "../../../fuzz/support/seeds.rs"]
mod corpus;
use corpus::seeds;

/// Every decoder over `data`, as the fuzz target runs them.
fn check(data: &[u8]) {
    let _ = Handshake::decode(data);
    if let Ok(v) = Value::decode(data) {
        assert_eq!(Value::decode(&v.to_vec()).expect("re-decodes"), v);
    }
    let _ = ExtendedHandshake::decode(data);
    let _ = MetadataMsg::decode(Bytes::copy_from_slice(data));
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let (limits, stream) = match (flag & 1, rest) {
        (1, [a, b, c, d, stream @ ..]) => (
            Limits::for_pieces(u32::from_be_bytes([*a, *b, *c, *d]) % 838_861),
            stream,
        ),
        _ => (Limits::default(), rest),
    };
    let mut dec = MessageDecoder::new(limits);
    let chunk = usize::from(flag >> 1) + 1;
    'feed: for part in stream.chunks(chunk) {
        dec.push(part);
        loop {
            match dec.next_message() {
                Ok(Some(m)) => {
                    let _ = m.to_vec();
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
        assert!(dec.buffered() <= limits.max_len as usize + 4 + chunk);
    }
}

#[test]
fn every_truncation_of_every_seed_is_handled() {
    let seeds = seeds("bt_wire");
    assert!(seeds.len() >= 4);
    for seed in &seeds {
        for cut in 0..=seed.len() {
            check(&seed[..cut]);
        }
    }
}

#[test]
fn huge_length_prefixes_and_bencode_lengths_are_clean_errors() {
    for len in [u32::MAX, 1 << 31, Limits::default().max_len + 1] {
        let mut dec = MessageDecoder::new(Limits::default());
        dec.push(&len.to_be_bytes());
        dec.push(&[7, 0, 0]);
        assert!(matches!(
            dec.next_message(),
            Err(MessageError::TooLong { .. })
        ));
    }
    for bad in [
        &b"1152921504606846976:x"[..],
        b"99999999999999999999999999:",
        b"i99999999999999999999999999e",
        b"d8:msg_typei1e5:piecei0e10:total_sizei-1ee",
        b"d8:msg_typei1e5:piecei0e10:total_sizei18446744073709551616ee",
    ] {
        assert!(
            Value::decode(bad).is_err() || MetadataMsg::decode(Bytes::from_static(bad)).is_err()
        );
    }
    let deep = [vec![b'l'; 100_000], vec![b'e'; 100_000]].concat();
    assert!(Value::decode(&deep).is_err());
    assert!(ExtendedHandshake::decode(&deep).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bit_flips_of_seeds_are_handled(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..6),
    ) {
        let all = seeds("bt_wire");
        let mut bytes = all[pick.index(all.len())].clone();
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check(&bytes);
    }
}
