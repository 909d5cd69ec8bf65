//! The NAT traversal settings: the relay's limits, AutoNAT's timing per role, and the address
//! forms of relayed connections.

use std::time::Duration;

use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat, relay};
use shardswarm_proto::status::Role;

/// Bytes one relayed circuit may carry (both directions together) before the relay closes it:
/// some twenty copies of the default model; more continues on a new circuit or, better, on a
/// hole-punched direct connection.
pub const RELAY_MAX_CIRCUIT_BYTES: u64 = 2 << 30;
/// How long one relayed circuit may live.
pub const RELAY_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(60 * 60);
/// Reservations the relay holds at once (one per node behind NAT, renewed hourly).
pub const RELAY_MAX_RESERVATIONS: usize = 1024;
/// Reservations per node.
pub const RELAY_MAX_RESERVATIONS_PER_PEER: usize = 4;
/// Circuits the relay carries at once.
pub const RELAY_MAX_CIRCUITS: usize = 512;
/// Circuits per peer (a node may trade with many peers behind NAT).
pub const RELAY_MAX_CIRCUITS_PER_PEER: usize = 32;
/// The server's relay: relay v2 with the limits above, advertised at once (the server is the
/// peer everybody dials, so it is reachable by definition).
pub(crate) fn relay_server(local: PeerId) -> relay::Behaviour {
    let config = relay::Config {
        max_reservations: RELAY_MAX_RESERVATIONS,
        max_reservations_per_peer: RELAY_MAX_RESERVATIONS_PER_PEER,
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
        max_circuit_duration: RELAY_MAX_CIRCUIT_DURATION,
        max_circuit_bytes: RELAY_MAX_CIRCUIT_BYTES,
        ..relay::Config::default()
    };
    let mut relay = relay::Behaviour::new(local, config);
    relay.set_status(Some(relay::Status::Enable));
    relay
}

/// AutoNAT v1 for `role`. Private address ranges count (LANs, tests, the namespace topology).
/// Nodes probe soon after start and retry every 30 s until sure; the server only answers.
pub(crate) fn autonat_config(role: Role) -> autonat::Config {
    let base = autonat::Config {
        only_global_ips: false,
        timeout: Duration::from_secs(30),
        ..autonat::Config::default()
    };
    match role {
        Role::Node => autonat::Config {
            boot_delay: Duration::from_secs(3),
            retry_interval: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10 * 60),
            throttle_server_period: Duration::from_secs(15),
            ..base
        },
        Role::Server => autonat::Config {
            use_connected: false,
            boot_delay: Duration::from_secs(24 * 60 * 60),
            ..base
        },
    }
}

/// `addr` (an address of `relay`, with or without its `/p2p/`) as the circuit address that
/// reserves a slot there.
pub(crate) fn circuit_via(addr: &Multiaddr, relay: PeerId) -> Multiaddr {
    let mut base: Multiaddr = addr
        .iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit))
        .collect();
    base.push(Protocol::P2p(relay));
    base.push(Protocol::P2pCircuit);
    base
}

/// The address a connection is shown with (dashboard, `/api/peers`): the remote address, but
/// for a relayed connection we accepted (whose remote address is a bare `/p2p/<peer>`) the
/// circuit it came through, so that it reads as relayed.
pub(crate) fn shown_addr(endpoint: &ConnectedPoint) -> Multiaddr {
    match endpoint {
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } if endpoint.is_relayed() => {
            let mut addr = local_addr.clone();
            if let Some(Protocol::P2p(peer)) = send_back_addr.iter().last() {
                addr.push(Protocol::P2p(peer));
            }
            addr
        }
        _ => endpoint.get_remote_address().clone(),
    }
}

pub(super) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_address_goes_through_the_relay_whatever_the_dialed_form() {
        let relay = PeerId::random();
        let want: Multiaddr = format!("/ip4/10.77.0.1/udp/7447/quic-v1/p2p/{relay}/p2p-circuit")
            .parse()
            .unwrap();
        for dialed in [
            "/ip4/10.77.0.1/udp/7447/quic-v1".to_owned(),
            format!("/ip4/10.77.0.1/udp/7447/quic-v1/p2p/{relay}"),
        ] {
            assert_eq!(circuit_via(&dialed.parse().unwrap(), relay), want);
        }
    }

    #[test]
    fn relay_limits_are_raised_above_libp2p_defaults() {
        let d = relay::Config::default();
        assert!(
            RELAY_MAX_CIRCUIT_BYTES >= 1 << 30 && RELAY_MAX_CIRCUIT_BYTES > d.max_circuit_bytes
        );
        assert!(RELAY_MAX_CIRCUIT_DURATION >= Duration::from_secs(3600));
        assert!(RELAY_MAX_CIRCUIT_DURATION > d.max_circuit_duration);
        assert!(RELAY_MAX_RESERVATIONS > d.max_reservations);
        assert!(RELAY_MAX_CIRCUITS > d.max_circuits);
    }
}
