//! The node list behind the dashboard: `Handle::peers()` names each connected peer's role and
//! the transport in use (read from the connection's remote address), and the by-transport
//! gauge counts them.

use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::multiaddr::Protocol;
use shardswarm_node::{Event, Handle, ShardPolicy};
use shardswarm_proto::{ConnectedPeer, Role, Transport};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};

const LIMIT: Duration = Duration::from_secs(20);

/// Polls `handle.peers()` (every 50 ms, at most `LIMIT`) until `done` holds.
async fn peers_until(
    handle: &Handle,
    mut done: impl FnMut(&[ConnectedPeer]) -> bool,
) -> Result<Vec<ConnectedPeer>> {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let fut = async {
        loop {
            tick.tick().await;
            let peers = handle.peers().await?;
            if done(&peers) {
                return Ok::<_, anyhow::Error>(peers);
            }
        }
    };
    tokio::time::timeout(LIMIT, fut)
        .await
        .context("peers never reached the expected state")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_name_role_transport_and_rtt_and_the_gauge_counts_by_transport() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 1, 1_000, 31)?;
    let (mut server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;

    // One node dials the server's QUIC address, the other its TCP one.
    let only = |quic: bool| -> Vec<libp2p::Multiaddr> {
        addrs
            .iter()
            .filter(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)) == quic)
            .cloned()
            .collect()
    };
    let quic_node = shardswarm_node::start_node(node_config(
        tmp.path().join("a"),
        only(true),
        ShardPolicy::Pinned(vec![0]),
    ))
    .await?;
    let tcp_node = shardswarm_node::start_node(node_config(
        tmp.path().join("b"),
        only(false),
        ShardPolicy::Pinned(vec![0]),
    ))
    .await?;
    let (a, b) = (quic_node.handle.peer_id(), tcp_node.handle.peer_id());
    let mut seen = std::collections::HashSet::new();
    wait_for(&mut server.events, LIMIT, |e| {
        if let Event::PeerDiscovered { peer } = e {
            seen.insert(*peer);
        }
        (seen.contains(&a) && seen.contains(&b)).then_some(())
    })
    .await?;

    let peers = peers_until(&server.handle, |p| {
        p.len() == 2 && p.iter().all(|p| p.rtt_ms.is_some())
    })
    .await?;
    let of = |id: libp2p::PeerId| {
        peers
            .iter()
            .find(|p| p.peer_id == id.to_string())
            .cloned()
            .context("peer missing from the list")
    };
    let pa = of(a)?;
    assert_eq!(pa.role, Some(Role::Node));
    assert_eq!(pa.transport, Transport::Quic, "{pa:?}");
    assert!(pa.connections[0].contains("/quic-v1"), "{pa:?}");
    assert!(
        !pa.listen_addresses.is_empty(),
        "identify gave its addresses"
    );
    let pb = of(b)?;
    assert_eq!(pb.transport, Transport::Tcp, "{pb:?}");
    assert!(pb.rtt_ms.is_some_and(|ms| (0.0..5_000.0).contains(&ms)));

    let text = server.handle.metrics().encode();
    for line in [
        "shardswarm_connected_peers 2",
        "shardswarm_connected_peers_by_transport{transport=\"quic\"} 1",
        "shardswarm_connected_peers_by_transport{transport=\"tcp\"} 1",
        "shardswarm_connected_peers_by_transport{transport=\"relayed\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }

    // The node sees the server, identified as such.
    let from_node = peers_until(&quic_node.handle, |p| {
        p.iter().any(|p| p.role == Some(Role::Server))
    })
    .await?;
    // (The node may also be connected to the other node already: find the server's entry.)
    let server_entry = from_node
        .iter()
        .find(|p| p.role == Some(Role::Server))
        .expect("seen above");
    assert_eq!(server_entry.peer_id, server.handle.peer_id().to_string());

    // A peer that leaves leaves the list and the gauge.
    tcp_node.handle.shutdown().await;
    peers_until(&server.handle, |p| p.len() == 1).await?;
    let text = server.handle.metrics().encode();
    assert!(
        text.lines()
            .any(|l| l == "shardswarm_connected_peers_by_transport{transport=\"tcp\"} 0"),
        "{text}"
    );
    quic_node.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
