//! Route planning: which peer runs which shards, for one session. Pure.
//!
//! Given the live holders of every shard and a cost per peer (measured latency plus load),
//! [`plan`] picks the cheapest chain of hops that covers shards `0..total` in order. A peer that
//! holds several consecutive shards runs them in one hop, so fewer hops win unless a hop is
//! costlier than the ones it saves.

use std::collections::{BTreeMap, HashSet};

use crate::frame::Hop;

/// Who has loaded which shard.
pub type Holders = BTreeMap<u32, Vec<String>>;

/// No route exists: these shards have no usable holder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no live holder for shards {missing:?}")]
pub struct NoRoute {
    /// The shards nobody usable holds.
    pub missing: Vec<u32>,
}

/// The cheapest route over shards `0..total`, skipping `excluded` peers. `cost(peer)` is the
/// price of one hop through `peer` (finite, non-negative); ties go to the peer listed first.
pub fn plan(
    total: u32,
    holders: &Holders,
    excluded: &HashSet<String>,
    cost: impl Fn(&str) -> f64,
) -> Result<Vec<Hop>, NoRoute> {
    let usable = |s: u32| -> Vec<&String> {
        holders
            .get(&s)
            .map(|v| v.iter().filter(|p| !excluded.contains(*p)).collect())
            .unwrap_or_default()
    };
    let missing: Vec<u32> = (0..total).filter(|&s| usable(s).is_empty()).collect();
    if total == 0 || !missing.is_empty() {
        return Err(NoRoute { missing });
    }
    let holds = |p: &str, s: u32| usable(s).iter().any(|q| q.as_str() == p);
    // best[s] = (cost, hop) of the cheapest route over shards s..total.
    let n = total as usize;
    let mut best: Vec<Option<(f64, Hop)>> = vec![None; n + 1];
    let mut tail_cost = vec![f64::INFINITY; n + 1];
    tail_cost[n] = 0.0;
    for s in (0..total).rev() {
        for p in usable(s) {
            let c = cost(p).max(0.0);
            let mut end = s + 1;
            while end < total && holds(p, end) {
                end += 1;
            }
            // The hop may stop anywhere in s+1..=end; a shorter one can pair with a cheaper tail.
            for stop in s + 1..=end {
                let total_cost = c + tail_cost[stop as usize];
                if total_cost < tail_cost[s as usize] {
                    tail_cost[s as usize] = total_cost;
                    best[s as usize] = Some((
                        total_cost,
                        Hop {
                            peer: p.clone(),
                            shards: s..stop,
                        },
                    ));
                }
            }
        }
    }
    let mut route = Vec::new();
    let mut s = 0u32;
    while s < total {
        let Some((_, hop)) = best[s as usize].clone() else {
            return Err(NoRoute { missing: vec![s] });
        };
        s = hop.shards.end;
        route.push(hop);
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(list: &[(u32, &[&str])]) -> Holders {
        list.iter()
            .map(|(s, ps)| (*s, ps.iter().map(|p| (*p).to_owned()).collect()))
            .collect()
    }

    fn hops(route: &[Hop]) -> Vec<(String, u32, u32)> {
        route
            .iter()
            .map(|h| (h.peer.clone(), h.shards.start, h.shards.end))
            .collect()
    }

    #[test]
    fn consecutive_shards_of_one_peer_are_one_hop() {
        let h = holders(&[(0, &["a"]), (1, &["a"]), (2, &["b"]), (3, &["b", "c"])]);
        let r = plan(4, &h, &HashSet::new(), |_| 1.0).expect("route");
        assert_eq!(hops(&r), vec![("a".into(), 0, 2), ("b".into(), 2, 4)]);
    }

    #[test]
    fn cheaper_replicas_win_and_exclusions_are_honoured() {
        let h = holders(&[(0, &["a"]), (1, &["b", "c"]), (2, &["d"])]);
        let cost = |p: &str| if p == "b" { 5.0 } else { 1.0 };
        let r = plan(3, &h, &HashSet::new(), cost).expect("route");
        assert_eq!(r[1].peer, "c");
        let excluded: HashSet<String> = ["c".to_owned()].into();
        let r = plan(3, &h, &excluded, cost).expect("route");
        assert_eq!(r[1].peer, "b");
        let excluded: HashSet<String> = ["b".to_owned(), "c".to_owned()].into();
        assert_eq!(
            plan(3, &h, &excluded, cost),
            Err(NoRoute { missing: vec![1] })
        );
    }

    #[test]
    fn a_costly_long_hop_is_split_when_that_is_cheaper() {
        // "a" holds everything but is slow; "b" and "c" tile it with cheaper hops.
        let h = holders(&[(0, &["a", "b"]), (1, &["a", "c"])]);
        let r = plan(
            2,
            &h,
            &HashSet::new(),
            |p| if p == "a" { 10.0 } else { 1.0 },
        )
        .expect("route");
        assert_eq!(hops(&r), vec![("b".into(), 0, 1), ("c".into(), 1, 2)]);
        let r = plan(2, &h, &HashSet::new(), |p| if p == "a" { 1.5 } else { 1.0 }).expect("route");
        assert_eq!(hops(&r), vec![("a".into(), 0, 2)]);
    }

    #[test]
    fn missing_shards_are_named() {
        let h = holders(&[(0, &["a"]), (2, &[])]);
        assert_eq!(
            plan(3, &h, &HashSet::new(), |_| 1.0),
            Err(NoRoute {
                missing: vec![1, 2]
            })
        );
    }
}
