//! Per-peer command rate: a peer flooding the server gets `NOT_READY` for the excess (counted in
//! the metrics, the commands not run), while another peer is served at once.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use shardswarm_node::peer_limits::CMD_BURST;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_proto::{ErrorCode, Status};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited_and_others_are_not() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 2, 10_000, 3)?;
    let (server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let server_id = server.handle.peer_id();
    let mut flooder = shardswarm_node::start_node(node_config(
        tmp.path().join("a"),
        addrs.clone(),
        ShardPolicy::Pinned(vec![0]),
    ))
    .await?;
    let mut other = shardswarm_node::start_node(node_config(
        tmp.path().join("b"),
        addrs,
        ShardPolicy::Pinned(vec![0]),
    ))
    .await?;
    for n in [&mut flooder, &mut other] {
        wait_for(&mut n.events, LIMIT, |e| {
            matches!(e, Event::SyncDecision { .. }).then_some(())
        })
        .await?;
    }
    let envelope = |from: String| {
        serde_json::to_vec(&json!({"command": "SYNC_TORRENTS", "request_id": "flood",
            "from": from, "to": server_id.to_string(), "timestamp": 1,
            "params": {"total_shards": 2}}))
        .unwrap()
    };
    let sent = 3 * CMD_BURST as usize;
    let me = flooder.handle.peer_id().to_string();
    // In batches of 25 concurrent requests (hundreds of simultaneous streams on one connection
    // is its own stress, not this test's subject); the whole flood takes well under a second,
    // so the bucket refills by only a few tokens meanwhile.
    let mut replies = Vec::new();
    for _ in 0..sent / 25 {
        let batch = futures::future::join_all((0..25).map(|_| {
            flooder
                .handle
                .send_raw_decoded(server_id, envelope(me.clone()))
        }))
        .await;
        replies.extend(batch);
    }
    let (mut ok, mut limited) = (0, 0);
    for r in replies {
        let r = r?;
        match r.status {
            Status::Success => ok += 1,
            Status::Error => {
                let e = r.error_body().expect("an error body");
                assert_eq!(e.code, ErrorCode::NotReady, "{}", e.message);
                assert!(e.message.contains("rate limited"), "{}", e.message);
                limited += 1;
            }
        }
    }
    // The burst passes (less the few commands the node sent itself when it joined).
    assert!(ok + 10 >= CMD_BURST as usize, "the burst passes: {ok}");
    assert!(
        limited > 0 && ok + limited == sent,
        "{ok} ok, {limited} limited"
    );
    // The other peer has its own bucket.
    let theirs = other
        .handle
        .send_raw_decoded(server_id, envelope(other.handle.peer_id().to_string()))
        .await?;
    assert_eq!(theirs.status, Status::Success);
    let metrics = server.handle.metrics().encode();
    let counted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shardswarm_commands_rate_limited_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter is exported");
    // Every refusal is counted (the node's own background commands may add a few).
    assert!(
        counted >= limited as u64,
        "{counted} counted, {limited} refused"
    );
    flooder.handle.shutdown().await;
    other.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
