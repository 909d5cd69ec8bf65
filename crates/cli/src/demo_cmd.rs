//! `shardswarm demo`: the whole story on loopback, for a newcomer.
//!
//! 1. The model: `--model` (or `SHARDSWARM_MODEL`), else the default model, fetched into the
//!    cache when missing.
//! 2. Its shards in `DATA/shards`: reused when `manifest.json` there describes this model
//!    (source SHA-256) in `--shards` shards, else split afresh.
//! 3. A `server` process of this executable on 127.0.0.1 (QUIC and TCP on port 0, HTTP on port
//!    0); the demo waits for its `server.addrs` and `http.addr`.
//! 4. `--nodes` `node` processes (`--shards auto --max-shards ceil(N/K)+1 --threads 1`, QUIC on
//!    port 0, HTTP on port 0), joining through the server's first address. They fetch their
//!    shards from the server and from each other; the progress per node comes from the server's
//!    `GET /api/status` until the swarm is ready.
//! 5. One chat answer streamed through the server's OpenAI-compatible API (`chat`'s client).
//! 6. A summary on stdout: time to ready, shard bytes served by the server vs by the nodes (the
//!    nodes' `/metrics`), tokens per second.
//!
//! `DATA` (`--data-dir`, default `$XDG_CACHE_HOME/shardswarm/demo`) holds `shards/`,
//! `server/`, `node-1/` … and `logs/` (each child's stdout and stderr, one file per process).
//! A second run reuses the model, the shards and the server's directory (identity and
//! info-hash cache); the node directories and the logs are emptied at the start of every run,
//! so each run shows the distribution again instead of nodes that already hold everything.
//!
//! Children are owned by [`children::Children`]: the demo's steps run on a worker thread while
//! the main thread waits for them or for Ctrl-C/SIGTERM; on every way out (success, error,
//! signal, panic) every child is killed and reaped before the command returns.

mod children;
mod prepare;
mod summary;
mod watch;

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{HumanBytes, MultiProgress, ProgressDrawTarget};
use shardswarm_proto::SwarmStatus;

use crate::chat_cmd::{self, ChatRequest};
use children::{Children, Interrupted};
use summary::Traffic;
use watch::{NodeProc, Watch};

/// The question asked when `--prompt` is not given.
const DEFAULT_PROMPT: &str = "What is a peer-to-peer network? Answer in two sentences.";
/// How long the server may take to listen and write its address files.
const SERVER_START: Duration = Duration::from_secs(120);
/// Interval between two looks for the server's address files.
const START_POLL: Duration = Duration::from_millis(50);
/// One HTTP request to a child's API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// `shardswarm demo --help`.
pub(crate) const ABOUT: &str = "\
The whole story on loopback: split a model, serve it, let nodes fetch and load the shards from
the server and from each other, then stream one answer through the swarm.

Steps: the model (--model, else the default model, fetched into the cache if missing) is split
into --shards shards in DATA/shards (reused when DATA/shards/manifest.json already describes this
model and shard count); a `server` and --nodes `node` processes of this executable start on
127.0.0.1 (each node: --shards auto, --max-shards ceil(shards/nodes)+1, --threads 1); the progress
per node comes from the server's /api/status until the swarm is ready; then the prompt goes to the
server's POST /v1/chat/completions and the answer streams to stdout, followed by a summary (time
to ready, shard bytes from the server vs from other nodes, tokens/s).

DATA (--data-dir, default $XDG_CACHE_HOME/shardswarm/demo) keeps shards/ and server/ between
runs; node-*/ and logs/ are emptied at every start. Each child's output goes to DATA/logs/<name>.log.
Ctrl-C or SIGTERM stops every child before the demo exits.";

/// Flags of `shardswarm demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    nodes: u32,
    /// Number of shards to split the model into.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    shards: u32,
    /// The GGUF model (default: the cached default model, fetched if missing).
    #[arg(long, env = "SHARDSWARM_MODEL")]
    model: Option<PathBuf>,
    /// Shards, data directories and logs (default: $XDG_CACHE_HOME/shardswarm/demo).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The question for the swarm.
    #[arg(long, default_value = DEFAULT_PROMPT)]
    prompt: String,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Give up when the swarm is not ready after this many seconds.
    #[arg(long, default_value_t = 300)]
    ready_timeout: u64,
}

/// `$XDG_CACHE_HOME/shardswarm/demo` (beside the model cache).
fn default_data_dir() -> PathBuf {
    let models = crate::fetch_model::default_cache_dir();
    models
        .parent()
        .map_or_else(|| models.join("demo"), |p| p.join("demo"))
}

/// Runs `shardswarm demo`.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let interactive = std::io::stderr().is_terminal();
    let mp = MultiProgress::with_draw_target(if interactive {
        ProgressDrawTarget::stderr_with_hz(4)
    } else {
        ProgressDrawTarget::hidden()
    });
    let signal = {
        let _rt = rt.enter();
        stop_signal().context("installing the Ctrl-C/SIGTERM handlers")?
    };
    let children = Arc::new(Children::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let worker = {
        let children = children.clone();
        let mp = mp.clone();
        std::thread::Builder::new()
            .name("demo".into())
            .spawn(move || {
                let _ = tx.send(demo(&args, &children, &mp, interactive));
            })
            .context("starting the demo thread")?
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = rx => r.unwrap_or_else(|_| Err(anyhow!("the demo thread panicked"))),
            () = signal => Err(Interrupted.into()),
        }
    });
    let _ = mp.clear();
    let running = children.len();
    children.shutdown();
    match result {
        Ok(()) => {
            let _ = worker.join();
            Ok(())
        }
        Err(e) if e.is::<Interrupted>() => {
            bail!("interrupted; stopped {running} child process(es)")
        }
        Err(e) => Err(e),
    }
}

/// Resolves on the first Ctrl-C or SIGTERM. The handlers are registered by this call (within a
/// runtime context), before any child exists, so no early signal is lost.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// A status line on stderr, above the progress bars.
fn say(mp: &MultiProgress, msg: impl std::fmt::Display) {
    mp.suspend(|| eprintln!("[demo] {msg}"));
}

/// The demo's steps (see the module doc).
fn demo(args: &DemoArgs, children: &Children, mp: &MultiProgress, interactive: bool) -> Result<()> {
    let data = args.data_dir.clone().unwrap_or_else(default_data_dir);
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let logs = data.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs).with_context(|| format!("removing {}", logs.display()))?;
    }
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    say(mp, format_args!("data directory: {}", data.display()));

    let model = prepare::model(args.model.as_deref())?;
    let shards_dir = data.join("shards");
    let (manifest, reused) = prepare::shards(&model, args.shards, &shards_dir, mp)?;
    let total_bytes: u64 = manifest.shards.iter().map(|s| s.size).sum();
    say(
        mp,
        format_args!(
            "model {} ({}): {} layers in {} shards, {} in {} ({})",
            manifest.model_name,
            model.path.display(),
            manifest.block_count,
            manifest.total_shards,
            HumanBytes(total_bytes),
            shards_dir.display(),
            if reused { "reused" } else { "split now" }
        ),
    );

    // The server.
    let server_dir = data.join("server");
    fs::create_dir_all(&server_dir)
        .with_context(|| format!("creating {}", server_dir.display()))?;
    for stale in ["server.addrs", "http.addr"] {
        let _ = fs::remove_file(server_dir.join(stale));
    }
    let server_log = logs.join("server.log");
    children.spawn(
        "server",
        &[
            "server".into(),
            "--shards-dir".into(),
            shards_dir.clone().into(),
            "--data-dir".into(),
            server_dir.clone().into(),
            "--listen".into(),
            "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--http".into(),
            "127.0.0.1:0".into(),
        ],
        &[],
        &server_log,
    )?;
    let (server_addr, server_http) = wait_for_server(children, &server_dir, &server_log)?;
    let server_base = format!("http://{server_http}");
    say(
        mp,
        format_args!(
            "server up: {server_base} (API), {server_addr} (log: {})",
            server_log.display()
        ),
    );

    // The nodes, each in a fresh directory.
    remove_node_dirs(&data)?;
    // One more than an even split: windows overlap, so some shards have two holders and the
    // nodes fetch from each other, not only from the server.
    let max_shards = (args.shards.div_ceil(args.nodes) + 1).min(args.shards);
    let nodes: Vec<NodeProc> = (1..=args.nodes)
        .map(|i| NodeProc {
            name: format!("node-{i}"),
            data_dir: data.join(format!("node-{i}")),
        })
        .collect();
    let started = Instant::now();
    for node in &nodes {
        children.spawn(
            &node.name,
            &[
                "node".into(),
                "--server".into(),
                server_addr.clone().into(),
                "--data-dir".into(),
                node.data_dir.clone().into(),
                "--listen".into(),
                "/ip4/127.0.0.1/udp/0/quic-v1".into(),
                "--shards".into(),
                "auto".into(),
                "--max-shards".into(),
                max_shards.to_string().into(),
                "--http".into(),
                "127.0.0.1:0".into(),
                "--threads".into(),
                "1".into(),
            ],
            // Already what `--threads 1` asks for, so the node needs no re-exec.
            &[("RAYON_NUM_THREADS", "1"), ("CANDLE_NUM_THREADS", "1")],
            &logs.join(format!("{}.log", node.name)),
        )?;
    }
    say(
        mp,
        format_args!(
            "started {} nodes (up to {max_shards} shards each, 1 compute thread each); their logs: {}",
            nodes.len(),
            logs.join("node-*.log").display()
        ),
    );

    let mut watch = Watch::new(children, mp, interactive, &nodes);
    let ready_status = watch
        .until_ready(
            &server_base,
            manifest.total_shards,
            Duration::from_secs(args.ready_timeout),
        )
        .map_err(|e| {
            if e.is::<Interrupted>() {
                e
            } else {
                anyhow!(
                    "{e:#}\nthe nodes' logs: {}",
                    logs.join("node-*.log").display()
                )
            }
        })?;
    let ready_after = started.elapsed();
    let node_dirs: Vec<PathBuf> = nodes.iter().map(|n| n.data_dir.clone()).collect();
    let mut traffic = Traffic::scrape(&node_dirs);
    if ready_status.shards.iter().all(|s| s.loaded_by.len() <= 1) {
        traffic.hint = summary::replication_hint(args.shards, args.nodes);
    }
    let ready = summary::ready_line(ready_after, nodes.len(), manifest.total_shards, total_bytes);
    say(mp, &ready);
    say(mp, traffic.line());

    say(
        mp,
        format_args!("asking the swarm through {server_base}: {}", args.prompt),
    );
    let req = ChatRequest {
        base: server_base.clone(),
        prompt: args.prompt.clone(),
        max_tokens: Some(args.max_tokens),
        ..Default::default()
    };
    let outcome = chat_cmd::stream_to_stdout(&req).with_context(|| {
        format!(
            "the chat step failed (the swarm was ready; logs in {})",
            logs.display()
        )
    })?;
    if outcome.text.trim().is_empty() {
        bail!(
            "the swarm answered with no text ({} tokens)",
            outcome.tokens
        );
    }
    println!("--- demo summary ---");
    println!("{ready}");
    println!("{}", traffic.line());
    println!("{}", summary::answer_line(&outcome));
    println!("logs: {}", logs.display());
    Ok(())
}

/// Removes the `node-*` directories of earlier runs.
fn remove_node_dirs(data: &Path) -> Result<()> {
    for entry in fs::read_dir(data).with_context(|| format!("listing {}", data.display()))? {
        let entry = entry.with_context(|| format!("listing {}", data.display()))?;
        let is_node = entry.file_name().to_string_lossy().starts_with("node-");
        if is_node && entry.path().is_dir() {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Waits (bounded) for the server's `server.addrs` and `http.addr`; returns its first
/// multiaddr (QUIC) and its HTTP address. Fails at once when the server exits.
fn wait_for_server(children: &Children, dir: &Path, log: &Path) -> Result<(String, String)> {
    let deadline = Instant::now() + SERVER_START;
    loop {
        children.check_alive()?;
        let addr = read_addr(&dir.join("server.addrs"));
        let http = read_addr(&dir.join("http.addr"));
        if let (Some(addr), Some(http)) = (addr, http) {
            return Ok((addr, http));
        }
        if Instant::now() >= deadline {
            bail!(
                "the server did not write {} and http.addr within {} s; its log {} ends with:\n{}",
                dir.join("server.addrs").display(),
                SERVER_START.as_secs(),
                log.display(),
                children::tail(log, 8)
            );
        }
        children.pause(START_POLL)?;
    }
}

/// The first non-empty line of a file written atomically by a child (an address).
pub(super) fn read_addr(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.to_owned())
}

/// `GET url`, the body of a 2xx answer.
pub(super) fn get_text(url: &str) -> Result<String> {
    ureq::AgentBuilder::new()
        .timeout(HTTP_TIMEOUT)
        .build()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()
        .with_context(|| format!("reading {url}"))
}

/// `GET url` as a status document.
pub(super) fn get_status(url: &str) -> Result<SwarmStatus> {
    let text = get_text(url)?;
    serde_json::from_str(&text).with_context(|| format!("{url} did not answer the expected JSON"))
}
