//! A full disk under the piece store, injected through `storage::faults`: ENOSPC on a block
//! write, on the resume file, on the fsync of a checkpoint and on the final rename. Each time
//! the error says the disk is full, the piece is not counted, nothing is renamed, and once space
//! is back the same store (or one reopened from disk) finishes with the right bytes.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use shardswarm_torrent::Metainfo;
use shardswarm_torrent::storage::faults::{IoFaults, IoOp};
use shardswarm_torrent::storage::{PieceStore, StorageError};

mod fixture;
use fixture::{PIECE, piece};

const ENOSPC: i32 = 28;

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37) ^ (i >> 8) as u8)
        .collect()
}

/// A disk that is full for the operations in `full`, and for block writes past `budget` bytes.
#[derive(Debug, Default)]
struct FullDisk {
    full: Mutex<HashSet<IoOp>>,
    budget: Mutex<Option<u64>>,
}

impl FullDisk {
    fn fill(&self, op: IoOp) {
        self.full.lock().unwrap().insert(op);
    }

    fn free(&self) {
        self.full.lock().unwrap().clear();
        *self.budget.lock().unwrap() = None;
    }
}

impl IoFaults for FullDisk {
    fn before(&self, op: IoOp, _path: &Path, len: u64) -> io::Result<()> {
        if self.full.lock().unwrap().contains(&op) {
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        if op == IoOp::Write
            && let Some(left) = self.budget.lock().unwrap().as_mut()
        {
            if len > *left {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
            *left -= len;
        }
        Ok(())
    }
}

fn store_with(dir: &Path, m: &Metainfo) -> (PieceStore, Arc<FullDisk>) {
    let mut store = PieceStore::open(dir, m, false).unwrap();
    let disk = Arc::new(FullDisk::default());
    store.set_faults(disk.clone());
    (store, disk)
}

fn assert_disk_full(e: &StorageError, op: &str) {
    assert!(e.is_disk_full(), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("disk full: cannot {op} ")) && msg.contains("No space left"),
        "unclear message: {msg}"
    );
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn enospc_on_a_block_write_counts_nothing_and_the_piece_is_fetched_again_later() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * PIECE as usize);
    let m = fixture::meta("shard-0.gguf", &bytes);
    let (mut store, disk) = store_with(dir.path(), &m);
    let p0 = piece(&bytes, 0);
    // Room for half a piece.
    *disk.budget.lock().unwrap() = Some(PIECE / 2);
    store.write_block(0, 0, &p0[..PIECE as usize / 2]).unwrap();
    let e = store
        .write_block(0, PIECE as u32 / 2, &p0[PIECE as usize / 2..])
        .unwrap_err();
    assert_disk_full(&e, "write");
    // The half-written piece does not verify, and nothing was recorded.
    assert!(!store.verify_piece(0).unwrap());
    assert_eq!(store.have().count_ones(), 0);
    assert_eq!(names(dir.path()), ["shard-0.gguf.part"]);

    // Space again: the same store takes the piece and the rest.
    disk.free();
    store.write_block(0, 0, p0).unwrap();
    for i in 0..3 {
        if i > 0 {
            store.write_block(i, 0, piece(&bytes, i)).unwrap();
        }
        assert!(store.verify_piece(i).unwrap());
    }
    let path = store.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), bytes);
}

#[test]
fn enospc_on_the_resume_file_leaves_the_piece_unverified_until_it_can_be_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * PIECE as usize);
    let m = fixture::meta("shard-0.gguf", &bytes);
    let (mut store, disk) = store_with(dir.path(), &m);
    store.write_block(0, 0, piece(&bytes, 0)).unwrap();
    assert!(store.verify_piece(0).unwrap());
    store.write_block(1, 0, piece(&bytes, 1)).unwrap();
    disk.fill(IoOp::WriteResume);
    let e = store.verify_piece(1).unwrap_err();
    assert_disk_full(&e, "write resume");
    assert!(store.have().get(0) && !store.have().get(1));
    assert!(
        store.read_block(1, 0, 16).is_err(),
        "unverified piece served"
    );

    // A process dying now resumes with piece 0 only.
    let reopened = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(reopened.have().iter_ones().collect::<Vec<_>>(), [0]);
    drop(reopened);

    disk.free();
    assert!(store.verify_piece(1).unwrap());
    assert!(store.have().get(1));
}

#[test]
fn a_failed_fsync_at_the_last_piece_keeps_the_download_incomplete_and_unrenamed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * PIECE as usize + 100);
    let m = fixture::meta("shard-0.gguf", &bytes);
    let (mut store, disk) = store_with(dir.path(), &m);
    for i in 0..3 {
        store.write_block(i, 0, piece(&bytes, i)).unwrap();
    }
    assert!(store.verify_piece(0).unwrap());
    assert!(store.verify_piece(1).unwrap());
    // The last piece completes the file, which forces a checkpoint (fdatasync).
    disk.fill(IoOp::Sync);
    let e = store.verify_piece(2).unwrap_err();
    assert_disk_full(&e, "fdatasync");
    assert!(!store.is_complete());
    assert!(matches!(
        store.finish(),
        Err(StorageError::Incomplete { missing: 1 })
    ));
    assert_eq!(
        names(dir.path()),
        ["shard-0.gguf.part", "shard-0.gguf.resume"]
    );

    disk.free();
    assert!(store.verify_piece(2).unwrap());
    let path = store.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), bytes);
    assert_eq!(names(dir.path()), ["shard-0.gguf"]);
}

#[test]
fn enospc_on_fsync_or_rename_in_finish_leaves_the_part_file_to_finish_later() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * PIECE as usize);
    let m = fixture::meta("shard-0.gguf", &bytes);
    let (mut store, disk) = store_with(dir.path(), &m);
    for i in 0..2 {
        store.write_block(i, 0, piece(&bytes, i)).unwrap();
        assert!(store.verify_piece(i).unwrap());
    }
    assert!(store.is_complete());
    disk.fill(IoOp::Sync);
    assert_disk_full(&store.finish().unwrap_err(), "fsync");
    disk.free();
    disk.fill(IoOp::Rename);
    assert_disk_full(&store.finish().unwrap_err(), "rename");
    assert_eq!(
        names(dir.path()),
        ["shard-0.gguf.part", "shard-0.gguf.resume"]
    );
    // Still serving its verified pieces meanwhile.
    assert_eq!(store.read_block(1, 0, 64).unwrap(), &piece(&bytes, 1)[..64]);

    // A restart finds every piece recorded and finishes.
    drop(store);
    let mut reopened = PieceStore::open(dir.path(), &m, false).unwrap();
    assert!(reopened.is_complete());
    let path = reopened.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), bytes);
    assert_eq!(names(dir.path()), ["shard-0.gguf"]);
}

#[test]
fn other_io_errors_are_not_reported_as_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(PIECE as usize);
    let m = fixture::meta("shard-0.gguf", &bytes);
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    #[derive(Debug)]
    struct Eio;
    impl IoFaults for Eio {
        fn before(&self, _: IoOp, _: &Path, _: u64) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(5))
        }
    }
    store.set_faults(Arc::new(Eio));
    let e = store.write_block(0, 0, piece(&bytes, 0)).unwrap_err();
    assert!(!e.is_disk_full());
    assert!(matches!(e, StorageError::Io { op: "write", .. }), "{e:?}");
}
