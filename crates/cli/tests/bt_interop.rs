//! Issue 10, "Interop with BitTorrent proper", with real processes on 127.0.0.1:
//! - a regular client (Debian's python3-libtorrent, `scripts/bt_client.py`) downloads a shard
//!   from a node's `--bt-listen` port given the `.torrent` from `shardswarm export-torrent`, and
//!   another from the server's given only the magnet link (BEP 9/10 metadata exchange): both
//!   byte-identical to the source;
//! - the reverse: libtorrent seeds a shard, and a node with `--bt-peer` fetches it while the
//!   server (its only other source) is capped at 1 kB/s; the node's metrics show the bytes came
//!   over the BitTorrent wire, and the file is byte-identical;
//! - `--bt-listen` (no authentication) is refused together with `--swarm-key`.
//!
//! Needs `/usr/bin/python3 -c 'import libtorrent'` (`.ci/run` installs python3-libtorrent); a
//! missing package fails the test with the install command, it never skips.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use sha2::{Digest, Sha256};

const PYTHON: &str = "/usr/bin/python3";
/// How long a libtorrent transfer of a small shard may take on a busy machine.
const TRANSFER_LIMIT: Duration = Duration::from_secs(60);
const SHARD_SIZE: usize = 1_500_000;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bt_client.py")
}

fn require_libtorrent() -> Result<()> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ensure!(
        ok,
        "{PYTHON} cannot import libtorrent: apt-get install -y --no-install-recommends python3-libtorrent (see .ci/run)"
    );
    Ok(())
}

/// The libtorrent helper, killed when dropped; its output lines are captured.
struct Client {
    child: Child,
    out: Arc<Lines>,
}

impl Client {
    fn spawn(args: &[&str]) -> Result<Client> {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting scripts/bt_client.py")?;
        let out = Arc::new(Lines::default());
        if let Some(p) = child.stdout.take() {
            pump(p, out.clone());
        }
        if let Some(p) = child.stderr.take() {
            pump(p, out.clone());
        }
        Ok(Client { child, out })
    }

    fn wait_line<T>(&self, what: &str, pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        self.out
            .wait_for(what, Instant::now() + TRANSFER_LIMIT, pick)
            .with_context(|| format!("--- libtorrent client ---\n{}", self.out.tail(60)))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// `shardswarm export-torrent FILE -o OUT`; returns the magnet link it prints.
fn export_torrent(file: &Path, out: &Path) -> Result<String> {
    let o = Command::new(BIN)
        .arg("export-torrent")
        .arg(file)
        .arg("-o")
        .arg(out)
        .output()
        .context("export-torrent")?;
    ensure!(o.status.success(), "export-torrent failed: {o:?}");
    Ok(String::from_utf8(o.stdout)?.trim().to_owned())
}

/// The address from the `bittorrent listening on ADDR` line.
fn bt_addr(p: &Proc) -> Result<SocketAddr> {
    p.out
        .wait_for(
            "the BitTorrent listener",
            Instant::now() + START_LIMIT,
            |l| {
                l.strip_prefix("bittorrent listening on ")?
                    .trim()
                    .parse()
                    .ok()
            },
        )
        .with_context(|| p.report())
}

/// Downloads with libtorrent from `peer` into `out`; returns the sha256 the client reports and
/// the file it wrote.
fn libtorrent_download(source: &[&str], peer: SocketAddr, out: &Path) -> Result<(String, PathBuf)> {
    let peer = peer.to_string();
    let out_s = out.display().to_string();
    let mut args = vec!["download"];
    args.extend_from_slice(source);
    args.extend(["--peer", &peer, "--out", &out_s, "--timeout", "50"]);
    let client = Client::spawn(&args)?;
    let (sha, path) = client.wait_line("libtorrent's download", |l| {
        let rest = l.strip_prefix("done ")?;
        let (sha, path) = rest.split_once(' ')?;
        Some((sha.to_owned(), PathBuf::from(path)))
    })?;
    Ok((sha, path))
}

/// Waits until the peer's own status lists `shards` as verified.
fn wait_verified(p: &Proc, base: &str, shards: &[u32]) -> Result<()> {
    let deadline = Instant::now() + TRANSFER_LIMIT;
    loop {
        let st = status(base)?;
        let mut v = u32s(&own(&st)?["verified"]);
        v.sort_unstable();
        if shards.iter().all(|s| v.contains(s)) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} verified only {v:?}, want {shards:?}\n{}",
            p.name,
            p.report()
        );
        p.out.pause(POLL);
    }
}

/// `shardswarm_torrent_downloaded_bytes_total{source="…"}`.
fn downloaded_from(base: &str, source: &str) -> Result<u64> {
    let text = get(&format!("{base}/metrics"))?;
    let key = format!("shardswarm_torrent_downloaded_bytes_total{{source=\"{source}\"}}");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&key)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

#[test]
fn libtorrent_downloads_shards_from_a_node_by_torrent_and_from_the_server_by_magnet() {
    run("bt_serve", |procs| {
        require_libtorrent()?;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let (srv, manifest, _srv_http) =
            server(root, 2, SHARD_SIZE, &["--bt-listen", "127.0.0.1:0"])?;
        let srv_bt = bt_addr(&srv)?;
        procs.push(srv);
        let args = node_args(
            root,
            &root.join("node"),
            &["--shards", "all", "--bt-listen", "127.0.0.1:0"],
        )?;
        procs.push(Proc::spawn("node", args)?);
        let node_bt = bt_addr(&procs[1])?;
        let node_http = procs[1].http_base()?;
        wait_verified(&procs[1], &node_http, &[0, 1])?;

        // The .torrent, from the node's BitTorrent port.
        let shards = root.join("shards");
        let s1 = shards.join(&manifest.shards[1].filename);
        let torrent = root.join("shard-1.torrent");
        export_torrent(&s1, &torrent)?;
        let out1 = root.join("lt-torrent");
        let (sha, path) = libtorrent_download(
            &["--torrent", &torrent.display().to_string()],
            node_bt,
            &out1,
        )?;
        let want = sha256_file(&s1)?;
        ensure!(sha == want, "libtorrent reports {sha}, the shard is {want}");
        ensure!(sha256_file(&path)? == want, "{} differs", path.display());

        // A magnet link alone, from the server's: the info dictionary comes over BEP 9.
        let s0 = shards.join(&manifest.shards[0].filename);
        let magnet = export_torrent(&s0, &root.join("shard-0.torrent"))?;
        ensure!(magnet.starts_with("magnet:?xt=urn:btih:"), "{magnet}");
        let out0 = root.join("lt-magnet");
        let (sha, path) = libtorrent_download(&["--magnet", &magnet], srv_bt, &out0)?;
        let want = sha256_file(&s0)?;
        ensure!(sha == want, "libtorrent reports {sha}, the shard is {want}");
        ensure!(sha256_file(&path)? == want, "{} differs", path.display());
        Ok(())
    });
}

#[test]
fn a_node_fetches_a_shard_from_a_libtorrent_seed() {
    run("bt_fetch", |procs| {
        require_libtorrent()?;
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        // The server knows the catalog but can send only 1 kB/s: a 256 KiB block would take
        // minutes, so the shard's bytes must come from the BitTorrent seed.
        let (srv, manifest, _srv_http) = server(root, 2, SHARD_SIZE, &["--upload-limit", "1000"])?;
        procs.push(srv);
        let entry = &manifest.shards[1];
        let source = root.join("shards").join(&entry.filename);
        let seed_dir = root.join("lt-seed");
        std::fs::create_dir_all(&seed_dir)?;
        std::fs::copy(&source, seed_dir.join(&entry.filename))?;
        let torrent = root.join("shard-1.torrent");
        export_torrent(&source, &torrent)?;
        let seed = Client::spawn(&[
            "seed",
            "--torrent",
            &torrent.display().to_string(),
            "--data",
            &seed_dir.display().to_string(),
            "--timeout",
            "90",
        ])?;
        let port: u16 = seed.wait_line("libtorrent's port", |l| {
            l.strip_prefix("listening ")?.trim().parse().ok()
        })?;
        seed.wait_line("libtorrent seeding", |l| (l == "seeding").then_some(()))?;

        let peer = format!("127.0.0.1:{port}");
        let args = node_args(
            root,
            &root.join("node"),
            &["--shards", "1", "--bt-peer", &peer],
        )?;
        procs.push(Proc::spawn("node", args)?);
        let node_http = procs[1].http_base()?;
        wait_verified(&procs[1], &node_http, &[1])?;

        let got = root
            .join("node/models")
            .join(&manifest.model_id)
            .join(&entry.filename);
        ensure!(
            sha256_file(&got)? == sha256_file(&source)?,
            "{} differs from the source",
            got.display()
        );
        let size = std::fs::metadata(&source)?.len();
        let bt = downloaded_from(&node_http, "bittorrent")?;
        let from_server = downloaded_from(&node_http, "server")?;
        ensure!(
            bt >= size,
            "only {bt} of {size} bytes came over the BitTorrent wire (server: {from_server})"
        );
        let uploaded = seed.wait_line("libtorrent's upload count", |l| {
            l.strip_prefix("uploaded ")?
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| n >= size)
        })?;
        ensure!(uploaded >= size, "libtorrent uploaded {uploaded}");
        eprintln!(
            "shard of {size} B: {bt} B over the BitTorrent wire, {from_server} B from the server, \
             libtorrent uploaded {uploaded} B"
        );
        if std::env::var_os("BT_INTEROP_SHOW_LOGS").is_some() {
            eprintln!("{}", procs[1].out.tail(200));
        }
        Ok(())
    });
}

#[test]
fn bt_listen_is_refused_together_with_a_swarm_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let key = tmp.path().join("swarm.key");
    std::fs::write(&key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")?;
    let o = Command::new(BIN)
        .args(["server", "--shards-dir"])
        .arg(tmp.path())
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--bt-listen", "127.0.0.1:0", "--swarm-key"])
        .arg(&key)
        .output()?;
    let err = String::from_utf8_lossy(&o.stderr);
    ensure!(!o.status.success(), "accepted --bt-listen with --swarm-key");
    ensure!(
        err.contains("--bt-listen") && err.contains("--swarm-key"),
        "reason does not name both flags: {err}"
    );
    ensure!(
        !tmp.path().join("data").exists(),
        "the refused server started anyway"
    );
    Ok(())
}
