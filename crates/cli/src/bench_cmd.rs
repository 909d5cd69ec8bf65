//! `shardswarm bench distribute`: how fast the default model spreads through a swarm on
//! loopback, against a star where every node fetches from the server only.
//!
//! Everything runs as real processes of this binary on 127.0.0.1: one `server` with its upload
//! capped and N `node --shards all` processes. The clock of a run starts when the node processes
//! are launched and stops when every node's `/api/status` lists all shards as verified. Runs
//! alternate swarm / star; the table reports each run and the medians. Then a single-stream
//! measurement: one uncapped server and one `--fetch-from server` node, against a raw stream of
//! the same bytes between two peers (see [`raw`]).
//!
//! `bench pipeline` (decode through a swarm's pipeline against one process) is in [`pipeline`]
//! and shares the process guard, the server start-up and the split.
//!
//! Every child is spawned with `kill_on_drop`, owned by a [`Procs`] guard: on success, error,
//! panic or Ctrl-C/SIGTERM (the bench future is dropped) the children are killed. Progress and
//! the children's log paths go to stderr, results to stdout.

mod pipeline;
mod procs;
mod raw;
mod report;
mod sse;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use shardswarm_node::transfer::Rate;
use tokio::process::Command;

use crate::prom::metric_sum;
use procs::{Procs, Progress, ServerInfo, fresh_dir, http_get, path_arg, read_first_line};
use report::{Mode, RunResult, SingleStream};

const QUIC_LISTEN: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const TCP_LISTEN: &str = "/ip4/127.0.0.1/tcp/0";
/// How long a server may take to listen and hash its catalog.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
const MB: f64 = 1e6;

const DISTRIBUTE_ABOUT: &str = "\
Measure shard distribution on loopback: swarm vs star, plus single-stream throughput.

The model (default: the cached SmolLM2 Q4_1, fetched if missing) is split into --shards shards in
WORK_DIR/shards (reused when present). Each run starts a server with --upload-limit and --nodes
node processes with `--shards all`, all on 127.0.0.1, and times from launching the nodes until
every node's /api/status lists every shard as verified. Mode (a) swarm: nodes fetch from anyone;
mode (b) star: every node runs with `--fetch-from server`. The modes alternate for --runs rounds
with fresh data directories; the report gives every run, the medians, the server's upload in
copies of the data and the ratios to the star and to the ideal star time (nodes x bytes / cap).

Then (c): one uncapped server and one `--fetch-from server` node (one piece stream), against a
raw stream of the same bytes between two processes of this binary: a bare libp2p QUIC stream
(same transport, TLS and stack as the piece protocol, no piece framing, hashing or disk writes)
and a plain TCP socket copy.

Children's logs stay in WORK_DIR/<run>/*.log. Progress goes to stderr, results to stdout.";

/// `shardswarm bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Swarm vs star distribution of a split model on loopback, and single-stream throughput.
    #[command(long_about = DISTRIBUTE_ABOUT)]
    Distribute(DistributeArgs),
    /// Prefill and decode tokens/s of the whole model in one process against llama.cpp.
    Infer(crate::bench_infer::InferArgs),
    /// Decode tokens/s of the swarm's pipeline on loopback against one process, and the
    /// latency each hop adds.
    #[command(long_about = pipeline::ABOUT)]
    Pipeline(pipeline::PipelineArgs),
    /// The receiving end of the raw-stream baseline (started by `distribute`).
    #[command(hide = true)]
    RawSink(raw::SinkArgs),
}

/// Flags of `shardswarm bench distribute`.
#[derive(Debug, Args)]
struct DistributeArgs {
    /// The GGUF model to split (default: the cached default model, fetched if missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Shards, run directories and logs (default: $TMPDIR/shardswarm-bench); shards are reused.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Number of shards to split the model into.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Number of node processes.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// The server's upload cap in modes (a) and (b).
    #[arg(long, value_name = "RATE", default_value = "20MB/s")]
    upload_limit: Rate,
    /// Rounds of (a) swarm then (b) star (0: only the single-stream measurement).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Give up on a run after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Interval between polls of the nodes' /api/status, in milliseconds.
    #[arg(long, default_value_t = 50)]
    poll_ms: u64,
    /// Skip (c), the single-stream throughput measurement.
    #[arg(long)]
    skip_throughput: bool,
    /// The shardswarm binary to run as server and nodes (default: this executable).
    #[arg(long)]
    bin: Option<PathBuf>,
}

/// Runs `shardswarm bench …`.
pub(crate) fn run(args: BenchArgs) -> Result<()> {
    if let BenchCommand::Infer(a) = args.command {
        return crate::bench_infer::run(a);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match args.command {
            BenchCommand::RawSink(a) => raw::run_sink(a).await,
            BenchCommand::Distribute(a) => tokio::select! {
                r = distribute(a) => r,
                () = crate::peer_cmd::shutdown_signal() => bail!("interrupted; child processes killed"),
            },
            BenchCommand::Pipeline(a) => tokio::select! {
                r = pipeline::run(a) => r,
                () = crate::peer_cmd::shutdown_signal() => bail!("interrupted; child processes killed"),
            },
            BenchCommand::Infer(_) => unreachable_infer(),
        }
    })
}

/// `bench infer` is dispatched before the runtime starts.
fn unreachable_infer() -> Result<()> {
    bail!("bench infer runs outside the async runtime")
}

/// Settings shared by every run.
struct Bench {
    bin: PathBuf,
    work: PathBuf,
    shards_dir: PathBuf,
    shards: u32,
    timeout: Duration,
    poll: Duration,
}

async fn distribute(args: DistributeArgs) -> Result<()> {
    if args.nodes == 0 || args.shards == 0 {
        bail!("--nodes and --shards must be at least 1");
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("shardswarm-bench"));
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let shards_dir = work.join("shards");
    ensure_split(&bin, args.model.as_deref(), &shards_dir, args.shards).await?;
    let total_bytes = shard_bytes(&shards_dir, args.shards)?;
    let bench = Bench {
        bin,
        work,
        shards_dir,
        shards: args.shards,
        timeout: Duration::from_secs(args.timeout_secs),
        poll: Duration::from_millis(args.poll_ms.max(1)),
    };
    let cap = args.upload_limit.0;
    eprintln!(
        "bench: {} shards, {:.1} MB, {} nodes, server upload cap {:.1} MB/s, {} runs, work dir {}",
        bench.shards,
        total_bytes as f64 / MB,
        args.nodes,
        cap as f64 / MB,
        args.runs,
        bench.work.display()
    );

    let mut results = Vec::new();
    for round in 1..=args.runs {
        for mode in [Mode::Swarm, Mode::Star] {
            let r = bench.run_distribution(round, mode, args.nodes, cap).await?;
            eprintln!(
                "bench: run {round} {}: {:.2} s (first node {:.2} s), server sent {:.2} copies",
                mode.name(),
                r.secs,
                r.first_secs,
                r.server_uploaded as f64 / total_bytes as f64
            );
            results.push(r);
        }
    }
    if !results.is_empty() {
        print!(
            "{}",
            report::distribution(&results, total_bytes, bench.shards, args.nodes, cap)
        );
    }

    if !args.skip_throughput {
        let piece = bench.run_single_stream().await?;
        let raw_quic = raw::measure(&bench.bin, &bench.shards_dir, bench.shards, raw::Kind::Quic)
            .await
            .context("raw QUIC stream baseline")?;
        let raw_tcp = raw::measure(&bench.bin, &bench.shards_dir, bench.shards, raw::Kind::Tcp)
            .await
            .context("raw TCP baseline")?;
        print!(
            "{}",
            report::single_stream(&piece, raw_quic, raw_tcp, total_bytes)
        );
    }
    Ok(())
}

/// Splits `model` into `dir` unless a split with `shards` shards is already there.
async fn ensure_split(bin: &Path, model: Option<&Path>, dir: &Path, shards: u32) -> Result<()> {
    let manifest = dir.join("manifest.json");
    if let Ok(text) = fs::read_to_string(&manifest) {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let complete = (0..shards).all(|i| dir.join(format!("shard-{i}.gguf")).is_file());
        if v["total_shards"].as_u64() == Some(u64::from(shards)) && complete {
            eprintln!("bench: reusing the split in {}", dir.display());
            return Ok(());
        }
    }
    let model = resolve_model(model).await?;
    split_model(bin, &model, dir, shards).await
}

/// `model`, else the cached default model (fetched if missing).
async fn resolve_model(model: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m.to_path_buf());
    }
    let opts = crate::fetch_model::FetchOptions::default();
    let cached = crate::fetch_model::default_model_path(&opts.cache_dir);
    if !cached.is_file() {
        eprintln!(
            "bench: fetching the default model into {}",
            cached.display()
        );
    }
    tokio::task::spawn_blocking(move || crate::fetch_model::fetch_default_model(&opts))
        .await
        .context("fetch-model task")?
}

/// `shardswarm split model --shards N --out dir`, into an emptied `dir`.
async fn split_model(bin: &Path, model: &Path, dir: &Path, shards: u32) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    eprintln!(
        "bench: splitting {} into {shards} shards in {}",
        model.display(),
        dir.display()
    );
    let status = Command::new(bin)
        .arg("split")
        .arg(model)
        .args(["--shards", &shards.to_string(), "--out"])
        .arg(dir)
        .stdout(Stdio::from(std::io::stderr()))
        .kill_on_drop(true)
        .status()
        .await
        .context("running `shardswarm split`")?;
    if !status.success() {
        bail!("`shardswarm split` failed: {status}");
    }
    Ok(())
}

/// Total bytes of `shard-0..N-1.gguf` in `dir`.
fn shard_bytes(dir: &Path, shards: u32) -> Result<u64> {
    let mut total = 0;
    for i in 0..shards {
        let p = dir.join(format!("shard-{i}.gguf"));
        total += fs::metadata(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .len();
    }
    Ok(total)
}

impl Bench {
    /// Server + `nodes` nodes in `mode`; times until every node holds every shard.
    async fn run_distribution(
        &self,
        round: usize,
        mode: Mode,
        nodes: usize,
        cap: u64,
    ) -> Result<RunResult> {
        let dir = fresh_dir(&self.work.join(format!("run-{round}-{}", mode.name())))?;
        let mut procs = Procs::default();
        let server = self.start_server(&dir, Some(cap), &mut procs).await?;
        let star = mode == Mode::Star;
        let (times, _, node_https) = self
            .run_nodes(&dir, &server, nodes, star, &mut procs)
            .await?;
        let server_metrics = http_get(&server.http, "/metrics").await?;
        let mut from_server = 0.0;
        let mut from_peers = 0.0;
        for h in &node_https {
            let m = http_get(h, "/metrics").await?;
            from_server += metric_sum(
                &m,
                "shardswarm_torrent_downloaded_bytes_total",
                Some("source=\"server\""),
            );
            from_peers += metric_sum(
                &m,
                "shardswarm_torrent_downloaded_bytes_total",
                Some("source=\"peer\""),
            );
        }
        procs.stop().await;
        Ok(RunResult {
            mode,
            secs: times.iter().copied().fold(0.0, f64::max),
            first_secs: times.iter().copied().fold(f64::INFINITY, f64::min),
            server_uploaded: metric_sum(
                &server_metrics,
                "shardswarm_torrent_uploaded_bytes_total",
                None,
            ) as u64,
            from_server: from_server as u64,
            from_peers: from_peers as u64,
        })
    }

    /// (c): an uncapped server and one `--fetch-from server` node.
    async fn run_single_stream(&self) -> Result<SingleStream> {
        let dir = fresh_dir(&self.work.join("run-single-stream"))?;
        let mut procs = Procs::default();
        let server = self.start_server(&dir, None, &mut procs).await?;
        let (times, first_byte, _) = self.run_nodes(&dir, &server, 1, true, &mut procs).await?;
        procs.stop().await;
        let secs = times[0];
        let transfer_secs = secs - first_byte[0].unwrap_or(0.0);
        eprintln!(
            "bench: single stream: {secs:.2} s from launch, {transfer_secs:.2} s from the first byte seen"
        );
        Ok(SingleStream {
            secs,
            transfer_secs,
        })
    }

    /// Starts a server in `dir/server`, waits until it listens and holds its whole catalog.
    async fn start_server(
        &self,
        dir: &Path,
        cap: Option<u64>,
        procs: &mut Procs,
    ) -> Result<ServerInfo> {
        let data = dir.join("server");
        fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut args: Vec<OsString> = vec![
            "server".into(),
            "--shards-dir".into(),
            path_arg(&self.shards_dir),
            "--data-dir".into(),
            path_arg(&data),
            "--listen".into(),
            QUIC_LISTEN.into(),
            "--listen".into(),
            TCP_LISTEN.into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ];
        if let Some(cap) = cap {
            args.extend(["--upload-limit".into(), cap.to_string().into()]);
        }
        procs.spawn("server", &self.bin, &args, dir.join("server.log"))?;
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let (http, addr) = loop {
            procs.check_alive()?;
            let http = read_first_line(&data.join("http.addr"));
            let addr = read_first_line(&data.join("server.addrs"));
            if let (Some(http), Some(addr)) = (http, addr)
                && let Ok(body) = http_get(&http, "/api/status").await
                && Progress::parse(&body).verified == self.shards as usize
            {
                break (http, addr);
            }
            if Instant::now() > deadline {
                bail!(
                    "the server did not list its {} shards within {SERVER_START_TIMEOUT:?}; see {}",
                    self.shards,
                    dir.join("server.log").display()
                );
            }
            tokio::time::sleep(self.poll).await;
        };
        Ok(ServerInfo { http, addr })
    }

    /// Launches `n` nodes and waits until each holds every shard. Returns, per node, the seconds
    /// from launch until done and until its first downloaded byte was seen, and its HTTP address.
    async fn run_nodes(
        &self,
        dir: &Path,
        server: &ServerInfo,
        n: usize,
        server_only: bool,
        procs: &mut Procs,
    ) -> Result<(Vec<f64>, Vec<Option<f64>>, Vec<String>)> {
        let data: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("node-{i}"))).collect();
        for d in &data {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let t0 = Instant::now();
        for (i, d) in data.iter().enumerate() {
            let mut args: Vec<OsString> = vec![
                "node".into(),
                "--server".into(),
                server.addr.clone().into(),
                "--data-dir".into(),
                path_arg(d),
                "--shards".into(),
                "all".into(),
                "--listen".into(),
                QUIC_LISTEN.into(),
                "--listen".into(),
                TCP_LISTEN.into(),
                "--http".into(),
                "127.0.0.1:0".into(),
            ];
            if server_only {
                args.extend(["--fetch-from".into(), "server".into()]);
            }
            procs.spawn(
                &format!("node-{i}"),
                &self.bin,
                &args,
                dir.join(format!("node-{i}.log")),
            )?;
        }
        let mut http: Vec<Option<String>> = vec![None; n];
        let mut done: Vec<Option<f64>> = vec![None; n];
        let mut first_byte: Vec<Option<f64>> = vec![None; n];
        let mut held = vec![0u64; n];
        let mut last_print = Instant::now();
        loop {
            procs.check_alive()?;
            for i in 0..n {
                if done[i].is_some() {
                    continue;
                }
                if http[i].is_none() {
                    http[i] = read_first_line(&data[i].join("http.addr"));
                }
                let Some(h) = &http[i] else { continue };
                let Ok(body) = http_get(h, "/api/status").await else {
                    continue;
                };
                let now = t0.elapsed().as_secs_f64();
                let p = Progress::parse(&body);
                held[i] = p.bytes;
                if p.bytes > 0 && first_byte[i].is_none() {
                    first_byte[i] = Some(now);
                }
                if p.verified == self.shards as usize {
                    done[i] = Some(now);
                }
            }
            if done.iter().all(Option::is_some) {
                break;
            }
            if t0.elapsed() > self.timeout {
                bail!(
                    "not every node held every shard after {:?}; logs in {}",
                    self.timeout,
                    dir.display()
                );
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                let line: Vec<String> = held
                    .iter()
                    .zip(&done)
                    .map(|(b, d)| match d {
                        Some(t) => format!("done@{t:.1}s"),
                        None => format!("{:.1}MB", *b as f64 / MB),
                    })
                    .collect();
                eprintln!(
                    "bench:   {:5.1} s  {}",
                    t0.elapsed().as_secs_f64(),
                    line.join("  ")
                );
            }
            tokio::time::sleep(self.poll).await;
        }
        let times = done.into_iter().map(|d| d.unwrap_or(f64::NAN)).collect();
        let https = http.into_iter().flatten().collect();
        Ok((times, first_byte, https))
    }
}
