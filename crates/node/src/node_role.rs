//! A node's side of the loop: joining through the server (or peers), SYNC_TORRENTS right after
//! the connection is up, comparing the catalog with the disk, rendezvous registration and
//! discovery, and redialing the server with backoff.

use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::DialOpts;
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
use crate::transfer::{TransferCmd, TransferEvent};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
    fn node(&mut self) -> Option<&mut NodeState> {
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
        let discover = n
            .last_discover
            .is_some_and(|t| now >= t + Duration::from_secs(30));
        if redial {
            n.redial_at = None;
            self.dial_entry_points();
        }
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

    /// Compares the catalog with the disk: seeds and loads what is there, fetches what is not.
    fn decide(&mut self, catalog: &SyncTorrentsResponse) {
        let Some(n) = self.node() else { return };
        let auto = matches!(n.cfg.shards, crate::config::ShardPolicy::Auto);
        let wanted = match (&n.cfg.shards, &n.assigned) {
            (crate::config::ShardPolicy::Auto, Some(a)) => a
                .iter()
                .copied()
                .filter(|&i| i < catalog.total_shards)
                .collect(),
            (policy, _) => policy.wanted(catalog.total_shards),
        };
        let waiting = auto && n.assigned.is_none();
        let Ok(dir) = n.store.model_dir(&catalog.model_id) else {
            return;
        };
        let mut present = Vec::new();
        let mut missing = Vec::new();
        let mut cmds = Vec::new();
        for i in wanted {
            let Some(entry) = catalog.files.get(i as usize) else {
                continue;
            };
            match n.store.verified(&catalog.model_id, entry) {
                Some((path, meta)) => {
                    present.push(i);
                    cmds.push((
                        TransferCmd::Seed {
                            entry: entry.clone(),
                            path,
                            meta,
                        },
                        None,
                    ));
                }
                None => {
                    missing.push(i);
                    let fetch = TransferCmd::Fetch {
                        entry: entry.clone(),
                        dir: dir.clone(),
                        meta: None,
                    };
                    cmds.push((fetch, Some(entry.info_hash)));
                }
            }
        }
        n.present = present.clone();
        if waiting {
            info!(target: msglog::SYNC, "[TORRENT_SYNC] ⏳ --shards auto: asking the server which shards to hold");
        } else if missing.is_empty() {
            info!(target: msglog::SYNC, "[TORRENT_SYNC] ✓ All required shards are already present");
        }
        for i in &missing {
            info!(target: msglog::SYNC, "[TORRENT_SYNC] 📥 Starting download for shard {i}");
        }
        for (cmd, lookup) in cmds {
            self.transfer.send(cmd);
            if let Some(ih) = lookup {
                if let Some(n) = self.node()
                    && !n.fetching.contains(&ih)
                {
                    n.fetching.push(ih);
                }
                self.find_providers(ih);
            }
        }
        for &i in &present {
            if let Some(entry) = catalog.files.get(i as usize) {
                let path = dir.join(&entry.filename);
                self.load_shard(i, &path);
            }
        }
        self.emit(Event::SyncDecision {
            model_id: catalog.model_id.clone(),
            present,
            missing,
        });
        self.report_loaded();
    }

    /// `--max-shards`, else as many shards as fit in half the free memory.
    fn auto_capacity(&mut self, catalog: &SyncTorrentsResponse) -> u32 {
        let Some(n) = self.node() else { return 1 };
        if let Some(k) = n.cfg.max_shards {
            return k.max(1);
        }
        let largest = catalog.files.iter().map(|f| f.size).max().unwrap_or(1);
        crate::assign::available_memory()
            .map(|free| crate::assign::shards_that_fit(free, largest))
            .unwrap_or(1)
    }

    /// The server's answer to REQUEST_SHARDS.
    pub(crate) fn on_assignment_response(&mut self, peer: PeerId, bytes: &[u8]) {
        let parsed = shardswarm_proto::codec::decode_response(bytes)
            .map_err(|e| e.to_string())
            .and_then(|r| {
                r.payload::<shardswarm_proto::command::Assignment>()
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok(a) => {
                let _ = self.accept_assignment(peer, &a);
            }
            Err(e) => {
                warn!(target: msglog::SYNC, %peer, error = e, "[TORRENT_SYNC] ✗ no shard assignment")
            }
        }
    }

    /// ASSIGN_SHARDS (or the answer to REQUEST_SHARDS): hold exactly these shards from now on.
    pub(crate) fn accept_assignment(
        &mut self,
        peer: PeerId,
        a: &shardswarm_proto::command::Assignment,
    ) -> Result<serde_json::Value, shardswarm_proto::ErrorBody> {
        use shardswarm_proto::{ErrorBody, ErrorCode};
        let Some(n) = self.node() else {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "the server assigns shards; it takes none",
            ));
        };
        if n.server != Some(peer) {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "only the rendezvous server assigns shards",
            ));
        }
        if !matches!(n.cfg.shards, crate::config::ShardPolicy::Auto) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "this node pins its shards (--shards)",
            ));
        }
        let Some(catalog) = n.catalog.clone().filter(|c| c.model_id == a.model_id) else {
            return Err(ErrorBody::new(
                ErrorCode::NotReady,
                "no catalog for that model",
            ));
        };
        info!(target: msglog::SYNC, "[TORRENT_SYNC] 🧩 The server assigned shards {:?}", a.shards);
        n.assigned = Some(a.shards.clone());
        self.decide(&catalog);
        Ok(serde_json::json!({}))
    }

    /// Opens a verified shard as GGUF (header and tensor table) and marks it loaded.
    fn load_shard(&mut self, index: u32, path: &std::path::Path) {
        match shardswarm_model::gguf::GgufFile::open(path) {
            Ok(_) => {
                let Some(n) = self.node() else { return };
                if !n.loaded.contains(&index) {
                    n.loaded.push(index);
                    n.loaded.sort_unstable();
                }
                info!(target: msglog::SWARM, "[SWARM] 📦 Loaded shard {index}");
                self.emit(Event::ShardLoaded { index });
            }
            Err(e) => {
                warn!(target: msglog::SWARM, shard = index, error = %e, "cannot open the shard as GGUF")
            }
        }
    }

    /// Tells the server which shards this node has loaded and verified.
    fn report_loaded(&mut self) {
        let Some(n) = self.node() else { return };
        let (Some(server), Some(catalog)) = (n.server, n.catalog.as_ref()) else {
            return;
        };
        let params = shardswarm_proto::command::ShardLoadedParams {
            model_id: catalog.model_id.clone(),
            loaded: n.loaded.clone(),
            verified: n.present.clone(),
        };
        if !self.swarm.is_connected(&server) {
            return;
        }
        let Some(n) = self.node() else { return };
        // One report in flight at a time: each carries the whole list, so two on separate
        // streams could arrive out of order and an older list overwrite a newer one.
        if n.report_in_flight {
            n.report_dirty = true;
            return;
        }
        n.report_in_flight = true;
        n.report_dirty = false;
        self.send_command(server, Command::ShardLoaded(params), Pending::Report, false);
    }

    /// The server answered (or failed to answer) a SHARD_LOADED: send the latest list if it
    /// changed meanwhile or the report was lost.
    pub(crate) fn on_report_done(&mut self, delivered: bool) {
        let Some(n) = self.node() else { return };
        n.report_in_flight = false;
        if n.report_dirty || !delivered {
            self.report_loaded();
        }
    }

    /// Looks up providers of every shard still being fetched (for when the server is gone).
    pub(crate) fn lookup_missing(&mut self) {
        let Some(n) = self.node() else { return };
        let hashes = n.fetching.clone();
        for ih in hashes {
            self.find_providers(ih);
        }
    }

    /// Asks the DHT who provides `info_hash` (answers are dialed).
    pub(crate) fn find_providers(&mut self, info_hash: shardswarm_proto::InfoHash) {
        let key = libp2p::kad::RecordKey::new(&info_hash.as_bytes());
        self.swarm.behaviour_mut().kad.get_providers(key);
    }

    /// Reacts to the transfer service.
    pub(crate) fn on_transfer_event(&mut self, ev: TransferEvent) {
        match ev {
            TransferEvent::Providing { info_hash } => {
                let key = libp2p::kad::RecordKey::new(&info_hash.as_bytes());
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    warn!(target: "shardswarm::dht", error = %e, "cannot provide");
                }
            }
            TransferEvent::Complete { entry, path } => {
                let index = entry.shard_index;
                if let Some(n) = self.node() {
                    n.fetching.retain(|ih| *ih != entry.info_hash);
                    if !n.present.contains(&index) {
                        n.present.push(index);
                        n.present.sort_unstable();
                    }
                }
                self.emit(Event::ShardVerified { index });
                self.load_shard(index, &path);
                self.report_loaded();
            }
            TransferEvent::Failed { entry, reason } => {
                warn!(target: msglog::SYNC, shard = entry.shard_index, reason, "[TORRENT_SYNC] ✗ download failed");
            }
            TransferEvent::Banned { peer, reason } => {
                warn!(target: "shardswarm::pieces", %peer, reason, "peer banned");
                self.emit(Event::PeerBanned { peer });
            }
            TransferEvent::Progress(p) => {
                if let Some(n) = self.node() {
                    n.downloading = p;
                }
            }
        }
    }

    fn register(&mut self, server: PeerId) {
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
                    if let Err(e) = self
                        .swarm
                        .dial(DialOpts::peer_id(peer).addresses(addrs).build())
                    {
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
