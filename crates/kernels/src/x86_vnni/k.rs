//! The Q4_K, Q5_K and Q6_K prompt tiles (see the module above for how they follow the AVX2
//! kernels).

#![allow(unsafe_code)]

use super::{PANEL_ROWS, RM_K, RN, halves, hsum4, store};
use crate::act::Q8KPair;
use std::arch::x86_64::*;

/// All Q4_K (`B` = 144) or Q5_K (`B` = 176) weight rows of `w` against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn tiled_k4<const B: usize>(
    w: &[u8],
    pairs: &[Q8KPair],
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let (blocks, _) = w.as_chunks::<B>();
    // Each block's unpacked scales, once: a tile would redo them for every group of inputs.
    let sms: Vec<[u8; 16]> = blocks
        .iter()
        .map(|b| crate::x86_k::scales_mins_k4(&b[4..16]))
        .collect();
    tiles!(
        blocks.len() / per_row,
        pairs.len() / per_row,
        RM_K,
        RN,
        |r, p, M, N| tile_k4::<B, M, N>(blocks, &sms, r, pairs, p, per_row, n, out)
    );
}

/// Q4_K or Q5_K weight rows `r0..r0 + M` × activation pairs `p0..p0 + N` (see the module
/// doc). They differ in Q5_K's fifth bit (bit `s` of each `qh` byte for sub-block `s`, moved to
/// bit 4) and its minimum term, which the AVX2 kernel sums as one scalar per block.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn tile_k4<const B: usize, const M: usize, const N: usize>(
    blocks: &[[u8; B]],
    sms: &[[u8; 16]],
    r0: usize,
    pairs: &[Q8KPair],
    p0: usize,
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let q5 = B == 176;
    assert!(B == 144 || q5);
    let qs_at = if q5 { 48 } else { 16 };
    let m4 = _mm512_set1_epi8(0x0f);
    let mut acc = [[_mm512_setzero_ps(); N]; M];
    // Q4_K: the 4-lane minimum accumulator of each row, side by side; Q5_K: the scalar sum
    // in lanes 0 and 4.
    let mut acc_m = [[_mm256_setzero_ps(); N]; M];
    let ws = &blocks[r0 * per_row..(r0 + M) * per_row];
    let ys = &pairs[p0 * per_row..(p0 + N) * per_row];
    for b in 0..per_row {
        let mut sm = [[0u8; 16]; M];
        let mut sub_scales = [[0i16; M]; 8];
        for (i, sm) in sm.iter_mut().enumerate() {
            *sm = sms[(r0 + i) * per_row + b];
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
                // Sub-blocks 2k and 2k + 1 are the low and high nibbles of bytes qs_at + 32k..
                assert!(qs_at + 32 * 4 <= B);
                // SAFETY: 32 bytes at qs_at + 32·(s / 2) ≤ B − 32 (asserted).
                let q =
                    unsafe { _mm256_loadu_si256(blk.as_ptr().add(qs_at + 32 * (s / 2)).cast()) };
                let q = _mm512_broadcast_i64x4(q);
                let mut q = if s % 2 == 0 {
                    _mm512_and_si512(q, m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4)
                };
                if q5 {
                    // SAFETY: the 32 `qh` bytes at 16..48 of a 176-byte block.
                    let hb = unsafe { _mm256_loadu_si256(blk.as_ptr().add(16).cast()) };
                    let bit =
                        _mm512_srl_epi16(_mm512_broadcast_i64x4(hb), _mm_cvtsi32_si128(s as i32));
                    let high = _mm512_and_si512(bit, _mm512_set1_epi8(1));
                    q = _mm512_add_epi8(q, _mm512_slli_epi16::<4>(high));
                }
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
                let min_prod = _mm256_madd_epi16(mins, sub_sums);
                let scale_m = _mm256_mul_ps(dmin, neg_d4);
                acc_m[i][j] = if q5 {
                    // Each half's 4 lanes summed into its lane 0, times dmin, then added.
                    let zero = _mm256_setzero_si256();
                    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(min_prod, zero), zero);
                    let term = _mm256_mul_ps(scale_m, _mm256_cvtepi32_ps(h));
                    _mm256_add_ps(acc_m[i][j], term)
                } else {
                    let min_prod = _mm256_cvtepi32_ps(min_prod);
                    _mm256_fmadd_ps(scale_m, min_prod, acc_m[i][j])
                };
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
            let (m_lo, m_hi) = (
                _mm256_castps256_ps128(acc_m[i][j]),
                _mm256_extractf128_ps::<1>(acc_m[i][j]),
            );
            let (m_lo, m_hi) = if q5 {
                (_mm_cvtss_f32(m_lo), _mm_cvtss_f32(m_hi))
            } else {
                (hsum4(m_lo), hsum4(m_hi))
            };
            row[t] = crate::x86::hsum(lo) + m_lo;
            if let Some(v) = row.get_mut(t + 1) {
                *v = crate::x86::hsum(hi) + m_hi;
            }
        }
    }
}

/// All Q6_K weight rows of `w` against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn tiled_q6_k(w: &[u8], pairs: &[Q8KPair], per_row: usize, n: usize, out: &mut [f32]) {
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
pub(super) fn tile_q6_k<const M: usize, const N: usize>(
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
