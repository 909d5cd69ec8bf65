//! The load test's process-level twin (the in-process one is `crates/gateway/tests/load.rs`):
//! one `shardswarm server` process and 30 `shardswarm node --shards auto --max-shards 2`
//! processes on 127.0.0.1 distribute 8 shards of ~3 MB and reach ready; then 200 concurrent
//! `GET /api/status` against the server process all answer 200. Separate processes give what
//! the in-process test cannot: the server's own peak memory (`VmHWM` of its process) and its
//! upload bytes from its `/metrics`. The figures are printed for `docs/RELIABILITY.md` ("Load").

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

const NODES: usize = 30;
const LIMIT: Duration = Duration::from_secs(240);

/// A `/proc/<pid>/status` field (`VmHWM:`, `VmRSS:`) in bytes.
fn proc_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} for {pid}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("value")?
        .parse::<u64>()?
        * 1024)
}

/// Sum of an unlabelled or labelled counter in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn thirty_node_processes_reach_ready_and_the_server_answers_200_status_requests() {
    run("load_processes", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let (srv, manifest, srv_http) = server(root, 8, 3_000_000, &[])?;
        let server_pid = srv.child.id();
        procs.push(srv);
        let model_bytes: u64 = manifest.shards.iter().map(|s| s.size).sum();
        let t0 = Instant::now();
        for i in 0..NODES {
            let dir = root.join(format!("node{i:02}"));
            let args = node_args(
                root,
                &dir,
                &["--shards", "auto", "--max-shards", "2", "--threads", "1"],
            )?;
            procs.push(Proc::spawn(&format!("node{i:02}"), args)?);
        }
        procs[0]
            .out
            .wait_for("swarm ready", Instant::now() + LIMIT, |l| {
                l.contains("[SWARM] ✅ Swarm ready: all 8 shards loaded")
                    .then_some(())
            })?;
        let ready_after = t0.elapsed();
        let deadline = Instant::now() + LIMIT;
        let replicas = loop {
            let st = status(&srv_http)?;
            let replicas: Vec<usize> = st["shards"]
                .as_array()
                .context("shards")?
                .iter()
                .map(|s| s["loaded_by"].as_array().map_or(0, Vec::len))
                .collect();
            if replicas.iter().sum::<usize>() == 2 * NODES {
                break replicas;
            }
            ensure!(Instant::now() < deadline, "holders per shard {replicas:?}");
            procs[0].out.pause(POLL);
        };
        let all_after = t0.elapsed();
        let text = get(&format!("{srv_http}/metrics"))?;
        let uploaded = metric(&text, "shardswarm_torrent_uploaded_bytes_total");
        let server_peak = proc_kib(server_pid, "VmHWM:")?;
        let mut node_peaks: Vec<u64> = procs[1..]
            .iter()
            .map(|p| proc_kib(p.child.id(), "VmHWM:"))
            .collect::<Result<_>>()?;
        node_peaks.sort_unstable();

        // 200 concurrent status requests, one thread each.
        let t = Instant::now();
        let threads: Vec<_> = (0..200)
            .map(|_| {
                let url = srv_http.clone();
                std::thread::spawn(move || -> Result<Duration> {
                    let started = Instant::now();
                    let st = status(&url)?;
                    ensure!(st["swarm_ready"] == true, "{st}");
                    Ok(started.elapsed())
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for th in threads {
            latencies.push(
                th.join()
                    .map_err(|_| anyhow::anyhow!("status thread panicked"))??,
            );
        }
        let status_wall = t.elapsed();
        latencies.sort_unstable();
        let server_peak_end = proc_kib(server_pid, "VmHWM:")?;

        let mib = |b: f64| b / (1024.0 * 1024.0);
        eprintln!(
            "LOAD(processes): {NODES} node processes, 8 shards, model {:.1} MiB\n\
             LOAD(processes): swarm ready after {:.2} s, all {} holdings reported after {:.2} s; holders per shard {replicas:?}\n\
             LOAD(processes): server uploaded {:.1} MiB = {:.2} model copies\n\
             LOAD(processes): server peak RSS {:.0} MiB after ready, {:.0} MiB after the status burst; node peak RSS median {:.0} MiB, max {:.0} MiB\n\
             LOAD(processes): 200 concurrent GET /api/status: all 200 in {:.2} s (median {:.0} ms, max {:.0} ms)",
            mib(model_bytes as f64),
            ready_after.as_secs_f64(),
            2 * NODES,
            all_after.as_secs_f64(),
            mib(uploaded),
            uploaded / model_bytes as f64,
            mib(server_peak as f64),
            mib(server_peak_end as f64),
            mib(node_peaks[node_peaks.len() / 2] as f64),
            mib(node_peaks[node_peaks.len() - 1] as f64),
            status_wall.as_secs_f64(),
            latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
            latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        );
        Ok(())
    });
}
