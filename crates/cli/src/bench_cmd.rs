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
//! Every child is spawned with `kill_on_drop`, owned by a [`Procs`] guard: on success, error,
//! panic or Ctrl-C/SIGTERM (the bench future is dropped) the children are killed. Progress and
//! the children's log paths go to stderr, results to stdout.

mod raw;

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use shardswarm_node::transfer::Rate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const QUIC_LISTEN: &str = "/ip4/127.0.0.1/udp/0/quic-v1";
const TCP_LISTEN: &str = "/ip4/127.0.0.1/tcp/0";
/// How long a server may take to listen and hash its catalog.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(120);
/// One HTTP request to a child's API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP answer read from a child.
const MAX_HTTP_BYTES: u64 = 16 << 20;
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
    /// Rounds of (a) swarm then (b) star.
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match args.command {
            BenchCommand::RawSink(a) => raw::run_sink(a).await,
            BenchCommand::Distribute(a) => tokio::select! {
                r = distribute(a) => r,
                () = interrupted() => bail!("interrupted; child processes killed"),
            },
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Swarm (nodes fetch from anyone) or star (nodes fetch from the server only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Swarm,
    Star,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Swarm => "swarm",
            Mode::Star => "star",
        }
    }
}

/// Settings shared by every run.
struct Bench {
    bin: PathBuf,
    work: PathBuf,
    shards_dir: PathBuf,
    shards: u32,
    total_bytes: u64,
    timeout: Duration,
    poll: Duration,
}

/// One run's outcome.
#[derive(Debug, Clone)]
struct RunResult {
    mode: Mode,
    /// Launch of the nodes until the last node held every shard.
    secs: f64,
    /// Launch of the nodes until the first node held every shard.
    first_secs: f64,
    server_uploaded: u64,
    from_server: u64,
    from_peers: u64,
}

async fn distribute(args: DistributeArgs) -> Result<()> {
    if args.nodes == 0 || args.runs == 0 || args.shards == 0 {
        bail!("--nodes, --runs and --shards must be at least 1");
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
        total_bytes,
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
    let mut out = distribution_report(&results, total_bytes, args.nodes, cap);
    print!("{out}");
    out.clear();

    if !args.skip_throughput {
        let piece = bench.run_single_stream().await?;
        let raw_quic = raw::measure(&bench.bin, &bench.shards_dir, bench.shards, raw::Kind::Quic)
            .await
            .context("raw QUIC stream baseline")?;
        let raw_tcp = raw::measure(&bench.bin, &bench.shards_dir, bench.shards, raw::Kind::Tcp)
            .await
            .context("raw TCP baseline")?;
        let mbps = |secs: f64| total_bytes as f64 / MB / secs;
        let _ = writeln!(out, "\n(c) single stream, {:.1} MB, no upload cap", total_bytes as f64 / MB);
        let _ = writeln!(out, "| path | time (s) | MB/s |");
        let _ = writeln!(out, "|---|---:|---:|");
        let _ = writeln!(
            out,
            "| piece protocol, node launch → all shards verified | {:.2} | {:.1} |",
            piece.secs,
            mbps(piece.secs)
        );
        let _ = writeln!(
            out,
            "| piece protocol, first byte seen → all shards verified | {:.2} | {:.1} |",
            piece.transfer_secs,
            mbps(piece.transfer_secs)
        );
        let _ = writeln!(out, "| raw libp2p QUIC stream (one stream, 1 MiB writes) | {raw_quic:.2} | {:.1} |", mbps(raw_quic));
        let _ = writeln!(out, "| raw TCP socket copy (tokio, 1 MiB writes) | {raw_tcp:.2} | {:.1} |", mbps(raw_tcp));
        let _ = writeln!(
            out,
            "piece / raw QUIC = {:.2} (from first byte: {:.2}); piece / raw TCP = {:.2}",
            raw_quic / piece.secs,
            raw_quic / piece.transfer_secs,
            raw_tcp / piece.secs
        );
        print!("{out}");
    }
    Ok(())
}

/// The markdown table of every run, the medians and the ratios.
fn distribution_report(results: &[RunResult], total: u64, nodes: usize, cap: u64) -> String {
    let copies = |b: u64| b as f64 / total as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n(a) swarm vs (b) star: {nodes} nodes, {:.1} MB in 8 files, server upload cap {:.1} MB/s",
        total as f64 / MB,
        cap as f64 / MB
    );
    let _ = writeln!(
        out,
        "| run | mode | all nodes done (s) | first node done (s) | server sent (copies) | nodes got from server (MB) | nodes got from peers (MB) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            i / 2 + 1,
            r.mode.name(),
            r.secs,
            r.first_secs,
            copies(r.server_uploaded),
            r.from_server as f64 / MB,
            r.from_peers as f64 / MB
        );
    }
    let med = |mode: Mode, f: &dyn Fn(&RunResult) -> f64| {
        median(results.iter().filter(|r| r.mode == mode).map(f).collect())
    };
    for mode in [Mode::Swarm, Mode::Star] {
        let _ = writeln!(
            out,
            "| median | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            mode.name(),
            med(mode, &|r| r.secs),
            med(mode, &|r| r.first_secs),
            med(mode, &|r| copies(r.server_uploaded)),
            med(mode, &|r| r.from_server as f64 / MB),
            med(mode, &|r| r.from_peers as f64 / MB)
        );
    }
    let swarm = med(Mode::Swarm, &|r| r.secs);
    let star = med(Mode::Star, &|r| r.secs);
    let ideal_star = nodes as f64 * total as f64 / cap as f64;
    let one_copy = total as f64 / cap as f64;
    let _ = writeln!(
        out,
        "swarm / star = {:.2}; swarm / ideal star = {:.2} (ideal star = {nodes} x {:.1} MB / {:.1} MB/s = {ideal_star:.1} s; one copy alone {one_copy:.1} s)",
        swarm / star,
        swarm / ideal_star,
        total as f64 / MB,
        cap as f64 / MB
    );
    let _ = writeln!(
        out,
        "server sent (median copies): swarm {:.2}, star {:.2}",
        med(Mode::Swarm, &|r| copies(r.server_uploaded)),
        med(Mode::Star, &|r| copies(r.server_uploaded))
    );
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Splits `model` into `dir` unless a split with `shards` shards is already there.
async fn ensure_split(bin: &Path, model: Option<&Path>, dir: &Path, shards: u32) -> Result<()> {
    let manifest = dir.join("manifest.json");
    if let Ok(text) = fs::read_to_string(&manifest) {
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let complete =
            (0..shards).all(|i| dir.join(format!("shard-{i}.gguf")).is_file());
        if v["total_shards"].as_u64() == Some(u64::from(shards)) && complete {
            eprintln!("bench: reusing the split in {}", dir.display());
            return Ok(());
        }
    }
    let model = match model {
        Some(m) => m.to_path_buf(),
        None => {
            let opts = crate::fetch_model::FetchOptions::default();
            tokio::task::spawn_blocking(move || crate::fetch_model::fetch_default_model(&opts))
                .await
                .context("fetch-model task")??
        }
    };
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    eprintln!("bench: splitting {} into {shards} shards in {}", model.display(), dir.display());
    let status = Command::new(bin)
        .arg("split")
        .arg(&model)
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
        total += fs::metadata(&p).with_context(|| format!("reading {}", p.display()))?.len();
    }
    Ok(total)
}

/// The child processes of one run; killed when dropped (`kill_on_drop`).
#[derive(Default)]
struct Procs {
    list: Vec<(String, Child, PathBuf)>,
}

impl Procs {
    /// Starts `bin args…` with stdout and stderr into `log`.
    fn spawn(&mut self, name: &str, bin: &Path, args: &[String], log: PathBuf) -> Result<()> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log handle")?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
        self.list.push((name.to_owned(), child, log));
        Ok(())
    }

    /// Fails when a child has exited.
    fn check_alive(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.list {
            if let Some(status) = child.try_wait().context("polling a child")? {
                let tail = fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "{name} exited ({status}); log {}: …{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
        }
        Ok(())
    }

    /// Kills every child and waits for it.
    async fn stop(mut self) {
        for (_, child, _) in &mut self.list {
            let _ = child.start_kill();
        }
        for (_, child, _) in &mut self.list {
            let _ = child.wait().await;
        }
    }
}

/// The single-stream run's outcome.
struct SingleStream {
    secs: f64,
    transfer_secs: f64,
}

impl Bench {
    /// Server + `nodes` nodes in `mode`; times until every node holds every shard.
    async fn run_distribution(&self, round: usize, mode: Mode, nodes: usize, cap: u64) -> Result<RunResult> {
        let dir = fresh_dir(&self.work.join(format!("run-{round}-{}", mode.name())))?;
        let mut procs = Procs::default();
        let server = self.start_server(&dir, Some(cap), &mut procs).await?;
        let star = mode == Mode::Star;
        let (times, first_byte, node_https) = self.run_nodes(&dir, &server, nodes, star, &mut procs).await?;
        let _ = first_byte;
        let server_metrics = http_get(&server.http, "/metrics").await?;
        let mut from_server = 0.0;
        let mut from_peers = 0.0;
        for h in &node_https {
            let m = http_get(h, "/metrics").await?;
            from_server += metric(&m, "shardswarm_torrent_downloaded_bytes_total", Some("source=\"server\""));
            from_peers += metric(&m, "shardswarm_torrent_downloaded_bytes_total", Some("source=\"peer\""));
        }
        procs.stop().await;
        Ok(RunResult {
            mode,
            secs: times.iter().copied().fold(0.0, f64::max),
            first_secs: times.iter().copied().fold(f64::INFINITY, f64::min),
            server_uploaded: metric(&server_metrics, "shardswarm_torrent_uploaded_bytes_total", None) as u64,
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
        eprintln!("bench: single stream: {secs:.2} s from launch, {transfer_secs:.2} s from the first byte seen");
        Ok(SingleStream { secs, transfer_secs })
    }

    /// Starts a server in `dir/server`, waits until it listens and holds its whole catalog.
    async fn start_server(&self, dir: &Path, cap: Option<u64>, procs: &mut Procs) -> Result<ServerInfo> {
        let data = dir.join("server");
        fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut args: Vec<String> = vec![
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
            args.extend(["--upload-limit".into(), cap.to_string()]);
        }
        procs.spawn("server", &self.bin, &args, dir.join("server.log"))?;
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let (http, addr) = loop {
            procs.check_alive()?;
            let http = read_first_line(&data.join("http.addr"));
            let addr = read_first_line(&data.join("server.addrs"));
            if let (Some(http), Some(addr)) = (http, addr) {
                if let Ok(body) = http_get(&http, "/api/status").await {
                    if Progress::parse(&body).verified == self.shards as usize {
                        break (http, addr);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("the server did not list its {} shards within {SERVER_START_TIMEOUT:?}; see {}", self.shards, dir.join("server.log").display());
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
            let mut args: Vec<String> = vec![
                "node".into(),
                "--server".into(),
                server.addr.clone(),
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
            procs.spawn(&format!("node-{i}"), &self.bin, &args, dir.join(format!("node-{i}.log")))?;
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
                let Ok(body) = http_get(h, "/api/status").await else { continue };
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
                bail!("not every node held every shard after {:?}; logs in {}", self.timeout, dir.display());
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
                eprintln!("bench:   {:5.1} s  {}", t0.elapsed().as_secs_f64(), line.join("  "));
            }
            tokio::time::sleep(self.poll).await;
        }
        let times = done.into_iter().map(|d| d.unwrap_or(f64::NAN)).collect();
        let https = http.into_iter().flatten().collect();
        Ok((times, first_byte, https))
    }
}

/// A running server's HTTP API address and first libp2p address (QUIC).
struct ServerInfo {
    http: String,
    addr: String,
}

/// What `/api/status` says about the local peer.
struct Progress {
    verified: usize,
    bytes: u64,
}

impl Progress {
    /// `nodes[0]` is the local peer: its verified shards' sizes plus what it has of the others.
    fn parse(body: &str) -> Progress {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let me = &v["nodes"][0];
        let verified: Vec<u64> = me["verified"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let size_of = |idx: u64| {
            v["shards"]
                .as_array()
                .and_then(|s| s.iter().find(|e| e["index"].as_u64() == Some(idx)))
                .and_then(|e| e["size"].as_u64())
                .unwrap_or(0)
        };
        let partial: u64 = me["downloading"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d["have"].as_u64()).sum())
            .unwrap_or(0);
        Progress {
            verified: verified.len(),
            bytes: verified.iter().map(|&i| size_of(i)).sum::<u64>() + partial,
        }
    }
}

/// Sum of the samples of `name` (whose labels contain `label`, if given) in Prometheus text.
fn metric(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if label.is_some_and(|l| !labels.contains(l)) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `GET path` over HTTP/1.0 (the server closes after the answer); the body of a 200.
async fn http_get(addr: &str, path: &str) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(MAX_HTTP_BYTES).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8(buf).context("non-UTF-8 HTTP answer")?;
    let (head, body) = text.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        bail!("GET http://{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

fn read_first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Empties (or creates) `dir`.
fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}
