//! The libp2p adapter of shardswarm: one event loop that owns the `Swarm`, in the server role
//! (catalog, rendezvous server, DHT bootstrap) or the node role (join, sync, discover).
//!
//! Start a peer with [`start_server`] or [`start_node`]; talk to it through the returned
//! [`Handle`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod assign;
mod behaviour;
mod bt;
pub mod catalog;
mod codec;
pub mod config;
mod dispatch;
mod event_loop;
mod handle;
pub mod hash_cache;
pub mod identity;
pub mod inference;
mod listen;
pub mod metrics;
mod msglog;
pub mod nat;
mod node_role;
mod node_shards;
mod own_status;
pub mod peer_limits;
pub mod peers;
mod respond;
mod server_assign;
mod server_role;
pub mod status;
pub mod store;
pub mod swarm_key;
pub mod swarm_key_transport;
pub mod transfer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, Swarm};
use prometheus_client::registry::Registry;
use shardswarm_proto::status::Role;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::info;

pub use behaviour::{RENDEZVOUS_NAMESPACE, agent_version};
pub use codec::{CMD_PROTOCOL, InboundBytes};
pub use config::{CommonConfig, NodeConfig, ServerConfig, ShardPolicy, Transports};
pub use handle::{Event, Handle, HandleError, ModelFile};
pub use msglog::seed_json;
pub use swarm_key::SwarmKey;

use crate::behaviour::Behaviour;
use crate::catalog::{Catalog, CatalogError};
use crate::event_loop::{EventLoop, RoleState};
use crate::hash_cache::HashCache;
use crate::node_role::NodeState;
use crate::server_role::ServerState;

/// Why a peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is unusable.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The shards directory cannot be served.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The transport could not be built.
    #[error("transport: {0}")]
    Transport(String),
    /// No listen address could be bound.
    #[error("cannot listen on any of {addrs:?}: {reason}")]
    Listen {
        /// The addresses tried.
        addrs: Vec<String>,
        /// The last error.
        reason: String,
    },
}

fn uses(addr: &Multiaddr, quic: bool) -> bool {
    let is_quic = addr.iter().any(|p| matches!(p, Protocol::QuicV1));
    is_quic == quic
}

fn build_swarm(
    common: &CommonConfig,
    role: Role,
) -> Result<(Swarm<Behaviour>, Registry), StartError> {
    if common.swarm_key.is_some() && common.transfer.bt_listen.is_some() {
        return Err(StartError::Transport(
            "--bt-listen (plain BitTorrent, no authentication) cannot be combined with --swarm-key"
                .into(),
        ));
    }
    std::fs::create_dir_all(&common.data_dir).map_err(|source| StartError::DataDir {
        path: common.data_dir.clone(),
        source,
    })?;
    let key = identity::load_or_create(&common.data_dir.join("identity.key"))?;
    let mut registry = Registry::default();
    let timeout = common.request_timeout;
    // QUIC and TCP (noise, yamux), gated by the swarm key when there is one.
    let refusals = swarm_key_transport::Refusals::default();
    registry.register(
        "shardswarm_swarm_key_refused",
        "Connections refused by the swarm-key check, by reason",
        refusals.clone(),
    );
    if let Some(k) = &common.swarm_key {
        info!(target: "shardswarm::auth", fingerprint = k.fingerprint(), "private swarm: connections must prove the swarm key");
    }
    let swarm_key = common.swarm_key.clone();
    // Nodes also dial and listen through the server's circuit relay (`nat`); relayed
    // connections go through the same upgrades and swarm-key gate.
    let (relay_transport, relay_client) = match role {
        Role::Node => {
            let (t, b) = libp2p::relay::client::new(key.public().to_peer_id());
            (Some(t), Some(b))
        }
        Role::Server => (None, None),
    };
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|k| {
            swarm_key_transport::transport_counted(k, swarm_key, refusals, relay_transport)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|key| Behaviour::new(key, role, timeout, relay_client))
        .map_err(|e| StartError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok((swarm, registry))
}

fn spawn(
    mut swarm: Swarm<Behaviour>,
    mut registry: Registry,
    common: &CommonConfig,
    role: RoleState,
) -> Result<Started, StartError> {
    let t = common.transports;
    let mut listeners = HashSet::new();
    let mut last_err = String::from("no address allowed by the enabled transports");
    for addr in &common.listen {
        if !(t.quic && uses(addr, true) || t.tcp && uses(addr, false)) {
            continue;
        }
        match swarm.listen_on(addr.clone()) {
            Ok(id) => {
                listeners.insert(id);
            }
            Err(e) => {
                tracing::warn!(target: "shardswarm::peer", %addr, error = %e, "cannot listen");
                last_err = e.to_string();
            }
        }
    }
    if listeners.is_empty() {
        return Err(StartError::Listen {
            addrs: common.listen.iter().map(ToString::to_string).collect(),
            reason: last_err,
        });
    }
    let peer_id = *swarm.local_peer_id();
    let (tx, rx) = mpsc::channel(64);
    let (events, first_rx) = broadcast::channel(1024);
    let (listen_tx, listen_rx) = watch::channel(None);
    let nat = nat::NatState::new(&mut registry, common.transfer.relayed_limit);
    let metrics = Arc::new(metrics::Metrics::new(registry));
    let control = swarm.behaviour().stream.new_control();
    let (transfer, transfer_events) = transfer::spawn(
        control,
        common.transfer.clone(),
        metrics.clone(),
        nat.paths.clone(),
    )
    .map_err(StartError::Transport)?;
    let bt_listen = transfer.bt_addr;
    let rtts: inference::Rtts = Arc::default();
    let inference = inference::Inference::start(
        swarm.behaviour().stream.new_control(),
        peer_id,
        tx.downgrade(),
        rtts.clone(),
        common.stage_limits.clone(),
    )
    .map_err(StartError::Transport)?;
    let (stage_tx, stage_rx) = mpsc::channel(64);
    let event_loop = EventLoop {
        transfer,
        transfer_events,
        swarm,
        rx,
        events: events.clone(),
        listen_tx,
        metrics: metrics.clone(),
        data_dir: common.data_dir.clone(),
        role,
        peers: HashMap::new(),
        pending: HashMap::new(),
        listeners_pending: listeners,
        listen_deadline: None,
        listen_addrs: Vec::new(),
        stages: inference.stages.clone(),
        stage_tx,
        stage_rx,
        loading: HashSet::new(),
        rtts,
        connections: Default::default(),
        cmd_limiter: Default::default(),
        nat,
    };
    tokio::spawn(event_loop.run());
    let handle = Handle {
        tx,
        events,
        listen: listen_rx,
        peer_id,
        metrics,
        inference,
        bt_listen,
    };
    Ok(Started {
        handle,
        events: first_rx,
    })
}

/// A freshly started peer: its handle and every event since it started.
#[derive(Debug)]
pub struct Started {
    /// The handle.
    pub handle: Handle,
    /// Events from the very start (later subscribers use [`Handle::subscribe`]).
    pub events: broadcast::Receiver<Event>,
}

/// Starts the rendezvous server: builds the catalog (hashing only what the cache lacks), then
/// listens. Must be called inside a tokio runtime.
pub async fn start_server(cfg: ServerConfig) -> Result<Started, StartError> {
    let mut cache = HashCache::open(&cfg.common.data_dir.join("catalog"));
    cache.set_progress(cfg.hash_progress.clone());
    let shards_dir = cfg.shards_dir.clone();
    let (catalog, cache) = tokio::task::spawn_blocking(move || {
        let c = Catalog::load(&shards_dir, &mut cache);
        (c, cache)
    })
    .await
    .map_err(|e| StartError::Transport(format!("catalog task: {e}")))?;
    let catalog = catalog?;
    info!(target: "shardswarm::catalog", model = catalog.model, model_id = catalog.model_id,
        shards = catalog.total_shards(), "catalog ready");
    let (swarm, registry) = build_swarm(&cfg.common, Role::Server)?;
    let state = ServerState {
        shards_dir: cfg.shards_dir.clone(),
        cache,
        rescan_interval: cfg.rescan_interval,
        next_rescan: Instant::now() + cfg.rescan_interval,
        next_poll: Instant::now(),
        ready: false,
        assignments: HashMap::new(),
        catalog,
    };
    let shards = state.catalog.total_shards();
    let started = spawn(
        swarm,
        registry,
        &cfg.common,
        RoleState::Server(Box::new(state)),
    )?;
    started.handle.metrics.catalog_shards.set(i64::from(shards));
    Ok(started)
}

/// Starts a node: listens, dials the server (or the given peers) and syncs by itself.
/// Must be called inside a tokio runtime.
pub async fn start_node(cfg: NodeConfig) -> Result<Started, StartError> {
    let (swarm, registry) = build_swarm(&cfg.common, Role::Node)?;
    let common = cfg.common.clone();
    let state = NodeState::new(cfg);
    spawn(swarm, registry, &common, RoleState::Node(Box::new(state)))
}
