//! Issue 5 acceptance with real `shardswarm` processes on 127.0.0.1:
//! - four `--shards auto --max-shards 2` nodes started at the same moment cover the eight shards
//!   exactly once (two contiguous shards each) and the server says `[SWARM] ✅ Swarm ready`;
//! - a node killed with SIGKILL mid-download and restarted on the same data directory keeps the
//!   verified pieces it had recorded and fetches only the rest.
//!
//! Waits are on the processes' log lines (a reader thread per pipe feeds a condition variable),
//! with deadlines; where only the HTTP status can tell (download progress), it is polled with a
//! short interval and a deadline.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shardswarm_proto::Manifest;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::storage::PieceStore;

#[test]
fn four_auto_nodes_started_together_cover_every_shard_exactly_once() {
    run("four_auto_nodes", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let (srv, _manifest, srv_http) = server(root, 8, 64 * 1024, &[])?;
        procs.push(srv);
        // All four launched back to back, nobody waiting for anybody.
        for i in 0..4 {
            let args = node_args(
                root,
                &root.join(format!("node{i}")),
                &["--shards", "auto", "--max-shards", "2"],
            )?;
            procs.push(Proc::spawn(&format!("node{i}"), args)?);
        }
        procs[0].out.wait_for(
            "[SWARM] ✅ Swarm ready",
            Instant::now() + Duration::from_secs(40),
            |l| l.contains("Swarm ready: all 8 shards loaded").then_some(()),
        )?;

        let st = status(&srv_http)?;
        ensure!(st["swarm_ready"] == true, "server status not ready: {st}");
        let shards = st["shards"].as_array().context("shards")?;
        ensure!(shards.len() == 8, "8 shards expected: {st}");
        let mut by_peer: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for s in shards {
            let index = s["index"].as_u64().context("index")? as u32;
            let holders = s["loaded_by"].as_array().context("loaded_by")?;
            ensure!(
                holders.len() == 1,
                "shard {index} loaded by {} peers (want exactly one): {st}",
                holders.len()
            );
            let peer = holders[0].as_str().context("peer id")?.to_owned();
            by_peer.entry(peer).or_default().push(index);
        }
        ensure!(by_peer.len() == 4, "4 holders expected: {by_peer:?}");
        for (peer, mut held) in by_peer.clone() {
            held.sort_unstable();
            ensure!(
                held.len() == 2 && held[1] == held[0] + 1,
                "{peer} holds {held:?}, not 2 contiguous shards"
            );
        }

        // Each node's own view agrees: it loaded exactly its window.
        for p in &procs[1..] {
            let st = status(&p.http_base()?)?;
            let me = own(&st)?;
            let id = me["peer_id"].as_str().context("peer_id")?;
            let mut loaded = u32s(&me["loaded"]);
            loaded.sort_unstable();
            let want = by_peer.get(id).cloned().unwrap_or_default();
            ensure!(
                loaded == want,
                "{} ({id}) says it loaded {loaded:?}; the server says {want:?}",
                p.name
            );
        }
        Ok(())
    });
}

/// Bytes this node holds verified according to its own status: complete shards plus the
/// `have` of running downloads.
fn held_bytes(st: &Value, sizes: &[u64]) -> Result<(u64, Vec<u64>)> {
    let me = own(st)?;
    let mut per = vec![0u64; sizes.len()];
    for i in u32s(&me["verified"]) {
        if let Some(slot) = per.get_mut(i as usize) {
            *slot = sizes[i as usize];
        }
    }
    for d in me["downloading"].as_array().into_iter().flatten() {
        let i = d["index"].as_u64().context("index")? as usize;
        let have = d["have"].as_u64().context("have")?;
        if let Some(slot) = per.get_mut(i) {
            *slot = (*slot).max(have);
        }
    }
    Ok((per.iter().sum(), per))
}

/// Whether every shard `0..n` is in the peer's own `verified` or `downloading`.
fn covers_all(st: &Value, n: usize) -> Result<bool> {
    let me = own(st)?;
    let mut seen = vec![false; n];
    let downloading = me["downloading"].as_array().into_iter().flatten();
    for i in u32s(&me["verified"])
        .into_iter()
        .chain(downloading.filter_map(|d| d["index"].as_u64().map(|i| i as u32)))
    {
        if let Some(s) = seen.get_mut(i as usize) {
            *s = true;
        }
    }
    Ok(seen.iter().all(|s| *s))
}

/// Verified bytes of the shards still downloading.
fn partial_have(st: &Value) -> u64 {
    st["nodes"][0]["downloading"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["have"].as_u64()).sum())
        .unwrap_or(0)
}

/// What the killed node left on disk: per shard, the bytes of the pieces its store resumes
/// with, and their number. Read through the torrent crate's own store, opened on a copy of the
/// files (opening may re-hash pieces recorded before their fsync and checkpoint them; that must
/// stay the restarted node's own work).
fn on_disk(
    manifest: &Manifest,
    shards_dir: &Path,
    dir: &Path,
    scratch: &Path,
) -> Result<Vec<(u64, u32)>> {
    std::fs::create_dir_all(scratch)?;
    let mut out = Vec::new();
    for s in &manifest.shards {
        let names = [
            s.filename.clone(),
            format!("{}.part", s.filename),
            format!("{}.resume", s.filename),
        ];
        let mut any = false;
        for name in &names {
            if dir.join(name).is_file() {
                std::fs::copy(dir.join(name), scratch.join(name))
                    .with_context(|| format!("copying {name}"))?;
                any = true;
            }
        }
        if !any {
            out.push((0, 0));
            continue;
        }
        let meta = Metainfo::from_file(&shards_dir.join(&s.filename), &s.filename, None)?;
        let store = PieceStore::open(scratch, &meta, false)?;
        let have = store.have();
        let bytes = (0..meta.piece_count())
            .filter(|&p| have.get(p))
            .map(|p| meta.piece_size(p))
            .sum();
        out.push((bytes, have.count_ones()));
    }
    Ok(out)
}

#[test]
fn a_killed_node_resumes_without_refetching_verified_pieces() {
    run("killed_node_resumes", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        // 8 × ~1 MB (4 pieces each) at 1 MB/s after a 1 MB burst: ~7 s, time enough to kill
        // the node midway.
        let (srv, manifest, _) = server(root, 8, 1_000_000, &["--upload-limit", "1MB/s"])?;
        procs.push(srv);
        let sizes: Vec<u64> = manifest.shards.iter().map(|s| s.size).collect();
        let total: u64 = sizes.iter().sum();
        let piece_len = manifest.shards[0].piece_length;
        let node_dir = root.join("node");
        let model_dir = node_dir.join("models").join(&manifest.model_id);
        let args = node_args(root, &node_dir, &["--shards", "all"])?;
        procs.push(Proc::spawn("node (first run)", args)?);
        let http = procs[1].http_base()?;

        // Wait for a few verified pieces, then kill -9 in the middle of the download.
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = loop {
            let st = status(&http)?;
            let (held, per) = held_bytes(&st, &sizes)?;
            if held >= 4 * piece_len && partial_have(&st) > 0 {
                break per;
            }
            ensure!(Instant::now() < deadline, "no progress: held {held} bytes");
            procs[1].out.pause(POLL);
        };
        procs[1].kill()?;
        let held_before: u64 = before.iter().sum();
        ensure!(
            held_before < total,
            "download finished before the kill; nothing to resume"
        );
        let final_before: Vec<bool> = (0..sizes.len())
            .map(|i| model_dir.join(format!("shard-{i}.gguf")).is_file())
            .collect();
        let partial: Vec<usize> = (0..sizes.len())
            .filter(|&i| model_dir.join(format!("shard-{i}.gguf.part")).is_file())
            .collect();
        ensure!(!partial.is_empty(), "no .part file after the kill");
        for i in &partial {
            let resume = model_dir.join(format!("shard-{i}.gguf.resume"));
            ensure!(
                resume.is_file() || before[*i] == 0,
                "{} missing although shard {i} had {} verified bytes",
                resume.display(),
                before[*i]
            );
        }
        let disk = on_disk(
            &manifest,
            &root.join("shards"),
            &model_dir,
            &root.join("scratch"),
        )?;
        let resumed: u64 = disk.iter().map(|d| d.0).sum();
        for (i, (bytes, _)) in disk.iter().enumerate() {
            ensure!(
                *bytes >= before[i],
                "shard {i}: {bytes} bytes recorded on disk, but the status showed {} verified before the kill",
                before[i]
            );
        }

        // Same command, same data directory.
        let again = procs[1].respawn("node (restarted)")?;
        procs.push(again);
        let http = procs[2].http_base()?;
        let deadline = Instant::now() + Duration::from_secs(45);
        // Right after the restart: its first status that accounts for every shard (verified or
        // downloading; progress is reported after the first new piece, at most every 500 ms).
        let first = loop {
            let st = status(&http)?;
            if covers_all(&st, sizes.len())? {
                break held_bytes(&st, &sizes)?.1;
            }
            ensure!(
                Instant::now() < deadline,
                "restarted node shows no progress"
            );
            procs[2].out.pause(POLL);
        };
        for (i, (had, now)) in before.iter().zip(&first).enumerate() {
            ensure!(
                now >= had,
                "shard {i}: {had} bytes verified before the kill, {now} after the restart"
            );
        }
        let done = loop {
            let st = status(&http)?;
            if u32s(&own(&st)?["verified"]).len() == sizes.len() {
                break st;
            }
            ensure!(
                Instant::now() < deadline,
                "restarted node did not finish: {st}"
            );
            procs[2].out.pause(POLL);
        };
        ensure!(
            own(&done)?["downloading"]
                .as_array()
                .is_none_or(Vec::is_empty)
        );

        // The restarted process says which pieces it resumed with; it must be what was on disk.
        let logged = procs[2].out.collect(|l| {
            if !l.contains("resuming with verified pieces") {
                return None;
            }
            let field = |k: &str| -> Option<u32> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
            };
            Some((field("shard=")?, field("pieces=")?))
        });
        for (i, (_, pieces)) in disk.iter().enumerate() {
            if *pieces == 0 || final_before[i] {
                continue;
            }
            ensure!(
                logged.contains(&(i as u32, *pieces)),
                "shard {i}: {pieces} pieces on disk, restart logged {logged:?}"
            );
        }

        // The bound. `resumed` is what the store resumes with after the kill, and it covers
        // everything the status showed verified before (checked above), so the restarted process
        // needs exactly `total - resumed` bytes. A piece is the unit of verification: bytes of a
        // piece that had not been verified and recorded when the process died are fetched again
        // whole, and the issue tolerates less than one piece per shard in flight being fetched
        // again (a block re-requested after the reconnect, a duplicate), hence
        // `+ shards × piece_length`. With a single source (the server) there is no endgame
        // duplication between peers to excuse more; re-fetching any resumed piece, or starting
        // a shard over, exceeds the bound by at least a piece.
        let got = downloaded_bytes(&http)?;
        let bound = (total - resumed) + sizes.len() as u64 * piece_len;
        eprintln!(
            "total {total} B, verified before kill (status) {held_before} B, recorded on disk \
             {resumed} B, downloaded after restart {got} B, bound {bound} B"
        );
        ensure!(
            got <= bound,
            "restarted node downloaded {got} bytes; at most {bound} expected (total {total}, resumed {resumed})"
        );
        ensure!(
            got + resumed >= total,
            "downloaded {got} + resumed {resumed} < total {total}"
        );
        shardswarm_testkit::assert_same_files(&manifest, &root.join("shards"), &node_dir)?;
        Ok(())
    });
}
