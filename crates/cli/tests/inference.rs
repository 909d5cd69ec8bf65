//! Issue 6 acceptance with real processes on 127.0.0.1: the default model split in 8 shards,
//! a server and 4 `--shards auto --max-shards 2 --threads 1` nodes.
//! - `/v1/completions` at temperature 0 equals `shardswarm generate --temperature 0` on the
//!   unsplit model, for several prompts;
//! - 8 concurrent streamed requests all complete with the right text;
//! - the official `openai` Python client streams a chat completion (scripts/openai_client_check.py);
//! - killing the node that runs a middle shard during a streamed generation, with a fifth node
//!   holding a replica, the stream completes and its text equals the no-fault run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::{Value, json};

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
];
const MAX_TOKENS: usize = 32;
const READY_LIMIT: Duration = Duration::from_secs(120);

/// `shardswarm generate --temperature 0` on the whole model: the reference text.
fn reference(model: &Path, prompt: &str, max_tokens: usize) -> Result<String> {
    let out = Command::new(BIN)
        .args(["generate", "--model"])
        .arg(model)
        .args(["--temperature", "0", "--threads", "1", "--max-tokens"])
        .arg(max_tokens.to_string())
        .arg(prompt)
        .output()
        .context("running generate")?;
    ensure!(
        out.status.success(),
        "generate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(180))
        .build()
}

fn post(base: &str, body: &Value) -> Result<ureq::Response> {
    Ok(agent()
        .post(&format!("{base}/v1/completions"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())?)
}

fn completion(base: &str, prompt: &str, max_tokens: usize) -> Result<Value> {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    let resp = post(base, &body).with_context(|| format!("POST /v1/completions {prompt:?}"))?;
    Ok(serde_json::from_reader(resp.into_reader())?)
}

/// Streams a completion; `on_chunk(n)` runs after the n-th text chunk. Returns the text and the
/// finish reason; fails unless the stream ends with `[DONE]`.
fn stream_completion(
    base: &str,
    prompt: &str,
    max_tokens: usize,
    mut on_chunk: impl FnMut(usize) -> Result<()>,
) -> Result<(String, String)> {
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true});
    let resp = post(base, &body).context("POST /v1/completions (stream)")?;
    let mut text = String::new();
    let mut finish = String::new();
    let mut chunks = 0;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            return Ok((text, finish));
        }
        let v: Value = serde_json::from_str(data).with_context(|| format!("chunk {data}"))?;
        if let Some(e) = v.get("error") {
            bail!("error event in the stream: {e}");
        }
        if let Some(t) = v["choices"][0]["text"].as_str()
            && !t.is_empty()
        {
            text.push_str(t);
            chunks += 1;
            on_chunk(chunks)?;
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    bail!("the stream ended without [DONE]; text so far {text:?}")
}

/// The peer running shard `shard` in the newest `pipeline route` line of the server's log.
fn route_peer(srv: &Proc, shard: u32, deadline: Instant) -> Result<String> {
    let routes = |l: &str| l.split("route=").nth(1).map(str::to_owned);
    srv.out.wait_for("a pipeline route", deadline, routes)?;
    let route = srv.out.collect(routes).pop().context("no route")?;
    for hop in route.split(" -> ") {
        let (peer, range) = hop.trim().split_once('[').context("hop")?;
        let (a, b) = range
            .trim_end_matches(']')
            .split_once("..")
            .context("range")?;
        if (a.parse::<u32>()?..b.parse::<u32>()?).contains(&shard) {
            return Ok(peer.to_owned());
        }
    }
    bail!("shard {shard} is not in the route {route}")
}

#[test]
fn the_swarm_answers_like_the_whole_model_concurrently_and_through_a_kill() {
    run("inference", |procs| {
        let model = default_model()?;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        let split = Command::new(BIN)
            .arg("split")
            .arg(&model)
            .args(["--shards", "8", "--out"])
            .arg(&shards)
            .output()?;
        ensure!(
            split.status.success(),
            "split: {}",
            String::from_utf8_lossy(&split.stderr)
        );
        let (srv, base) = server_on(root, &shards, &[])?;
        procs.push(srv);
        let auto = ["--shards", "auto", "--max-shards", "2", "--threads", "1"];
        let mut node_http = Vec::new();
        for i in 0..4 {
            let args = node_args(root, &root.join(format!("node-{i}")), &auto)?;
            let p = Proc::spawn(&format!("node-{i}"), args)?;
            node_http.push(p.http_base()?);
            procs.push(p);
        }
        procs[0]
            .out
            .wait_for("swarm ready", Instant::now() + READY_LIMIT, |l| {
                l.contains("[SWARM] ✅ Swarm ready").then_some(())
            })?;

        // Token-for-token: the distributed greedy text equals the single-process one.
        let mut want = Vec::new();
        for prompt in PROMPTS {
            let expected = reference(&model, prompt, MAX_TOKENS)?;
            let got = completion(&base, prompt, MAX_TOKENS)?;
            let text = got["choices"][0]["text"].as_str().context("no text")?;
            assert_eq!(text, expected, "prompt {prompt:?}: {got}");
            assert!(got["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0);
            want.push(expected);
        }

        // 8 concurrent streams.
        let started = Instant::now();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let base = base.clone();
                std::thread::spawn(move || {
                    stream_completion(&base, PROMPTS[i % PROMPTS.len()], MAX_TOKENS, |_| Ok(()))
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let (text, _) = h
                .join()
                .map_err(|_| anyhow::anyhow!("stream thread panicked"))??;
            assert_eq!(text, want[i % PROMPTS.len()], "concurrent stream {i}");
        }
        eprintln!(
            "8 concurrent streams in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // The official OpenAI Python client.
        let py = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.py"))
            .arg(&base)
            .output()
            .context("python3 (needed for the openai client check)")?;
        ensure!(
            py.status.success(),
            "openai client check failed (pip install openai):\n{}{}",
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&py.stdout));

        // A fifth node replicates the window of the middle shard 3; then the holder in use dies.
        let args = node_args(
            root,
            &root.join("node-4"),
            &["--shards", "2,3", "--threads", "1"],
        )?;
        let replica = Proc::spawn("node-4", args)?;
        let replica_http = replica.http_base()?;
        procs.push(replica);
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let st = status(&base)?;
            let holders = st["shards"][3]["loaded_by"].as_array().map_or(0, Vec::len);
            if holders >= 2 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the replica never loaded shard 3: {st}"
            );
            procs[0].out.pause(POLL);
        }
        node_http.push(replica_http);
        let prompt = PROMPTS[1];
        let long = 48;
        let expected = reference(&model, prompt, long)?;
        let mut killed = None;
        let (text, finish) = stream_completion(&base, prompt, long, |n| {
            if n == 6 {
                let peer = route_peer(&procs[0], 3, Instant::now() + Duration::from_secs(5))?;
                for (i, http) in node_http.iter().enumerate() {
                    if own(&status(http)?)?["peer_id"].as_str() == Some(peer.as_str()) {
                        let name = if i < 4 {
                            format!("node-{i}")
                        } else {
                            "node-4".into()
                        };
                        let p = procs.iter_mut().find(|p| p.name == name).context("proc")?;
                        p.kill()?;
                        killed = Some(name);
                    }
                }
                ensure!(killed.is_some(), "no process runs {peer}");
            }
            Ok(())
        })?;
        ensure!(killed.is_some(), "the stream ended before the kill");
        assert_eq!(
            text, expected,
            "the stream continued unchanged after killing {killed:?}"
        );
        assert!(!finish.is_empty());
        procs[0].out.wait_for(
            "the reroute",
            Instant::now() + Duration::from_secs(5),
            |l| l.contains("rerouting around the peer").then_some(()),
        )?;
        Ok(())
    });
}
