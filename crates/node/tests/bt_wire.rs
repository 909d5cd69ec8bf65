//! The BitTorrent wire between two shardswarm nodes (our `--bt-peer` fetcher against our
//! `--bt-listen` listener), in process on 127.0.0.1: blocks from a BitTorrent peer are SHA-1
//! checked like any other, and a peer serving corrupt ones is banned while the shard completes
//! from the server; and no BitTorrent listener in a private swarm. (Interop with a regular
//! client is `crates/cli/tests/bt_interop.rs`.)

use std::time::Duration;

use anyhow::{Context, Result};
use shardswarm_node::transfer::Rate;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_testkit::{
    assert_same_files, corrupt_every_piece, node_config, server_config, wait_for, wait_loaded,
    within, write_random_shards,
};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bittorrent_peer_serving_corrupt_blocks_is_banned_and_the_shard_completes_elsewhere()
-> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards_dir = tmp.path().join("shards");
    let manifest = write_random_shards(&shards_dir, 2, 1_500_000, 21)?;
    let mut cfg = server_config(tmp.path().join("server"), shards_dir.clone());
    // Slow enough that the BitTorrent peer gets requests too, fast enough to finish.
    cfg.common.transfer.upload_limit = Some(Rate(2_000_000));
    let server = shardswarm_node::start_server(cfg).await?;
    let addrs = within(Duration::from_secs(10), server.handle.listen_addrs()).await??;

    let mut cfg = node_config(tmp.path().join("liar"), addrs.clone(), ShardPolicy::All);
    cfg.common.transfer.bt_listen = Some("127.0.0.1:0".parse()?);
    let mut liar = shardswarm_node::start_node(cfg).await?;
    let liar_bt = liar
        .handle
        .bt_listen_addr()
        .context("the liar has no BitTorrent listener")?;
    wait_loaded(&mut liar.events, 2, LIMIT).await?;
    // Flip one byte in every piece: its BitTorrent listener now serves corrupt blocks.
    corrupt_every_piece(&manifest, &tmp.path().join("liar"))?;

    // The honest node takes nothing from the liar over libp2p (server only), everything else
    // it gets over the BitTorrent wire.
    let mut cfg = node_config(tmp.path().join("honest"), addrs, ShardPolicy::All);
    cfg.common.transfer.server_only = true;
    cfg.common.transfer.bt_peers = vec![liar_bt];
    let mut honest = shardswarm_node::start_node(cfg).await?;
    let not_bt = [liar.handle.peer_id(), server.handle.peer_id()];
    let mut bt_banned = 0;
    let mut loaded = std::collections::BTreeSet::new();
    wait_for(&mut honest.events, LIMIT, |e| {
        match e {
            Event::PeerBanned { peer } if !not_bt.contains(peer) => bt_banned += 1,
            Event::ShardLoaded { index } => {
                loaded.insert(*index);
            }
            _ => {}
        }
        (loaded.len() == 2).then_some(())
    })
    .await?;
    assert_same_files(&manifest, &shards_dir, &tmp.path().join("honest"))?;
    let m = honest.handle.metrics();
    assert!(
        m.downloaded_from("bittorrent") > 0,
        "nothing was requested over the BitTorrent wire"
    );
    assert!(
        bt_banned >= 1,
        "the BitTorrent peer served corrupt blocks ({} bytes) and was not banned",
        m.downloaded_from("bittorrent")
    );
    assert!(m.encode().contains("shardswarm_pieces_rejected_total"));
    for h in [&honest.handle, &liar.handle, &server.handle] {
        h.shutdown().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_bittorrent_listener_is_refused_in_a_private_swarm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = node_config(tmp.path().join("node"), Vec::new(), ShardPolicy::All);
    cfg.common.swarm_key = Some(shardswarm_node::SwarmKey::from_bytes([7; 32]));
    cfg.common.transfer.bt_listen = Some("127.0.0.1:0".parse()?);
    let err = shardswarm_node::start_node(cfg)
        .await
        .err()
        .context("a node started with both --bt-listen and --swarm-key")?;
    assert!(err.to_string().contains("--swarm-key"), "{err}");
    assert!(!tmp.path().join("node").exists(), "it created its data dir");
    Ok(())
}
