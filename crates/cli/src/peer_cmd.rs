//! `shardswarm server` and `shardswarm node`: start the peer, print its addresses, serve HTTP,
//! and stop cleanly on Ctrl-C or SIGTERM.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use libp2p::Multiaddr;
use shardswarm_node::transfer::{Rate, TransferConfig};
use shardswarm_node::{CommonConfig, Handle, NodeConfig, ServerConfig, ShardPolicy};
use tracing::{info, warn};

/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Flags shared by `server` and `node`.
#[derive(Debug, Args)]
pub(crate) struct SharedArgs {
    /// Cap on shard bytes sent per second, e.g. 20MB/s.
    #[arg(long, value_name = "RATE")]
    upload_limit: Option<Rate>,
    /// Cap on shard bytes received per second, e.g. 20MB/s.
    #[arg(long, value_name = "RATE")]
    download_limit: Option<Rate>,
    /// Cap on shard bytes per second, each direction, over connections relayed through the
    /// server (a node behind NAT whose hole punch failed); direct connections are not under it.
    #[arg(long, value_name = "RATE", default_value = "2MB/s")]
    relayed_limit: Rate,
    /// Where a node downloads pieces from: any peer holding them, or the server only.
    #[arg(long, value_enum, default_value_t = FetchFrom::Any)]
    fetch_from: FetchFrom,
    /// Compute threads for the model's layers (candle's thread pool). Node default:
    /// RAYON_NUM_THREADS when set, else every available core; a server keeps its environment's
    /// choice unless this is given. Give each node 1 when several share a machine.
    #[arg(long, value_name = "T")]
    threads: Option<NonZeroUsize>,
    /// Also serve the shards held over the standard BitTorrent wire (plain TCP, no
    /// authentication) on this address, e.g. 127.0.0.1:6881.
    #[arg(long, value_name = "ADDR")]
    bt_listen: Option<std::net::SocketAddr>,
    /// Private swarm: a file with the swarm's key (32 random bytes, base64; make one with
    /// `head -c 32 /dev/urandom | base64 > swarm.key`). Peers without the same key are refused.
    #[arg(long, value_name = "FILE", conflicts_with = "bt_listen")]
    swarm_key: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on every HTTP route but the dashboard page.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
}

/// `--fetch-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FetchFrom {
    /// The server and every node that has pieces.
    Any,
    /// The server only (no peer-to-peer download; uploads to peers still happen).
    Server,
}

impl SharedArgs {
    /// Reads `--swarm-key` into `common`; the HTTP options from `--api-key`.
    fn security(&self, common: &mut CommonConfig) -> Result<shardswarm_gateway::HttpOptions> {
        if let Some(path) = &self.swarm_key {
            common.swarm_key = Some(shardswarm_node::SwarmKey::read(path)?);
        }
        let api_key = match &self.api_key {
            Some(k) => Some(
                shardswarm_gateway::auth::ApiKey::new(k).context("--api-key must not be empty")?,
            ),
            None => None,
        };
        Ok(shardswarm_gateway::HttpOptions { api_key })
    }

    fn apply(&self, common: &mut CommonConfig) {
        common.transfer = TransferConfig {
            upload_limit: self.upload_limit,
            download_limit: self.download_limit,
            server_only: self.fetch_from == FetchFrom::Server,
            bt_listen: self.bt_listen,
            bt_peers: Vec::new(),
            relayed_limit: Some(self.relayed_limit),
        };
    }
}

/// Flags of `shardswarm server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    #[command(flatten)]
    shared: SharedArgs,
    /// Directory with `shard-N.gguf` (and `manifest.json` from `split`); may be read-only.
    #[arg(long)]
    shards_dir: PathBuf,
    /// Identity, info-hash cache, `server.addrs`, `http.addr`.
    #[arg(long)]
    data_dir: PathBuf,
    /// libp2p listen address (repeatable). Default: QUIC and TCP on port 7447, IPv4 and IPv6.
    #[arg(long = "listen", value_name = "MA")]
    listen: Vec<Multiaddr>,
    /// HTTP API address.
    #[arg(long, default_value = "127.0.0.1:7448")]
    http: String,
}

/// Flags of `shardswarm node`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("join").required(true).multiple(true).args(["server", "peer"])))]
pub(crate) struct NodeArgs {
    #[command(flatten)]
    shared: SharedArgs,
    /// The rendezvous server's multiaddr, ideally ending in `/p2p/<id>` (repeatable: QUIC, TCP).
    #[arg(long, value_name = "MA")]
    server: Vec<Multiaddr>,
    /// Join through this peer (repeatable), e.g. when the server is gone.
    #[arg(long, value_name = "MA")]
    peer: Vec<Multiaddr>,
    /// Identity, shards (`models/<model_id>/`), catalog cache, `http.addr`.
    #[arg(long)]
    data_dir: PathBuf,
    /// libp2p listen address (repeatable). Default: QUIC and TCP on 0.0.0.0, port 0.
    #[arg(long = "listen", value_name = "MA")]
    listen: Vec<Multiaddr>,
    /// Which shards to hold: auto, all, or a list like 0,3.
    #[arg(long, default_value = "auto")]
    shards: ShardPolicy,
    /// Most shards to hold under `--shards auto`.
    #[arg(long)]
    max_shards: Option<u32>,
    /// Serve the HTTP API on this address too.
    #[arg(long)]
    http: Option<String>,
    /// Also download shards from this regular BitTorrent client (repeatable), e.g.
    /// 127.0.0.1:6881.
    #[arg(long, value_name = "ADDR")]
    bt_peer: Vec<std::net::SocketAddr>,
}

/// candle's compute-thread count for a node without `--threads`: `RAYON_NUM_THREADS` when it
/// holds a positive number, else every available core.
fn default_threads() -> NonZeroUsize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| std::thread::available_parallelism().ok())
        .unwrap_or(NonZeroUsize::MIN)
}

/// Makes candle's pool `threads` wide. candle (through rayon) reads `RAYON_NUM_THREADS` /
/// `CANDLE_NUM_THREADS` once, at first use, and setting the environment of a running process
/// is `unsafe`, which this workspace forbids: so when the variables do not already say
/// `threads`, the process replaces itself (`exec`, same pid, same stdio, so signals and
/// supervisors still reach the real process) with the same command line and the variables set.
/// Call it before starting any thread. Returns only when nothing had to change.
pub(crate) fn ensure_compute_threads(threads: NonZeroUsize) -> Result<()> {
    let want = threads.to_string();
    let set = |k: &str| std::env::var(k).ok().as_deref() == Some(want.as_str());
    if set("RAYON_NUM_THREADS") && set("CANDLE_NUM_THREADS") {
        return Ok(());
    }
    let mut cmd = self_command().context("cannot find the current executable for --threads")?;
    cmd.args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", &want)
        .env("CANDLE_NUM_THREADS", &want);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // `exec` only returns on failure.
        let err = cmd.exec();
        Err(err).context("cannot re-execute with --threads")
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("cannot re-execute with --threads")?;
        std::process::exit(status.code().unwrap_or(1));
    }
}

/// A command that runs this very executable: on Linux through `/proc/self/exe`, which still
/// names the running binary when its file was replaced meanwhile (a rebuild), with `argv[0]`
/// kept for `ps`; elsewhere `current_exe()`.
pub(crate) fn self_command() -> std::io::Result<std::process::Command> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    #[cfg(unix)]
    if proc_exe.exists() {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(proc_exe);
        if let Some(arg0) = std::env::args_os().next() {
            cmd.arg0(arg0);
        }
        return Ok(cmd);
    }
    let _ = proc_exe;
    Ok(std::process::Command::new(std::env::current_exe()?))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

/// Prints the addresses, serves HTTP if asked, waits for a signal, then shuts down.
async fn serve_until_signal(
    handle: Handle,
    http: Option<String>,
    http_opts: shardswarm_gateway::HttpOptions,
    data_dir: PathBuf,
) -> Result<()> {
    for addr in handle
        .listen_addrs()
        .await
        .context("peer stopped before listening")?
    {
        println!("listening on {addr}");
    }
    if let Some(addr) = handle.bt_listen_addr() {
        println!("bittorrent listening on {addr}");
    }
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = match http {
        Some(addr) => {
            let stop = async {
                let _ = stop_http_rx.await;
            };
            let (_, fut) =
                shardswarm_gateway::serve_with(handle.clone(), &addr, &data_dir, http_opts, stop)
                    .await?;
            Some(tokio::spawn(fut))
        }
        None => None,
    };
    shutdown_signal().await;
    info!(target: "shardswarm::peer", "signal received, stopping");
    let _ = stop_http_tx.send(());
    let stop = async {
        handle.shutdown().await;
        tracing::debug!(target: "shardswarm::peer", "peer stopped");
        if let Some(t) = http_task {
            let _ = t.await;
        }
        tracing::debug!(target: "shardswarm::peer", "http stopped");
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, stop).await.is_err() {
        warn!(target: "shardswarm::peer", "shutdown took longer than {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

pub(crate) fn run_server(args: ServerArgs) -> Result<()> {
    if let Some(threads) = args.shared.threads {
        ensure_compute_threads(threads)?;
    }
    let listen = if args.listen.is_empty() {
        shardswarm_node::config::default_listen(7447)
    } else {
        args.listen
    };
    let mut common = CommonConfig::new(args.data_dir.clone(), listen);
    args.shared.apply(&mut common);
    let http_opts = args.shared.security(&mut common)?;
    let cfg = ServerConfig {
        common,
        shards_dir: args.shards_dir,
        rescan_interval: Duration::from_secs(10),
        hash_progress: crate::progress::hash_progress(),
    };
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let handle = shardswarm_node::start_server(cfg).await?.handle;
        serve_until_signal(handle, Some(args.http), http_opts, args.data_dir).await
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

pub(crate) fn run_node(args: NodeArgs) -> Result<()> {
    ensure_compute_threads(args.shared.threads.unwrap_or_else(default_threads))?;
    let listen = if args.listen.is_empty() {
        ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    } else {
        args.listen
    };
    let mut common = CommonConfig::new(args.data_dir.clone(), listen);
    args.shared.apply(&mut common);
    let http_opts = args.shared.security(&mut common)?;
    common.transfer.bt_peers = args.bt_peer;
    let cfg = NodeConfig {
        common,
        server: args.server,
        peers: args.peer,
        shards: args.shards,
        max_shards: args.max_shards,
    };
    let rt = runtime()?;
    let result = rt.block_on(async move {
        let handle = shardswarm_node::start_node(cfg).await?.handle;
        let bars = crate::progress::Bars::start(handle.clone());
        let result = serve_until_signal(handle, args.http, http_opts, args.data_dir).await;
        if let Some(bars) = bars {
            bars.stop().await;
        }
        result
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}
