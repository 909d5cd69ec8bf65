//! The downloading side of one BitTorrent connection (we fetch pieces from a regular client),
//! presented to the transfer actor as one more peer of the piece engine.
//!
//! The actor speaks the piece protocol's frames to it exactly as to a libp2p peer: `Interested`,
//! `Request` (blocks of the engine's size, 256 KiB by default), `Cancel`. This session splits
//! each request into [`MAX_BLOCK`] BitTorrent requests (what every client serves), pipelines them
//! within the client's `reqq`, reassembles the block and hands it up as one [`Frame::Piece`]:
//! the engine's slots, timeouts, SHA-1 checks and bans apply unchanged.
//!
//! Choking maps onto the engine's peer set: while the client chokes us, or the connection is
//! down, the engine does not know this peer (it was told [`Frame::NotHere`] and its outstanding
//! requests were rejected); when the client unchokes us, the engine gets the client's whole
//! bitfield again ([`Frame::Bitfield`]) and starts requesting. So the session can outlive
//! connections: the adapter reconnects and calls [`Fetch::connected`] again.
//!
//! Invariants:
//! - `published` ⇔ connected, the engine is interested and the client unchokes us.
//! - Every engine request id in `pending` has each of its sub-blocks either queued, outstanding
//!   at the client (in `subs`) or already copied in; it ends exactly once (complete block up,
//!   engine cancel, or a `Reject` up when the client chokes or the connection drops).
//! - At most `max_outstanding()` sub-requests are outstanding; only while unchoked.
//! - A block arriving for no outstanding sub-request (late after a cancel) is dropped; one of
//!   the wrong length is a protocol error.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use shardswarm_proto::InfoHash;
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::wire::{Frame, RejectReason};

use crate::extension::{ExtendedHandshake, HANDSHAKE_ID};
use crate::handshake::{Handshake, HandshakeError};
use crate::message::{BlockRequest, Limits, MAX_BLOCK, Message};

/// The largest engine request accepted (it is buffered whole while its sub-blocks arrive).
pub const MAX_ASSEMBLY: u32 = 4 * 1024 * 1024;
/// Sub-requests outstanding at a client that announced no `reqq`.
const DEFAULT_REQQ: u32 = 64;
/// Most sub-requests outstanding at one client, whatever its `reqq`.
const MAX_OUTSTANDING: u32 = 128;

/// Something to do for a [`Fetch`] session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutput {
    /// Write this message to the client.
    Peer(Message),
    /// Send this frame to the transfer actor.
    Engine(Frame),
}

/// Why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The client answered for another torrent (or not in BitTorrent).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A block of another length than requested.
    #[error("block {piece}+{offset} of {got} bytes, requested {want}")]
    BadBlock {
        /// The piece.
        piece: u32,
        /// Offset in the piece.
        offset: u32,
        /// Bytes received.
        got: usize,
        /// Bytes requested.
        want: u32,
    },
}

#[derive(Debug)]
struct Assembly {
    offset: u32,
    data: Vec<u8>,
    missing: u32,
}

/// The download from one client (see the module docs).
#[derive(Debug)]
pub struct Fetch {
    info_hash: InfoHash,
    length: u64,
    piece_length: u64,
    bits: Bitfield,
    connected: bool,
    reqq: u32,
    engine_interested: bool,
    peer_choking: bool,
    published: bool,
    pending: HashMap<u64, Assembly>,
    /// Outstanding sub-requests: block → engine request id.
    subs: HashMap<(u32, u32), (u64, u32)>,
    queue: VecDeque<(u64, BlockRequest)>,
    out: VecDeque<FetchOutput>,
}

impl Fetch {
    /// A session for `meta` (not connected yet).
    pub fn new(meta: &Metainfo) -> Fetch {
        Fetch {
            info_hash: meta.info_hash(),
            length: meta.info.length,
            piece_length: meta.info.piece_length,
            bits: Bitfield::new(meta.piece_count()),
            connected: false,
            reqq: DEFAULT_REQQ,
            engine_interested: false,
            peer_choking: true,
            published: false,
            pending: HashMap::new(),
            subs: HashMap::new(),
            queue: VecDeque::new(),
            out: VecDeque::new(),
        }
    }

    /// The torrent.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// What the message decoder must enforce for this torrent.
    pub fn limits(&self) -> Limits {
        Limits::for_pieces(self.bits.len())
    }

    /// Whether the engine currently counts this client as a peer.
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Sub-requests outstanding at the client.
    pub fn outstanding(&self) -> usize {
        self.subs.len()
    }

    fn max_outstanding(&self) -> usize {
        self.reqq.clamp(1, MAX_OUTSTANDING) as usize
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<FetchOutput> {
        self.out.pop_front()
    }

    /// The client's handshake arrived on a new connection (ours was sent).
    pub fn connected(&mut self, peer: &Handshake, client: &str) -> Result<(), FetchError> {
        if peer.info_hash != self.info_hash {
            return Err(HandshakeError::WrongTorrent.into());
        }
        self.connected = true;
        self.peer_choking = true;
        self.bits = Bitfield::new(self.bits.len());
        self.reqq = DEFAULT_REQQ;
        if peer.supports_extensions() {
            let hs = ExtendedHandshake {
                client: Some(client.to_owned()),
                ..Default::default()
            };
            self.out.push_back(FetchOutput::Peer(Message::Extended {
                id: HANDSHAKE_ID,
                payload: hs.encode().into(),
            }));
        }
        if self.engine_interested {
            self.out.push_back(FetchOutput::Peer(Message::Interested));
        }
        Ok(())
    }

    /// The connection is gone: the engine forgets this peer until the next one is unchoked.
    pub fn disconnected(&mut self) {
        self.unpublish();
        self.connected = false;
        self.peer_choking = true;
    }

    fn maybe_publish(&mut self) {
        if self.connected && self.engine_interested && !self.peer_choking && !self.published {
            self.published = true;
            self.out.push_back(FetchOutput::Engine(Frame::Bitfield {
                info_hash: self.info_hash,
                bits: self.bits.as_bytes().to_vec(),
            }));
        }
    }

    fn unpublish(&mut self) {
        if !self.published {
            return;
        }
        self.published = false;
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.out.push_back(FetchOutput::Engine(Frame::Reject {
                id,
                reason: RejectReason::Choked.code(),
            }));
        }
        self.pending.clear();
        self.subs.clear();
        self.queue.clear();
        self.out.push_back(FetchOutput::Engine(Frame::NotHere {
            info_hash: self.info_hash,
        }));
    }

    fn pump(&mut self) {
        while !self.peer_choking && self.subs.len() < self.max_outstanding() {
            let Some((id, r)) = self.queue.pop_front() else {
                return;
            };
            self.subs.insert((r.piece, r.offset), (id, r.length));
            self.out.push_back(FetchOutput::Peer(Message::Request(r)));
        }
    }

    fn reject(&mut self, id: u64, reason: RejectReason) {
        self.out.push_back(FetchOutput::Engine(Frame::Reject {
            id,
            reason: reason.code(),
        }));
    }

    /// A frame from the transfer actor (this session's "download stream").
    pub fn on_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Interested { info_hash } if info_hash == self.info_hash => {
                if !self.engine_interested {
                    self.engine_interested = true;
                    if self.connected {
                        self.out.push_back(FetchOutput::Peer(Message::Interested));
                    }
                }
                self.maybe_publish();
            }
            // One connection carries one torrent; the actor asks every peer about all of its.
            Frame::Interested { info_hash } | Frame::GetMetadata { info_hash } => {
                self.out
                    .push_back(FetchOutput::Engine(Frame::NotHere { info_hash }));
            }
            Frame::Request {
                id,
                info_hash,
                piece,
                offset,
                length,
            } => self.on_request(id, info_hash, piece, offset, length),
            Frame::Cancel { id } => {
                if self.pending.remove(&id).is_none() {
                    return;
                }
                let mut cancelled: Vec<BlockRequest> = self
                    .subs
                    .iter()
                    .filter(|(_, (rid, _))| *rid == id)
                    .map(|(&(piece, offset), &(_, length))| BlockRequest {
                        piece,
                        offset,
                        length,
                    })
                    .collect();
                cancelled.sort_unstable();
                for r in cancelled {
                    self.subs.remove(&(r.piece, r.offset));
                    self.out.push_back(FetchOutput::Peer(Message::Cancel(r)));
                }
                self.queue.retain(|(rid, _)| *rid != id);
                self.pump();
            }
            _ => {}
        }
    }

    fn on_request(&mut self, id: u64, info_hash: InfoHash, piece: u32, offset: u32, length: u32) {
        if info_hash != self.info_hash || !self.published || self.pending.contains_key(&id) {
            self.reject(id, RejectReason::Choked);
            return;
        }
        let start = u64::from(piece).saturating_mul(self.piece_length);
        let piece_size = self.piece_length.min(self.length.saturating_sub(start));
        let end = u64::from(offset) + u64::from(length);
        if piece >= self.bits.len() || length == 0 || length > MAX_ASSEMBLY || end > piece_size {
            self.reject(id, RejectReason::BadRange);
            return;
        }
        if !self.bits.get(piece) {
            self.reject(id, RejectReason::DontHave);
            return;
        }
        let mut at = offset;
        let mut parts = 0;
        while at < offset + length {
            let len = MAX_BLOCK.min(offset + length - at);
            self.queue.push_back((
                id,
                BlockRequest {
                    piece,
                    offset: at,
                    length: len,
                },
            ));
            at += len;
            parts += 1;
        }
        self.pending.insert(
            id,
            Assembly {
                offset,
                data: vec![0; length as usize],
                missing: parts,
            },
        );
        self.pump();
    }

    /// A message from the client.
    pub fn on_message(&mut self, msg: Message) -> Result<(), FetchError> {
        match msg {
            Message::Choke => {
                self.peer_choking = true;
                self.unpublish();
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.maybe_publish();
                self.pump();
            }
            Message::Bitfield(b) => {
                // The decoder checked the length against the piece count.
                if let Ok(bits) = Bitfield::from_bytes(&b, self.bits.len()) {
                    self.bits = bits;
                    if self.published {
                        self.out.push_back(FetchOutput::Engine(Frame::Bitfield {
                            info_hash: self.info_hash,
                            bits: self.bits.as_bytes().to_vec(),
                        }));
                    }
                }
            }
            Message::Have { piece } => {
                if self.bits.set(piece) && self.published {
                    self.out.push_back(FetchOutput::Engine(Frame::Have {
                        info_hash: self.info_hash,
                        piece,
                    }));
                }
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(piece, offset, data)?,
            Message::Extended { id, payload } if id == HANDSHAKE_ID => {
                if let Ok(hs) = ExtendedHandshake::decode(&payload)
                    && let Some(reqq) = hs.reqq
                {
                    self.reqq = reqq;
                    self.pump();
                }
            }
            // We never upload on a connection we opened, and announced no extensions.
            Message::KeepAlive
            | Message::Interested
            | Message::NotInterested
            | Message::Request(_)
            | Message::Cancel(_)
            | Message::Port(_)
            | Message::Extended { .. }
            | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    fn on_block(&mut self, piece: u32, offset: u32, data: Bytes) -> Result<(), FetchError> {
        let Some(&(id, want)) = self.subs.get(&(piece, offset)) else {
            tracing::trace!(target: "shardswarm::bt", piece, offset, "unrequested block dropped");
            return Ok(());
        };
        if data.len() != want as usize {
            return Err(FetchError::BadBlock {
                piece,
                offset,
                got: data.len(),
                want,
            });
        }
        self.subs.remove(&(piece, offset));
        if let Some(asm) = self.pending.get_mut(&id) {
            let at = (offset - asm.offset) as usize;
            asm.data[at..at + data.len()].copy_from_slice(&data);
            asm.missing -= 1;
            if asm.missing == 0
                && let Some(asm) = self.pending.remove(&id)
            {
                self.out.push_back(FetchOutput::Engine(Frame::Piece {
                    id,
                    data: asm.data.into(),
                }));
            }
        }
        self.pump();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
