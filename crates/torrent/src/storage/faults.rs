//! The seam for IO faults in a [`PieceStore`](super::PieceStore): before each operation that
//! changes the disk (a block write, an fsync, the resume file, the final rename) the store asks
//! its [`IoFaults`], if it has one, and an error it returns is handled exactly as if the OS had
//! returned it. Stores have none unless [`PieceStore::set_faults`](super::PieceStore::set_faults)
//! installs one; tests use it to make a disk "fill up" at a chosen byte or operation, which a
//! real file system can only do at its own moment.
//!
//! [`IoFaults::before`] only decides; it never touches the files, so a store with faults
//! behaves like one on a disk that refused the operation, and the store's invariants (nothing
//! counts before it is verified and synced, nothing is renamed before every piece is verified)
//! are tested as they are.

use std::fmt::Debug;
use std::io;
use std::path::Path;

/// An operation of the store that changes the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// A block written into the `.part` file (`len` bytes).
    Write,
    /// An `fdatasync`/`fsync` of the `.part` file.
    Sync,
    /// The resume file written (`len` bytes, through a temp file and a rename).
    WriteResume,
    /// The complete `.part` renamed to the final name.
    Rename,
}

/// Decides whether an operation fails (see the module docs).
pub trait IoFaults: Send + Sync + Debug {
    /// Called before `op` on `path` (`len`: bytes to be written, 0 when none); `Err` makes the
    /// operation fail with that error, as the OS would.
    fn before(&self, op: IoOp, path: &Path, len: u64) -> io::Result<()>;
}

/// Whether `e` says the file system is full (ENOSPC, or a disk quota).
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
