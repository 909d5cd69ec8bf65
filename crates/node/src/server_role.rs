//! The rendezvous server's side of the loop: the catalog (rescanned for changes, announced with
//! CATALOG_CHANGED), `server.addrs`, and the node statuses it polls.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use shardswarm_proto::command::CatalogChangedParams;
use shardswarm_proto::status::Role;
use shardswarm_proto::{Command, NodeStatus};
use tracing::{debug, info, warn};

use crate::catalog::{self, Catalog};
use crate::event_loop::{EventLoop, Pending, RoleState};
use crate::hash_cache::{HashCache, write_atomic};

/// How often connected nodes are asked for their status.
const NODE_POLL: Duration = Duration::from_secs(5);

pub(crate) struct ServerState {
    pub(crate) shards_dir: PathBuf,
    pub(crate) cache: HashCache,
    pub(crate) catalog: Catalog,
    pub(crate) rescan_interval: Duration,
    pub(crate) next_rescan: Instant,
    pub(crate) next_poll: Instant,
}

impl EventLoop {
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
            if let Some(s) = self.server() {
                s.next_poll = now + NODE_POLL;
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
                    p.status = Some(status);
                }
            }
            Ok(status) => {
                warn!(target: "shardswarm::cmd", %peer, claimed = status.peer_id, "node status claims another peer id; ignored");
            }
            Err(e) => debug!(target: "shardswarm::cmd", %peer, error = e, "bad node status"),
        }
    }
}
