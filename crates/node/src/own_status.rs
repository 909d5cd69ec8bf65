//! The status documents of the event loop's own peer: its [`NodeStatus`] and the swarm as it
//! sees it (built by the pure [`crate::status`]).

use shardswarm_proto::{NodeStatus, Role};

use crate::event_loop::{EventLoop, RoleState};

impl EventLoop {
    /// This peer's own status.
    pub(crate) fn node_status(&self) -> NodeStatus {
        let (role, verified, loaded, downloading) = match &self.role {
            RoleState::Server(s) => (
                Role::Server,
                s.catalog.files.iter().map(|f| f.shard_index).collect(),
                Vec::new(),
                Vec::new(),
            ),
            RoleState::Node(n) => (
                Role::Node,
                n.present.clone(),
                n.loaded.clone(),
                n.downloading.clone(),
            ),
        };
        NodeStatus {
            peer_id: self.local().to_string(),
            role,
            addresses: self.listen_addrs.iter().map(ToString::to_string).collect(),
            loaded,
            verified,
            downloading,
            bytes_up: self.metrics.uploaded_total(),
            bytes_down: self.metrics.downloaded_total(),
        }
    }

    /// The swarm as this peer sees it.
    pub(crate) fn swarm_status(&self) -> shardswarm_proto::SwarmStatus {
        let mut nodes = vec![self.node_status()];
        nodes.extend(self.peers.values().filter_map(|p| p.status.clone()));
        let (model, model_id, files) = match &self.role {
            RoleState::Server(s) => (
                s.catalog.model.as_str(),
                s.catalog.model_id.as_str(),
                &s.catalog.files[..],
            ),
            RoleState::Node(n) => match &n.catalog {
                Some(c) => (c.model.as_str(), c.model_id.as_str(), &c.files[..]),
                None => ("", "", &[][..]),
            },
        };
        let status = crate::status::swarm_status(model, model_id, files, nodes);
        self.metrics.swarm_ready.set(i64::from(status.swarm_ready));
        status
    }
}
