//! Property tests for the piece-protocol codec: round trip, `encoded_len` is exact, arbitrary
//! bytes never panic, and a huge length prefix fails without allocating.

use bytes::Bytes;
use proptest::prelude::*;
use shardswarm_proto::InfoHash;
use shardswarm_torrent::wire::{self, Frame, FrameDecoder, MAX_FRAME_LEN, WireError};

fn arb_hash() -> impl Strategy<Value = InfoHash> {
    any::<[u8; 20]>().prop_map(InfoHash)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        any::<u16>().prop_map(|version| Frame::Hello { version }),
        arb_hash().prop_map(|info_hash| Frame::Interested { info_hash }),
        (arb_hash(), bytes()).prop_map(|(info_hash, bits)| Frame::Bitfield { info_hash, bits }),
        (arb_hash(), any::<u32>()).prop_map(|(info_hash, piece)| Frame::Have { info_hash, piece }),
        arb_hash().prop_map(|info_hash| Frame::NotHere { info_hash }),
        (
            any::<u64>(),
            arb_hash(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(id, info_hash, piece, offset, length)| Frame::Request {
                id,
                info_hash,
                piece,
                offset,
                length
            }),
        (any::<u64>(), bytes()).prop_map(|(id, d)| Frame::Piece {
            id,
            data: Bytes::from(d)
        }),
        (any::<u64>(), any::<u8>()).prop_map(|(id, reason)| Frame::Reject { id, reason }),
        any::<u64>().prop_map(|id| Frame::Cancel { id }),
        arb_hash().prop_map(|info_hash| Frame::GetMetadata { info_hash }),
        (arb_hash(), bytes()).prop_map(|(info_hash, info)| Frame::Metadata { info_hash, info }),
    ]
}

proptest! {
    #[test]
    fn frames_round_trip_and_encoded_len_is_exact(frames in proptest::collection::vec(arb_frame(), 1..8), cut in 1usize..64) {
        let mut stream = Vec::new();
        for f in &frames {
            let before = stream.len();
            f.encode(&mut stream);
            prop_assert_eq!(stream.len() - before, f.encoded_len());
        }
        // Whole-buffer decode.
        let mut at = 0;
        for f in &frames {
            let (got, used) = wire::decode(&stream[at..]).unwrap().unwrap();
            prop_assert_eq!(&got, f);
            prop_assert_eq!(used, f.encoded_len());
            at += used;
        }
        // Incremental decode in chunks of `cut` bytes.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(cut) {
            dec.push(chunk);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(dec.finish().is_ok());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = wire::decode(&bytes);
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        for _ in 0..bytes.len() + 1 {
            match dec.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(dec.buffered() <= bytes.len());
    }

    #[test]
    fn oversized_length_prefix_fails_before_allocating(len in (MAX_FRAME_LEN as u32 + 1)..=u32::MAX, ty in any::<u8>()) {
        let mut head = len.to_be_bytes().to_vec();
        head.push(ty);
        let mut dec = FrameDecoder::new();
        dec.push(&head);
        let err = dec.next_frame().unwrap_err();
        prop_assert_eq!(err, WireError::TooLong { len: u64::from(len), max: MAX_FRAME_LEN });
        let too_long = matches!(wire::decode(&head), Err(WireError::TooLong { .. }));
        prop_assert!(too_long);
    }
}

#[test]
fn a_max_length_piece_is_accepted_and_one_more_byte_is_not() {
    let block = vec![7u8; wire::MAX_BLOCK_LEN as usize];
    let f = Frame::Piece {
        id: 1,
        data: Bytes::from(block),
    };
    let bytes = f.to_vec();
    assert_eq!(wire::decode(&bytes).unwrap().unwrap().0, f);
    let mut head = (MAX_FRAME_LEN as u32 + 1).to_be_bytes().to_vec();
    head.push(6);
    assert!(matches!(
        wire::decode(&head),
        Err(WireError::TooLong { .. })
    ));
}
