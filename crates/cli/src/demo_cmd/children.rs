//! The demo's child processes (the server and the nodes), owned by one registry.
//!
//! Invariants: every child ever spawned is in the list until the registry shuts down; after
//! [`Children::shutdown`] (called on success, on error, on Ctrl-C/SIGTERM, and by `Drop`) no
//! child is left running or unreaped and no new one can be spawned, because spawning and
//! shutting down take the same lock. [`Children::pause`] is the demo's only way to wait between
//! two polls, and it returns early (with [`Interrupted`]) the moment a shutdown begins.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The registry has shut down (the demo was interrupted, or is over).
#[derive(Debug)]
pub(super) struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// One running child.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

#[derive(Default)]
struct Inner {
    closed: bool,
    procs: Vec<Proc>,
}

/// The child processes of this demo; see the module doc.
#[derive(Default)]
pub(super) struct Children {
    inner: Mutex<Inner>,
    closed: Condvar,
}

impl Children {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts this executable with `args` (and `envs`), stdin closed, stdout and stderr
    /// appended to a fresh `log`. Fails once the registry has shut down.
    pub(super) fn spawn(
        &self,
        name: &str,
        args: &[OsString],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<()> {
        let mut cmd =
            crate::peer_cmd::self_command().context("cannot find the shardswarm executable")?;
        let mut inner = self.lock();
        if inner.closed {
            return Err(Interrupted.into());
        }
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log handle")?;
        let child = cmd
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        tracing::debug!(target: "shardswarm::demo", name, pid = child.id(), "started");
        inner.procs.push(Proc {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        });
        Ok(())
    }

    /// Fails, naming the process, its exit status, its log and the log's last lines, when a
    /// child has exited; fails with [`Interrupted`] after a shutdown.
    pub(super) fn check_alive(&self) -> Result<()> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(Interrupted.into());
        }
        for p in &mut inner.procs {
            if let Some(status) = p.child.try_wait().context("polling a child process")? {
                bail!(
                    "the {} exited unexpectedly ({status}); its log {} ends with:\n{}",
                    p.name,
                    p.log.display(),
                    tail(&p.log, 8)
                );
            }
        }
        Ok(())
    }

    /// Waits `d`, or less when a shutdown begins meanwhile (then [`Interrupted`]).
    pub(super) fn pause(&self, d: Duration) -> Result<()> {
        let inner = self.lock();
        let (inner, _) = self
            .closed
            .wait_timeout_while(inner, d, |i| !i.closed)
            .unwrap_or_else(PoisonError::into_inner);
        if inner.closed {
            return Err(Interrupted.into());
        }
        Ok(())
    }

    /// How many children are registered.
    pub(super) fn len(&self) -> usize {
        self.lock().procs.len()
    }

    /// Kills (SIGKILL) and reaps every child; later spawns fail. Idempotent.
    pub(super) fn shutdown(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        self.closed.notify_all();
        for p in &mut inner.procs {
            let _ = p.child.kill();
        }
        for p in inner.procs.drain(..) {
            let mut child = p.child;
            match child.wait() {
                Ok(status) => {
                    tracing::debug!(target: "shardswarm::demo", name = %p.name, %status, "stopped");
                }
                Err(e) => {
                    tracing::warn!(target: "shardswarm::demo", name = %p.name, "cannot reap: {e}");
                }
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The last `n` lines of a log file, indented.
pub(super) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn pause_returns_at_once_when_shut_down_and_spawn_is_refused_after() {
        let c = std::sync::Arc::new(Children::default());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.pause(Duration::from_secs(30)));
        c.shutdown();
        let r = t.join().expect("pause thread");
        assert!(r.is_err_and(|e| e.is::<Interrupted>()));
        let log = tempfile::NamedTempFile::new().expect("temp");
        let r = c.spawn("node", &[], &[], log.path());
        assert!(r.is_err_and(|e| e.is::<Interrupted>()));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let f = tempfile::NamedTempFile::new().expect("temp");
        fs::write(f.path(), "a\nb\nc\n").expect("write");
        assert_eq!(tail(f.path(), 2), "  | b\n  | c");
        assert_eq!(tail(Path::new("/nonexistent/x"), 2), "");
    }
}
