//! The tables of `bench distribute`: every run, the medians, the ratios; and the single-stream
//! comparison. Markdown, so they can be pasted into `docs/BENCHMARKS.md`.

use std::fmt::Write as _;

use super::MB;

/// Swarm (nodes fetch from anyone) or star (nodes fetch from the server only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Swarm,
    Star,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::Swarm => "swarm",
            Mode::Star => "star",
        }
    }
}

/// One run's outcome.
#[derive(Debug, Clone)]
pub(super) struct RunResult {
    pub(super) mode: Mode,
    /// Launch of the nodes until the last node held every shard.
    pub(super) secs: f64,
    /// Launch of the nodes until the first node held every shard.
    pub(super) first_secs: f64,
    pub(super) server_uploaded: u64,
    pub(super) from_server: u64,
    pub(super) from_peers: u64,
}

/// The single-stream run's outcome.
pub(super) struct SingleStream {
    pub(super) secs: f64,
    pub(super) transfer_secs: f64,
}

/// The markdown table of every run, the medians and the ratios.
pub(super) fn distribution(
    results: &[RunResult],
    total: u64,
    shards: u32,
    nodes: usize,
    cap: u64,
) -> String {
    let copies = |b: u64| b as f64 / total as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n(a) swarm vs (b) star: {nodes} nodes, {:.1} MB in {shards} files, server upload cap {:.1} MB/s",
        total as f64 / MB,
        cap as f64 / MB
    );
    let _ = writeln!(
        out,
        "| run | mode | all nodes done (s) | first node done (s) | server sent (copies) | nodes got from server (MB) | nodes got from peers (MB) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for (i, r) in results.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            i / 2 + 1,
            r.mode.name(),
            r.secs,
            r.first_secs,
            copies(r.server_uploaded),
            r.from_server as f64 / MB,
            r.from_peers as f64 / MB
        );
    }
    let med = |mode: Mode, f: &dyn Fn(&RunResult) -> f64| {
        median(results.iter().filter(|r| r.mode == mode).map(f).collect())
    };
    for mode in [Mode::Swarm, Mode::Star] {
        let _ = writeln!(
            out,
            "| median | {} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} |",
            mode.name(),
            med(mode, &|r| r.secs),
            med(mode, &|r| r.first_secs),
            med(mode, &|r| copies(r.server_uploaded)),
            med(mode, &|r| r.from_server as f64 / MB),
            med(mode, &|r| r.from_peers as f64 / MB)
        );
    }
    let swarm = med(Mode::Swarm, &|r| r.secs);
    let star = med(Mode::Star, &|r| r.secs);
    let ideal_star = nodes as f64 * total as f64 / cap as f64;
    let one_copy = total as f64 / cap as f64;
    let _ = writeln!(
        out,
        "swarm / star = {:.2}; swarm / ideal star = {:.2} (ideal star = {nodes} x {:.1} MB / {:.1} MB/s = {ideal_star:.1} s; one copy alone {one_copy:.1} s)",
        swarm / star,
        swarm / ideal_star,
        total as f64 / MB,
        cap as f64 / MB
    );
    let _ = writeln!(
        out,
        "server sent (median copies): swarm {:.2}, star {:.2}",
        med(Mode::Swarm, &|r| copies(r.server_uploaded)),
        med(Mode::Star, &|r| copies(r.server_uploaded))
    );
    out
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The (c) table: the piece protocol against the raw streams.
pub(super) fn single_stream(
    piece: &SingleStream,
    raw_quic: f64,
    raw_tcp: f64,
    total_bytes: u64,
) -> String {
    let mut out = String::new();
    let mbps = |secs: f64| total_bytes as f64 / MB / secs;
    let _ = writeln!(
        out,
        "\n(c) single stream, {:.1} MB, no upload cap",
        total_bytes as f64 / MB
    );
    let _ = writeln!(out, "| path | time (s) | MB/s |");
    let _ = writeln!(out, "|---|---:|---:|");
    let _ = writeln!(
        out,
        "| piece protocol, node launch → all shards verified | {:.2} | {:.1} |",
        piece.secs,
        mbps(piece.secs)
    );
    let _ = writeln!(
        out,
        "| piece protocol, first byte seen → all shards verified | {:.2} | {:.1} |",
        piece.transfer_secs,
        mbps(piece.transfer_secs)
    );
    let _ = writeln!(
        out,
        "| raw libp2p QUIC stream (one stream, 1 MiB writes) | {raw_quic:.2} | {:.1} |",
        mbps(raw_quic)
    );
    let _ = writeln!(
        out,
        "| raw TCP socket copy (tokio, 1 MiB writes) | {raw_tcp:.2} | {:.1} |",
        mbps(raw_tcp)
    );
    let _ = writeln!(
        out,
        "piece / raw QUIC = {:.2} (from first byte: {:.2}); piece / raw TCP = {:.2}",
        raw_quic / piece.secs,
        raw_quic / piece.transfer_secs,
        raw_tcp / piece.secs
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn report_gives_medians_copies_and_ratios() {
        let run = |mode, secs, up| RunResult {
            mode,
            secs,
            first_secs: secs / 2.0,
            server_uploaded: up,
            from_server: up,
            from_peers: 0,
        };
        let total = 100_000_000;
        let results = [
            run(Mode::Swarm, 10.0, 110_000_000),
            run(Mode::Star, 20.0, 400_000_000),
            run(Mode::Swarm, 12.0, 120_000_000),
            run(Mode::Star, 22.0, 400_000_000),
        ];
        let text = distribution(&results, total, 8, 4, 20_000_000);
        assert!(text.contains("| median | swarm | 11.00 |"), "{text}");
        assert!(text.contains("| median | star | 21.00 |"), "{text}");
        // 11 / 21 and 11 / (4 x 100 MB / 20 MB/s = 20 s)
        assert!(
            text.contains("swarm / star = 0.52; swarm / ideal star = 0.55"),
            "{text}"
        );
        assert!(text.contains("swarm 1.15, star 4.00"), "{text}");
    }
}
