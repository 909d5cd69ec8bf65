//! Property tests of the BitTorrent wire codecs: round trips, claimed length = actual, arbitrary
//! bytes never panic and never make the decoder buffer past its cap; and the fetch session
//! reassembles any engine block from 16 KiB parts answered in any order.

use bytes::Bytes;
use proptest::prelude::*;
use shardswarm_btwire::bencode::Value;
use shardswarm_btwire::extension::{ExtendedHandshake, MetadataMsg};
use shardswarm_btwire::message::{BlockRequest, DEFAULT_MAX_LEN, Limits};
use shardswarm_btwire::{Fetch, FetchOutput, Handshake, MAX_BLOCK, Message, MessageDecoder};
use shardswarm_torrent::metainfo::{Info, Metainfo};
use shardswarm_torrent::wire::Frame;

fn block() -> impl Strategy<Value = BlockRequest> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(piece, offset, length)| BlockRequest {
        piece,
        offset,
        length,
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        Just(Message::KeepAlive),
        Just(Message::Choke),
        Just(Message::Unchoke),
        Just(Message::Interested),
        Just(Message::NotInterested),
        any::<u32>().prop_map(|piece| Message::Have { piece }),
        bytes(64).prop_map(Message::Bitfield),
        block().prop_map(Message::Request),
        block().prop_map(Message::Cancel),
        (any::<u32>(), any::<u32>(), bytes(MAX_BLOCK as usize)).prop_map(
            |(piece, offset, data)| Message::Piece {
                piece,
                offset,
                data
            }
        ),
        any::<u16>().prop_map(Message::Port),
        (any::<u8>(), bytes(256)).prop_map(|(id, payload)| Message::Extended { id, payload }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..8),
                inner,
                0..6
            )
            .prop_map(Value::Dict),
        ]
    })
}

proptest! {
    #[test]
    fn messages_round_trip_whatever_the_chunking(
        msgs in proptest::collection::vec(message(), 1..8),
        chunk in 1usize..200,
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            let before = wire.len();
            m.encode(&mut wire);
            prop_assert_eq!(wire.len() - before, m.encoded_len());
        }
        let mut d = MessageDecoder::new(Limits::default());
        let mut got = Vec::new();
        for c in wire.chunks(chunk) {
            d.push(c);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overbuffer(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        pieces in proptest::option::of(1u32..100_000),
    ) {
        let limits = match pieces {
            Some(n) => Limits::for_pieces(n),
            None => Limits::default(),
        };
        let mut d = MessageDecoder::new(limits);
        d.push(&data);
        while let Ok(Some(_)) = d.next_message() {}
        prop_assert!(d.buffered() <= data.len());
        let _ = Handshake::decode(&data);
        let _ = Value::decode(&data);
        let _ = ExtendedHandshake::decode(&data);
        let _ = MetadataMsg::decode(Bytes::from(data));
    }

    #[test]
    fn a_length_over_the_cap_is_refused_from_the_prefix(len in DEFAULT_MAX_LEN + 1..=u32::MAX) {
        let mut d = MessageDecoder::new(Limits::default());
        d.push(&len.to_be_bytes());
        prop_assert!(d.next_message().is_err());
    }

    #[test]
    fn bencode_round_trips(v in value()) {
        let bytes = v.to_vec();
        prop_assert_eq!(Value::decode(&bytes).unwrap(), v);
    }

    #[test]
    fn metadata_messages_round_trip(piece in any::<u32>(), total in 0u64..i64::MAX as u64, data in bytes(16 * 1024)) {
        for m in [
            MetadataMsg::Request { piece },
            MetadataMsg::Reject { piece },
            MetadataMsg::Data { piece, total_size: total, data: data.clone() },
        ] {
            prop_assert_eq!(MetadataMsg::decode(Bytes::from(m.encode())).unwrap(), m);
        }
    }

    #[test]
    fn fetch_reassembles_blocks_answered_in_any_order(
        len in 1u32..=256 * 1024,
        order in proptest::collection::vec(any::<u16>(), 16),
    ) {
        let meta = Metainfo {
            info: Info {
                name: "f".into(),
                length: 256 * 1024,
                piece_length: 256 * 1024,
                pieces: vec![[0; 20]],
            },
            announce: None,
            created_by: None,
        };
        let ih = meta.info_hash();
        let mut f = Fetch::new(&meta);
        f.on_frame(Frame::Interested { info_hash: ih });
        f.connected(&Handshake::new(ih, [1; 20]), "t").unwrap();
        f.on_message(Message::Bitfield(Bytes::from_static(&[0x80]))).unwrap();
        f.on_message(Message::Unchoke).unwrap();
        while f.poll_output().is_some() {}
        let source: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        f.on_frame(Frame::Request { id: 1, info_hash: ih, piece: 0, offset: 0, length: len });
        let mut asked: Vec<BlockRequest> = std::iter::from_fn(|| f.poll_output())
            .filter_map(|o| match o {
                FetchOutput::Peer(Message::Request(r)) => Some(r),
                _ => None,
            })
            .collect();
        prop_assert_eq!(asked.len(), len.div_ceil(MAX_BLOCK) as usize);
        // Shuffle by the random keys.
        let mut keyed: Vec<(u16, BlockRequest)> = asked.drain(..).zip(order.iter().cycle()).map(|(r, k)| (*k, r)).collect();
        keyed.sort_by_key(|(k, r)| (*k, r.offset));
        let mut up = Vec::new();
        for (_, r) in keyed {
            let s = r.offset as usize;
            f.on_message(Message::Piece {
                piece: 0,
                offset: r.offset,
                data: Bytes::copy_from_slice(&source[s..s + r.length as usize]),
            }).unwrap();
            up.extend(std::iter::from_fn(|| f.poll_output()));
        }
        prop_assert_eq!(up, vec![FetchOutput::Engine(Frame::Piece { id: 1, data: Bytes::from(source) })]);
    }
}
