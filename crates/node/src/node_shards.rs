//! A node's shards: what it wants (`--shards`, or the server's assignment under `auto`), what it
//! seeds, fetches and loads, and what it reports to the server (SHARD_LOADED, one at a time).

use libp2p::PeerId;
use shardswarm_proto::{Command, SyncTorrentsResponse};
use tracing::{info, warn};

use crate::event_loop::{EventLoop, Pending};
use crate::handle::Event;
use crate::msglog;
use crate::transfer::{TransferCmd, TransferEvent};

impl EventLoop {
    /// Compares the catalog with the disk: seeds and loads what is there, fetches what is not.
    pub(crate) fn decide(&mut self, catalog: &SyncTorrentsResponse) {
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
    pub(crate) fn auto_capacity(&mut self, catalog: &SyncTorrentsResponse) -> u32 {
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
    /// Loads a verified shard's layers on the blocking pool; [`Self::on_stage_loaded`] takes
    /// the result. A shard counts as loaded only once its layers are in memory and served.
    fn load_shard(&mut self, index: u32, path: &std::path::Path) {
        let already = self.node().is_none_or(|n| n.loaded.contains(&index));
        if already || !self.loading.insert(index) {
            return;
        }
        let tx = self.stage_tx.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let result = shardswarm_model::Stage::load(&path, &shardswarm_model::Device::Cpu)
                .map(std::sync::Arc::new)
                .map_err(|e| e.to_string());
            let _ = tx.blocking_send(crate::event_loop::StageLoaded { index, result });
        });
    }

    /// A stage load finished: register it with the stage server and report it.
    pub(crate) fn on_stage_loaded(&mut self, done: crate::event_loop::StageLoaded) {
        let index = done.index;
        self.loading.remove(&index);
        match done.result {
            Ok(stage) => {
                let layers = stage.layers();
                self.stages.insert(index, stage);
                let Some(n) = self.node() else { return };
                if !n.loaded.contains(&index) {
                    n.loaded.push(index);
                    n.loaded.sort_unstable();
                }
                let count = n.loaded.len() as i64;
                self.metrics.shards_loaded.set(count);
                info!(target: msglog::SWARM, "[SWARM] 📦 Loaded shard {index} (layers {}..{})", layers.start, layers.end);
                self.emit(Event::ShardLoaded { index });
                self.report_loaded();
            }
            Err(e) => {
                warn!(target: msglog::SWARM, shard = index, error = %e, "cannot load the shard's layers")
            }
        }
    }

    /// Answers a route-status request: the server's own view; a node asks the server (its
    /// own view lacks the other nodes' shards) and falls back to its own view.
    pub(crate) fn route_status(
        &mut self,
        reply: tokio::sync::oneshot::Sender<shardswarm_proto::SwarmStatus>,
    ) {
        let server = match &self.role {
            crate::event_loop::RoleState::Node(n) => n.server,
            crate::event_loop::RoleState::Server(_) => None,
        };
        match server {
            Some(server) if self.swarm.is_connected(&server) => {
                self.send_command(
                    server,
                    Command::SwarmStatus,
                    Pending::RouteStatus(reply),
                    false,
                );
            }
            _ => {
                let _ = reply.send(self.swarm_status());
            }
        }
    }

    /// A local file with the model's metadata: the server's first shard, or a node's first
    /// verified shard.
    pub(crate) fn model_file(&mut self) -> Option<crate::handle::ModelFile> {
        match &mut self.role {
            crate::event_loop::RoleState::Server(s) => {
                let c = &s.catalog;
                let f = c.files.first()?;
                Some(crate::handle::ModelFile {
                    path: s.shards_dir.join(&f.filename),
                    model: c.model.clone(),
                    model_id: c.model_id.clone(),
                })
            }
            crate::event_loop::RoleState::Node(n) => {
                let c = n.catalog.as_ref()?;
                let f = c
                    .files
                    .iter()
                    .find(|f| n.present.contains(&f.shard_index))?;
                let dir = n.store.model_dir(&c.model_id).ok()?;
                Some(crate::handle::ModelFile {
                    path: dir.join(&f.filename),
                    model: c.model.clone(),
                    model_id: c.model_id.clone(),
                })
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
                    // Until the next progress report the status would list it as downloading too.
                    n.downloading.retain(|d| d.index != index);
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
                self.metrics.banned();
                self.emit(Event::PeerBanned { peer });
            }
            TransferEvent::Progress(p) => {
                if let Some(n) = self.node() {
                    n.downloading = p;
                }
            }
        }
    }
}
