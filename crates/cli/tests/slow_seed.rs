//! A server slower than the nodes' request queue: `--upload-limit 64KB/s` and two `--shards
//! all` nodes asking for 4 shards at once, so every request waits about twice the 20 s request
//! timeout in the server's queue. Before, each timeout cancelled what the server then sent anyway
//! and asked for the block again at the back of the queue: the distribution stalled forever after
//! ~20 s. Now a block that arrives after its timeout still counts, a slow sole source keeps its
//! requests, and requests move off the server to a peer that announces the piece, so the
//! server's uplink is spent on useful bytes and both nodes finish.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;

#[test]
fn a_server_slower_than_the_request_queue_still_finishes_the_distribution() {
    run("slow_seed", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        // 4 shards of 3 blocks: 2.4 MB, one copy takes 37.5 s at 64 KB/s (measured: done in
        // 37–66 s, 1.00–1.75 copies from the server; before the fix nothing verified in 90 s).
        let (srv, manifest, srv_http) = server(root, 4, 600_000, &["--upload-limit", "64KB/s"])?;
        procs.push(srv);
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        let mut dirs = Vec::new();
        for i in 0..2 {
            let dir = root.join(format!("node{i}"));
            procs.push(Proc::spawn(
                &format!("node{i}"),
                node_args(root, &dir, &["--shards", "all"])?,
            )?);
            dirs.push(dir);
        }
        let started = Instant::now();
        // Before the fix this never ended; after it, 37–66 s alone and 42–66 s in the full suite on
        // 2 cores (the nodes trade more slowly under load). The bound only has to be finite.
        let limit = Duration::from_secs(180);
        let st = await_status(
            &procs[0],
            &srv_http,
            "both nodes verified every shard",
            limit,
            |st| {
                let nodes = st["nodes"].as_array().context("nodes")?;
                let done = nodes
                    .iter()
                    .filter(|n| n["role"] == "node" && u32s(&n["verified"]).len() == 4)
                    .count();
                Ok(done == 2)
            },
        )?;
        let took = started.elapsed();
        let sent = own(&st)?["bytes_up"].as_u64().context("bytes_up")?;
        eprintln!(
            "distributed in {took:.1?}; the server sent {sent} bytes = {:.2} copies",
            sent as f64 / total as f64
        );
        for dir in &dirs {
            let present = final_files_intact(&manifest, &root.join("shards"), dir)?;
            ensure!(present.len() == 4, "{} holds {present:?}", dir.display());
        }
        // Useful bytes only: one copy, plus what both nodes had queued at once.
        ensure!(
            sent < 2 * total,
            "the server sent {sent} bytes for {total} bytes of shards"
        );
        Ok(())
    });
}
