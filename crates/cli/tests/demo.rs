//! `shardswarm demo` as a newcomer runs it: the built binary, a temporary `--data-dir`, the
//! default model (`SHARDSWARM_MODEL`, else the `fetch-model` cache).
//!
//! - A whole run exits 0 with a non-empty answer on stdout and the summary lines, and leaves no
//!   process behind (`pgrep -f <data dir>` finds nothing: every child's command line names it).
//! - SIGINT once the server and the nodes are up stops the demo and every child.
//!
//! Waits are on the demo's output lines (a reader thread per pipe feeds a condition variable)
//! and on its exit, all with deadlines.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::default_model;

const BIN: &str = env!("CARGO_BIN_EXE_shardswarm");
/// Split, start, distribute, load and answer on a busy 2-core machine.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// Model check, split and server start.
const SERVER_LIMIT: Duration = Duration::from_secs(180);
/// From SIGINT to the demo's exit.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// Lines a process wrote to one pipe.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
    closed: Mutex<bool>,
    changed_closed: Condvar,
}

impl Lines {
    fn reader(pipe: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(bytes) = line else { break };
                if let Ok(mut v) = l.lines.lock() {
                    v.push(String::from_utf8_lossy(&bytes).into_owned());
                }
                l.changed.notify_all();
            }
            if let Ok(mut c) = l.closed.lock() {
                *c = true;
            }
            l.changed.notify_all();
            l.changed_closed.notify_all();
        });
        lines
    }

    /// Waits until a line contains `needle`.
    fn wait_for(&self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        let mut lines = self.lines.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Ok(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || self.closed.lock().is_ok_and(|c| *c) {
                bail!("no line with {needle:?}:\n{}", lines.join("\n"));
            }
            lines = self
                .changed
                .wait_timeout(lines, (deadline - now).min(Duration::from_millis(200)))
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .0;
        }
    }

    /// Waits until the pipe is closed; false after `limit`.
    fn wait_closed(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let Ok(mut closed) = self.closed.lock() else {
            return false;
        };
        while !*closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.changed_closed.wait_timeout(closed, deadline - now) {
                Ok((c, _)) => closed = c,
                Err(_) => return false,
            }
        }
        true
    }

    fn text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

/// A running demo; killed with everything under its data dir when dropped.
struct Demo {
    child: Child,
    out: Arc<Lines>,
    err: Arc<Lines>,
    data: PathBuf,
}

impl Demo {
    /// `shardswarm demo --data-dir DATA --model M extra…`; with `own_group`, in a new session
    /// (through `setsid`, which execs: same pid) so that its process group can be signalled
    /// like a terminal's Ctrl-C without hitting the test.
    fn start(data: &Path, extra: &[&str], own_group: bool) -> Result<Demo> {
        let model = default_model()?;
        let mut cmd = if own_group {
            let mut c = Command::new("setsid");
            c.arg(BIN);
            c
        } else {
            Command::new(BIN)
        };
        let mut child = cmd
            .arg("demo")
            .arg("--data-dir")
            .arg(data)
            .arg("--model")
            .arg(&model)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the demo")?;
        let out = Lines::reader(child.stdout.take().context("stdout")?);
        let err = Lines::reader(child.stderr.take().context("stderr")?);
        Ok(Demo {
            child,
            out,
            err,
            data: data.to_path_buf(),
        })
    }

    /// Waits for the demo to exit (bounded): its stderr closes when it exits (its children
    /// write to their own log files), then it is reaped.
    fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        if !self.err.wait_closed(limit) {
            bail!(
                "the demo did not exit within {limit:?}\n--- stderr ---\n{}",
                self.err.text()
            );
        }
        Ok(self.child.wait()?)
    }

    fn report(&self) -> String {
        format!(
            "--- demo stdout ---\n{}\n--- demo stderr ---\n{}\n(children's logs in {}/logs)",
            self.out.text(),
            self.err.text(),
            self.data.display()
        )
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in processes_under(&self.data) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Pids of the processes whose command line names `dir` (pgrep excludes itself).
fn processes_under(dir: &Path) -> Vec<u32> {
    let pattern = dir.display().to_string().replace('.', "\\.");
    let out = Command::new("pgrep").args(["-f", &pattern]).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every process under `dir` is gone: right after the demo exited they must already be (the
/// demo reaps its children before it returns).
fn assert_no_leftovers(dir: &Path) -> Result<()> {
    let left = processes_under(dir);
    ensure!(
        left.is_empty(),
        "processes left behind: {:?}",
        left.iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " "))
            .collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn demo_reaches_ready_answers_and_leaves_no_process_behind() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("demo");
    let mut demo = Demo::start(&data, &["--max-tokens", "24"], false)?;
    let status = demo.wait(RUN_LIMIT)?;
    let report = demo.report();
    // Today's milestone first, so a failure says how far it got.
    assert_no_leftovers(&data)?;
    demo.err
        .wait_for("swarm ready in", Duration::ZERO)
        .with_context(|| format!("the swarm never became ready\n{report}"))?;
    ensure!(status.success(), "demo failed ({status})\n{report}");

    let stdout = demo.out.text();
    let (answer, summary) = stdout
        .split_once("--- demo summary ---")
        .with_context(|| format!("no summary\n{report}"))?;
    ensure!(!answer.trim().is_empty(), "empty answer\n{report}");
    for line in [
        "swarm ready in ",
        "shard bytes received: ",
        "answer: ",
        "logs: ",
    ] {
        ensure!(
            summary.lines().any(|l| l.starts_with(line)),
            "summary without {line:?}\n{report}"
        );
    }
    ensure!(
        summary.contains("4 nodes hold 8 shards"),
        "summary: {summary}"
    );
    Ok(())
}

/// Starts a demo, waits for its server and nodes, sends `signal` to `target(pid)` and checks
/// that the demo exits non-zero, says why, and leaves no process behind.
fn interrupt(own_group: bool, signal: &str, target: impl Fn(u32) -> String) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("demo");
    let mut demo = Demo::start(&data, &[], own_group)?;
    demo.err
        .wait_for("[demo] server up", SERVER_LIMIT)
        .with_context(|| demo.report())?;
    demo.err
        .wait_for("[demo] started 4 nodes", SERVER_LIMIT)
        .with_context(|| demo.report())?;
    let running = processes_under(&data);
    ensure!(
        running.len() >= 6,
        "expected the demo, the server and 4 nodes, found pids {running:?}"
    );
    let to = target(demo.child.id());
    let sent = Command::new("kill").args([signal, "--", &to]).status()?;
    ensure!(sent.success(), "kill {signal} {to} failed");
    let status = demo.wait(STOP_LIMIT)?;
    assert_no_leftovers(&data)?;
    ensure!(!status.success(), "an interrupted demo must not exit 0");
    ensure!(
        demo.err.text().contains("interrupted"),
        "no word of the interruption\n{}",
        demo.report()
    );
    Ok(())
}

#[test]
fn sigint_stops_the_demo_and_every_child() -> Result<()> {
    interrupt(false, "-INT", |pid| pid.to_string())
}

#[test]
fn sigterm_stops_the_demo_and_every_child() -> Result<()> {
    interrupt(false, "-TERM", |pid| pid.to_string())
}

/// Ctrl-C in a terminal: the whole process group (the demo and its children) gets SIGINT.
#[test]
fn ctrl_c_to_the_process_group_stops_everything() -> Result<()> {
    interrupt(true, "-INT", |pid| format!("-{pid}"))
}
