//! AVX-512 VNNI kernels for prompts (two or more input rows) of Q4_0 and Q8_0; chosen at run
//! time by [`available`]. Everything else (one-row mat-vecs, the other types) runs the AVX2
//! kernels of [`crate::x86`].
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

#![allow(unsafe_code)]

use crate::act::{Acts, Q8Pair};
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// Weight rows per tile.
const RM: usize = 4;
/// Activation row pairs per tile.
const RN: usize = 3;
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

/// True when `ty` has a tiled prompt kernel here (the others run [`crate::x86::rows`]).
pub(crate) fn tiles(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_0 | QuantType::Q8_0)
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
            pairs,
            ..
        } if tiles(ty) && !pairs.is_empty() => {
            let row_bytes = per_row * ty.block_bytes();
            let n = blocks.len() / per_row;
            assert!(w.len().is_multiple_of(row_bytes) && *per_row > 0);
            assert_eq!(out.len(), w.len() / row_bytes * n);
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
            // SAFETY: the features the kernels enable were detected just above.
            unsafe {
                match ty {
                    QuantType::Q4_0 => tiled::<18>(w, pairs, *per_row, n, out),
                    _ => tiled::<34>(w, pairs, *per_row, n, out),
                }
            }
        }
        _ => crate::x86::rows(ty, w, acts, out),
    }
}

/// All weight rows of `w` (blocks of `B` bytes: 18 = Q4_0, 34 = Q8_0) against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tiled<const B: usize>(w: &[u8], pairs: &[Q8Pair], per_row: usize, n: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<B>();
    let rows = blocks.len() / per_row;
    let np = pairs.len() / per_row;
    let mut panel = 0;
    while panel < rows {
        let end = (panel + PANEL_ROWS).min(rows);
        let mut p = 0;
        while p < np {
            let mut r = panel;
            if p + RN <= np {
                while r + RM <= end {
                    tile::<B, RM, RN>(blocks, r, pairs, p, per_row, n, out);
                    r += RM;
                }
                while r < end {
                    tile::<B, 1, RN>(blocks, r, pairs, p, per_row, n, out);
                    r += 1;
                }
                p += RN;
            } else {
                while r + RM <= end {
                    tile::<B, RM, 1>(blocks, r, pairs, p, per_row, n, out);
                    r += RM;
                }
                while r < end {
                    tile::<B, 1, 1>(blocks, r, pairs, p, per_row, n, out);
                    r += 1;
                }
                p += 1;
            }
        }
        panel = end;
    }
}

/// Weight rows `r0..r0 + M` × activation pairs `p0..p0 + N`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tile<const B: usize, const M: usize, const N: usize>(
    blocks: &[[u8; B]],
    r0: usize,
    pairs: &[Q8Pair],
    p0: usize,
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    let ws = &blocks[r0 * per_row..(r0 + M) * per_row];
    let ys = &pairs[p0 * per_row..(p0 + N) * per_row];
    for b in 0..per_row {
        let mut wq = [_mm512_setzero_si512(); M];
        let mut wd = [_mm512_setzero_ps(); M];
        for i in 0..M {
            let blk = &ws[i * per_row + b];
            wq[i] = weight_bytes(blk);
            wd[i] = _mm512_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
        }
        for j in 0..N {
            let y = &ys[j * per_row + b];
            // SAFETY: `Q8Pair` is 64-byte aligned and its fields are 64 bytes each.
            let (yq, yd, sums) = unsafe {
                (
                    _mm512_load_si512(y.qs.as_ptr().cast()),
                    _mm512_load_ps(y.d.as_ptr()),
                    _mm512_load_si512(y.neg_sums.as_ptr().cast()),
                )
            };
            // −offset · Σy per lane: 8 for Q4_0, 128 for Q8_0.
            let init = if B == 18 {
                _mm512_slli_epi32::<3>(sums)
            } else {
                _mm512_slli_epi32::<7>(sums)
            };
            for i in 0..M {
                let xy = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, wq[i], yq));
                acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(wd[i], yd), xy, acc[i][j]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let row = &mut out[(r0 + i) * n..(r0 + i + 1) * n];
        for (j, a) in acc.iter().enumerate() {
            let t = 2 * (p0 + j);
            let lo = _mm512_castps512_ps256(*a);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(*a)));
            row[t] = crate::x86::hsum(lo);
            if let Some(v) = row.get_mut(t + 1) {
                *v = crate::x86::hsum(hi);
            }
        }
    }
}

/// One weight block's 32 quants as unsigned bytes, in both 256-bit halves: Q4_0's nibbles
/// (low nibbles first, as [`crate::x86`] unpacks them), or Q8_0's quants + 128.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn weight_bytes<const B: usize>(blk: &[u8; B]) -> __m512i {
    if B == 18 {
        // SAFETY: bytes 2..18 of an 18-byte block; unaligned load.
        let q = unsafe { _mm_loadu_si128(blk.as_ptr().add(2).cast()) };
        let both = _mm512_srlv_epi64(
            _mm512_broadcast_i32x4(q),
            _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4),
        );
        _mm512_and_si512(both, _mm512_set1_epi8(0x0f))
    } else {
        assert!(B >= 34);
        // SAFETY: bytes 2..34 of a block of at least 34 bytes (asserted); unaligned load.
        let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(2).cast()) };
        _mm512_xor_si512(_mm512_broadcast_i64x4(q), _mm512_set1_epi8(i8::MIN))
    }
}
