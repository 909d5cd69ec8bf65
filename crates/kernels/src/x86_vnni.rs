//! AVX-512 VNNI kernels for prompts (two or more input rows) of Q4_0, Q8_0, Q4_K and Q6_K;
//! chosen at run time by [`available`]. Everything else (one-row mat-vecs, the other types) runs the AVX2
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
//!
//! Q4_K ([`tile_q4_k`]) follows the AVX2 kernel of [`crate::x86_k`] step by step on 512 bits:
//! `vpmaddubsw` pairs, then `vpdpwssd` applies the sub-block scale and accumulates (AVX2's
//! `vpmaddwd` + add), one FMA per super-block with `d_w·d_y`, and the minimum term in its own
//! 4-lane accumulator per row — again the same integers and the same `f32` steps. Q6_K
//! ([`tile_q6_k`]) likewise follows its AVX2 kernel (6-bit quants from `ql` and `qh`, the 32
//! offset taken out as `maddubs(q, y) − maddubs(32, y)`, 16-value group scales by `vpdpwssd`).

#![allow(unsafe_code)]

use crate::act::{Acts, Q8KPair, Q8Pair};
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// Weight rows per tile.
const RM: usize = 4;
/// Activation row pairs per tile.
const RN: usize = 3;
/// Weight rows per Q4_K tile (it keeps three accumulators per row and pair).
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

/// True when `ty` has a tiled prompt kernel here (the others run [`crate::x86::rows`]).
pub(crate) fn tiles(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q4_0 | QuantType::Q8_0 | QuantType::Q4_K | QuantType::Q6_K
    )
}

/// True when one activation row against `ty` runs [`row_pairs`] here.
pub(crate) fn pairs_weight_rows(ty: QuantType) -> bool {
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
                match (ty, n) {
                    (QuantType::Q4_0, 1) => row_pairs::<18>(w, pairs, *per_row, out),
                    (QuantType::Q8_0, 1) => row_pairs::<34>(w, pairs, *per_row, out),
                    (QuantType::Q4_0, _) => tiled::<18>(w, pairs, *per_row, n, out),
                    _ => tiled::<34>(w, pairs, *per_row, n, out),
                }
            }
        }
        Acts::Q8K {
            blocks,
            per_row,
            pairs,
        } if tiles(ty) && !pairs.is_empty() => {
            let row_bytes = per_row * ty.block_bytes();
            let n = blocks.len() / per_row;
            assert!(w.len().is_multiple_of(row_bytes) && *per_row > 0);
            assert_eq!(out.len(), w.len() / row_bytes * n);
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
            // SAFETY: the features the kernels enable were detected just above.
            unsafe {
                if ty == QuantType::Q4_K {
                    tiled_q4_k(w, pairs, *per_row, n, out)
                } else {
                    tiled_q6_k(w, pairs, *per_row, n, out)
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

/// All weight rows of `w` (blocks of `B` bytes: 18 = Q4_0, 34 = Q8_0) against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tiled<const B: usize>(w: &[u8], pairs: &[Q8Pair], per_row: usize, n: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<B>();
    tiles!(
        blocks.len() / per_row,
        pairs.len() / per_row,
        RM,
        RN,
        |r, p, M, N| tile::<B, M, N>(blocks, r, pairs, p, per_row, n, out)
    );
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
    store(&acc, r0, p0, n, out);
}

/// Weight row pairs per step of [`row_pairs`] (they share each activation block load).
const ROW_PAIRS: usize = 4;

/// One activation row (paired with itself: `y | y`) against the weight rows of `w`, two rows
/// per 512-bit vector (row `r` in the low half, `r + 1` in the high half): the lanes hold the
/// AVX2 kernel's integers, so the results are its results bit for bit. An odd last row is
/// paired with itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn row_pairs<const B: usize>(w: &[u8], pairs: &[Q8Pair], per_row: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<B>();
    let count = blocks.len() / per_row;
    // (A closure of plain slicing: no SIMD in it, so not being inlined would cost nothing.)
    let row = |i: usize| &blocks[i * per_row..(i + 1) * per_row];
    let mut r = 0;
    while r + 2 * ROW_PAIRS <= count {
        let mut two = [[row(r); 2]; ROW_PAIRS];
        for (k, t) in two.iter_mut().enumerate() {
            *t = [row(r + 2 * k), row(r + 2 * k + 1)];
        }
        let mut sums = [[0f32; 2]; ROW_PAIRS];
        // The rows are read side by side, a few cache lines each: too short for the hardware
        // prefetcher to pick up, so the next group is fetched while this one is computed.
        let next = blocks
            .get((r + 2 * ROW_PAIRS) * per_row..(r + 4 * ROW_PAIRS).min(count) * per_row)
            .unwrap_or(&[]);
        row_pair_step(&two, pairs, next.as_flattened(), &mut sums);
        out[r..r + 2 * ROW_PAIRS].copy_from_slice(sums.as_flattened());
        r += 2 * ROW_PAIRS;
    }
    while r < count {
        let next = row((r + 1).min(count - 1));
        let mut sums = [[0f32; 2]];
        row_pair_step(&[[row(r), next]], pairs, &[], &mut sums);
        let take = (count - r).min(2);
        out[r..r + take].copy_from_slice(&sums[0][..take]);
        r += take;
    }
}

/// `P` pairs of weight rows against the activation row: `sums[k] = [row k.0 · y, row k.1 · y]`;
/// `ahead` (the next rows) is prefetched a slice per block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn row_pair_step<const B: usize, const P: usize>(
    rows: &[[&[[u8; B]]; 2]; P],
    pairs: &[Q8Pair],
    ahead: &[u8],
    sums: &mut [[f32; 2]; P],
) {
    let step = ahead
        .len()
        .div_ceil(pairs.len().max(1))
        .next_multiple_of(64);
    let mut acc = [_mm512_setzero_ps(); P];
    // Lanes 0..8 take the first of two f32 values, lanes 8..16 the second.
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    for (b, y) in pairs.iter().enumerate() {
        for line in ahead
            .get(b * step..)
            .unwrap_or(&[])
            .chunks(64)
            .take(step / 64)
        {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
        // SAFETY: `Q8Pair` is 64-byte aligned and its fields are 64 bytes each.
        let (yq, yd, neg) = unsafe {
            (
                _mm512_load_si512(y.qs.as_ptr().cast()),
                _mm512_load_ps(y.d.as_ptr()),
                _mm512_load_si512(y.neg_sums.as_ptr().cast()),
            )
        };
        let init = if B == 18 {
            _mm512_slli_epi32::<3>(neg)
        } else {
            _mm512_slli_epi32::<7>(neg)
        };
        for (acc, [lo, hi]) in acc.iter_mut().zip(rows) {
            let (lo, hi) = (&lo[b], &hi[b]);
            let scales = u32::from(u16::from_le_bytes([lo[0], lo[1]]))
                | (u32::from(u16::from_le_bytes([hi[0], hi[1]])) << 16);
            let d2 = _mm_cvtph_ps(_mm_cvtsi32_si128(scales as i32));
            let wd = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(d2));
            let xy = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(init, two_weight_blocks(lo, hi), yq));
            *acc = _mm512_fmadd_ps(_mm512_mul_ps(wd, yd), xy, *acc);
        }
    }
    for (s, a) in sums.iter_mut().zip(&acc) {
        let (lo, hi) = halves(*a);
        *s = [crate::x86::hsum(lo), crate::x86::hsum(hi)];
    }
}

/// Two weight blocks' quants as unsigned bytes (see [`weight_bytes`]): `lo`'s in the low
/// 256 bits, `hi`'s in the high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn two_weight_blocks<const B: usize>(lo: &[u8; B], hi: &[u8; B]) -> __m512i {
    if B == 18 {
        // SAFETY: bytes 2..18 of 18-byte blocks; unaligned loads.
        let (a, b) = unsafe {
            (
                _mm256_broadcastsi128_si256(_mm_loadu_si128(lo.as_ptr().add(2).cast())),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(hi.as_ptr().add(2).cast())),
            )
        };
        let both = _mm512_srlv_epi64(
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b),
            _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4),
        );
        _mm512_and_si512(both, _mm512_set1_epi8(0x0f))
    } else {
        assert!(B >= 34);
        // SAFETY: bytes 2..34 of blocks of at least 34 bytes (asserted); unaligned loads.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(lo.as_ptr().add(2).cast()),
                _mm256_loadu_si256(hi.as_ptr().add(2).cast()),
            )
        };
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        _mm512_xor_si512(v, _mm512_set1_epi8(i8::MIN))
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

/// All Q4_K weight rows of `w` against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tiled_q4_k(w: &[u8], pairs: &[Q8KPair], per_row: usize, n: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<144>();
    tiles!(
        blocks.len() / per_row,
        pairs.len() / per_row,
        RM_K,
        RN,
        |r, p, M, N| tile_q4_k::<M, N>(blocks, r, pairs, p, per_row, n, out)
    );
}

/// Q4_K weight rows `r0..r0 + M` × activation pairs `p0..p0 + N` (see the module doc).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tile_q4_k<const M: usize, const N: usize>(
    blocks: &[[u8; 144]],
    r0: usize,
    pairs: &[Q8KPair],
    p0: usize,
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let m4 = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    let mut acc_m = [[_mm256_setzero_ps(); N]; M];
    let ws = &blocks[r0 * per_row..(r0 + M) * per_row];
    let ys = &pairs[p0 * per_row..(p0 + N) * per_row];
    for b in 0..per_row {
        let mut sm = [[0u8; 16]; M];
        let mut sub_scales = [[0i16; M]; 8];
        for (i, sm) in sm.iter_mut().enumerate() {
            *sm = crate::x86_k::scales_mins_k4(&ws[i * per_row + b][4..16]);
            for (s, sc) in sub_scales.iter_mut().enumerate() {
                sc[i] = i16::from(sm[s]);
            }
        }
        let mut sumi = [[_mm512_setzero_si512(); N]; M];
        for (s, sc) in sub_scales.iter().enumerate() {
            let mut y = [_mm512_setzero_si512(); N];
            for (j, y) in y.iter_mut().enumerate() {
                // SAFETY: each sub-block row of a 64-byte aligned `Q8KPair` is 64 aligned bytes.
                *y = unsafe { _mm512_load_si512(ys[j * per_row + b].qs[s].as_ptr().cast()) };
            }
            for i in 0..M {
                let blk = &ws[i * per_row + b];
                // Sub-blocks 2k and 2k + 1 are the low and high nibbles of bytes 16 + 32k..
                // SAFETY: 32 bytes at 16 + 32·(s / 2) ≤ 112 of a 144-byte block.
                let q = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * (s / 2)).cast()) };
                let q = _mm512_broadcast_i64x4(q);
                let q = if s % 2 == 0 {
                    _mm512_and_si512(q, m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4)
                };
                let scale = _mm512_set1_epi16(sc[i]);
                for (j, y) in y.iter().enumerate() {
                    let pairs16 = _mm512_maddubs_epi16(q, *y);
                    sumi[i][j] = _mm512_dpwssd_epi32(sumi[i][j], pairs16, scale);
                }
            }
        }
        for i in 0..M {
            let blk = &ws[i * per_row + b];
            let d = _mm512_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
            let dmin = _mm256_set1_ps(crate::x86::f16_one(blk[2], blk[3]));
            // SAFETY: `sm[i]` is 16 bytes; unaligned load.
            let mins = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(sm[i].as_ptr().cast()) });
            let mins = _mm256_permute2x128_si256::<0x11>(mins, mins);
            for j in 0..N {
                let y = &ys[j * per_row + b];
                // SAFETY: fields of a 64-byte aligned `Q8KPair`, at 64-byte (`d`) and 32-byte
                // (`sub_sums`, `neg_d4`) aligned offsets.
                let (yd, sub_sums, neg_d4) = unsafe {
                    (
                        _mm512_load_ps(y.d.as_ptr()),
                        _mm256_load_si256(y.sub_sums.as_ptr().cast()),
                        _mm256_load_ps(y.neg_d4.as_ptr()),
                    )
                };
                let min_prod = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, sub_sums));
                acc_m[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(dmin, neg_d4), min_prod, acc_m[i][j]);
                let sumf = _mm512_cvtepi32_ps(sumi[i][j]);
                acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), sumf, acc[i][j]);
            }
        }
    }
    for i in 0..M {
        let row = &mut out[(r0 + i) * n..(r0 + i + 1) * n];
        for j in 0..N {
            let t = 2 * (p0 + j);
            let (lo, hi) = halves(acc[i][j]);
            let m = acc_m[i][j];
            row[t] = crate::x86::hsum(lo) + hsum4(_mm256_castps256_ps128(m));
            if let Some(v) = row.get_mut(t + 1) {
                *v = crate::x86::hsum(hi) + hsum4(_mm256_extractf128_ps::<1>(m));
            }
        }
    }
}

/// All Q6_K weight rows of `w` against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tiled_q6_k(w: &[u8], pairs: &[Q8KPair], per_row: usize, n: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<210>();
    tiles!(
        blocks.len() / per_row,
        pairs.len() / per_row,
        RM_K,
        RN,
        |r, p, M, N| tile_q6_k::<M, N>(blocks, r, pairs, p, per_row, n, out)
    );
}

/// Q6_K weight rows `r0..r0 + M` × activation pairs `p0..p0 + N` (see the module doc).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn tile_q6_k<const M: usize, const N: usize>(
    blocks: &[[u8; 210]],
    r0: usize,
    pairs: &[Q8KPair],
    p0: usize,
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let (m4, m2, m32) = (
        _mm512_set1_epi8(0x0f),
        _mm512_set1_epi8(3),
        _mm512_set1_epi8(32),
    );
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    let ws = &blocks[r0 * per_row..(r0 + M) * per_row];
    let ys = &pairs[p0 * per_row..(p0 + N) * per_row];
    for b in 0..per_row {
        // Each row's 16 group scales as i16, in both 256-bit halves.
        let mut scales = [_mm512_setzero_si512(); M];
        for (i, sc) in scales.iter_mut().enumerate() {
            // SAFETY: bytes 192..208 of a 210-byte block; unaligned load.
            let raw = unsafe { _mm_loadu_si128(ws[i * per_row + b].as_ptr().add(192).cast()) };
            let s16 = _mm256_cvtepi8_epi16(raw);
            *sc = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(s16), s16);
        }
        let mut sumi = [[_mm512_setzero_si512(); N]; M];
        for s in 0..8 {
            let (j, k) = (s / 4, s % 4);
            let mut y = [_mm512_setzero_si512(); N];
            let mut y32 = [_mm512_setzero_si512(); N];
            for (jj, (y, y32)) in y.iter_mut().zip(y32.iter_mut()).enumerate() {
                // SAFETY: each sub-block row of a 64-byte aligned `Q8KPair` is 64 aligned bytes.
                *y = unsafe { _mm512_load_si512(ys[jj * per_row + b].qs[s].as_ptr().cast()) };
                *y32 = _mm512_maddubs_epi16(m32, *y);
            }
            // Values 32s..32s + 32 are groups 2s and 2s + 1: i16 lanes 0..8 of each half take
            // group 2s's scale, lanes 8..16 group 2s + 1's (`_mm512_set_epi16` lists lane 31
            // first).
            let (g, h) = ((2 * s) as i16, (2 * s + 1) as i16);
            #[rustfmt::skip]
            let pick = _mm512_set_epi16(
                h, h, h, h, h, h, h, h, g, g, g, g, g, g, g, g,
                h, h, h, h, h, h, h, h, g, g, g, g, g, g, g, g,
            );
            for i in 0..M {
                let blk = &ws[i * per_row + b];
                // SAFETY: 32 bytes at 64j + 32·(k % 2) ≤ 96 and at 128 + 32j ≤ 160 of 210.
                let (ql, qh) = unsafe {
                    (
                        _mm256_loadu_si256(blk.as_ptr().add(64 * j + 32 * (k % 2)).cast()),
                        _mm256_loadu_si256(blk.as_ptr().add(128 + 32 * j).cast()),
                    )
                };
                let (ql, qh) = (_mm512_broadcast_i64x4(ql), _mm512_broadcast_i64x4(qh));
                let low = if k < 2 {
                    _mm512_and_si512(ql, m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4)
                };
                let bits = match k {
                    0 => qh,
                    1 => _mm512_srli_epi16::<2>(qh),
                    2 => _mm512_srli_epi16::<4>(qh),
                    _ => _mm512_srli_epi16::<6>(qh),
                };
                let q = _mm512_or_si512(low, _mm512_slli_epi16::<4>(_mm512_and_si512(bits, m2)));
                let sc = _mm512_permutexvar_epi16(pick, scales[i]);
                for jj in 0..N {
                    let raw = _mm512_sub_epi16(_mm512_maddubs_epi16(q, y[jj]), y32[jj]);
                    sumi[i][jj] = _mm512_dpwssd_epi32(sumi[i][jj], raw, sc);
                }
            }
        }
        for i in 0..M {
            let blk = &ws[i * per_row + b];
            let d = _mm512_set1_ps(crate::x86::f16_one(blk[208], blk[209]));
            for j in 0..N {
                // SAFETY: `d` of a 64-byte aligned `Q8KPair` is 64 aligned bytes.
                let yd = unsafe { _mm512_load_ps(ys[j * per_row + b].d.as_ptr()) };
                let sumf = _mm512_cvtepi32_ps(sumi[i][j]);
                acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(d, yd), sumf, acc[i][j]);
            }
        }
    }
    store(&acc, r0, p0, n, out);
}

/// Writes a tile's sums: `acc[i][j]` holds weight row `r0 + i` against input rows
/// `2(p0 + j)` (low half) and `2(p0 + j) + 1` (high half; absent past the last row).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn store<const M: usize, const N: usize>(
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
fn halves(v: __m512) -> (__m256, __m256) {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    (_mm512_castps512_ps256(v), hi)
}

/// Sum of 4 lanes, in the order of the AVX2 Q4_K kernel's minimum term.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum4(v: __m128) -> f32 {
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}
