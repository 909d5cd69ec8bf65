//! Choosing the next request: round robin over the peers with a free slot, the picker's block
//! for each, an expensive source kept to pieces no free cheap peer has, and a block that timed
//! out on a peer not handed back to it while someone else has the piece.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Instant;

use super::{Action, Download, Request, TARGET};
use crate::picker::BlockRef;

impl<P: Copy + Eq + Hash + Ord + Debug> Download<P> {
    /// Issues one request to the next peer (round robin) that has a free slot and something to
    /// give.
    pub(super) fn next_request(&mut self, now: Instant) -> Option<Action<P>> {
        let order: Vec<P> = match self.cursor {
            Some(c) => self
                .peers
                .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                .chain(self.peers.range(..=c))
                .map(|(p, _)| *p)
                .collect(),
            None => self.peers.keys().copied().collect(),
        };
        for peer in order {
            let Some(state) = self.peers.get(&peer) else {
                continue;
            };
            if state.in_flight >= state.slots || state.blocked_until.is_some_and(|t| t > now) {
                continue;
            }
            let requests = &self.requests;
            let by_block = &self.by_block;
            let asked = |b: BlockRef| {
                by_block.get(&b).is_some_and(|ids| {
                    ids.iter()
                        .any(|id| requests.get(id).is_some_and(|r| r.peer == peer))
                })
            };
            // An expensive source (the server) is kept to pieces no live cheap peer with a free
            // slot has: what peers have comes from them, the server fills in where they cannot.
            let expensive = !state.duplicates;
            let peers = &self.peers;
            let picker = &self.picker;
            let usable = |piece: u32| {
                !expensive
                    || !peers.iter().any(|(p, s)| {
                        *p != peer
                            && s.duplicates
                            && s.in_flight < s.slots
                            && s.timed_out.is_empty()
                            && s.blocked_until.is_none_or(|t| t <= now)
                            && picker.peer_has(*p, piece)
                    })
            };
            let Some(pick) = picker.pick_where(peer, &mut self.rng, usable, asked) else {
                continue;
            };
            if pick.duplicate && !state.duplicates {
                continue;
            }
            if state.timed_out.contains(&pick.block) && self.other_source(peer, pick.block) {
                continue;
            }
            let Some((offset, length)) = self.picker.layout().block_range(pick.block) else {
                continue;
            };
            let id = self.next_id;
            self.next_id += 1;
            self.picker.mark_requested(peer, pick.block);
            self.requests.insert(
                id,
                Request {
                    peer,
                    block: pick.block,
                    offset,
                    length,
                    deadline: now + self.config.request_timeout,
                },
            );
            self.by_block.entry(pick.block).or_default().push(id);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.in_flight += 1;
                state.blocked_until = None;
            }
            self.cursor = Some(peer);
            tracing::trace!(target: TARGET, ?peer, id, piece = pick.block.piece, offset, length, duplicate = pick.duplicate, "request");
            return Some(Action::Request {
                peer,
                id,
                piece: pick.block.piece,
                offset,
                length,
            });
        }
        None
    }

    /// Whether a peer other than `peer` has `block`'s piece and has not let it time out.
    pub(super) fn other_source(&self, peer: P, block: BlockRef) -> bool {
        self.peers.iter().any(|(p, s)| {
            *p != peer && self.picker.peer_has(*p, block.piece) && !s.timed_out.contains(&block)
        })
    }
}
