//! A server and nodes in-process on 127.0.0.1: automatic SYNC_TORRENTS, the catalog, the
//! download decision, and the command protocol's refusals.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_proto::{ErrorCode, Status};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sync_the_catalog_by_themselves() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let manifest = write_random_shards(&tmp.path().join("shards"), 8, 40_000, 1)?;
    let (server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let server_id = server.handle.peer_id();

    let mut nodes = Vec::new();
    for i in 0..3 {
        let cfg = node_config(
            tmp.path().join(format!("node{i}")),
            addrs.clone(),
            ShardPolicy::All,
        );
        nodes.push(shardswarm_node::start_node(cfg).await?);
    }
    for node in &mut nodes {
        let ev = &mut node.events;
        let to = wait_for(ev, LIMIT, |e| match e {
            Event::SyncSent { to, .. } => Some(*to),
            _ => None,
        })
        .await?;
        assert_eq!(to, server_id);
        let (model_id, files) = wait_for(ev, LIMIT, |e| match e {
            Event::CatalogReceived {
                model_id, files, ..
            } => Some((model_id.clone(), files.clone())),
            _ => None,
        })
        .await?;
        assert_eq!(model_id, manifest.model_id);
        assert_eq!(files.len(), 8);
        for (f, m) in files.iter().zip(&manifest.shards) {
            assert_eq!(f.info_hash, m.info_hash, "info-hash of {}", m.filename);
            assert_eq!(f.size, m.size);
            assert_eq!(f.filename, m.filename);
        }
        let (present, missing) = wait_for(ev, LIMIT, |e| match e {
            Event::SyncDecision {
                present, missing, ..
            } => Some((present.clone(), missing.clone())),
            _ => None,
        })
        .await?;
        assert!(present.is_empty());
        assert_eq!(missing, (0..8).collect::<Vec<_>>());
    }

    // The server sees the three nodes (identify + GET_NODE_STATUS) in its status.
    let status = server.handle.swarm_status().await?;
    assert_eq!(status.total_shards, 8);
    assert_eq!(status.model_id, manifest.model_id);
    assert!(!status.swarm_ready);
    assert_eq!(status.missing.len(), 8);
    for n in &nodes {
        n.handle.shutdown().await;
    }
    server.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_present_shard_is_not_downloaded_again() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let manifest = write_random_shards(&tmp.path().join("shards"), 3, 30_000, 2)?;
    let (server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let node_dir = tmp.path().join("node");
    let model_dir = node_dir.join("models").join(&manifest.model_id);
    std::fs::create_dir_all(&model_dir)?;
    std::fs::copy(
        tmp.path().join("shards/shard-1.gguf"),
        model_dir.join("shard-1.gguf"),
    )?;
    // A wrong file under a right name does not count as present.
    std::fs::write(
        model_dir.join("shard-2.gguf"),
        vec![0u8; manifest.shards[2].size as usize],
    )?;
    let mut node = shardswarm_node::start_node(node_config(
        node_dir,
        addrs,
        ShardPolicy::Pinned(vec![1, 2]),
    ))
    .await?;
    let (present, missing) = wait_for(&mut node.events, LIMIT, |e| match e {
        Event::SyncDecision {
            present, missing, ..
        } => Some((present.clone(), missing.clone())),
        _ => None,
    })
    .await?;
    assert_eq!(present, vec![1]);
    assert_eq!(missing, vec![2]);
    node.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_error_responses_and_the_server_keeps_serving() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 2, 10_000, 3)?;
    let (server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let server_id = server.handle.peer_id();
    let mut node =
        shardswarm_node::start_node(node_config(tmp.path().join("n"), addrs, ShardPolicy::All))
            .await?;
    wait_for(&mut node.events, LIMIT, |e| {
        matches!(e, Event::SyncDecision { .. }).then_some(())
    })
    .await?;
    let me = node.handle.peer_id();
    let envelope = |cmd: &str, from: String| {
        serde_json::to_vec(&json!({"command": cmd, "request_id": "req-7", "from": from,
            "to": server_id.to_string(), "timestamp": 1, "params": {"total_shards": 2}}))
        .unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        (
            "spoofed from",
            envelope("SYNC_TORRENTS", libp2p::PeerId::random().to_string()),
            ErrorCode::Forbidden,
        ),
        (
            "unknown command",
            envelope("SELF_DESTRUCT", me.to_string()),
            ErrorCode::UnknownCommand,
        ),
        (
            "malformed JSON",
            b"{\"command\": \"SYNC_TORRENTS\", ".to_vec(),
            ErrorCode::BadRequest,
        ),
        (
            "not an envelope",
            b"[1,2,3]".to_vec(),
            ErrorCode::BadRequest,
        ),
        (
            "oversized",
            vec![b' '; 2 * 1024 * 1024],
            ErrorCode::TooLarge,
        ),
    ];
    for (what, bytes, code) in cases {
        let resp = node.handle.send_raw_decoded(server_id, bytes).await?;
        assert_eq!(resp.status, Status::Error, "{what}");
        assert_eq!(resp.error_body().map(|e| e.code), Some(code), "{what}");
    }
    let spoof = node
        .handle
        .send_raw_decoded(
            server_id,
            envelope("SYNC_TORRENTS", libp2p::PeerId::random().to_string()),
        )
        .await?;
    assert_eq!(
        spoof.header.request_id, "req-7",
        "errors echo the request id"
    );
    // Still serving: a proper request succeeds.
    let ok = node
        .handle
        .send_raw_decoded(server_id, envelope("SYNC_TORRENTS", me.to_string()))
        .await?;
    assert_eq!(ok.status, Status::Success);
    assert_eq!(ok.body["files"].as_array().map(Vec::len), Some(2));
    node.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
