//! Issue 9's load test, in one process: a server and 30 `--shards auto --max-shards 2` nodes on
//! loopback distribute 8 real (tiny llama, ~3 MB each) shards and reach ready; then the
//! server's HTTP API, served on a real socket, answers 200 concurrent `GET /api/status` and 16
//! concurrent streamed `/v1/completions`, whose greedy texts equal the shards chained in one
//! process. It prints the figures recorded in `docs/RELIABILITY.md` ("Load").
//!
//! Memory is the peak RSS (`VmHWM`) of this whole test process: the server, the 30 nodes (their
//! loaded stages included) and the test itself, not the server alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shardswarm_model::{Device, GenerateOptions, Generator, SamplerConfig};
use shardswarm_node::{Event, ShardPolicy, Started};
use shardswarm_testkit::{node_config, start_server, wait_for, wait_loaded, write_random_shards};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NODES: usize = 30;
const SHARDS: u32 = 8;
const SHARD_BYTES: usize = 3_000_000;
const STATUS_REQUESTS: usize = 200;
const STREAMS: usize = 16;
const MAX_TOKENS: usize = 16;
const LIMIT: Duration = Duration::from_secs(120);
const PROMPTS: [&str; 4] = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "1, 2, 3, 5, 8,",
];

/// `VmHWM` or `VmRSS` of this process, in bytes.
fn proc_status_kib(field: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/status")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/self/status"))?;
    let kib: u64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kib * 1024)
}

/// One HTTP/1.1 exchange with `Connection: close`: the status code and the (de-chunked) body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("status line")?
        .parse()?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((code, body))
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol])?.trim(), 16)?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(raw.len() >= size + 2, "short chunk");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A streamed greedy completion: its text, failing on an error event or a missing `[DONE]`.
async fn stream(addr: SocketAddr, prompt: &str) -> Result<String> {
    let body =
        json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": true});
    let (code, body) = http(addr, "POST", "/v1/completions", &body.to_string()).await?;
    let text = String::from_utf8(body)?;
    ensure!(code == 200, "HTTP {code}: {text}");
    let mut out = String::new();
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return Ok(out);
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(e) = v.get("error") {
            bail!("error event: {e}");
        }
        if let Some(t) = v["choices"][0]["text"].as_str() {
            out.push_str(t);
        }
    }
    bail!("no [DONE] in {text}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_reach_ready_and_the_api_takes_200_status_and_16_streams() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards = tmp.path().join("shards");
    let manifest = write_random_shards(&shards, SHARDS, SHARD_BYTES, 31)?;
    let model_bytes: u64 = manifest.shards.iter().map(|s| s.size).sum();
    let reference = Generator::load_shards_dir(&shards, &Device::Cpu)?;
    let rss_before = proc_status_kib("VmRSS:")?;
    let (mut server, addrs) = start_server(tmp.path().join("server"), shards.clone()).await?;

    // 30 nodes join at once.
    let t0 = Instant::now();
    let mut nodes: Vec<Started> = Vec::new();
    for i in 0..NODES {
        let mut cfg = node_config(
            tmp.path().join(format!("node{i:02}")),
            addrs.clone(),
            ShardPolicy::Auto,
        );
        cfg.max_shards = Some(2);
        nodes.push(shardswarm_node::start_node(cfg).await?);
    }
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    let ready_after = t0.elapsed();
    for n in &mut nodes {
        wait_loaded(&mut n.events, 2, LIMIT).await?;
    }
    let all_loaded_after = t0.elapsed();
    // The server hears of each node's shards by SHARD_LOADED, right after the load.
    let mut holders = server.handle.subscribe();
    let replicas = loop {
        let status = server.handle.swarm_status().await?;
        ensure!(status.swarm_ready && status.missing.is_empty());
        let replicas: Vec<usize> = status.shards.iter().map(|s| s.loaded_by.len()).collect();
        if replicas.iter().sum::<usize>() == 2 * NODES {
            break replicas;
        }
        ensure!(t0.elapsed() < LIMIT, "holders per shard {replicas:?}");
        // Wait for the next report (or a second, whichever comes first).
        let _ = tokio::time::timeout(Duration::from_secs(1), holders.recv()).await;
    };
    let reported_after = t0.elapsed();
    let uploaded = server.handle.metrics().uploaded_total();
    let moved: u64 = nodes
        .iter()
        .map(|n| n.handle.metrics().downloaded_total())
        .sum();
    let peak_after_ready = proc_status_kib("VmHWM:")?;

    // The server's HTTP API on a real socket.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = listener.local_addr()?;
    let app = shardswarm_gateway::router(server.handle.clone());
    let served = tokio::spawn(async move { axum::serve(listener, app).await });

    // 200 concurrent status requests.
    let t = Instant::now();
    let tasks: Vec<_> = (0..STATUS_REQUESTS)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let (code, body) = http(http_addr, "GET", "/api/status", "").await?;
                ensure!(code == 200, "HTTP {code}");
                let v: Value = serde_json::from_slice(&body)?;
                ensure!(v["swarm_ready"] == true, "{v}");
                Ok::<_, anyhow::Error>(started.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(tokio::time::timeout(LIMIT, task).await???);
    }
    let status_wall = t.elapsed();
    latencies.sort_unstable();

    // 16 concurrent streams, each equal to the chained shards' greedy text.
    let opts = GenerateOptions {
        max_tokens: MAX_TOKENS,
        sampler: SamplerConfig::greedy(),
        ignore_eos: false,
    };
    let mut want = Vec::new();
    for p in PROMPTS {
        let mut text = String::new();
        reference.generate(p, &opts, |piece| {
            text.push_str(piece);
            true
        })?;
        want.push(text);
    }
    let want = Arc::new(want);
    let t = Instant::now();
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let want = want.clone();
            tokio::spawn(async move {
                let prompt = PROMPTS[i % PROMPTS.len()];
                let got = stream(http_addr, prompt).await?;
                ensure!(
                    got == want[i % PROMPTS.len()],
                    "stream {i} ({prompt:?}): {got:?} != {:?}",
                    want[i % PROMPTS.len()]
                );
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(LIMIT, task).await???;
    }
    let streams_wall = t.elapsed();
    let peak = proc_status_kib("VmHWM:")?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "LOAD: {NODES} nodes, {SHARDS} shards, model {:.1} MiB\n\
         LOAD: swarm ready after {:.2} s, every node loaded after {:.2} s, all reported after {:.2} s\n\
         LOAD: holders per shard {replicas:?}\n\
         LOAD: server uploaded {:.1} MiB = {:.2} model copies; nodes downloaded {:.1} MiB in all\n\
         LOAD: RSS before the swarm {:.0} MiB, peak after ready {:.0} MiB, peak at the end {:.0} MiB (whole process)\n\
         LOAD: {STATUS_REQUESTS} concurrent GET /api/status: all 200 in {:.2} s (median {:.0} ms, max {:.0} ms)\n\
         LOAD: {STREAMS} concurrent streams of {MAX_TOKENS} tokens: all equal to the reference in {:.2} s",
        mib(model_bytes),
        ready_after.as_secs_f64(),
        all_loaded_after.as_secs_f64(),
        reported_after.as_secs_f64(),
        mib(uploaded),
        uploaded as f64 / model_bytes as f64,
        mib(moved),
        mib(rss_before),
        mib(peak_after_ready),
        mib(peak),
        status_wall.as_secs_f64(),
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        streams_wall.as_secs_f64(),
    );
    served.abort();
    for n in &nodes {
        n.handle.shutdown().await;
    }
    server.handle.shutdown().await;
    Ok(())
}
