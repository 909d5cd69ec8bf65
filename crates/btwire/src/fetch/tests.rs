use shardswarm_torrent::metainfo::{Info, Metainfo};

use super::*;

/// 4 pieces of 64 KiB, the last one 1000 bytes.
fn meta() -> Metainfo {
    Metainfo {
        info: Info {
            name: "shard-1.gguf".into(),
            length: 3 * 64 * 1024 + 1000,
            piece_length: 64 * 1024,
            pieces: vec![[1; 20], [2; 20], [3; 20], [4; 20]],
        },
        announce: None,
        created_by: None,
    }
}

fn drain(f: &mut Fetch) -> Vec<FetchOutput> {
    std::iter::from_fn(|| f.poll_output()).collect()
}

fn peers(out: &[FetchOutput]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            FetchOutput::Peer(m) => Some(m.clone()),
            FetchOutput::Engine(_) => None,
        })
        .collect()
}

fn engine(out: &[FetchOutput]) -> Vec<Frame> {
    out.iter()
        .filter_map(|o| match o {
            FetchOutput::Engine(f) => Some(f.clone()),
            FetchOutput::Peer(_) => None,
        })
        .collect()
}

/// Connected, interested, the seed's full bitfield and unchoke: published.
fn published() -> (Fetch, InfoHash) {
    let m = meta();
    let ih = m.info_hash();
    let mut f = Fetch::new(&m);
    f.on_frame(Frame::Interested { info_hash: ih });
    assert!(drain(&mut f).is_empty(), "nothing before a connection");
    f.connected(&Handshake::new(ih, [2; 20]), "t").unwrap();
    let out = drain(&mut f);
    assert!(peers(&out).contains(&Message::Interested));
    f.on_message(Message::Bitfield(Bytes::from_static(&[0xf0])))
        .unwrap();
    assert!(drain(&mut f).is_empty(), "choked: not published");
    f.on_message(Message::Unchoke).unwrap();
    assert_eq!(
        engine(&drain(&mut f)),
        vec![Frame::Bitfield {
            info_hash: ih,
            bits: vec![0xf0]
        }]
    );
    assert!(f.is_published());
    (f, ih)
}

fn request(ih: InfoHash, id: u64, piece: u32, offset: u32, length: u32) -> Frame {
    Frame::Request {
        id,
        info_hash: ih,
        piece,
        offset,
        length,
    }
}

#[test]
fn an_engine_block_is_split_into_16k_requests_and_reassembled() {
    let (mut f, ih) = published();
    f.on_frame(request(ih, 7, 1, 0, 64 * 1024));
    let sent = peers(&drain(&mut f));
    assert_eq!(sent.len(), 4);
    // Answer out of order.
    for (i, m) in sent.iter().enumerate().rev() {
        let Message::Request(r) = m else {
            panic!("{m:?}")
        };
        assert_eq!(r.length, MAX_BLOCK);
        f.on_message(Message::Piece {
            piece: r.piece,
            offset: r.offset,
            data: Bytes::from(vec![i as u8; r.length as usize]),
        })
        .unwrap();
    }
    let up = engine(&drain(&mut f));
    let [Frame::Piece { id: 7, data }] = up.as_slice() else {
        panic!("{up:?}")
    };
    assert_eq!(data.len(), 64 * 1024);
    for i in 0..4 {
        assert!(
            data[i * 16384..(i + 1) * 16384]
                .iter()
                .all(|&b| b == i as u8)
        );
    }
    // The short last piece: one short request.
    f.on_frame(request(ih, 8, 3, 0, 1000));
    assert_eq!(
        peers(&drain(&mut f)),
        vec![Message::Request(BlockRequest {
            piece: 3,
            offset: 0,
            length: 1000
        })]
    );
}

#[test]
fn outstanding_requests_follow_the_clients_reqq() {
    let (mut f, ih) = published();
    let mut hs = ExtendedHandshake {
        reqq: Some(3),
        ..Default::default()
    };
    hs.m.insert("ut_metadata".into(), 2);
    f.on_message(Message::Extended {
        id: 0,
        payload: hs.encode().into(),
    })
    .unwrap();
    f.on_frame(request(ih, 1, 0, 0, 64 * 1024));
    f.on_frame(request(ih, 2, 1, 0, 64 * 1024));
    assert_eq!(peers(&drain(&mut f)).len(), 3);
    assert_eq!(f.outstanding(), 3);
    f.on_message(Message::Piece {
        piece: 0,
        offset: 0,
        data: Bytes::from(vec![0u8; 16384]),
    })
    .unwrap();
    assert_eq!(
        peers(&drain(&mut f)),
        vec![Message::Request(BlockRequest {
            piece: 0,
            offset: 3 * 16384,
            length: 16384
        })]
    );
}

#[test]
fn choke_rejects_everything_and_unchoke_republishes() {
    let (mut f, ih) = published();
    f.on_frame(request(ih, 1, 0, 0, 32 * 1024));
    f.on_frame(request(ih, 2, 1, 0, 16 * 1024));
    drain(&mut f);
    f.on_message(Message::Choke).unwrap();
    assert_eq!(
        engine(&drain(&mut f)),
        vec![
            Frame::Reject { id: 1, reason: 1 },
            Frame::Reject { id: 2, reason: 1 },
            Frame::NotHere { info_hash: ih },
        ]
    );
    assert_eq!(f.outstanding(), 0);
    // Late blocks of the choked requests are dropped; requests while choked are refused.
    f.on_message(Message::Piece {
        piece: 0,
        offset: 0,
        data: Bytes::from(vec![0u8; 16384]),
    })
    .unwrap();
    f.on_frame(request(ih, 3, 0, 0, 16384));
    assert_eq!(
        engine(&drain(&mut f)),
        vec![Frame::Reject { id: 3, reason: 1 }]
    );
    f.on_message(Message::Have { piece: 1 }).unwrap();
    assert!(drain(&mut f).is_empty());
    f.on_message(Message::Unchoke).unwrap();
    assert_eq!(
        engine(&drain(&mut f)),
        vec![Frame::Bitfield {
            info_hash: ih,
            bits: vec![0xf0]
        }]
    );
}

#[test]
fn a_dropped_connection_unpublishes_and_a_new_one_resumes() {
    let (mut f, ih) = published();
    f.on_frame(request(ih, 4, 2, 0, 16384));
    drain(&mut f);
    f.disconnected();
    assert_eq!(
        engine(&drain(&mut f)),
        vec![
            Frame::Reject { id: 4, reason: 1 },
            Frame::NotHere { info_hash: ih }
        ]
    );
    f.connected(&Handshake::new(ih, [3; 20]), "t").unwrap();
    let out = drain(&mut f);
    assert!(peers(&out).contains(&Message::Interested), "{out:?}");
    assert!(engine(&out).is_empty());
    assert!(matches!(
        f.connected(&Handshake::new(InfoHash([0; 20]), [3; 20]), "t"),
        Err(FetchError::Handshake(HandshakeError::WrongTorrent))
    ));
}

#[test]
fn cancel_withdraws_sent_and_queued_parts() {
    let (mut f, ih) = published();
    f.on_frame(request(ih, 9, 0, 0, 64 * 1024));
    drain(&mut f);
    f.on_frame(Frame::Cancel { id: 9 });
    let sent = peers(&drain(&mut f));
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|m| matches!(m, Message::Cancel(_))));
    assert_eq!(f.outstanding(), 0);
}

#[test]
fn haves_bad_ranges_missing_pieces_and_other_torrents() {
    let (mut f, ih) = published();
    f.on_message(Message::Have { piece: 3 }).unwrap();
    assert!(drain(&mut f).is_empty(), "already had it");
    let (mut g, _) = {
        let m = meta();
        let ih = m.info_hash();
        let mut g = Fetch::new(&m);
        g.on_frame(Frame::Interested { info_hash: ih });
        g.connected(&Handshake::new(ih, [2; 20]), "t").unwrap();
        g.on_message(Message::Unchoke).unwrap();
        drain(&mut g);
        (g, ih)
    };
    g.on_message(Message::Have { piece: 2 }).unwrap();
    assert_eq!(
        engine(&drain(&mut g)),
        vec![Frame::Have {
            info_hash: ih,
            piece: 2
        }]
    );
    g.on_frame(request(ih, 1, 1, 0, 16384));
    g.on_frame(request(ih, 2, 2, 60 * 1024, 8 * 1024));
    g.on_frame(request(ih, 3, 2, 0, MAX_ASSEMBLY + 1));
    assert_eq!(
        engine(&drain(&mut g)),
        vec![
            Frame::Reject { id: 1, reason: 2 },
            Frame::Reject { id: 2, reason: 3 },
            Frame::Reject { id: 3, reason: 3 },
        ]
    );
    let other = InfoHash([0xab; 20]);
    f.on_frame(Frame::Interested { info_hash: other });
    f.on_frame(Frame::GetMetadata { info_hash: other });
    assert_eq!(
        engine(&drain(&mut f)),
        vec![
            Frame::NotHere { info_hash: other },
            Frame::NotHere { info_hash: other }
        ]
    );
}

#[test]
fn a_block_of_the_wrong_length_is_a_protocol_error() {
    let (mut f, ih) = published();
    f.on_frame(request(ih, 1, 0, 0, 16384));
    drain(&mut f);
    assert!(matches!(
        f.on_message(Message::Piece {
            piece: 0,
            offset: 0,
            data: Bytes::from(vec![0u8; 100])
        }),
        Err(FetchError::BadBlock { .. })
    ));
}
