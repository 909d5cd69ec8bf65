//! Property tests for the piece picker under random peer churn: availability always equals the
//! sum of the peers' bitfields, and a pick is never a piece we have or the peer lacks.

use proptest::prelude::*;
use shardswarm_torrent::Bitfield;
use shardswarm_torrent::picker::{BlockRef, BlockState, Layout, PickRng, PiecePicker};

const PIECES: u32 = 12;
const BLOCKS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    Join(u8, Vec<bool>),
    Leave(u8),
    Have(u8, u32),
    Pick(u8),
    Receive(u8),
    Verify(u32, bool),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let peer = 0u8..6;
    prop_oneof![
        (
            peer.clone(),
            proptest::collection::vec(any::<bool>(), PIECES as usize)
        )
            .prop_map(|(p, b)| Op::Join(p, b)),
        peer.clone().prop_map(Op::Leave),
        (peer.clone(), 0..PIECES + 2).prop_map(|(p, i)| Op::Have(p, i)),
        peer.clone().prop_map(Op::Pick),
        peer.clone().prop_map(Op::Pick),
        peer.prop_map(Op::Receive),
        (0..PIECES, any::<bool>()).prop_map(|(i, ok)| Op::Verify(i, ok)),
    ]
}

proptest! {
    #[test]
    fn picks_are_valid_and_availability_is_the_sum_of_bitfields(
        ops in proptest::collection::vec(arb_op(), 1..200),
        seed in any::<u64>(),
        have in proptest::collection::vec(any::<bool>(), PIECES as usize),
    ) {
        let layout = Layout::new(u64::from(PIECES * BLOCKS) * 16 - 5, u64::from(BLOCKS) * 16, PIECES, 16);
        let mut ours = Bitfield::new(PIECES);
        for (i, h) in have.iter().enumerate() {
            if *h { ours.set(i as u32); }
        }
        let mut picker: PiecePicker<u8> = PiecePicker::new(layout, ours);
        let mut rng = PickRng::new(seed);
        // The model: each peer's bitfield, and outstanding requests per peer.
        let mut model: std::collections::BTreeMap<u8, Bitfield> = Default::default();
        let mut outstanding: Vec<(u8, BlockRef)> = Vec::new();
        for op in ops {
            match op {
                Op::Join(p, bits) => {
                    let mut b = Bitfield::new(PIECES);
                    for (i, x) in bits.iter().enumerate() {
                        if *x { b.set(i as u32); }
                    }
                    picker.peer_bitfield(p, b.clone());
                    model.insert(p, b);
                }
                Op::Leave(p) => {
                    for (_, b) in outstanding.iter().filter(|(q, _)| *q == p) {
                        picker.mark_unrequested(*b);
                    }
                    outstanding.retain(|(q, _)| *q != p);
                    picker.remove_peer(p);
                    model.remove(&p);
                }
                Op::Have(p, i) => {
                    picker.peer_have(p, i);
                    if i < PIECES {
                        model.entry(p).or_insert_with(|| Bitfield::new(PIECES)).set(i);
                    }
                }
                Op::Pick(p) => {
                    let asked = |b: BlockRef| outstanding.iter().any(|(q, x)| *q == p && *x == b);
                    if let Some(pick) = picker.pick(p, &mut rng, asked) {
                        let b = pick.block;
                        prop_assert!(!picker.have().get(b.piece), "picked a piece we have");
                        prop_assert!(model.get(&p).is_some_and(|m| m.get(b.piece)), "picked a piece the peer lacks");
                        prop_assert!(!outstanding.contains(&(p, b)), "asked the same peer twice");
                        prop_assert!(layout.block_range(b).is_some());
                        if !pick.duplicate {
                            prop_assert_eq!(picker.block_state(b).unwrap_or(BlockState::Missing), BlockState::Missing);
                        } else {
                            prop_assert!(picker.is_endgame());
                        }
                        picker.mark_requested(p, b);
                        outstanding.push((p, b));
                    }
                }
                Op::Receive(p) => {
                    if let Some(pos) = outstanding.iter().position(|(q, _)| *q == p) {
                        let (_, b) = outstanding.remove(pos);
                        picker.mark_received(p, b);
                        // Other copies of the block are cancelled.
                        outstanding.retain(|(_, x)| *x != b);
                    }
                }
                Op::Verify(i, ok) => {
                    let complete = (0..BLOCKS).all(|b| {
                        picker.block_state(BlockRef { piece: i, block: b }) == Some(BlockState::Received)
                            || layout.block_range(BlockRef { piece: i, block: b }).is_none()
                    }) && picker.block_state(BlockRef { piece: i, block: 0 }).is_some();
                    if complete {
                        picker.piece_done(i, ok);
                    }
                }
            }
            for i in 0..PIECES {
                let sum = model.values().filter(|b| b.get(i)).count() as u32;
                prop_assert_eq!(picker.availability(i), sum, "availability of piece {}", i);
            }
        }
    }
}

#[test]
fn ties_are_broken_by_the_seeded_rng() {
    let layout = Layout::new(16 * 64, 16, 64, 16);
    let first = |seed| {
        let mut p: PiecePicker<u8> = PiecePicker::new(layout, Bitfield::new(64));
        p.peer_bitfield(1, Bitfield::full(64));
        p.pick(1, &mut PickRng::new(seed), |_| false)
            .unwrap()
            .block
            .piece
    };
    assert_eq!(first(5), first(5));
    let distinct: std::collections::BTreeSet<u32> = (0..20).map(first).collect();
    assert!(distinct.len() > 5, "tie-breaks look fixed: {distinct:?}");
}
