//! The dashboard of a peer running with `--api-key`, in a real headless Chromium: the page
//! loads without the key, asks for it, says so when a wrong one is entered, and with the right
//! one shows the live matrix; the key is remembered across a reload and sent on the chat's API
//! calls too; "forget API key" makes the page ask again.

mod browser;

use std::time::Duration;

use anyhow::{Result, ensure};
use shardswarm_gateway::HttpOptions;
use shardswarm_gateway::auth::ApiKey;
use shardswarm_testkit::{start_server, write_random_shards};

use browser::{Browser, Page};

const LIMIT: Duration = Duration::from_secs(30);
const KEY: &str = "dashboard-key-42";

/// JS: the key form is shown (`wrong`: saying the last key was refused).
fn asking(wrong: bool) -> String {
    format!(
        "(() => {{ const f = document.getElementById('key-form');
            return !f.hidden && f.dataset.wrong === '{wrong}'; }})()"
    )
}

fn screenshot_dir() -> std::path::PathBuf {
    let tmp = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .map(|t| t.join("dashboard-screenshots"))
        .unwrap_or_else(|| tmp.join("dashboard-screenshots"))
}

async fn enter_key(page: &Page<'_>, key: &str) -> Result<()> {
    page.eval("document.getElementById('key-input').focus()")
        .await?;
    page.insert_text(key).await?;
    page.press_enter().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_key_and_then_goes_live() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    write_random_shards(&tmp.path().join("shards"), 2, 20_000, 23)?;
    let (server, _) = start_server(tmp.path().join("server"), tmp.path().join("shards")).await?;
    let server_id = server.handle.peer_id().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (http, serve) = shardswarm_gateway::serve_with(
        server.handle.clone(),
        "127.0.0.1:0",
        &tmp.path().join("server"),
        HttpOptions {
            api_key: ApiKey::new(KEY),
        },
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let serve = tokio::spawn(serve);

    let browser = Browser::launch().await?;
    let page = browser.new_page().await?;
    page.viewport(1280, 900, 1.0, false).await?;
    page.goto(&format!("http://{http}/")).await?;

    // The page itself is open; its live stream is not: it asks for the key, nothing is shown.
    page.wait_for(&asking(false), LIMIT).await?;
    page.screenshot(&screenshot_dir().join("5-api-key-prompt.png"))
        .await?;
    ensure!(
        page.eval("document.getElementById('conn').textContent")
            .await?
            == "API key needed"
    );
    ensure!(
        page.eval("document.querySelectorAll('#matrix .cell').length")
            .await?
            == 0
    );

    // A wrong key: asked again, saying it was refused.
    enter_key(&page, "not-the-key").await?;
    page.wait_for(&asking(true), LIMIT).await?;

    // The right key: the live matrix (the server's column: it seeds both shards).
    enter_key(&page, KEY).await?;
    let live = format!(
        "(() => {{ const c = document.querySelector('.cell[data-shard=\"1\"][data-peer=\"{server_id}\"]');
            return document.getElementById('conn').dataset.live === 'true'
                && document.getElementById('key-form').hidden
                && c && c.dataset.state === 'verified'; }})()"
    );
    page.wait_for(&live, LIMIT).await?;
    ensure!(
        page.eval("localStorage.getItem('shardswarm.apiKey')")
            .await?
            == KEY
    );
    ensure!(
        page.eval("document.getElementById('key-forget').hidden")
            .await?
            == false
    );

    // The chat sends the key too: the API answers (not ready: no node holds a shard), not 401.
    page.eval("document.getElementById('chat-input').focus()")
        .await?;
    page.insert_text("anyone there?").await?;
    page.press_enter().await?;
    let m = page
        .wait_for(
            "(() => { const m = document.querySelector('#chat-log .msg.error');
                return m ? m.textContent : null; })()",
            LIMIT,
        )
        .await?;
    let text = m.as_str().unwrap_or_default();
    ensure!(
        text.contains("not ready") && !text.contains("key"),
        "chat answer: {text:?}"
    );

    // Remembered across a reload: live again without asking.
    page.goto(&format!("http://{http}/")).await?;
    page.wait_for(&live, LIMIT).await?;

    // Forgotten: the next load asks again.
    page.eval("document.getElementById('key-forget').click()")
        .await?;
    ensure!(
        page.eval("localStorage.getItem('shardswarm.apiKey')")
            .await?
            .is_null()
    );
    page.goto(&format!("http://{http}/")).await?;
    page.wait_for(&asking(false), LIMIT).await?;

    browser.close().await;
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), serve).await???;
    server.handle.shutdown().await;
    Ok(())
}
