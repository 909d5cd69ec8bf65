//! The event loop's listen addresses: published (to `server.addrs`, the HTTP gateway and the
//! handle) once every listener reported one, or after a grace period for listeners that never
//! will (an address family the host lacks).

use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use tracing::{info, warn};

use crate::event_loop::{EventLoop, RoleState};

/// How long after the first listen address the others may take to come up.
const LISTEN_GRACE: Duration = Duration::from_secs(3);

impl EventLoop {
    pub(crate) fn on_new_listen_addr(&mut self, listener_id: ListenerId, address: Multiaddr) {
        let full = address
            .clone()
            .with_p2p(self.local())
            .unwrap_or(address.clone());
        info!(target: "shardswarm::peer", "listening on {full}");
        self.swarm.add_external_address(address.clone());
        self.listen_addrs.push(full);
        self.listen_deadline
            .get_or_insert_with(|| Instant::now() + LISTEN_GRACE);
        self.listener_settled(listener_id);
    }

    pub(crate) fn listener_settled(&mut self, listener_id: ListenerId) {
        self.listeners_pending.remove(&listener_id);
        self.publish_listen_addrs();
    }

    /// Called every tick: past the grace period, listeners that never reported an address are
    /// given up on, so `server.addrs`, the HTTP gateway and everything waiting on the listen
    /// addresses go on with the ones that work.
    pub(crate) fn listen_grace_check(&mut self) {
        if self.listeners_pending.is_empty()
            || self.listen_deadline.is_none_or(|d| Instant::now() < d)
        {
            return;
        }
        warn!(target: "shardswarm::peer", silent = self.listeners_pending.len(),
            "some listen addresses never came up (an address family this host lacks?); going on with the others");
        self.listeners_pending.clear();
        self.publish_listen_addrs();
    }

    fn publish_listen_addrs(&mut self) {
        if self.listeners_pending.is_empty() && !self.listen_addrs.is_empty() {
            let mut addrs = self.listen_addrs.clone();
            addrs.sort_by_key(|a| !a.iter().any(|p| matches!(p, Protocol::QuicV1)));
            if let RoleState::Server(_) = self.role {
                self.write_server_addrs(&addrs);
            }
            self.listen_tx.send_replace(Some(addrs));
        }
    }
}
