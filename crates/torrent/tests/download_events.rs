//! Event-level tests of the download engine: ids, late and foreign blocks, rejects, peers that
//! vanish, timeouts, completion.

use std::time::{Duration, Instant};

use shardswarm_torrent::{
    Action, Bitfield, Download, DownloadConfig, DownloadError, Info, Metainfo,
};

fn meta(pieces: u32) -> Metainfo {
    Metainfo {
        info: Info {
            name: "x".into(),
            length: u64::from(pieces) * 32 * 1024 - 1000,
            piece_length: 32 * 1024,
            pieces: vec![[0; 20]; pieces as usize],
        },
        announce: None,
        created_by: None,
    }
}

fn config() -> DownloadConfig {
    DownloadConfig {
        block_size: 16 * 1024,
        max_in_flight_per_peer: 2,
        ..DownloadConfig::default()
    }
}

fn drain(d: &mut Download<u8>, now: Instant) -> Vec<Action<u8>> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match d.poll_action(now) {
            Some(a) => out.push(a),
            None => return out,
        }
    }
    panic!("poll_action never returned None");
}

fn requests(actions: &[Action<u8>]) -> Vec<(u8, u64, u32, u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Request {
                peer,
                id,
                piece,
                offset,
                length,
            } => Some((peer, id, piece, offset, length)),
            _ => None,
        })
        .collect()
}

/// (peer, id) of every `Cancel` among the actions.
fn cancels(actions: &[Action<u8>]) -> Vec<(u8, u64)> {
    actions
        .iter()
        .filter_map(|a| match *a {
            Action::Cancel { peer, id } => Some((peer, id)),
            _ => None,
        })
        .collect()
}

#[test]
fn requests_respect_slots_and_blocks_cover_the_last_short_piece() {
    let t0 = Instant::now();
    let m = meta(2);
    let mut d = Download::new(&m, Bitfield::new(2), config(), 1);
    d.add_peer(1, t0);
    assert!(
        drain(&mut d, t0).is_empty(),
        "nothing to ask before a bitfield"
    );
    let mut bits = Bitfield::new(2);
    bits.set(1);
    d.peer_bitfield(1, bits);
    let reqs = requests(&drain(&mut d, t0));
    // Piece 1 is 32 KiB - 1000: blocks of 16 KiB and 15 KiB, two slots.
    assert_eq!(
        reqs.iter().map(|r| (r.2, r.3, r.4)).collect::<Vec<_>>(),
        vec![(1, 0, 16384), (1, 16384, 16384 - 1000)]
    );
    assert_eq!(d.in_flight(1), 2);
    assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    let ids: Vec<u64> = reqs.iter().map(|r| r.1).collect();
    assert_ne!(ids[0], ids[1]);
    // Unknown and foreign ids change nothing.
    assert_eq!(
        d.block_received(1, 999, t0),
        Err(DownloadError::UnknownRequest { id: 999 })
    );
    assert_eq!(
        d.block_received(2, ids[0], t0),
        Err(DownloadError::NotYourRequest { id: ids[0] })
    );
    let first = d.block_received(1, ids[0], t0).unwrap();
    assert!(!first.piece_complete);
    // The same block again (duplicate delivery) is refused.
    assert_eq!(
        d.block_received(1, ids[0], t0),
        Err(DownloadError::UnknownRequest { id: ids[0] })
    );
    let second = d.block_received(1, ids[1], t0).unwrap();
    assert!(second.piece_complete);
    d.piece_verified(1, true);
    assert_eq!(d.verified_bytes(), 32 * 1024 - 1000);
    assert!(!d.is_complete());
}

#[test]
fn a_timed_out_request_is_cancelled_reissued_elsewhere_and_its_late_block_counts_once() {
    let t0 = Instant::now();
    let m = meta(1);
    let mut d = Download::new(&m, Bitfield::new(1), config(), 2);
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::full(1));
    let slow = requests(&drain(&mut d, t0));
    assert_eq!(slow.len(), 2);
    d.add_peer(2, t0);
    d.peer_bitfield(2, Bitfield::full(1));
    // Peer 2 has nothing new to get: both blocks are out, endgame allows duplicates though.
    let dup = requests(&drain(&mut d, t0));
    assert!(dup.iter().all(|r| r.0 == 2));
    let later = t0 + Duration::from_secs(21);
    d.handle_timeout(later);
    let actions = drain(&mut d, later);
    assert_eq!(cancels(&actions).len(), slow.len() + dup.len());
    let reissued = requests(&actions);
    assert_eq!(d.in_flight(1) + d.in_flight(2), reissued.len());
    // The late answer to a cancelled request still counts: the uploader sent it anyway.
    let late = d.block_received(1, slow[0].1, later).unwrap();
    assert_eq!((late.piece, late.offset), (slow[0].2, slow[0].3));
    // ... and the copies asked again since are withdrawn.
    let again: Vec<u64> = reissued
        .iter()
        .filter(|r| (r.2, r.3) == (slow[0].2, slow[0].3))
        .map(|r| r.1)
        .collect();
    let withdrawn: Vec<u64> = cancels(&drain(&mut d, later))
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(withdrawn, again);
    // Once only: the same late block again, or from the endgame duplicate, is refused.
    assert_eq!(
        d.block_received(1, slow[0].1, later),
        Err(DownloadError::UnknownRequest { id: slow[0].1 })
    );
    let dup_same: Vec<u64> = dup
        .iter()
        .filter(|r| (r.2, r.3) == (slow[0].2, slow[0].3))
        .map(|r| r.1)
        .collect();
    for id in dup_same {
        assert_eq!(
            d.block_received(2, id, later),
            Err(DownloadError::UnknownRequest { id })
        );
    }
}

#[test]
fn an_overdue_request_to_a_slow_sole_source_is_kept_and_a_dead_ones_is_asked_again() {
    let t0 = Instant::now();
    let m = meta(2);
    let mut d = Download::new(&m, Bitfield::new(2), config(), 4);
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::full(2));
    let first = requests(&drain(&mut d, t0));
    assert_eq!(first.len(), 2);
    // One block arrives on time; the other is still queued behind the uploader's other work.
    let t1 = t0 + Duration::from_secs(10);
    d.block_received(1, first[0].1, t1).unwrap();
    let second = requests(&drain(&mut d, t1));
    // 21 s: the peer delivered 11 s ago, so it is slow, not dead, and nobody else has the
    // piece: nothing is cancelled, its slots halve.
    let t2 = t0 + Duration::from_secs(21);
    d.handle_timeout(t2);
    assert!(drain(&mut d, t2).is_empty());
    assert_eq!(d.in_flight(1), 1 + second.len());
    // Another piece's data counts as progress too (the adapter reports it).
    d.peer_progress(1, t0 + Duration::from_secs(35));
    d.handle_timeout(t0 + Duration::from_secs(42));
    assert!(drain(&mut d, t0 + Duration::from_secs(42)).is_empty());
    // Silent for a whole timeout: its requests are withdrawn and asked again.
    let t3 = t0 + Duration::from_secs(63);
    d.handle_timeout(t3);
    let actions = drain(&mut d, t3);
    let cancels = actions
        .iter()
        .filter(|a| matches!(a, Action::Cancel { .. }))
        .count();
    assert_eq!(cancels, 1 + second.len());
    assert_eq!(requests(&actions).len(), 1, "slots halved to 1");
}

#[test]
fn a_vanished_peer_gives_its_blocks_back_and_rejects_back_off() {
    let t0 = Instant::now();
    let m = meta(1);
    let mut d = Download::new(&m, Bitfield::new(1), config(), 3);
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::full(1));
    let reqs = requests(&drain(&mut d, t0));
    d.remove_peer(1);
    assert_eq!(d.in_flight(1), 0);
    // Its late blocks and rejects are harmless.
    assert!(d.block_received(1, reqs[0].1, t0).is_err());
    d.request_rejected(1, reqs[1].1);
    d.add_peer(2, t0);
    d.peer_bitfield(2, Bitfield::full(1));
    let again = requests(&drain(&mut d, t0));
    assert_eq!(
        again.iter().map(|r| (r.2, r.3)).collect::<Vec<_>>(),
        vec![(0, 0), (0, 16384)]
    );
    // Peer 2 rejects one: it is left alone for a while, then asked again.
    d.request_rejected(2, again[0].1);
    assert!(requests(&drain(&mut d, t0)).is_empty());
    let backoff_end = d.poll_timeout().expect("a back-off deadline");
    assert!(backoff_end <= t0 + Duration::from_secs(1));
    let retry = requests(&drain(&mut d, backoff_end));
    assert_eq!(retry.len(), 1);
    assert_eq!((retry[0].2, retry[0].3), (0, 0));
}

#[test]
fn a_bad_piece_from_one_peer_bans_it_and_completion_is_announced_once() {
    let t0 = Instant::now();
    let m = meta(1);
    let mut d = Download::new(&m, Bitfield::new(1), config(), 4);
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::full(1));
    for r in requests(&drain(&mut d, t0)) {
        d.block_received(1, r.1, t0).unwrap();
    }
    d.piece_verified(0, false);
    assert_eq!(drain(&mut d, t0), vec![Action::Ban { peer: 1 }]);
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::full(1));
    assert!(
        drain(&mut d, t0).is_empty(),
        "a banned peer is not asked again"
    );
    d.add_peer(2, t0);
    d.peer_bitfield(2, Bitfield::full(1));
    for r in requests(&drain(&mut d, t0)) {
        d.block_received(2, r.1, t0).unwrap();
    }
    d.piece_verified(0, true);
    assert_eq!(drain(&mut d, t0), vec![Action::Completed]);
    d.piece_verified(0, true);
    assert!(drain(&mut d, t0).is_empty());
    assert!(d.is_complete());
    let mut done = Download::<u8>::new(&m, Bitfield::full(1), config(), 5);
    assert_eq!(drain(&mut done, t0), vec![Action::Completed]);
}

#[test]
fn a_peer_announcing_a_piece_takes_its_blocks_off_the_expensive_seed() {
    let t0 = Instant::now();
    let m = meta(2);
    let mut d = Download::new(&m, Bitfield::new(2), config(), 5);
    // Peer 9 is the server: its uplink is shared, so it gets no duplicates.
    d.add_peer(9, t0);
    d.limit_peer(9, 2, false);
    d.peer_bitfield(9, Bitfield::full(2));
    let asked = requests(&drain(&mut d, t0));
    assert_eq!(asked.len(), 2);
    let piece = asked[0].2;
    d.add_peer(1, t0);
    d.peer_bitfield(1, Bitfield::new(2));
    assert!(drain(&mut d, t0).is_empty());
    d.peer_have(1, piece);
    let actions = drain(&mut d, t0);
    let withdrawn: Vec<u64> = cancels(&actions)
        .into_iter()
        .filter(|c| c.0 == 9)
        .map(|(_, id)| id)
        .collect();
    let moved: Vec<_> = asked.iter().filter(|r| r.2 == piece).collect();
    assert_eq!(withdrawn, moved.iter().map(|r| r.1).collect::<Vec<_>>());
    // The blocks go to the peer; the server's freed slots go to pieces only it has.
    let (to_peer, to_server): (Vec<_>, Vec<_>) =
        requests(&actions).into_iter().partition(|r| r.0 == 1);
    assert_eq!(to_peer.len(), moved.len());
    assert!(to_peer.iter().all(|r| r.2 == piece));
    assert!(to_server.iter().all(|r| r.0 == 9 && r.2 != piece));
    // The server had already sent one: it still counts, and the peer's copy is withdrawn.
    let got = d.block_received(9, moved[0].1, t0).unwrap();
    assert_eq!((got.piece, got.offset), (piece, moved[0].3));
    let again = drain(&mut d, t0);
    assert!(
        again
            .iter()
            .any(|a| matches!(a, Action::Cancel { peer: 1, .. }))
    );
}

#[test]
fn a_peer_whose_bitfield_comes_after_the_servers_still_takes_its_pieces_off_it() {
    let t0 = Instant::now();
    let m = meta(1);
    let mut d = Download::new(&m, Bitfield::new(1), config(), 6);
    d.add_peer(9, t0);
    d.limit_peer(9, 2, false);
    d.add_peer(1, t0);
    // The server's bitfield arrives first and gets both blocks.
    d.peer_bitfield(9, Bitfield::full(1));
    let asked = requests(&drain(&mut d, t0));
    assert!(asked.iter().all(|r| r.0 == 9) && asked.len() == 2);
    d.peer_bitfield(1, Bitfield::full(1));
    let actions = drain(&mut d, t0);
    let withdrawn = actions
        .iter()
        .filter(|a| matches!(a, Action::Cancel { peer: 9, .. }))
        .count();
    assert_eq!(withdrawn, 2);
    let moved = requests(&actions);
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|r| r.0 == 1));
}
