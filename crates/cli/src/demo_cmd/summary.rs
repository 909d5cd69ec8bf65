//! The closing numbers: how long the swarm took to become ready, who served the shard bytes
//! (the nodes' Prometheus counter `shardswarm_torrent_downloaded_bytes_total{source=…}`), and
//! how fast the answer came.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::HumanBytes;

use super::{get_text, read_addr};
use crate::chat_cmd::ChatOutcome;
use crate::prom::metric_sum;

/// The nodes' counter of shard payload bytes received, by source.
const DOWNLOADED: &str = "shardswarm_torrent_downloaded_bytes_total";

/// Shard bytes the nodes received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Traffic {
    /// Sent by the server.
    pub(super) from_server: u64,
    /// Sent by other nodes.
    pub(super) from_peers: u64,
    /// Nodes whose metrics could not be read.
    pub(super) unreadable: usize,
    /// Said when no byte came from a peer.
    pub(super) hint: Option<String>,
}

impl Traffic {
    /// Reads every node's `/metrics` (at the address in `DATA_DIR/http.addr`).
    pub(super) fn scrape(node_dirs: &[PathBuf]) -> Traffic {
        let mut t = Traffic::default();
        for dir in node_dirs {
            let text = read_addr(&dir.join("http.addr"))
                .and_then(|addr| get_text(&format!("http://{addr}/metrics")).ok());
            match text {
                Some(text) => {
                    t.from_server +=
                        metric_sum(&text, DOWNLOADED, Some("source=\"server\"")) as u64;
                    t.from_peers += metric_sum(&text, DOWNLOADED, Some("source=\"peer\"")) as u64;
                }
                None => t.unreadable += 1,
            }
        }
        t
    }

    /// `shard bytes received: X from the server, Y from other nodes (P% peer-to-peer)`.
    pub(super) fn line(&self) -> String {
        let total = self.from_server + self.from_peers;
        let mut s = if total == 0 {
            "shard bytes received: none (every node already had its shards)".to_owned()
        } else {
            let why = match &self.hint {
                Some(hint) if self.from_peers == 0 => format!(": {hint}"),
                _ => String::new(),
            };
            format!(
                "shard bytes received: {} from the server, {} from other nodes ({:.0}% peer-to-peer{why})",
                HumanBytes(self.from_server),
                HumanBytes(self.from_peers),
                self.from_peers as f64 * 100.0 / total as f64
            )
        };
        if self.unreadable > 0 {
            s.push_str(&format!(
                " [metrics of {} node(s) unreadable]",
                self.unreadable
            ));
        }
        s
    }
}

/// Why no node fed another, when every shard has a single holder, and the smallest `--nodes`
/// above `nodes` whose windows (`ceil(shards/nodes)` each) overlap.
pub(super) fn replication_hint(shards: u32, nodes: u32) -> Option<String> {
    let more = (nodes + 1..=nodes + shards + 1).find(|&k| k * shards.div_ceil(k) > shards)?;
    Some(format!(
        "every node holds shards no other node has; with --nodes {more} they overlap and nodes \
         feed each other"
    ))
}

/// `swarm ready in S s: K nodes hold N shards (B)`.
pub(super) fn ready_line(elapsed: Duration, nodes: usize, shards: u32, bytes: u64) -> String {
    format!(
        "swarm ready in {:.1} s: {nodes} nodes hold {shards} shards ({})",
        elapsed.as_secs_f64(),
        HumanBytes(bytes)
    )
}

/// `answer: N tokens in S s (R tok/s), first token after F s`.
pub(super) fn answer_line(o: &ChatOutcome) -> String {
    let mut s = format!(
        "answer: {} tokens in {:.2} s ({:.1} tok/s)",
        o.tokens,
        o.elapsed.as_secs_f64(),
        o.tokens_per_sec()
    );
    if let Some(f) = o.first_token {
        s.push_str(&format!(", first token after {:.2} s", f.as_secs_f64()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_line_gives_the_peer_share() {
        let t = Traffic {
            from_server: 1000,
            from_peers: 3000,
            unreadable: 0,
            hint: Some("unused".into()),
        };
        assert!(t.line().ends_with("(75% peer-to-peer)"), "{}", t.line());
        assert!(Traffic::default().line().contains("none"));
        let t = Traffic {
            from_server: 1000,
            hint: replication_hint(8, 4),
            ..Traffic::default()
        };
        assert!(
            t.line().ends_with(
                "(0% peer-to-peer: every node holds shards no other node has; \
                 with --nodes 5 they overlap and nodes feed each other)"
            ),
            "{}",
            t.line()
        );
    }

    #[test]
    fn the_hint_names_the_first_node_count_with_overlapping_windows() {
        let more = |s, n| {
            replication_hint(s, n)
                .and_then(|h| {
                    h.split("--nodes ")
                        .nth(1)
                        .map(|x| x.split(' ').next().map(str::to_owned))
                })
                .flatten()
        };
        assert_eq!(more(8, 4).as_deref(), Some("5"));
        assert_eq!(more(8, 8).as_deref(), Some("9"));
        assert_eq!(
            more(8, 7).as_deref(),
            Some("9"),
            "7 and 8 nodes: one window each"
        );
        assert_eq!(more(1, 1).as_deref(), Some("2"));
    }

    #[test]
    fn ready_and_answer_lines() {
        assert_eq!(
            ready_line(Duration::from_millis(12_340), 4, 8, 2048),
            "swarm ready in 12.3 s: 4 nodes hold 8 shards (2.00 KiB)"
        );
        let o = ChatOutcome {
            text: "hi".into(),
            tokens: 10,
            elapsed: Duration::from_secs(2),
            first_token: Some(Duration::from_millis(500)),
            finish_reason: None,
        };
        assert_eq!(
            answer_line(&o),
            "answer: 10 tokens in 2.00 s (5.0 tok/s), first token after 0.50 s"
        );
    }
}
