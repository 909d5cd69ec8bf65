//! A real headless Chromium driven over the Chrome DevTools protocol (a websocket with JSON
//! commands): navigate, evaluate JavaScript, type, take screenshots. A missing browser fails the
//! test (it never skips): `apt-get install chromium`, or point `SHARDSWARM_CHROMIUM` at one.
//!
//! Waits are bounded: [`Page::wait_for`] evaluates an expression every 100 ms until it is
//! truthy or the deadline passes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A running Chromium and its DevTools connection.
pub(crate) struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: Arc<Mutex<u64>>,
}

/// One tab, attached in flat mode (commands carry its session id).
pub(crate) struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

fn chromium_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SHARDSWARM_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("no Chromium found: install Debian's `chromium` or set SHARDSWARM_CHROMIUM")
}

impl Browser {
    /// Starts a headless Chromium with a fresh profile and connects to its DevTools socket.
    pub(crate) async fn launch() -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium_binary()?)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting Chromium")?;
        let stderr = child.stderr.take().context("Chromium's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let find = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(i) = line.find("ws://") {
                    return Ok(line[i..].trim().to_owned());
                }
            }
            bail!("Chromium exited before it printed its DevTools address")
        };
        let ws_url = tokio::time::timeout(Duration::from_secs(30), find)
            .await
            .context("Chromium did not print its DevTools address within 30 s")??;
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .with_context(|| format!("connecting to {ws_url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let replies = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v.get("id").and_then(Value::as_u64) {
                    let tx = replies.lock().ok().and_then(|mut p| p.remove(&id));
                    if let Some(tx) = tx {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Ok(Browser {
            child,
            _profile: profile,
            out,
            pending,
            next_id: Arc::new(Mutex::new(0)),
        })
    }

    /// Sends one command (to `session`, or to the browser) and returns its `result`.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = {
            let mut n = self.next_id.lock().map_err(|_| anyhow!("poisoned"))?;
            *n += 1;
            *n
        };
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.out
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|_| anyhow!("the DevTools connection is closed"))?;
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .with_context(|| format!("{method}: no answer within 30 s"))?
            .map_err(|_| anyhow!("{method}: the DevTools connection closed"))?;
        if let Some(err) = reply.get("error") {
            bail!("{method}: {err}");
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    /// Opens a new tab on `about:blank`.
    pub(crate) async fn new_page(&self) -> Result<Page<'_>> {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = target["targetId"].as_str().context("no targetId")?;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        let page = Page {
            browser: self,
            session,
        };
        page.call("Page.enable", json!({})).await?;
        Ok(page)
    }

    /// Closes the browser (politely, then by force).
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.call(None, "Browser.close", json!({})),
        )
        .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Sets the viewport (CSS pixels); `mobile` emulates a phone.
    pub(crate) async fn viewport(
        &self,
        width: u32,
        height: u32,
        scale: f64,
        mobile: bool,
    ) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile}),
        )
        .await
        .map(drop)
    }

    /// Navigates to `url` and waits until the document has loaded.
    pub(crate) async fn goto(&self, url: &str) -> Result<()> {
        let nav = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(e) = nav.get("errorText") {
            bail!("navigating to {url}: {e}");
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await
        .map(drop)
    }

    /// Evaluates `expr` (promises awaited) and returns its value as JSON.
    pub(crate) async fn eval(&self, expr: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `expr` every 100 ms until it returns something truthy (returned), for at most
    /// `limit`; on timeout the error carries `describe`'s value at that moment.
    pub(crate) async fn wait_for(&self, expr: &str, limit: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let v = self.eval(expr).await?;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                let body = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await
                    .unwrap_or_default();
                bail!("timed out after {limit:?} waiting for `{expr}`; the page says:\n{body}");
            }
        }
    }

    /// Types `text` into the focused element, as a keyboard would insert it.
    pub(crate) async fn insert_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({"text": text}))
            .await
            .map(drop)
    }

    /// Presses and releases Enter.
    pub(crate) async fn press_enter(&self) -> Result<()> {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                "Input.dispatchKeyEvent",
                json!({"type": kind, "key": "Enter", "code": "Enter",
                       "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13,
                       "text": if kind == "keyDown" { "\r" } else { "" }}),
            )
            .await?;
        }
        Ok(())
    }

    /// Saves a PNG of the whole page to `path`.
    pub(crate) async fn screenshot(&self, path: &Path) -> Result<()> {
        let m = self.call("Page.getLayoutMetrics", json!({})).await?;
        let size = &m["cssContentSize"];
        let (w, h) = (
            size["width"].as_f64().unwrap_or(1280.0),
            size["height"].as_f64().unwrap_or(1000.0),
        );
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true,
                       "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
            )
            .await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}
