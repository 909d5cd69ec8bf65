//! Unit tests of the split: the partition of layer costs.

use super::*;

#[test]
fn partition_covers_every_layer_with_nonempty_ranges() {
    let costs = [5, 1, 1, 1, 1, 1, 1, 5];
    for parts in 1..=8 {
        let r = partition(&costs, parts);
        assert_eq!(r.len(), parts as usize);
        assert_eq!(r[0][0], 0);
        assert_eq!(r[r.len() - 1][1], 8);
        for w in r.windows(2) {
            assert_eq!(w[0][1], w[1][0]);
        }
        assert!(r.iter().all(|[s, e]| s < e));
    }
}

#[test]
fn partition_balances_bytes_not_counts() {
    // Heavy ends (embedding, head): they get one layer each, the middle is shared evenly.
    let mut costs = vec![10u64; 30];
    costs[0] += 140;
    costs[29] += 140;
    let r = partition(&costs, 8);
    assert_eq!(r[0], [0, 1]);
    assert_eq!(r[7], [29, 30]);
    let middle: Vec<u32> = r[1..7].iter().map(|[s, e]| e - s).collect();
    assert!(middle.iter().all(|&n| n == 4 || n == 5), "{r:?}");
}

#[test]
fn partition_minimises_the_largest_part() {
    let costs = [1, 2, 3, 4, 5, 6, 7, 8, 9];
    let r = partition(&costs, 3);
    let max = r
        .iter()
        .map(|[s, e]| costs[*s as usize..*e as usize].iter().sum::<u64>())
        .max();
    assert_eq!(max, Some(17), "{r:?}");
}

#[test]
fn classify_refuses_unknown_and_out_of_range_tensors() {
    let t = |name: &str| TensorInfo {
        name: name.into(),
        dims: vec![1],
        ggml_type: crate::gguf::GgmlType::F32,
        offset: 0,
        data_offset: 0,
        size: 4,
    };
    assert!(classify(&[t("blk.1.attn_q.weight")], 2).is_ok());
    assert!(classify(&[t("blk.2.attn_q.weight")], 2).is_err());
    assert!(classify(&[t("blk.x.attn_q.weight")], 2).is_err());
    assert!(classify(&[t("mm.proj")], 2).is_err());
}
