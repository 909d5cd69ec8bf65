//! Piece storage for one single-file torrent, on `std::fs` (synchronous: call it from a
//! blocking thread).
//!
//! Layout in the shard directory: the final file `dir/name` exists only once every piece is
//! verified; until then the data lives in `dir/name.part` (preallocated with `set_len`, written
//! in place) next to `dir/name.resume`, the verified bitfield (see [`resume`]).
//!
//! Invariants:
//! - A piece is in `have` only after its bytes were read back, matched the metainfo's SHA-1 and
//!   were `fdatasync`ed; the resume file is rewritten atomically (tmp + fsync + rename) after that
//!   sync, so a crash can lose recorded pieces (an older resume file is a subset) but never record
//!   unsynced ones.
//! - Verified pieces are never written again, and only verified pieces are read out.
//! - Nothing holds more than one read buffer (at most [`crate::wire::MAX_BLOCK_LEN`] or 1 MiB
//!   while hashing) in memory.
//! - Every offset and length from outside is bounds-checked against the piece before any IO.
//! - A failed write, sync, resume write or rename (a full disk: [`StorageError::DiskFull`])
//!   changes no state: the piece is not verified, nothing is renamed, and the store stays usable
//!   (retry later). Faults can be injected through [`faults`].

pub mod faults;
mod resume;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha1::{Digest, Sha1};
use shardswarm_proto::InfoHash;

use crate::bitfield::Bitfield;
use crate::metainfo::{Metainfo, validate_name};
use crate::wire::MAX_BLOCK_LEN;
use faults::{IoFaults, IoOp, is_disk_full};

const TARGET: &str = "shardswarm_torrent::storage";
const HASH_CHUNK: usize = 1024 * 1024;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system holding the file is full (ENOSPC or a quota): free space and retry.
    #[error("disk full: cannot {op} {path}: {source}")]
    DiskFull {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The torrent name is not a safe file name.
    #[error("torrent name {name:?} is not a safe file name")]
    BadName {
        /// The name.
        name: String,
    },
    /// A piece index past the end.
    #[error("piece {piece} out of range (torrent has {count})")]
    NoSuchPiece {
        /// The index asked for.
        piece: u32,
        /// Pieces in the torrent.
        count: u32,
    },
    /// An offset/length outside the piece (or a block too long or empty).
    #[error("range {offset}+{length} outside piece {piece} of {piece_size} bytes")]
    BadRange {
        /// The piece.
        piece: u32,
        /// Offset in the piece.
        offset: u32,
        /// Length asked for.
        length: u64,
        /// The piece's size.
        piece_size: u64,
    },
    /// Reading a piece that is not verified.
    #[error("piece {piece} is not verified")]
    NotVerified {
        /// The piece.
        piece: u32,
    },
    /// Writing a piece that is already verified.
    #[error("piece {piece} is already verified")]
    AlreadyVerified {
        /// The piece.
        piece: u32,
    },
    /// Writing to a store opened read-only (seeding or finished).
    #[error("{path} is open read-only")]
    ReadOnly {
        /// The file.
        path: PathBuf,
    },
    /// `finish` before every piece is verified.
    #[error("{missing} pieces still missing")]
    Incomplete {
        /// Pieces not verified yet.
        missing: u32,
    },
    /// A file to seed has the wrong size.
    #[error("{path} has {got} bytes, the torrent {expected}")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// The torrent's length.
        expected: u64,
        /// The file's length.
        got: u64,
    },
}

impl StorageError {
    /// Whether the disk is full ([`StorageError::DiskFull`]): the operation may succeed once
    /// space is freed.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::DiskFull { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| {
        let path = path.to_path_buf();
        if is_disk_full(&source) {
            StorageError::DiskFull { op, path, source }
        } else {
            StorageError::Io { op, path, source }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Downloading into `.part`.
    Partial,
    /// The final file, read-only.
    Complete,
}

/// The pieces of one torrent on disk (see the module docs).
#[derive(Debug)]
pub struct PieceStore {
    info_hash: InfoHash,
    length: u64,
    piece_length: u64,
    hashes: Vec<[u8; 20]>,
    final_path: PathBuf,
    part_path: PathBuf,
    resume_path: PathBuf,
    file: File,
    have: Bitfield,
    /// Verified pieces whose data may not be on stable storage yet (subset of `have`).
    unsynced: Bitfield,
    mode: Mode,
    failed_on_open: Vec<u32>,
    faults: Option<Arc<dyn IoFaults>>,
}

/// Verified-but-unsynced pieces that trigger a checkpoint (one fdatasync for all of them).
const CHECKPOINT_PIECES: u32 = 32;

impl PieceStore {
    /// Opens (or starts) the download of `meta` into `dir` (see the module docs for the files).
    ///
    /// A final file of the right length counts as complete if `trust_complete`, else every piece
    /// is re-hashed: if any fails (see [`PieceStore::failed_on_open`]) the file becomes the
    /// `.part` again with the good pieces recorded. A final file of another length is left alone
    /// and replaced by [`PieceStore::finish`]. A `.part` is resumed with the pieces its resume
    /// file records, if that file is intact and matches this torrent; otherwise from nothing.
    pub fn open(
        dir: &Path,
        meta: &Metainfo,
        trust_complete: bool,
    ) -> Result<PieceStore, StorageError> {
        validate_name(&meta.info.name).map_err(|_| StorageError::BadName {
            name: meta.info.name.clone(),
        })?;
        let final_path = dir.join(&meta.info.name);
        let part_path = dir.join(format!("{}.part", meta.info.name));
        let resume_path = dir.join(format!("{}.resume", meta.info.name));
        let count = meta.piece_count();
        let final_len = fs::metadata(&final_path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        if final_len == Some(meta.info.length) {
            let file = File::open(&final_path).map_err(io_err("open", &final_path))?;
            let mut store = PieceStore::with(
                meta,
                final_path,
                part_path,
                resume_path,
                file,
                Mode::Complete,
            );
            store.have = Bitfield::full(count);
            if trust_complete {
                return Ok(store);
            }
            store.have = Bitfield::new(count);
            let mut failed = Vec::new();
            for piece in 0..count {
                if store.hash_matches(piece)? {
                    store.have.set(piece);
                } else {
                    failed.push(piece);
                }
            }
            if failed.is_empty() {
                return Ok(store);
            }
            tracing::warn!(target: TARGET, path = %store.final_path.display(), ?failed, "complete file failed re-check; resuming it as a partial download");
            fs::rename(&store.final_path, &store.part_path)
                .map_err(io_err("rename", &store.final_path))?;
            store.file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&store.part_path)
                .map_err(io_err("open", &store.part_path))?;
            store.mode = Mode::Partial;
            store
                .file
                .sync_all()
                .map_err(io_err("fsync", &store.part_path))?;
            store.save_resume(true)?;
            store.failed_on_open = failed;
            return Ok(store);
        }
        if let Some(got) = final_len {
            tracing::warn!(target: TARGET, path = %final_path.display(), got, expected = meta.info.length, "existing file has the wrong length; it will be replaced");
        }
        let part_existed = part_path.is_file();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_err("open", &part_path))?;
        let part_len = file.metadata().map_err(io_err("stat", &part_path))?.len();
        let mut store = PieceStore::with(
            meta,
            final_path,
            part_path,
            resume_path,
            file,
            Mode::Partial,
        );
        if part_existed && part_len == meta.info.length {
            match resume::load(
                &store.resume_path,
                store.info_hash,
                store.piece_length,
                store.length,
                count,
            ) {
                Ok(Some(rec)) => {
                    store.have = rec.synced;
                    // Recorded but maybe not on disk (power loss): only those are re-hashed.
                    let mut rechecked = 0u32;
                    for piece in rec.unsynced.iter_ones() {
                        if !store.have.get(piece) && store.hash_matches(piece)? {
                            store.have.set(piece);
                            rechecked += 1;
                        }
                    }
                    if rec.unsynced.count_ones() > 0 {
                        tracing::debug!(target: TARGET, rechecked, of = rec.unsynced.count_ones(), "re-hashed unsynced pieces");
                        store.checkpoint()?;
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(target: TARGET, path = %store.resume_path.display(), reason, "resume file ignored");
                }
            }
        }
        if part_len != meta.info.length {
            store
                .file
                .set_len(meta.info.length)
                .map_err(io_err("set_len", &store.part_path))?;
        }
        tracing::info!(target: TARGET, path = %store.part_path.display(), have = store.have.count_ones(), of = count, "part file opened");
        Ok(store)
    }

    /// Opens an existing complete file read-only for seeding (trusted: the caller made the
    /// metainfo from it). Works on read-only directories.
    pub fn seed(path: &Path, meta: &Metainfo) -> Result<PieceStore, StorageError> {
        let file = File::open(path).map_err(io_err("open", path))?;
        let got = file.metadata().map_err(io_err("stat", path))?.len();
        if got != meta.info.length {
            return Err(StorageError::WrongLength {
                path: path.to_path_buf(),
                expected: meta.info.length,
                got,
            });
        }
        let mut store = PieceStore::with(
            meta,
            path.to_path_buf(),
            path.with_extension("part"),
            path.with_extension("resume"),
            file,
            Mode::Complete,
        );
        store.have = Bitfield::full(meta.piece_count());
        Ok(store)
    }

    fn with(
        meta: &Metainfo,
        final_path: PathBuf,
        part_path: PathBuf,
        resume_path: PathBuf,
        file: File,
        mode: Mode,
    ) -> PieceStore {
        PieceStore {
            info_hash: meta.info_hash(),
            length: meta.info.length,
            piece_length: meta.info.piece_length,
            hashes: meta.info.pieces.clone(),
            final_path,
            part_path,
            resume_path,
            file,
            have: Bitfield::new(meta.piece_count()),
            unsynced: Bitfield::new(meta.piece_count()),
            mode,
            failed_on_open: Vec::new(),
            faults: None,
        }
    }

    /// Consults `faults` before every later write, sync, resume write and rename (see
    /// [`faults`]).
    pub fn set_faults(&mut self, faults: Arc<dyn IoFaults>) {
        self.faults = Some(faults);
    }

    /// Asks the installed [`IoFaults`] whether `op` may go ahead.
    fn fault(&self, op: IoOp, path: &Path, len: u64) -> io::Result<()> {
        match &self.faults {
            Some(f) => f.before(op, path, len),
            None => Ok(()),
        }
    }

    /// The verified pieces.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Pieces of a complete-looking file that failed the re-check in [`PieceStore::open`].
    pub fn failed_on_open(&self) -> &[u32] {
        &self.failed_on_open
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// The file currently holding the data (`.part` or the final file).
    pub fn data_path(&self) -> &Path {
        match self.mode {
            Mode::Partial => &self.part_path,
            Mode::Complete => &self.final_path,
        }
    }

    fn piece_count(&self) -> u32 {
        self.have.len()
    }

    fn piece_size(&self, piece: u32) -> u64 {
        let start = u64::from(piece).saturating_mul(self.piece_length);
        self.piece_length.min(self.length.saturating_sub(start))
    }

    /// Checks `piece`, `offset`, `length` and returns the absolute file offset.
    fn locate(&self, piece: u32, offset: u32, length: u64) -> Result<u64, StorageError> {
        if piece >= self.piece_count() {
            return Err(StorageError::NoSuchPiece {
                piece,
                count: self.piece_count(),
            });
        }
        let piece_size = self.piece_size(piece);
        let end = u64::from(offset).checked_add(length);
        if length == 0 || length > u64::from(MAX_BLOCK_LEN) || end.is_none_or(|e| e > piece_size) {
            return Err(StorageError::BadRange {
                piece,
                offset,
                length,
                piece_size,
            });
        }
        Ok(u64::from(piece) * self.piece_length + u64::from(offset))
    }

    /// Writes a block of an unverified piece in place.
    pub fn write_block(
        &mut self,
        piece: u32,
        offset: u32,
        data: &[u8],
    ) -> Result<(), StorageError> {
        if self.mode != Mode::Partial {
            return Err(StorageError::ReadOnly {
                path: self.final_path.clone(),
            });
        }
        let at = self.locate(piece, offset, data.len() as u64)?;
        if self.have.get(piece) {
            return Err(StorageError::AlreadyVerified { piece });
        }
        self.fault(IoOp::Write, &self.part_path, data.len() as u64)
            .and_then(|()| write_all_at(&self.file, data, at))
            .map_err(io_err("write", &self.part_path))
    }

    /// Hashes piece `piece` from disk; on a match records it in the resume file as unsynced
    /// (re-hashed if the process dies before the next checkpoint) and, every
    /// `CHECKPOINT_PIECES` pieces or when complete, makes all of them durable with one
    /// fdatasync. Returns whether it matched (a mismatch records nothing).
    pub fn verify_piece(&mut self, piece: u32) -> Result<bool, StorageError> {
        if piece >= self.piece_count() {
            return Err(StorageError::NoSuchPiece {
                piece,
                count: self.piece_count(),
            });
        }
        if self.have.get(piece) {
            return Ok(true);
        }
        if !self.hash_matches(piece)? {
            tracing::debug!(target: TARGET, piece, "piece hash mismatch");
            return Ok(false);
        }
        self.have.set(piece);
        self.unsynced.set(piece);
        let saved = if self.unsynced.count_ones() >= CHECKPOINT_PIECES || self.is_complete() {
            self.checkpoint()
        } else {
            self.save_resume(false)
        };
        if let Err(e) = saved {
            self.have.clear(piece);
            self.unsynced.clear(piece);
            return Err(e);
        }
        Ok(true)
    }

    /// Makes every verified piece durable: one fdatasync of the data, then the resume file
    /// (fsynced) records them as synced. Called every few pieces by `verify_piece`; call it
    /// when a download pauses or the process stops.
    pub fn checkpoint(&mut self) -> Result<(), StorageError> {
        if self.mode != Mode::Partial {
            return Ok(());
        }
        self.fault(IoOp::Sync, &self.part_path, 0)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("fdatasync", &self.part_path))?;
        let pending = std::mem::replace(&mut self.unsynced, Bitfield::new(self.have.len()));
        if let Err(e) = self.save_resume(true) {
            self.unsynced = pending;
            return Err(e);
        }
        Ok(())
    }

    fn hash_matches(&self, piece: u32) -> Result<bool, StorageError> {
        let size = self.piece_size(piece);
        let start = u64::from(piece) * self.piece_length;
        let mut hasher = Sha1::new();
        let mut buf = vec![0u8; HASH_CHUNK.min(usize::try_from(size).unwrap_or(HASH_CHUNK))];
        let mut done = 0u64;
        while done < size {
            let n = usize::try_from((size - done).min(buf.len() as u64)).unwrap_or(buf.len());
            read_exact_at(&self.file, &mut buf[..n], start + done)
                .map_err(io_err("read", self.data_path()))?;
            hasher.update(&buf[..n]);
            done += n as u64;
        }
        let got: [u8; 20] = hasher.finalize().into();
        Ok(self.hashes.get(piece as usize) == Some(&got))
    }

    /// Reads a block of a verified piece (for uploads).
    pub fn read_block(
        &self,
        piece: u32,
        offset: u32,
        length: u32,
    ) -> Result<Vec<u8>, StorageError> {
        let at = self.locate(piece, offset, u64::from(length))?;
        if !self.have.get(piece) {
            return Err(StorageError::NotVerified { piece });
        }
        let mut buf = vec![0u8; length as usize];
        read_exact_at(&self.file, &mut buf, at).map_err(io_err("read", self.data_path()))?;
        Ok(buf)
    }

    /// Moves the complete `.part` into place: fsync, atomic rename, fsync of the directory,
    /// resume file removed. Idempotent; returns the final path. A failed fsync or rename leaves
    /// the `.part` (and every verified piece) as it was, to be finished again later.
    pub fn finish(&mut self) -> Result<PathBuf, StorageError> {
        if self.mode == Mode::Complete {
            return Ok(self.final_path.clone());
        }
        if !self.is_complete() {
            return Err(StorageError::Incomplete {
                missing: self.piece_count() - self.have.count_ones(),
            });
        }
        self.fault(IoOp::Sync, &self.part_path, 0)
            .and_then(|()| self.file.sync_all())
            .map_err(io_err("fsync", &self.part_path))?;
        self.fault(IoOp::Rename, &self.part_path, 0)
            .and_then(|()| fs::rename(&self.part_path, &self.final_path))
            .map_err(io_err("rename", &self.part_path))?;
        // Renamed: complete from here on, even if what follows fails (a retry returns Ok).
        self.mode = Mode::Complete;
        resume::sync_dir(&self.final_path).map_err(io_err("fsync dir", &self.final_path))?;
        match fs::remove_file(&self.resume_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &self.resume_path)(e)),
        }
        tracing::info!(target: TARGET, path = %self.final_path.display(), "download finished");
        Ok(self.final_path.clone())
    }

    fn save_resume(&self, durable: bool) -> Result<(), StorageError> {
        let mut synced = self.have.clone();
        for piece in self.unsynced.iter_ones() {
            synced.clear(piece);
        }
        let rec = resume::Recorded {
            synced,
            unsynced: self.unsynced.clone(),
        };
        let len = resume::encoded_len(&rec);
        self.fault(IoOp::WriteResume, &self.resume_path, len)
            .and_then(|()| {
                resume::save(
                    &self.resume_path,
                    self.info_hash,
                    self.piece_length,
                    self.length,
                    &rec,
                    durable,
                )
            })
            .map_err(io_err("write resume", &self.resume_path))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, at)
}

#[cfg(unix)]
fn write_all_at(file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, at)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &File, buf: &mut [u8], at: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(buf)
}

#[cfg(not(unix))]
fn write_all_at(mut file: &File, buf: &[u8], at: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(at))?;
    file.write_all(buf)
}
