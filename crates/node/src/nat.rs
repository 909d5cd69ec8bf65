//! NAT traversal: the server is a circuit relay (relay v2) and an AutoNAT server; a node learns
//! with AutoNAT whether the server can dial it back, reserves a relay slot at the server when it
//! cannot, and upgrades relayed connections to direct ones by hole punching (DCUtR).
//!
//! - **Reachability.** AutoNAT v1 on every peer (a node probes, everyone answers probes). A node
//!   whose dial-backs fail is *private*: it listens on `<server addr>/p2p/<server>/p2p-circuit`,
//!   which reserves a slot; the circuit address then is one of its listen (and external)
//!   addresses, so identify, the DHT, rendezvous (registered again) and its status advertise it.
//!   A node that turns *public* drops its reservation. A lost reservation is retried.
//! - **Paths.** Every connection is direct or relayed (its address has a `/p2p-circuit`). A peer
//!   whose open connections are all relayed is marked relayed in [`PathCaps`]; piece streams to
//!   it run under the relayed cap (`--relayed-limit`). When a direct connection to a peer has
//!   been up for [`DIRECT_GRACE`] (DCUtR's or any other), its relayed connections are closed,
//!   so new piece streams — which libp2p-stream opens on any connection — take the direct one.
//! - **Relay limits** (server): see the `RELAY_*` constants; libp2p's defaults (128 KiB and
//!   2 minutes per circuit) would cut a shard transfer short.
//!
//! Invariants: `conns` holds exactly the connections libp2p reported established and not yet
//! closed; only nodes reserve; at most one relay listener exists at a time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, autonat, dcutr, relay};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::behaviour::BehaviourEvent;
use crate::event_loop::EventLoop;
use crate::transfer::PathCaps;
use crate::transfer::paths::PathBytes;
use crate::transfer::rate::Rate;

mod config;

use config::is_quic;
pub use config::{
    RELAY_MAX_CIRCUIT_BYTES, RELAY_MAX_CIRCUIT_DURATION, RELAY_MAX_CIRCUITS,
    RELAY_MAX_CIRCUITS_PER_PEER, RELAY_MAX_RESERVATIONS, RELAY_MAX_RESERVATIONS_PER_PEER,
};
pub(crate) use config::{autonat_config, circuit_via, relay_server, shown_addr};

const TARGET: &str = "shardswarm::nat";

/// How long a direct connection must be up before the relayed ones to the same peer are
/// closed (lets DCUtR finish on both sides).
pub const DIRECT_GRACE: Duration = Duration::from_secs(2);
/// Wait before a failed or lost reservation is tried again.
const RESERVE_RETRY: Duration = Duration::from_secs(10);

/// What AutoNAT last said about this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    /// No verdict yet.
    #[default]
    Unknown,
    /// The server could dial us back.
    Public,
    /// It could not: behind NAT or a firewall.
    Private,
}

impl Reachability {
    /// `unknown`, `public` or `private`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Public => "public",
            Reachability::Private => "private",
        }
    }
}

/// Labels of the NAT metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NatLabels {
    /// The reachability (`shardswarm_nat_reachability`) or the outcome of a hole punch
    /// (`shardswarm_hole_punches_total`: `direct` or `failed`).
    pub status: &'static str,
}

#[derive(Debug)]
struct Conn {
    relayed: bool,
    remote: Multiaddr,
    since: Instant,
    closing: bool,
}

/// The NAT side of the event loop's state.
#[derive(Debug)]
pub(crate) struct NatState {
    reachability: Reachability,
    relay_listener: Option<ListenerId>,
    /// The circuit address of the relay listener.
    relay_addr: Option<Multiaddr>,
    reserve_after: Instant,
    /// When the server may be dialed over QUIC again (see `ensure_quic_to_server`).
    quic_dial_after: Instant,
    /// A circuit address appeared: register it at the rendezvous on the next tick (once the
    /// event loop made it an external address).
    reregister: bool,
    conns: HashMap<PeerId, HashMap<ConnectionId, Conn>>,
    /// Shared with the piece streams.
    pub(crate) paths: PathCaps,
    relayed_limit: Option<Rate>,
    reach_gauge: Family<NatLabels, Gauge>,
    hole_punches: Family<NatLabels, Counter>,
}

impl NatState {
    /// Registers the NAT metrics in `registry`; relayed piece streams get `relayed_limit`.
    pub(crate) fn new(registry: &mut Registry, relayed_limit: Option<Rate>) -> Self {
        let reach_gauge = Family::<NatLabels, Gauge>::default();
        registry.register(
            "shardswarm_nat_reachability",
            "1 for what AutoNAT last said: public, private or unknown",
            reach_gauge.clone(),
        );
        let hole_punches = Family::<NatLabels, Counter>::default();
        registry.register(
            "shardswarm_hole_punches",
            "Hole punches (DCUtR) by outcome: direct or failed",
            hole_punches.clone(),
        );
        let bytes = PathBytes::default();
        registry.register(
            "shardswarm_piece_path_bytes",
            "Shard payload bytes moved over piece streams, by direction and path (direct or relayed)",
            bytes.clone(),
        );
        let state = NatState {
            reachability: Reachability::Unknown,
            relay_listener: None,
            relay_addr: None,
            reserve_after: Instant::now(),
            quic_dial_after: Instant::now(),
            reregister: false,
            conns: HashMap::new(),
            paths: PathCaps::new(relayed_limit, bytes),
            relayed_limit,
            reach_gauge,
            hole_punches,
        };
        state.set_gauge();
        state
    }

    fn set_gauge(&self) {
        for r in [
            Reachability::Unknown,
            Reachability::Public,
            Reachability::Private,
        ] {
            self.reach_gauge
                .get_or_create(&NatLabels { status: r.as_str() })
                .set(i64::from(r == self.reachability));
        }
    }

    /// Marks `peer` relayed in the shared table iff all its open connections are relayed.
    fn update_path(&self, peer: PeerId) {
        let relayed = self
            .conns
            .get(&peer)
            .is_some_and(|c| !c.is_empty() && c.values().all(|c| c.relayed));
        self.paths.set_relayed(peer, relayed);
    }

    fn limit_text(&self) -> String {
        self.relayed_limit
            .map(|Rate(r)| format!("{r} B/s"))
            .unwrap_or_else(|| "no cap".into())
    }
}

impl EventLoop {
    /// Bookkeeping of connections and of the relay listener; sees every swarm event first.
    pub(crate) fn nat_observe(&mut self, event: &SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let conn = Conn {
                    relayed: endpoint.is_relayed(),
                    remote: shown_addr(endpoint),
                    since: Instant::now(),
                    closing: false,
                };
                if conn.relayed {
                    info!(target: TARGET, peer = %peer_id, addr = %conn.remote, "[NAT] relayed connection up");
                }
                self.nat
                    .conns
                    .entry(*peer_id)
                    .or_default()
                    .insert(*connection_id, conn);
                self.nat.update_path(*peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if let Some(c) = self.nat.conns.get_mut(peer_id) {
                    c.remove(connection_id);
                    if c.is_empty() {
                        self.nat.conns.remove(peer_id);
                        self.nat.paths.forget(peer_id);
                    }
                }
                self.nat.update_path(*peer_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } if self.nat.relay_listener == Some(*listener_id) => {
                warn!(target: TARGET, reason = ?reason.as_ref().err(), "[NAT] relay reservation lost; will reserve again");
                self.nat.relay_listener = None;
                self.nat.relay_addr = None;
                self.nat.reserve_after = Instant::now() + RESERVE_RETRY;
                for a in addresses {
                    self.forget_listen_addr(a);
                }
            }
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } if self.nat.relay_listener == Some(*listener_id) => {
                self.forget_listen_addr(address);
            }
            SwarmEvent::NewListenAddr { listener_id, .. }
                if self.nat.relay_listener == Some(*listener_id) =>
            {
                self.nat.reregister = true;
            }
            _ => {}
        }
    }

    fn forget_listen_addr(&mut self, addr: &Multiaddr) {
        let local = self.local();
        let full = addr.clone().with_p2p(local).unwrap_or(addr.clone());
        self.listen_addrs.retain(|a| *a != full && a != addr);
        self.swarm.remove_external_address(addr);
    }

    /// The relay, AutoNAT and DCUtR events.
    pub(crate) fn on_nat_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Autonat(ev) => self.on_autonat(ev),
            BehaviourEvent::RelayClient(ev) => self.on_relay_client(ev),
            BehaviourEvent::RelayServer(ev) => {
                self.metrics.libp2p.record(&ev);
                on_relay_server(ev);
            }
            BehaviourEvent::Dcutr(ev) => {
                self.metrics.libp2p.record(&ev);
                self.on_dcutr(ev);
            }
            _ => {}
        }
    }

    fn on_autonat(&mut self, ev: autonat::Event) {
        let autonat::Event::StatusChanged { new, .. } = ev else {
            debug!(target: TARGET, ?ev, "autonat");
            return;
        };
        self.nat.reachability = match &new {
            autonat::NatStatus::Public(addr) => {
                info!(target: TARGET, %addr, "[NAT] 🌐 reachable from outside (AutoNAT: the dial-back succeeded)");
                if let Some(id) = self.nat.relay_listener.take() {
                    info!(target: TARGET, "[NAT] dropping the relay reservation");
                    self.swarm.remove_listener(id);
                }
                Reachability::Public
            }
            autonat::NatStatus::Private => {
                info!(target: TARGET, "[NAT] 🔒 not reachable from outside (AutoNAT: the dial-backs failed); reserving a relay slot");
                Reachability::Private
            }
            autonat::NatStatus::Unknown => Reachability::Unknown,
        };
        self.nat.set_gauge();
        self.nat_tick();
    }

    fn on_relay_client(&mut self, ev: relay::client::Event) {
        match ev {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                limit,
            } => {
                if renewal {
                    debug!(target: TARGET, relay = %relay_peer_id, "relay reservation renewed");
                    return;
                }
                let addr = self
                    .nat
                    .relay_addr
                    .clone()
                    .and_then(|a| a.with_p2p(self.local()).ok());
                info!(target: TARGET, relay = %relay_peer_id, addr = ?addr.map(|a| a.to_string()),
                    circuit_bytes = ?limit.and_then(|l| l.data_in_bytes()),
                    circuit_secs = ?limit.and_then(|l| l.duration()).map(|d| d.as_secs()),
                    "[NAT] ✅ relay slot reserved: reachable through the server");
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                debug!(target: TARGET, relay = %relay_peer_id, "outbound circuit");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                debug!(target: TARGET, peer = %src_peer_id, "inbound circuit");
            }
        }
    }

    fn on_dcutr(&mut self, ev: dcutr::Event) {
        let peer = ev.remote_peer_id;
        match ev.result {
            Ok(id) => {
                let addr = self
                    .nat
                    .conns
                    .get(&peer)
                    .and_then(|c| c.get(&id))
                    .map(|c| c.remote.to_string())
                    .unwrap_or_default();
                info!(target: TARGET, %peer, addr, "[NAT] ✅ hole punch succeeded: direct connection");
                self.nat
                    .hole_punches
                    .get_or_create(&NatLabels { status: "direct" })
                    .inc();
            }
            Err(e) => {
                warn!(target: TARGET, %peer, error = %e, limit = self.nat.limit_text(),
                    "[NAT] hole punch failed: pieces stay on the relayed connection, capped");
                self.nat
                    .hole_punches
                    .get_or_create(&NatLabels { status: "failed" })
                    .inc();
            }
        }
    }

    /// Once a second on nodes (and when AutoNAT changes its mind): close relayed connections
    /// that a direct one replaced, and reserve a relay slot when private and without one.
    pub(crate) fn nat_tick(&mut self) {
        let now = Instant::now();
        let mut to_close = Vec::new();
        for (peer, conns) in &mut self.nat.conns {
            let direct_since = conns.values().filter(|c| !c.relayed).map(|c| c.since).min();
            if direct_since.is_none_or(|t| now < t + DIRECT_GRACE) {
                continue;
            }
            for (id, c) in conns.iter_mut().filter(|(_, c)| c.relayed && !c.closing) {
                c.closing = true;
                to_close.push((*peer, *id));
            }
        }
        for (peer, id) in to_close {
            info!(target: TARGET, %peer, "[NAT] direct connection up: closing the relayed one");
            self.swarm.close_connection(id);
            self.nat.paths.relayed_closed(peer);
        }
        self.ensure_quic_to_server(now);
        self.try_reserve(now);
        // Rendezvous records carry the external addresses of the time of registration: register
        // again (which discovers at once), and discover once more shortly, when the other nodes
        // behind NAT will have registered their circuits too.
        if std::mem::take(&mut self.nat.reregister)
            && let Some(server) = self.node().and_then(|n| n.server)
        {
            self.register(server);
            self.discover_soon(Duration::from_secs(5));
        }
    }

    /// A private node also connects to the server over QUIC when its connection is TCP: the
    /// address the server observes on it is the node's UDP mapping in its NAT, which DCUtR
    /// needs as a candidate to punch a QUIC hole (a TCP hole alone fails on more NATs).
    fn ensure_quic_to_server(&mut self, now: Instant) {
        if self.nat.reachability != Reachability::Private || now < self.nat.quic_dial_after {
            return;
        }
        let Some(n) = self.node() else { return };
        let Some(server) = n.server else { return };
        let quic: Vec<Multiaddr> = n
            .cfg
            .server
            .iter()
            .filter(|a| is_quic(a))
            .cloned()
            .collect();
        let connected = self.nat.conns.get(&server);
        if quic.is_empty()
            || connected.is_none()
            || connected.is_some_and(|c| c.values().any(|c| !c.relayed && is_quic(&c.remote)))
        {
            return;
        }
        self.nat.quic_dial_after = now + 3 * RESERVE_RETRY;
        info!(target: TARGET, "[NAT] also connecting to the server over QUIC (a UDP address to punch holes with)");
        let opts = DialOpts::peer_id(server)
            .addresses(quic)
            .condition(PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            debug!(target: TARGET, error = %e, "QUIC dial to the server not started");
        }
    }

    fn try_reserve(&mut self, now: Instant) {
        if self.nat.reachability != Reachability::Private
            || self.nat.relay_listener.is_some()
            || now < self.nat.reserve_after
        {
            return;
        }
        let Some(server) = self.node().and_then(|n| n.server) else {
            return;
        };
        let Some(via) = self.nat.conns.get(&server).and_then(|c| {
            c.values()
                .filter(|c| !c.relayed)
                .min_by_key(|c| c.since)
                .map(|c| c.remote.clone())
        }) else {
            return;
        };
        let addr = circuit_via(&via, server);
        self.nat.reserve_after = now + RESERVE_RETRY;
        match self.swarm.listen_on(addr.clone()) {
            Ok(id) => {
                info!(target: TARGET, %addr, "[NAT] reserving a relay slot");
                self.nat.relay_listener = Some(id);
                self.nat.relay_addr = Some(addr);
            }
            Err(e) => {
                warn!(target: TARGET, %addr, error = %e, "[NAT] cannot reserve a relay slot");
            }
        }
    }
}

fn on_relay_server(ev: relay::Event) {
    match ev {
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed: false,
        } => {
            info!(target: TARGET, peer = %src_peer_id, "[NAT] relay: slot reserved for a node behind NAT");
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            info!(target: TARGET, src = %src_peer_id, dst = %dst_peer_id, "[NAT] relay: circuit opened");
        }
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            info!(target: TARGET, src = %src_peer_id, dst = %dst_peer_id, error = ?error.map(|e| e.to_string()), "[NAT] relay: circuit closed");
        }
        other => debug!(target: TARGET, ?other, "relay"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_relayed_only_while_all_its_connections_are() {
        let mut state = NatState::new(&mut Registry::default(), None);
        let peer = PeerId::random();
        let conn = |relayed| Conn {
            relayed,
            remote: "/ip4/10.0.0.1/tcp/1".parse().unwrap(),
            since: Instant::now(),
            closing: false,
        };
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        state.conns.entry(peer).or_default().insert(a, conn(true));
        state.update_path(peer);
        assert!(state.paths.is_relayed(&peer));
        state.conns.entry(peer).or_default().insert(b, conn(false));
        state.update_path(peer);
        assert!(!state.paths.is_relayed(&peer));
        state.conns.remove(&peer);
        state.update_path(peer);
        assert!(!state.paths.is_relayed(&peer));
    }
}
