//! Rarest-first piece picking over per-peer availability, at block granularity.
//!
//! Invariants (checked by the property tests in `tests/picker_props.rs`):
//! - `availability[i]` equals the number of known peers whose bitfield has piece `i`.
//! - A pick is always a block of a piece we do not have and the asking peer has.
//! - A piece is in `partial` from its first requested block until it is verified or reset; a
//!   partial piece with every block received awaits verification and is never picked.
//! - Outside endgame a block is requested at most once. Endgame starts when every block of every
//!   missing piece that some peer has is requested or received; then a peer may duplicate an
//!   outstanding block it is not already fetching (at most [`MAX_ENDGAME_COPIES`] copies).
//! - A piece that failed verification is on parole: its next download goes to one peer only
//!   (the first to get a block of it), so a second failure pins the blame on that peer.

use std::collections::{BTreeMap, BTreeSet};

use crate::bitfield::Bitfield;
use crate::wire::MAX_BLOCK_LEN;

/// Most outstanding requests for one block in endgame.
pub const MAX_ENDGAME_COPIES: u32 = 3;

/// A deterministic pseudo-random generator (SplitMix64) for tie-breaks; seeded by the caller so
/// tests are reproducible.
#[derive(Debug, Clone)]
pub struct PickRng(u64);

impl PickRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> PickRng {
        PickRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// How a torrent's pieces split into request-sized blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The file length.
    pub length: u64,
    /// Bytes per piece (the last may be shorter).
    pub piece_length: u64,
    /// Number of pieces.
    pub piece_count: u32,
    /// Bytes per block (the last block of a piece may be shorter); at most
    /// [`MAX_BLOCK_LEN`] and the piece length.
    pub block_size: u32,
}

impl Layout {
    /// A layout with `block_size` clipped to `1..=min(piece_length, MAX_BLOCK_LEN)`.
    pub fn new(length: u64, piece_length: u64, piece_count: u32, block_size: u32) -> Layout {
        let cap = piece_length.clamp(1, u64::from(MAX_BLOCK_LEN));
        let block_size = u64::from(block_size).clamp(1, cap);
        Layout {
            length,
            piece_length,
            piece_count,
            block_size: u32::try_from(block_size).unwrap_or(MAX_BLOCK_LEN),
        }
    }

    /// Bytes in piece `piece` (0 past the end).
    pub fn piece_size(&self, piece: u32) -> u64 {
        if piece >= self.piece_count {
            return 0;
        }
        let start = u64::from(piece).saturating_mul(self.piece_length);
        self.piece_length.min(self.length.saturating_sub(start))
    }

    /// Blocks in piece `piece`.
    pub fn blocks_in(&self, piece: u32) -> u32 {
        let n = self.piece_size(piece).div_ceil(u64::from(self.block_size));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// `(offset in piece, length)` of a block; `None` past the end.
    pub fn block_range(&self, block: BlockRef) -> Option<(u32, u32)> {
        if block.block >= self.blocks_in(block.piece) {
            return None;
        }
        let offset = u64::from(block.block) * u64::from(self.block_size);
        let len = u64::from(self.block_size).min(self.piece_size(block.piece) - offset);
        Some((u32::try_from(offset).ok()?, u32::try_from(len).ok()?))
    }
}

/// One block: piece index and block index inside the piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// The piece.
    pub piece: u32,
    /// The block inside the piece (`offset / block_size`).
    pub block: u32,
}

/// What [`PiecePicker::pick`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The block to request.
    pub block: BlockRef,
    /// An endgame duplicate of a block already requested from another peer.
    pub duplicate: bool,
}

/// The state of one block of a partial piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Neither requested nor received.
    Missing,
    /// Requested this many times (more than once only in endgame).
    Requested(u32),
    /// Data received, awaiting the piece's verification.
    Received,
}

#[derive(Debug)]
struct Partial<P> {
    blocks: Vec<BlockState>,
    missing: u32,
    received: u32,
    /// Set for a piece on parole: only this peer may fetch its blocks.
    owner: Option<P>,
}

/// Availability bookkeeping and block selection for one torrent.
#[derive(Debug)]
pub struct PiecePicker<P> {
    layout: Layout,
    have: Bitfield,
    availability: Vec<u32>,
    peers: BTreeMap<P, Bitfield>,
    partial: BTreeMap<u32, Partial<P>>,
    parole: BTreeSet<u32>,
}

impl<P: Copy + Ord + std::fmt::Debug> PiecePicker<P> {
    /// A picker for `layout`, starting from the verified pieces `have` (a bitfield of another
    /// length is replaced by an empty one).
    pub fn new(layout: Layout, have: Bitfield) -> PiecePicker<P> {
        let have = if have.len() == layout.piece_count {
            have
        } else {
            Bitfield::new(layout.piece_count)
        };
        PiecePicker {
            layout,
            have,
            availability: vec![0; layout.piece_count as usize],
            peers: BTreeMap::new(),
            partial: BTreeMap::new(),
            parole: BTreeSet::new(),
        }
    }

    /// The block layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Our verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// How many known peers have piece `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// The known peers.
    pub fn peers(&self) -> impl Iterator<Item = &P> {
        self.peers.keys()
    }

    /// Whether `peer` is known and has `piece`.
    pub fn peer_has(&self, peer: P, piece: u32) -> bool {
        self.peers.get(&peer).is_some_and(|b| b.get(piece))
    }

    /// Sets (or replaces) a peer's bitfield; a peer is known from its first bitfield on. A
    /// bitfield of the wrong length is ignored.
    pub fn peer_bitfield(&mut self, peer: P, bits: Bitfield) {
        if bits.len() != self.layout.piece_count {
            tracing::debug!(target: "shardswarm_torrent::picker", ?peer, got = bits.len(), "bitfield of wrong length ignored");
            return;
        }
        if let Some(old) = self.peers.remove(&peer) {
            for i in old.iter_ones() {
                self.availability[i as usize] -= 1;
            }
        }
        for i in bits.iter_ones() {
            self.availability[i as usize] += 1;
        }
        self.peers.insert(peer, bits);
    }

    /// A peer announced one more piece; unknown peers start from an empty bitfield.
    pub fn peer_have(&mut self, peer: P, piece: u32) {
        if piece >= self.layout.piece_count {
            return;
        }
        let count = self.layout.piece_count;
        let bits = self
            .peers
            .entry(peer)
            .or_insert_with(|| Bitfield::new(count));
        if bits.set(piece) {
            self.availability[piece as usize] += 1;
        }
    }

    /// Forgets a peer. Returns the pieces it owned on parole: those are reset (received blocks
    /// included) and must be refetched. The caller unrequests the peer's outstanding blocks.
    pub fn remove_peer(&mut self, peer: P) -> Vec<u32> {
        if let Some(old) = self.peers.remove(&peer) {
            for i in old.iter_ones() {
                self.availability[i as usize] -= 1;
            }
        }
        let owned: Vec<u32> = self
            .partial
            .iter()
            .filter(|(_, p)| p.owner == Some(peer))
            .map(|(&i, _)| i)
            .collect();
        for &piece in &owned {
            self.partial.remove(&piece);
        }
        owned
    }

    /// The state of a block (`None` if its piece is not partial).
    pub fn block_state(&self, block: BlockRef) -> Option<BlockState> {
        self.partial
            .get(&block.piece)?
            .blocks
            .get(block.block as usize)
            .copied()
    }

    /// Whether every block of every missing, available piece is requested or received.
    pub fn is_endgame(&self) -> bool {
        (0..self.layout.piece_count).all(|i| {
            self.have.get(i)
                || self.availability[i as usize] == 0
                || self.partial.get(&i).is_some_and(|p| p.missing == 0)
        })
    }

    /// Chooses the next block to request from `peer`. `already_asked(block)` tells whether this
    /// peer already has an outstanding request for `block` (only consulted in endgame).
    pub fn pick(
        &self,
        peer: P,
        rng: &mut PickRng,
        already_asked: impl Fn(BlockRef) -> bool,
    ) -> Option<Pick> {
        self.pick_where(peer, rng, |_| true, already_asked)
    }

    /// [`PiecePicker::pick`] among the pieces for which `usable(piece)` holds (to keep an
    /// expensive source to the pieces nobody cheaper has).
    pub fn pick_where(
        &self,
        peer: P,
        rng: &mut PickRng,
        usable: impl Fn(u32) -> bool,
        already_asked: impl Fn(BlockRef) -> bool,
    ) -> Option<Pick> {
        let bits = self.peers.get(&peer)?;
        let allowed = |p: &Partial<P>| p.owner.is_none() || p.owner == Some(peer);
        let wanted = |i: u32| bits.get(i) && !self.have.get(i) && usable(i);
        // 1. Finish what we started: the rarest partial piece with a missing block.
        let started = self
            .partial
            .iter()
            .filter(|(i, p)| p.missing > 0 && allowed(p) && wanted(**i))
            .min_by_key(|(i, _)| (self.availability[**i as usize], **i));
        if let Some((&piece, p)) = started {
            let block = p.blocks.iter().position(|b| *b == BlockState::Missing)?;
            return Some(Pick {
                block: BlockRef {
                    piece,
                    block: u32::try_from(block).ok()?,
                },
                duplicate: false,
            });
        }
        // 2. The rarest unstarted piece, random among equals.
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u64;
        for i in bits.iter_ones() {
            if !wanted(i) || self.partial.contains_key(&i) || self.layout.blocks_in(i) == 0 {
                continue;
            }
            let avail = self.availability[i as usize];
            match best {
                Some((a, _)) if avail > a => {}
                Some((a, _)) if avail == a => {
                    ties += 1;
                    if rng.below(ties + 1) == 0 {
                        best = Some((avail, i));
                    }
                }
                _ => {
                    best = Some((avail, i));
                    ties = 0;
                }
            }
        }
        if let Some((_, piece)) = best {
            return Some(Pick {
                block: BlockRef { piece, block: 0 },
                duplicate: false,
            });
        }
        // 3. Endgame: duplicate the least-copied outstanding block this peer is not fetching.
        if !self.is_endgame() {
            return None;
        }
        self.partial
            .iter()
            .filter(|(i, p)| allowed(p) && wanted(**i))
            .flat_map(|(&piece, p)| {
                p.blocks
                    .iter()
                    .enumerate()
                    .filter_map(move |(b, s)| match s {
                        BlockState::Requested(n) if *n < MAX_ENDGAME_COPIES => Some((
                            *n,
                            BlockRef {
                                piece,
                                block: u32::try_from(b).ok()?,
                            },
                        )),
                        _ => None,
                    })
            })
            .filter(|(_, b)| !already_asked(*b))
            .min()
            .map(|(_, block)| Pick {
                block,
                duplicate: true,
            })
    }

    /// Records a request of `block` to `peer` (which claims a parole piece for it).
    pub fn mark_requested(&mut self, peer: P, block: BlockRef) {
        let Some(p) = self.partial_entry(peer, block) else {
            return;
        };
        let state = &mut p.blocks[block.block as usize];
        match state {
            BlockState::Missing => {
                *state = BlockState::Requested(1);
                p.missing -= 1;
            }
            BlockState::Requested(n) => *n += 1,
            BlockState::Received => {}
        }
    }

    /// Whether data of `block` from `peer` would still be used: the piece is not verified, the
    /// block not received yet, and a parole piece is fetched by `peer` (or by nobody yet).
    pub fn wants(&self, peer: P, block: BlockRef) -> bool {
        if self.have.get(block.piece) || block.block >= self.layout.blocks_in(block.piece) {
            return false;
        }
        match self.partial.get(&block.piece) {
            None => true,
            Some(p) => {
                p.owner.is_none_or(|o| o == peer)
                    && p.blocks[block.block as usize] != BlockState::Received
            }
        }
    }

    /// The partial piece `block` belongs to, started (and claimed by `peer` if on parole) when
    /// it is not in progress; `None` for a verified piece or a block out of range.
    fn partial_entry(&mut self, peer: P, block: BlockRef) -> Option<&mut Partial<P>> {
        if self.have.get(block.piece) {
            return None;
        }
        let blocks = self.layout.blocks_in(block.piece);
        if block.block >= blocks {
            return None;
        }
        let on_parole = self.parole.contains(&block.piece);
        Some(self.partial.entry(block.piece).or_insert_with(|| Partial {
            blocks: vec![BlockState::Missing; blocks as usize],
            missing: blocks,
            received: 0,
            owner: on_parole.then_some(peer),
        }))
    }

    /// One request of `block` ended without data (cancelled, timed out, rejected, peer gone).
    pub fn mark_unrequested(&mut self, block: BlockRef) {
        let Some(p) = self.partial.get_mut(&block.piece) else {
            return;
        };
        let Some(state) = p.blocks.get_mut(block.block as usize) else {
            return;
        };
        if let BlockState::Requested(n) = state {
            if *n > 1 {
                *n -= 1;
            } else {
                *state = BlockState::Missing;
                p.missing += 1;
            }
        }
        if p.missing as usize == p.blocks.len() {
            self.partial.remove(&block.piece);
        }
    }

    /// The data of `block` arrived from `peer`, requested or (after its request timed out) not.
    /// Returns whether the piece now has every block (and awaits verification); `false` for a
    /// block already received or of a verified piece.
    pub fn mark_received(&mut self, peer: P, block: BlockRef) -> bool {
        let Some(p) = self.partial_entry(peer, block) else {
            return false;
        };
        let state = &mut p.blocks[block.block as usize];
        match state {
            BlockState::Received => return false,
            BlockState::Missing => p.missing -= 1,
            BlockState::Requested(_) => {}
        }
        *state = BlockState::Received;
        p.received += 1;
        p.received as usize == p.blocks.len()
    }

    /// The verdict on a piece: `ok` marks it verified, otherwise it goes back to the pool (on
    /// parole). Returns whether `have` changed.
    pub fn piece_done(&mut self, piece: u32, ok: bool) -> bool {
        if piece >= self.layout.piece_count {
            return false;
        }
        self.partial.remove(&piece);
        if ok {
            self.parole.remove(&piece);
            self.have.set(piece)
        } else {
            if !self.have.get(piece) {
                self.parole.insert(piece);
            }
            false
        }
    }

    /// Whether a piece is on parole (failed before; next download from a single peer).
    pub fn on_parole(&self, piece: u32) -> bool {
        self.parole.contains(&piece)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picker(pieces: u32, blocks_per_piece: u32) -> PiecePicker<u8> {
        let layout = Layout::new(
            u64::from(pieces * blocks_per_piece) * 16,
            u64::from(blocks_per_piece) * 16,
            pieces,
            16,
        );
        PiecePicker::new(layout, Bitfield::new(pieces))
    }

    #[test]
    fn rarest_piece_is_picked_first() {
        let mut p = picker(3, 1);
        p.peer_bitfield(1, Bitfield::full(3));
        p.peer_bitfield(2, Bitfield::full(3));
        p.peer_have(3, 0);
        p.peer_have(3, 2);
        // Piece 1 is held by two peers, 0 and 2 by three.
        let pick = p.pick(1, &mut PickRng::new(7), |_| false).unwrap();
        assert_eq!(pick.block, BlockRef { piece: 1, block: 0 });
        assert!(!pick.duplicate);
    }

    #[test]
    fn started_pieces_are_finished_before_new_ones() {
        let mut p = picker(4, 4);
        p.peer_bitfield(1, Bitfield::full(4));
        p.peer_have(2, 3);
        p.mark_requested(2, BlockRef { piece: 3, block: 0 });
        let pick = p.pick(1, &mut PickRng::new(1), |_| false).unwrap();
        assert_eq!(pick.block, BlockRef { piece: 3, block: 1 });
    }

    #[test]
    fn endgame_duplicates_only_when_everything_is_requested() {
        let mut p = picker(2, 1);
        p.peer_bitfield(1, Bitfield::full(2));
        p.peer_bitfield(2, Bitfield::full(2));
        let a = BlockRef { piece: 0, block: 0 };
        let b = BlockRef { piece: 1, block: 0 };
        p.mark_requested(1, a);
        assert!(!p.is_endgame());
        assert_eq!(p.pick(2, &mut PickRng::new(1), |_| false).unwrap().block, b);
        p.mark_requested(1, b);
        assert!(p.is_endgame());
        let dup = p.pick(2, &mut PickRng::new(1), |_| false).unwrap();
        assert!(dup.duplicate);
        // A peer is never given a block it is already fetching.
        assert!(p.pick(1, &mut PickRng::new(1), |_| true).is_none());
    }

    #[test]
    fn a_failed_piece_is_refetched_from_one_peer_only() {
        let mut p = picker(1, 2);
        p.peer_bitfield(1, Bitfield::full(1));
        p.peer_bitfield(2, Bitfield::full(1));
        p.piece_done(0, false);
        assert!(p.on_parole(0));
        p.mark_requested(1, BlockRef { piece: 0, block: 0 });
        assert!(p.pick(2, &mut PickRng::new(3), |_| false).is_none());
        let next = p.pick(1, &mut PickRng::new(3), |_| false).unwrap();
        assert_eq!(next.block, BlockRef { piece: 0, block: 1 });
        // The owner leaving frees the piece for everyone.
        assert_eq!(p.remove_peer(1), vec![0]);
        assert!(p.pick(2, &mut PickRng::new(3), |_| false).is_some());
    }

    #[test]
    fn layout_clips_blocks_to_the_piece_and_the_file() {
        let l = Layout::new(100, 40, 3, 1 << 20);
        assert_eq!(l.block_size, 40);
        assert_eq!(l.blocks_in(2), 1);
        assert_eq!(
            l.block_range(BlockRef { piece: 2, block: 0 }),
            Some((0, 20))
        );
        let l = Layout::new(100, 40, 3, 16);
        assert_eq!(l.blocks_in(0), 3);
        assert_eq!(
            l.block_range(BlockRef { piece: 0, block: 2 }),
            Some((32, 8))
        );
        assert_eq!(l.block_range(BlockRef { piece: 0, block: 3 }), None);
    }
}
