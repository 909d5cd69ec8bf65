//! Prometheus metrics of a peer: libp2p's own (libp2p-metrics, bandwidth included) under their
//! names, ours under `shardswarm_`.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `shardswarm_commands_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// The command name (`UNKNOWN` for names this peer does not know).
    pub command: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `success` or the error code.
    pub status: String,
}

/// The metrics of one peer.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub(crate) libp2p: libp2p::metrics::Metrics,
    pub(crate) commands: Family<CommandLabels, Counter>,
    pub(crate) connected_peers: Gauge,
    pub(crate) catalog_shards: Gauge,
    pub(crate) swarm_ready: Gauge,
    downloaded: Family<SourceLabels, Counter>,
    uploaded: Counter,
    pieces_verified: Counter,
    pieces_rejected: Counter,
    inference_requests: Family<OutcomeLabels, Counter>,
    tokens_generated: Counter,
    token_seconds: Histogram,
    pub(crate) by_transport: Family<TransportLabels, Gauge>,
    banned_peers: Counter,
    pub(crate) shards_loaded: Gauge,
    step_seconds: Histogram,
    hop_seconds: Histogram,
    pub(crate) commands_rate_limited: Counter,
}

/// Labels of `shardswarm_connected_peers_by_transport`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `quic`, `tcp`, `relayed` or `other`: the transport of the peer's connection in use.
    pub transport: &'static str,
}

/// Labels of `shardswarm_inference_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `eos`, `length`, `cancelled`, `not_ready`, `bad_request`, `failed` or `timeout`.
    pub outcome: &'static str,
}

/// Labels of the byte counters: whether the other side is the server or a peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `server`, `peer` or `bittorrent` (a regular client over the BitTorrent wire).
    pub source: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers everything into `registry` (which the transport's bandwidth metrics already use).
    pub fn new(mut registry: Registry) -> Self {
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "shardswarm_commands",
            "Command-protocol requests by command, direction and outcome",
            commands.clone(),
        );
        let connected_peers = Gauge::default();
        registry.register(
            "shardswarm_connected_peers",
            "Peers with at least one open connection",
            connected_peers.clone(),
        );
        let catalog_shards = Gauge::default();
        registry.register(
            "shardswarm_catalog_shards",
            "Shards in the catalog this peer knows",
            catalog_shards.clone(),
        );
        let swarm_ready = Gauge::default();
        registry.register(
            "shardswarm_swarm_ready",
            "1 when every shard is loaded by a live node",
            swarm_ready.clone(),
        );
        let downloaded = Family::<SourceLabels, Counter>::default();
        registry.register(
            "shardswarm_torrent_downloaded_bytes",
            "Shard payload bytes received, by who sent them",
            downloaded.clone(),
        );
        let uploaded = Counter::default();
        registry.register(
            "shardswarm_torrent_uploaded_bytes",
            "Shard payload bytes sent (counted as written to the stream)",
            uploaded.clone(),
        );
        let pieces_verified = Counter::default();
        registry.register(
            "shardswarm_pieces_verified",
            "Pieces that passed their hash check",
            pieces_verified.clone(),
        );
        let pieces_rejected = Counter::default();
        registry.register(
            "shardswarm_pieces_rejected",
            "Pieces that failed their hash check",
            pieces_rejected.clone(),
        );
        let inference_requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "shardswarm_inference_requests",
            "Generations run through this peer's gateway, by outcome",
            inference_requests.clone(),
        );
        let tokens_generated = Counter::default();
        registry.register(
            "shardswarm_tokens_generated",
            "Tokens generated through this peer's gateway",
            tokens_generated.clone(),
        );
        let token_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "shardswarm_token_seconds",
            "Mean time per generated token of each generation (prompt included), seconds",
            token_seconds.clone(),
        );
        let by_transport = Family::<TransportLabels, Gauge>::default();
        registry.register(
            "shardswarm_connected_peers_by_transport",
            "Connected peers by the transport of the connection in use",
            by_transport.clone(),
        );
        for t in shardswarm_proto::Transport::ALL {
            let _ = by_transport.get_or_create(&TransportLabels {
                transport: t.as_str(),
            });
        }
        let banned_peers = Counter::default();
        registry.register(
            "shardswarm_banned_peers",
            "Peers banned by the piece engine (corrupt data or protocol violations)",
            banned_peers.clone(),
        );
        let shards_loaded = Gauge::default();
        registry.register(
            "shardswarm_shards_loaded",
            "Shards whose layers this peer has loaded and serves",
            shards_loaded.clone(),
        );
        let step_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "shardswarm_step_seconds",
            "Round trip of one decode step through the whole pipeline route, seconds",
            step_seconds.clone(),
        );
        let hop_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "shardswarm_hop_seconds",
            "Time per hop of a decode step (its round trip divided by the route's hops), seconds",
            hop_seconds.clone(),
        );
        let commands_rate_limited = Counter::default();
        registry.register(
            "shardswarm_commands_rate_limited",
            "Inbound commands refused because their peer exceeded its command rate",
            commands_rate_limited.clone(),
        );
        Metrics {
            commands_rate_limited,
            by_transport,
            banned_peers,
            shards_loaded,
            step_seconds,
            hop_seconds,
            inference_requests,
            tokens_generated,
            token_seconds,
            downloaded,
            uploaded,
            pieces_verified,
            pieces_rejected,
            registry: Mutex::new(registry),
            libp2p,
            commands,
            connected_peers,
            catalog_shards,
            swarm_ready,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = match self.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn downloaded(&self, source: &'static str, bytes: u64) {
        self.downloaded
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    pub(crate) fn uploaded(&self, bytes: u64) {
        self.uploaded.inc_by(bytes);
    }

    /// Total payload bytes sent so far.
    pub fn uploaded_total(&self) -> u64 {
        self.uploaded.get()
    }

    /// Payload bytes received so far from `source` (`server`, `peer` or `bittorrent`).
    pub fn downloaded_from(&self, source: &'static str) -> u64 {
        self.downloaded
            .get_or_create(&SourceLabels { source })
            .get()
    }

    /// Payload bytes received so far, every source.
    pub fn downloaded_total(&self) -> u64 {
        self.downloaded_from("server")
            + self.downloaded_from("peer")
            + self.downloaded_from("bittorrent")
    }

    /// Records the step round trips of one generation over a route of `hops` hops: the first
    /// step (the prompt) is left out, every later one is a single-token decode step.
    pub fn steps(&self, times: &[std::time::Duration], hops: usize) {
        for t in times.iter().skip(1) {
            let secs = t.as_secs_f64();
            self.step_seconds.observe(secs);
            self.hop_seconds.observe(secs / hops.max(1) as f64);
        }
    }

    pub(crate) fn banned(&self) {
        self.banned_peers.inc();
    }

    /// Records one generation through this peer's gateway: its outcome, tokens and duration.
    pub fn inference(&self, outcome: &'static str, tokens: u64, secs: f64) {
        self.inference_requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.tokens_generated.inc_by(tokens);
        if tokens > 0 {
            self.token_seconds.observe(secs / tokens as f64);
        }
    }

    pub(crate) fn piece(&self, ok: bool) {
        if ok {
            self.pieces_verified.inc();
        } else {
            self.pieces_rejected.inc();
        }
    }

    pub(crate) fn count_command(&self, command: &str, direction: &'static str, status: String) {
        self.commands
            .get_or_create(&CommandLabels {
                command: command.to_owned(),
                direction,
                status,
            })
            .inc();
    }
}
