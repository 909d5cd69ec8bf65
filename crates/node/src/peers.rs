//! Who this peer is connected to and how: the open connections of every peer with their remote
//! addresses (hence their transport), for the dashboard's node list (`Handle::peers`) and the
//! `shardswarm_connected_peers_by_transport` gauge.
//!
//! Invariant: [`Connections`] holds exactly the connections libp2p reported established and
//! not yet closed, per peer in the order they were established; a peer with no open
//! connection has no entry. The transport "in use" is the one of the oldest open connection.

use std::collections::HashMap;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use shardswarm_proto::{ConnectedPeer, Transport};

use crate::event_loop::EventLoop;
use crate::metrics::TransportLabels;

/// The transport a connection to `addr` runs over: relayed when it goes through a
/// `/p2p-circuit`, else QUIC or TCP by its protocol stack.
pub fn transport_of(addr: &Multiaddr) -> Transport {
    let mut quic = false;
    let mut tcp = false;
    for p in addr.iter() {
        match p {
            Protocol::P2pCircuit => return Transport::Relayed,
            Protocol::QuicV1 | Protocol::Quic => quic = true,
            Protocol::Tcp(_) => tcp = true,
            _ => {}
        }
    }
    if quic {
        Transport::Quic
    } else if tcp {
        Transport::Tcp
    } else {
        Transport::Other
    }
}

/// The open connections of every connected peer, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    by_peer: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
}

impl Connections {
    /// A connection to `peer` is established.
    pub(crate) fn up(&mut self, peer: PeerId, id: ConnectionId, remote: Multiaddr) {
        let conns = self.by_peer.entry(peer).or_default();
        if !conns.iter().any(|(c, _)| *c == id) {
            conns.push((id, remote));
        }
    }

    /// A connection to `peer` is closed.
    pub(crate) fn down(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(conns) = self.by_peer.get_mut(&peer) {
            conns.retain(|(c, _)| *c != id);
            if conns.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// The transport in use with `peer` (its oldest open connection's).
    pub(crate) fn transport(&self, peer: &PeerId) -> Option<Transport> {
        self.by_peer
            .get(peer)
            .and_then(|c| c.first())
            .map(|(_, addr)| transport_of(addr))
    }

    /// Connected peers per transport in use.
    pub(crate) fn counts(&self) -> HashMap<Transport, usize> {
        let mut counts = HashMap::new();
        for peer in self.by_peer.keys() {
            if let Some(t) = self.transport(peer) {
                *counts.entry(t).or_default() += 1;
            }
        }
        counts
    }

    /// The remote addresses of `peer`'s open connections, oldest first.
    pub(crate) fn remotes(&self, peer: &PeerId) -> Vec<String> {
        self.by_peer
            .get(peer)
            .map(|c| c.iter().map(|(_, a)| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// The connected peers.
    pub(crate) fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.by_peer.keys()
    }
}

impl EventLoop {
    /// Records an established connection and updates the connection gauges.
    pub(crate) fn connection_up(&mut self, peer: PeerId, id: ConnectionId, remote: Multiaddr) {
        self.connections.up(peer, id, remote);
        self.update_connection_gauges();
    }

    /// Records a closed connection and updates the connection gauges.
    pub(crate) fn connection_down(&mut self, peer: PeerId, id: ConnectionId) {
        self.connections.down(peer, id);
        self.update_connection_gauges();
    }

    fn update_connection_gauges(&self) {
        self.metrics
            .connected_peers
            .set(self.swarm.connected_peers().count() as i64);
        let counts = self.connections.counts();
        for t in Transport::ALL {
            self.metrics
                .by_transport
                .get_or_create(&TransportLabels {
                    transport: t.as_str(),
                })
                .set(counts.get(&t).copied().unwrap_or(0) as i64);
        }
    }

    /// Every connected peer: role, transport, addresses and ping RTT, sorted by peer ID.
    pub(crate) fn connected_peers(&self) -> Vec<ConnectedPeer> {
        let rtts = self.rtts.read().ok();
        let mut out: Vec<ConnectedPeer> = self
            .connections
            .peers()
            .map(|peer| {
                let info = self.peers.get(peer);
                ConnectedPeer {
                    peer_id: peer.to_string(),
                    role: info.and_then(|i| i.role),
                    transport: self.connections.transport(peer).unwrap_or(Transport::Other),
                    connections: self.connections.remotes(peer),
                    listen_addresses: info
                        .map(|i| i.addrs.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    rtt_ms: rtts
                        .as_ref()
                        .and_then(|r| r.get(peer))
                        .map(|d| d.as_secs_f64() * 1e3),
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn transport_is_read_from_the_remote_address() {
        assert_eq!(
            transport_of(&ma("/ip4/127.0.0.1/udp/4001/quic-v1")),
            Transport::Quic
        );
        assert_eq!(
            transport_of(&ma(
                "/ip6/::1/tcp/4001/p2p/12D3KooWAzU4uWcU7G6Ux5L6iBSk5VjT3RS7BhFgxyfmfFKzVbfe"
            )),
            Transport::Tcp
        );
        // A relayed connection counts as relayed even when the hop to the relay is QUIC.
        assert_eq!(
            transport_of(&ma(
                "/ip4/1.2.3.4/udp/4001/quic-v1/p2p/12D3KooWAzU4uWcU7G6Ux5L6iBSk5VjT3RS7BhFgxyfmfFKzVbfe/p2p-circuit"
            )),
            Transport::Relayed
        );
        assert_eq!(transport_of(&ma("/memory/5")), Transport::Other);
    }

    #[test]
    fn the_oldest_open_connection_names_the_transport() {
        let mut c = Connections::default();
        let peer = PeerId::random();
        let (a, b) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        c.up(peer, a, ma("/ip4/127.0.0.1/udp/1/quic-v1"));
        c.up(peer, b, ma("/ip4/127.0.0.1/tcp/1"));
        assert_eq!(c.transport(&peer), Some(Transport::Quic));
        assert_eq!(c.counts().get(&Transport::Quic), Some(&1));
        c.down(peer, a);
        assert_eq!(c.transport(&peer), Some(Transport::Tcp));
        assert_eq!(c.remotes(&peer), vec!["/ip4/127.0.0.1/tcp/1".to_owned()]);
        c.down(peer, b);
        assert_eq!(c.transport(&peer), None);
        assert!(c.counts().is_empty());
        assert_eq!(c.peers().count(), 0);
    }
}
