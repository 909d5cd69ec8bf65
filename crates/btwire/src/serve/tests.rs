use shardswarm_torrent::metainfo::{Info, Metainfo};

use super::*;

/// 3 pieces of 32 KiB, the last one 10 bytes.
pub(crate) fn meta() -> Metainfo {
    Metainfo {
        info: Info {
            name: "shard-0.gguf".into(),
            length: 2 * 32 * 1024 + 10,
            piece_length: 32 * 1024,
            pieces: vec![[1; 20], [2; 20], [3; 20]],
        },
        announce: None,
        created_by: None,
    }
}

fn client(ext: bool) -> Handshake {
    let mut h = Handshake::new(meta().info_hash(), [9; 20]);
    if !ext {
        h.reserved = [0; 8];
    }
    h
}

fn drain(s: &mut Serve) -> Vec<ServeOutput> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn req(piece: u32, offset: u32, length: u32) -> Message {
    Message::Request(BlockRequest {
        piece,
        offset,
        length,
    })
}

fn unchoked(have: &[u32]) -> Serve {
    let m = meta();
    let mut bits = Bitfield::new(m.piece_count());
    for &p in have {
        bits.set(p);
    }
    let mut s = Serve::new(&m, bits, &client(true), "test");
    s.on_message(Message::Interested).unwrap();
    assert!(s.wants_slot());
    s.unchoke();
    drain(&mut s);
    s
}

#[test]
fn greets_with_extended_handshake_then_bitfield() {
    let m = meta();
    let mut s = Serve::new(&m, Bitfield::full(3), &client(true), "shardswarm/test");
    let out = drain(&mut s);
    assert_eq!(out.len(), 2);
    let ServeOutput::Peer(Message::Extended { id: 0, payload }) = &out[0] else {
        panic!("{out:?}")
    };
    let hs = ExtendedHandshake::decode(payload).unwrap();
    assert_eq!(hs.ut_metadata(), Some(OUR_UT_METADATA_ID));
    assert_eq!(hs.metadata_size, Some(m.info_bytes().len() as u64));
    assert_eq!(hs.reqq, Some(REQQ));
    assert_eq!(
        out[1],
        ServeOutput::Peer(Message::Bitfield(Bytes::from_static(&[0xe0])))
    );
    // A client without BEP 10 gets the bitfield only.
    let mut s = Serve::new(&m, Bitfield::new(3), &client(false), "x");
    assert_eq!(
        drain(&mut s),
        vec![ServeOutput::Peer(Message::Bitfield(Bytes::from_static(&[
            0
        ])))]
    );
}

#[test]
fn requests_round_trip_through_the_engine() {
    let mut s = unchoked(&[0, 2]);
    s.on_message(req(2, 0, 10)).unwrap();
    let out = drain(&mut s);
    let [
        ServeOutput::Engine(Frame::Request {
            id,
            piece: 2,
            offset: 0,
            length: 10,
            ..
        }),
    ] = out.as_slice()
    else {
        panic!("{out:?}")
    };
    s.on_frame(Frame::Piece {
        id: *id,
        data: Bytes::from(vec![5u8; 10]),
    })
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![ServeOutput::Peer(Message::Piece {
            piece: 2,
            offset: 0,
            data: Bytes::from(vec![5u8; 10])
        })]
    );
    assert_eq!(s.outstanding(), 0);
    // A second answer to the same id goes nowhere.
    s.on_frame(Frame::Piece {
        id: *id,
        data: Bytes::from(vec![5u8; 10]),
    })
    .unwrap();
    assert!(drain(&mut s).is_empty());
}

#[test]
fn choked_missing_and_duplicate_requests_are_dropped_bad_ones_close() {
    let m = meta();
    let mut s = Serve::new(&m, Bitfield::full(3), &client(true), "x");
    drain(&mut s);
    s.on_message(req(0, 0, 16384)).unwrap();
    assert!(drain(&mut s).is_empty(), "choked: dropped");
    let mut s = unchoked(&[0]);
    s.on_message(req(1, 0, 16384)).unwrap();
    assert!(drain(&mut s).is_empty(), "piece we lack: dropped");
    s.on_message(req(0, 0, 16384)).unwrap();
    s.on_message(req(0, 0, 16384)).unwrap();
    assert_eq!(drain(&mut s).len(), 1, "duplicate dropped");
    for bad in [
        req(0, 0, MAX_BLOCK + 1),
        req(0, 0, 0),
        req(0, 32 * 1024 - 1, 2),
        req(2, 0, 11),
        req(3, 0, 1),
    ] {
        assert!(matches!(
            unchoked(&[0, 1, 2]).on_message(bad),
            Err(ServeError::BadRequest(_))
        ));
    }
}

#[test]
fn outstanding_requests_are_capped_at_reqq() {
    let m = Metainfo {
        info: Info {
            name: "big".into(),
            length: 64 * 1024 * 1024,
            piece_length: 64 * 1024 * 1024,
            pieces: vec![[0; 20]],
        },
        announce: None,
        created_by: None,
    };
    let mut h = Handshake::new(m.info_hash(), [1; 20]);
    h.reserved = [0; 8];
    let mut s = Serve::new(&m, Bitfield::full(1), &h, "x");
    s.on_message(Message::Interested).unwrap();
    s.unchoke();
    for i in 0..REQQ + 50 {
        s.on_message(req(0, i * MAX_BLOCK, MAX_BLOCK)).unwrap();
    }
    assert_eq!(s.outstanding(), REQQ as usize);
}

#[test]
fn not_interested_chokes_and_cancels_at_the_engine() {
    let mut s = unchoked(&[0, 1]);
    s.on_message(req(0, 0, 16384)).unwrap();
    s.on_message(req(1, 0, 16384)).unwrap();
    drain(&mut s);
    s.on_message(Message::NotInterested).unwrap();
    assert!(!s.holds_slot() && !s.wants_slot());
    assert_eq!(
        drain(&mut s),
        vec![
            ServeOutput::Peer(Message::Choke),
            ServeOutput::Engine(Frame::Cancel { id: 1 }),
            ServeOutput::Engine(Frame::Cancel { id: 2 }),
        ]
    );
    // Data the actor had already queued is not sent after the choke.
    s.on_frame(Frame::Piece {
        id: 1,
        data: Bytes::from(vec![0u8; 16384]),
    })
    .unwrap();
    assert!(drain(&mut s).is_empty());
}

#[test]
fn client_cancel_reaches_the_engine_and_haves_reach_the_client() {
    let mut s = unchoked(&[0]);
    s.on_message(req(0, 16384, 16384)).unwrap();
    drain(&mut s);
    s.on_message(Message::Cancel(BlockRequest {
        piece: 0,
        offset: 16384,
        length: 16384,
    }))
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![ServeOutput::Engine(Frame::Cancel { id: 1 })]
    );
    let ih = s.info_hash();
    s.on_frame(Frame::Have {
        info_hash: ih,
        piece: 1,
    })
    .unwrap();
    assert_eq!(
        drain(&mut s),
        vec![ServeOutput::Peer(Message::Have { piece: 1 })]
    );
    s.on_message(req(1, 0, 16384)).unwrap();
    assert_eq!(drain(&mut s).len(), 1, "piece 1 now servable");
    assert_eq!(
        s.on_frame(Frame::NotHere { info_hash: ih }),
        Err(ServeError::Gone)
    );
}

#[test]
fn metadata_is_served_in_pieces_to_a_magnet_client() {
    let m = meta();
    let info = m.info_bytes();
    let mut s = Serve::new(&m, Bitfield::new(3), &client(true), "x");
    drain(&mut s);
    // Before the client's extended handshake we do not know its id: nothing is sent.
    let ask = |piece| Message::Extended {
        id: OUR_UT_METADATA_ID,
        payload: MetadataMsg::Request { piece }.encode().into(),
    };
    s.on_message(ask(0)).unwrap();
    assert!(drain(&mut s).is_empty());
    let mut theirs = ExtendedHandshake::default();
    theirs.m.insert(UT_METADATA.into(), 7);
    s.on_message(Message::Extended {
        id: 0,
        payload: theirs.encode().into(),
    })
    .unwrap();
    s.on_message(ask(0)).unwrap();
    s.on_message(ask(1)).unwrap();
    let out = drain(&mut s);
    let decoded: Vec<MetadataMsg> = out
        .into_iter()
        .map(|o| match o {
            ServeOutput::Peer(Message::Extended { id: 7, payload }) => {
                MetadataMsg::decode(payload).unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        decoded,
        vec![
            MetadataMsg::Data {
                piece: 0,
                total_size: info.len() as u64,
                data: Bytes::from(info)
            },
            MetadataMsg::Reject { piece: 1 },
        ]
    );
    assert!(matches!(
        s.on_message(Message::Extended {
            id: OUR_UT_METADATA_ID,
            payload: Bytes::from_static(b"garbage")
        }),
        Err(ServeError::BadExtension(_))
    ));
}
