//! Piece storage on a temp dir: write/verify/finish, crash and resume, foreign or corrupt resume
//! files, hostile ranges, seeding.

use std::fs;
use std::path::Path;

use shardswarm_torrent::storage::{PieceStore, StorageError};

mod fixture;
use fixture::{PIECE, meta, piece};

fn data(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 9) as u8)
        .collect()
}

/// Writes piece `i` in two blocks.
fn write_piece(store: &mut PieceStore, bytes: &[u8], i: u32) {
    let p = piece(bytes, i);
    let half = p.len() / 2;
    store.write_block(i, half as u32, &p[half..]).unwrap();
    store.write_block(i, 0, &p[..half]).unwrap();
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn write_verify_finish_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(5 * PIECE as usize + 1234, 1);
    let m = meta("shard.bin", &bytes);
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(files(dir.path()), vec!["shard.bin.part"]);
    assert_eq!(
        fs::metadata(dir.path().join("shard.bin.part"))
            .unwrap()
            .len(),
        bytes.len() as u64
    );
    for i in (0..m.piece_count()).rev() {
        write_piece(&mut store, &bytes, i);
        assert!(store.verify_piece(i).unwrap());
    }
    assert!(store.is_complete());
    // A verified piece is served, also before finish.
    assert_eq!(store.read_block(5, 0, 1234).unwrap(), piece(&bytes, 5));
    let path = store.finish().unwrap();
    assert_eq!(path, dir.path().join("shard.bin"));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(files(dir.path()), vec!["shard.bin"]);
    assert_eq!(
        store.read_block(1, 100, 200).unwrap(),
        &bytes[PIECE as usize + 100..PIECE as usize + 300]
    );
    assert!(matches!(
        store.write_block(0, 0, b"x"),
        Err(StorageError::ReadOnly { .. })
    ));
    // Re-opening the finished file: trusted, or re-hashed.
    assert!(
        PieceStore::open(dir.path(), &m, true)
            .unwrap()
            .is_complete()
    );
    let rechecked = PieceStore::open(dir.path(), &m, false).unwrap();
    assert!(rechecked.is_complete());
    assert!(rechecked.failed_on_open().is_empty());
}

#[test]
fn crash_keeps_verified_pieces_and_drops_unverified_ones() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(4 * PIECE as usize, 2);
    let m = meta("s", &bytes);
    {
        let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
        write_piece(&mut store, &bytes, 0);
        write_piece(&mut store, &bytes, 2);
        assert!(store.verify_piece(2).unwrap());
        write_piece(&mut store, &bytes, 3); // written, never verified
        // Dropped without finish: a crash.
    }
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(store.have().iter_ones().collect::<Vec<_>>(), vec![2]);
    assert!(matches!(
        store.read_block(3, 0, 10),
        Err(StorageError::NotVerified { piece: 3 })
    ));
    for i in [0, 1, 3] {
        write_piece(&mut store, &bytes, i);
        assert!(store.verify_piece(i).unwrap());
    }
    store.finish().unwrap();
    assert_eq!(fs::read(dir.path().join("s")).unwrap(), bytes);
}

#[test]
fn resume_file_of_another_torrent_or_corrupt_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = data(3 * PIECE as usize, 3);
    let b = data(3 * PIECE as usize, 4);
    let (ma, mb) = (meta("s", &a), meta("s", &b));
    {
        let mut store = PieceStore::open(dir.path(), &ma, false).unwrap();
        write_piece(&mut store, &a, 1);
        assert!(store.verify_piece(1).unwrap());
    }
    // Same name and length, other info-hash: start over.
    assert_eq!(
        PieceStore::open(dir.path(), &mb, false)
            .unwrap()
            .have()
            .count_ones(),
        0
    );
    // The right torrent still finds its record...
    assert_eq!(
        PieceStore::open(dir.path(), &ma, false)
            .unwrap()
            .have()
            .count_ones(),
        1
    );
    // ...unless the resume file is damaged.
    let resume = dir.path().join("s.resume");
    let mut raw = fs::read(&resume).unwrap();
    let last = raw.len() - 25;
    raw[last] ^= 0xff;
    fs::write(&resume, &raw).unwrap();
    assert_eq!(
        PieceStore::open(dir.path(), &ma, false)
            .unwrap()
            .have()
            .count_ones(),
        0
    );
    fs::write(&resume, b"garbage").unwrap();
    assert_eq!(
        PieceStore::open(dir.path(), &ma, false)
            .unwrap()
            .have()
            .count_ones(),
        0
    );
}

#[test]
fn corrupt_piece_fails_verification_and_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * PIECE as usize, 5);
    let m = meta("s", &bytes);
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    let mut bad = piece(&bytes, 0).to_vec();
    bad[77] ^= 1;
    store.write_block(0, 0, &bad).unwrap();
    assert!(!store.verify_piece(0).unwrap());
    assert!(!store.have().get(0));
    drop(store);
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(store.have().count_ones(), 0);
    // Rewriting it fixes it.
    write_piece(&mut store, &bytes, 0);
    assert!(store.verify_piece(0).unwrap());
    assert!(matches!(
        store.write_block(0, 0, b"x"),
        Err(StorageError::AlreadyVerified { piece: 0 })
    ));
}

#[test]
fn hostile_offsets_and_lengths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(2 * PIECE as usize - 100, 6);
    let m = meta("s", &bytes);
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    for i in 0..2 {
        write_piece(&mut store, &bytes, i);
        assert!(store.verify_piece(i).unwrap());
    }
    let last = PIECE as u32 - 100;
    for (piece, offset, length) in [
        (0, 0, PIECE as u32 + 1),
        (0, PIECE as u32, 1),
        (1, last - 10, 11),
        (0, u32::MAX, 2),
        (0, 1, u32::MAX),
        (0, 0, 0),
    ] {
        assert!(
            matches!(
                store.read_block(piece, offset, length),
                Err(StorageError::BadRange { .. })
            ),
            "read {piece} {offset} {length}"
        );
    }
    assert!(matches!(
        store.read_block(2, 0, 1),
        Err(StorageError::NoSuchPiece { .. })
    ));
    assert!(matches!(
        store.read_block(u32::MAX, 0, 1),
        Err(StorageError::NoSuchPiece { .. })
    ));
    assert!(matches!(
        store.verify_piece(9),
        Err(StorageError::NoSuchPiece { .. })
    ));
    assert_eq!(
        store.read_block(1, last - 10, 10).unwrap(),
        &bytes[bytes.len() - 10..]
    );
    let mut fresh = PieceStore::open(tempfile::tempdir().unwrap().path(), &m, false).unwrap();
    assert!(matches!(
        fresh.write_block(1, last - 1, b"ab"),
        Err(StorageError::BadRange { .. })
    ));
    assert!(matches!(
        fresh.write_block(0, u32::MAX, b"ab"),
        Err(StorageError::BadRange { .. })
    ));
    assert!(matches!(
        fresh.finish(),
        Err(StorageError::Incomplete { missing: 2 })
    ));
}

#[test]
fn damaged_complete_file_is_rechecked_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * PIECE as usize, 7);
    let m = meta("s", &bytes);
    let mut damaged = bytes.clone();
    damaged[PIECE as usize + 5] ^= 0x40;
    fs::write(dir.path().join("s"), &damaged).unwrap();
    let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(store.failed_on_open(), &[1]);
    assert_eq!(store.have().iter_ones().collect::<Vec<_>>(), vec![0, 2]);
    assert!(!dir.path().join("s").exists());
    write_piece(&mut store, &bytes, 1);
    assert!(store.verify_piece(1).unwrap());
    store.finish().unwrap();
    assert_eq!(fs::read(dir.path().join("s")).unwrap(), bytes);
}

#[test]
fn seed_serves_blocks_of_a_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(3 * PIECE as usize + 17, 8);
    let path = dir.path().join("model-00001.gguf");
    fs::write(&path, &bytes).unwrap();
    let m = meta("model-00001.gguf", &bytes);
    let mut store = PieceStore::seed(&path, &m).unwrap();
    assert!(store.is_complete());
    assert_eq!(
        store.read_block(3, 0, 17).unwrap(),
        &bytes[3 * PIECE as usize..]
    );
    assert_eq!(store.read_block(0, 16, 32).unwrap(), &bytes[16..48]);
    assert!(matches!(
        store.write_block(0, 0, b"x"),
        Err(StorageError::ReadOnly { .. })
    ));
    assert_eq!(store.finish().unwrap(), path);
    let short = meta("model-00001.gguf", &bytes[..100]);
    assert!(matches!(
        PieceStore::seed(&path, &short),
        Err(StorageError::WrongLength { .. })
    ));
}

#[test]
fn unsynced_pieces_are_rehashed_on_reopen_and_lost_data_is_not_trusted() {
    // Three verified pieces, no checkpoint yet (fewer than the checkpoint count): the resume
    // file records them as unsynced. Simulate a power loss that kept the resume file but not
    // piece 1's data: on reopen piece 1 is re-hashed and dropped, the others kept.
    let dir = tempfile::tempdir().unwrap();
    let bytes = data(6 * PIECE as usize, 9);
    let m = meta("f.bin", &bytes);
    {
        let mut store = PieceStore::open(dir.path(), &m, false).unwrap();
        for i in [0, 1, 2] {
            write_piece(&mut store, &bytes, i);
            assert!(store.verify_piece(i).unwrap());
        }
    }
    let part = dir.path().join("f.bin.part");
    let mut on_disk = fs::read(&part).unwrap();
    on_disk[PIECE as usize..2 * PIECE as usize].fill(0);
    fs::write(&part, &on_disk).unwrap();
    let store = PieceStore::open(dir.path(), &m, false).unwrap();
    let kept: Vec<u32> = store.have().iter_ones().collect();
    assert_eq!(kept, vec![0, 2]);
    // After the reopen the survivors were checkpointed: a second reopen trusts them as synced.
    drop(store);
    let store = PieceStore::open(dir.path(), &m, false).unwrap();
    assert_eq!(store.have().iter_ones().collect::<Vec<_>>(), vec![0, 2]);
}
