//! The HTTP routes through `router().oneshot(...)`, against a real server peer on loopback.

use std::time::Duration;

use anyhow::Result;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use shardswarm_proto::SwarmStatus;
use tower::ServiceExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_answer_with_the_swarm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let manifest =
        shardswarm_testkit::write_random_shards(&tmp.path().join("shards"), 3, 20_000, 5)?;
    let (server, _) =
        shardswarm_testkit::start_server(tmp.path().join("server"), tmp.path().join("shards"))
            .await?;
    let app = shardswarm_gateway::router(server.handle.clone());

    let resp = app
        .clone()
        .oneshot(Request::get("/api/status").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await?.to_bytes();
    let status: SwarmStatus = serde_json::from_slice(&body)?;
    assert_eq!(status.total_shards, 3);
    assert_eq!(status.model_id, manifest.model_id);
    assert!(!status.swarm_ready);
    assert_eq!(status.missing, vec![0, 1, 2]);
    for (s, m) in status.shards.iter().zip(&manifest.shards) {
        assert_eq!(s.info_hash, m.info_hash);
        assert_eq!(s.layers, m.layers);
    }

    let resp = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
    assert!(text.contains("shardswarm_catalog_shards 3"), "{text}");
    assert!(text.contains("shardswarm_swarm_ready 0"));

    let resp = app
        .oneshot(Request::get("/nope").body(Body::empty())?)
        .await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // After the peer stops, the status route says so instead of hanging.
    server.handle.shutdown().await;
    let app = shardswarm_gateway::router(server.handle.clone());
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        app.oneshot(Request::get("/api/status").body(Body::empty())?),
    )
    .await??;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binds_port_zero_and_writes_http_addr() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    shardswarm_testkit::write_random_shards(&tmp.path().join("shards"), 1, 1_000, 6)?;
    let (server, _) =
        shardswarm_testkit::start_server(tmp.path().join("server"), tmp.path().join("shards"))
            .await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, fut) = shardswarm_gateway::serve(
        server.handle.clone(),
        "127.0.0.1:0",
        &tmp.path().join("server"),
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let task = tokio::spawn(fut);
    let written = std::fs::read_to_string(tmp.path().join("server/http.addr"))?;
    assert_eq!(written.trim(), addr.to_string());
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"total_shards\":1"));
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    server.handle.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_assets_peers_and_a_first_event_at_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    shardswarm_testkit::write_random_shards(&tmp.path().join("shards"), 2, 1_000, 7)?;
    let (server, _) =
        shardswarm_testkit::start_server(tmp.path().join("server"), tmp.path().join("shards"))
            .await?;
    let app = shardswarm_gateway::router(server.handle.clone());
    for (path, mime, needle) in [
        ("/", "text/html", "<canvas id=\"chart\""),
        ("/assets/app.js", "text/javascript", "/api/events"),
        ("/assets/style.css", "text/css", "@media"),
    ] {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty())?)
            .await?;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp.headers()["content-type"].to_str()?.to_owned();
        assert!(ct.starts_with(mime), "{path}: {ct}");
        let body = String::from_utf8(resp.into_body().collect().await?.to_bytes().to_vec())?;
        assert!(body.contains(needle), "{path}");
    }

    let resp = app
        .clone()
        .oneshot(Request::get("/api/peers").body(Body::empty())?)
        .await?;
    let body = resp.into_body().collect().await?.to_bytes();
    let peers: Vec<shardswarm_proto::ConnectedPeer> = serde_json::from_slice(&body)?;
    assert!(peers.is_empty(), "no node yet: {peers:?}");

    // The event stream sends a snapshot at once (no one-second wait for the first).
    let resp = app
        .oneshot(Request::get("/api/events").body(Body::empty())?)
        .await?;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_millis(900), body.frame())
        .await?
        .expect("a first event")?;
    let text = String::from_utf8(frame.into_data().expect("data").to_vec())?;
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    assert!(text.starts_with("event: snapshot\n"), "{text}");
    let snap: shardswarm_gateway::dashboard::Snapshot = serde_json::from_str(data)?;
    assert_eq!(snap.peer_id, server.handle.peer_id().to_string());
    assert_eq!(snap.status.total_shards, 2);
    assert_eq!(snap.status.nodes[0].peer_id, snap.peer_id);
    assert_eq!(snap.role, shardswarm_proto::Role::Server);
    server.handle.shutdown().await;
    Ok(())
}
