//! The rendezvous server's side of the loop: the catalog (rescanned for changes, announced with
//! CATALOG_CHANGED), `server.addrs`, and the node statuses it polls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use shardswarm_proto::command::{CatalogChangedParams, ShardLoadedParams};
use shardswarm_proto::status::Role;
use shardswarm_proto::{Command, NodeStatus};
use shardswarm_proto::{ErrorBody, ErrorCode};
use tracing::{debug, info, warn};

use crate::catalog::{self, Catalog};
use crate::event_loop::{EventLoop, Pending, RoleState};
use crate::handle::Event;
use crate::hash_cache::{HashCache, write_atomic};
use crate::msglog;
use crate::transfer::TransferCmd;

/// How often connected nodes are asked for their status.
const NODE_POLL: Duration = Duration::from_secs(5);
/// How often while a node reported a download in progress (live progress for the dashboard
/// and `status --watch`).
const NODE_POLL_BUSY: Duration = Duration::from_secs(1);

pub(crate) struct ServerState {
    pub(crate) shards_dir: PathBuf,
    pub(crate) cache: HashCache,
    pub(crate) catalog: Catalog,
    pub(crate) rescan_interval: Duration,
    pub(crate) next_rescan: Instant,
    pub(crate) next_poll: Instant,
    /// Whether the swarm was ready at the last check (to log flips once).
    pub(crate) ready: bool,
    /// What each `--shards auto` node was assigned.
    pub(crate) assignments: std::collections::HashMap<PeerId, crate::server_assign::Assigned>,
}

impl EventLoop {
    /// Offers every catalog file to the swarm.
    pub(crate) fn seed_catalog(&mut self) {
        let Some(s) = self.server() else { return };
        let cmds: Vec<TransferCmd> = s
            .catalog
            .files
            .iter()
            .zip(&s.catalog.metainfo)
            .map(|(entry, meta)| TransferCmd::Seed {
                entry: entry.clone(),
                path: s.shards_dir.join(&entry.filename),
                meta: meta.clone(),
            })
            .collect();
        for cmd in cmds {
            self.transfer.send(cmd);
        }
    }

    /// Recomputes readiness and logs when it flips.
    pub(crate) fn check_ready(&mut self) {
        let status = self.swarm_status();
        let Some(s) = self.server() else { return };
        if status.swarm_ready == s.ready {
            return;
        }
        s.ready = status.swarm_ready;
        if status.swarm_ready {
            info!(target: msglog::SWARM, "[SWARM] ✅ Swarm ready: all {} shards loaded", status.total_shards);
        } else {
            warn!(target: msglog::SWARM, "[SWARM] ⚠ Swarm not ready: no live node has shard(s) {:?} loaded", status.missing);
        }
        self.emit(Event::SwarmReady {
            ready: status.swarm_ready,
        });
    }

    /// SHARD_LOADED from `peer`: its loaded/verified sets replace what the server knew.
    pub(crate) fn answer_shard_loaded(
        &mut self,
        peer: PeerId,
        p: &ShardLoadedParams,
    ) -> Result<serde_json::Value, ErrorBody> {
        let s = self.server_for("SHARD_LOADED", &p.model_id)?;
        let total = s.catalog.total_shards();
        if let Some(bad) = p.loaded.iter().chain(&p.verified).find(|&&i| i >= total) {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!("no shard {bad} in a catalog of {total}"),
            ));
        }
        let Some(info) = self.peers.get_mut(&peer) else {
            return Err(ErrorBody::new(ErrorCode::NotReady, "unknown peer"));
        };
        let status = info.status.get_or_insert_with(|| NodeStatus {
            peer_id: peer.to_string(),
            role: Role::Node,
            ..Default::default()
        });
        status.loaded = p.loaded.clone();
        status.verified = p.verified.clone();
        info!(target: msglog::SWARM, %peer, loaded = ?p.loaded, "[SWARM] node reports loaded shards");
        self.check_ready();
        Ok(serde_json::json!({}))
    }

    /// The server state, for a command that only the server takes and that names its model;
    /// the error to answer otherwise.
    pub(crate) fn server_for(
        &self,
        command: &str,
        model_id: &str,
    ) -> Result<&ServerState, ErrorBody> {
        let RoleState::Server(s) = &self.role else {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("{command} goes to the server"),
            ));
        };
        if model_id != s.catalog.model_id {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                format!(
                    "model {model_id:?} is not the catalog's {:?}",
                    s.catalog.model_id
                ),
            ));
        }
        Ok(s)
    }

    fn server(&mut self) -> Option<&mut ServerState> {
        match &mut self.role {
            RoleState::Server(s) => Some(s),
            RoleState::Node(_) => None,
        }
    }

    pub(crate) fn server_tick(&mut self) {
        let now = Instant::now();
        let Some(s) = self.server() else { return };
        let rescan = now >= s.next_rescan;
        let poll = now >= s.next_poll;
        if rescan {
            s.next_rescan = now + s.rescan_interval;
            self.rescan_catalog();
        }
        if poll {
            let busy = self.peers.values().any(|p| {
                p.status
                    .as_ref()
                    .is_some_and(|st| !st.downloading.is_empty())
            });
            if let Some(s) = self.server() {
                s.next_poll = now + if busy { NODE_POLL_BUSY } else { NODE_POLL };
            }
            let nodes: Vec<PeerId> = self
                .peers
                .iter()
                .filter(|(_, p)| p.role == Some(Role::Node))
                .map(|(id, _)| *id)
                .collect();
            for peer in nodes {
                self.send_command(peer, Command::GetNodeStatus, Pending::NodeStatus, false);
            }
        }
    }

    /// Rebuilds the catalog when the shards directory changed, and tells every node.
    fn rescan_catalog(&mut self) {
        let Some(s) = self.server() else { return };
        match catalog::fingerprint(&s.shards_dir) {
            Ok(fp) if fp == s.catalog.fingerprint => return,
            Ok(_) => {}
            Err(e) => {
                warn!(target: "shardswarm::catalog", error = %e, "cannot rescan the shards directory");
                return;
            }
        }
        let dir = s.shards_dir.clone();
        let fresh = match Catalog::load(&dir, &mut s.cache) {
            Ok(c) => c,
            Err(e) => {
                warn!(target: "shardswarm::catalog", error = %e, "shards directory changed but is not servable; keeping the old catalog");
                return;
            }
        };
        let changed = fresh.files != s.catalog.files || fresh.model_id != s.catalog.model_id;
        s.catalog = fresh;
        if !changed {
            return;
        }
        self.seed_catalog();
        let Some(s) = self.server() else { return };
        let params = CatalogChangedParams {
            model_id: s.catalog.model_id.clone(),
            total_shards: s.catalog.total_shards(),
        };
        self.metrics
            .catalog_shards
            .set(i64::from(params.total_shards));
        info!(target: "shardswarm::catalog", model_id = params.model_id, total_shards = params.total_shards, "catalog changed; telling the nodes");
        let nodes: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.role == Some(Role::Node))
            .map(|(id, _)| *id)
            .collect();
        for peer in nodes {
            self.send_command(
                peer,
                Command::CatalogChanged(params.clone()),
                Pending::Notify,
                true,
            );
        }
    }

    pub(crate) fn write_server_addrs(&self, addrs: &[Multiaddr]) {
        let mut text = String::new();
        for a in addrs {
            text.push_str(&a.to_string());
            text.push('\n');
        }
        let path = self.data_dir.join("server.addrs");
        if let Err(e) = write_atomic(&path, text.as_bytes()) {
            warn!(target: "shardswarm::peer", path = %path.display(), error = %e, "cannot write server.addrs");
        }
    }

    pub(crate) fn on_node_status_response(&mut self, peer: PeerId, bytes: &[u8]) {
        let status = shardswarm_proto::codec::decode_response(bytes)
            .map_err(|e| e.to_string())
            .and_then(|r| r.payload::<NodeStatus>().map_err(|e| e.to_string()));
        match status {
            Ok(mut status) if status.peer_id == peer.to_string() => {
                status.role = Role::Node;
                if let Some(p) = self.peers.get_mut(&peer) {
                    // SHARD_LOADED is the authority on loaded/verified: a poll answer may have
                    // been computed before the node's latest report and arrive after it.
                    if let Some(old) = &p.status {
                        status.loaded = old.loaded.clone();
                        status.verified = old.verified.clone();
                    }
                    p.status = Some(status);
                }
                self.check_ready();
            }
            Ok(status) => {
                warn!(target: "shardswarm::cmd", %peer, claimed = status.peer_id, "node status claims another peer id; ignored");
            }
            Err(e) => debug!(target: "shardswarm::cmd", %peer, error = e, "bad node status"),
        }
    }
}
