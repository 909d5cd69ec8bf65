//! Issue 10 acceptance: NAT traversal between real `shardswarm` processes in Linux network
//! namespaces (`scripts/netns-nat.sh`): the server on a "public" segment (10.77.0.1), two
//! nodes each behind its own masquerading router (10.77.1.2 behind 10.77.0.11, 10.77.2.2
//! behind 10.77.0.12). Both nodes want every shard while the server's upload is capped low, so
//! they must trade. Each node must find out with AutoNAT that it is not reachable, reserve a
//! relay slot at the server, and get pieces from the other node — directly after a hole punch
//! when the NATs allow it, else relayed. The test prints which path the bytes took.
//!
//! - `cone`: plain MASQUERADE (Linux keeps source ports where it can): hole punching may work;
//!   the test passes either way and says which path it was.
//! - `symmetric`: MASQUERADE `--random-fully` (a new port per flow): hole punching cannot work,
//!   so the bytes must have been relayed. This swarm is private (`--swarm-key`): the relayed
//!   connections pass the same swarm-key gate as direct ones.
//!
//! Needs root, `ip netns`, `iptables` and `curl` (the HTTP APIs of namespaced processes are
//! reachable only inside their namespace); skipped with a message otherwise. Namespaces are
//! named `ssn-<pid><mode>-*` and torn down by a drop guard, also on panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use serde_json::Value;

/// Shards, bytes each (about): 4 × 6 MB.
const SHARDS: u32 = 4;
const SHARD_SIZE: usize = 6_000_000;
/// The server's upload cap: serving every byte to both nodes would take ~50 s, and the nodes
/// only meet once AutoNAT has spoken and both hold a relay slot (~15 s), so they must trade.
/// (Not much lower: with 32 blocks of 256 KiB in flight per node, a seed below ~1 MB/s makes
/// requests outlive the piece engine's 20 s request timeout.)
const SERVER_UPLOAD: &str = "1MB/s";
/// From start to both nodes holding every shard.
const DONE_LIMIT: Duration = Duration::from_secs(300);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/netns-nat.sh")
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!(
            "not root (euid {euid}): network namespaces need root"
        ));
    }
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let probe = format!("ssn-probe-{}", std::process::id());
    if !ok("ip", &["netns", "add", &probe]) {
        return Some("`ip netns add` fails here (no iproute2, or namespaces refused)".into());
    }
    ok("ip", &["netns", "del", &probe]);
    if !ok("iptables", &["--version"]) {
        return Some("iptables is missing (apt-get install -y iptables)".into());
    }
    if !ok("curl", &["--version"]) {
        return Some("curl is missing (apt-get install -y curl)".into());
    }
    None
}

/// The namespaces of one run; torn down when dropped.
struct Topology {
    prefix: String,
}

impl Topology {
    /// Sets the topology up, or says why it is skipped (`None`).
    fn up(mode: &str) -> Result<Option<Topology>> {
        if let Some(why) = unsupported() {
            eprintln!("SKIPPED nat_netns ({mode}): {why}");
            return Ok(None);
        }
        let prefix = format!("ssn-{}{}", std::process::id(), &mode[..1]);
        let topo = Topology { prefix };
        let out = Command::new("bash")
            .arg(script())
            .args(["up", &topo.prefix, mode])
            .output()
            .context("running scripts/netns-nat.sh")?;
        ensure!(
            out.status.success(),
            "netns-nat.sh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(Some(topo))
    }

    /// `ip netns exec PREFIX-ns`.
    fn exec(&self, ns: &str) -> Vec<String> {
        ["ip", "netns", "exec", &format!("{}-{ns}", self.prefix)]
            .map(str::to_owned)
            .to_vec()
    }

    /// GET `url` from inside namespace `ns`.
    fn get(&self, ns: &str, url: &str) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{ns}", self.prefix)])
            .args(["curl", "-sS", "--fail", "--max-time", "5", url])
            .output()
            .context("running curl")?;
        ensure!(
            out.status.success(),
            "GET {url} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).context("non-UTF-8 answer")
    }

    fn json(&self, ns: &str, url: &str) -> Result<Value> {
        let text = self.get(ns, url)?;
        serde_json::from_str(&text).with_context(|| format!("JSON of {url}: {text}"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.prefix])
            .status();
    }
}

/// The sum of the samples of metric `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let ok = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok())?
        })
        .sum::<f64>() as u64
}

/// What one node says about its traffic.
#[derive(Debug)]
struct Traffic {
    from_peer: u64,
    from_server: u64,
    relayed_in: u64,
    hole_punched: u64,
    hole_punch_failed: u64,
    /// Transport of its connection to the other node now, and that connection's addresses.
    other: Option<(String, Vec<String>)>,
}

fn traffic(topo: &Topology, ns: &str, base: &str, other: &str) -> Result<Traffic> {
    let m = topo.get(ns, &format!("{base}/metrics"))?;
    let dl = "shardswarm_torrent_downloaded_bytes_total";
    let peers = topo.json(ns, &format!("{base}/api/peers"))?;
    let list = peers
        .as_array()
        .or_else(|| peers["peers"].as_array())
        .context("peers list")?;
    let other = list.iter().find(|p| p["peer_id"] == other).map(|p| {
        let conns = p["connections"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        (p["transport"].as_str().unwrap_or("?").to_owned(), conns)
    });
    Ok(Traffic {
        from_peer: metric(&m, dl, &[("source", "peer")]),
        from_server: metric(&m, dl, &[("source", "server")]),
        relayed_in: metric(
            &m,
            "shardswarm_piece_path_bytes_total",
            &[("direction", "received"), ("path", "relayed")],
        ),
        hole_punched: metric(&m, "shardswarm_hole_punches_total", &[("status", "direct")]),
        hole_punch_failed: metric(&m, "shardswarm_hole_punches_total", &[("status", "failed")]),
        other,
    })
}

/// The peer ID a process printed in its `listening on …/p2p/<id>` lines.
fn peer_id(p: &Proc) -> Result<String> {
    p.out.wait_for(
        &format!("{}'s peer ID", p.name),
        Instant::now() + START_LIMIT,
        |l| {
            let rest = l.strip_prefix("listening on ")?;
            Some(rest.rsplit_once("/p2p/")?.1.trim().to_owned())
        },
    )
}

fn scenario(mode: &str) {
    let topo = match Topology::up(mode) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => panic!("{e:#}"),
    };
    run(&format!("nat_netns_{mode}"), |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let shards = root.join("shards");
        let manifest = shardswarm_testkit::write_random_shards(&shards, SHARDS, SHARD_SIZE, 7)?;
        let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
        let mut keyed = Vec::new();
        if mode == "symmetric" {
            let key = root.join("swarm.key");
            std::fs::write(&key, "q83vEjRWeJq8ze8SNFZ4mrzN7xI0VniavM3vEjRWeJo=\n")?;
            keyed = vec!["--swarm-key".to_owned(), key.display().to_string()];
        }
        let mut server_args: Vec<String> = [
            "server",
            "--shards-dir",
            &shards.display().to_string(),
            "--data-dir",
            &root.join("server").display().to_string(),
            "--listen",
            "/ip4/10.77.0.1/udp/0/quic-v1",
            "--listen",
            "/ip4/10.77.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--upload-limit",
            SERVER_UPLOAD,
        ]
        .map(str::to_owned)
        .to_vec();
        server_args.extend(keyed.iter().cloned());
        procs.push(Proc::spawn_wrapped(
            "server",
            &topo.exec("pub"),
            server_args,
        )?);
        let srv_http = procs[0].http_base()?;
        let addrs = std::fs::read_to_string(root.join("server/server.addrs"))?;

        let start = Instant::now();
        for i in 1..=2 {
            let mut args = vec!["node".to_owned()];
            for a in addrs.lines().filter(|l| !l.trim().is_empty()) {
                args.extend(["--server".to_owned(), a.trim().to_owned()]);
            }
            args.extend(
                [
                    "--data-dir",
                    &root.join(format!("node{i}")).display().to_string(),
                    "--listen",
                    &format!("/ip4/10.77.{i}.2/udp/0/quic-v1"),
                    "--listen",
                    &format!("/ip4/10.77.{i}.2/tcp/0"),
                    "--http",
                    "127.0.0.1:0",
                    "--shards",
                    "all",
                    "--threads",
                    "1",
                ]
                .map(str::to_owned),
            );
            args.extend(keyed.iter().cloned());
            procs.push(Proc::spawn_wrapped(
                &format!("node{i}"),
                &topo.exec(&format!("h{i}")),
                args,
            )?);
        }
        let ids = [peer_id(&procs[1])?, peer_id(&procs[2])?];
        let bases = [procs[1].http_base()?, procs[2].http_base()?];

        // Each node learns it is behind NAT and reserves a relay slot.
        for p in &procs[1..] {
            let deadline = Instant::now() + Duration::from_secs(90);
            p.out.wait_for("AutoNAT: not reachable", deadline, |l| {
                l.contains("[NAT] 🔒 not reachable").then_some(())
            })?;
            p.out.wait_for("a relay reservation", deadline, |l| {
                l.contains("[NAT] ✅ relay slot reserved").then_some(())
            })?;
        }
        // The server sees each node at its router's public address: the NAT is real.
        let server_peers = topo.json("pub", &format!("{srv_http}/api/peers"))?;
        let seen = server_peers.to_string();
        for (id, router) in ids.iter().zip(["10.77.0.11", "10.77.0.12"]) {
            ensure!(
                seen.contains(id) && seen.contains(&format!("/ip4/{router}/")),
                "the server should see {id} at {router}: {seen}"
            );
        }

        procs[0]
            .out
            .wait_for("[SWARM] ✅ Swarm ready", start + DONE_LIMIT, |l| {
                l.contains(&format!("Swarm ready: all {SHARDS} shards loaded"))
                    .then_some(())
            })?;
        // Both nodes hold everything.
        for (i, base) in bases.iter().enumerate() {
            let ns = format!("h{}", i + 1);
            loop {
                let st = topo.json(&ns, &format!("{base}/api/status"))?;
                if u32s(&own(&st)?["loaded"]).len() == SHARDS as usize {
                    break;
                }
                if Instant::now() > start + DONE_LIMIT {
                    bail!("node{} did not load every shard: {}", i + 1, own(&st)?);
                }
                procs[i + 1].out.pause(Duration::from_millis(500));
            }
        }
        let took = start.elapsed();

        let t1 = traffic(&topo, "h1", &bases[0], &ids[1])?;
        let t2 = traffic(&topo, "h2", &bases[1], &ids[0])?;
        let punched = t1.hole_punched + t2.hole_punched > 0;
        let direct = |t: &Traffic| t.from_peer.saturating_sub(t.relayed_in);
        println!(
            "NAT ({mode}) finished in {:.0} s; catalog {total} bytes",
            took.as_secs_f64()
        );
        for (name, t) in [("node1", &t1), ("node2", &t2)] {
            println!(
                "  {name}: {} B from the server; {} B from the other node: {} B direct, {} B relayed; \
                 hole punches ok/failed {}/{}; other node now over {:?}",
                t.from_server,
                t.from_peer,
                direct(t),
                t.relayed_in.min(t.from_peer),
                t.hole_punched,
                t.hole_punch_failed,
                t.other
            );
        }
        let path = match (punched, t1.relayed_in + t2.relayed_in > 0) {
            (true, true) => "relayed first, then direct after a hole punch (DCUtR)",
            (true, false) => "direct (hole-punched through both NATs by DCUtR)",
            (false, _) => "relayed through the server (no hole punch succeeded)",
        };
        println!("NAT PATH ({mode}): {path}");

        ensure!(
            t2.from_peer > 0,
            "node2 got no piece from node1: {t2:?} (node1: {t1:?})"
        );
        ensure!(
            t1.from_peer + t2.from_peer >= total / 4,
            "too little went node to node ({} + {} of {total} bytes): {t1:?} {t2:?}",
            t1.from_peer,
            t2.from_peer
        );
        if mode == "symmetric" {
            ensure!(
                !punched,
                "a hole punch cannot succeed through a symmetric NAT: {t1:?} {t2:?}"
            );
            ensure!(
                t2.relayed_in > 0,
                "node2's pieces from node1 must have come over the relay: {t2:?}"
            );
        }
        if punched {
            // Each node's connection to the other becomes direct, to the other router's public
            // address (the relayed ones are closed 2 s after the direct one is up).
            for (i, (base, other, router)) in [
                (&bases[0], &ids[1], "10.77.0.12"),
                (&bases[1], &ids[0], "10.77.0.11"),
            ]
            .into_iter()
            .enumerate()
            {
                let ns = format!("h{}", i + 1);
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let t = traffic(&topo, &ns, base, other)?;
                    let direct = t.other.as_ref().is_some_and(|(transport, conns)| {
                        transport != "relayed"
                            && conns.iter().all(|c| !c.contains("/p2p-circuit"))
                            && conns.iter().any(|c| c.contains(&format!("/ip4/{router}/")))
                    });
                    if direct {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "after a hole punch node{}'s connection should be direct to {router}: {t:?}",
                        i + 1
                    );
                    procs[i + 1].out.pause(Duration::from_millis(500));
                }
            }
        }
        Ok(())
    });
    drop(topo);
}

#[test]
fn nodes_behind_cone_nats_trade_pieces_directly_or_relayed() {
    scenario("cone");
}

#[test]
fn nodes_behind_symmetric_nats_trade_pieces_over_the_relay() {
    scenario("symmetric");
}
