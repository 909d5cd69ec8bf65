//! AVX-512 VNNI kernels for prompts (two or more input rows) of Q4_0, Q4_1, Q8_0, Q4_K, Q5_K
//! and Q6_K, and for one-row Q4_0; chosen at run time by [`available`]. Q4_1 has its own
//! layout ([`q4_1`]); the rest is below. Everything else (one-row mat-vecs of the other types)
//! runs the AVX2 kernels of [`crate::x86`].
//!
//! A prompt multiplies every weight row with many activation rows, so the work is tiled: [`RM`]
//! weight rows × [`RN`] pairs of activation rows, accumulated in registers over the row's
//! blocks. Each weight block is unpacked once per tile (not once per activation row), and one
//! `vpdpbusd` does the 64 products of a weight block with two activation rows
//! ([`crate::act::Q8Pair`]: row `t` in the low 256 bits, row `t + 1` in the high).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so the weights go in as unsigned bytes —
//! Q4_0's nibbles `q` (value `q − 8`), Q8_0's quants plus 128 — and the offset comes back out
//! through the activation lane sums the pair carries: lane `k` = Σ over bytes `4k..4k + 4` of
//! `(q − o)·y` = `vpdpbusd(−o·Σy, q, y)`, exact in `i32`. Those are the very integers the AVX2
//! kernels' `vpmaddubsw` + `vpmaddwd` put in lane `k` of each 256-bit half, and the `f32`
//! steps after them are the same too (scale `d_w·d_y` rounded once, one FMA per block in block
//! order, the same horizontal sum), so results equal the AVX2 path's — and candle's — bit for
//! bit.
//!
//! Q4_K and Q5_K ([`k::tile_k4`]) follow the AVX2 kernels of [`crate::x86_k`] step by step on 512 bits:
//! `vpmaddubsw` pairs, then `vpdpwssd` applies the sub-block scale and accumulates (AVX2's
//! `vpmaddwd` + add), one FMA per super-block with `d_w·d_y`, and the minimum term in its own
//! 4-lane accumulator per row (Q5_K: one scalar per row) — again the same integers and the
//! same `f32` steps. Q6_K
//! ([`k::tile_q6_k`]) likewise follows its AVX2 kernel (6-bit quants from `ql` and `qh`, the 32
//! offset taken out as `maddubs(q, y) − maddubs(32, y)`, 16-value group scales by `vpdpwssd`).

#![allow(unsafe_code)]

use crate::act::Acts;
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// Weight rows per tile.
const RM: usize = 4;
/// Activation row pairs per tile.
const RN: usize = 3;
/// Weight rows per K-quant tile (it keeps three accumulators per row and pair).
const RM_K: usize = 2;
/// Weight rows run against all activation pairs before moving on: with the activation pairs of
/// one tile they stay in the core's L2 cache (64 rows × 2048 Q4_0 columns = 72 KiB).
const PANEL_ROWS: usize = 64;

/// True when this CPU has AVX-512 F/BW and VNNI on top of [`crate::x86::available`].
pub(crate) fn available() -> bool {
    crate::x86::available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// True when `ty`'s prompt kernel here works on activation pairs (Q4_1's on the rows
/// themselves, see [`q4_1`]).
pub(crate) fn tiles(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q4_0 | QuantType::Q8_0 | QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K
    )
}

/// True when one activation row against `ty` runs [`q8::row_pairs`] here: Q4_0, whose decode
/// is compute-bound (1.15–1.3× the AVX2 kernel). Q8_0 stays on AVX2: its decode is bound by
/// memory, and the pairs made the default model's 49152-row Q8_0 head ~3% slower end to end.
pub(crate) fn pairs_weight_rows(ty: QuantType) -> bool {
    ty == QuantType::Q4_0
}

/// `out[r·n + t] = dot(weight row r, activation row t)` for the rows in `w`: tiled when the
/// activations were paired ([`Acts::pair`]) and `ty` [`tiles`], else the AVX2 kernels.
///
/// # Panics
/// If the CPU lacks the features, or the sizes do not match (`w` whole rows of the
/// activations' width, `out` = rows × n).
pub(crate) fn rows(ty: QuantType, w: &[u8], acts: &Acts, out: &mut [f32]) {
    assert!(available(), "AVX-512 VNNI kernels on a CPU without them");
    match acts {
        Acts::Q8 {
            blocks,
            per_row,
            d,
            s,
            ..
        } if ty == QuantType::Q4_1 && blocks.len() >= 2 * per_row => {
            let (row_bytes, n) = acts.check_shape(ty, w, out.len());
            assert!(d.len() == blocks.len() && s.len() == blocks.len());
            // SAFETY: the features were detected just above and the sizes checked.
            let done = unsafe { q4_1::rows_q4_1(w, blocks, d, s, *per_row, out) };
            crate::x86::rows(ty, &w[done * row_bytes..], acts, &mut out[done * n..]);
        }
        Acts::Q8 {
            blocks,
            per_row,
            pairs,
            ..
        } if tiles(ty) && !pairs.is_empty() => {
            let (_, n) = acts.check_shape(ty, w, out.len());
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
            // SAFETY: the features the kernels enable were detected just above.
            unsafe {
                match (ty, n) {
                    (QuantType::Q4_0, 1) => q8::row_pairs(w, pairs, *per_row, out),
                    (_, 1) => crate::x86::rows(ty, w, acts, out),
                    (QuantType::Q4_0, _) => q8::tiled::<18>(w, pairs, *per_row, n, out),
                    _ => q8::tiled::<34>(w, pairs, *per_row, n, out),
                }
            }
        }
        Acts::Q8K {
            blocks,
            per_row,
            pairs,
        } if tiles(ty) && !pairs.is_empty() => {
            let (_, n) = acts.check_shape(ty, w, out.len());
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
            // SAFETY: the features the kernels enable were detected just above.
            unsafe {
                match ty {
                    QuantType::Q4_K => k::tiled_k4::<144>(w, pairs, *per_row, n, out),
                    QuantType::Q5_K => k::tiled_k4::<176>(w, pairs, *per_row, n, out),
                    _ => k::tiled_q6_k(w, pairs, *per_row, n, out),
                }
            }
        }
        _ => crate::x86::rows(ty, w, acts, out),
    }
}

/// Tiles of weight rows × activation pairs over `rows` rows and `np` pairs: panels of
/// [`PANEL_ROWS`] weight rows, in each every group of `N` pairs (then single pairs), in each
/// every group of `M` weight rows (then single rows). `tile(r, p, m, n)` runs one.
macro_rules! tiles {
    ($rows:expr, $np:expr, $M:expr, $N:expr, |$r:ident, $p:ident, $m:tt, $n:tt| $tile:expr) => {{
        let (rows, np) = ($rows, $np);
        let mut panel = 0;
        while panel < rows {
            let end = (panel + PANEL_ROWS).min(rows);
            let mut $p = 0;
            while $p < np {
                let mut $r = panel;
                if $p + $N <= np {
                    while $r + $M <= end {
                        {
                            const $m: usize = $M;
                            const $n: usize = $N;
                            $tile
                        }
                        $r += $M;
                    }
                    while $r < end {
                        {
                            const $m: usize = 1;
                            const $n: usize = $N;
                            $tile
                        }
                        $r += 1;
                    }
                    $p += $N;
                } else {
                    while $r + $M <= end {
                        {
                            const $m: usize = $M;
                            const $n: usize = 1;
                            $tile
                        }
                        $r += $M;
                    }
                    while $r < end {
                        {
                            const $m: usize = 1;
                            const $n: usize = 1;
                            $tile
                        }
                        $r += 1;
                    }
                    $p += 1;
                }
            }
            panel = end;
        }
    }};
}

mod k;
mod q4_1;
mod q8;

/// Writes a tile's sums: `acc[i][j]` holds weight row `r0 + i` against input rows
/// `2(p0 + j)` (low half) and `2(p0 + j) + 1` (high half; absent past the last row).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) fn store<const M: usize, const N: usize>(
    acc: &[[__m512; N]; M],
    r0: usize,
    p0: usize,
    n: usize,
    out: &mut [f32],
) {
    for (i, acc) in acc.iter().enumerate() {
        let row = &mut out[(r0 + i) * n..(r0 + i + 1) * n];
        for (j, a) in acc.iter().enumerate() {
            let t = 2 * (p0 + j);
            let (lo, hi) = halves(*a);
            row[t] = crate::x86::hsum(lo);
            if let Some(v) = row.get_mut(t + 1) {
                *v = crate::x86::hsum(hi);
            }
        }
    }
}

/// The two 256-bit halves of `v`.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
pub(super) fn halves(v: __m512) -> (__m256, __m256) {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    (_mm512_castps512_ps256(v), hi)
}

/// Sum of 4 lanes, in the order of the AVX2 Q4_K kernel's minimum term.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum4(v: __m128) -> f32 {
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}
