//! `shardswarm status --http URL [--json] [--watch]`: the swarm as a table (shards × holders,
//! downloads in progress, ready or what is missing), or the raw status JSON; `--watch` redraws
//! it every second until Ctrl-C.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::HumanBytes;
use shardswarm_proto::{NodeStatus, Role, SwarmStatus};

/// How often `--watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Flags of `shardswarm status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Base URL of a server's or node's HTTP API, e.g. http://127.0.0.1:7448.
    #[arg(long)]
    http: String,
    /// Print the status JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Redraw every second, in place, until Ctrl-C.
    #[arg(long)]
    watch: bool,
    /// Bearer token for the HTTP API (the peer's `--api-key`).
    #[arg(long, env = "SHARDSWARM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub(crate) fn run(args: StatusArgs) -> Result<()> {
    let base = if args.http.contains("://") {
        args.http.clone()
    } else {
        format!("http://{}", args.http)
    };
    let url = format!("{}/api/status", base.trim_end_matches('/'));
    if !args.watch {
        let status = fetch(&url, args.api_key.as_deref())?;
        print!("{}", render(&status, args.json)?);
        return Ok(());
    }
    watch(url, args.api_key, args.json)
}

fn fetch(url: &str, api_key: Option<&str>) -> Result<SwarmStatus> {
    let mut req = ureq::get(url).timeout(Duration::from_secs(10));
    if let Some(key) = api_key {
        req = req.set("Authorization", &format!("Bearer {key}"));
    }
    let body = req
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_string()
        .context("reading the status")?;
    serde_json::from_str(&body).with_context(|| format!("{url} did not return a status"))
}

fn render(status: &SwarmStatus, json: bool) -> Result<String> {
    Ok(if json {
        format!("{}\n", serde_json::to_string_pretty(status)?)
    } else {
        table(status)
    })
}

/// Redraws the status every second until Ctrl-C; a failed fetch is shown and retried.
fn watch(url: String, api_key: Option<String>, json: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let clear = std::io::stdout().is_terminal();
    rt.block_on(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                _ = tick.tick() => {}
            }
            let (u, k) = (url.clone(), api_key.clone());
            let got = tokio::task::spawn_blocking(move || fetch(&u, k.as_deref())).await?;
            let body = match got.and_then(|s| render(&s, json)) {
                Ok(text) => text,
                Err(e) => format!("{e:#}\n"),
            };
            let mut out = std::io::stdout().lock();
            if clear {
                // Home, clear the screen, then the frame: one write, so it never flickers half-drawn.
                write!(out, "\x1b[H\x1b[2J")?;
            } else {
                writeln!(out)?;
            }
            write!(
                out,
                "{url} · {} UTC · every {}s · Ctrl-C to stop\n\n{body}",
                clock(SystemTime::now()),
                WATCH_EVERY.as_secs()
            )?;
            out.flush()?;
        }
    })
}

/// `HH:MM:SS` of `t` in UTC.
fn clock(t: SystemTime) -> String {
    let s = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn short(peer: &str) -> String {
    let n = peer.len();
    if n > 10 {
        format!("…{}", &peer[n - 8..])
    } else {
        peer.to_owned()
    }
}

/// `0-2, 5`: a sorted list of indices with runs collapsed; `-` when empty.
fn ranges(list: &[u32]) -> String {
    let mut v = list.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(", ")
    }
}

/// Downloads of `n` still in progress (a status polled before a download ended may still list
/// it: what the node holds wins).
fn in_progress(n: &NodeStatus) -> impl Iterator<Item = &shardswarm_proto::DownloadProgress> {
    n.downloading
        .iter()
        .filter(|d| !n.verified.contains(&d.index) && !n.loaded.contains(&d.index))
}

fn percent(have: u64, size: u64) -> u64 {
    have.min(size) * 100 / size.max(1)
}

/// Rows of cells as aligned columns (two spaces apart); `right[i]` right-aligns column `i`.
fn grid(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c > 0 {
                line.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status as a human-readable table: a readiness line, one row per shard (its holders and
/// downloads in progress), one row per peer.
pub(crate) fn table(s: &SwarmStatus) -> String {
    let mut out = String::new();
    if s.total_shards == 0 {
        let _ = writeln!(out, "no catalog yet: the peer has not synced with a server");
    } else {
        let ready = if s.swarm_ready {
            format!("READY: all {} shards loaded", s.total_shards)
        } else {
            format!(
                "NOT READY: missing shard(s) {} (loaded by no live node)",
                ranges(&s.missing)
            )
        };
        let _ = writeln!(
            out,
            "{} ({}), {} shards · {ready}",
            s.model, s.model_id, s.total_shards
        );
    }
    if !s.shards.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "shard".into(),
            "layers".into(),
            "size".into(),
            "loaded by".into(),
            "downloading".into(),
        ]];
        for sh in &s.shards {
            let by: Vec<String> = sh.loaded_by.iter().map(|p| short(p)).collect();
            let dl: Vec<String> = s
                .nodes
                .iter()
                .flat_map(|n| {
                    in_progress(n)
                        .filter(|d| d.index == sh.index)
                        .map(|d| format!("{} {}%", short(&n.peer_id), percent(d.have, d.size)))
                })
                .collect();
            rows.push(vec![
                sh.index.to_string(),
                format!("{}..{}", sh.layers[0], sh.layers[1]),
                HumanBytes(sh.size).to_string(),
                if by.is_empty() {
                    "-".into()
                } else {
                    by.join(" ")
                },
                if dl.is_empty() {
                    "-".into()
                } else {
                    dl.join(" ")
                },
            ]);
        }
        out.push_str(&grid(&rows, &[true, false, true, false, false]));
    }
    let _ = writeln!(out, "\n{} peer(s)", s.nodes.len());
    let mut rows = vec![vec![
        "peer".into(),
        "role".into(),
        "loaded".into(),
        "verified".into(),
        "downloading".into(),
        "up".into(),
        "down".into(),
    ]];
    for n in &s.nodes {
        let dl: Vec<String> = in_progress(n)
            .map(|d| format!("{} {}%", d.index, percent(d.have, d.size)))
            .collect();
        rows.push(vec![
            short(&n.peer_id),
            match n.role {
                Role::Server => "server".into(),
                Role::Node => "node".into(),
            },
            ranges(&n.loaded),
            ranges(&n.verified),
            if dl.is_empty() {
                "-".into()
            } else {
                dl.join(", ")
            },
            HumanBytes(n.bytes_up).to_string(),
            HumanBytes(n.bytes_down).to_string(),
        ]);
    }
    out.push_str(&grid(
        &rows,
        &[false, false, false, false, false, true, true],
    ));
    out
}

#[cfg(test)]
mod tests {
    use shardswarm_proto::{DownloadProgress, InfoHash, ShardStatus};

    use super::*;

    const SERVER: &str = "12D3KooWServerServerServerServerServerServer1111";
    const A: &str = "12D3KooWNodeAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa2222";
    const B: &str = "12D3KooWNodeBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb3333";

    fn shard(i: u32, loaded_by: &[&str]) -> ShardStatus {
        ShardStatus {
            index: i,
            filename: format!("shard-{i}.gguf"),
            info_hash: InfoHash([i as u8; 20]),
            size: 12_345_678 + u64::from(i) * 1_000_000,
            layers: [i * 8, i * 8 + 8],
            loaded_by: loaded_by.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn node(id: &str, role: Role, loaded: &[u32], verified: &[u32]) -> NodeStatus {
        NodeStatus {
            peer_id: id.into(),
            role,
            addresses: vec![format!("/ip4/127.0.0.1/tcp/7447/p2p/{id}")],
            loaded: loaded.to_vec(),
            verified: verified.to_vec(),
            ..Default::default()
        }
    }

    /// A swarm of 4 shards mid-distribution: B is fetching shards 2 and 3, and still lists
    /// shard 1 as downloading although it has verified it (a stale entry, not shown).
    fn downloading() -> SwarmStatus {
        let mut b = node(B, Role::Node, &[], &[1]);
        b.downloading = vec![
            DownloadProgress {
                index: 1,
                have: 13_345_678,
                size: 13_345_678,
            },
            DownloadProgress {
                index: 2,
                have: 6_000_000,
                size: 14_345_678,
            },
            DownloadProgress {
                index: 3,
                have: 0,
                size: 15_345_678,
            },
        ];
        b.bytes_down = 19_345_678;
        let mut server = node(SERVER, Role::Server, &[], &[0, 1, 2, 3]);
        server.bytes_up = 45_037_034;
        let mut a = node(A, Role::Node, &[0, 1], &[0, 1]);
        a.bytes_down = 25_691_356;
        a.bytes_up = 7_000_000;
        SwarmStatus {
            swarm_ready: false,
            total_shards: 4,
            model: "SmolLM2-135M-Instruct".into(),
            model_id: "b179c9523d0e6a0f".into(),
            missing: vec![2, 3],
            shards: vec![shard(0, &[A]), shard(1, &[A]), shard(2, &[]), shard(3, &[])],
            nodes: vec![server, a, b],
        }
    }

    #[test]
    fn table_while_downloading() {
        insta::assert_snapshot!(table(&downloading()));
    }

    #[test]
    fn table_when_ready() {
        let mut s = downloading();
        s.swarm_ready = true;
        s.missing.clear();
        s.shards[2].loaded_by = vec![B.into()];
        s.shards[3].loaded_by = vec![B.into(), A.into()];
        s.nodes[2].loaded = vec![2, 3];
        s.nodes[2].verified = vec![1, 2, 3];
        s.nodes[2].downloading.clear();
        insta::assert_snapshot!(table(&s));
    }

    #[test]
    fn table_without_a_catalog() {
        let s = SwarmStatus {
            nodes: vec![node(A, Role::Node, &[], &[])],
            ..Default::default()
        };
        insta::assert_snapshot!(table(&s));
    }

    #[test]
    fn ranges_collapse_runs() {
        assert_eq!(ranges(&[]), "-");
        assert_eq!(ranges(&[3, 0, 1, 2, 5, 7, 8]), "0-3, 5, 7-8");
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        let t = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3_723);
        assert_eq!(clock(t), "01:02:03");
    }
}
