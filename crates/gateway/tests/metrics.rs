//! `GET /metrics` of a node while and after it downloads from the server and from another node:
//! the byte and piece counters move, and once it is done they match the status JSON (bytes of
//! the verified shards, their piece counts) and the uploaders' counters.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use shardswarm_node::transfer::Rate;
use shardswarm_node::{Handle, ShardPolicy};
use shardswarm_proto::SwarmStatus;
use shardswarm_testkit::{node_config, start_server, wait_loaded, write_random_shards};
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(60);

/// Every sample of a Prometheus text exposition, keyed by `name{labels}` as written.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn get(handle: &Handle, path: &str) -> Result<String> {
    let resp = shardswarm_gateway::router(handle.clone())
        .oneshot(Request::get(path).body(Body::empty())?)
        .await?;
    ensure!(resp.status() == StatusCode::OK, "{path}: {}", resp.status());
    Ok(String::from_utf8(
        resp.into_body().collect().await?.to_bytes().to_vec(),
    )?)
}

async fn scrape(handle: &Handle) -> Result<HashMap<String, f64>> {
    let text = get(handle, "/metrics").await?;
    ensure!(text.trim_end().ends_with("# EOF"), "not OpenMetrics text");
    Ok(parse(&text))
}

fn metric(m: &HashMap<String, f64>, key: &str) -> u64 {
    m.get(key).copied().unwrap_or(0.0) as u64
}

const DOWN_SERVER: &str = "shardswarm_torrent_downloaded_bytes_total{source=\"server\"}";
const DOWN_PEER: &str = "shardswarm_torrent_downloaded_bytes_total{source=\"peer\"}";
const UP: &str = "shardswarm_torrent_uploaded_bytes_total";
const VERIFIED: &str = "shardswarm_pieces_verified_total";
const REJECTED: &str = "shardswarm_pieces_rejected_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_pieces_and_bytes_as_they_are_exchanged_and_match_the_status() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // 6 blocks of 256 KiB per shard: the server's writer holds at most 4 blocks per downloader,
    // so even when B asked the server before A's bitfield arrived (and the server's blocks,
    // already sent, still count), some of shard 0 comes from A.
    let manifest = write_random_shards(&tmp.path().join("shards"), 2, 1_500_000, 91)?;
    let (server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;

    // A holds shard 0 first: B gets shard 0 from A (peers are preferred to the server) and
    // shard 1 from the server, its only holder.
    let mut a = shardswarm_node::start_node(node_config(
        tmp.path().join("a"),
        addrs.clone(),
        ShardPolicy::Pinned(vec![0]),
    ))
    .await?;
    wait_loaded(&mut a.events, 1, LIMIT).await?;
    let a_before = scrape(&a.handle).await?;
    ensure!(metric(&a_before, DOWN_SERVER) == manifest.shards[0].size);

    let mut cfg = node_config(tmp.path().join("b"), addrs.clone(), ShardPolicy::All);
    cfg.peers = a.handle.listen_addrs().await?; // connected to A from the start
    cfg.common.transfer.download_limit = Some(Rate(500_000));
    let mut b = shardswarm_node::start_node(cfg).await?;
    let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
    let pieces: u64 = manifest
        .shards
        .iter()
        .map(|s| s.size.div_ceil(s.piece_length))
        .sum();

    // While it downloads: pieces verified and bytes received, but not everything yet.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let during = tokio::time::timeout(LIMIT, async {
        loop {
            tick.tick().await;
            let m = scrape(&b.handle).await?;
            if metric(&m, VERIFIED) > 0 {
                return Ok::<_, anyhow::Error>(m);
            }
        }
    })
    .await
    .context("no piece verified in time")??;
    let got = metric(&during, DOWN_SERVER) + metric(&during, DOWN_PEER);
    ensure!(
        got > 0 && got < total,
        "{got} of {total} bytes mid-download"
    );
    ensure!(metric(&during, VERIFIED) < pieces);
    let status: SwarmStatus = serde_json::from_str(&get(&b.handle, "/api/status").await?)?;
    let own = &status.nodes[0];
    ensure!(
        own.bytes_down >= got,
        "the status is taken after the scrape"
    );
    let have: u64 = own.downloading.iter().map(|d| d.have).sum::<u64>()
        + own
            .verified
            .iter()
            .map(|&i| manifest.shards[i as usize].size)
            .sum::<u64>();
    ensure!(
        have <= own.bytes_down,
        "verified bytes ({have}) were all received ({})",
        own.bytes_down
    );

    // After: the counters equal what the status says it holds.
    wait_loaded(&mut b.events, 2, LIMIT).await?;
    let after = scrape(&b.handle).await?;
    let status: SwarmStatus = serde_json::from_str(&get(&b.handle, "/api/status").await?)?;
    let own = &status.nodes[0];
    let verified_bytes: u64 = own
        .verified
        .iter()
        .map(|&i| status.shards[i as usize].size)
        .sum();
    let (from_server, from_peer) = (metric(&after, DOWN_SERVER), metric(&after, DOWN_PEER));
    ensure!(own.verified == vec![0, 1], "{own:?}");
    ensure!(
        from_server + from_peer == verified_bytes,
        "received {from_server} + {from_peer} bytes for {verified_bytes} verified"
    );
    ensure!(own.bytes_down == verified_bytes, "status bytes_down");
    ensure!(
        from_server >= manifest.shards[1].size && from_peer > 0,
        "both sources served: server {from_server}, peer {from_peer}"
    );
    ensure!(metric(&after, VERIFIED) == pieces, "{pieces} pieces");
    ensure!(metric(&after, REJECTED) == 0);
    ensure!(metric(&after, "shardswarm_shards_loaded") == 2);
    ensure!(metric(&after, "shardswarm_banned_peers_total") == 0);

    // The uploaders sent at least what B received from each of them.
    let a_after = scrape(&a.handle).await?;
    ensure!(
        metric(&a_after, UP) >= from_peer,
        "A sent {} for {from_peer} received from peers",
        metric(&a_after, UP)
    );
    let s = scrape(&server.handle).await?;
    ensure!(metric(&s, UP) >= metric(&a_before, DOWN_SERVER) + from_server);
    ensure!(metric(&s, "shardswarm_connected_peers") == 2);
    ensure!(
        metric(
            &s,
            "shardswarm_connected_peers_by_transport{transport=\"quic\"}"
        ) + metric(
            &s,
            "shardswarm_connected_peers_by_transport{transport=\"tcp\"}"
        ) == 2
    );

    for h in [&b.handle, &a.handle, &server.handle] {
        h.shutdown().await;
    }
    Ok(())
}
