//! Every kernel of the best instruction set here against the scalar reference, on random
//! blocks and random activations; and the pool's row split against a plain loop.
//!
//! Tolerance: the SIMD kernels compute the same exact integer block sums as the reference and
//! differ only in how the `f32` products `d_w·d_x·Σq` are associated and summed (8 lanes + FMA
//! vs one running sum). With `B` blocks each term carries ≤ 2 roundings and the sum ≤ B + 3
//! more, so |Δ| ≤ (B + 5)·2⁻²⁴·M where `M` = Σ over blocks of |d_w·d_x|·Σ|q_w·q_x| + |m·s|
//! (the magnitude of what is summed). We assert |Δ| ≤ 1e-5·M (B ≤ 64 here: bound 4e-6·M).
//! Q4_1 adds its block terms in the reference's order, so it must be equal bit for bit.

use proptest::prelude::*;
use shardswarm_kernels::scalar::{dequantize_row, dot_q8, dot_q8k};
use shardswarm_kernels::{Engine, Isa, Q8Block, QuantType, Weights, quantize_q8, quantize_q8k};

const REL_TOL: f64 = 1e-5;

/// f16 bits of `v` (test helper; the crate rounds the same way).
fn f16_bits(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// A random scale: sign × 10^[-4, -1].
fn scale() -> impl Strategy<Value = f32> {
    (any::<bool>(), -4.0f32..-1.0)
        .prop_map(|(neg, e)| if neg { -(10f32.powf(e)) } else { 10f32.powf(e) })
}

/// One random block of a 32-value type: its bytes.
fn block32(ty: QuantType) -> impl Strategy<Value = Vec<u8>> {
    (scale(), scale(), prop::collection::vec(any::<u8>(), 32)).prop_map(move |(d, m, q)| {
        let mut b = f16_bits(d).to_vec();
        match ty {
            QuantType::Q4_0 => b.extend(&q[..16]),
            QuantType::Q4_1 => {
                b.extend(f16_bits(m));
                b.extend(&q[..16]);
            }
            QuantType::Q8_0 => b.extend(&q),
            _ => unreachable!(),
        }
        b
    })
}

/// One random K-quant super-block: random bytes with sane `f16` super-scales.
fn block_k(ty: QuantType) -> impl Strategy<Value = Vec<u8>> {
    (
        scale(),
        scale(),
        prop::collection::vec(any::<u8>(), ty.block_bytes()),
    )
        .prop_map(move |(d, dmin, mut b)| {
            match ty {
                QuantType::Q4_K | QuantType::Q5_K => {
                    b[0..2].copy_from_slice(&f16_bits(d));
                    b[2..4].copy_from_slice(&f16_bits(dmin.abs()));
                }
                QuantType::Q6_K => b[208..210].copy_from_slice(&f16_bits(d)),
                _ => unreachable!(),
            }
            b
        })
}

/// Random activations: `len` values in ±10^[-3, 3], some blocks all zero.
fn acts(len: usize) -> impl Strategy<Value = Vec<f32>> {
    (
        -3.0f32..3.0,
        prop::collection::vec(-1.0f32..1.0, len),
        any::<u8>(),
    )
        .prop_map(move |(e, mut x, zero)| {
            let r = 10f32.powf(e);
            for v in &mut x {
                *v *= r;
            }
            if zero % 4 == 0 {
                x[..32].fill(0.0);
            }
            x
        })
}

/// Magnitude `M` of the summed terms of one row · one activation row (see the module doc),
/// bounded from the dequantized values: Σ|w|·|x̂| + Σ|m|·(|s| + Σ|x̂|) covers Q4_1's split.
fn magnitude(ty: QuantType, row: &[u8], x: &[f32]) -> f64 {
    let mut w = vec![0f32; x.len()];
    dequantize_row(ty, row, &mut w);
    let per = ty.block_elems();
    let mut m = 0f64;
    for (bi, (wb, xb)) in w.chunks(per).zip(x.chunks(per)).enumerate() {
        let q = quantize_q8k_or_q8(ty, xb);
        m += wb
            .iter()
            .zip(&q)
            .map(|(a, b)| f64::from((a * b).abs()))
            .sum::<f64>();
        // The minimum terms (Q4_1, K-quants): |min|·Σ|x̂| twice over covers both halves.
        let min = match ty {
            QuantType::Q4_1 => f64::from(half_at(row, bi * 20 + 2).abs()),
            QuantType::Q4_K | QuantType::Q5_K => {
                63.0 * f64::from(half_at(row, bi * ty.block_bytes() + 2).abs())
            }
            _ => 0.0,
        };
        m += 2.0 * min * q.iter().map(|v| f64::from(v.abs())).sum::<f64>();
    }
    m
}

fn half_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The activation values as the kernels see them (quantized, then dequantized).
fn quantize_q8k_or_q8(ty: QuantType, x: &[f32]) -> Vec<f32> {
    if ty.block_elems() == 32 {
        let b = quantize_q8(x.try_into().unwrap());
        b.qs.iter().map(|&q| f32::from(q) * b.d).collect()
    } else {
        let b = quantize_q8k(x.try_into().unwrap());
        b.qs.iter().map(|&q| f32::from(q) * b.d).collect()
    }
}

/// The reference value of one row · one input row.
fn reference(ty: QuantType, row: &[u8], x: &[f32]) -> f32 {
    if ty.block_elems() == 32 {
        let a: Vec<Q8Block> = x
            .chunks(32)
            .map(|c| quantize_q8(c.try_into().unwrap()))
            .collect();
        dot_q8(ty, row, &a)
    } else {
        let a: Vec<_> = x
            .chunks(256)
            .map(|c| quantize_q8k(c.try_into().unwrap()))
            .collect();
        dot_q8k(ty, row, &a)
    }
}

/// `rows` rows of `blocks` random blocks each, and `n` activation rows.
fn case(ty: QuantType) -> impl Strategy<Value = (Vec<u8>, usize, usize, Vec<f32>)> {
    let (max_blocks, max_rows): (usize, usize) = if ty.block_elems() == 32 {
        (64, 40)
    } else {
        (4, 12)
    };
    // Up to 39 (K-quants: 11) weight rows and 9 input rows: the AVX-512 prompt kernels' tiles
    // (4 or 2 weight rows × 3 pairs of input rows, Q4_1's groups of 16 rows × 8 input rows,
    // one-row pairs of 8 rows; see x86_vnni) with every kind of remainder, an odd last input
    // row included.
    (1..=max_blocks, 1..max_rows, 1usize..10).prop_flat_map(move |(blocks, rows, n)| {
        let cols = blocks * ty.block_elems();
        let block = if ty.block_elems() == 32 {
            block32(ty).boxed()
        } else {
            block_k(ty).boxed()
        };
        (
            prop::collection::vec(block, blocks * rows).prop_map(|bs| bs.concat()),
            Just(rows),
            Just(cols),
            acts(cols * n),
        )
    })
}

/// A [`case`] of any of the six types, with its type.
#[allow(clippy::type_complexity)]
fn any_case() -> impl Strategy<Value = (QuantType, (Vec<u8>, usize, usize, Vec<f32>))> {
    prop_oneof![
        case(QuantType::Q4_0).prop_map(|c| (QuantType::Q4_0, c)),
        case(QuantType::Q4_1).prop_map(|c| (QuantType::Q4_1, c)),
        case(QuantType::Q8_0).prop_map(|c| (QuantType::Q8_0, c)),
        case(QuantType::Q4_K).prop_map(|c| (QuantType::Q4_K, c)),
        case(QuantType::Q5_K).prop_map(|c| (QuantType::Q5_K, c)),
        case(QuantType::Q6_K).prop_map(|c| (QuantType::Q6_K, c)),
    ]
}

fn check(ty: QuantType, w: &[u8], rows: usize, cols: usize, x: &[f32], threads: usize) {
    let engine = Engine::new(Isa::detect(), threads).unwrap();
    let n = x.len() / cols;
    let mut out = vec![0f32; n * rows];
    engine.matmul(ty, w, rows, cols, x, &mut out).unwrap();
    let rb = ty.row_bytes(cols).unwrap();
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let row = &w[r * rb..(r + 1) * rb];
            let want = reference(ty, row, xt);
            let got = out[t * rows + r];
            if ty == QuantType::Q4_1 {
                // Q4_1 keeps the reference's block order (see the x86 module): exact.
                assert_eq!(got.to_bits(), want.to_bits(), "Q4_1 row {r} input {t}");
                continue;
            }
            let tol = REL_TOL * magnitude(ty, row, xt);
            assert!(
                f64::from((got - want).abs()) <= tol,
                "{ty:?} {:?} row {r} input {t}: got {got}, reference {want}, tol {tol}",
                engine.isa()
            );
        }
    }
}

macro_rules! kernel_prop {
    ($name:ident, $ty:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn $name((w, rows, cols, x) in case($ty)) {
                check($ty, &w, rows, cols, &x, 1);
            }
        }
    };
}

kernel_prop!(q4_0_matches_the_scalar_reference, QuantType::Q4_0);
kernel_prop!(q4_1_matches_the_scalar_reference, QuantType::Q4_1);
kernel_prop!(q8_0_matches_the_scalar_reference, QuantType::Q8_0);
kernel_prop!(q4_k_matches_the_scalar_reference, QuantType::Q4_K);
kernel_prop!(q5_k_matches_the_scalar_reference, QuantType::Q5_K);
kernel_prop!(q6_k_matches_the_scalar_reference, QuantType::Q6_K);

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// The AVX-512 VNNI prompt kernels give the AVX2 kernels' results bit for bit (the same
    /// integer lanes, the same `f32` steps; see x86_vnni) — skipped where the CPU has no VNNI.
    #[test]
    fn vnni_prompt_kernels_equal_avx2_bit_for_bit(
        (ty, (w, rows, cols, x)) in any_case(),
        threads in 1usize..4,
    ) {
        prop_assume!(Isa::Avx512Vnni.is_available());
        let n = x.len() / cols;
        let run = |isa| {
            let mut out = vec![0f32; n * rows];
            Engine::new(isa, threads)
                .unwrap()
                .matmul(ty, &w, rows, cols, &x, &mut out)
                .unwrap();
            out
        };
        let (vnni, avx2) = (run(Isa::Avx512Vnni), run(Isa::Avx2));
        for (i, (a, b)) in vnni.iter().zip(&avx2).enumerate() {
            prop_assert_eq!(a.to_bits(), b.to_bits(), "{:?} output {}: {} vs {}", ty, i, a, b);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// On every SIMD engine here, a prompt (several input rows at once: the tiled kernels)
    /// computes exactly what those rows give one at a time (the decode path), bit for bit.
    #[test]
    fn prompt_rows_equal_one_row_at_a_time(
        (ty, (w, rows, cols, x)) in any_case(),
        threads in 1usize..4,
    ) {
        let n = x.len() / cols;
        for isa in [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Neon] {
            if !isa.is_available() {
                continue;
            }
            let engine = Engine::new(isa, threads).unwrap();
            let mut all = vec![0f32; n * rows];
            engine.matmul(ty, &w, rows, cols, &x, &mut all).unwrap();
            for (t, xt) in x.chunks(cols).enumerate() {
                let mut one = vec![0f32; rows];
                engine.matvec(ty, &w, rows, cols, xt, &mut one).unwrap();
                for (r, v) in one.iter().enumerate() {
                    let got = all[t * rows + r];
                    prop_assert_eq!(got.to_bits(), v.to_bits(),
                        "{:?} {:?} row {} input {}: {} vs {}", isa, ty, r, t, got, v);
                }
            }
        }
    }
}

#[test]
fn rows_split_across_threads_equal_one_thread() {
    // Large enough to go through the pool (> 64 KiB of weights), with a ragged last chunk.
    let (ty, rows, cols) = (QuantType::Q4_1, 3001, 128);
    let rb = ty.row_bytes(cols).unwrap();
    let mut w = vec![0u8; rows * rb];
    for (i, b) in w.chunks_mut(20).enumerate() {
        b[0..2].copy_from_slice(&f16_bits(0.01 + (i % 7) as f32 * 0.003));
        b[2..4].copy_from_slice(&f16_bits(-0.02));
        for (j, q) in b[4..].iter_mut().enumerate() {
            *q = ((i * 31 + j * 17) % 256) as u8;
        }
    }
    let x: Vec<f32> = (0..3 * cols)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
        .collect();
    let one = Engine::new(Isa::detect(), 1).unwrap();
    let mut want = vec![0f32; 3 * rows];
    one.matmul(ty, &w, rows, cols, &x, &mut want).unwrap();
    for threads in [2, 3, 4] {
        let many = Engine::new(Isa::detect(), threads).unwrap();
        for n in [1, 3] {
            let mut got = vec![0f32; n * rows];
            many.matmul(ty, &w, rows, cols, &x[..n * cols], &mut got)
                .unwrap();
            assert_eq!(got, want[..n * rows], "{threads} threads, {n} rows");
        }
    }
}

#[test]
fn matmul_many_equals_one_matmul_each() {
    // Q, K, V-like shapes of mixed types sharing one input; large enough for the pool.
    let cols = 512;
    let specs = [
        (QuantType::Q4_1, 900),
        (QuantType::Q8_0, 130),
        (QuantType::Q4_K, 77),
    ];
    let ws: Vec<Vec<u8>> = specs
        .iter()
        .map(|&(ty, rows)| {
            let rb = ty.row_bytes(cols).unwrap();
            let mut w: Vec<u8> = (0..rows * rb)
                .map(|i| ((i * 2654435761usize) >> 11) as u8)
                .collect();
            for b in w.chunks_mut(ty.block_bytes()) {
                let at = if ty == QuantType::Q6_K { 208 } else { 0 };
                b[at..at + 2].copy_from_slice(&f16_bits(0.01));
                if matches!(ty, QuantType::Q4_1 | QuantType::Q4_K) {
                    b[2..4].copy_from_slice(&f16_bits(-0.002));
                }
            }
            w
        })
        .collect();
    let x: Vec<f32> = (0..2 * cols)
        .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.05)
        .collect();
    for threads in [1, 2, 3] {
        let e = Engine::new(Isa::detect(), threads).unwrap();
        for n in [1, 2] {
            let x = &x[..n * cols];
            let weights: Vec<Weights<'_>> = specs
                .iter()
                .zip(&ws)
                .map(|(&(ty, rows), data)| Weights {
                    ty,
                    data,
                    rows,
                    cols,
                })
                .collect();
            let mut outs: Vec<Vec<f32>> = specs.iter().map(|&(_, r)| vec![0f32; n * r]).collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            e.matmul_many(&weights, x, &mut refs).unwrap();
            for (w, got) in weights.iter().zip(&outs) {
                let mut want = vec![0f32; n * w.rows];
                e.matmul(w.ty, w.data, w.rows, cols, x, &mut want).unwrap();
                assert_eq!(got, &want, "{:?}, {threads} threads, n = {n}", w.ty);
            }
        }
    }
}

#[test]
fn the_scalar_engine_is_the_reference() {
    let ty = QuantType::Q8_0;
    let w: Vec<u8> = (0..5 * 34)
        .map(|i| if i % 34 == 1 { 0x20 } else { (i * 7) as u8 })
        .collect();
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
    let mut out = vec![0f32; 5];
    Engine::new(Isa::Scalar, 2)
        .unwrap()
        .matvec(ty, &w, 5, 32, &x, &mut out)
        .unwrap();
    for (r, v) in out.iter().enumerate() {
        assert_eq!(*v, reference(ty, &w[r * 34..(r + 1) * 34], &x));
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let e = Engine::new(Isa::Scalar, 1).unwrap();
    let mut out = vec![0f32; 2];
    assert!(
        e.matvec(QuantType::Q4_0, &[0; 36], 2, 33, &[0.0; 33], &mut out)
            .is_err()
    );
    assert!(
        e.matvec(QuantType::Q4_0, &[0; 35], 2, 32, &[0.0; 32], &mut out)
            .is_err()
    );
    assert!(
        e.matvec(QuantType::Q4_0, &[0; 36], 2, 32, &[0.0; 31], &mut out)
            .is_err()
    );
    assert!(
        e.matvec(QuantType::Q4_0, &[0; 36], 2, 32, &[0.0; 32], &mut out[..1])
            .is_err()
    );
    assert!(
        e.matvec(QuantType::Q4_0, &[0; 36], 2, 32, &[], &mut out)
            .is_err()
    );
}
