//! BEP 3 peer messages after the handshake: `u32` big-endian length, then (unless the length is
//! 0, a keep-alive) a one-byte id and the payload.
//!
//! Invariants of the codec: a length prefix over [`Limits::max_len`] is refused from its four
//! bytes alone, before anything is buffered for the message; a bitfield must be exactly
//! `ceil(pieces / 8)` bytes with zero spare bits and a `have` must name a real piece once the
//! piece count is known; fixed-size messages must have their exact size; `encode` writes exactly
//! `encoded_len` bytes; decoding never panics. Unknown ids (other extensions) are skipped, not
//! refused. After a [`MessageError`] the connection is out of sync: close it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shardswarm_torrent::bitfield::Bitfield;

/// The block size every BitTorrent client requests (2^14); larger requests are refused.
pub const MAX_BLOCK: u32 = 16 * 1024;
/// The default cap on one message: a block plus its 9-byte header, or a BEP 9 metadata piece
/// plus its dictionary, with room to spare.
pub const DEFAULT_MAX_LEN: u32 = MAX_BLOCK + 1024;

const CHOKE: u8 = 0;
const UNCHOKE: u8 = 1;
const INTERESTED: u8 = 2;
const NOT_INTERESTED: u8 = 3;
const HAVE: u8 = 4;
const BITFIELD: u8 = 5;
const REQUEST: u8 = 6;
const PIECE: u8 = 7;
const CANCEL: u8 = 8;
const PORT: u8 = 9;
/// BEP 10's message id.
pub const EXTENDED: u8 = 20;

/// A block: `length` bytes of piece `piece` from `offset` (`request` and `cancel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRequest {
    /// The piece index.
    pub piece: u32,
    /// Byte offset in the piece.
    pub offset: u32,
    /// Bytes.
    pub length: u32,
}

/// One peer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A zero-length message: the connection is alive.
    KeepAlive,
    /// The sender will not answer requests.
    Choke,
    /// The sender answers requests again.
    Unchoke,
    /// The sender wants pieces.
    Interested,
    /// The sender wants nothing.
    NotInterested,
    /// The sender verified one more piece.
    Have {
        /// The piece index.
        piece: u32,
    },
    /// The sender's verified pieces (only right after the handshake).
    Bitfield(Bytes),
    /// Send a block.
    Request(BlockRequest),
    /// A block's data.
    Piece {
        /// The piece index.
        piece: u32,
        /// Byte offset in the piece.
        offset: u32,
        /// The data.
        data: Bytes,
    },
    /// Forget a request.
    Cancel(BlockRequest),
    /// The sender's DHT port (BEP 5; read and ignored).
    Port(u16),
    /// A BEP 10 message: extended id (0 = handshake) and payload.
    Extended {
        /// The extended message id.
        id: u8,
        /// The payload after the id.
        payload: Bytes,
    },
    /// A message of an extension we did not announce (skipped).
    Unknown {
        /// The message id.
        id: u8,
        /// Its payload length.
        len: u32,
    },
}

/// What the decoder accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest message (id + payload) accepted.
    pub max_len: u32,
    /// Pieces of the torrent, once known: checks `bitfield` and `have`.
    pub piece_count: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_len: DEFAULT_MAX_LEN,
            piece_count: None,
        }
    }
}

impl Limits {
    /// Limits for a torrent of `piece_count` pieces: room for its whole bitfield too.
    pub fn for_pieces(piece_count: u32) -> Limits {
        let bitfield = piece_count.div_ceil(8).saturating_add(1);
        Limits {
            max_len: DEFAULT_MAX_LEN.max(bitfield),
            piece_count: Some(piece_count),
        }
    }
}

/// Why bytes from a peer are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The length prefix exceeds the cap.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The declared length.
        len: u32,
        /// The cap.
        max: u32,
    },
    /// A fixed-size message of the wrong size.
    #[error("message id {id}: payload of {len} bytes, expected {expected}")]
    BadLength {
        /// The message id.
        id: u8,
        /// The payload length received.
        len: usize,
        /// What the id requires (the minimum for variable sizes).
        expected: usize,
    },
    /// A bitfield of the wrong size or with spare bits set.
    #[error("bad bitfield: {0}")]
    BadBitfield(#[from] shardswarm_torrent::bitfield::BitfieldError),
    /// A `have` past the last piece.
    #[error("have for piece {piece} of a torrent with {count}")]
    NoSuchPiece {
        /// The piece named.
        piece: u32,
        /// Pieces in the torrent.
        count: u32,
    },
}

impl Message {
    fn payload_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => 1,
            Message::Have { .. } => 5,
            Message::Bitfield(b) => 1 + b.len(),
            Message::Request(_) | Message::Cancel(_) => 13,
            Message::Piece { data, .. } => 9 + data.len(),
            Message::Port(_) => 3,
            Message::Extended { payload, .. } => 2 + payload.len(),
            Message::Unknown { len, .. } => 1 + *len as usize,
        }
    }

    /// Bytes [`Message::encode`] writes: 4 + id + payload.
    pub fn encoded_len(&self) -> usize {
        4 + self.payload_len()
    }

    /// Appends the message to `out`. `Unknown` is written with a zero payload of its length.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.put_u32(u32::try_from(self.payload_len()).unwrap_or(u32::MAX));
        match self {
            Message::KeepAlive => {}
            Message::Choke => out.put_u8(CHOKE),
            Message::Unchoke => out.put_u8(UNCHOKE),
            Message::Interested => out.put_u8(INTERESTED),
            Message::NotInterested => out.put_u8(NOT_INTERESTED),
            Message::Have { piece } => {
                out.put_u8(HAVE);
                out.put_u32(*piece);
            }
            Message::Bitfield(b) => {
                out.put_u8(BITFIELD);
                out.put_slice(b);
            }
            Message::Request(r) | Message::Cancel(r) => {
                out.put_u8(if matches!(self, Message::Request(_)) {
                    REQUEST
                } else {
                    CANCEL
                });
                out.put_u32(r.piece);
                out.put_u32(r.offset);
                out.put_u32(r.length);
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                out.put_u8(PIECE);
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_slice(data);
            }
            Message::Port(p) => {
                out.put_u8(PORT);
                out.put_u16(*p);
            }
            Message::Extended { id, payload } => {
                out.put_u8(EXTENDED);
                out.put_u8(*id);
                out.put_slice(payload);
            }
            Message::Unknown { id, len } => {
                out.put_u8(*id);
                out.put_bytes(0, *len as usize);
            }
        }
    }

    /// The message as a fresh buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Decodes what follows a length prefix (id + payload; empty = keep-alive).
    pub fn decode_payload(mut p: Bytes, limits: &Limits) -> Result<Message, MessageError> {
        if p.is_empty() {
            return Ok(Message::KeepAlive);
        }
        let id = p.get_u8();
        let len = p.len();
        let exact = |expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(MessageError::BadLength { id, len, expected })
            }
        };
        let msg = match id {
            CHOKE => exact(0).map(|()| Message::Choke)?,
            UNCHOKE => exact(0).map(|()| Message::Unchoke)?,
            INTERESTED => exact(0).map(|()| Message::Interested)?,
            NOT_INTERESTED => exact(0).map(|()| Message::NotInterested)?,
            HAVE => {
                exact(4)?;
                let piece = p.get_u32();
                if let Some(count) = limits.piece_count
                    && piece >= count
                {
                    return Err(MessageError::NoSuchPiece { piece, count });
                }
                Message::Have { piece }
            }
            BITFIELD => {
                if let Some(count) = limits.piece_count {
                    Bitfield::from_bytes(&p, count)?;
                }
                Message::Bitfield(p)
            }
            REQUEST | CANCEL => {
                exact(12)?;
                let r = BlockRequest {
                    piece: p.get_u32(),
                    offset: p.get_u32(),
                    length: p.get_u32(),
                };
                if id == REQUEST {
                    Message::Request(r)
                } else {
                    Message::Cancel(r)
                }
            }
            PIECE => {
                if len < 8 {
                    return Err(MessageError::BadLength {
                        id,
                        len,
                        expected: 8,
                    });
                }
                Message::Piece {
                    piece: p.get_u32(),
                    offset: p.get_u32(),
                    data: p,
                }
            }
            PORT => {
                exact(2)?;
                Message::Port(p.get_u16())
            }
            EXTENDED => {
                if len < 1 {
                    return Err(MessageError::BadLength {
                        id,
                        len,
                        expected: 1,
                    });
                }
                Message::Extended {
                    id: p.get_u8(),
                    payload: p,
                }
            }
            other => Message::Unknown {
                id: other,
                len: u32::try_from(len).unwrap_or(u32::MAX),
            },
        };
        Ok(msg)
    }
}

/// An incremental decoder: push bytes as they arrive, take messages out.
#[derive(Debug, Default)]
pub struct MessageDecoder {
    buf: BytesMut,
    limits: Limits,
}

impl MessageDecoder {
    /// An empty decoder with `limits`.
    pub fn new(limits: Limits) -> MessageDecoder {
        MessageDecoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed. The length prefix is
    /// checked as soon as its 4 bytes are here.
    pub fn next_message(&mut self) -> Result<Option<Message>, MessageError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len > self.limits.max_len {
            return Err(MessageError::TooLong {
                len,
                max: self.limits.max_len,
            });
        }
        let len = len as usize;
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let payload = self.buf.split_to(len).freeze();
        Message::decode_payload(payload, &self.limits).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_the_bep3_layout() {
        let m = Message::Request(BlockRequest {
            piece: 1,
            offset: 0x4000,
            length: 0x4000,
        });
        assert_eq!(
            m.to_vec(),
            [0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]
        );
        assert_eq!(Message::KeepAlive.to_vec(), [0, 0, 0, 0]);
        assert_eq!(Message::Interested.to_vec(), [0, 0, 0, 1, 2]);
    }

    #[test]
    fn oversized_prefix_is_refused_before_buffering() {
        let mut d = MessageDecoder::new(Limits::default());
        d.push(&[0x7f, 0xff, 0xff, 0xff, PIECE]);
        assert!(matches!(
            d.next_message(),
            Err(MessageError::TooLong { .. })
        ));
        assert!(d.buf.capacity() < 4096);
    }

    #[test]
    fn bitfield_and_have_are_checked_against_the_piece_count() {
        let limits = Limits::for_pieces(10);
        let mut d = MessageDecoder::new(limits);
        d.push(&Message::Bitfield(Bytes::from_static(&[0xff, 0xc0])).to_vec());
        assert!(d.next_message().unwrap().is_some());
        d.push(&Message::Bitfield(Bytes::from_static(&[0xff, 0xe0])).to_vec());
        assert!(matches!(
            d.next_message(),
            Err(MessageError::BadBitfield(_))
        ));
        let mut d = MessageDecoder::new(limits);
        d.push(&Message::Bitfield(Bytes::from_static(&[0xff])).to_vec());
        assert!(matches!(
            d.next_message(),
            Err(MessageError::BadBitfield(_))
        ));
        let mut d = MessageDecoder::new(limits);
        d.push(&Message::Have { piece: 10 }.to_vec());
        assert!(matches!(
            d.next_message(),
            Err(MessageError::NoSuchPiece { .. })
        ));
    }

    #[test]
    fn unknown_ids_are_skipped_and_fixed_sizes_enforced() {
        let mut d = MessageDecoder::new(Limits::default());
        d.push(&[0, 0, 0, 3, 13, 1, 2]);
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Unknown { id: 13, len: 2 })
        );
        d.push(&[0, 0, 0, 2, CHOKE, 0]);
        assert!(matches!(
            d.next_message(),
            Err(MessageError::BadLength { id: CHOKE, .. })
        ));
    }

    #[test]
    fn large_torrents_get_room_for_their_bitfield() {
        let l = Limits::for_pieces(1_000_000);
        assert_eq!(l.max_len, 125_001);
        assert_eq!(Limits::for_pieces(8).max_len, DEFAULT_MAX_LEN);
    }
}
