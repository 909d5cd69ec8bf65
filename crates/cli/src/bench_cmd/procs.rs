//! Child processes and the bits of HTTP the bench needs to watch them: a kill-on-drop process
//! guard, `GET` over HTTP/1.0, the status document's progress and Prometheus samples.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// One HTTP request to a child's API.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest HTTP answer read from a child.
const MAX_HTTP_BYTES: u64 = 16 << 20;

/// The child processes of one run; killed when dropped (`kill_on_drop`).
#[derive(Default)]
pub(super) struct Procs {
    list: Vec<(String, Child, PathBuf)>,
}

impl Procs {
    /// Starts `bin args…` with stdout and stderr into `log`.
    pub(super) fn spawn(
        &mut self,
        name: &str,
        bin: &Path,
        args: &[OsString],
        log: PathBuf,
    ) -> Result<()> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log handle")?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
        self.list.push((name.to_owned(), child, log));
        Ok(())
    }

    /// Fails when a child has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        for (name, child, log) in &mut self.list {
            if let Some(status) = child.try_wait().context("polling a child")? {
                let tail = fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "{name} exited ({status}); log {}: …{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
        }
        Ok(())
    }

    /// The children's process ids (those not reaped yet).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.list.iter().filter_map(|(_, c, _)| c.id()).collect()
    }

    /// Kills every child and waits for it.
    pub(super) async fn stop(mut self) {
        for (_, child, _) in &mut self.list {
            let _ = child.start_kill();
        }
        for (_, child, _) in &mut self.list {
            let _ = child.wait().await;
        }
    }
}

/// A running server's HTTP API address and first libp2p address (QUIC).
pub(super) struct ServerInfo {
    pub(super) http: String,
    pub(super) addr: String,
}

/// What `/api/status` says about the local peer.
pub(super) struct Progress {
    pub(super) verified: usize,
    pub(super) bytes: u64,
}

impl Progress {
    /// `nodes[0]` is the local peer: its verified shards' sizes plus what it has of the others.
    pub(super) fn parse(body: &str) -> Progress {
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let me = &v["nodes"][0];
        let verified: Vec<u64> = me["verified"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let size_of = |idx: u64| {
            v["shards"]
                .as_array()
                .and_then(|s| s.iter().find(|e| e["index"].as_u64() == Some(idx)))
                .and_then(|e| e["size"].as_u64())
                .unwrap_or(0)
        };
        let partial: u64 = me["downloading"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d["have"].as_u64()).sum())
            .unwrap_or(0);
        Progress {
            verified: verified.len(),
            bytes: verified.iter().map(|&i| size_of(i)).sum::<u64>() + partial,
        }
    }
}

/// `GET path` over HTTP/1.0 (the server closes after the answer); the body of a 200.
pub(super) async fn http_get(addr: &str, path: &str) -> Result<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(MAX_HTTP_BYTES).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8(buf).context("non-UTF-8 HTTP answer")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        bail!(
            "GET http://{addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(body.to_owned())
}

pub(super) fn read_first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

/// A path as a command-line argument (not necessarily UTF-8).
pub(super) fn path_arg(p: &Path) -> OsString {
    p.as_os_str().to_owned()
}

/// Empties (or creates) `dir`.
pub(super) fn fresh_dir(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_verified_sizes_and_partial_bytes() {
        let body = r#"{"shards":[{"index":0,"size":10},{"index":1,"size":20},{"index":2,"size":40}],
            "nodes":[{"verified":[0,2],"downloading":[{"index":1,"have":5,"size":20}]},
                     {"verified":[0,1,2],"downloading":[]}]}"#;
        let p = Progress::parse(body);
        assert_eq!((p.verified, p.bytes), (2, 55));
        assert_eq!(Progress::parse("not json").verified, 0);
    }
}
