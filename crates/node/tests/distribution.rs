//! Shards spread through the swarm: nodes fetch pieces from the server and from each other,
//! reject corrupt pieces, and keep going without the server.

use std::time::Duration;

use anyhow::Result;
use shardswarm_node::transfer::Rate;
use shardswarm_node::{Event, ShardPolicy, Transports};
use shardswarm_testkit::{
    assert_same_files, corrupt_every_piece, node_config, server_config, wait_for, wait_loaded,
    within, write_random_shards,
};

const LIMIT: Duration = Duration::from_secs(120);

async fn mirror_everything(transports: Transports, nodes: usize, seed: u64) -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards_dir = tmp.path().join("shards");
    let manifest = write_random_shards(&shards_dir, 8, 1_500_000, seed)?;
    let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
    let mut cfg = server_config(tmp.path().join("server"), shards_dir.clone());
    // One copy of everything takes ~3 s at this rate: the swarm has to do the rest.
    cfg.common.transfer.upload_limit = Some(Rate(4_000_000));
    cfg.common.transports = transports;
    let mut server = shardswarm_node::start_server(cfg).await?;
    let addrs = within(Duration::from_secs(10), server.handle.listen_addrs()).await??;

    let mut started = Vec::new();
    for i in 0..nodes {
        let mut cfg = node_config(
            tmp.path().join(format!("node{i}")),
            addrs.clone(),
            ShardPolicy::All,
        );
        cfg.common.transports = transports;
        started.push(shardswarm_node::start_node(cfg).await?);
    }
    for node in &mut started {
        wait_loaded(&mut node.events, 8, LIMIT).await?;
    }
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    assert!(server.handle.swarm_status().await?.swarm_ready);
    for i in 0..nodes {
        assert_same_files(&manifest, &shards_dir, &tmp.path().join(format!("node{i}")))?;
    }
    let uploaded = server.handle.metrics().uploaded_total();
    let copies = uploaded as f64 / total as f64;
    eprintln!("server uploaded {uploaded} bytes = {copies:.2} copies of {total}");
    assert!(
        copies < 2.0,
        "the server uploaded {copies:.2} copies (a star would be {nodes})"
    );
    let from_peers: u64 = started
        .iter()
        .map(|n| n.handle.metrics().downloaded_from("peer"))
        .sum();
    assert!(
        from_peers > total,
        "nodes fed each other only {from_peers} bytes"
    );
    for n in &started {
        n.handle.shutdown().await;
    }
    server.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_nodes_mirror_everything_and_the_server_uploads_under_two_copies() -> Result<()> {
    mirror_everything(Transports::default(), 6, 11).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_works_over_tcp_and_yamux_alone() -> Result<()> {
    mirror_everything(
        Transports {
            quic: false,
            tcp: true,
        },
        3,
        12,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_corrupt_pieces_is_banned_and_the_download_completes() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards_dir = tmp.path().join("shards");
    let manifest = write_random_shards(&shards_dir, 4, 600_000, 13)?;
    let mut cfg = server_config(tmp.path().join("server"), shards_dir.clone());
    cfg.common.transfer.upload_limit = Some(Rate(1_500_000));
    let server = shardswarm_node::start_server(cfg).await?;
    let addrs = within(Duration::from_secs(10), server.handle.listen_addrs()).await??;

    let mut liar = shardswarm_node::start_node(node_config(
        tmp.path().join("liar"),
        addrs.clone(),
        ShardPolicy::All,
    ))
    .await?;
    wait_loaded(&mut liar.events, 4, LIMIT).await?;
    // Flip one byte in every piece of the liar's complete files: it now serves corrupt pieces.
    corrupt_every_piece(&manifest, &tmp.path().join("liar"))?;
    let mut honest = shardswarm_node::start_node(node_config(
        tmp.path().join("honest"),
        addrs,
        ShardPolicy::All,
    ))
    .await?;
    let liar_id = liar.handle.peer_id();
    let mut banned = false;
    let mut loaded = std::collections::BTreeSet::new();
    wait_for(&mut honest.events, LIMIT, |e| {
        match e {
            Event::PeerBanned { peer } if *peer == liar_id => banned = true,
            Event::ShardLoaded { index } => {
                loaded.insert(*index);
            }
            _ => {}
        }
        (loaded.len() == 4).then_some(())
    })
    .await?;
    assert!(banned, "the peer that served corrupt pieces was not banned");
    assert_same_files(&manifest, &shards_dir, &tmp.path().join("honest"))?;
    assert!(
        honest
            .handle
            .metrics()
            .encode()
            .contains("shardswarm_pieces_rejected_total")
    );
    for h in [&honest.handle, &liar.handle, &server.handle] {
        h.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_the_server_left_completes_from_peers_found_in_the_dht() -> Result<()>
{
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards_dir = tmp.path().join("shards");
    let manifest = write_random_shards(&shards_dir, 4, 500_000, 14)?;
    let server =
        shardswarm_node::start_server(server_config(tmp.path().join("server"), shards_dir.clone()))
            .await?;
    let addrs = within(Duration::from_secs(10), server.handle.listen_addrs()).await??;
    // a holds shards 0-1, b holds 2-3: a node that only knows a must find b to complete.
    let a_cfg = node_config(
        tmp.path().join("a"),
        addrs.clone(),
        ShardPolicy::Pinned(vec![0, 1]),
    );
    let mut a = shardswarm_node::start_node(a_cfg).await?;
    let b_cfg = node_config(tmp.path().join("b"), addrs, ShardPolicy::Pinned(vec![2, 3]));
    let mut b = shardswarm_node::start_node(b_cfg).await?;
    wait_loaded(&mut a.events, 2, LIMIT).await?;
    wait_loaded(&mut b.events, 2, LIMIT).await?;
    server.handle.shutdown().await;

    let a_addrs = within(Duration::from_secs(10), a.handle.listen_addrs()).await??;
    let b_before = b.handle.metrics().uploaded_total();
    let mut cfg = node_config(tmp.path().join("c"), Vec::new(), ShardPolicy::All);
    cfg.peers = a_addrs;
    let mut c = shardswarm_node::start_node(cfg).await?;
    wait_loaded(&mut c.events, 4, LIMIT).await?;
    assert_same_files(&manifest, &shards_dir, &tmp.path().join("c"))?;
    assert_eq!(c.handle.metrics().downloaded_from("server"), 0);
    let from_b = b.handle.metrics().uploaded_total() - b_before;
    eprintln!("b (known to c only through the DHT) uploaded {from_b} bytes to c");
    assert!(
        from_b >= manifest.shards[2].size + manifest.shards[3].size,
        "c got only {from_b} bytes from b, which alone has shards 2 and 3 and which c could \
         only find through the DHT"
    );
    for h in [&a.handle, &b.handle, &c.handle] {
        h.shutdown().await;
    }
    Ok(())
}
