//! Issue 9's fault injection with real `shardswarm` processes on 127.0.0.1 (small shards; the
//! server's `--upload-limit` stretches a distribution so a fault lands in the middle of it):
//! - the server killed and restarted on the same addresses mid-distribution: the nodes back off,
//!   reconnect, sync again and finish without starting over;
//! - a node killed with SIGKILL mid-write and restarted on its data directory: no final file is
//!   ever anything but the server's bytes, the pieces its resume file recorded are kept and
//!   only the rest is fetched;
//! - a node whose data directory is a tmpfs smaller than a shard: it says the disk is full,
//!   marks nothing complete, and finishes once the tmpfs is grown (skipped, with the reason
//!   printed, where `mount` is refused);
//! - the only holder of two shards killed under `--shards auto`: the status shows them
//!   uncovered and the swarm not ready, the server hands them to a remaining auto node, and the
//!   swarm is ready again.
//!
//! Every scenario ends with every node's shard files byte-identical to the server's and the
//! swarm ready. The stalling peer is `crates/node/tests/stall.rs` (an in-process double).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::Value;
use shardswarm_proto::Manifest;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::storage::PieceStore;

const LIMIT: Duration = Duration::from_secs(60);

/// Bytes this peer holds verified by its own status: complete shards plus running downloads.
fn held(st: &Value, manifest: &Manifest) -> Result<u64> {
    let me = own(st)?;
    let mut total = 0;
    for i in u32s(&me["verified"]) {
        total += manifest.shards.get(i as usize).map_or(0, |s| s.size);
    }
    for d in me["downloading"].as_array().into_iter().flatten() {
        total += d["have"].as_u64().context("have")?;
    }
    Ok(total)
}

fn verified_all(st: &Value, n: usize) -> Result<bool> {
    Ok(u32s(&own(st)?["verified"]).len() == n)
}

#[test]
fn the_server_restarting_mid_distribution_is_survived_by_backoff_and_resume() {
    run("server_restart", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        // 6 × ~1 MB at 1 MB/s from the server: a few seconds, and it dies in the middle.
        let (srv, manifest, _) = server(root, 6, 1_000_000, &["--upload-limit", "1MB/s"])?;
        procs.push(srv);
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        let piece = manifest.shards[0].piece_length;
        let dirs: Vec<PathBuf> = (0..2).map(|i| root.join(format!("node{i}"))).collect();
        let mut http = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let p = Proc::spawn(
                &format!("node{i}"),
                node_args(root, dir, &["--shards", "all"])?,
            )?;
            http.push(p.http_base()?);
            procs.push(p);
        }
        await_status(&procs[1], &http[0], "node0 mid-download", LIMIT, |st| {
            for d in &dirs {
                final_files_intact(&manifest, &shards, d)?;
            }
            Ok(held(st, &manifest)? >= 2 * piece)
        })?;
        let before: Vec<u64> = http
            .iter()
            .map(|h| held(&status(h)?, &manifest))
            .collect::<Result<_>>()?;
        ensure!(
            before.iter().all(|&b| b < total),
            "a node finished before the fault: {before:?} of {total}"
        );

        // Kill the server; restart it later on the same addresses (same data dir, same peer id).
        let addrs = std::fs::read_to_string(root.join("server/server.addrs"))?;
        let listen: Vec<String> = addrs
            .lines()
            .filter_map(|l| l.split("/p2p/").next())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        ensure!(listen.len() == 2, "server.addrs: {addrs}");
        let mut args = procs[0].args.clone();
        let mut quic_tcp = listen.iter();
        for a in args.iter_mut() {
            if a.ends_with("/udp/0/quic-v1") || a.ends_with("/tcp/0") {
                *a = quic_tcp.next().context("listen address")?.clone();
            }
        }
        procs[0].kill()?;
        let killed = Instant::now();
        for p in &procs[1..3] {
            await_line(p, "lost the rendezvous server; will redial", 1, LIMIT)?;
            // One redial failed and the next wait doubled.
            let line = await_line(
                p,
                "cannot reach the rendezvous server; will retry",
                1,
                LIMIT,
            )?;
            ensure!(line.contains("retry_in=2s"), "no back-off: {line}");
        }
        let down_for = killed.elapsed();
        let mut srv = Proc::spawn("server (restarted)", args)?;
        let srv_http = srv.http_base()?;
        std::mem::swap(&mut procs[0], &mut srv);
        procs.push(srv);

        // Each node reconnects, syncs again and finishes what it had started.
        for p in &procs[1..3] {
            await_line(p, "[TORRENT_SYNC] ✓ Received 6 available file(s)", 2, LIMIT)?;
        }
        await_line(
            &procs[0],
            "[SWARM] ✅ Swarm ready: all 6 shards loaded",
            1,
            LIMIT,
        )?;
        for (i, h) in http.iter().enumerate() {
            await_status(&procs[1 + i], h, "every shard verified", LIMIT, |st| {
                verified_all(st, 6)
            })?;
            // Resumed, not restarted: each byte came about once (a few endgame duplicates).
            let got = downloaded_bytes(h)?;
            eprintln!(
                "node{i}: held {} B of {total} B at the kill, downloaded {got} B in all; server down {down_for:?}",
                before[i]
            );
            ensure!(
                got <= total + total / 2,
                "node{i} downloaded {got} B for {total} B: started over?"
            );
        }
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        for d in &dirs {
            shardswarm_testkit::assert_same_files(&manifest, &shards, d)?;
        }
        all_good(&manifest, &shards, &dirs, &srv_http)
    });
}

/// Per shard, the bytes of the pieces the store of `dir` resumes with (opened on a copy, so
/// the restarted node does its own re-checks).
fn resumable(manifest: &Manifest, shards: &Path, dir: &Path, scratch: &Path) -> Result<Vec<u64>> {
    std::fs::create_dir_all(scratch)?;
    let mut out = Vec::new();
    for s in &manifest.shards {
        let part = dir.join(format!("{}.part", s.filename));
        if !part.is_file() {
            out.push(0);
            continue;
        }
        for ext in [".part", ".resume"] {
            let name = format!("{}{ext}", s.filename);
            if dir.join(&name).is_file() {
                std::fs::copy(dir.join(&name), scratch.join(&name))?;
            }
        }
        let meta = Metainfo::from_file(&shards.join(&s.filename), &s.filename, None)?;
        let store = PieceStore::open(scratch, &meta, false)?;
        let have = store.have();
        out.push(
            (0..meta.piece_count())
                .filter(|&p| have.get(p))
                .map(|p| meta.piece_size(p))
                .sum(),
        );
    }
    Ok(out)
}

#[test]
fn a_node_killed_mid_write_keeps_its_verified_pieces_and_never_leaves_a_corrupt_file() {
    run("sigkill_mid_write", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        let (srv, manifest, srv_http) = server(root, 4, 1_000_000, &["--upload-limit", "1MB/s"])?;
        procs.push(srv);
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        let piece = manifest.shards[0].piece_length;
        let victim_dir = root.join("victim");
        let other_dir = root.join("other");
        let victim = Proc::spawn(
            "victim",
            node_args(root, &victim_dir, &["--shards", "all"])?,
        )?;
        let http = victim.http_base()?;
        procs.push(victim);
        procs.push(Proc::spawn(
            "other",
            node_args(root, &other_dir, &["--shards", "all"])?,
        )?);

        // While it downloads, any final file is already the server's.
        await_status(
            &procs[1],
            &http,
            "verified pieces of a partial shard",
            LIMIT,
            |st| {
                final_files_intact(&manifest, &shards, &victim_dir)?;
                let partial: u64 = own(st)?["downloading"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["have"].as_u64())
                    .sum();
                // …and the node has recorded a verified piece of a partial shard in its
                // `.resume` (it records in batches: a piece verified a moment ago may not be
                // on disk yet, which is what a crash is allowed to lose).
                Ok(held(st, &manifest)? >= 3 * piece
                    && partial >= piece
                    && resumable(
                        &manifest,
                        &shards,
                        &model_dir(&victim_dir, &manifest),
                        &root.join("probe"),
                    )?
                    .iter()
                    .sum::<u64>()
                        > 0)
            },
        )?;
        procs[1].kill()?;
        let dir = model_dir(&victim_dir, &manifest);
        let complete = final_files_intact(&manifest, &shards, &victim_dir)?;
        ensure!(
            complete.len() < manifest.shards.len(),
            "finished before the kill"
        );
        let kept = resumable(&manifest, &shards, &dir, &root.join("scratch"))?;
        let resumed: u64 = kept.iter().sum();
        let complete_bytes: u64 = complete
            .iter()
            .map(|&i| manifest.shards[i as usize].size)
            .sum();
        ensure!(
            resumed > 0,
            "no verified piece of a partial shard survived: {kept:?}"
        );

        let again = procs[1].respawn("victim (restarted)")?;
        let http = again.http_base()?;
        procs.push(again);
        await_status(&procs[3], &http, "every shard verified", LIMIT, |st| {
            final_files_intact(&manifest, &shards, &victim_dir)?;
            verified_all(st, manifest.shards.len())
        })?;
        let logged = procs[3].out.collect(|l| {
            l.contains("resuming with verified pieces")
                .then(|| {
                    l.split("pieces=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u32>()
                        .ok()
                })
                .flatten()
        });
        let got = downloaded_bytes(&http)?;
        let need = total - complete_bytes - resumed;
        eprintln!(
            "total {total} B: complete at the kill {complete_bytes} B, resumable pieces {resumed} B \
             ({kept:?}); after the restart downloaded {got} B (needed {need} B); resume logs {logged:?}"
        );
        ensure!(
            !logged.is_empty(),
            "the restarted node logged no resumed pieces"
        );
        ensure!(
            got < total - complete_bytes && got + resumed + complete_bytes >= total,
            "downloaded {got} B after the restart; {need} B were missing"
        );
        // At most a piece per shard again (blocks in flight at the kill, endgame copies).
        ensure!(
            got <= need + manifest.shards.len() as u64 * piece,
            "re-fetched verified pieces: {got} B for {need} B missing"
        );
        await_status(
            &procs[2],
            &procs[2].http_base()?,
            "other done",
            LIMIT,
            |st| verified_all(st, manifest.shards.len()),
        )?;
        for d in [&victim_dir, &other_dir] {
            shardswarm_testkit::assert_same_files(&manifest, &shards, d)?;
        }
        all_good(&manifest, &shards, &[&victim_dir, &other_dir], &srv_http)
    });
}

/// A tmpfs mounted for the test, lazily unmounted when dropped (even after a failure).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `600k`) on `dir`; `Err(reason)` when the machine refuses.
    fn mount(dir: &Path, size: &str) -> std::result::Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_owned()))
    }

    fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()?;
        ensure!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount the tmpfs at {}", self.0.display());
        }
    }
}

#[test]
fn a_full_disk_is_reported_marks_nothing_complete_and_the_download_resumes_with_space() {
    run("disk_full", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        let (srv, manifest, srv_http) = server(root, 3, 1_000_000, &[])?;
        procs.push(srv);
        let node_dir = root.join("node-tmpfs");
        // Smaller than one shard.
        let fs = match Tmpfs::mount(&node_dir, "600k") {
            Ok(fs) => fs,
            Err(reason) => {
                eprintln!("SKIPPED: no tmpfs for the disk-full scenario: {reason}");
                return Ok(());
            }
        };
        let node = Proc::spawn("node", node_args(root, &node_dir, &["--shards", "all"])?)?;
        let http = node.http_base()?;
        procs.push(node);

        let paused = await_line(
            &procs[1],
            "download paused: not enough disk space",
            1,
            LIMIT,
        )?;
        let failed = await_line(&procs[1], "[TORRENT_SYNC] ✗ download failed", 1, LIMIT)?;
        for line in [&paused, &failed] {
            ensure!(
                line.contains("No space left on device") && line.contains("disk full"),
                "unclear error: {line}"
            );
        }
        eprintln!("the node said: {failed}");
        let st = status(&http)?;
        let me = own(&st)?;
        ensure!(
            u32s(&me["verified"]).is_empty() && u32s(&me["loaded"]).is_empty(),
            "a shard counts as complete on a full disk: {st}"
        );
        ensure!(
            final_files_intact(&manifest, &shards, &node_dir)?.is_empty(),
            "a final file exists on the full disk"
        );
        let srv_st = status(&srv_http)?;
        ensure!(
            srv_st["swarm_ready"] == false,
            "ready without data: {srv_st}"
        );

        // Space again: the paused downloads resume and finish.
        fs.resize("16m")?;
        await_line(&procs[1], "resuming the paused download", 1, LIMIT)?;
        await_status(&procs[1], &http, "every shard verified", LIMIT, |st| {
            verified_all(st, manifest.shards.len())
        })?;
        await_line(&procs[0], "[SWARM] ✅ Swarm ready", 1, LIMIT)?;
        shardswarm_testkit::assert_same_files(&manifest, &shards, &node_dir)?;
        all_good(&manifest, &shards, &[&node_dir], &srv_http)?;
        procs[1].kill()?;
        drop(fs);
        Ok(())
    });
}

#[test]
fn when_the_only_holder_dies_its_shards_go_to_an_auto_node_and_the_swarm_is_ready_again() {
    run("holder_leaves", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        // The server's uplink is slow enough that the gap after the kill lasts a few seconds.
        let (srv, manifest, srv_http) = server(root, 4, 400_000, &["--upload-limit", "300KB/s"])?;
        procs.push(srv);
        let auto = ["--shards", "auto", "--max-shards", "2"];
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = root.join(format!("auto{i}"));
            let p = Proc::spawn(&format!("auto{i}"), node_args(root, &dir, &auto)?)?;
            let http = p.http_base()?;
            procs.push(p);
            nodes.push((dir, http));
        }
        await_line(
            &procs[0],
            "[SWARM] ✅ Swarm ready: all 4 shards loaded",
            1,
            LIMIT,
        )?;
        // Ready needs one holder per shard; a second holder may still be loading its copy.
        // Decide who is alone only once the server sees every assigned shard loaded.
        let mut assigned = 0;
        for p in &procs[1..] {
            let line = await_line(p, "The server assigned shards", 1, LIMIT)?;
            let list = line
                .rsplit_once('[')
                .map_or("", |(_, l)| l.trim_end_matches(']'));
            assigned += list
                .split(',')
                .filter(|x| x.trim().parse::<u32>().is_ok())
                .count();
        }
        let st = await_status(
            &procs[0],
            &srv_http,
            "every assigned shard loaded",
            LIMIT,
            |st| {
                let shards = st["shards"].as_array().context("shards")?;
                let holders: usize = shards
                    .iter()
                    .map(|s| s["loaded_by"].as_array().map_or(0, Vec::len))
                    .sum();
                Ok(holders == assigned)
            },
        )?;
        let mut lone: Vec<(u32, String)> = Vec::new();
        for s in st["shards"].as_array().context("shards")? {
            let by = s["loaded_by"].as_array().context("loaded_by")?;
            if by.len() == 1 {
                let peer = by[0].as_str().context("peer")?.to_owned();
                lone.push((s["index"].as_u64().context("index")? as u32, peer));
            }
        }
        let Some((_, victim_peer)) = lone.first().cloned() else {
            bail!("every shard has two holders: {st}");
        };
        let orphans: Vec<u32> = lone
            .iter()
            .filter(|(_, p)| *p == victim_peer)
            .map(|(i, _)| *i)
            .collect();
        let mut victim = None;
        for (i, (_, http)) in nodes.iter().enumerate() {
            if own(&status(http)?)?["peer_id"].as_str() == Some(victim_peer.as_str()) {
                victim = Some(i);
            }
        }
        let victim = victim.context("no process has the lone holder's peer id")?;
        procs[1 + victim].kill()?;
        eprintln!("killed auto{victim}, the only holder of {orphans:?}");

        // Coverage drops and the status says so.
        let gap = await_status(&procs[0], &srv_http, "the gap in coverage", LIMIT, |st| {
            let missing = u32s(&st["missing"]);
            Ok(st["swarm_ready"] == false && orphans.iter().all(|i| missing.contains(i)))
        })?;
        for &i in &orphans {
            let by = gap["shards"][i as usize]["loaded_by"]
                .as_array()
                .context("loaded_by")?;
            ensure!(
                !by.iter().any(|p| p.as_str() == Some(victim_peer.as_str())),
                "the dead holder still listed for shard {i}: {gap}"
            );
        }
        await_line(&procs[0], "[SWARM] ⚠ Swarm not ready", 1, LIMIT)?;
        await_line(&procs[0], "[SWARM] 🧩 Re-assigned", 1, LIMIT)?;
        await_line(
            &procs[0],
            "[SWARM] ✅ Swarm ready: all 4 shards loaded",
            2,
            LIMIT,
        )?;
        let st = status(&srv_http)?;
        for &i in &orphans {
            let by = st["shards"][i as usize]["loaded_by"]
                .as_array()
                .context("loaded_by")?;
            ensure!(!by.is_empty(), "shard {i} still uncovered: {st}");
        }
        let survivors: Vec<&Path> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, (d, _))| d.as_path())
            .collect();
        for (i, (_, http)) in nodes.iter().enumerate().filter(|(i, _)| *i != victim) {
            let st = status(http)?;
            let loaded = u32s(&own(&st)?["loaded"]);
            let present = final_files_intact(&manifest, &shards, &nodes[i].0)?;
            ensure!(
                loaded.iter().all(|s| present.contains(s)),
                "auto{i} loaded {loaded:?} but holds {present:?}"
            );
        }
        let mut everyone = survivors.clone();
        everyone.push(&nodes[victim].0);
        all_good(&manifest, &shards, &everyone, &srv_http)
    });
}
