//! A bounded structural check of bencode, run before any bytes reach `serde_bencode`.
//!
//! Invariants: never allocates, never reads past the slice, recurses at most [`MAX_DEPTH`]
//! levels (so hostile `llll…` input cannot overflow the stack of the recursive serde decoder
//! that runs afterwards), and reports the byte span of a top-level dictionary's value so the
//! info-hash is taken over the exact bytes a peer or file supplied.

use std::ops::Range;

/// Deepest nesting of lists/dicts accepted. A torrent needs 3 (dict → info dict → value).
pub(super) const MAX_DEPTH: usize = 32;

/// Why a byte string is not (acceptable) bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset where the problem was found.
    pub offset: usize,
    /// What was wrong there.
    pub reason: &'static str,
}

fn err(offset: usize, reason: &'static str) -> ScanError {
    ScanError { offset, reason }
}

/// Checks that `buf` is exactly one well-formed bencode value (no trailing bytes).
pub(super) fn check_whole(buf: &[u8]) -> Result<(), ScanError> {
    let end = value_end(buf, 0, 0)?;
    if end != buf.len() {
        return Err(err(end, "trailing bytes after the value"));
    }
    Ok(())
}

/// For a buffer that passed [`check_whole`] and holds a dictionary: the span of the value
/// stored under `key`, if present.
pub(super) fn dict_value(buf: &[u8], key: &[u8]) -> Result<Option<Range<usize>>, ScanError> {
    if buf.first() != Some(&b'd') {
        return Err(err(0, "expected a dictionary"));
    }
    let mut pos = 1;
    loop {
        match buf.get(pos) {
            Some(b'e') => return Ok(None),
            Some(_) => {
                let (k, after_key) = byte_string(buf, pos)?;
                let value_start = after_key;
                let value_stop = value_end(buf, value_start, 1)?;
                if k == key {
                    return Ok(Some(value_start..value_stop));
                }
                pos = value_stop;
            }
            None => return Err(err(pos, "unterminated dictionary")),
        }
    }
}

/// End offset (exclusive) of the value starting at `start`.
fn value_end(buf: &[u8], start: usize, depth: usize) -> Result<usize, ScanError> {
    match buf.get(start) {
        None => Err(err(start, "unexpected end of input")),
        Some(b'i') => integer_end(buf, start),
        Some(b'0'..=b'9') => byte_string(buf, start).map(|(_, end)| end),
        Some(&open @ (b'l' | b'd')) => {
            if depth >= MAX_DEPTH {
                return Err(err(start, "nested too deeply"));
            }
            let mut pos = start + 1;
            loop {
                match buf.get(pos) {
                    Some(b'e') => return Ok(pos + 1),
                    Some(_) => {
                        if open == b'd' {
                            if !buf[pos].is_ascii_digit() {
                                return Err(err(pos, "dictionary key is not a byte string"));
                            }
                            pos = byte_string(buf, pos)?.1;
                        }
                        pos = value_end(buf, pos, depth + 1)?;
                    }
                    None => return Err(err(pos, "unterminated list or dictionary")),
                }
            }
        }
        Some(_) => Err(err(start, "not a bencode value")),
    }
}

/// `i<digits>e` with an optional minus sign; at most 20 digits.
fn integer_end(buf: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut pos = start + 1;
    if buf.get(pos) == Some(&b'-') {
        pos += 1;
    }
    let digits_start = pos;
    while let Some(c) = buf.get(pos) {
        if !c.is_ascii_digit() {
            break;
        }
        pos += 1;
        if pos - digits_start > 20 {
            return Err(err(start, "integer too long"));
        }
    }
    if pos == digits_start {
        return Err(err(pos, "integer without digits"));
    }
    match buf.get(pos) {
        Some(b'e') => Ok(pos + 1),
        _ => Err(err(pos, "integer not terminated by 'e'")),
    }
}

/// The bencode byte string `<len>:<bytes>` at `buf[start..]`: the bytes and the end offset
/// (overflowing lengths and lengths past the input are errors; nothing is allocated).
pub fn byte_string(buf: &[u8], start: usize) -> Result<(&[u8], usize), ScanError> {
    let mut pos = start;
    let mut len: usize = 0;
    while let Some(&c) = buf.get(pos) {
        if !c.is_ascii_digit() {
            break;
        }
        len = len
            .checked_mul(10)
            .and_then(|l| l.checked_add(usize::from(c - b'0')))
            .ok_or_else(|| err(start, "byte string length overflows"))?;
        pos += 1;
    }
    if pos == start {
        return Err(err(start, "expected a byte string length"));
    }
    if buf.get(pos) != Some(&b':') {
        return Err(err(pos, "byte string length not followed by ':'"));
    }
    let body = pos + 1;
    let end = body
        .checked_add(len)
        .filter(|&end| end <= buf.len())
        .ok_or_else(|| err(start, "byte string runs past the end of input"))?;
    Ok((&buf[body..end], end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_nested_values_and_finds_keys() {
        let buf = b"d1:ai1e4:infod1:xli-3e0:ee1:zi0ee";
        check_whole(buf).unwrap();
        let span = dict_value(buf, b"info").unwrap().unwrap();
        assert_eq!(&buf[span], b"d1:xli-3e0:ee");
        assert_eq!(dict_value(buf, b"nope").unwrap(), None);
    }

    #[test]
    fn refuses_truncated_and_trailing_input() {
        for bad in [
            &b""[..],
            b"d",
            b"i12",
            b"ie",
            b"5:abc",
            b"99999999999999999999999:a",
            b"d1:a",
            b"di1ei2ee",
            b"le extra",
            b"x",
        ] {
            assert!(
                check_whole(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn refuses_deep_nesting_without_recursing_forever() {
        let mut deep = vec![b'l'; 100_000];
        deep.extend(vec![b'e'; 100_000]);
        let e = check_whole(&deep).unwrap_err();
        assert_eq!(e.reason, "nested too deeply");
        let mut ok = vec![b'l'; MAX_DEPTH];
        ok.extend(vec![b'e'; MAX_DEPTH]);
        check_whole(&ok).unwrap();
    }
}
