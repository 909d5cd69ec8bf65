//! BEP 10 (the extension protocol) and BEP 9 (`ut_metadata`, metadata exchange).
//!
//! The extended handshake is a bencoded dictionary whose `m` maps extension names to the
//! message ids the *sender* wants to receive them under; `metadata_size` is the info
//! dictionary's length. A `ut_metadata` message is a dictionary (`msg_type` 0 request, 1 data,
//! 2 reject, and `piece`) followed, for data, by the raw metadata piece (16 KiB, the last one
//! shorter).
//!
//! Invariants: decoding is bounded by the payload (itself capped by the message decoder), never
//! panics, ignores keys it does not know and `m` entries that are not ids in `1..=255`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::bencode::{BencodeError, Value};

/// The extension name of BEP 9.
pub const UT_METADATA: &str = "ut_metadata";
/// Bytes per metadata piece.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// The extended message id of the extended handshake.
pub const HANDSHAKE_ID: u8 = 0;
/// The id we ask peers to use for `ut_metadata` messages to us.
pub const OUR_UT_METADATA_ID: u8 = 1;

/// Why an extension message is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtensionError {
    /// Not bencode.
    #[error(transparent)]
    Bencode(#[from] BencodeError),
    /// Bencode, but not the expected shape.
    #[error("bad {what}: {reason}")]
    Shape {
        /// The message.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

fn shape(what: &'static str, reason: &'static str) -> ExtensionError {
    ExtensionError::Shape { what, reason }
}

/// The BEP 10 handshake (the fields we use; the rest is ignored on decode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// Extension name → the id the sender receives it under.
    pub m: BTreeMap<String, u8>,
    /// Length of the info dictionary, when the sender has it.
    pub metadata_size: Option<u64>,
    /// Requests the sender keeps outstanding without dropping any.
    pub reqq: Option<u32>,
    /// Client name and version.
    pub client: Option<String>,
}

impl ExtendedHandshake {
    /// The id the sender wants `ut_metadata` messages under, if it speaks BEP 9.
    pub fn ut_metadata(&self) -> Option<u8> {
        self.m.get(UT_METADATA).copied()
    }

    /// The bencoded dictionary.
    pub fn encode(&self) -> Vec<u8> {
        let mut d = BTreeMap::new();
        let m = self
            .m
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Value::Int(i64::from(*v))))
            .collect();
        d.insert(b"m".to_vec(), Value::Dict(m));
        if let Some(size) = self.metadata_size {
            d.insert(
                b"metadata_size".to_vec(),
                Value::Int(i64::try_from(size).unwrap_or(i64::MAX)),
            );
        }
        if let Some(reqq) = self.reqq {
            d.insert(b"reqq".to_vec(), Value::Int(i64::from(reqq)));
        }
        if let Some(v) = &self.client {
            d.insert(b"v".to_vec(), Value::Bytes(v.as_bytes().to_vec()));
        }
        Value::Dict(d).to_vec()
    }

    /// Parses a peer's handshake payload.
    pub fn decode(payload: &[u8]) -> Result<ExtendedHandshake, ExtensionError> {
        const WHAT: &str = "extended handshake";
        let v = Value::decode(payload)?;
        if v.as_dict().is_none() {
            return Err(shape(WHAT, "not a dictionary"));
        }
        let mut m = BTreeMap::new();
        if let Some(entries) = v.get("m").and_then(Value::as_dict) {
            for (k, id) in entries {
                let (Ok(name), Some(id)) = (std::str::from_utf8(k), id.as_int()) else {
                    continue;
                };
                if let Ok(id @ 1..=255) = u8::try_from(id) {
                    m.insert(name.to_owned(), id);
                }
            }
        }
        let metadata_size = v
            .get("metadata_size")
            .and_then(Value::as_int)
            .and_then(|s| u64::try_from(s).ok());
        let reqq = v
            .get("reqq")
            .and_then(Value::as_int)
            .and_then(|r| u32::try_from(r).ok());
        let client = v
            .get("v")
            .and_then(Value::as_bytes)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned());
        Ok(ExtendedHandshake {
            m,
            metadata_size,
            reqq,
            client,
        })
    }
}

/// A BEP 9 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMsg {
    /// Send metadata piece `piece`.
    Request {
        /// The piece index.
        piece: u32,
    },
    /// Metadata piece `piece` of a `total_size`-byte info dictionary.
    Data {
        /// The piece index.
        piece: u32,
        /// The whole dictionary's length.
        total_size: u64,
        /// The piece's bytes.
        data: Bytes,
    },
    /// The sender will not send piece `piece`.
    Reject {
        /// The piece index.
        piece: u32,
    },
}

impl MetadataMsg {
    /// The payload (after the extended id).
    pub fn encode(&self) -> Vec<u8> {
        let (ty, piece) = match self {
            MetadataMsg::Request { piece } => (0, piece),
            MetadataMsg::Data { piece, .. } => (1, piece),
            MetadataMsg::Reject { piece } => (2, piece),
        };
        let mut d = BTreeMap::new();
        d.insert(b"msg_type".to_vec(), Value::Int(ty));
        d.insert(b"piece".to_vec(), Value::Int(i64::from(*piece)));
        if let MetadataMsg::Data { total_size, .. } = self {
            d.insert(
                b"total_size".to_vec(),
                Value::Int(i64::try_from(*total_size).unwrap_or(i64::MAX)),
            );
        }
        let mut out = Value::Dict(d).to_vec();
        if let MetadataMsg::Data { data, .. } = self {
            out.extend_from_slice(data);
        }
        out
    }

    /// Parses a payload; data longer than a metadata piece is refused.
    pub fn decode(payload: Bytes) -> Result<MetadataMsg, ExtensionError> {
        const WHAT: &str = "ut_metadata message";
        let (v, used) = Value::decode_prefix(&payload)?;
        let int = |key| v.get(key).and_then(Value::as_int);
        let piece = int("piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| shape(WHAT, "no valid piece"))?;
        let trailing = payload.len() - used;
        match int("msg_type") {
            Some(0) | Some(2) if trailing != 0 => Err(shape(WHAT, "trailing bytes")),
            Some(0) => Ok(MetadataMsg::Request { piece }),
            Some(2) => Ok(MetadataMsg::Reject { piece }),
            Some(1) => {
                if trailing > METADATA_PIECE_LEN {
                    return Err(shape(WHAT, "data longer than a metadata piece"));
                }
                let total_size = int("total_size")
                    .and_then(|s| u64::try_from(s).ok())
                    .ok_or_else(|| shape(WHAT, "data without a valid total_size"))?;
                Ok(MetadataMsg::Data {
                    piece,
                    total_size,
                    data: payload.slice(used..),
                })
            }
            _ => Err(shape(WHAT, "unknown msg_type")),
        }
    }
}

/// Pieces of a `size`-byte info dictionary.
pub fn metadata_piece_count(size: usize) -> u32 {
    u32::try_from(size.div_ceil(METADATA_PIECE_LEN)).unwrap_or(u32::MAX)
}

/// Piece `piece` of the info dictionary `info`, or `None` past the end.
pub fn metadata_piece(info: &[u8], piece: u32) -> Option<&[u8]> {
    let start = usize::try_from(piece)
        .ok()?
        .checked_mul(METADATA_PIECE_LEN)?;
    if start >= info.len() {
        return None;
    }
    info.get(start..info.len().min(start + METADATA_PIECE_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_round_trip_and_bad_ids_are_dropped() {
        let mut h = ExtendedHandshake {
            metadata_size: Some(31_337),
            reqq: Some(250),
            client: Some("shardswarm/0.1.0".into()),
            ..Default::default()
        };
        h.m.insert(UT_METADATA.into(), 3);
        let bytes = h.encode();
        assert_eq!(
            bytes,
            b"d1:md11:ut_metadatai3ee13:metadata_sizei31337e4:reqqi250e1:v16:shardswarm/0.1.0e"
        );
        assert_eq!(ExtendedHandshake::decode(&bytes).unwrap(), h);
        let odd = ExtendedHandshake::decode(b"d1:md1:ai0e1:bi300e1:ci-1e1:di9eee").unwrap();
        assert_eq!(odd.m.len(), 1);
        assert_eq!(odd.m.get("d"), Some(&9));
        assert!(ExtendedHandshake::decode(b"li1ee").is_err());
    }

    #[test]
    fn metadata_messages_round_trip() {
        for m in [
            MetadataMsg::Request { piece: 2 },
            MetadataMsg::Reject { piece: 0 },
            MetadataMsg::Data {
                piece: 1,
                total_size: 20_000,
                data: Bytes::from(vec![7u8; 3616]),
            },
        ] {
            assert_eq!(MetadataMsg::decode(Bytes::from(m.encode())).unwrap(), m);
        }
        assert_eq!(
            MetadataMsg::Request { piece: 0 }.encode(),
            b"d8:msg_typei0e5:piecei0ee"
        );
        let long = MetadataMsg::Data {
            piece: 0,
            total_size: 1,
            data: Bytes::from(vec![0u8; METADATA_PIECE_LEN + 1]),
        };
        assert!(MetadataMsg::decode(Bytes::from(long.encode())).is_err());
    }

    #[test]
    fn metadata_is_cut_into_16k_pieces() {
        let info = vec![1u8; 2 * METADATA_PIECE_LEN + 5];
        assert_eq!(metadata_piece_count(info.len()), 3);
        assert_eq!(
            metadata_piece(&info, 0).map(<[u8]>::len),
            Some(METADATA_PIECE_LEN)
        );
        assert_eq!(metadata_piece(&info, 2).map(<[u8]>::len), Some(5));
        assert_eq!(metadata_piece(&info, 3), None);
        assert_eq!(metadata_piece(&info, u32::MAX), None);
    }
}
