//! `shardswarm bench pipeline`: decode speed of the swarm's pipeline on loopback against the
//! whole model in one process, and the latency each hop adds (issue 6).
//!
//! One invocation measures every path, as real processes of this binary on 127.0.0.1:
//! - single process: `generate --model M --temperature 0 --threads 1 --ignore-eos
//!   --max-tokens N PROMPT`, a fresh process per run; decode tok/s from its stats line;
//! - pipeline: the model split into `--shards` shards, one `server` and `--nodes` nodes
//!   (`--shards auto --max-shards ceil(shards/nodes) --threads 1`); per run one streamed
//!   `/v1/completions` (temperature 0, `max_tokens` N) to the server's gateway, each text chunk
//!   timed when its bytes arrive: decode tok/s = (chunks − 1) / (last − first);
//! - 1-node pipeline (unless `--no-one-node`): a second swarm whose one node holds every shard.
//!   It pays the gateway and one hop but no stage boundary.
//!
//! The swarms start once and wait for `swarm_ready`; each gets one warm-up request, which is not
//! counted. Each round then runs every path once, rotating which goes first. The hops of a
//! generation are counted from the server's `pipeline route` log line. Per-hop overhead =
//! (pipeline ms/token − single ms/token) / hops. Every child is killed on exit, error or signal.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::procs::{Procs, fresh_dir, http_get, path_arg};
use super::report::median;
use super::{Bench, QUIC_LISTEN};
use crate::bench_infer::parse_stats_line;

pub(super) const ABOUT: &str = "\
Measure the swarm's pipeline on loopback: decode tokens/s against the whole model in one process,
and the latency each hop adds (issue 6).

The model (default: the cached SmolLM2 Q4_1, fetched if missing) is split into --shards shards in
WORK_DIR/shards. A server and --nodes nodes (`--shards auto --max-shards ceil(shards/nodes)
--threads 1`) start on 127.0.0.1 over QUIC, plus (unless --no-one-node) a second swarm with one
`--shards all` node. Once the swarms are ready and warmed up, each of --runs rounds runs, in a
rotating order: `generate --threads 1 --ignore-eos --max-tokens N PROMPT` (decode tok/s from its
stats line), and one streamed /v1/completions request (temperature 0, max_tokens N) per swarm,
timing each text chunk: decode tok/s = (chunks - 1) / (last chunk - first chunk). The API has no
ignore_eos, so the prompt must lead to N tokens before an end token; the table says how many came.

Hops are counted from the server's `pipeline route` log line. Per-hop overhead = (pipeline -
single ms/token) / hops; with the 1-node swarm, the cost of a stage boundary is split from the
fixed cost of the gateway. Children's logs stay in WORK_DIR/<swarm>/*.log. Progress goes to
stderr, the tables to stdout.";

/// The prompt of the default model that runs to well past 64 tokens at temperature 0.
const DEFAULT_PROMPT: &str = "Write a long story about a dragon who learns to code.";
/// Pipeline decode over single-process decode that issue 6 asks for on loopback.
const TARGET_RATIO: f64 = 0.7;
/// Between polls of the server's `/api/status`.
const POLL: Duration = Duration::from_millis(100);
/// Largest streamed answer read.
const MAX_STREAM_BYTES: usize = 16 << 20;

/// Flags of `shardswarm bench pipeline`.
#[derive(Debug, Args)]
pub(super) struct PipelineArgs {
    /// The GGUF model (default: the cached default model, fetched if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Number of shards to split the model into.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Node processes in the pipeline; each holds at most ceil(shards / nodes) shards.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Rounds; each runs every path once. The table gives the medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The prompt, used raw (no chat template).
    #[arg(long, default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Skip the 1-node pipeline (one node holding every shard).
    #[arg(long)]
    no_one_node: bool,
    /// Shards, swarm data and logs (default: $TMPDIR/shardswarm-bench-pipeline).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give up on a swarm start, a request or a generate run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// The shardswarm binary to run as generate, server and nodes (default: this executable).
    #[arg(long)]
    bin: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `generate` on the whole model.
    Single,
    /// The `--nodes` swarm.
    Pipeline,
    /// One node holding every shard.
    OneNode,
}

impl Kind {
    fn label(self, nodes: usize) -> String {
        match self {
            Kind::Single => "single process (generate)".to_owned(),
            Kind::Pipeline => format!("pipeline, {nodes} nodes"),
            Kind::OneNode => "pipeline, 1 node (--shards all)".to_owned(),
        }
    }
}

/// One run's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    kind: Kind,
    /// Decode tokens/s.
    decode: f64,
    /// Tokens generated.
    tokens: usize,
    /// Single: the prefill's compute time; pipeline: request sent → first text chunk.
    first_ms: f64,
    /// Stages in the route (a pipeline run whose route line was found).
    hops: Option<usize>,
}

/// A running swarm: the server, its nodes, its gateway address and the server's log.
struct Swarm {
    kind: Kind,
    procs: Procs,
    http: String,
    server_log: PathBuf,
}

/// Runs `shardswarm bench pipeline`.
pub(super) async fn run(args: PipelineArgs) -> Result<()> {
    ensure!(
        args.nodes >= 1 && args.shards >= 1,
        "--nodes and --shards must be at least 1"
    );
    ensure!(args.tokens >= 2, "--tokens must be at least 2");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("shardswarm-bench-pipeline"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let model = super::resolve_model(args.model.as_deref()).await?;
    let shards_dir = work.join("shards");
    super::split_model(&bin, &model, &shards_dir, args.shards).await?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let bench = Bench {
        bin,
        work,
        shards_dir,
        shards: args.shards,
        timeout,
        poll: POLL,
    };
    let load_before = load_average();
    eprintln!(
        "bench: {} in {} shards, {} nodes, {} tokens, {} runs, load average {load_before}, work dir {}",
        model.display(),
        args.shards,
        args.nodes,
        args.tokens,
        args.runs,
        bench.work.display()
    );

    let per_node = args.shards.div_ceil(args.nodes as u32).to_string();
    let auto: Vec<OsString> = ["--shards", "auto", "--max-shards", per_node.as_str()]
        .map(OsString::from)
        .to_vec();
    let mut swarms = vec![start_swarm(&bench, Kind::Pipeline, &vec![auto; args.nodes]).await?];
    if !args.no_one_node {
        let all = vec![OsString::from("--shards"), OsString::from("all")];
        swarms.push(start_swarm(&bench, Kind::OneNode, &[all]).await?);
    }
    for s in &mut swarms {
        let (sample, _) = run_pipeline(s, &args.prompt, args.tokens, timeout)
            .await
            .context("warm-up request")?;
        eprintln!(
            "bench: warm-up of the {}: {} tokens at {:.1} tok/s (not counted)",
            s.kind.label(args.nodes),
            sample.tokens,
            sample.decode
        );
    }

    let mut kinds = vec![Kind::Single];
    kinds.extend(swarms.iter().map(|s| s.kind));
    let mut samples = Vec::new();
    for round in 0..args.runs {
        for i in 0..kinds.len() {
            let kind = kinds[(round + i) % kinds.len()];
            let sample = match kind {
                Kind::Single => {
                    run_single(&bench.bin, &model, &args.prompt, args.tokens, timeout).await?
                }
                _ => {
                    let swarm = swarms
                        .iter_mut()
                        .find(|s| s.kind == kind)
                        .context("a swarm of each kind")?;
                    let (sample, replans) =
                        run_pipeline(swarm, &args.prompt, args.tokens, timeout).await?;
                    if replans > 1 {
                        eprintln!(
                            "bench:   the route was planned {replans} times in this run (a fault?); see {}",
                            swarm.server_log.display()
                        );
                    }
                    sample
                }
            };
            eprintln!(
                "bench: run {}/{} {}: {:.1} tok/s, {} tokens, first token {:.0} ms{}",
                round + 1,
                args.runs,
                kind.label(args.nodes),
                sample.decode,
                sample.tokens,
                sample.first_ms,
                sample.hops.map_or(String::new(), |h| format!(", {h} hops"))
            );
            samples.push(sample);
        }
    }
    for s in swarms {
        s.procs.stop().await;
    }
    let conditions = Conditions {
        nodes: args.nodes,
        shards: args.shards,
        tokens: args.tokens,
        runs: args.runs,
        load_before,
        load_after: load_average(),
    };
    print!("{}", report(&samples, &conditions));
    Ok(())
}

/// Starts a server and one node per entry of `nodes` (its extra flags) in a fresh
/// `WORK/<kind>` and waits until the server reports the swarm ready.
async fn start_swarm(bench: &Bench, kind: Kind, nodes: &[Vec<OsString>]) -> Result<Swarm> {
    let name = match kind {
        Kind::OneNode => "one-node",
        _ => "pipeline",
    };
    let dir = fresh_dir(&bench.work.join(name))?;
    let mut procs = Procs::default();
    let server = bench.start_server(&dir, None, &mut procs).await?;
    for (i, extra) in nodes.iter().enumerate() {
        let data = dir.join(format!("node-{i}"));
        fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut args: Vec<OsString> = vec![
            "node".into(),
            "--server".into(),
            server.addr.clone().into(),
            "--data-dir".into(),
            path_arg(&data),
            "--listen".into(),
            QUIC_LISTEN.into(),
            "--threads".into(),
            "1".into(),
        ];
        args.extend(extra.iter().cloned());
        procs.spawn(
            &format!("node-{i}"),
            &bench.bin,
            &args,
            dir.join(format!("node-{i}.log")),
        )?;
    }
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    loop {
        procs.check_alive()?;
        let status: Value = http_get(&server.http, "/api/status")
            .await
            .ok()
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null);
        if status["swarm_ready"].as_bool() == Some(true) {
            break;
        }
        if t0.elapsed() > bench.timeout {
            bail!(
                "the {name} swarm was not ready after {:?}; logs in {}",
                bench.timeout,
                dir.display()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "bench:   {name} swarm: {:.0} s, shards without a loaded holder: {}",
                t0.elapsed().as_secs_f64(),
                status["missing"]
            );
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "bench: {name} swarm ready in {:.1} s ({} nodes); logs in {}",
        t0.elapsed().as_secs_f64(),
        nodes.len(),
        dir.display()
    );
    Ok(Swarm {
        kind,
        procs,
        http: server.http,
        server_log: dir.join("server.log"),
    })
}

/// One `generate` run on the whole model.
async fn run_single(
    bin: &Path,
    model: &Path,
    prompt: &str,
    tokens: usize,
    timeout: Duration,
) -> Result<Sample> {
    let child = Command::new(bin)
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(["--temperature", "0", "--threads", "1", "--ignore-eos"])
        .args(["--max-tokens", &tokens.to_string()])
        .arg(prompt)
        // Already what --threads 1 asks for, so generate does not re-execute itself.
        .env("RAYON_NUM_THREADS", "1")
        .env("CANDLE_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .with_context(|| format!("generate did not finish within {timeout:?}"))?
        .with_context(|| format!("running {} generate", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("generate failed ({}): {}", out.status, stderr.trim());
    }
    let rates = stderr
        .lines()
        .rev()
        .find_map(parse_stats_line)
        .with_context(|| format!("no stats line in generate's stderr: {stderr}"))?;
    Ok(Sample {
        kind: Kind::Single,
        decode: rates.decode,
        tokens,
        first_ms: rates.prefill_tokens as f64 / rates.prefill * 1e3,
        hops: None,
    })
}

/// One streamed completion through `swarm`. Returns the sample and how many routes the server
/// planned meanwhile (more than one: a step failed and the route was rebuilt).
async fn run_pipeline(
    swarm: &mut Swarm,
    prompt: &str,
    tokens: usize,
    timeout: Duration,
) -> Result<(Sample, usize)> {
    swarm.procs.check_alive()?;
    let routes_before = routes(&swarm.server_log).len();
    let streamed = tokio::time::timeout(timeout, stream_completion(&swarm.http, prompt, tokens))
        .await
        .with_context(|| format!("the completion did not finish within {timeout:?}"))??;
    let decode = streamed.decode_rate().with_context(|| {
        format!(
            "fewer than 2 text chunks came ({:?}, finish reason {:?})",
            streamed.text, streamed.finish
        )
    })?;
    let planned = routes(&swarm.server_log);
    let hops = planned.last().map(|r| r.split(" -> ").count());
    let sample = Sample {
        kind: swarm.kind,
        decode,
        tokens: streamed
            .completion_tokens
            .unwrap_or(streamed.chunk_times.len()),
        first_ms: streamed.chunk_times[0].as_secs_f64() * 1e3,
        hops,
    };
    Ok((sample, planned.len().saturating_sub(routes_before)))
}

/// The `route=` values of the `pipeline route` lines of a server log, oldest first.
fn routes(log: &Path) -> Vec<String> {
    route_lines(&fs::read_to_string(log).unwrap_or_default())
}

fn route_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("pipeline route"))
        .filter_map(|l| l.rsplit_once("route="))
        .map(|(_, r)| r.trim().trim_matches('"').to_owned())
        .filter(|r| !r.is_empty())
        .collect()
}

/// What a streamed completion delivered.
#[derive(Debug, Default)]
struct Streamed {
    /// Arrival of each non-empty text chunk, from the moment the request was sent.
    chunk_times: Vec<Duration>,
    text: String,
    /// From the usage chunk.
    completion_tokens: Option<usize>,
    finish: Option<String>,
}

impl Streamed {
    /// (chunks − 1) / (last − first), in chunks per second.
    fn decode_rate(&self) -> Option<f64> {
        let (first, last) = (self.chunk_times.first()?, self.chunk_times.last()?);
        let secs = (*last - *first).as_secs_f64();
        (self.chunk_times.len() >= 2 && secs > 0.0)
            .then(|| (self.chunk_times.len() - 1) as f64 / secs)
    }
}

/// An HTTP/1.0 answer carrying server-sent events, fed as its bytes arrive.
#[derive(Debug, Default)]
struct SseReader {
    /// The status line, once the head is in.
    status: Option<String>,
    pending: Vec<u8>,
    out: Streamed,
}

impl SseReader {
    /// Takes the bytes that arrived `at`; true once `data: [DONE]` was seen. Fails on an error
    /// event or a malformed chunk; a non-200 answer is kept for [`Self::failure`].
    fn push(&mut self, bytes: &[u8], at: Duration) -> Result<bool> {
        self.pending.extend_from_slice(bytes);
        if self.status.is_none() {
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(false);
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.pending.drain(..end + 4);
            self.status = Some(head.lines().next().unwrap_or("").to_owned());
        }
        if !self.ok() {
            return Ok(false);
        }
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = String::from_utf8(line).context("non-UTF-8 event line")?;
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                return Ok(true);
            }
            let v: Value = serde_json::from_str(data).with_context(|| format!("event {data:?}"))?;
            if let Some(e) = v.get("error") {
                bail!("error event in the stream: {e}");
            }
            if let Some(t) = v["choices"][0]["text"].as_str()
                && !t.is_empty()
            {
                self.out.text.push_str(t);
                self.out.chunk_times.push(at);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                self.out.finish = Some(f.to_owned());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                self.out.completion_tokens = Some(n as usize);
            }
        }
        Ok(false)
    }

    fn ok(&self) -> bool {
        self.status.as_deref().is_some_and(|s| s.contains(" 200 "))
    }

    /// Why the answer ended before `[DONE]`.
    fn failure(&self) -> anyhow::Error {
        match &self.status {
            Some(s) if !self.ok() => anyhow::anyhow!(
                "POST /v1/completions: {s}: {}",
                String::from_utf8_lossy(&self.pending).trim()
            ),
            _ => anyhow::anyhow!(
                "the stream ended without [DONE]; text so far {:?}",
                self.out.text
            ),
        }
    }
}

/// `POST /v1/completions` with `stream: true` over HTTP/1.0 (so the answer ends when the
/// connection closes), timing each text chunk from the moment the request was written.
async fn stream_completion(addr: &str, prompt: &str, max_tokens: usize) -> Result<Streamed> {
    let body = json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let sent = Instant::now();
    let mut reader = SseReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await.context("reading the stream")?;
        let at = sent.elapsed();
        if n == 0 {
            return Err(reader.failure());
        }
        total += n;
        ensure!(
            total <= MAX_STREAM_BYTES,
            "the answer is over {MAX_STREAM_BYTES} bytes"
        );
        if reader.push(&buf[..n], at)? {
            return Ok(reader.out);
        }
    }
}

/// `/proc/loadavg`'s three averages, or "unknown".
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// What the report states about the run besides the samples.
struct Conditions {
    nodes: usize,
    shards: u32,
    tokens: usize,
    runs: usize,
    load_before: String,
    load_after: String,
}

/// Medians of one path.
struct Medians {
    decode: f64,
    ms: f64,
    tokens: f64,
    first_ms: f64,
    hops: Option<f64>,
}

fn medians(samples: &[Sample], kind: Kind) -> Option<Medians> {
    let of: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
    if of.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
    let hops: Vec<f64> = of.iter().filter_map(|s| s.hops.map(|h| h as f64)).collect();
    let decode = med(&|s| s.decode);
    Some(Medians {
        decode,
        ms: med(&|s| 1e3 / s.decode),
        tokens: med(&|s| s.tokens as f64),
        first_ms: med(&|s| s.first_ms),
        hops: (!hops.is_empty()).then(|| median(hops)),
    })
}

/// The markdown tables (every run, then medians and overheads) and the verdict line.
fn report(samples: &[Sample], c: &Conditions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npipeline vs single process: {} shards, {} nodes (--threads 1 each), {} tokens per run, \
         greedy; load average {} before, {} after",
        c.shards, c.nodes, c.tokens, c.load_before, c.load_after
    );
    let _ = writeln!(
        out,
        "| run | path | decode (tok/s) | ms/token | tokens | first token (ms) | hops |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    let kinds = [Kind::Single, Kind::Pipeline, Kind::OneNode];
    let per_round = kinds
        .iter()
        .filter(|k| samples.iter().any(|s| s.kind == **k))
        .count()
        .max(1);
    for (i, s) in samples.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {:.0} | {} |",
            i / per_round + 1,
            s.kind.label(c.nodes),
            s.decode,
            1e3 / s.decode,
            s.tokens,
            s.first_ms,
            s.hops.map_or("—".to_owned(), |h| h.to_string())
        );
    }
    let Some(single) = medians(samples, Kind::Single) else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nmedians of {} runs; overhead per hop = (path − single ms/token) / hops",
        c.runs
    );
    let _ = writeln!(
        out,
        "| path | decode (tok/s) | × single | ms/token | overhead/hop (ms) | hops | tokens | first token (ms) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for kind in kinds {
        let Some(m) = medians(samples, kind) else {
            continue;
        };
        let per_hop = m.hops.filter(|h| *h > 0.0).map_or("—".to_owned(), |h| {
            format!("{:.1}", (m.ms - single.ms) / h)
        });
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2}× | {:.1} | {per_hop} | {} | {:.0} | {:.0} |",
            kind.label(c.nodes),
            m.decode,
            m.decode / single.decode,
            m.ms,
            m.hops.map_or("—".to_owned(), |h| format!("{h}")),
            m.tokens,
            m.first_ms
        );
    }
    let _ = writeln!(
        out,
        "first token: single = the prefill's compute time (generate's stats line); pipeline = \
         request sent → first text chunk received"
    );
    let pipe = medians(samples, Kind::Pipeline);
    if let (Some(p), Some(one)) = (&pipe, medians(samples, Kind::OneNode)) {
        let _ = write!(
            out,
            "gateway + one hop (1-node pipeline − single): {:.1} ms/token",
            one.ms - single.ms
        );
        match p.hops {
            Some(h) if h > 1.0 => {
                let _ = writeln!(
                    out,
                    "; each further stage boundary ({}-node − 1-node) / ({h} − 1 hops): {:.1} ms/token",
                    c.nodes,
                    (p.ms - one.ms) / (h - 1.0)
                );
            }
            _ => {
                let _ = writeln!(out);
            }
        }
    }
    if let Some(p) = pipe {
        let ratio = p.decode / single.decode;
        let _ = writeln!(
            out,
            "pipeline decode / single process = {ratio:.2}× (target ≥ {TARGET_RATIO:.2}× on loopback): {}",
            if ratio >= TARGET_RATIO {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sse_chunks_are_timed_as_they_arrive_across_split_reads() -> Result<()> {
        let mut r = SseReader::default();
        let head = "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        let chunk = |t: &str| format!("data: {{\"choices\":[{{\"text\":\"{t}\"}}]}}\n\n");
        assert!(!r.push(&head.as_bytes()[..10], ms(1))?);
        assert!(!r.push(&head.as_bytes()[10..], ms(2))?);
        let a = chunk("Once");
        assert!(!r.push(&a.as_bytes()[..7], ms(10))?);
        assert!(!r.push(&a.as_bytes()[7..], ms(11))?);
        assert!(!r.push((chunk("") + &chunk(" upon")).as_bytes(), ms(61))?);
        let tail = "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert!(r.push(tail.as_bytes(), ms(62))?);
        assert_eq!(r.out.text, "Once upon");
        assert_eq!(r.out.chunk_times, [ms(11), ms(61)]);
        assert_eq!(r.out.completion_tokens, Some(2));
        assert_eq!(r.out.finish.as_deref(), Some("length"));
        assert_eq!(r.out.decode_rate(), Some(20.0));
        Ok(())
    }

    #[test]
    fn sse_error_events_and_statuses_fail() -> Result<()> {
        let mut r = SseReader::default();
        let err = "HTTP/1.0 200 OK\r\n\r\ndata: {\"error\":{\"message\":\"no route\"}}\n\n";
        assert!(r.push(err.as_bytes(), ms(1)).is_err());
        let mut r = SseReader::default();
        let busy = "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"error\":\"not ready\"}";
        assert!(!r.push(busy.as_bytes(), ms(1))?);
        let msg = r.failure().to_string();
        assert!(msg.contains("503") && msg.contains("not ready"), "{msg}");
        Ok(())
    }

    #[test]
    fn one_chunk_gives_no_rate() {
        let s = Streamed {
            chunk_times: vec![ms(5)],
            ..Streamed::default()
        };
        assert_eq!(s.decode_rate(), None);
    }

    #[test]
    fn routes_come_from_the_pipeline_route_lines() {
        let log = "2026-11-25T16:00:00Z  INFO pipeline route session=1 route=A[0..2] -> B[2..4] -> C[4..8]\n\
                   2026-11-25T16:00:01Z  INFO [SWARM] ✅ Swarm ready\n\
                   2026-11-25T16:00:02Z  INFO pipeline route session=2 route=D[0..8]\n";
        let r = route_lines(log);
        assert_eq!(r, ["A[0..2] -> B[2..4] -> C[4..8]", "D[0..8]"]);
        assert_eq!(r[0].split(" -> ").count(), 3);
        assert!(route_lines("nothing here").is_empty());
    }

    fn sample(kind: Kind, decode: f64, hops: Option<usize>) -> Sample {
        Sample {
            kind,
            decode,
            tokens: 64,
            first_ms: 100.0,
            hops,
        }
    }

    #[test]
    fn report_gives_ratio_per_hop_overhead_and_verdict() {
        let c = Conditions {
            nodes: 4,
            shards: 8,
            tokens: 64,
            runs: 2,
            load_before: "1.0 1.0 1.0".into(),
            load_after: "2.0 1.0 1.0".into(),
        };
        // single 20 tok/s = 50 ms; pipeline 16 tok/s = 62.5 ms over 4 hops; 1-node 19 tok/s.
        let samples = [
            sample(Kind::Single, 20.0, None),
            sample(Kind::Pipeline, 16.0, Some(4)),
            sample(Kind::OneNode, 20.0, Some(1)),
            sample(Kind::Pipeline, 16.0, Some(4)),
            sample(Kind::OneNode, 20.0, Some(1)),
            sample(Kind::Single, 20.0, None),
        ];
        let text = report(&samples, &c);
        assert!(
            text.contains("| pipeline, 4 nodes | 16.0 | 0.80× | 62.5 | 3.1 | 4 |"),
            "{text}"
        );
        assert!(text.contains("| 2 | pipeline, 1 node"), "{text}");
        assert!(
            text.contains("(1-node pipeline − single): 0.0 ms/token"),
            "{text}"
        );
        assert!(text.contains("(4 − 1 hops): 4.2 ms/token"), "{text}");
        assert!(
            text.contains("= 0.80× (target ≥ 0.70× on loopback): met"),
            "{text}"
        );

        let slow = [
            sample(Kind::Single, 20.0, None),
            sample(Kind::Pipeline, 10.0, None),
        ];
        let text = report(&slow, &c);
        assert!(text.contains("0.50×") && text.contains("NOT met"), "{text}");
        assert!(
            text.contains("| pipeline, 4 nodes | 10.0 | 0.50× | 100.0 | — | — | 64 | 100 |"),
            "{text}"
        );
    }
}
