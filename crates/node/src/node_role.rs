//! A node's side of the loop: joining through the server (or peers), SYNC_TORRENTS right after
//! the connection is up, asking for an assignment under `auto`, rendezvous registration and
//! discovery, and redialing the server with backoff. What happens to the shards themselves is in
//! `node_shards`.

use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, rendezvous};
use shardswarm_proto::command::{DEFAULT_TOTAL_SHARDS, SyncTorrentsParams};
use shardswarm_proto::{Command, SyncTorrentsResponse};
use tracing::{debug, info, warn};

use crate::behaviour::RENDEZVOUS_NAMESPACE;
use crate::config::NodeConfig;
use crate::event_loop::{EventLoop, Pending, RoleState, peer_of};
use crate::handle::Event;
use crate::hash_cache::write_atomic;
use crate::msglog;
use crate::store::{LocalStore, validate_model_id};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a node asks the server's rendezvous for the other nodes.
const DISCOVER_EVERY: Duration = Duration::from_secs(30);

pub(crate) struct NodeState {
    pub(crate) cfg: NodeConfig,
    /// The server's peer ID once known (from `--server …/p2p/<id>` or the first connection).
    pub(crate) server: Option<PeerId>,
    /// Dials to a `--server` address without `/p2p/`.
    pub(crate) server_dials: Vec<ConnectionId>,
    pub(crate) catalog: Option<SyncTorrentsResponse>,
    pub(crate) store: LocalStore,
    /// Wanted shards that are on disk and verified.
    pub(crate) present: Vec<u32>,
    /// Shards opened as GGUF and served.
    pub(crate) loaded: Vec<u32>,
    /// Running downloads.
    pub(crate) downloading: Vec<shardswarm_proto::DownloadProgress>,
    /// Info-hashes of the shards being fetched.
    pub(crate) fetching: Vec<shardswarm_proto::InfoHash>,
    /// A SHARD_LOADED is on its way to the server.
    pub(crate) report_in_flight: bool,
    /// What it carries is out of date: send again when it is answered.
    pub(crate) report_dirty: bool,
    /// Shards the server assigned under `--shards auto`.
    pub(crate) assigned: Option<Vec<u32>>,
    /// Set when the server announced CATALOG_CHANGED.
    pub(crate) resync: bool,
    pub(crate) backoff: Duration,
    pub(crate) redial_at: Option<Instant>,
    pub(crate) last_discover: Option<Instant>,
}

impl NodeState {
    pub(crate) fn new(cfg: NodeConfig) -> Self {
        let store = LocalStore::new(&cfg.common.data_dir);
        let catalog = load_last_catalog(&cfg);
        NodeState {
            server: cfg.server.iter().find_map(peer_of),
            cfg,
            server_dials: Vec::new(),
            catalog,
            store,
            present: Vec::new(),
            loaded: Vec::new(),
            downloading: Vec::new(),
            assigned: None,
            fetching: Vec::new(),
            report_in_flight: false,
            report_dirty: false,
            resync: false,
            backoff: Duration::from_secs(1),
            redial_at: Some(Instant::now()),
            last_discover: None,
        }
    }
}

fn last_catalog_path(cfg: &NodeConfig) -> std::path::PathBuf {
    cfg.common
        .data_dir
        .join("catalog")
        .join("last-catalog.json")
}

fn load_last_catalog(cfg: &NodeConfig) -> Option<SyncTorrentsResponse> {
    let bytes = std::fs::read(last_catalog_path(cfg)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl EventLoop {
    pub(crate) fn node(&mut self) -> Option<&mut NodeState> {
        match &mut self.role {
            RoleState::Node(n) => Some(n),
            RoleState::Server(_) => None,
        }
    }

    /// Dials the server (all its addresses) or, without one, the `--peer` addresses.
    fn dial_entry_points(&mut self) {
        let Some(n) = self.node() else { return };
        let server = n.server;
        let server_addrs = n.cfg.server.clone();
        let peers = n.cfg.peers.clone();
        let mut dials: Vec<(DialOpts, bool)> = Vec::new();
        match server {
            Some(id) if !server_addrs.is_empty() => {
                dials.push((DialOpts::peer_id(id).addresses(server_addrs).build(), false));
            }
            _ => dials.extend(
                server_addrs
                    .into_iter()
                    .map(|a| (DialOpts::unknown_peer_id().address(a).build(), true)),
            ),
        }
        dials.extend(
            peers
                .into_iter()
                .map(|a: Multiaddr| (DialOpts::from(a), false)),
        );
        for (opts, unknown_server) in dials {
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) if unknown_server => {
                    if let Some(n) = self.node() {
                        n.server_dials.push(id);
                    }
                }
                Ok(()) => {}
                Err(e) => debug!(target: "shardswarm::peer", error = %e, "dial not started"),
            }
        }
    }

    pub(crate) fn node_tick(&mut self) {
        let now = Instant::now();
        let Some(n) = self.node() else { return };
        let redial = n.redial_at.is_some_and(|t| now >= t);
        let resync = std::mem::take(&mut n.resync);
        let server = n.server;
        let discover = n.last_discover.is_some_and(|t| now >= t + DISCOVER_EVERY);
        if redial {
            n.redial_at = None;
            self.dial_entry_points();
        }
        self.nat_tick();
        if let Some(server) = server.filter(|s| self.swarm.is_connected(s)) {
            if resync {
                self.start_sync(server);
            }
            if discover {
                self.discover(server);
            }
        }
        if discover || (server.is_none() && self.node().is_some_and(|n| n.last_discover.is_none()))
        {
            if let Some(n) = self.node() {
                n.last_discover = Some(now);
            }
            self.lookup_missing();
        }
    }

    pub(crate) fn node_connected(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(n) = self.node() else { return };
        if n.server.is_none() && n.server_dials.contains(&connection) {
            n.server = Some(peer);
        }
        n.server_dials.retain(|c| *c != connection);
        let is_server = n.server == Some(peer);
        let via_peer = n.server.is_none() && n.catalog.is_none();
        if is_server {
            n.backoff = Duration::from_secs(1);
            self.emit(Event::ConnectedToServer { server: peer });
            self.start_sync(peer);
        } else if via_peer {
            // No server: any peer that holds a catalog answers SYNC_TORRENTS.
            self.start_sync(peer);
        }
    }

    pub(crate) fn node_disconnected(&mut self, peer: PeerId) {
        let Some(n) = self.node() else { return };
        if n.server == Some(peer) && !n.cfg.server.is_empty() {
            let wait = n.backoff;
            n.backoff = (n.backoff * 2).min(MAX_BACKOFF);
            n.redial_at = Some(Instant::now() + wait);
            warn!(target: "shardswarm::peer", %peer, retry_in = ?wait, "lost the rendezvous server; will redial");
        }
    }

    pub(crate) fn node_dial_failed(&mut self, peer: Option<PeerId>, connection: ConnectionId) {
        let Some(n) = self.node() else { return };
        let was_server =
            n.server_dials.contains(&connection) || (peer.is_some() && peer == n.server);
        n.server_dials.retain(|c| *c != connection);
        if was_server
            && n.redial_at.is_none()
            && !self.swarm.is_connected(&peer.unwrap_or(PeerId::random()))
        {
            let Some(n) = self.node() else { return };
            let wait = n.backoff;
            n.backoff = (n.backoff * 2).min(MAX_BACKOFF);
            n.redial_at = Some(Instant::now() + wait);
            warn!(target: "shardswarm::peer", retry_in = ?wait, "cannot reach the rendezvous server; will retry");
        }
    }

    fn start_sync(&mut self, peer: PeerId) {
        let Some(n) = self.node() else { return };
        let total_shards = n
            .catalog
            .as_ref()
            .map(|c| c.total_shards)
            .unwrap_or(DEFAULT_TOTAL_SHARDS);
        info!(target: msglog::SYNC, "[TORRENT_SYNC] 🔄 Initiating automatic torrent synchronization with rendezvous server...");
        self.send_command(
            peer,
            Command::SyncTorrents(SyncTorrentsParams { total_shards }),
            Pending::Sync,
            true,
        );
    }

    pub(crate) fn on_sync_failed(&mut self, peer: PeerId, reason: &str) {
        warn!(target: msglog::SYNC, %peer, reason, "[TORRENT_SYNC] ✗ SYNC_TORRENTS failed; retrying");
        if let Some(n) = self.node() {
            n.resync = true;
        }
    }

    pub(crate) fn on_sync_response(&mut self, peer: PeerId, bytes: &[u8]) {
        let catalog = shardswarm_proto::codec::decode_response(bytes)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.payload::<SyncTorrentsResponse>()
                    .map_err(|e| e.to_string())
            })
            .and_then(|c| check_catalog(&c).map(|()| c));
        let catalog = match catalog {
            Ok(c) => c,
            Err(reason) => {
                warn!(target: msglog::SYNC, %peer, reason, "[TORRENT_SYNC] ✗ unusable catalog");
                return;
            }
        };
        info!(target: msglog::SYNC, "[TORRENT_SYNC] ✓ Received {} available file(s) from rendezvous server", catalog.files.len());
        self.emit(Event::CatalogReceived {
            from: peer,
            model_id: catalog.model_id.clone(),
            files: catalog.files.clone(),
        });
        let Some(n) = self.node() else { return };
        if let Some(old) = &n.catalog
            && old.total_shards != catalog.total_shards
        {
            warn!(target: msglog::SYNC, before = old.total_shards, now = catalog.total_shards, "[TORRENT_SYNC] catalog shard count changed");
        }
        if let Ok(json) = serde_json::to_vec_pretty(&catalog) {
            let path = last_catalog_path(&n.cfg);
            let saved = path
                .parent()
                .map(std::fs::create_dir_all)
                .unwrap_or(Ok(()))
                .and_then(|()| write_atomic(&path, &json));
            if let Err(e) = saved {
                warn!(target: msglog::SYNC, error = %e, "cannot save the catalog");
            }
        }
        if let Some(n) = self.node() {
            n.assigned = None;
            n.catalog = Some(catalog.clone());
        }
        self.decide(&catalog);
        self.metrics
            .catalog_shards
            .set(i64::from(catalog.total_shards));
        let auto_server = self.node().and_then(|n| {
            let auto = matches!(n.cfg.shards, crate::config::ShardPolicy::Auto);
            n.server.filter(|s| auto && *s == peer)
        });
        if let Some(server) = auto_server {
            let max_shards = self.auto_capacity(&catalog);
            let params = shardswarm_proto::command::RequestShardsParams {
                model_id: catalog.model_id.clone(),
                max_shards,
            };
            self.send_command(
                server,
                Command::RequestShards(params),
                Pending::Assignment,
                true,
            );
        }
        if let Some(server) = self.node().and_then(|n| n.server).filter(|s| *s == peer) {
            self.register(server);
        }
    }

    pub(crate) fn register(&mut self, server: PeerId) {
        let Some(rv) = self.swarm.behaviour_mut().rendezvous_client.as_mut() else {
            return;
        };
        let ns = match rendezvous::Namespace::new(RENDEZVOUS_NAMESPACE.to_owned()) {
            Ok(ns) => ns,
            Err(e) => {
                warn!(target: "shardswarm::rendezvous", error = %e, "bad namespace");
                return;
            }
        };
        if let Err(e) = rv.register(ns, server, None) {
            warn!(target: "shardswarm::rendezvous", error = %e, "cannot register with the server");
        }
    }

    /// Makes the next periodic rendezvous discovery happen `after` from now.
    pub(crate) fn discover_soon(&mut self, after: Duration) {
        if let Some(n) = self.node() {
            n.last_discover = Instant::now()
                .checked_sub(DISCOVER_EVERY.saturating_sub(after))
                .or(n.last_discover);
        }
    }

    fn discover(&mut self, server: PeerId) {
        if let Some(n) = self.node() {
            n.last_discover = Some(Instant::now());
        }
        let Some(rv) = self.swarm.behaviour_mut().rendezvous_client.as_mut() else {
            return;
        };
        let ns = rendezvous::Namespace::new(RENDEZVOUS_NAMESPACE.to_owned()).ok();
        rv.discover(ns, None, None, server);
    }

    pub(crate) fn on_rendezvous_client(&mut self, ev: rendezvous::client::Event) {
        match ev {
            rendezvous::client::Event::Registered {
                rendezvous_node,
                ttl,
                ..
            } => {
                debug!(target: "shardswarm::rendezvous", %rendezvous_node, ttl, "registered");
                self.discover(rendezvous_node);
            }
            rendezvous::client::Event::Discovered { registrations, .. } => {
                let local = self.local();
                for r in registrations {
                    let peer = r.record.peer_id();
                    if peer == local || self.swarm.is_connected(&peer) {
                        continue;
                    }
                    let addrs = r.record.addresses().to_vec();
                    for a in &addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
                    }
                    debug!(target: "shardswarm::rendezvous", %peer, "discovered");
                    // Even while an earlier dial is still pending: the registration may carry
                    // an address it did not (a relay circuit reserved since).
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::Disconnected)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        debug!(target: "shardswarm::rendezvous", %peer, error = %e, "dial not started");
                    }
                }
            }
            rendezvous::client::Event::RegisterFailed { error, .. } => {
                warn!(target: "shardswarm::rendezvous", ?error, "registration refused");
            }
            rendezvous::client::Event::DiscoverFailed { error, .. } => {
                debug!(target: "shardswarm::rendezvous", ?error, "discovery failed");
            }
            rendezvous::client::Event::Expired { peer } => {
                debug!(target: "shardswarm::rendezvous", %peer, "registration expired");
            }
        }
    }
}

/// Rejects catalogs a node must not act on: unsafe names, wrong indices, broken layer ranges.
fn check_catalog(c: &SyncTorrentsResponse) -> Result<(), String> {
    validate_model_id(&c.model_id).map_err(|e| e.to_string())?;
    if c.files.len() != c.total_shards as usize || c.files.is_empty() {
        return Err(format!(
            "{} files for {} shards",
            c.files.len(),
            c.total_shards
        ));
    }
    let mut next = 0u32;
    for (i, f) in c.files.iter().enumerate() {
        if f.shard_index as usize != i
            || f.filename != shardswarm_proto::shard_filename(f.shard_index)
        {
            return Err(format!(
                "entry {i} is {:?} (index {})",
                f.filename, f.shard_index
            ));
        }
        if f.layers[0] != next || f.layers[1] <= f.layers[0] {
            return Err(format!("shard {i} has layers {:?}", f.layers));
        }
        next = f.layers[1];
    }
    Ok(())
}
