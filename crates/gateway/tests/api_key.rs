//! `--api-key` (issue 9): every HTTP route but the dashboard page and its assets answers 401
//! without the key or with a wrong one (OpenAI's error shape under `/v1/`, ours elsewhere) and
//! serves with it — through `router_with(...).oneshot(...)` against a ready swarm (a server and a
//! node holding the one shard, so completions really run), plus one real socket.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shardswarm_gateway::HttpOptions;
use shardswarm_gateway::auth::ApiKey;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const KEY: &str = "s3cret-Key";
const LIMIT: Duration = Duration::from_secs(60);

/// Every route behind the key: method, path, JSON body.
fn protected() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/api/status", None),
        (Method::GET, "/metrics", None),
        (Method::GET, "/api/peers", None),
        (Method::GET, "/api/events", None),
        (Method::GET, "/v1/models", None),
        (
            Method::POST,
            "/v1/completions",
            Some(json!({"prompt": "hello", "max_tokens": 2, "temperature": 0})),
        ),
        (
            Method::POST,
            "/v1/chat/completions",
            Some(json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2})),
        ),
    ]
}

async fn call(
    app: &Router,
    method: &Method,
    path: &str,
    body: &Option<Value>,
    auth: Option<&str>,
) -> Result<(StatusCode, Option<String>, String, Value)> {
    let mut req = Request::builder().method(method.clone()).uri(path);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string()))?,
        None => req.body(Body::empty())?,
    };
    let resp = tokio::time::timeout(LIMIT, app.clone().oneshot(req)).await??;
    let status = resp.status();
    let www = resp
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The event stream never ends: its headers are the answer.
    let json = if ctype.starts_with("text/event-stream") {
        Value::Null
    } else {
        let bytes = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok((status, www, ctype, json))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_the_key_and_the_page_does_not() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 1, 20_000, 17)?;
    let (mut server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let node = shardswarm_node::start_node(node_config(
        tmp.path().join("node"),
        addrs,
        ShardPolicy::All,
    ))
    .await?;
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    let opts = HttpOptions {
        api_key: ApiKey::new(KEY),
    };
    let app = shardswarm_gateway::router_with(server.handle.clone(), opts.clone());

    for (method, path, body) in protected() {
        for auth in [
            None,
            Some("Bearer wrong-key".to_owned()),
            Some(format!("Bearer {KEY}x")),
            Some(format!("Basic {KEY}")),
            Some(KEY.to_owned()),
        ] {
            let (status, www, _, json) = call(&app, &method, path, &body, auth.as_deref()).await?;
            ensure!(
                status == StatusCode::UNAUTHORIZED,
                "{method} {path} with {auth:?}: {status}"
            );
            ensure!(www.as_deref() == Some("Bearer"), "{path}: {www:?}");
            let err = &json["error"];
            if path.starts_with("/v1/") {
                ensure!(
                    err["type"] == "invalid_request_error"
                        && err["code"] == "invalid_api_key"
                        && err["message"].is_string()
                        && err.get("param").is_some(),
                    "{path}: not OpenAI's error shape: {json}"
                );
            } else {
                ensure!(
                    err["code"] == "UNAUTHORIZED" && err["message"].is_string(),
                    "{path}: {json}"
                );
            }
        }
        for auth in [format!("Bearer {KEY}"), format!("bearer  {KEY} ")] {
            let (status, _, ctype, json) = call(&app, &method, path, &body, Some(&auth)).await?;
            ensure!(
                status == StatusCode::OK,
                "{method} {path} with the key: {status} {json}"
            );
            if path == "/api/events" {
                ensure!(ctype.starts_with("text/event-stream"), "{ctype}");
            }
            if path.ends_with("completions") {
                ensure!(
                    json["choices"][0]["finish_reason"].is_string(),
                    "{path}: {json}"
                );
            }
        }
    }

    // The page and its assets stay open: the page is what asks for the key.
    for path in ["/", "/assets/app.js", "/assets/style.css"] {
        let (status, _, ctype, _) = call(&app, &Method::GET, path, &None, None).await?;
        ensure!(status == StatusCode::OK, "{path}: {status}");
        ensure!(!ctype.is_empty(), "{path}: no content type");
    }
    // Without a key configured nothing asks for one.
    let open = shardswarm_gateway::router(server.handle.clone());
    let (status, ..) = call(&open, &Method::GET, "/api/status", &None, None).await?;
    ensure!(status == StatusCode::OK);

    // The same over a real socket.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, serve) = shardswarm_gateway::serve_with(
        server.handle.clone(),
        "127.0.0.1:0",
        &tmp.path().join("server"),
        opts,
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let serve = tokio::spawn(serve);
    let get = |path: &'static str, auth: Option<String>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out.lines().next().unwrap_or_default().to_owned())
    };
    let line = get("/api/status", None).await?;
    ensure!(line.contains(" 401 "), "{line}");
    let line = get("/api/status", Some(format!("Bearer {KEY}"))).await?;
    ensure!(line.contains(" 200 "), "{line}");
    let line = get("/", None).await?;
    ensure!(line.contains(" 200 "), "{line}");
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), serve)
        .await
        .context("the server did not stop")???;
    node.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
