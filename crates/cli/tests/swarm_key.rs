//! Issue 9 with real `shardswarm` processes on 127.0.0.1: a `server --swarm-key FILE
//! --api-key K`; a `node` without the key is refused (the server logs it, the node says what it
//! may be) and never syncs, while a node with the key syncs; `status` needs `--api-key`; a
//! malformed key file stops the server with a one-line reason.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;

const API_KEY: &str = "cli-test-key";

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

fn status_cmd(base: &str, key: Option<&str>) -> Result<std::process::Output> {
    let mut cmd = Command::new(BIN);
    cmd.args(["status", "--http", base, "--json"])
        .env_remove("SHARDSWARM_API_KEY");
    if let Some(k) = key {
        cmd.args(["--api-key", k]);
    }
    cmd.output().context("running shardswarm status")
}

#[test]
fn a_node_without_the_swarm_key_is_refused_and_never_syncs() {
    run("swarm_key", |procs| {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path();
        let key_file = root.join("swarm.key");
        // What `head -c 32 /dev/urandom | base64 > swarm.key` writes.
        std::fs::write(&key_file, "q83vEjRWeJq8ze8SNFZ4mrzN7xI0VniavM3vEjRWeJo=\n")?;
        let key = key_file.display().to_string();
        let (srv, _, base) = server(
            root,
            2,
            20_000,
            &["--swarm-key", &key, "--api-key", API_KEY],
        )?;
        procs.push(srv);

        // Without the key: the server refuses the node by its peer ID, the node (which cannot
        // tell a refusal from a drop) says what it may be, each time it redials, and no catalog
        // ever arrives.
        let args = node_args(root, &root.join("keyless"), &["--shards", "all"])?;
        procs.push(Proc::spawn("keyless node", args)?);
        let keyless = &procs[1];
        let id = peer_id(keyless)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        procs[0].out.wait_for("the refusal", deadline, |l| {
            (l.contains("connection refused: swarm key mismatch")
                && l.contains(&id)
                && l.contains("no_key"))
            .then_some(())
        })?;
        let mut hints = 0;
        keyless
            .out
            .wait_for("the node's second hint", deadline, |l| {
                if l.contains("it may run a private swarm") {
                    hints += 1;
                }
                (hints >= 2).then_some(())
            })?;
        let synced = keyless
            .out
            .collect(|l| l.contains("available file(s)").then_some(()));
        ensure!(synced.is_empty(), "the keyless node got a catalog");

        // With the key: synced, downloaded, loaded: the swarm is ready.
        let args = node_args(
            root,
            &root.join("keyed"),
            &["--shards", "all", "--swarm-key", &key],
        )?;
        procs.push(Proc::spawn("keyed node", args)?);
        let deadline = Instant::now() + Duration::from_secs(40);
        procs[2].out.wait_for("the catalog", deadline, |l| {
            l.contains("✓ Received 2 available file(s)").then_some(())
        })?;
        procs[0].out.wait_for("swarm ready", deadline, |l| {
            l.contains("Swarm ready: all 2 shards loaded").then_some(())
        })?;
        let synced = procs[1]
            .out
            .collect(|l| l.contains("available file(s)").then_some(()));
        ensure!(synced.is_empty(), "the keyless node got a catalog");

        // The HTTP API asks for the key; `status --api-key` sends it.
        let out = status_cmd(&base, None)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("401"),
            "status without the key: {err}"
        );
        let out = status_cmd(&base, Some(API_KEY))?;
        ensure!(
            out.status.success(),
            "status with the key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let st: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(st["swarm_ready"] == true, "{st}");
        ensure!(
            !st["nodes"]
                .as_array()
                .context("nodes")?
                .iter()
                .any(|n| n["peer_id"] == id.as_str()),
            "the server lists the keyless node: {st}"
        );

        // A key file that is not 32 bytes of base64: the server does not start, and says why.
        let bad = root.join("bad.key");
        std::fs::write(&bad, "c2hvcnQ=\n")?;
        let out = Command::new(BIN)
            .args(["server", "--shards-dir"])
            .arg(root.join("shards"))
            .arg("--data-dir")
            .arg(root.join("bad-server"))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"])
            .arg("--swarm-key")
            .arg(&bad)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains("bad.key") && err.contains("5 bytes"),
            "server with a bad key file: {err}"
        );
        Ok(())
    });
}
