//! Interop: our info-hash equals what independent BitTorrent tools compute for the same file.
//!
//! Needs the Debian packages installed by `.ci/run`:
//! `apt-get install -y --no-install-recommends python3-libtorrent transmission-cli aria2 mktorrent`.
//! A missing tool fails the test (it never skips silently).

use std::path::Path;
use std::process::Command;

use shardswarm_torrent::metainfo::Metainfo;

const APT_HINT: &str = "install it with `apt-get install -y --no-install-recommends \
                        python3-libtorrent transmission-cli aria2 mktorrent` (see .ci/run)";

/// Runs a tool and returns its stdout; panics with the install hint if it is missing.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): {APT_HINT}"));
    assert!(
        out.status.success(),
        "`{program} {args:?}` failed ({}): {}\n{APT_HINT}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value after `label` on the first line containing it, lowercased.
fn field(output: &str, label: &str) -> String {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{output}"))
        .trim()
        .to_lowercase()
}

fn transmission_hash(torrent: &Path) -> String {
    field(
        &run("transmission-show", &[torrent.to_str().unwrap()]),
        "Hash:",
    )
}

fn aria2_hash(torrent: &Path) -> String {
    field(
        &run("aria2c", &["--show-files", torrent.to_str().unwrap()]),
        "Info Hash:",
    )
}

fn libtorrent_hash(torrent: &Path) -> String {
    // libtorrent's Python binding is installed for Debian's interpreter only.
    let script = "import sys, libtorrent as lt; print(lt.torrent_info(sys.argv[1]).info_hash())";
    run(
        "/usr/bin/python3",
        &["-c", script, torrent.to_str().unwrap()],
    )
    .trim()
    .to_lowercase()
}

/// ~3 MB of xorshift noise (deterministic, no compressible runs).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn info_hash_matches_mktorrent_transmission_aria2_and_libtorrent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shard-0.gguf");
    std::fs::write(&file, noise(3_000_017)).unwrap();

    let ours = Metainfo::from_file(&file, "shard-0.gguf", Some(256 * 1024)).unwrap();
    // 3 MB is well under 256 MiB, so the default rule picks 256 KiB too.
    let defaulted = Metainfo::from_file(&file, "shard-0.gguf", None).unwrap();
    assert_eq!(defaulted.info_hash(), ours.info_hash());
    let our_hash = ours.info_hash().to_string();
    let our_torrent = dir.path().join("ours.torrent");
    std::fs::write(&our_torrent, ours.to_torrent_bytes()).unwrap();

    let mk_torrent = dir.path().join("mktorrent.torrent");
    run(
        "mktorrent",
        &[
            "-l",
            "18",
            "-o",
            mk_torrent.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    );

    for torrent in [&our_torrent, &mk_torrent] {
        assert_eq!(
            transmission_hash(torrent),
            our_hash,
            "transmission-show on {torrent:?}"
        );
        assert_eq!(
            libtorrent_hash(torrent),
            our_hash,
            "libtorrent on {torrent:?}"
        );
        assert_eq!(aria2_hash(torrent), our_hash, "aria2c on {torrent:?}");
    }

    // mktorrent's file parses to the same info (its extra top-level keys are ignored).
    let theirs = Metainfo::from_torrent_bytes(&std::fs::read(&mk_torrent).unwrap()).unwrap();
    assert_eq!(theirs.info, ours.info);
    assert_eq!(theirs.info_hash(), ours.info_hash());
    assert_eq!(theirs.info_bytes(), ours.info_bytes());
}
