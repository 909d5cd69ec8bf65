//! AVX2 + FMA + F16C kernels for x86-64 (chosen at run time by [`available`]).
//!
//! The technique is ggml's (`ggml-cpu/arch/x86/quants.c`), the code is ours:
//! - 4-bit quants are unpacked to 32 bytes with one shift and one mask (`nibbles`); the low
//!   nibbles are values 0..16 and the high nibbles values 16..32 of a block, as GGUF stores them;
//! - `u8 × i8` products are summed pairwise to `i16` by `vpmaddubsw` and to `i32` by `vpmaddwd`
//!   (signed × signed goes through `vpsignb` first); no overflow is possible with these ranges
//!   (|pair| ≤ 2·128·127 < 2¹⁵);
//! - the block's scales are converted from `f16` inline with `vcvtph2ps` (F16C) — no call per
//!   block; Q4_0/Q8_0 integer sums are scaled and accumulated with one FMA per block in 8 lanes
//!   (the order candle's and ggml's AVX2 kernels use, so results equal candle's bit for bit);
//!   Q4_1 adds its block terms in block order (see `dot_q4_1`).
//!
//! Q4_K, Q5_K and Q6_K are in `x86_k`.

#![allow(unsafe_code)]

use crate::act::{Acts, Q8Block};
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// True when this CPU has AVX2, FMA and F16C (cached by std after the first call).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// True when this module (or `x86_k`) has a SIMD dot product for `ty` (others fall back to the
/// reference).
pub(crate) fn accelerates(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
        || crate::x86_k::accelerates(ty)
}

/// Quantizes `x` into `acts` (as [`crate::act::quantize_scalar`], bit for bit).
///
/// # Panics
/// If the CPU lacks the features ([`available`] is false).
pub(crate) fn quantize(x: &[f32], acts: &mut Acts) {
    assert!(available(), "AVX2 kernels on a CPU without avx2/fma/f16c");
    match acts {
        Acts::Q8 { blocks, .. } => {
            let (chunks, _) = x.as_chunks::<32>();
            for (b, c) in blocks.iter_mut().zip(chunks) {
                // SAFETY: the features `quantize_q8` enables were detected just above.
                *b = unsafe { quantize_q8(c) };
            }
        }
        Acts::Q8K { .. } => crate::act::quantize_scalar(x, acts),
    }
}

/// `out[r·n + t] = dot(weight row r, activation row t)` for the rows in `w`.
///
/// # Panics
/// If the CPU lacks the features, or the sizes do not match (`w` whole rows of the
/// activations' width, `out` = rows × n).
pub(crate) fn rows(ty: QuantType, w: &[u8], acts: &Acts, out: &mut [f32]) {
    assert!(available(), "AVX2 kernels on a CPU without avx2/fma/f16c");
    match (ty, acts) {
        (
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0,
            Acts::Q8 {
                blocks,
                per_row,
                d,
                s,
                ..
            },
        ) => {
            let row_bytes = per_row * ty.block_bytes();
            assert!(w.len().is_multiple_of(row_bytes) && *per_row > 0);
            assert_eq!(out.len(), w.len() / row_bytes * (blocks.len() / per_row));
            assert!(d.len() == blocks.len() && s.len() == blocks.len());
            // SAFETY: the features the kernels enable were detected just above.
            unsafe { rows_q8(ty, w, blocks, d, s, *per_row, out) }
        }
        (
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K,
            Acts::Q8K {
                blocks, per_row, ..
            },
        ) => {
            let row_bytes = per_row * ty.block_bytes();
            assert!(w.len().is_multiple_of(row_bytes) && *per_row > 0);
            assert_eq!(out.len(), w.len() / row_bytes * (blocks.len() / per_row));
            // SAFETY: the features were detected just above and the sizes checked.
            unsafe { crate::x86_k::rows_k(ty, w, blocks, *per_row, out) }
        }
        _ => crate::engine::scalar_rows(ty, w, acts, out),
    }
}

/// One weight row against each activation row, for a block type of `B` bytes.
macro_rules! each_row {
    ($B:literal, $dot:ident, $w:expr, $acts:expr, $per_row:expr, $out:expr) => {{
        let (blocks, _) = $w.as_chunks::<$B>();
        let n = $acts.len() / $per_row;
        for (wr, o) in blocks.chunks_exact($per_row).zip($out.chunks_exact_mut(n)) {
            for (a, v) in $acts.chunks_exact($per_row).zip(o.iter_mut()) {
                *v = $dot(wr, a);
            }
        }
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q8(
    ty: QuantType,
    w: &[u8],
    acts: &[Q8Block],
    dy: &[f32],
    sy: &[f32],
    per_row: usize,
    out: &mut [f32],
) {
    match ty {
        QuantType::Q4_0 => each_row!(18, dot_q4_0, w, acts, per_row, out),
        QuantType::Q4_1 => rows_q4_1(w, acts, dy, sy, per_row, out),
        QuantType::Q8_0 => each_row!(34, dot_q8_0, w, acts, per_row, out),
        _ => unreachable!("rows_q8 on a K-quant"),
    }
}

/// Two packed `f16` (little-endian, low first) → `(f32, f32)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_pair(bits: u32) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// One `f16` → `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn f16_one(lo: u8, hi: u8) -> f32 {
    f16_pair(u32::from(u16::from_le_bytes([lo, hi]))).0
}

/// 16 bytes of packed nibbles at `b[at..at + 16]` → 32 bytes in `0..16`: low nibbles first,
/// then high nibbles (one broadcast load, one per-half shift, one mask).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn nibbles<const N: usize>(b: &[u8; N], at: usize) -> __m256i {
    assert!(at + 16 <= N);
    // SAFETY: 16 bytes at `at`, in bounds by the assert (a constant check once inlined).
    let q = unsafe { _mm_loadu_si128(b.as_ptr().add(at).cast()) };
    let both = _mm256_srlv_epi64(
        _mm256_broadcastsi128_si256(q),
        _mm256_setr_epi64x(0, 0, 4, 4),
    );
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}

/// The 32 quants of an activation block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_q8(y: &Q8Block) -> __m256i {
    // SAFETY: `qs` is 32 bytes; unaligned load.
    unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) }
}

/// Pairwise sums of `u8 × i8` products, as 8 `f32` lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_u8_i8(ux: __m256i, sy: __m256i) -> __m256 {
    let pairs = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Pairwise sums of `i8 × i8` products, as 8 `f32` lanes (`|x|·sign(x)·y`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    mul_sum_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// Sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Q4_0 row · Q8 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[[u8; 18]], act: &[Q8Block]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.iter().zip(act) {
        let d = f16_one(b[0], b[1]) * y.d;
        let qx = _mm256_sub_epi8(nibbles(b, 2), _mm256_set1_epi8(8));
        let xy = mul_sum_i8_i8(qx, load_q8(y));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), xy, acc);
    }
    hsum(acc)
}

/// The 8 `i32` lanes whose sum is Σ q·qy of one Q4_1 block (nibbles are unsigned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_lanes(b: &[u8; 20], y: &Q8Block) -> __m256i {
    let pairs = _mm256_maddubs_epi16(nibbles(b, 4), load_q8(y));
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// Sum of 8 `i32` lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_extracti128_si256(v, 1), _mm256_castsi256_si128(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01)))
}

/// Lane sums of 8 vectors at once: lane `k` of the result = Σ lanes of `v[k]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32_x8(v: &[__m256i; 8]) -> __m256i {
    // hadd works within 128-bit halves: after two levels, the low half of `a` holds the low
    // halves' sums of v0..v3 and its high half their high halves' sums; add the two.
    let a = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let b = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(a, b),
        _mm256_permute2x128_si256::<0x31>(a, b),
    )
}

/// `(d, m)` of 8 Q4_1 blocks as two 8-lane `f32` vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_scales_x8(b: &[[u8; 20]; 8]) -> (__m256, __m256) {
    let mut dm = [0i32; 8];
    for (v, b) in dm.iter_mut().zip(b) {
        *v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    // SAFETY: `dm` is 8 i32; unaligned load.
    let v = unsafe { _mm256_loadu_si256(dm.as_ptr().cast()) };
    // Per 128-bit half: [d0 m0 d1 m1 d2 m2 d3 m3] → [d0 d1 d2 d3 m0 m1 m2 m3]; then the 64-bit
    // quarters (d0-3, m0-3, d4-7, m4-7) → (d0-3, d4-7, m0-3, m4-7).
    let split = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15, //
        0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
    );
    let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_shuffle_epi8(v, split));
    (
        _mm256_cvtph_ps(_mm256_castsi256_si128(v)),
        _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(v)),
    )
}

/// One Q4_1 block's term, in the reference's `f32` arithmetic: `Σq·qy · d · dy + m · s`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_term(isum: i32, b: &[u8; 20], y: &Q8Block) -> f32 {
    let (d, m) = f16_pair(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    isum as f32 * d * y.d + m * y.s
}

/// Weight rows computed together by the Q4_1 kernel: their block-order `f32` sums are
/// independent dependency chains, which the CPU overlaps.
const Q4_1_ROWS: usize = 2;

/// Q4_1 rows · Q8 activation rows (see [`dot_q4_1`]); `dy`, `sy` are the activations' scales
/// as plain arrays, so the kernel loads 8 at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q4_1(w: &[u8], acts: &[Q8Block], dy: &[f32], sy: &[f32], per_row: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<20>();
    let n = acts.len() / per_row;
    // (No closures or `array::map` here: they would not be inlined into this
    // `#[target_feature]` function.)
    let rows = blocks.len() / per_row;
    let full = rows / Q4_1_ROWS * Q4_1_ROWS;
    for t in 0..n {
        let a = t * per_row..(t + 1) * per_row;
        let (act, dy, sy) = (&acts[a.clone()], &dy[a.clone()], &sy[a]);
        let mut r = 0;
        while r < full {
            let mut ws: [&[[u8; 20]]; Q4_1_ROWS] = [&[]; Q4_1_ROWS];
            for (i, wr) in ws.iter_mut().enumerate() {
                *wr = &blocks[(r + i) * per_row..(r + i + 1) * per_row];
            }
            let sums = dot_q4_1::<Q4_1_ROWS>(ws, act, dy, sy);
            for (i, v) in sums.into_iter().enumerate() {
                out[(r + i) * n + t] = v;
            }
            r += Q4_1_ROWS;
        }
        for r in full..rows {
            out[r * n + t] =
                dot_q4_1::<1>([&blocks[r * per_row..(r + 1) * per_row]], act, dy, sy)[0];
        }
    }
}

/// `R` Q4_1 rows · one row of Q8 activations: the block sums are exact integers and the block
/// terms `Σq·qy · d · dy + m · s` are computed 8 blocks at a time with the reference's `f32`
/// operations (no FMA), then added one block after another as the scalar reference does — so
/// each result equals the reference (and candle's `vec_dot` for Q4_1) bit for bit. Q4_1's
/// minimum term `m·s` nearly cancels the scaled quants, which makes its result sensitive to any
/// rounding change; keeping the reference order keeps whole-model outputs identical.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1<const R: usize>(
    w: [&[[u8; 20]]; R],
    act: &[Q8Block],
    dy: &[f32],
    sy: &[f32],
) -> [f32; R] {
    let mut sums = [0f32; R];
    let (a8, a_rest) = act.as_chunks::<8>();
    let (dy8, _) = dy.as_chunks::<8>();
    let (sy8, _) = sy.as_chunks::<8>();
    let mut w8: [&[[[u8; 20]; 8]]; R] = [&[]; R];
    for (d, src) in w8.iter_mut().zip(w) {
        *d = src.as_chunks::<8>().0;
    }
    for (g, ((ab, dyb), syb)) in a8.iter().zip(dy8).zip(sy8).enumerate() {
        // SAFETY: `dyb`, `syb` are 8 f32 each; unaligned loads.
        let (dyv, syv) = unsafe { (_mm256_loadu_ps(dyb.as_ptr()), _mm256_loadu_ps(syb.as_ptr())) };
        let mut terms = [[0f32; 8]; R];
        for (wr, t) in w8.iter().zip(terms.iter_mut()) {
            let wb = &wr[g];
            // Several rows are read side by side, which hardware prefetchers follow less well
            // than one stream: ask for the lines 4 groups (640 bytes) ahead of each.
            let ahead = wb.as_ptr().cast::<i8>().wrapping_add(4 * 160);
            for off in [0, 64, 128] {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off));
            }
            let mut lanes = [_mm256_setzero_si256(); 8];
            for (l, (b, y)) in lanes.iter_mut().zip(wb.iter().zip(ab)) {
                *l = q4_1_lanes(b, y);
            }
            let isum = _mm256_cvtepi32_ps(hsum_i32_x8(&lanes));
            let (d, m) = q4_1_scales_x8(wb);
            let v = _mm256_add_ps(
                _mm256_mul_ps(_mm256_mul_ps(isum, d), dyv),
                _mm256_mul_ps(m, syv),
            );
            // SAFETY: `t` is 8 f32; unaligned store.
            unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
        }
        for k in 0..8 {
            for (s, t) in sums.iter_mut().zip(&terms) {
                *s += t[k];
            }
        }
    }
    let done = a8.len() * 8;
    for (s, wr) in sums.iter_mut().zip(w) {
        for (b, y) in wr[done..].iter().zip(a_rest) {
            *s += q4_1_term(hsum_i32(q4_1_lanes(b, y)), b, y);
        }
    }
    sums
}

/// Q8_0 row · Q8 activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[[u8; 34]], act: &[Q8Block]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.iter().zip(act) {
        let d = f16_one(b[0], b[1]) * y.d;
        // SAFETY: bytes 2..34 of a 34-byte block.
        let qx = unsafe { _mm256_loadu_si256(b.as_ptr().add(2).cast()) };
        let xy = mul_sum_i8_i8(qx, load_q8(y));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), xy, acc);
    }
    hsum(acc)
}

/// 32 values → a [`Q8Block`], equal to [`crate::act::quantize_q8`] bit for bit.
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8(x: &[f32; 32]) -> Q8Block {
    let mut v = [_mm256_setzero_ps(); 4];
    for (k, v) in v.iter_mut().enumerate() {
        // SAFETY: 8-lane loads at offsets 0, 8, 16, 24 of a 32-float array.
        *v = unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * k)) };
    }
    let sign = _mm256_set1_ps(-0.0);
    let mut abs = [_mm256_setzero_ps(); 4];
    for (a, v) in abs.iter_mut().zip(&v) {
        *a = _mm256_andnot_ps(sign, *v);
    }
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // Round half away from zero (f32::round): truncate, then step away from zero when the
    // dropped fraction (exact: p − trunc(p)) is at least one half.
    let mut i = [_mm256_setzero_si256(); 4];
    for (i, v) in i.iter_mut().zip(&v) {
        let p = _mm256_mul_ps(*v, id);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(p);
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(p, t));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
        let step = _mm256_or_ps(_mm256_and_ps(p, sign), _mm256_set1_ps(1.0));
        *i = _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)));
    }
    let s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    let sum = hsum_i32(s);
    // i32 → i16 → i8 packs work per 128-bit lane; the permute puts the 4-byte groups back in
    // order (0, 4, 1, 5, 2, 6, 3, 7).
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let d = crate::quant::round_to_f16(d);
    let mut out = Q8Block {
        d,
        s: crate::quant::round_to_f16(crate::quant::round_to_f16(sum as f32) * d),
        qs: [0; 32],
    };
    // SAFETY: `qs` is 32 bytes; unaligned store.
    unsafe { _mm256_storeu_si256(out.qs.as_mut_ptr().cast(), p) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn simd_quantizer_equals_the_scalar_one_bit_for_bit(
            e in -6.0f32..6.0,
            x in prop::collection::vec(-1.0f32..1.0, 32),
            zero in any::<bool>(),
        ) {
            prop_assume!(available());
            let x: [f32; 32] = std::array::from_fn(|i| if zero { 0.0 } else { x[i] * 10f32.powf(e) });
            // SAFETY: the features were checked by `prop_assume!(available())`.
            let simd = unsafe { quantize_q8(&x) };
            prop_assert_eq!(simd, crate::act::quantize_q8(&x));
        }
    }

    #[test]
    fn ties_round_away_from_zero_like_the_scalar_quantizer() {
        if !available() {
            return;
        }
        // amax 127 → id 1: 0.5, 1.5, 2.5 are exact ties.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = 0.5;
        x[2] = 1.5;
        x[3] = -2.5;
        // SAFETY: checked `available()` above.
        let b = unsafe { quantize_q8(&x) };
        assert_eq!(&b.qs[..4], &[127, 1, 2, -3]);
        assert_eq!(b, crate::act::quantize_q8(&x));
    }
}
