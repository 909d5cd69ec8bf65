//! The resume file: which pieces of a `.part` file are verified, and which of those are known to
//! be on stable storage.
//!
//! Format (big endian): magic `SSRESUM2`, info-hash (20), piece length (u64), length (u64),
//! piece count (u32), the `synced` bitfield, the `unsynced` bitfield, then the SHA-1 of
//! everything before it. `synced` pieces were fdatasync'ed before they were recorded and are
//! trusted on reopen; `unsynced` pieces were verified and written but not yet synced (a process
//! kill keeps them in the page cache; a power loss may not), so they are re-hashed on reopen.
//! A file that is short, has another magic, fails its checksum or describes another torrent is
//! ignored as a whole (the download starts over) — never half-trusted.
//!
//! Written atomically: a temp file in the same directory and a rename over the old one; the temp
//! file is fsynced only at checkpoints (`durable`). Losing a rename in a crash leaves the previous
//! file, which records a subset of the pieces, and that is safe.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use sha1::{Digest, Sha1};
use shardswarm_proto::InfoHash;

use crate::bitfield::Bitfield;

const MAGIC: &[u8; 8] = b"SSRESUM2";
const HEADER: usize = 8 + 20 + 8 + 8 + 4;
/// Resume files larger than this are not read (a bitfield of 2^32 pieces is 512 MiB; real ones
/// are a few KiB).
const MAX_RESUME_BYTES: u64 = 64 * 1024 * 1024;

/// What a resume file records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Recorded {
    /// Verified and synced: trusted.
    pub(super) synced: Bitfield,
    /// Verified, written, not yet synced: re-hashed on reopen.
    pub(super) unsynced: Bitfield,
}

/// Bytes [`save`] writes for `rec`.
pub(super) fn encoded_len(rec: &Recorded) -> u64 {
    (HEADER + 2 * rec.synced.as_bytes().len() + 20) as u64
}

/// Writes the resume file atomically; fsyncs it first when `durable`.
pub(super) fn save(
    path: &Path,
    info_hash: InfoHash,
    piece_length: u64,
    length: u64,
    rec: &Recorded,
    durable: bool,
) -> io::Result<()> {
    let bits = rec.synced.as_bytes().len();
    let mut out = Vec::with_capacity(HEADER + 2 * bits + 20);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&info_hash.0);
    out.extend_from_slice(&piece_length.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&rec.synced.len().to_be_bytes());
    out.extend_from_slice(rec.synced.as_bytes());
    out.extend_from_slice(rec.unsynced.as_bytes());
    let sum: [u8; 20] = Sha1::digest(&out).into();
    out.extend_from_slice(&sum);
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    {
        let mut f = File::create(tmp)?;
        f.write_all(&out)?;
        if durable {
            f.sync_all()?;
        }
    }
    fs::rename(tmp, path)
}

/// Reads the resume file: `Ok(None)` when there is none, `Err(reason)` when it is unusable.
pub(super) fn load(
    path: &Path,
    info_hash: InfoHash,
    piece_length: u64,
    length: u64,
    piece_count: u32,
) -> Result<Option<Recorded>, &'static str> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err("cannot stat"),
        Ok(m) if m.len() > MAX_RESUME_BYTES => return Err("too large"),
        Ok(_) => {}
    }
    let bytes = fs::read(path).map_err(|_| "cannot read")?;
    if bytes.len() < HEADER + 20 {
        return Err("truncated");
    }
    let (body, sum) = bytes.split_at(bytes.len() - 20);
    let want: [u8; 20] = Sha1::digest(body).into();
    if want.as_slice() != sum {
        return Err("checksum mismatch");
    }
    if &body[..8] != MAGIC {
        return Err("bad magic");
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_be_bytes(b)
    };
    if body[8..28] != info_hash.0 {
        return Err("another torrent (info-hash differs)");
    }
    if field(28) != piece_length || field(36) != length {
        return Err("another piece length or file length");
    }
    let count = u32::from_be_bytes([body[44], body[45], body[46], body[47]]);
    if count != piece_count {
        return Err("another piece count");
    }
    let rest = &body[HEADER..];
    if rest.len() % 2 != 0 {
        return Err("bad bitfield length");
    }
    let (a, b) = rest.split_at(rest.len() / 2);
    let synced = Bitfield::from_bytes(a, count).map_err(|_| "bad bitfield")?;
    let unsynced = Bitfield::from_bytes(b, count).map_err(|_| "bad bitfield")?;
    Ok(Some(Recorded { synced, unsynced }))
}

/// Fsyncs the directory holding `path`, so a rename in it is durable.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
