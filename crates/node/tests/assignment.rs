//! `--shards auto`: the server arbitrates windows and re-assigns a departed holder's shards.

use std::time::Duration;

use anyhow::Result;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_testkit::{node_config, start_server, wait_for, wait_loaded, write_random_shards};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_nodes_tile_the_model_and_a_departed_holders_shards_are_reassigned() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 4, 300_000, 21)?;
    let (mut server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let mut nodes = Vec::new();
    for i in 0..2 {
        let mut cfg = node_config(
            tmp.path().join(format!("n{i}")),
            addrs.clone(),
            ShardPolicy::Auto,
        );
        cfg.max_shards = Some(2);
        nodes.push(shardswarm_node::start_node(cfg).await?);
    }
    for n in &mut nodes {
        wait_loaded(&mut n.events, 2, LIMIT).await?;
    }
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    let status = server.handle.swarm_status().await?;
    for s in &status.shards {
        assert_eq!(
            s.loaded_by.len(),
            1,
            "shard {} held by {:?}",
            s.index,
            s.loaded_by
        );
    }
    let mut windows: Vec<Vec<u32>> = status
        .nodes
        .iter()
        .filter(|n| !n.loaded.is_empty())
        .map(|n| n.loaded.clone())
        .collect();
    windows.sort();
    assert_eq!(windows, vec![vec![0, 1], vec![2, 3]]);

    // The holder of one window leaves; the other auto node takes its shards and the swarm is ready again.
    let leaver = nodes.pop().expect("two nodes");
    leaver.handle.shutdown().await;
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: false }).then_some(())
    })
    .await?;
    let stayer = &mut nodes[0];
    wait_loaded(&mut stayer.events, 2, LIMIT).await?;
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    let status = server.handle.swarm_status().await?;
    let me = stayer.handle.peer_id().to_string();
    for s in &status.shards {
        assert_eq!(s.loaded_by, vec![me.clone()], "shard {}", s.index);
    }
    let own = stayer.handle.node_status().await?;
    assert_eq!(own.loaded, vec![0, 1, 2, 3]);
    assert_eq!(own.verified, vec![0, 1, 2, 3]);
    stayer.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
