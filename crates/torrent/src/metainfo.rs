//! BEP 3 metainfo for single-file torrents: the info dictionary, its SHA-1 info-hash, `.torrent`
//! files and magnet links.
//!
//! Invariants:
//! - A [`Metainfo`] built by this module always describes a valid single-file torrent: a safe
//!   non-empty `name`, `length > 0`, a power-of-two `piece_length` in
//!   [`MIN_PIECE_LENGTH`]`..=`[`MAX_PIECE_LENGTH`], and exactly `ceil(length / piece_length)`
//!   piece hashes.
//! - The info dictionary holds exactly the four BEP 3 keys `length`, `name`, `piece length`,
//!   `pieces`, sorted, so [`Metainfo::info_bytes`] is byte-identical to what mktorrent or
//!   libtorrent write for the same file, name and piece length, and the info-hash matches theirs.
//! - Parsing is bounded and never panics: sizes are capped before anything is decoded, the
//!   structure is checked (depth-limited) before `serde_bencode` sees it, and an info dictionary
//!   whose canonical re-encoding differs from the bytes given (extra keys such as `private` or
//!   `files`, unsorted keys, non-canonical integers) is refused, because keeping only the four
//!   keys would silently change the info-hash.

pub mod scan;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};
use sha1::{Digest, Sha1};
use shardswarm_proto::InfoHash;

/// Smallest piece length accepted (one BitTorrent block).
pub const MIN_PIECE_LENGTH: u64 = 16 * 1024;
/// Largest piece length accepted (a piece is buffered whole while it is verified).
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;
/// Largest bencoded info dictionary accepted (BEP 9 metadata from peers included).
pub const MAX_INFO_BYTES: usize = 16 * 1024 * 1024;
/// Largest `.torrent` file accepted.
pub const MAX_TORRENT_BYTES: usize = MAX_INFO_BYTES + 1024 * 1024;
/// Longest file name accepted, in bytes (the usual file-system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Smallest piece length [`piece_length_for`] picks.
const AUTO_MIN_PIECE_LENGTH: u64 = 256 * 1024;
/// Largest piece length [`piece_length_for`] picks.
const AUTO_MAX_PIECE_LENGTH: u64 = 4 * 1024 * 1024;
/// [`piece_length_for`] grows the piece length until the file has at most this many pieces.
const AUTO_TARGET_PIECES: u64 = 1024;

/// The piece length for a file of `size` bytes: the smallest power of two from 256 KiB up to
/// 4 MiB that keeps the file within 1024 pieces. Files up to 256 MiB get 256 KiB pieces; files
/// over 4 GiB get 4 MiB pieces (and then more than 1024 of them). Deterministic, so the same
/// file always yields the same info-hash.
pub fn piece_length_for(size: u64) -> u64 {
    let mut piece_length = AUTO_MIN_PIECE_LENGTH;
    while piece_length < AUTO_MAX_PIECE_LENGTH && size.div_ceil(piece_length) > AUTO_TARGET_PIECES {
        piece_length *= 2;
    }
    piece_length
}

/// Why metainfo could not be built, parsed or verified.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// Reading the file to hash failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file being hashed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The file to hash is empty; a torrent needs at least one byte.
    #[error("{path} is empty; a torrent needs at least one byte")]
    EmptyFile {
        /// The empty file.
        path: PathBuf,
    },
    /// The file changed size while it was being hashed.
    #[error("{path} changed while it was hashed (expected {expected} bytes, read {got})")]
    FileChanged {
        /// The file being hashed.
        path: PathBuf,
        /// Its size when hashing started.
        expected: u64,
        /// What was read or found afterwards.
        got: u64,
    },
    /// The torrent's file name is unsafe or empty.
    #[error("refusing torrent name {name:?}: {reason}")]
    InvalidName {
        /// The name, cut to 64 characters.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The piece length is not a power of two in the accepted range.
    #[error(
        "piece length {piece_length} must be a power of two between {MIN_PIECE_LENGTH} and {MAX_PIECE_LENGTH}"
    )]
    InvalidPieceLength {
        /// The piece length given.
        piece_length: u64,
    },
    /// The input is larger than this decoder accepts.
    #[error("{what} is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not well-formed bencode of the expected shape.
    #[error("malformed {what} at byte {offset}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Where the problem is (0 when the decoder does not say).
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A `.torrent` file without an `info` dictionary.
    #[error("the torrent file has no \"info\" dictionary")]
    MissingInfo,
    /// The info dictionary is not in the canonical four-key single-file form.
    #[error(
        "unsupported info dictionary: only single-file torrents with exactly the keys length, name, \
         piece length and pieces (sorted, canonical integers) are accepted"
    )]
    NonCanonicalInfo,
    /// `pieces` is not a whole number of 20-byte SHA-1 hashes.
    #[error("\"pieces\" is {len} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20 {
        /// Its length.
        len: usize,
    },
    /// The number of piece hashes does not fit the length and piece length.
    #[error(
        "{got} piece hashes for {length} bytes in pieces of {piece_length} (expected {expected})"
    )]
    PieceCountMismatch {
        /// The file length.
        length: u64,
        /// The piece length.
        piece_length: u64,
        /// `ceil(length / piece_length)`.
        expected: u64,
        /// How many hashes there are.
        got: u64,
    },
    /// The torrent describes an empty file.
    #[error("the torrent describes an empty file")]
    ZeroLength,
    /// The info dictionary does not hash to the expected info-hash.
    #[error("info dictionary hashes to {got}, expected {expected}")]
    HashMismatch {
        /// The info-hash asked for.
        expected: InfoHash,
        /// The SHA-1 of the bytes received.
        got: InfoHash,
    },
}

/// The info dictionary of a single-file torrent (BEP 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The file name (one path component; see [`validate_name`]).
    pub name: String,
    /// The file size in bytes.
    pub length: u64,
    /// Bytes per piece; the last piece may be shorter.
    pub piece_length: u64,
    /// The SHA-1 of each piece, in order.
    pub pieces: Vec<[u8; 20]>,
}

/// A torrent: the info dictionary plus the optional top-level fields we keep. No creation date,
/// so the same file always produces the same `.torrent` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// The info dictionary; its hash is the torrent's identity.
    pub info: Info,
    /// Tracker URL (`announce`), if any. shardswarm needs none.
    pub announce: Option<String>,
    /// The `created by` field, if any.
    pub created_by: Option<String>,
}

/// The info dictionary as bencoded; field order is irrelevant (serde_bencode sorts keys).
#[derive(Serialize)]
struct InfoOut<'a> {
    length: u64,
    name: &'a str,
    #[serde(rename = "piece length")]
    piece_length: u64,
    pieces: &'a Bytes,
}

#[derive(Deserialize)]
struct InfoIn {
    length: u64,
    name: String,
    #[serde(rename = "piece length")]
    piece_length: u64,
    pieces: ByteBuf,
}

#[derive(Serialize)]
struct TorrentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<&'a str>,
    #[serde(rename = "created by", skip_serializing_if = "Option::is_none")]
    created_by: Option<&'a str>,
    info: InfoOut<'a>,
}

#[derive(Deserialize)]
struct TorrentTopIn {
    #[serde(default)]
    announce: Option<String>,
    #[serde(rename = "created by", default)]
    created_by: Option<String>,
}

/// Refuses names that are empty, longer than [`MAX_NAME_BYTES`], `.` or `..`, or that contain a
/// path separator (`/` or `\`), NUL or another control character: a torrent name becomes a file
/// name on disk and in logs, so it must be exactly one harmless path component.
pub fn validate_name(name: &str) -> Result<(), MetainfoError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("a relative path component")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else if is_windows_reserved(name) {
        Some("a reserved device name or ends in a dot or space (Windows)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MetainfoError::InvalidName {
            name: name.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM0`–`COM9`, `LPT0`–`LPT9` (any case, with or without an
/// extension), or a name ending in `.` or a space: Windows opens a device or another file.
fn is_windows_reserved(name: &str) -> bool {
    if name.ends_with(['.', ' ']) {
        return true;
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || (upper.len() == 4
            && (upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.as_bytes()[3].is_ascii_digit())
}

fn validate_piece_length(piece_length: u64) -> Result<(), MetainfoError> {
    if piece_length.is_power_of_two()
        && (MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&piece_length)
    {
        Ok(())
    } else {
        Err(MetainfoError::InvalidPieceLength { piece_length })
    }
}

fn malformed(what: &'static str, e: scan::ScanError) -> MetainfoError {
    MetainfoError::Malformed {
        what,
        offset: e.offset,
        reason: e.reason.to_owned(),
    }
}

fn sha1_of(bytes: &[u8]) -> [u8; 20] {
    Sha1::digest(bytes).into()
}

impl Info {
    /// Validates an info dictionary decoded from untrusted bytes.
    fn from_decoded(raw: InfoIn) -> Result<Info, MetainfoError> {
        validate_name(&raw.name)?;
        validate_piece_length(raw.piece_length)?;
        if raw.length == 0 {
            return Err(MetainfoError::ZeroLength);
        }
        if !raw.pieces.len().is_multiple_of(20) {
            return Err(MetainfoError::PiecesNotMultipleOf20 {
                len: raw.pieces.len(),
            });
        }
        let expected = raw.length.div_ceil(raw.piece_length);
        let got = (raw.pieces.len() / 20) as u64;
        if expected != got {
            return Err(MetainfoError::PieceCountMismatch {
                length: raw.length,
                piece_length: raw.piece_length,
                expected,
                got,
            });
        }
        let pieces = raw
            .pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Info {
            name: raw.name,
            length: raw.length,
            piece_length: raw.piece_length,
            pieces,
        })
    }

    fn out(&self) -> InfoOut<'_> {
        InfoOut {
            length: self.length,
            name: &self.name,
            piece_length: self.piece_length,
            pieces: Bytes::new(self.pieces.as_flattened()),
        }
    }
}

impl Metainfo {
    /// Hashes `path` piece by piece (streaming: one piece in memory at a time) into a torrent
    /// named `name`. `piece_length` defaults to [`piece_length_for`] the file size.
    pub fn from_file(
        path: &Path,
        name: &str,
        piece_length: Option<u64>,
    ) -> Result<Metainfo, MetainfoError> {
        Self::from_file_with_progress(path, name, piece_length, &mut |_| {})
    }

    /// [`Metainfo::from_file`], calling `progress` with the byte count of each piece once it is
    /// hashed (for a progress bar).
    pub fn from_file_with_progress(
        path: &Path,
        name: &str,
        piece_length: Option<u64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Metainfo, MetainfoError> {
        validate_name(name)?;
        let io_err = |source| MetainfoError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let length = file.metadata().map_err(io_err)?.len();
        if length == 0 {
            return Err(MetainfoError::EmptyFile {
                path: path.to_owned(),
            });
        }
        let piece_length = piece_length.unwrap_or_else(|| piece_length_for(length));
        validate_piece_length(piece_length)?;
        let count = length.div_ceil(piece_length);
        let mut pieces = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let buf_len = usize::try_from(piece_length.min(length)).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; buf_len];
        let mut read_total: u64 = 0;
        for index in 0..count {
            let want = piece_length.min(length - read_total);
            let want_usize = usize::try_from(want).unwrap_or(buf_len).min(buf_len);
            let got = read_full(&mut file, &mut buf[..want_usize]).map_err(io_err)?;
            read_total += got as u64;
            if got != want_usize {
                return Err(MetainfoError::FileChanged {
                    path: path.to_owned(),
                    expected: length,
                    got: read_total,
                });
            }
            pieces.push(sha1_of(&buf[..got]));
            progress(got as u64);
            tracing::trace!(target: "shardswarm_torrent::metainfo", index, "piece hashed");
        }
        let length_after = file.metadata().map_err(io_err)?.len();
        if length_after != length {
            return Err(MetainfoError::FileChanged {
                path: path.to_owned(),
                expected: length,
                got: length_after,
            });
        }
        let meta = Metainfo {
            info: Info {
                name: name.to_owned(),
                length,
                piece_length,
                pieces,
            },
            announce: None,
            created_by: Some(concat!("shardswarm/", env!("CARGO_PKG_VERSION")).to_owned()),
        };
        tracing::debug!(
            target: "shardswarm_torrent::metainfo",
            path = %path.display(),
            length,
            piece_length,
            pieces = count,
            info_hash = %meta.info_hash(),
            "file hashed into metainfo"
        );
        Ok(meta)
    }

    /// The BitTorrent v1 info-hash: SHA-1 of [`Metainfo::info_bytes`].
    pub fn info_hash(&self) -> InfoHash {
        InfoHash(sha1_of(&self.info_bytes()))
    }

    /// The bencoded info dictionary (`d6:length…4:name…12:piece length…6:pieces…e`), as served
    /// to peers as metadata.
    pub fn info_bytes(&self) -> Vec<u8> {
        serde_bencode::to_bytes(&self.info.out())
            .expect("bencoding integers, a string and a byte string cannot fail")
    }

    /// Parses an info dictionary received from elsewhere (a peer's metadata, a cache), checking
    /// its SHA-1 against `expected` when given. Bounded; never panics on garbage.
    pub fn from_info_bytes(
        bytes: &[u8],
        expected: Option<InfoHash>,
    ) -> Result<Metainfo, MetainfoError> {
        const WHAT: &str = "info dictionary";
        if bytes.len() > MAX_INFO_BYTES {
            return Err(MetainfoError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_INFO_BYTES,
            });
        }
        scan::check_whole(bytes).map_err(|e| malformed(WHAT, e))?;
        if bytes.first() != Some(&b'd') {
            return Err(MetainfoError::Malformed {
                what: WHAT,
                offset: 0,
                reason: "not a dictionary".to_owned(),
            });
        }
        let got = InfoHash(sha1_of(bytes));
        match expected {
            Some(expected) if expected != got => {
                return Err(MetainfoError::HashMismatch { expected, got });
            }
            _ => {}
        }
        let raw: InfoIn =
            serde_bencode::from_bytes(bytes).map_err(|e| MetainfoError::Malformed {
                what: WHAT,
                offset: 0,
                reason: e.to_string(),
            })?;
        let meta = Metainfo {
            info: Info::from_decoded(raw)?,
            announce: None,
            created_by: None,
        };
        if meta.info_bytes() != bytes {
            return Err(MetainfoError::NonCanonicalInfo);
        }
        Ok(meta)
    }

    /// A standard `.torrent` file: a bencoded dictionary with `info` (and `announce` /
    /// `created by` when set). No creation date, so the bytes are deterministic.
    pub fn to_torrent_bytes(&self) -> Vec<u8> {
        let out = TorrentOut {
            announce: self.announce.as_deref(),
            created_by: self.created_by.as_deref(),
            info: self.info.out(),
        };
        serde_bencode::to_bytes(&out)
            .expect("bencoding strings, integers and byte strings cannot fail")
    }

    /// Parses a `.torrent` file. The info-hash is taken over the file's own info bytes; other
    /// top-level keys than `announce` and `created by` are ignored.
    pub fn from_torrent_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        const WHAT: &str = "torrent file";
        if bytes.len() > MAX_TORRENT_BYTES {
            return Err(MetainfoError::TooLarge {
                what: WHAT,
                len: bytes.len(),
                max: MAX_TORRENT_BYTES,
            });
        }
        scan::check_whole(bytes).map_err(|e| malformed(WHAT, e))?;
        let span = scan::dict_value(bytes, b"info")
            .map_err(|e| malformed(WHAT, e))?
            .ok_or(MetainfoError::MissingInfo)?;
        let mut meta = Metainfo::from_info_bytes(&bytes[span], None)?;
        let top: TorrentTopIn =
            serde_bencode::from_bytes(bytes).map_err(|e| MetainfoError::Malformed {
                what: WHAT,
                offset: 0,
                reason: e.to_string(),
            })?;
        meta.announce = top.announce;
        meta.created_by = top.created_by;
        Ok(meta)
    }

    /// `magnet:?xt=urn:btih:<hex>&dn=<percent-encoded name>&xl=<length>`.
    pub fn magnet_link(&self) -> String {
        format!(
            "magnet:?xt=urn:btih:{}&dn={}&xl={}",
            self.info_hash(),
            percent_encode(&self.info.name),
            self.info.length
        )
    }

    /// How many pieces the file has.
    pub fn piece_count(&self) -> u32 {
        u32::try_from(self.info.pieces.len()).unwrap_or(u32::MAX)
    }

    /// The size of piece `index` in bytes (the last one may be short); 0 past the end.
    pub fn piece_size(&self, index: u32) -> u64 {
        let start = u64::from(index).saturating_mul(self.info.piece_length);
        if index >= self.piece_count() || start >= self.info.length {
            return 0;
        }
        self.info.piece_length.min(self.info.length - start)
    }

    /// The byte offset of piece `index` in the file (`index * piece_length`).
    pub fn piece_offset(&self, index: u32) -> u64 {
        u64::from(index).saturating_mul(self.info.piece_length)
    }

    /// The SHA-1 of piece `index`, or `None` past the end.
    pub fn piece_hash(&self, index: u32) -> Option<[u8; 20]> {
        self.info.pieces.get(usize::try_from(index).ok()?).copied()
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
