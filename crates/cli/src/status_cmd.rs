//! `shardswarm status --http URL [--json]`: the swarm as a table, or the raw status JSON.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use clap::Args;
use shardswarm_proto::SwarmStatus;

/// Flags of `shardswarm status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Base URL of a server's or node's HTTP API, e.g. http://127.0.0.1:7448.
    #[arg(long)]
    http: String,
    /// Print the status JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let base = if args.http.contains("://") {
        args.http.clone()
    } else {
        format!("http://{}", args.http)
    };
    let url = format!("{}/api/status", base.trim_end_matches('/'));
    let body = ureq::get(&url)
        .timeout(std::time::Duration::from_secs(10))
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()
        .context("reading the status")?;
    let status: SwarmStatus =
        serde_json::from_str(&body).with_context(|| format!("{url} did not return a status"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

fn short(peer: &str) -> String {
    let n = peer.len();
    if n > 10 {
        format!("…{}", &peer[n - 8..])
    } else {
        peer.to_owned()
    }
}

/// The status as a human-readable table.
pub(crate) fn table(s: &SwarmStatus) -> String {
    let mut out = String::new();
    let ready = if s.swarm_ready {
        "READY".to_owned()
    } else {
        format!("not ready (missing shards: {:?})", s.missing)
    };
    let _ = writeln!(
        out,
        "model {} ({}), {} shards: {ready}",
        s.model, s.model_id, s.total_shards
    );
    let _ = writeln!(
        out,
        "{:>5}  {:>9}  {:>12}  loaded by",
        "shard", "layers", "bytes"
    );
    for sh in &s.shards {
        let by: Vec<String> = sh.loaded_by.iter().map(|p| short(p)).collect();
        let layers = format!("{}..{}", sh.layers[0], sh.layers[1]);
        let _ = writeln!(
            out,
            "{:>5}  {:>9}  {:>12}  {}",
            sh.index,
            layers,
            sh.size,
            by.join(" ")
        );
    }
    let _ = writeln!(out, "{} peer(s):", s.nodes.len());
    for n in &s.nodes {
        let dl: Vec<String> = n
            .downloading
            .iter()
            .map(|d| format!("{}:{}%", d.index, d.have * 100 / d.size.max(1)))
            .collect();
        let _ = writeln!(
            out,
            "  {:<10} {:?}  verified {:?}  loaded {:?}  downloading [{}]",
            short(&n.peer_id),
            n.role,
            n.verified,
            n.loaded,
            dl.join(" ")
        );
    }
    out
}
