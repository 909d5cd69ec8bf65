//! Watching the swarm come together: the server's `GET /api/status` is polled until every
//! shard is loaded somewhere (or the deadline passes, or a child dies). Progress per node
//! (shards loaded and verified, bytes) is drawn as bars when stderr is a terminal, else written
//! as a plain line whenever a node's shard sets change.
//!
//! Peers are named after their process (`node-3`): each node's own status (at the address in
//! its `http.addr`) says its peer ID.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};
use shardswarm_proto::{NodeStatus, Role, SwarmStatus};

use super::children::Children;
use super::{get_status, read_addr};

/// Interval between two status polls.
const POLL: Duration = Duration::from_millis(250);

/// A node process of the demo.
pub(super) struct NodeProc {
    /// `node-3`.
    pub(super) name: String,
    /// Its `--data-dir`.
    pub(super) data_dir: PathBuf,
}

/// One node's progress as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    /// Shards loaded.
    pub(super) loaded: Vec<u32>,
    /// Shards complete and verified.
    pub(super) verified: Vec<u32>,
    /// Shards being downloaded.
    pub(super) downloading: Vec<u32>,
    /// Verified bytes of the shards it holds or fetches.
    pub(super) have: u64,
    /// Size of the shards it holds or fetches.
    pub(super) total: u64,
}

impl Row {
    /// The row of `node` within `status` (shard sizes come from the catalog).
    pub(super) fn of(node: &NodeStatus, status: &SwarmStatus) -> Row {
        let size = |i: u32| {
            status
                .shards
                .iter()
                .find(|s| s.index == i)
                .map_or(0, |s| s.size)
        };
        let verified: BTreeSet<u32> = node.verified.iter().copied().collect();
        let mut all: BTreeSet<u32> = verified.clone();
        all.extend(node.loaded.iter().copied());
        let mut have: u64 = all.iter().map(|&i| size(i)).sum();
        let mut total = have;
        let mut downloading = Vec::new();
        for d in &node.downloading {
            if all.insert(d.index) {
                have += d.have.min(d.size);
                total += d.size;
                downloading.push(d.index);
            }
        }
        let mut loaded = node.loaded.clone();
        loaded.sort_unstable();
        Row {
            loaded,
            verified: verified.into_iter().collect(),
            downloading,
            have,
            total,
        }
    }

    /// `loaded [0, 1]  verified [0, 1]  downloading [2]`.
    pub(super) fn sets(&self) -> String {
        let mut s = format!("loaded {:?}  verified {:?}", self.loaded, self.verified);
        if !self.downloading.is_empty() {
            let _ = write!(s, "  downloading {:?}", self.downloading);
        }
        s
    }
}

/// `loaded/N`: shards loaded by at least one node.
fn loaded_count(status: &SwarmStatus) -> u64 {
    status
        .shards
        .iter()
        .filter(|s| !s.loaded_by.is_empty())
        .count() as u64
}

/// A bar style from a template known to be valid.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The display and the peer-ID-to-name map (bars and printed lines are keyed by peer ID).
pub(super) struct Watch<'a> {
    children: &'a Children,
    mp: &'a MultiProgress,
    interactive: bool,
    nodes: &'a [NodeProc],
    names: BTreeMap<String, String>,
    swarm_bar: Option<ProgressBar>,
    bars: BTreeMap<String, ProgressBar>,
    printed: BTreeMap<String, String>,
    printed_loaded: Option<u64>,
}

impl<'a> Watch<'a> {
    /// A display on `mp` (bars when `interactive`, else plain lines) for these nodes.
    pub(super) fn new(
        children: &'a Children,
        mp: &'a MultiProgress,
        interactive: bool,
        nodes: &'a [NodeProc],
    ) -> Self {
        Watch {
            children,
            mp,
            interactive,
            nodes,
            names: BTreeMap::new(),
            swarm_bar: None,
            bars: BTreeMap::new(),
            printed: BTreeMap::new(),
            printed_loaded: None,
        }
    }

    /// The name of a peer: its node's, else the end of its ID.
    pub(super) fn name(&self, peer_id: &str) -> String {
        self.names.get(peer_id).cloned().unwrap_or_else(|| {
            let n = peer_id.len();
            format!("…{}", &peer_id[n.saturating_sub(8)..])
        })
    }

    /// Asks the nodes not yet named for their peer ID (those whose HTTP API is up).
    fn learn_names(&mut self) {
        for node in self.nodes {
            if self.names.values().any(|n| *n == node.name) {
                continue;
            }
            let Some(addr) = read_addr(&node.data_dir.join("http.addr")) else {
                continue;
            };
            let Ok(st) = get_status(&format!("http://{addr}/api/status")) else {
                continue;
            };
            if let Some(me) = st.nodes.first() {
                self.names.insert(me.peer_id.clone(), node.name.clone());
            }
        }
    }

    /// Polls `server` (a base URL) until the swarm of `shards` shards is ready; fails when a
    /// child exits or `limit` passes (naming the shards still missing).
    pub(super) fn until_ready(
        &mut self,
        server: &str,
        shards: u32,
        limit: Duration,
    ) -> Result<SwarmStatus> {
        let deadline = Instant::now() + limit;
        let url = format!("{server}/api/status");
        let mut last: Option<SwarmStatus> = None;
        let mut last_err = None;
        loop {
            self.children.check_alive()?;
            self.learn_names();
            match get_status(&url) {
                Ok(st) => {
                    self.show(&st);
                    let ready = st.swarm_ready && st.total_shards == shards;
                    last = Some(st);
                    if ready {
                        self.clear();
                        return last.ok_or_else(|| anyhow::anyhow!("no status"));
                    }
                }
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                self.clear();
                bail!(
                    "the swarm was not ready after {} s: {}",
                    limit.as_secs(),
                    self.why_not(last.as_ref(), last_err)
                );
            }
            self.children.pause(POLL)?;
        }
    }

    fn why_not(&self, last: Option<&SwarmStatus>, err: Option<anyhow::Error>) -> String {
        let Some(st) = last else {
            return match err {
                Some(e) => format!("the server's status never answered ({e:#})"),
                None => "no status yet".to_owned(),
            };
        };
        let mut s = if st.total_shards == 0 {
            "the server has no catalog yet".to_owned()
        } else {
            format!(
                "shards {:?} of {} are loaded by no node",
                st.missing, st.total_shards
            )
        };
        for n in st.nodes.iter().filter(|n| n.role == Role::Node) {
            let _ = write!(
                s,
                "\n  {:<8} {}",
                self.name(&n.peer_id),
                Row::of(n, st).sets()
            );
        }
        s
    }

    /// Draws (or prints) the progress in `st`.
    fn show(&mut self, st: &SwarmStatus) {
        let loaded = loaded_count(st);
        let total = u64::from(st.total_shards);
        let rows: Vec<(String, String, Row)> = st
            .nodes
            .iter()
            .filter(|n| n.role == Role::Node)
            .map(|n| (n.peer_id.clone(), self.name(&n.peer_id), Row::of(n, st)))
            .collect();
        if self.interactive {
            let bar = self.swarm_bar.get_or_insert_with(|| {
                let b = self.mp.add(ProgressBar::new(total));
                b.set_style(style("{prefix:>8} [{bar:30.green/blue}] {msg}"));
                b.set_prefix("swarm");
                b
            });
            bar.set_length(total);
            bar.set_position(loaded);
            bar.set_message(format!("{loaded}/{total} shards loaded"));
            for (peer, name, row) in rows {
                let bar = self
                    .bars
                    .entry(peer)
                    .or_insert_with(|| self.mp.add(ProgressBar::new(0)));
                bar.set_prefix(name);
                if row.total == 0 {
                    // Nothing assigned yet: an empty bar would be drawn full.
                    bar.set_style(style("{prefix:>8}  {msg}"));
                    bar.set_message("waiting for its shards");
                } else {
                    bar.set_style(style(
                        "{prefix:>8} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {msg}",
                    ));
                    bar.set_length(row.total);
                    bar.set_position(row.have);
                    bar.set_message(row.sets());
                }
            }
        } else {
            if self.printed_loaded != Some(loaded) && total > 0 {
                self.printed_loaded = Some(loaded);
                eprintln!("[demo] {loaded}/{total} shards loaded");
            }
            for (peer, name, row) in rows {
                if row.total == 0 && row.loaded.is_empty() {
                    continue;
                }
                let line = row.sets();
                if self.printed.get(&peer) != Some(&line) {
                    eprintln!(
                        "[demo]   {name:<8} {line}  ({}/{})",
                        HumanBytes(row.have),
                        HumanBytes(row.total)
                    );
                    self.printed.insert(peer, line);
                }
            }
        }
    }

    fn clear(&mut self) {
        for (_, b) in std::mem::take(&mut self.bars) {
            b.finish_and_clear();
            self.mp.remove(&b);
        }
        if let Some(b) = self.swarm_bar.take() {
            b.finish_and_clear();
            self.mp.remove(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use shardswarm_proto::{DownloadProgress, InfoHash, ShardStatus};

    use super::*;

    fn status() -> SwarmStatus {
        SwarmStatus {
            total_shards: 3,
            shards: (0..3)
                .map(|i| ShardStatus {
                    index: i,
                    filename: format!("shard-{i}.gguf"),
                    info_hash: InfoHash([0; 20]),
                    size: 100 * u64::from(i + 1),
                    layers: [i, i + 1],
                    loaded_by: if i == 0 { vec!["a".into()] } else { vec![] },
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_row_counts_verified_sizes_plus_partial_downloads_once() {
        let node = NodeStatus {
            peer_id: "a".into(),
            loaded: vec![0],
            verified: vec![0],
            downloading: vec![
                DownloadProgress {
                    index: 2,
                    have: 50,
                    size: 300,
                },
                // A stale progress entry for a verified shard does not count twice.
                DownloadProgress {
                    index: 0,
                    have: 10,
                    size: 100,
                },
            ],
            ..Default::default()
        };
        let st = status();
        let row = Row::of(&node, &st);
        assert_eq!((row.have, row.total), (150, 400));
        assert_eq!(row.downloading, vec![2]);
        assert_eq!(row.sets(), "loaded [0]  verified [0]  downloading [2]");
        assert_eq!(loaded_count(&st), 1);
    }
}
