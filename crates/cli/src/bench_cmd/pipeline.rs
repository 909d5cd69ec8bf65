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
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::Value;
use tokio::process::Command;

use super::procs::{Procs, fresh_dir, http_get, path_arg};
use super::sse::stream_completion;
use super::{Bench, QUIC_LISTEN};
use crate::bench_infer::generate_rates;
use crate::prom::metric_sum;
use tables::{Conditions, Kind, Sample, report};

mod tables;

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
/// `/proc/<pid>/stat` counts CPU time in these ticks (`USER_HZ`, 100 on Linux).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

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
    let mut pings_before = Vec::new();
    for s in &swarms {
        pings_before.push(ping_totals(&s.http).await);
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
                "bench: run {}/{} {}: {:.1} tok/s, {} tokens, first token {:.0} ms{}{}",
                round + 1,
                args.runs,
                kind.label(args.nodes),
                sample.decode,
                sample.tokens,
                sample.first_ms,
                sample.hops.map_or(String::new(), |h| format!(", {h} hops")),
                sample
                    .busy
                    .map_or(String::new(), |b| format!(", swarm CPU / wall {b:.2}"))
            );
            samples.push(sample);
        }
    }
    let mut pings = Vec::new();
    for (s, before) in swarms.iter().zip(pings_before) {
        if let (Some((s0, n0)), Some((s1, n1))) = (before, ping_totals(&s.http).await)
            && n1 > n0
        {
            pings.push((s.kind, (s1 - s0) / (n1 - n0) * 1e3, (n1 - n0) as u64));
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
        pings,
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
    let rates = generate_rates(&out)?;
    Ok(Sample {
        kind: Kind::Single,
        decode: rates.decode,
        tokens,
        first_ms: rates.prefill_tokens as f64 / rates.prefill * 1e3,
        hops: None,
        busy: None,
        gateway_ms: None,
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
    // The server was spawned first.
    let pids = swarm.procs.pids();
    let cpu_before = cpu_secs(&pids);
    let server_before = cpu_secs(&pids[..1.min(pids.len())]);
    let streamed = tokio::time::timeout(timeout, stream_completion(&swarm.http, prompt, tokens))
        .await
        .with_context(|| format!("the completion did not finish within {timeout:?}"))??;
    let cpu = cpu_secs(&pids).zip(cpu_before).map(|(b, a)| b - a);
    let server_cpu = cpu_secs(&pids[..1.min(pids.len())])
        .zip(server_before)
        .map(|(b, a)| b - a);
    let decode = streamed.decode_rate().with_context(|| {
        format!(
            "fewer than 2 text chunks came ({:?}, finish reason {:?})",
            streamed.text, streamed.finish
        )
    })?;
    let planned = routes(&swarm.server_log);
    let hops = planned.last().map(|r| r.split(" -> ").count());
    let tokens = streamed
        .completion_tokens
        .unwrap_or(streamed.chunk_times.len());
    let sample = Sample {
        kind: swarm.kind,
        decode,
        tokens,
        first_ms: streamed.chunk_times[0].as_secs_f64() * 1e3,
        hops,
        busy: cpu.map(|c| c / streamed.done.as_secs_f64().max(1e-3)),
        gateway_ms: server_cpu.map(|c| c * 1e3 / tokens.max(1) as f64),
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

/// CPU seconds (user + system, all threads) used so far by the processes `pids`, from
/// `/proc/<pid>/stat` (None where that is not readable, e.g. off Linux).
fn cpu_secs(pids: &[u32]) -> Option<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: state is the 1st, utime the 12th.
        let (_, rest) = stat.rsplit_once(')')?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / CLOCK_TICKS_PER_SEC)
}

/// The sum and count of the server's libp2p ping round trips so far (to its nodes).
async fn ping_totals(http: &str) -> Option<(f64, f64)> {
    let m = http_get(http, "/metrics").await.ok()?;
    Some((
        metric_sum(&m, "libp2p_ping_rtt_seconds_sum", None),
        metric_sum(&m, "libp2p_ping_rtt_seconds_count", None),
    ))
}

/// `/proc/loadavg`'s three averages, or "unknown".
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
