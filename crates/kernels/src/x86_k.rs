//! AVX2 + FMA + F16C dot products of the K-quants Q4_K, Q5_K and Q6_K with Q8_K activations.
//!
//! ggml's technique (`ggml-cpu/arch/x86/quants.c`), in our code, with the exact lane layout and
//! `f32` operation order of candle 0.11's AVX2 kernels (which follow ggml's), so results equal
//! candle's bit for bit and the model's whole-model reference tests stay exact:
//! - per super-block, 4-bit (or 6-bit) quants times activation quants are summed pairwise by
//!   `vpmaddubsw` (no overflow: |pair| ≤ 2·63·128 < 2¹⁵ for Q6_K's 0..64 after the offset is
//!   taken out separately), then scaled by the sub-block scales with `vpmaddwd`, into 8 `i32`
//!   lanes;
//! - Q4_K's and Q5_K's minimums meet the activation's 16-value partial sums (`bsums`);
//! - Q5_K's fifth bit comes from the 32-byte `qh` plane: sub-block `k` takes bit `k` of each
//!   byte, shifted to bit 4 and added to the low nibble, so its quants are 0..32 (unsigned, as
//!   `vpmaddubsw` wants);
//! - one FMA per super-block applies `d_w · d_x` (and `−dmin · d_x`) in `f32`.
//!

#![allow(unsafe_code)]

use crate::act::Q8KBlock;
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// True when this module has a SIMD dot product for `ty`.
pub(crate) fn accelerates(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K)
}

/// `out[r·n + t] = dot(weight row r, activation row t)` for Q4_K, Q5_K or Q6_K rows.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold whole rows of `per_row` blocks and
/// `out` rows × n values (the caller, `crate::x86::rows`, checks both).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_k(
    ty: QuantType,
    w: &[u8],
    acts: &[Q8KBlock],
    per_row: usize,
    out: &mut [f32],
) {
    let n = acts.len() / per_row;
    macro_rules! each_row {
        ($B:literal, $dot:ident) => {{
            let (blocks, _) = w.as_chunks::<$B>();
            for (wr, o) in blocks.chunks_exact(per_row).zip(out.chunks_exact_mut(n)) {
                for (a, v) in acts.chunks_exact(per_row).zip(o.iter_mut()) {
                    *v = $dot(wr, a);
                }
            }
        }};
    }
    match ty {
        QuantType::Q4_K => each_row!(144, dot_q4_k),
        QuantType::Q5_K => each_row!(176, dot_q5_k),
        QuantType::Q6_K => each_row!(210, dot_q6_k),
        _ => unreachable!("rows_k on {ty:?}"),
    }
}

/// Sum of 8 lanes, as candle/ggml's `hsum_float_8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `f16` (two little-endian bytes) → `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(lo: u8, hi: u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes([lo, hi]),
    ))))
}

/// 32 bytes at `b[at..at + 32]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32<const N: usize>(b: &[u8; N], at: usize) -> __m256i {
    assert!(at + 32 <= N);
    // SAFETY: in bounds by the assert; unaligned load.
    unsafe { _mm256_loadu_si256(b.as_ptr().add(at).cast()) }
}

/// 32 activation quants at `y.qs[at..at + 32]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_q8k(y: &Q8KBlock, at: usize) -> __m256i {
    assert!(at + 32 <= 256);
    // SAFETY: in bounds by the assert; unaligned load.
    unsafe { _mm256_loadu_si256(y.qs.as_ptr().add(at).cast()) }
}

/// The 8 scales then 8 minimums of a Q4_K/Q5_K block (6 bits each, packed in 12 bytes; see
/// `crate::scalar::scale_min_k4`), as 16 bytes.
#[inline]
pub(crate) fn scales_mins_k4(q: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for j in 0..4 {
        out[j] = q[j] & 63;
        out[8 + j] = q[j + 4] & 63;
        out[4 + j] = (q[j + 8] & 0xf) | ((q[j] >> 6) << 4);
        out[12 + j] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    out
}

/// What Q4_K and Q5_K blocks share before their quants.
struct K4Head {
    /// The block's `d` times the activation block's.
    d: f32,
    /// Minus the block's `dmin` times the activation block's.
    dmin: f32,
    /// The 8 sub-block scales as 16-bit values, repeated in both 128-bit lanes.
    scales: __m256i,
    /// The minimum term before `dmin`: `min_k · (bsum_2k + bsum_2k+1)` for k in 0..4 (pairs of
    /// i16 products summed into i32 lanes by `madd`).
    min_prod: __m128i,
}

/// Reads a Q4_K/Q5_K block's `d`, `dmin` and packed scales/mins (bytes 0..16) against `y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k4_head<const N: usize>(b: &[u8; N], y: &Q8KBlock) -> K4Head {
    let d = y.d * f16_at(b[0], b[1]);
    let dmin = -y.d * f16_at(b[2], b[3]);
    let sm = scales_mins_k4(&b[4..16]);
    // SAFETY: `sm` is 16 bytes; unaligned load.
    let sm = unsafe { _mm_loadu_si128(sm.as_ptr().cast()) };
    let mins_and_scales = _mm256_cvtepu8_epi16(sm);
    // Minimum term: Σ over sub-blocks of min · (sum of its 32 activation quants).
    // SAFETY: `bsums` is 16 i16 = 32 bytes; unaligned load.
    let bsums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
    let q8s = _mm_hadd_epi16(
        _mm256_castsi256_si128(bsums),
        _mm256_extracti128_si256::<1>(bsums),
    );
    let min_prod = _mm_madd_epi16(_mm256_extracti128_si256::<1>(mins_and_scales), q8s);
    let sc = _mm256_castsi256_si128(mins_and_scales);
    K4Head {
        d,
        dmin,
        scales: _mm256_set_m128i(sc, sc),
        min_prod,
    }
}

/// Sub-block `k`'s scale (of [`K4Head::scales`]) broadcast to every 16-bit lane.
#[inline]
#[target_feature(enable = "avx2")]
fn sub_scale(scales: __m256i, k: u8) -> __m256i {
    _mm256_shuffle_epi8(
        scales,
        _mm256_set1_epi16(i16::from_le_bytes([2 * k, 2 * k + 1])),
    )
}

/// Q4_K row · Q8_K activations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_k(w: &[[u8; 144]], act: &[Q8KBlock]) -> f32 {
    let m4 = _mm256_set1_epi8(0xf);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (b, y) in w.iter().zip(act) {
        let K4Head {
            d,
            dmin,
            scales,
            min_prod,
        } = k4_head(b, y);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(min_prod), acc_m);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_l = sub_scale(scales, 2 * j as u8);
            let scale_h = sub_scale(scales, 2 * j as u8 + 1);
            let q4 = load32(b, 16 + 32 * j);
            let q4l = _mm256_and_si256(q4, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4);
            let pl = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, load_q8k(y, 64 * j)));
            sumi = _mm256_add_epi32(sumi, pl);
            let ph =
                _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, load_q8k(y, 64 * j + 32)));
            sumi = _mm256_add_epi32(sumi, ph);
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    hsum(acc) + _mm_cvtss_f32(acc_m)
}

/// Q5_K row · Q8_K activations (block: d, dmin, 12 bytes of scales/mins, 32 bytes `qh`, 128
/// bytes of low nibbles), in candle 0.11's operation order: the minimum term is summed as a
/// scalar per block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_k(w: &[[u8; 176]], act: &[Q8KBlock]) -> f32 {
    let m4 = _mm256_set1_epi8(0xf);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (b, y) in w.iter().zip(act) {
        let K4Head {
            d,
            dmin,
            scales,
            min_prod,
        } = k4_head(b, y);
        let zero = _mm_setzero_si128();
        let h = _mm_hadd_epi32(_mm_hadd_epi32(min_prod, zero), zero);
        summs += dmin * _mm_cvtsi128_si32(h) as f32;
        let hbits = load32(b, 16);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_0 = sub_scale(scales, 2 * j as u8);
            let scale_1 = sub_scale(scales, 2 * j as u8 + 1);
            let q5 = load32(b, 48 + 32 * j);
            // Bit 2j (then 2j + 1) of every qh byte, moved to bit 4.
            let h0 = _mm256_and_si256(hbits, _mm256_set1_epi8(1 << (2 * j)));
            let h1 = _mm256_and_si256(hbits, _mm256_set1_epi8(1 << (2 * j + 1)));
            let (h0, h1) = match j {
                0 => (_mm256_slli_epi16::<4>(h0), _mm256_slli_epi16::<3>(h1)),
                1 => (_mm256_slli_epi16::<2>(h0), _mm256_slli_epi16::<1>(h1)),
                2 => (h0, _mm256_srli_epi16::<1>(h1)),
                _ => (_mm256_srli_epi16::<2>(h0), _mm256_srli_epi16::<3>(h1)),
            };
            let q5_0 = _mm256_add_epi8(_mm256_and_si256(q5, m4), h0);
            let q5_1 = _mm256_add_epi8(_mm256_and_si256(_mm256_srli_epi16::<4>(q5), m4), h1);
            let p0 = _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q5_0, load_q8k(y, 64 * j)));
            let p1 = _mm256_madd_epi16(
                scale_1,
                _mm256_maddubs_epi16(q5_1, load_q8k(y, 64 * j + 32)),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) + summs
}

/// Q6_K groups `g` and `g + 1` (of the block's 16 `i8` scales in `scales`) as 16 `i16` lanes:
/// 8 copies of group `g`'s scale, then 8 of group `g + 1`'s — the multipliers of the pair sums
/// of 32 quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn q6_group_scales(scales: __m128i, g: usize) -> __m256i {
    let (g, h) = (g as i8, g as i8 + 1);
    let pick = _mm_setr_epi8(g, g, g, g, g, g, g, g, h, h, h, h, h, h, h, h);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick))
}

/// Quants `32k..32k + 32` of a Q6_K half block, 0..64: the low nibbles of `ql` (k < 2) or
/// its high nibbles (k ≥ 2) — `ql` being the half's bytes `32·(k % 2)..` — plus bits `2k..2k+2`
/// of each `qh` byte as bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn q6_quants(ql: __m256i, qh: __m256i, k: usize) -> __m256i {
    let m4 = _mm256_set1_epi8(0xf);
    let low = if k < 2 {
        _mm256_and_si256(ql, m4)
    } else {
        _mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4)
    };
    let bits = match k {
        0 => qh,
        1 => _mm256_srli_epi16::<2>(qh),
        2 => _mm256_srli_epi16::<4>(qh),
        _ => _mm256_srli_epi16::<6>(qh),
    };
    let high = _mm256_slli_epi16::<4>(_mm256_and_si256(bits, _mm256_set1_epi8(3)));
    _mm256_or_si256(low, high)
}

/// Q6_K row · Q8_K activations. The 6-bit quants are used unsigned (0..64) and the offset 32
/// is subtracted as `32 · Σ qy` per pair, as ggml does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6_k(w: &[[u8; 210]], act: &[Q8KBlock]) -> f32 {
    let m32s = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (b, y) in w.iter().zip(act) {
        let d = y.d * f16_at(b[208], b[209]);
        // SAFETY: bytes 192..208 of a 210-byte block; unaligned load.
        let scales = unsafe { _mm_loadu_si128(b.as_ptr().add(192).cast()) };
        let mut sumi = _mm256_setzero_si256();
        for j in 0..2 {
            let ql1 = load32(b, 64 * j);
            let ql2 = load32(b, 64 * j + 32);
            let qh = load32(b, 128 + 32 * j);
            let q = [
                q6_quants(ql1, qh, 0),
                q6_quants(ql2, qh, 1),
                q6_quants(ql1, qh, 2),
                q6_quants(ql2, qh, 3),
            ];
            let mut p = [_mm256_setzero_si256(); 4];
            for (k, (p, q)) in p.iter_mut().zip(q).enumerate() {
                let qy = load_q8k(y, 128 * j + 32 * k);
                let raw =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q, qy), _mm256_maddubs_epi16(m32s, qy));
                *p = _mm256_madd_epi16(q6_group_scales(scales, 8 * j + 2 * k), raw);
            }
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[0], p[1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p[2], p[3]));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}
