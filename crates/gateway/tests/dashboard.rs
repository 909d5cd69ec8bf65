//! The dashboard in a real headless Chromium (DevTools protocol) against an in-process server
//! and three nodes on 127.0.0.1, one of them slowed by a download limit so that its shard is
//! visibly downloading: the shards × nodes matrix, the readiness banner, the node list, the
//! chat box (a 503 while not ready, then a streamed answer), and the page at phone width.
//! Screenshots of each state go to `target/dashboard-screenshots/`.

mod browser;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shardswarm_node::transfer::Rate;
use shardswarm_node::{Event, ShardPolicy};
use shardswarm_testkit::{node_config, start_server, wait_for, write_random_shards};

use browser::{Browser, Page};

const LIMIT: Duration = Duration::from_secs(60);

fn screenshot_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(|t| t.join("dashboard-screenshots"))
        .unwrap_or_else(|| tmp.join("dashboard-screenshots"))
}

/// JS: the matrix cell of shard `i` on peer `p`.
fn cell(i: u32, p: &str) -> String {
    format!("document.querySelector('.cell[data-shard=\"{i}\"][data-peer=\"{p}\"]')")
}

/// Types `text` into the chat box and presses Enter.
async fn chat(page: &Page<'_>, text: &str) -> Result<()> {
    page.eval("document.getElementById('chat-input').focus()")
        .await?;
    page.insert_text(text).await?;
    page.press_enter().await
}

/// JS: the last chat message once it is no longer streaming.
const LAST_MESSAGE: &str = r#"(() => {
  const all = document.querySelectorAll('#chat-log .msg');
  const m = all[all.length - 1];
  if (!m || m.dataset.state === 'streaming' || m.classList.contains('user')) return null;
  return { cls: m.className, state: m.dataset.state || '', text: m.textContent,
           chunks: Number(m.dataset.chunks || 0), lengths: window.__lengths || [] };
})()"#;

/// Records every length the last assistant message goes through.
const OBSERVE_STREAM: &str = r#"(() => {
  window.__lengths = [];
  new MutationObserver(() => {
    const a = document.querySelectorAll('#chat-log .msg.assistant');
    const m = a[a.length - 1];
    if (m && m.dataset.state === 'streaming') window.__lengths.push(m.textContent.length);
  }).observe(document.getElementById('chat-log'),
             { subtree: true, childList: true, characterData: true });
  return true;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_download_readiness_and_streams_a_chat() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let shots = screenshot_dir();
    let tmp = tempfile::tempdir()?;
    // 1.2 MB shards: the slowed node needs ~12 s for its one, long enough for the server's
    // 5 s node polls to see it downloading.
    write_random_shards(&tmp.path().join("shards"), 3, 1_200_000, 81)?;
    let (mut server, addrs) =
        start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http, serve) = shardswarm_gateway::serve(
        server.handle.clone(),
        "127.0.0.1:0",
        &tmp.path().join("server"),
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let serve = tokio::spawn(serve);

    let browser = Browser::launch().await?;
    let page = browser.new_page().await?;
    page.viewport(1280, 1000, 1.0, false).await?;
    page.goto(&format!("http://{http}/")).await?;
    // Before any node: the catalog is there, nothing is loaded.
    page.wait_for(
        "document.getElementById('banner').dataset.ready === 'false'",
        LIMIT,
    )
    .await?;

    let mut nodes = Vec::new();
    for i in 0..3u32 {
        let mut cfg = node_config(
            tmp.path().join(format!("node{i}")),
            addrs.clone(),
            ShardPolicy::Pinned(vec![i]),
        );
        if i == 2 {
            cfg.common.transfer.download_limit = Some(Rate(100_000));
        }
        nodes.push(shardswarm_node::start_node(cfg).await?);
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.handle.peer_id().to_string())
        .collect();

    // While node 2 downloads: shards 0 and 1 loaded, shard 2 downloading with a percentage.
    let downloading = format!(
        "(() => {{ const c = {}, a = {}, b = {};
            return c && c.dataset.state === 'downloading'
                && a && a.dataset.state === 'loaded' && b && b.dataset.state === 'loaded'
                ? c.textContent : null; }})()",
        cell(2, &ids[2]),
        cell(0, &ids[0]),
        cell(1, &ids[1]),
    );
    let pct = page.wait_for(&downloading, LIMIT).await?;
    let pct = pct.as_str().unwrap_or_default().to_owned();
    let n: u32 = pct
        .strip_suffix('%')
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("downloading cell says {pct:?}"))?;
    ensure!(n < 100, "downloading cell at {pct}");
    let banner = page
        .eval("document.getElementById('banner').textContent")
        .await?;
    let banner = banner.as_str().unwrap_or_default();
    ensure!(
        banner.contains("Not ready") && banner.contains("missing shards 2"),
        "banner while downloading: {banner:?}"
    );
    ensure!(
        page.eval(&format!("{}.dataset.state", cell(2, &ids[0])))
            .await?
            == "missing",
        "node 0 does not hold shard 2"
    );
    // The server's column: it seeds every shard (verified).
    let server_id = server.handle.peer_id().to_string();
    ensure!(
        page.eval(&format!("{}.dataset.state", cell(1, &server_id)))
            .await?
            == "verified"
    );

    // A chat before the swarm is ready shows the API's 503 message.
    chat(&page, "are you there?").await?;
    let m = page.wait_for(LAST_MESSAGE, LIMIT).await?;
    ensure!(
        m["cls"].as_str().unwrap_or_default().contains("error")
            && m["text"].as_str().unwrap_or_default().contains("not ready"),
        "chat before ready: {m}"
    );
    page.screenshot(&shots.join("1-downloading.png")).await?;

    // Ready: every shard loaded by its node, the banner flips, no download left.
    wait_for(&mut server.events, Duration::from_secs(120), |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    let ready = format!(
        "document.getElementById('banner').dataset.ready === 'true'
            && [{}, {}, {}].every(c => c && c.dataset.state === 'loaded')",
        cell(0, &ids[0]),
        cell(1, &ids[1]),
        cell(2, &ids[2]),
    );
    page.wait_for(&ready, LIMIT).await?;
    let banner = page
        .eval("document.getElementById('banner').textContent")
        .await?;
    ensure!(
        banner == "Swarm ready: all 3 shards loaded.",
        "banner when ready: {banner}"
    );
    // The node list: the server and the three nodes, each node connected with a transport
    // and a measured latency.
    let rows = page
        .wait_for(
            "(() => { const r = [...document.querySelectorAll('#nodes tbody tr')];
                return r.length === 4 && r.slice(1).every(t =>
                    /QUIC|TCP/.test(t.cells[2].textContent) && /ms$/.test(t.cells[3].textContent))
                  ? r.map(t => [t.dataset.peer, t.cells[1].textContent]) : null; })()",
            LIMIT,
        )
        .await?;
    ensure!(
        rows[0] == serde_json::json!([server_id, "server"]),
        "{rows}"
    );
    page.screenshot(&shots.join("2-ready.png")).await?;

    // A chat streams an answer into the page, chunk after chunk. (A random model may end at
    // once with its end-of-sequence token: then ask again.)
    page.eval(OBSERVE_STREAM).await?;
    let mut answer = Value::Null;
    for attempt in 0..3 {
        chat(&page, &format!("Hello swarm, attempt {attempt}")).await?;
        answer = page.wait_for(LAST_MESSAGE, LIMIT).await?;
        ensure!(
            answer["state"] == "done",
            "the chat did not complete: {answer}"
        );
        if answer["chunks"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
    }
    let text = answer["text"].as_str().unwrap_or_default();
    ensure!(
        !text.is_empty() && answer["chunks"].as_u64().unwrap_or(0) >= 2,
        "{answer}"
    );
    let lengths: Vec<u64> = answer["lengths"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let mut distinct = lengths.clone();
    distinct.dedup();
    ensure!(
        distinct.iter().filter(|&&l| l > 0).count() >= 2,
        "the answer appeared at once, not streamed: lengths {lengths:?}"
    );
    page.screenshot(&shots.join("3-chat.png")).await?;

    // The server's gateway counted both chats, the tokens, and timed each step and hop.
    let metrics = server.handle.metrics().encode();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    ensure!(value("shardswarm_inference_requests_total{outcome=\"not_ready\"}") == 1.0);
    ensure!(
        value("shardswarm_tokens_generated_total") >= 2.0,
        "{metrics}"
    );
    ensure!(value("shardswarm_step_seconds_count") >= 1.0, "{metrics}");
    ensure!(
        value("shardswarm_hop_seconds_count") == value("shardswarm_step_seconds_count"),
        "{metrics}"
    );
    ensure!(value("shardswarm_hop_seconds_sum") < value("shardswarm_step_seconds_sum"));

    // At phone width nothing overflows the page sideways (wide tables scroll in their card).
    page.viewport(375, 812, 2.0, true).await?;
    page.wait_for(
        "new Promise(r => requestAnimationFrame(() => r(document.documentElement.scrollWidth <= window.innerWidth)))",
        Duration::from_secs(5),
    )
    .await
    .context("the page is wider than a 375 px phone")?;
    page.screenshot(&shots.join("4-phone.png")).await?;

    browser.close().await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), serve).await???;
    for n in &nodes {
        n.handle.shutdown().await;
    }
    server.handle.shutdown().await;
    eprintln!("screenshots in {}", shots.display());
    Ok(())
}
