//! The serving side of one BitTorrent connection (a regular client downloading from us),
//! translated onto the piece engine's frames.
//!
//! The adapter performs the handshake, learns the torrent's metadata and our verified pieces from
//! the transfer actor, then builds a [`Serve`] and feeds it the client's messages
//! ([`Serve::on_message`]) and the actor's frames ([`Serve::on_frame`]), writing out what
//! [`Serve::poll_output`] returns. A client's `request` becomes a [`Frame::Request`] with an id
//! chosen here; the actor's [`Frame::Piece`] for that id goes back as a `piece` message.
//!
//! Invariants:
//! - Every id in `requests` is in `by_block` under its block and vice versa; each was sent to
//!   the actor exactly once and ends exactly once (data, cancel, choke or reject).
//! - At most [`REQQ`] requests are outstanding; requests while choked, for pieces we do not have,
//!   or duplicates are dropped (BEP 3 without the fast extension has no way to refuse).
//! - A request outside its piece, empty, or longer than [`MAX_BLOCK`] is a protocol error.
//! - Only an unchoked peer gets data; choking cancels its outstanding requests at the actor.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use shardswarm_proto::InfoHash;
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::wire::Frame;

use crate::extension::{
    ExtendedHandshake, HANDSHAKE_ID, MetadataMsg, OUR_UT_METADATA_ID, UT_METADATA, metadata_piece,
    metadata_piece_count,
};
use crate::handshake::Handshake;
use crate::message::{BlockRequest, Limits, MAX_BLOCK, Message};

/// Requests a client may keep outstanding (announced as `reqq`; the actor queues up to 256).
pub const REQQ: u32 = 250;

/// Something to do for a [`Serve`] session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeOutput {
    /// Write this message to the client.
    Peer(Message),
    /// Send this frame to the transfer actor.
    Engine(Frame),
}

/// Why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// A request outside its piece, empty or over [`MAX_BLOCK`].
    #[error("bad request {0:?}")]
    BadRequest(BlockRequest),
    /// A malformed extension message.
    #[error("bad extension message: {0}")]
    BadExtension(String),
    /// The actor no longer has the torrent.
    #[error("torrent no longer served")]
    Gone,
}

/// One client connection being served (see the module docs).
#[derive(Debug)]
pub struct Serve {
    info_hash: InfoHash,
    info: Bytes,
    length: u64,
    piece_length: u64,
    have: Bitfield,
    peer_ut_metadata: Option<u8>,
    peer_interested: bool,
    choked: bool,
    requests: HashMap<u64, BlockRequest>,
    by_block: HashMap<BlockRequest, u64>,
    next_id: u64,
    out: VecDeque<ServeOutput>,
}

impl Serve {
    /// A session for `meta`, holding the verified pieces `have`, after the client's handshake
    /// `peer`. Queues our extended handshake (if the client speaks BEP 10) and our bitfield.
    pub fn new(meta: &Metainfo, have: Bitfield, peer: &Handshake, client: &str) -> Serve {
        let info = Bytes::from(meta.info_bytes());
        let mut s = Serve {
            info_hash: meta.info_hash(),
            length: meta.info.length,
            piece_length: meta.info.piece_length,
            have: if have.len() == meta.piece_count() {
                have
            } else {
                Bitfield::new(meta.piece_count())
            },
            info,
            peer_ut_metadata: None,
            peer_interested: false,
            choked: true,
            requests: HashMap::new(),
            by_block: HashMap::new(),
            next_id: 0,
            out: VecDeque::new(),
        };
        if peer.supports_extensions() {
            let mut hs = ExtendedHandshake {
                metadata_size: Some(s.info.len() as u64),
                reqq: Some(REQQ),
                client: Some(client.to_owned()),
                ..Default::default()
            };
            hs.m.insert(UT_METADATA.to_owned(), OUR_UT_METADATA_ID);
            s.out.push_back(ServeOutput::Peer(Message::Extended {
                id: HANDSHAKE_ID,
                payload: hs.encode().into(),
            }));
        }
        s.out.push_back(ServeOutput::Peer(Message::Bitfield(
            Bytes::copy_from_slice(s.have.as_bytes()),
        )));
        s
    }

    /// What the message decoder must enforce for this torrent.
    pub fn limits(&self) -> Limits {
        Limits::for_pieces(self.have.len())
    }

    /// The torrent.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// Interested and choked: the adapter should find an upload slot and call
    /// [`Serve::unchoke`].
    pub fn wants_slot(&self) -> bool {
        self.peer_interested && self.choked
    }

    /// Whether the client is unchoked (holds an upload slot).
    pub fn holds_slot(&self) -> bool {
        !self.choked
    }

    /// Requests outstanding at the actor.
    pub fn outstanding(&self) -> usize {
        self.requests.len()
    }

    /// Gives the client an upload slot.
    pub fn unchoke(&mut self) {
        if self.choked {
            self.choked = false;
            self.out.push_back(ServeOutput::Peer(Message::Unchoke));
        }
    }

    /// Takes the slot back: the client's outstanding requests are cancelled at the actor.
    pub fn choke(&mut self) {
        if self.choked {
            return;
        }
        self.choked = true;
        self.out.push_back(ServeOutput::Peer(Message::Choke));
        let mut ids: Vec<u64> = self.requests.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.end(id);
            self.out
                .push_back(ServeOutput::Engine(Frame::Cancel { id }));
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<ServeOutput> {
        self.out.pop_front()
    }

    fn piece_size(&self, piece: u32) -> u64 {
        let start = u64::from(piece).saturating_mul(self.piece_length);
        self.piece_length.min(self.length.saturating_sub(start))
    }

    fn end(&mut self, id: u64) -> Option<BlockRequest> {
        let r = self.requests.remove(&id)?;
        self.by_block.remove(&r);
        Some(r)
    }

    /// A message from the client.
    pub fn on_message(&mut self, msg: Message) -> Result<(), ServeError> {
        match msg {
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => {
                self.peer_interested = false;
                self.choke();
            }
            Message::Request(r) => self.on_request(r)?,
            Message::Cancel(r) => {
                if let Some(id) = self.by_block.get(&r).copied() {
                    self.end(id);
                    self.out
                        .push_back(ServeOutput::Engine(Frame::Cancel { id }));
                }
            }
            Message::Extended { id, payload } => self.on_extended(id, payload)?,
            // We never download on a connection we accepted: the client's pieces, choking and
            // the rest do not matter here.
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Have { .. }
            | Message::Bitfield(_)
            | Message::Piece { .. }
            | Message::Port(_)
            | Message::Unknown { .. } => {}
        }
        Ok(())
    }

    fn on_request(&mut self, r: BlockRequest) -> Result<(), ServeError> {
        let end = u64::from(r.offset) + u64::from(r.length);
        if r.piece >= self.have.len()
            || r.length == 0
            || r.length > MAX_BLOCK
            || end > self.piece_size(r.piece)
        {
            return Err(ServeError::BadRequest(r));
        }
        if self.choked
            || !self.have.get(r.piece)
            || self.by_block.contains_key(&r)
            || self.requests.len() >= REQQ as usize
        {
            tracing::trace!(target: "shardswarm::bt", ?r, choked = self.choked, "request dropped");
            return Ok(());
        }
        self.next_id += 1;
        let id = self.next_id;
        self.requests.insert(id, r);
        self.by_block.insert(r, id);
        self.out.push_back(ServeOutput::Engine(Frame::Request {
            id,
            info_hash: self.info_hash,
            piece: r.piece,
            offset: r.offset,
            length: r.length,
        }));
        Ok(())
    }

    fn on_extended(&mut self, id: u8, payload: Bytes) -> Result<(), ServeError> {
        if id == HANDSHAKE_ID {
            let hs = ExtendedHandshake::decode(&payload)
                .map_err(|e| ServeError::BadExtension(e.to_string()))?;
            self.peer_ut_metadata = hs.ut_metadata();
            return Ok(());
        }
        if id != OUR_UT_METADATA_ID {
            return Ok(());
        }
        let msg =
            MetadataMsg::decode(payload).map_err(|e| ServeError::BadExtension(e.to_string()))?;
        let (MetadataMsg::Request { piece }, Some(reply_id)) = (msg, self.peer_ut_metadata) else {
            return Ok(());
        };
        let reply = match metadata_piece(&self.info, piece) {
            Some(data) => MetadataMsg::Data {
                piece,
                total_size: self.info.len() as u64,
                data: self.info.slice_ref(data),
            },
            None => MetadataMsg::Reject { piece },
        };
        tracing::debug!(target: "shardswarm::bt", piece, of = metadata_piece_count(self.info.len()), "metadata piece requested");
        self.out.push_back(ServeOutput::Peer(Message::Extended {
            id: reply_id,
            payload: reply.encode().into(),
        }));
        Ok(())
    }

    /// A frame from the transfer actor for this connection.
    pub fn on_frame(&mut self, frame: Frame) -> Result<(), ServeError> {
        match frame {
            Frame::Piece { id, data } => {
                if let Some(r) = self.end(id)
                    && data.len() == r.length as usize
                    && !self.choked
                {
                    self.out.push_back(ServeOutput::Peer(Message::Piece {
                        piece: r.piece,
                        offset: r.offset,
                        data,
                    }));
                }
            }
            Frame::Reject { id, .. } => {
                self.end(id);
            }
            Frame::Have { info_hash, piece }
                if info_hash == self.info_hash && self.have.set(piece) =>
            {
                self.out
                    .push_back(ServeOutput::Peer(Message::Have { piece }));
            }
            Frame::NotHere { info_hash } if info_hash == self.info_hash => {
                return Err(ServeError::Gone);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
