//! The composed libp2p behaviour shared by both roles.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::store::MemoryStore;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, identify, kad, memory_connection_limits,
    ping, relay, rendezvous,
};
use shardswarm_proto::status::Role;

use crate::codec::{CMD_PROTOCOL, CmdCodec};

/// Kademlia protocol name of shardswarm's DHT (kept apart from the public IPFS DHT).
pub(crate) const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shardswarm/kad/1.0.0");
/// identify protocol version string.
pub(crate) const IDENTIFY_PROTOCOL: &str = "/shardswarm/id/1.0.0";
/// The rendezvous namespace nodes register under.
pub const RENDEZVOUS_NAMESPACE: &str = "shardswarm";

/// The agent version a peer of `role` announces through identify.
pub fn agent_version(role: Role) -> String {
    let role = match role {
        Role::Server => "server",
        Role::Node => "node",
    };
    format!("shardswarm-{role}/{}", env!("CARGO_PKG_VERSION"))
}

/// The role a remote announced in its identify agent version, if it is one of ours.
pub(crate) fn role_of_agent(agent: &str) -> Option<Role> {
    let (name, _) = agent.split_once('/')?;
    match name {
        "shardswarm-server" => Some(Role::Server),
        "shardswarm-node" => Some(Role::Node),
        _ => None,
    }
}

/// Every protocol a shardswarm peer speaks.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Learns listen addresses and the role of peers.
    pub(crate) identify: identify::Behaviour,
    /// Liveness and round-trip times.
    pub(crate) ping: ping::Behaviour,
    /// The DHT: providers of info-hashes.
    pub(crate) kad: kad::Behaviour<MemoryStore>,
    /// Rendezvous server side (on the server).
    pub(crate) rendezvous_server: Toggle<rendezvous::server::Behaviour>,
    /// Rendezvous client side (on nodes).
    pub(crate) rendezvous_client: Toggle<rendezvous::client::Behaviour>,
    /// The JSON command protocol.
    pub(crate) cmd: request_response::Behaviour<CmdCodec>,
    /// Raw streams: the piece protocol.
    pub(crate) stream: libp2p_stream::Behaviour,
    /// Connections per peer, incoming and pending (see `peer_limits`).
    pub(crate) limits: connection_limits::Behaviour,
    /// No new connections while the process uses most of the machine's memory.
    pub(crate) memory: memory_connection_limits::Behaviour,
    /// Circuit relay v2, relay side (on the server), with the limits of `nat::relay_server`.
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// Circuit relay v2, client side (on nodes): reservations and relayed dials.
    pub(crate) relay_client: Toggle<relay::client::Behaviour>,
    /// AutoNAT v1: dial-backs for others everywhere; probes of our own reachability on nodes.
    pub(crate) autonat: autonat::Behaviour,
    /// Hole punching over a relayed connection (on nodes).
    pub(crate) dcutr: Toggle<dcutr::Behaviour>,
}

impl Behaviour {
    /// Builds the behaviour for `role`; a node brings the client half of its relay transport.
    pub(crate) fn new(
        key: &Keypair,
        role: Role,
        request_timeout: Duration,
        relay_client: Option<relay::client::Behaviour>,
    ) -> Self {
        let peer_id = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // Holders re-announce every 10 minutes; a record of a peer that left stops being handed
        // out after 30 (instead of libp2p's 48 h default).
        kad_config.set_provider_publication_interval(Some(Duration::from_secs(10 * 60)));
        kad_config.set_provider_record_ttl(Some(Duration::from_secs(30 * 60)));
        let mut kad = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);
        // On loopback and LANs no external address gets confirmed, and a client-mode DHT answers
        // nobody (FIELD-NOTES): every shardswarm peer serves the DHT.
        kad.set_mode(Some(kad::Mode::Server));
        let (server, client) = match role {
            Role::Server => (
                Some(rendezvous::server::Behaviour::new(
                    rendezvous::server::Config::default(),
                )),
                None,
            ),
            Role::Node => (None, Some(rendezvous::client::Behaviour::new(key.clone()))),
        };
        Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(agent_version(role)),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            rendezvous_server: server.into(),
            rendezvous_client: client.into(),
            cmd: request_response::Behaviour::with_codec(
                CmdCodec,
                [(CMD_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(request_timeout),
            ),
            stream: libp2p_stream::Behaviour::new(),
            limits: connection_limits::Behaviour::new(crate::peer_limits::connection_limits()),
            memory: memory_connection_limits::Behaviour::with_max_percentage(
                crate::peer_limits::MAX_MEMORY_FRACTION,
            ),
            relay_server: (role == Role::Server)
                .then(|| crate::nat::relay_server(peer_id))
                .into(),
            relay_client: relay_client.into(),
            autonat: autonat::Behaviour::new(peer_id, crate::nat::autonat_config(role)),
            dcutr: (role == Role::Node)
                .then(|| dcutr::Behaviour::new(peer_id))
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_version_round_trips_role() {
        assert_eq!(
            role_of_agent(&agent_version(Role::Server)),
            Some(Role::Server)
        );
        assert_eq!(role_of_agent(&agent_version(Role::Node)), Some(Role::Node));
        assert_eq!(role_of_agent("rust-libp2p/0.1"), None);
    }
}
