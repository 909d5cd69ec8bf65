//! Frames of the piece protocol [`PROTOCOL`] (`/shardswarm/pieces/1.0.0`).
//!
//! One long-lived stream per direction per peer pair: the opener downloads, the acceptor serves.
//! Every frame is `u32` big-endian length (of what follows) + `u8` type + body; integers are big
//! endian, info-hashes 20 raw bytes. Both sides start with [`Frame::Hello`]. Requests carry an id
//! chosen by the downloader; `Piece`, `Reject` and `Cancel` name it.
//!
//! Invariants of the codec: a frame longer than [`MAX_FRAME_LEN`] is refused from its length
//! prefix alone, before anything is allocated for it; the decoder never buffers more than one
//! frame plus what the caller pushed; `encode` writes exactly `encoded_len` bytes; decoding
//! never panics. After a [`WireError`] the stream is out of sync: close it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use shardswarm_proto::InfoHash;

/// The libp2p protocol id of the piece exchange.
pub const PROTOCOL: &str = "/shardswarm/pieces/1.0.0";
/// The version sent in [`Frame::Hello`].
pub const VERSION: u16 = 1;
/// The largest block a `Request` may ask for.
pub const MAX_BLOCK_LEN: u32 = 8 * 1024 * 1024;
/// The largest frame (type byte + body) accepted: a maximal block plus headroom.
pub const MAX_FRAME_LEN: usize = MAX_BLOCK_LEN as usize + 64;

const T_HELLO: u8 = 0;
const T_INTERESTED: u8 = 1;
const T_BITFIELD: u8 = 2;
const T_HAVE: u8 = 3;
const T_NOT_HERE: u8 = 4;
const T_REQUEST: u8 = 5;
const T_PIECE: u8 = 6;
const T_REJECT: u8 = 7;
const T_CANCEL: u8 = 8;
const T_GET_METADATA: u8 = 9;
const T_METADATA: u8 = 10;

/// Why a request was refused, as carried in [`Frame::Reject`]'s `reason` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// No upload slot free (or choked): try again later.
    Choked = 1,
    /// The uploader does not have that (verified) piece or torrent.
    DontHave = 2,
    /// Offset/length outside the piece, or longer than [`MAX_BLOCK_LEN`].
    BadRange = 3,
}

impl RejectReason {
    /// The reason for a wire byte, `None` for codes this version does not know.
    pub fn from_code(code: u8) -> Option<RejectReason> {
        match code {
            1 => Some(RejectReason::Choked),
            2 => Some(RejectReason::DontHave),
            3 => Some(RejectReason::BadRange),
            _ => None,
        }
    }

    /// The wire byte.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// One message of the piece protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The first frame each side sends.
    Hello {
        /// Protocol version ([`VERSION`]).
        version: u16,
    },
    /// Downloader → uploader: "I want this torrent, tell me what you have".
    Interested {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// Uploader → downloader: the verified pieces (may be sent again at any time).
    Bitfield {
        /// The torrent.
        info_hash: InfoHash,
        /// BEP 3 bitfield bytes (see [`crate::bitfield::Bitfield::from_bytes`]).
        bits: Vec<u8>,
    },
    /// Uploader → downloader: one more piece verified.
    Have {
        /// The torrent.
        info_hash: InfoHash,
        /// The piece index.
        piece: u32,
    },
    /// Uploader → downloader: nothing of this torrent here.
    NotHere {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// Downloader → uploader: send `length` bytes of `piece` from `offset`.
    Request {
        /// Chosen by the downloader, echoed in the answer.
        id: u64,
        /// The torrent.
        info_hash: InfoHash,
        /// The piece index.
        piece: u32,
        /// Byte offset inside the piece.
        offset: u32,
        /// Bytes wanted (at most [`MAX_BLOCK_LEN`]).
        length: u32,
    },
    /// Uploader → downloader: the data of request `id` (the receiver checks its length).
    Piece {
        /// The request answered.
        id: u64,
        /// The block.
        data: Bytes,
    },
    /// Uploader → downloader: request `id` will not be served.
    Reject {
        /// The request refused.
        id: u64,
        /// A [`RejectReason`] code (unknown codes are kept as they are).
        reason: u8,
    },
    /// Downloader → uploader: forget request `id`.
    Cancel {
        /// The request withdrawn.
        id: u64,
    },
    /// Ask for the bencoded info dictionary of a torrent.
    GetMetadata {
        /// The torrent.
        info_hash: InfoHash,
    },
    /// The bencoded info dictionary; the receiver checks it with
    /// [`crate::Metainfo::from_info_bytes`]`(info, Some(info_hash))`.
    Metadata {
        /// The torrent.
        info_hash: InfoHash,
        /// The info dictionary bytes.
        info: Vec<u8>,
    },
}

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLong {
        /// The declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A zero length prefix (no type byte).
    #[error("empty frame (no type byte)")]
    Empty,
    /// A type byte this version does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// A fixed-size body of the wrong size, or a body too short for its header.
    #[error("frame type {ty}: body of {len} bytes, expected {expected}")]
    BadBodyLength {
        /// The frame type.
        ty: u8,
        /// The body length received.
        len: usize,
        /// What the type requires (the minimum for variable-size bodies).
        expected: usize,
    },
    /// The input ended inside a frame (only from [`FrameDecoder::finish`]).
    #[error("stream ended inside a frame of type {ty:?} ({have} of {need} bytes)")]
    Truncated {
        /// The frame type, if its byte arrived.
        ty: Option<u8>,
        /// Bytes of the frame (including the length prefix) received.
        have: usize,
        /// Bytes the frame needs (or 4 while the prefix is incomplete).
        need: usize,
    },
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello { .. } => T_HELLO,
            Frame::Interested { .. } => T_INTERESTED,
            Frame::Bitfield { .. } => T_BITFIELD,
            Frame::Have { .. } => T_HAVE,
            Frame::NotHere { .. } => T_NOT_HERE,
            Frame::Request { .. } => T_REQUEST,
            Frame::Piece { .. } => T_PIECE,
            Frame::Reject { .. } => T_REJECT,
            Frame::Cancel { .. } => T_CANCEL,
            Frame::GetMetadata { .. } => T_GET_METADATA,
            Frame::Metadata { .. } => T_METADATA,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Frame::Hello { .. } => 2,
            Frame::Interested { .. } | Frame::NotHere { .. } | Frame::GetMetadata { .. } => 20,
            Frame::Bitfield { bits, .. } => 20 + bits.len(),
            Frame::Have { .. } => 24,
            Frame::Request { .. } => 40,
            Frame::Piece { data, .. } => 8 + data.len(),
            Frame::Reject { .. } => 9,
            Frame::Cancel { .. } => 8,
            Frame::Metadata { info, .. } => 20 + info.len(),
        }
    }

    /// Bytes [`Frame::encode`] writes: 4 (length) + 1 (type) + body.
    pub fn encoded_len(&self) -> usize {
        5 + self.body_len()
    }

    /// Appends the frame to `out`. The caller keeps frames under [`MAX_FRAME_LEN`] (blocks of at
    /// most [`MAX_BLOCK_LEN`], metadata of at most `MAX_FRAME_LEN - 21` bytes); a longer frame is
    /// encoded all the same and refused by the receiver.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let len = u32::try_from(1 + self.body_len()).unwrap_or(u32::MAX);
        out.put_u32(len);
        out.put_u8(self.type_byte());
        match self {
            Frame::Hello { version } => out.put_u16(*version),
            Frame::Interested { info_hash }
            | Frame::NotHere { info_hash }
            | Frame::GetMetadata { info_hash } => out.put_slice(&info_hash.0),
            Frame::Bitfield { info_hash, bits } => {
                out.put_slice(&info_hash.0);
                out.put_slice(bits);
            }
            Frame::Have { info_hash, piece } => {
                out.put_slice(&info_hash.0);
                out.put_u32(*piece);
            }
            Frame::Request {
                id,
                info_hash,
                piece,
                offset,
                length,
            } => {
                out.put_u64(*id);
                out.put_slice(&info_hash.0);
                out.put_u32(*piece);
                out.put_u32(*offset);
                out.put_u32(*length);
            }
            Frame::Piece { id, data } => {
                out.put_u64(*id);
                out.put_slice(data);
            }
            Frame::Reject { id, reason } => {
                out.put_u64(*id);
                out.put_u8(*reason);
            }
            Frame::Cancel { id } => out.put_u64(*id),
            Frame::Metadata { info_hash, info } => {
                out.put_slice(&info_hash.0);
                out.put_slice(info);
            }
        }
    }

    /// The frame as a fresh buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Checks a length prefix: the number of bytes (type + body) that follow it.
    pub fn check_len(len: u32) -> Result<usize, WireError> {
        let len = len as usize;
        if len > MAX_FRAME_LEN {
            return Err(WireError::TooLong {
                len: len as u64,
                max: MAX_FRAME_LEN,
            });
        }
        if len == 0 {
            return Err(WireError::Empty);
        }
        Ok(len)
    }

    /// Decodes the part after the length prefix (type byte + body), for adapters that read the
    /// prefix themselves (check it with [`Frame::check_len`] first).
    pub fn decode_payload(mut payload: Bytes) -> Result<Frame, WireError> {
        if payload.is_empty() {
            return Err(WireError::Empty);
        }
        let ty = payload.get_u8();
        let len = payload.len();
        let exact = |expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(WireError::BadBodyLength { ty, len, expected })
            }
        };
        let at_least = |expected: usize| {
            if len >= expected {
                Ok(())
            } else {
                Err(WireError::BadBodyLength { ty, len, expected })
            }
        };
        let frame = match ty {
            T_HELLO => {
                exact(2)?;
                Frame::Hello {
                    version: payload.get_u16(),
                }
            }
            T_INTERESTED => {
                exact(20)?;
                Frame::Interested {
                    info_hash: take_hash(&mut payload),
                }
            }
            T_BITFIELD => {
                at_least(20)?;
                Frame::Bitfield {
                    info_hash: take_hash(&mut payload),
                    bits: payload.to_vec(),
                }
            }
            T_HAVE => {
                exact(24)?;
                Frame::Have {
                    info_hash: take_hash(&mut payload),
                    piece: payload.get_u32(),
                }
            }
            T_NOT_HERE => {
                exact(20)?;
                Frame::NotHere {
                    info_hash: take_hash(&mut payload),
                }
            }
            T_REQUEST => {
                exact(40)?;
                Frame::Request {
                    id: payload.get_u64(),
                    info_hash: take_hash(&mut payload),
                    piece: payload.get_u32(),
                    offset: payload.get_u32(),
                    length: payload.get_u32(),
                }
            }
            T_PIECE => {
                at_least(8)?;
                Frame::Piece {
                    id: payload.get_u64(),
                    data: payload,
                }
            }
            T_REJECT => {
                exact(9)?;
                Frame::Reject {
                    id: payload.get_u64(),
                    reason: payload.get_u8(),
                }
            }
            T_CANCEL => {
                exact(8)?;
                Frame::Cancel {
                    id: payload.get_u64(),
                }
            }
            T_GET_METADATA => {
                exact(20)?;
                Frame::GetMetadata {
                    info_hash: take_hash(&mut payload),
                }
            }
            T_METADATA => {
                at_least(20)?;
                Frame::Metadata {
                    info_hash: take_hash(&mut payload),
                    info: payload.to_vec(),
                }
            }
            other => return Err(WireError::UnknownType(other)),
        };
        Ok(frame)
    }
}

/// Reads 20 bytes; callers checked the length first.
fn take_hash(buf: &mut Bytes) -> InfoHash {
    let mut h = [0u8; 20];
    buf.copy_to_slice(&mut h);
    InfoHash(h)
}

/// Decodes one frame from the front of `buf`: `Ok(None)` while incomplete, else the frame and
/// the bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = Frame::check_len(u32::from_be_bytes([
        prefix[0], prefix[1], prefix[2], prefix[3],
    ]))?;
    let Some(payload) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let frame = Frame::decode_payload(Bytes::copy_from_slice(payload))?;
    Ok(Some((frame, 4 + len)))
}

/// An incremental decoder: push bytes as they arrive, take frames out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. The length prefix is checked
    /// as soon as its 4 bytes are here, so an oversized frame fails before its body is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(prefix) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = Frame::check_len(u32::from_be_bytes([
            prefix[0], prefix[1], prefix[2], prefix[3],
        ]))?;
        if self.buf.len() < 4 + len {
            // Reserve at most the declared (capped) frame, never more.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        let payload = self.buf.split_to(len).freeze();
        Frame::decode_payload(payload).map(Some)
    }

    /// Call at end of stream: an error if a partial frame is left over.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = match self.buf.get(..4) {
            Some(p) => 4 + u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize,
            None => 4,
        };
        Err(WireError::Truncated {
            ty: self.buf.get(4).copied(),
            have: self.buf.len(),
            need,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_is_fixed() {
        let f = Frame::Request {
            id: 0x0102030405060708,
            info_hash: InfoHash([0xaa; 20]),
            piece: 7,
            offset: 0x4000,
            length: 0x4000,
        };
        let bytes = f.to_vec();
        assert_eq!(bytes.len(), 45);
        assert_eq!(&bytes[..5], &[0, 0, 0, 41, T_REQUEST]);
        assert_eq!(&bytes[5..13], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(decode(&bytes).unwrap(), Some((f, 45)));
    }

    #[test]
    fn huge_length_prefix_is_refused_before_buffering() {
        let mut d = FrameDecoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff, T_PIECE]);
        assert!(matches!(d.next_frame(), Err(WireError::TooLong { .. })));
        assert!(d.buf.capacity() < 1024);
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_frame_once() {
        let f = Frame::Piece {
            id: 9,
            data: Bytes::from_static(b"hello"),
        };
        let mut d = FrameDecoder::new();
        let bytes = f.to_vec();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            if let Some(frame) = d.next_frame().unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, vec![f]);
        assert!(d.finish().is_ok());
        d.push(&[0, 0]);
        assert!(matches!(d.finish(), Err(WireError::Truncated { .. })));
    }

    #[test]
    fn fixed_bodies_of_the_wrong_size_are_refused() {
        assert!(matches!(
            decode(&[0, 0, 0, 2, T_CANCEL, 1]),
            Err(WireError::BadBodyLength { ty: T_CANCEL, .. })
        ));
        assert_eq!(decode(&[0, 0, 0, 1, 99]), Err(WireError::UnknownType(99)));
        assert_eq!(decode(&[0, 0, 0, 0]), Err(WireError::Empty));
    }
}
