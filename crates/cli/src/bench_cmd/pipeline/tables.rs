//! The report of `shardswarm bench pipeline`: what one run measured, the medians of each path,
//! the markdown tables and the verdict against the target.

use std::fmt::Write as _;

use crate::bench_cmd::report::median;

use super::TARGET_RATIO;

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `generate` on the whole model.
    Single,
    /// The `--nodes` swarm.
    Pipeline,
    /// One node holding every shard.
    OneNode,
}

impl Kind {
    pub(super) fn label(self, nodes: usize) -> String {
        match self {
            Kind::Single => "single process (generate)".to_owned(),
            Kind::Pipeline => format!("pipeline, {nodes} nodes"),
            Kind::OneNode => "pipeline, 1 node (--shards all)".to_owned(),
        }
    }
}

/// One run's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    pub(super) kind: Kind,
    /// Decode tokens/s.
    pub(super) decode: f64,
    /// Tokens generated.
    pub(super) tokens: usize,
    /// Single: the prefill's compute time; pipeline: request sent → first text chunk.
    pub(super) first_ms: f64,
    /// Stages in the route (a pipeline run whose route line was found).
    pub(super) hops: Option<usize>,
    /// CPU seconds of all the swarm's processes per second of the request (pipeline runs).
    pub(super) busy: Option<f64>,
    /// CPU milliseconds of the server (gateway: HTTP, SSE, detokenizing) per generated token.
    pub(super) gateway_ms: Option<f64>,
}

/// What the report states about the run besides the samples.
pub(super) struct Conditions {
    pub(super) nodes: usize,
    pub(super) shards: u32,
    pub(super) tokens: usize,
    pub(super) runs: usize,
    pub(super) load_before: String,
    pub(super) load_after: String,
    /// Per swarm: the mean libp2p ping RTT (ms) between its server and nodes during the runs,
    /// and how many pings that is.
    pub(super) pings: Vec<(Kind, f64, u64)>,
}

/// Medians of one path.
struct Medians {
    decode: f64,
    ms: f64,
    pub(super) tokens: f64,
    first_ms: f64,
    hops: Option<f64>,
    busy: Option<f64>,
    gateway_ms: Option<f64>,
}

fn medians(samples: &[Sample], kind: Kind) -> Option<Medians> {
    let of: Vec<&Sample> = samples.iter().filter(|s| s.kind == kind).collect();
    if of.is_empty() {
        return None;
    }
    let med = |f: &dyn Fn(&Sample) -> f64| median(of.iter().map(|s| f(s)).collect());
    let hops: Vec<f64> = of.iter().filter_map(|s| s.hops.map(|h| h as f64)).collect();
    let busy: Vec<f64> = of.iter().filter_map(|s| s.busy).collect();
    let gateway: Vec<f64> = of.iter().filter_map(|s| s.gateway_ms).collect();
    let decode = med(&|s| s.decode);
    Some(Medians {
        decode,
        ms: med(&|s| 1e3 / s.decode),
        tokens: med(&|s| s.tokens as f64),
        first_ms: med(&|s| s.first_ms),
        hops: (!hops.is_empty()).then(|| median(hops)),
        busy: (!busy.is_empty()).then(|| median(busy)),
        gateway_ms: (!gateway.is_empty()).then(|| median(gateway)),
    })
}

/// The markdown tables (every run, then medians and overheads) and the verdict line.
pub(super) fn report(samples: &[Sample], c: &Conditions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\npipeline vs single process: {} shards, {} nodes (--threads 1 each), {} tokens per run, \
         greedy; load average {} before, {} after",
        c.shards, c.nodes, c.tokens, c.load_before, c.load_after
    );
    let _ = writeln!(
        out,
        "| run | path | decode (tok/s) | ms/token | tokens | first token (ms) | hops | swarm CPU / wall | gateway CPU ms/token |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let kinds = [Kind::Single, Kind::Pipeline, Kind::OneNode];
    let per_round = kinds
        .iter()
        .filter(|k| samples.iter().any(|s| s.kind == **k))
        .count()
        .max(1);
    for (i, s) in samples.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {} | {:.0} | {} | {} | {} |",
            i / per_round + 1,
            s.kind.label(c.nodes),
            s.decode,
            1e3 / s.decode,
            s.tokens,
            s.first_ms,
            s.hops.map_or("—".to_owned(), |h| h.to_string()),
            s.busy.map_or("—".to_owned(), |b| format!("{b:.2}")),
            s.gateway_ms.map_or("—".to_owned(), |g| format!("{g:.2}"))
        );
    }
    let Some(single) = medians(samples, Kind::Single) else {
        return out;
    };
    let _ = writeln!(
        out,
        "\nmedians of {} runs; overhead per hop = (path − single ms/token) / hops",
        c.runs
    );
    let _ = writeln!(
        out,
        "| path | decode (tok/s) | × single | ms/token | overhead/hop (ms) | hops | tokens | first token (ms) | swarm CPU / wall | gateway CPU ms/token |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for kind in kinds {
        let Some(m) = medians(samples, kind) else {
            continue;
        };
        let per_hop = m.hops.filter(|h| *h > 0.0).map_or("—".to_owned(), |h| {
            format!("{:.1}", (m.ms - single.ms) / h)
        });
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.2}× | {:.1} | {per_hop} | {} | {:.0} | {:.0} | {} | {} |",
            kind.label(c.nodes),
            m.decode,
            m.decode / single.decode,
            m.ms,
            m.hops.map_or("—".to_owned(), |h| format!("{h}")),
            m.tokens,
            m.first_ms,
            m.busy.map_or("—".to_owned(), |b| format!("{b:.2}")),
            m.gateway_ms.map_or("—".to_owned(), |g| format!("{g:.2}"))
        );
    }
    let _ = writeln!(
        out,
        "first token: single = the prefill's compute time (generate's stats line); pipeline = \
         request sent → first text chunk received"
    );
    let _ = writeln!(
        out,
        "swarm CPU / wall: CPU seconds of the server and its nodes per second of the request; the \
         stages run one after another, so below 1 is time when no process ran (waiting on \
         sockets, wake-ups or a busy CPU); gateway CPU: the server process's CPU time per \
         generated token (HTTP, SSE, detokenizing, routing; CPU time is counted in 10 ms ticks)"
    );
    for (kind, rtt, n) in &c.pings {
        let _ = writeln!(
            out,
            "libp2p ping RTT server ↔ nodes during the runs, {}: {rtt:.2} ms (mean of {n})",
            kind.label(c.nodes)
        );
    }
    let pipe = medians(samples, Kind::Pipeline);
    if let (Some(p), Some(one)) = (&pipe, medians(samples, Kind::OneNode)) {
        let _ = write!(
            out,
            "gateway + one hop (1-node pipeline − single): {:.1} ms/token",
            one.ms - single.ms
        );
        match p.hops {
            Some(h) if h > 1.0 => {
                let _ = writeln!(
                    out,
                    "; each further stage boundary ({}-node − 1-node) / ({h} − 1 hops): {:.1} ms/token",
                    c.nodes,
                    (p.ms - one.ms) / (h - 1.0)
                );
            }
            _ => {
                let _ = writeln!(out);
            }
        }
    }
    let paired = paired_ratios(samples, per_round);
    if !paired.is_empty() {
        let lo = paired.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = paired.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "pipeline / single within each round (paired): median {:.2}×, range {lo:.2}–{hi:.2}×",
            median(paired)
        );
    }
    if let Some(p) = pipe {
        let ratio = p.decode / single.decode;
        let _ = writeln!(
            out,
            "pipeline decode / single process = {ratio:.2}× (target ≥ {TARGET_RATIO:.2}× on loopback): {}",
            if ratio >= TARGET_RATIO {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    out
}

/// Per round, the pipeline's decode rate over the single process's.
fn paired_ratios(samples: &[Sample], per_round: usize) -> Vec<f64> {
    samples
        .chunks(per_round)
        .filter_map(|round| {
            let rate = |k: Kind| round.iter().find(|s| s.kind == k).map(|s| s.decode);
            Some(rate(Kind::Pipeline)? / rate(Kind::Single)?)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: Kind, decode: f64, hops: Option<usize>) -> Sample {
        Sample {
            kind,
            decode,
            tokens: 64,
            first_ms: 100.0,
            hops,
            busy: hops.map(|_| 0.9),
            gateway_ms: hops.map(|_| 0.5),
        }
    }

    #[test]
    fn report_gives_ratio_per_hop_overhead_and_verdict() {
        let c = Conditions {
            nodes: 4,
            shards: 8,
            tokens: 64,
            runs: 2,
            load_before: "1.0 1.0 1.0".into(),
            load_after: "2.0 1.0 1.0".into(),
            pings: vec![(Kind::Pipeline, 0.42, 12)],
        };
        // single 20 tok/s = 50 ms; pipeline 16 tok/s = 62.5 ms over 4 hops; 1-node 19 tok/s.
        let samples = [
            sample(Kind::Single, 20.0, None),
            sample(Kind::Pipeline, 16.0, Some(4)),
            sample(Kind::OneNode, 20.0, Some(1)),
            sample(Kind::Pipeline, 16.0, Some(4)),
            sample(Kind::OneNode, 20.0, Some(1)),
            sample(Kind::Single, 20.0, None),
        ];
        let text = report(&samples, &c);
        assert!(
            text.contains(
                "| pipeline, 4 nodes | 16.0 | 0.80× | 62.5 | 3.1 | 4 | 64 | 100 | 0.90 | 0.50 |"
            ),
            "{text}"
        );
        assert!(text.contains("| 2 | pipeline, 1 node"), "{text}");
        assert!(text.contains("4 nodes: 0.42 ms (mean of 12)"), "{text}");
        assert!(
            text.contains("(paired): median 0.80×, range 0.80–0.80×"),
            "{text}"
        );
        assert!(
            text.contains("(1-node pipeline − single): 0.0 ms/token"),
            "{text}"
        );
        assert!(text.contains("(4 − 1 hops): 4.2 ms/token"), "{text}");
        assert!(
            text.contains("= 0.80× (target ≥ 0.70× on loopback): met"),
            "{text}"
        );

        let slow = [
            sample(Kind::Single, 20.0, None),
            sample(Kind::Pipeline, 10.0, None),
        ];
        let text = report(&slow, &c);
        assert!(text.contains("0.50×") && text.contains("NOT met"), "{text}");
        assert!(
            text.contains(
                "| pipeline, 4 nodes | 10.0 | 0.50× | 100.0 | — | — | 64 | 100 | — | — |"
            ),
            "{text}"
        );
    }
}
