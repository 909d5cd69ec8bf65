//! A small bounded bencode codec for the dictionaries of BEP 10 and BEP 9.
//!
//! Invariants: decoding never panics, never reads past the slice and recurses at most
//! [`MAX_DEPTH`] levels; everything it allocates is bounded by the input length (every value
//! consumes at least one byte), and inputs are capped by the message decoder before they get
//! here. Decoding is lenient where other clients differ (unsorted or duplicate dictionary keys:
//! the last one wins); encoding is canonical (sorted keys, no leading zeros).

use std::collections::BTreeMap;

/// Deepest nesting of lists/dictionaries accepted.
pub const MAX_DEPTH: usize = 16;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`.
    Int(i64),
    /// `<len>:<bytes>`.
    Bytes(Vec<u8>),
    /// `l…e`.
    List(Vec<Value>),
    /// `d…e` with byte-string keys.
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why bytes are not bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad bencode at byte {offset}: {reason}")]
pub struct BencodeError {
    /// Where the problem was found.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

fn err(offset: usize, reason: &'static str) -> BencodeError {
    BencodeError { offset, reason }
}

impl Value {
    /// Decodes the value at the front of `buf`; returns it and the bytes it used (anything after
    /// it is left alone: BEP 9 `data` messages carry raw bytes after the dictionary).
    pub fn decode_prefix(buf: &[u8]) -> Result<(Value, usize), BencodeError> {
        decode_at(buf, 0, 0)
    }

    /// Decodes `buf` as exactly one value.
    pub fn decode(buf: &[u8]) -> Result<Value, BencodeError> {
        let (v, used) = Value::decode_prefix(buf)?;
        if used != buf.len() {
            return Err(err(used, "trailing bytes after the value"));
        }
        Ok(v)
    }

    /// Appends the canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The canonical encoding as a fresh buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// The value under `key` of a dictionary (`None` for other values or a missing key).
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The byte string, if this is one.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The dictionary, if this is one.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

fn decode_at(buf: &[u8], pos: usize, depth: usize) -> Result<(Value, usize), BencodeError> {
    match buf.get(pos) {
        None => Err(err(pos, "unexpected end of input")),
        Some(b'i') => {
            let (i, end) = integer(buf, pos)?;
            Ok((Value::Int(i), end - pos))
        }
        Some(b'0'..=b'9') => {
            let (b, end) = byte_string(buf, pos)?;
            Ok((Value::Bytes(b.to_vec()), end - pos))
        }
        Some(&open @ (b'l' | b'd')) => {
            if depth >= MAX_DEPTH {
                return Err(err(pos, "nested too deeply"));
            }
            let mut at = pos + 1;
            let mut list = Vec::new();
            let mut dict = BTreeMap::new();
            loop {
                match buf.get(at) {
                    Some(b'e') => {
                        at += 1;
                        break;
                    }
                    Some(_) if open == b'd' => {
                        if !buf[at].is_ascii_digit() {
                            return Err(err(at, "dictionary key is not a byte string"));
                        }
                        let (k, after) = byte_string(buf, at)?;
                        let (v, used) = decode_at(buf, after, depth + 1)?;
                        dict.insert(k.to_vec(), v);
                        at = after + used;
                    }
                    Some(_) => {
                        let (v, used) = decode_at(buf, at, depth + 1)?;
                        list.push(v);
                        at += used;
                    }
                    None => return Err(err(at, "unterminated list or dictionary")),
                }
            }
            let v = if open == b'd' {
                Value::Dict(dict)
            } else {
                Value::List(list)
            };
            Ok((v, at - pos))
        }
        Some(_) => Err(err(pos, "not a bencode value")),
    }
}

/// `i<digits>e` with an optional minus sign; returns the value and the end offset.
fn integer(buf: &[u8], start: usize) -> Result<(i64, usize), BencodeError> {
    let mut pos = start + 1;
    let negative = buf.get(pos) == Some(&b'-');
    if negative {
        pos += 1;
    }
    let digits = pos;
    let mut v: i64 = 0;
    while let Some(&c) = buf.get(pos) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(c - b'0')))
            .ok_or_else(|| err(start, "integer overflows"))?;
        pos += 1;
    }
    if pos == digits {
        return Err(err(pos, "integer without digits"));
    }
    if buf.get(pos) != Some(&b'e') {
        return Err(err(pos, "integer not terminated by 'e'"));
    }
    Ok((if negative { -v } else { v }, pos + 1))
}

/// `<len>:<bytes>`: the bytes and the end offset (the torrent crate's bounded scanner).
fn byte_string(buf: &[u8], start: usize) -> Result<(&[u8], usize), BencodeError> {
    shardswarm_torrent::metainfo::scan::byte_string(buf, start).map_err(|e| err(e.offset, e.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_libtorrent_extension_handshake() {
        let raw = b"d1:ei0e1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei3425e4:reqqi500e1:v16:libtorrent 2.0.8e";
        let v = Value::decode(raw).unwrap();
        assert_eq!(
            v.get("m").and_then(|m| m.get("ut_metadata")),
            Some(&Value::Int(2))
        );
        assert_eq!(v.get("metadata_size").and_then(Value::as_int), Some(3425));
        assert_eq!(
            v.get("v").and_then(Value::as_bytes),
            Some(&b"libtorrent 2.0.8"[..])
        );
    }

    #[test]
    fn prefix_decoding_leaves_trailing_data() {
        let raw = b"d8:msg_typei1e5:piecei0eeRAWDATA";
        let (v, used) = Value::decode_prefix(raw).unwrap();
        assert_eq!(&raw[used..], b"RAWDATA");
        assert_eq!(v.get("msg_type").and_then(Value::as_int), Some(1));
        assert!(Value::decode(raw).is_err());
    }

    #[test]
    fn hostile_inputs_are_refused() {
        for bad in [
            &b""[..],
            b"i",
            b"ie",
            b"i99999999999999999999999e",
            b"5:abc",
            b"99999999999999999999999:a",
            b"d1:a",
            b"di1ei2ee",
            b"x",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut deep = vec![b'l'; 10_000];
        deep.extend(vec![b'e'; 10_000]);
        assert_eq!(
            Value::decode(&deep).unwrap_err().reason,
            "nested too deeply"
        );
    }
}
