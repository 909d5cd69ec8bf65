//! Shard assignment under `--shards auto` (BRIEF §4): a node gets the contiguous window of up to
//! K shards with the fewest live holders. Pure; the server calls it one request at a time, with
//! earlier assignments counted as holders, so simultaneous joiners get different windows.

/// The window of up to `k` contiguous shards out of `holders.len()` that covers the most
/// shards nobody holds, then has the fewest holders in total, then starts first.
/// `holders[i]` counts live holders (loaded or assigned) of shard `i`. Empty when there are no
/// shards or `k == 0`.
pub fn pick_window(holders: &[u32], k: u32) -> Vec<u32> {
    let n = holders.len();
    let w = (k as usize).min(n);
    if w == 0 {
        return Vec::new();
    }
    let best = (0..=n - w)
        .min_by_key(|&s| {
            let win = &holders[s..s + w];
            let uncovered = win.iter().filter(|&&c| c == 0).count();
            let load: u64 = win.iter().map(|&c| u64::from(c)).sum();
            (std::cmp::Reverse(uncovered), load, s)
        })
        .unwrap_or(0);
    (best as u32..(best + w) as u32).collect()
}

/// How many shards fit in half of `free_bytes`, given the largest shard (at least 1).
pub fn shards_that_fit(free_bytes: u64, largest_shard: u64) -> u32 {
    let fit = (free_bytes / 2) / largest_shard.max(1);
    u32::try_from(fit).unwrap_or(u32::MAX).max(1)
}

/// `MemAvailable` from `/proc/meminfo`, if readable.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn simultaneous_joiners_tile_the_model() {
        let mut holders = vec![0u32; 8];
        let mut seen = Vec::new();
        for _ in 0..4 {
            let w = pick_window(&holders, 2);
            for &i in &w {
                holders[i as usize] += 1;
            }
            seen.push(w);
        }
        assert_eq!(seen, vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]);
        assert!(holders.iter().all(|&c| c == 1));
        // A fifth node replicates the least-held window rather than leaving a gap.
        assert_eq!(pick_window(&holders, 2), vec![0, 1]);
    }

    #[test]
    fn a_hole_is_filled_first() {
        assert_eq!(pick_window(&[2, 2, 0, 2, 1], 2), vec![1, 2]);
        assert_eq!(pick_window(&[2, 2, 0, 1, 2], 2), vec![2, 3]);
        assert_eq!(pick_window(&[1, 1, 1], 9), vec![0, 1, 2]);
        assert!(pick_window(&[], 3).is_empty());
        assert!(pick_window(&[0], 0).is_empty());
    }

    #[test]
    fn memory_rule() {
        assert_eq!(shards_that_fit(1000, 100), 5);
        assert_eq!(shards_that_fit(10, 100), 1);
        assert_eq!(shards_that_fit(u64::MAX, 0), u32::MAX);
    }

    proptest! {
        #[test]
        fn window_is_contiguous_bounded_and_covers_a_hole_if_one_exists(
            holders in proptest::collection::vec(0u32..4, 1..24), k in 1u32..6
        ) {
            let w = pick_window(&holders, k);
            prop_assert_eq!(w.len(), (k as usize).min(holders.len()));
            prop_assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
            prop_assert!((*w.last().unwrap() as usize) < holders.len());
            if holders.contains(&0) {
                prop_assert!(w.iter().any(|&i| holders[i as usize] == 0));
            }
        }

        #[test]
        fn joiners_never_overlap_while_shards_are_free(n in 1usize..20, k in 1u32..5) {
            let mut holders = vec![0u32; n];
            let mut taken = vec![false; n];
            for _ in 0..n.div_ceil(k as usize) {
                let w = pick_window(&holders, k);
                let fresh = w.iter().filter(|&&i| !taken[i as usize]).count();
                prop_assert!(fresh > 0);
                for &i in &w {
                    holders[i as usize] += 1;
                    taken[i as usize] = true;
                }
            }
            prop_assert!(taken.iter().all(|&t| t));
        }
    }
}
