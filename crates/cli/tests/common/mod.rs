//! The harness of the process tests: `shardswarm` children with their output captured line by
//! line (waits are on log lines, with deadlines), HTTP helpers and command lines on loopback.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shardswarm_proto::Manifest;

pub const BIN: &str = env!("CARGO_BIN_EXE_shardswarm");
/// Time for a process to come up (listeners, HTTP) on a busy 2-core machine.
pub const START_LIMIT: Duration = Duration::from_secs(20);
/// How often the HTTP status is polled when no log line says what we wait for.
pub const POLL: Duration = Duration::from_millis(100);

/// The lines a child wrote (stdout and stderr), shared with the threads reading its pipes.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    pub fn push(&self, line: String) {
        if let Ok(mut l) = self.lines.lock() {
            l.push(line);
        }
        self.changed.notify_all();
    }

    /// The first line (from the start) `pick` maps to `Some`, waiting until `deadline`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        deadline: Instant,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> Result<T> {
        let mut lines = self.lines.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut seen = 0;
        loop {
            for line in &lines[seen..] {
                if let Some(t) = pick(line) {
                    return Ok(t);
                }
            }
            seen = lines.len();
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out waiting for {what}");
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .0;
        }
    }

    /// Every line `pick` maps to `Some`, in order.
    pub fn collect<T>(&self, mut pick: impl FnMut(&str) -> Option<T>) -> Vec<T> {
        self.lines
            .lock()
            .map(|l| l.iter().filter_map(|s| pick(s)).collect())
            .unwrap_or_default()
    }

    /// Returns when the process writes a line or after `limit`: the pause between two polls.
    pub fn pause(&self, limit: Duration) {
        if let Ok(lines) = self.lines.lock() {
            let n = lines.len();
            let _ = self
                .changed
                .wait_timeout_while(lines, limit, |l| l.len() == n);
        }
    }

    pub fn tail(&self, n: usize) -> String {
        self.lines
            .lock()
            .map(|l| l[l.len().saturating_sub(n)..].join("\n"))
            .unwrap_or_default()
    }
}

pub fn pump(pipe: impl Read + Send + 'static, lines: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).split(b'\n') {
            match line {
                Ok(bytes) => lines.push(String::from_utf8_lossy(&bytes).into_owned()),
                Err(_) => break,
            }
        }
    });
}

/// A `shardswarm` child process, killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    pub args: Vec<String>,
    /// What runs `shardswarm` (e.g. `ip netns exec NS`); empty: nothing.
    pub wrapper: Vec<String>,
    pub child: Child,
    pub out: Arc<Lines>,
}

impl Proc {
    pub fn spawn(name: &str, args: Vec<String>) -> Result<Proc> {
        Proc::spawn_wrapped(name, &[], args)
    }

    /// `wrapper… shardswarm args…`, e.g. inside a network namespace with
    /// `["ip", "netns", "exec", NS]` (which execs, so the child is `shardswarm` itself).
    pub fn spawn_wrapped(name: &str, wrapper: &[String], args: Vec<String>) -> Result<Proc> {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("SHARDSWARM_TEST_LOG").unwrap_or_else(|_| {
                    "info,libp2p=warn,libp2p_swarm=warn,libp2p_kad=error".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}: {BIN}"))?;
        let out = Arc::new(Lines::default());
        if let Some(p) = child.stdout.take() {
            pump(p, out.clone());
        }
        if let Some(p) = child.stderr.take() {
            pump(p, out.clone());
        }
        Ok(Proc {
            name: name.to_owned(),
            args,
            wrapper: wrapper.to_vec(),
            child,
            out,
        })
    }

    /// The same command again (same data directory, hence the same identity and files).
    pub fn respawn(&self, name: &str) -> Result<Proc> {
        Proc::spawn_wrapped(name, &self.wrapper, self.args.clone())
    }

    /// The HTTP API's base URL, from the `HTTP API on http://…` line (logged after `http.addr`
    /// is written, and for a server after `server.addrs`).
    pub fn http_base(&self) -> Result<String> {
        self.out
            .wait_for(
                &format!("{}'s HTTP API", self.name),
                Instant::now() + START_LIMIT,
                |l| {
                    let rest = l.split("HTTP API on http://").nth(1)?;
                    Some(format!("http://{}", rest.split_whitespace().next()?))
                },
            )
            .with_context(|| self.report())
    }

    /// Ends the process with SIGKILL (no graceful shutdown) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping")?;
        Ok(())
    }

    pub fn report(&self) -> String {
        format!("--- last lines of {} ---\n{}", self.name, self.out.tail(80))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn get(url: &str) -> Result<String> {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()
        .with_context(|| format!("reading {url}"))
}

pub fn status(base: &str) -> Result<Value> {
    let text = get(&format!("{base}/api/status"))?;
    serde_json::from_str(&text).with_context(|| format!("status JSON: {text}"))
}

/// `shardswarm_torrent_downloaded_bytes_total`, summed over its sources.
pub fn downloaded_bytes(base: &str) -> Result<u64> {
    let text = get(&format!("{base}/metrics"))?;
    let mut total = 0;
    let mut found = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("shardswarm_torrent_downloaded_bytes_total") {
            let v = rest
                .split_whitespace()
                .last()
                .context("metric without value")?;
            total += v
                .parse::<f64>()
                .with_context(|| format!("metric line {line}"))? as u64;
            found = true;
        }
    }
    ensure!(
        found,
        "no shardswarm_torrent_downloaded_bytes_total in:\n{text}"
    );
    Ok(total)
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// A peer's own entry (always first in `nodes`) of its status.
pub fn own(status: &Value) -> Result<&Value> {
    status["nodes"].get(0).context("status without nodes")
}

pub fn server(
    root: &Path,
    n: u32,
    size: usize,
    extra: &[&str],
) -> Result<(Proc, Manifest, String)> {
    let shards = root.join("shards");
    let manifest = shardswarm_testkit::write_random_shards(&shards, n, size, 5)?;
    let (proc, base) = server_on(root, &shards, extra)?;
    Ok((proc, manifest, base))
}

/// A server process over `shards`, its data under `root/server`; returns it and its HTTP base.
pub fn server_on(root: &Path, shards: &Path, extra: &[&str]) -> Result<(Proc, String)> {
    let data = root.join("server");
    let mut args: Vec<String> = vec![
        "server".into(),
        "--shards-dir".into(),
        shards.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--listen".into(),
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let proc = Proc::spawn("server", args)?;
    let base = proc.http_base()?;
    Ok((proc, base))
}

/// The `node` command line for `data_dir` joining through every line of `server.addrs`.
pub fn node_args(root: &Path, data_dir: &Path, extra: &[&str]) -> Result<Vec<String>> {
    let addrs_path = root.join("server").join("server.addrs");
    let addrs = std::fs::read_to_string(&addrs_path)
        .with_context(|| format!("reading {}", addrs_path.display()))?;
    let mut args: Vec<String> = vec!["node".into()];
    for a in addrs.lines().filter(|l| !l.trim().is_empty()) {
        args.extend(["--server".into(), a.trim().to_owned()]);
    }
    ensure!(args.len() > 1, "{} is empty", addrs_path.display());
    args.extend([
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
        "--listen".into(),
        "/ip4/127.0.0.1/tcp/0".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ]);
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Ok(args)
}

/// Runs `body` and, when it fails, prints the last log lines of every process and keeps the
/// whole logs under `CARGO_TARGET_TMPDIR/resume-logs/<test>/`.
pub fn run(test: &str, body: impl FnOnce(&mut Vec<Proc>) -> Result<()>) {
    let mut procs = Vec::new();
    let result = body(&mut procs);
    if let Err(e) = result {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("resume-logs")
            .join(test);
        let _ = std::fs::create_dir_all(&dir);
        for p in &procs {
            eprintln!("{}", p.report());
            let file = dir.join(format!("{}.log", p.name.replace(['(', ')', ' '], "_")));
            let _ = std::fs::write(&file, p.out.tail(usize::MAX));
        }
        eprintln!("whole logs in {}", dir.display());
        panic!("{e:#}");
    }
}

/// The default model: `SHARDSWARM_MODEL`, else the `fetch-model` cache. Fails (never skips)
/// with the command to run when it is absent.
pub fn default_model() -> Result<PathBuf> {
    let path = match std::env::var_os("SHARDSWARM_MODEL") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .context("no HOME")?;
            cache.join("shardswarm/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    ensure!(
        path.is_file(),
        "the default model is missing at {} (run `shardswarm fetch-model`, or set SHARDSWARM_MODEL)",
        path.display()
    );
    Ok(path)
}

pub fn model_dir(node_dir: &Path, manifest: &Manifest) -> PathBuf {
    node_dir.join("models").join(&manifest.model_id)
}

/// Every final `shard-N.gguf` under `node_dir` equals the server's file (a `.part` is never
/// renamed early); returns the shards present.
pub fn final_files_intact(manifest: &Manifest, shards: &Path, node_dir: &Path) -> Result<Vec<u32>> {
    let dir = model_dir(node_dir, manifest);
    let mut present = Vec::new();
    for s in &manifest.shards {
        let path = dir.join(&s.filename);
        if !path.exists() {
            continue;
        }
        let got = std::fs::read(&path).with_context(|| path.display().to_string())?;
        let want = std::fs::read(shards.join(&s.filename))?;
        ensure!(
            got == want,
            "{} is a final file that differs from the server's ({} of {} bytes)",
            path.display(),
            got.len(),
            want.len()
        );
        present.push(s.index);
    }
    Ok(present)
}

/// Polls `base`'s status until `done` holds (or `limit` passes), pausing on `proc`'s output.
pub fn await_status(
    proc: &Proc,
    base: &str,
    what: &str,
    limit: Duration,
    mut done: impl FnMut(&Value) -> Result<bool>,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let st = status(base)?;
        if done(&st)? {
            return Ok(st);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {st}"
        );
        proc.out.pause(POLL);
    }
}

/// Waits for the `nth` (1-based) line of `proc` containing `pat`.
pub fn await_line(proc: &Proc, pat: &str, nth: usize, limit: Duration) -> Result<String> {
    let mut seen = 0;
    proc.out
        .wait_for(
            &format!("{pat:?} #{nth} from {}", proc.name),
            Instant::now() + limit,
            |l| {
                if l.contains(pat) {
                    seen += 1;
                }
                (seen >= nth).then(|| l.to_owned())
            },
        )
        .with_context(|| proc.report())
}

/// The end of every scenario: each node's files equal the server's, the swarm is ready.
pub fn all_good(manifest: &Manifest, shards: &Path, nodes: &[&Path], srv_http: &str) -> Result<()> {
    for dir in nodes {
        final_files_intact(manifest, shards, dir)?;
    }
    let st = status(srv_http)?;
    ensure!(
        st["swarm_ready"] == true,
        "swarm not ready at the end: {st}"
    );
    Ok(())
}
