//! A peer that accepts requests and never answers: when its requests time out, the blocks go to
//! the other peers, not back to it (the bug: round robin handed them back to the staller half
//! the time, so each of its blocks could cost several timeouts). It is still asked when nobody
//! else has the piece, and it is trusted again once it delivers.

use std::time::{Duration, Instant};

use shardswarm_torrent::{Action, Bitfield, Download, DownloadConfig, Info, Metainfo};

const STALLER: u8 = 1;
const SEED: u8 = 2;
const BLOCK: u32 = 16 * 1024;

fn meta(pieces: u32) -> Metainfo {
    Metainfo {
        info: Info {
            name: "x".into(),
            length: u64::from(pieces) * 4 * u64::from(BLOCK),
            piece_length: 4 * u64::from(BLOCK),
            pieces: vec![[0; 20]; pieces as usize],
        },
        announce: None,
        created_by: None,
    }
}

fn config() -> DownloadConfig {
    DownloadConfig {
        block_size: BLOCK,
        max_in_flight_per_peer: 2,
        ..DownloadConfig::default()
    }
}

/// (peer, id, piece, offset) of every request among the pending actions.
fn requests(d: &mut Download<u8>, now: Instant) -> Vec<(u8, u64, u32, u32)> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        match d.poll_action(now) {
            Some(Action::Request {
                peer,
                id,
                piece,
                offset,
                ..
            }) => out.push((peer, id, piece, offset)),
            Some(_) => {}
            None => return out,
        }
    }
    panic!("poll_action never returned None");
}

/// A staller and a seed that, like the server, takes no endgame duplicates.
fn staller_and_seed(pieces: u32, t0: Instant) -> Download<u8> {
    let mut d = Download::new(&meta(pieces), Bitfield::new(pieces), config(), 7);
    for p in [STALLER, SEED] {
        d.add_peer(p, t0);
        d.peer_bitfield(p, Bitfield::full(pieces));
    }
    d.limit_peer(SEED, 2, false);
    d
}

#[test]
fn a_stalling_peers_timed_out_requests_are_reissued_to_the_others() {
    let t0 = Instant::now();
    let mut d = staller_and_seed(1, t0);
    let first = requests(&mut d, t0);
    assert_eq!(first.len(), 4, "{first:?}");
    let stalled: Vec<_> = first.iter().filter(|r| r.0 == STALLER).collect();
    assert_eq!(stalled.len(), 2, "{first:?}");
    // The seed answers its two; the staller never does.
    for r in first.iter().filter(|r| r.0 == SEED) {
        d.block_received(SEED, r.1, t0).unwrap();
    }
    assert!(requests(&mut d, t0).is_empty(), "no duplicates to the seed");

    let later = t0 + Duration::from_secs(21);
    d.handle_timeout(later);
    let again = requests(&mut d, later);
    let mut blocks: Vec<_> = again.iter().map(|r| (r.2, r.3)).collect();
    blocks.sort_unstable();
    let mut want: Vec<_> = stalled.iter().map(|r| (r.2, r.3)).collect();
    want.sort_unstable();
    assert_eq!(blocks, want, "the timed-out blocks are asked again");
    assert!(
        again.iter().all(|r| r.0 == SEED),
        "re-issued to the staller: {again:?}"
    );
    for r in &again {
        d.block_received(SEED, r.1, later).unwrap();
    }
    d.piece_verified(0, true);
    assert!(d.is_complete());
}

#[test]
fn with_many_pieces_the_download_needs_one_timeout_not_a_cascade() {
    let t0 = Instant::now();
    let mut d = staller_and_seed(8, t0);
    let mut now = t0;
    let mut timeouts = 0;
    let mut outstanding = requests(&mut d, now);
    // The seed answers at once; the staller never. Each round trip is a millisecond.
    for _ in 0..10_000 {
        if d.is_complete() {
            break;
        }
        let (seed, staller): (Vec<_>, Vec<_>) = outstanding.into_iter().partition(|r| r.0 == SEED);
        now += Duration::from_millis(1);
        for r in &seed {
            if let Ok(b) = d.block_received(SEED, r.1, now)
                && b.piece_complete
            {
                d.piece_verified(b.piece, true);
            }
        }
        let mut next = requests(&mut d, now);
        if seed.is_empty() && next.is_empty() {
            let deadline = d.poll_timeout().expect("stuck without a deadline");
            now = now.max(deadline);
            d.handle_timeout(now);
            timeouts += 1;
            next = requests(&mut d, now);
        }
        next.extend(
            staller
                .into_iter()
                .filter(|r| d.pending_request(r.1).is_some()),
        );
        outstanding = next;
    }
    assert!(d.is_complete());
    assert_eq!(
        timeouts, 1,
        "each timeout round handed blocks back to the staller"
    );
    assert!(now - t0 < Duration::from_secs(25), "took {:?}", now - t0);
}

#[test]
fn a_sole_source_is_asked_again_after_a_timeout_and_trusted_once_it_delivers() {
    let t0 = Instant::now();
    let mut d = Download::new(&meta(1), Bitfield::new(1), config(), 3);
    d.add_peer(STALLER, t0);
    d.peer_bitfield(STALLER, Bitfield::full(1));
    let first = requests(&mut d, t0);
    assert_eq!(first.len(), 2);
    let later = t0 + Duration::from_secs(21);
    d.handle_timeout(later);
    // Nobody else has the piece: the slow peer is asked again (one slot after the timeout).
    let again = requests(&mut d, later);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, STALLER);
    // It delivers: its marks are cleared, and a newcomer does not take precedence.
    d.block_received(STALLER, again[0].1, later).unwrap();
    let more = requests(&mut d, later);
    assert!(more.iter().all(|r| r.0 == STALLER) && !more.is_empty());
}
