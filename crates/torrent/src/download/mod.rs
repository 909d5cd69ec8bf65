//! The sans-IO download state machine: one per torrent, driven by the adapter's events and the
//! time it passes in (quinn-proto style: `handle_*`/`poll_action`/`poll_timeout`, no clock, no
//! IO, no tasks).
//!
//! The adapter tells the engine everything that happens (peer connected, bitfield, have, block
//! arrived, request rejected, piece verified, peer gone) and performs the [`Action`]s it returns
//! from [`Download::poll_action`] until `None`, then sleeps until [`Download::poll_timeout`] and
//! calls [`Download::handle_timeout`].
//!
//! Invariants:
//! - Request ids are unique per download (a counter); every outstanding id is in `requests`
//!   exactly once, counted in its peer's `in_flight`, and listed under its block in `by_block`;
//!   the picker's `Requested(n)` of a block equals the number of its outstanding ids.
//! - A request ends exactly once: data (`block_received`), `request_rejected`, timeout (a
//!   `Cancel` goes out), endgame duplicate of a block that arrived elsewhere (a `Cancel` goes
//!   out), a move off an expensive source (a `Cancel` goes out), or its peer leaving. Anything
//!   naming an ended id is answered with [`DownloadError::UnknownRequest`] and changes nothing,
//!   so late, duplicate and out-of-order blocks are harmless — except that the data of a
//!   timed-out or moved request (remembered in `late`, bounded) is still taken if the block is
//!   still wanted: an uploader that already queued it sends it anyway, and dropping it would
//!   waste that upload.
//! - An overdue request is cancelled only if its peer looks dead (nothing from it for a whole
//!   timeout, see [`Download::peer_progress`]) or another peer can serve the block; a slow but
//!   live sole source keeps it (its deadline moves on, its slots halve), since asking again
//!   would only put the block at the back of the same queue.
//! - `in_flight <= slots <= max_in_flight_per_peer` when issuing; a timeout halves the peer's
//!   slots (at least 1), each block on time gives one back (AIMD), a reject backs the peer off
//!   for a while.
//! - A block whose request to a peer timed out is not asked of that peer again while another
//!   peer has its piece (until the peer delivers something again), so a stalling peer's
//!   requests are re-issued elsewhere rather than handed back to it.
//! - `piece_sources[piece]` holds the peers that supplied blocks of a piece not yet verified. A
//!   failed piece with a single source gives that peer a strike (`max_strikes` → [`Action::Ban`]);
//!   with several sources the piece goes on parole (refetched from one peer) to find the culprit.
//!   Banned peers stay banned for the life of the download.
//! - [`Action::Completed`] is emitted once, when every piece is verified.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::bitfield::Bitfield;
use crate::metainfo::Metainfo;
use crate::picker::{BlockRef, Layout, PickRng, PiecePicker};

mod issue;
mod late;
mod types;

const TARGET: &str = "shardswarm_torrent::download";
/// First back-off after a reject; doubles per consecutive reject up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

pub use types::{Action, DownloadConfig, DownloadError, PendingRequest, ReceivedBlock};

#[derive(Debug, Clone)]
struct Request<P> {
    peer: P,
    block: BlockRef,
    offset: u32,
    length: u32,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct PeerState {
    in_flight: usize,
    slots: usize,
    /// Upper bound of `slots` for this peer (`limit_peer`).
    cap: usize,
    /// Whether endgame duplicates may go to this peer.
    duplicates: bool,
    reject_streak: u32,
    backoff_pending: bool,
    blocked_until: Option<Instant>,
    /// Blocks whose request to this peer timed out since it last delivered one.
    timed_out: HashSet<BlockRef>,
    /// When data last came from this peer (for any download, see `peer_progress`).
    last_progress: Option<Instant>,
}

/// The download of one torrent (see the module docs).
#[derive(Debug)]
pub struct Download<P> {
    config: DownloadConfig,
    picker: PiecePicker<P>,
    rng: PickRng,
    next_id: u64,
    requests: BTreeMap<u64, Request<P>>,
    late: late::LateRequests<P>,
    by_block: HashMap<BlockRef, Vec<u64>>,
    peers: BTreeMap<P, PeerState>,
    piece_sources: HashMap<u32, BTreeSet<P>>,
    strikes: HashMap<P, u32>,
    banned: BTreeSet<P>,
    actions: VecDeque<Action<P>>,
    cursor: Option<P>,
    completed_sent: bool,
    verified_bytes: u64,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Download<P> {
    /// A download of `meta` that already has the verified pieces `have` (from storage).
    pub fn new(meta: &Metainfo, have: Bitfield, config: DownloadConfig, seed: u64) -> Self {
        let layout = Layout::new(
            meta.info.length,
            meta.info.piece_length,
            meta.piece_count(),
            config.block_size,
        );
        if have.len() != layout.piece_count {
            tracing::warn!(target: TARGET, got = have.len(), expected = layout.piece_count, "have bitfield of wrong length; starting empty");
        }
        let picker = PiecePicker::new(layout, have);
        let verified_bytes = picker
            .have()
            .iter_ones()
            .map(|i| layout.piece_size(i))
            .sum();
        let mut config = config;
        config.max_in_flight_per_peer = config.max_in_flight_per_peer.max(1);
        let mut d = Download {
            config,
            picker,
            rng: PickRng::new(seed),
            next_id: 1,
            requests: BTreeMap::new(),
            late: late::LateRequests::new(),
            by_block: HashMap::new(),
            peers: BTreeMap::new(),
            piece_sources: HashMap::new(),
            strikes: HashMap::new(),
            banned: BTreeSet::new(),
            actions: VecDeque::new(),
            cursor: None,
            completed_sent: false,
            verified_bytes,
        };
        d.check_completed();
        d
    }

    /// A peer is connected and was sent `Interested`. Banned peers are ignored.
    pub fn add_peer(&mut self, peer: P, now: Instant) {
        if self.banned.contains(&peer) || self.peers.contains_key(&peer) {
            return;
        }
        tracing::debug!(target: TARGET, ?peer, ?now, "peer added");
        self.peers.insert(
            peer,
            PeerState {
                in_flight: 0,
                slots: self.config.max_in_flight_per_peer,
                cap: self.config.max_in_flight_per_peer,
                duplicates: true,
                reject_streak: 0,
                backoff_pending: false,
                blocked_until: None,
                timed_out: HashSet::new(),
                last_progress: None,
            },
        );
        self.picker
            .peer_bitfield(peer, Bitfield::new(self.picker.layout().piece_count));
    }

    /// Caps the requests in flight to `peer` at `max_in_flight` (at least 1) and, unless
    /// `duplicates`, sends it no endgame duplicates: for an expensive source such as a seed
    /// whose uplink everyone shares, so pieces other peers have come from them.
    pub fn limit_peer(&mut self, peer: P, max_in_flight: usize, duplicates: bool) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.cap = max_in_flight.clamp(1, self.config.max_in_flight_per_peer.max(1));
            state.slots = state.slots.min(state.cap);
            state.duplicates = duplicates;
        }
    }

    /// The peer's (new) bitfield; ignored for unknown peers or a wrong length. As with
    /// [`Download::peer_have`], requests for its pieces still waiting at an expensive source move
    /// to it (so which bitfield arrived first does not decide who serves).
    pub fn peer_bitfield(&mut self, peer: P, bits: Bitfield) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.picker.peer_bitfield(peer, bits);
        let count = self.picker.layout().piece_count;
        let pieces: Vec<u32> = (0..count)
            .filter(|&i| self.picker.peer_has(peer, i))
            .collect();
        self.move_off_expensive(peer, |piece| pieces.binary_search(&piece).is_ok());
    }

    /// The peer verified one more piece; ignored for unknown peers or out-of-range pieces.
    /// Requests of that piece still waiting at an expensive source (see
    /// [`Download::limit_peer`]) are withdrawn so the blocks come from this peer instead; if the
    /// source already sent one, it still counts when it arrives.
    pub fn peer_have(&mut self, peer: P, piece: u32) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        self.picker.peer_have(peer, piece);
        self.move_off_expensive(peer, |p| p == piece);
    }

    /// Withdraws the requests to expensive sources for pieces `has` says the cheap `peer` has.
    fn move_off_expensive(&mut self, peer: P, has: impl Fn(u32) -> bool) {
        if !self.peers.get(&peer).is_some_and(|s| s.duplicates) {
            return;
        }
        let expensive: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| {
                has(r.block.piece) && self.peers.get(&r.peer).is_some_and(|s| !s.duplicates)
            })
            .map(|(&id, _)| id)
            .collect();
        for id in expensive {
            if let Some(req) = self.requests.get(&id).cloned() {
                self.end_request(id);
                tracing::trace!(target: TARGET, from = ?req.peer, to = ?peer, id, piece = req.block.piece, "request moved off an expensive source");
                self.actions
                    .push_back(Action::Cancel { peer: req.peer, id });
                self.late.insert(id, req);
            }
        }
    }

    /// The peer is gone: its outstanding requests go back to the pool.
    pub fn remove_peer(&mut self, peer: P) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        let ids: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.peer == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.end_request(id);
        }
        self.late.remove_peer(peer);
        for piece in self.picker.remove_peer(peer) {
            self.piece_sources.remove(&piece);
        }
        if self.cursor == Some(peer) {
            self.cursor = None;
        }
        tracing::debug!(target: TARGET, ?peer, "peer removed");
    }

    /// Data arrived from `peer` (a block of any download sharing its connection): it is slow at
    /// worst, not dead, so its overdue requests are not withdrawn while it is the only source.
    pub fn peer_progress(&mut self, peer: P, now: Instant) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.last_progress = Some(now);
        }
    }

    /// The outstanding (or timed-out but remembered) request `id`, to check a `Piece` frame's
    /// length against before writing.
    pub fn pending_request(&self, id: u64) -> Option<PendingRequest<P>> {
        let req = self.requests.get(&id).or_else(|| self.late.get(id));
        req.map(|r| PendingRequest {
            peer: r.peer,
            piece: r.block.piece,
            offset: r.offset,
            length: r.length,
        })
    }

    /// The data of request `id` arrived from `peer` (its length already checked against
    /// [`Download::pending_request`]). Other outstanding copies of the block are cancelled. The
    /// data of a timed-out request counts if the block is still wanted, else it is
    /// [`DownloadError::UnknownRequest`] like any ended id.
    pub fn block_received(
        &mut self,
        peer: P,
        id: u64,
        now: Instant,
    ) -> Result<ReceivedBlock, DownloadError> {
        let (req, on_time) = match self.requests.get(&id) {
            Some(r) if r.peer != peer => return Err(DownloadError::NotYourRequest { id }),
            Some(r) => {
                let on_time = now <= r.deadline;
                (self.end_request_keep_block(id)?, on_time)
            }
            None => {
                let r = self.late.take(id, peer)?;
                if !self.picker.wants(peer, r.block) {
                    return Err(DownloadError::UnknownRequest { id });
                }
                tracing::debug!(target: TARGET, ?peer, id, piece = r.block.piece, "late block still wanted");
                (r, false)
            }
        };
        if let Some(state) = self.peers.get_mut(&peer) {
            state.reject_streak = 0;
            state.timed_out.clear();
            state.last_progress = Some(now);
            if on_time {
                state.slots = (state.slots + 1).min(state.cap);
            }
        }
        let piece_complete = self.picker.mark_received(peer, req.block);
        self.piece_sources
            .entry(req.block.piece)
            .or_default()
            .insert(peer);
        // Endgame: the other copies of this block are no longer needed.
        for other in self.by_block.remove(&req.block).unwrap_or_default() {
            if let Some(r) = self.requests.remove(&other) {
                self.release_slot(r.peer);
                self.actions.push_back(Action::Cancel {
                    peer: r.peer,
                    id: other,
                });
            }
        }
        tracing::trace!(target: TARGET, ?peer, id, piece = req.block.piece, offset = req.offset, piece_complete, "block received");
        Ok(ReceivedBlock {
            piece: req.block.piece,
            offset: req.offset,
            length: req.length,
            piece_complete,
        })
    }

    /// The peer refused request `id`: the block goes back to the pool and the peer is left alone
    /// for a growing back-off. Unknown ids are ignored.
    pub fn request_rejected(&mut self, peer: P, id: u64) {
        if self.requests.get(&id).is_none_or(|r| r.peer != peer) {
            return;
        }
        self.end_request(id);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.reject_streak = state.reject_streak.saturating_add(1);
            state.backoff_pending = true;
        }
    }

    /// The verdict on a complete piece. `ok`: it counts. Not ok: its blocks go back to the pool,
    /// a sole source gets a strike (banned at `max_strikes`), several sources put it on parole.
    pub fn piece_verified(&mut self, piece: u32, ok: bool) {
        let layout = *self.picker.layout();
        if piece >= layout.piece_count || self.picker.have().get(piece) {
            return;
        }
        for block in 0..layout.blocks_in(piece) {
            for id in self
                .by_block
                .get(&BlockRef { piece, block })
                .cloned()
                .unwrap_or_default()
            {
                if let Some(r) = self.requests.get(&id) {
                    self.actions.push_back(Action::Cancel { peer: r.peer, id });
                }
                self.end_request(id);
            }
        }
        let sources = self.piece_sources.remove(&piece).unwrap_or_default();
        self.picker.piece_done(piece, ok);
        if ok {
            self.verified_bytes += layout.piece_size(piece);
            tracing::debug!(target: TARGET, piece, "piece verified");
            self.check_completed();
            return;
        }
        tracing::warn!(target: TARGET, piece, ?sources, "piece failed verification");
        if sources.len() == 1 {
            for peer in sources {
                let strikes = self.strikes.entry(peer).or_insert(0);
                *strikes += 1;
                if *strikes >= self.config.max_strikes {
                    self.ban(peer);
                }
            }
        }
    }

    /// Handles every request whose deadline passed: the peer's slots halve; a slow but live
    /// sole source keeps the request (new deadline), otherwise it is cancelled (its data still
    /// counts if it comes) and the block goes back to the pool for someone else.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(req) = self.requests.get(&id).cloned() else {
                continue;
            };
            let (peer, block) = (req.peer, req.block);
            let timeout = self.config.request_timeout;
            let alive = self
                .peers
                .get(&peer)
                .and_then(|s| s.last_progress)
                .is_some_and(|t| now.saturating_duration_since(t) < timeout);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.slots = (state.slots / 2).max(1);
            }
            if alive && !self.other_source(peer, block) {
                if let Some(r) = self.requests.get_mut(&id) {
                    r.deadline = now + timeout;
                }
                tracing::debug!(target: TARGET, ?peer, id, "request overdue from a slow sole source; kept");
                continue;
            }
            self.end_request(id);
            self.late.insert(id, req);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.timed_out.insert(block);
            }
            tracing::debug!(target: TARGET, ?peer, id, "request timed out");
            self.actions.push_back(Action::Cancel { peer, id });
        }
    }

    /// The next thing to do, or `None` until another event or timeout.
    pub fn poll_action(&mut self, now: Instant) -> Option<Action<P>> {
        for state in self.peers.values_mut() {
            if state.backoff_pending {
                state.backoff_pending = false;
                let exp = state.reject_streak.saturating_sub(1).min(8);
                let backoff = BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
                state.blocked_until = Some(now + backoff);
            }
        }
        if let Some(action) = self.actions.pop_front() {
            return Some(action);
        }
        if self.is_complete() {
            return None;
        }
        self.next_request(now)
    }

    /// When [`Download::handle_timeout`] (or a backed-off peer) next needs attention.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadlines = self.requests.values().map(|r| r.deadline);
        let backoffs = self.peers.values().filter_map(|p| p.blocked_until);
        deadlines.chain(backoffs).min()
    }

    /// Our verified pieces.
    pub fn have(&self) -> &Bitfield {
        self.picker.have()
    }

    /// Bytes of verified pieces.
    pub fn verified_bytes(&self) -> u64 {
        self.verified_bytes
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.picker.have().is_full()
    }

    /// Whether `peer` was banned.
    pub fn is_banned(&self, peer: P) -> bool {
        self.banned.contains(&peer)
    }

    /// Requests outstanding to `peer`.
    pub fn in_flight(&self, peer: P) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.in_flight)
    }

    /// The piece picker (availability, block states), for inspection.
    pub fn picker(&self) -> &PiecePicker<P> {
        &self.picker
    }

    /// Ends request `id` without data: the block is unrequested once.
    fn end_request(&mut self, id: u64) {
        if let Ok(req) = self.end_request_keep_block(id) {
            self.picker.mark_unrequested(req.block);
        }
    }

    /// Removes request `id` from every table and frees its slot, leaving the picker alone.
    fn end_request_keep_block(&mut self, id: u64) -> Result<Request<P>, DownloadError> {
        let req = self
            .requests
            .remove(&id)
            .ok_or(DownloadError::UnknownRequest { id })?;
        if let Some(ids) = self.by_block.get_mut(&req.block) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_block.remove(&req.block);
            }
        }
        self.release_slot(req.peer);
        Ok(req)
    }

    fn release_slot(&mut self, peer: P) {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
    }

    fn ban(&mut self, peer: P) {
        if self.banned.insert(peer) {
            tracing::warn!(target: TARGET, ?peer, "peer banned for bad data");
            self.actions.push_back(Action::Ban { peer });
        }
        self.remove_peer(peer);
    }

    fn check_completed(&mut self) {
        if !self.completed_sent && self.is_complete() {
            self.completed_sent = true;
            tracing::info!(target: TARGET, bytes = self.verified_bytes, "download complete");
            self.actions.push_back(Action::Completed);
        }
    }
}
