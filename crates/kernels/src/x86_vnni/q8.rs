//! The Q4_0 and Q8_0 prompt tiles and the one-row Q4_0 weight-row pairs (see the module above
//! for the lane layout).

#![allow(unsafe_code)]

use super::{PANEL_ROWS, RM, RN, halves, store};
use crate::act::Q8Pair;
use std::arch::x86_64::*;

/// All weight rows of `w` (blocks of `B` bytes: 18 = Q4_0, 34 = Q8_0) against all pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn tiled<const B: usize>(
    w: &[u8],
    pairs: &[Q8Pair],
    per_row: usize,
    n: usize,
    out: &mut [f32],
) {
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

/// One activation row (paired with itself: `y | y`) against the Q4_0 weight rows of `w`, two rows
/// per 512-bit vector (row `r` in the low half, `r + 1` in the high half): the lanes hold the
/// AVX2 kernel's integers, so the results are its results bit for bit. An odd last row is
/// paired with itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) fn row_pairs(w: &[u8], pairs: &[Q8Pair], per_row: usize, out: &mut [f32]) {
    let (blocks, _) = w.as_chunks::<18>();
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
fn row_pair_step<const P: usize>(
    rows: &[[&[[u8; 18]]; 2]; P],
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
        // −8 · Σy per lane (Q4_0's offset).
        let init = _mm512_slli_epi32::<3>(neg);
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

/// Two Q4_0 blocks' nibbles as unsigned bytes (see [`weight_bytes`]): `lo`'s in the low 256
/// bits, `hi`'s in the high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn two_weight_blocks(lo: &[u8; 18], hi: &[u8; 18]) -> __m512i {
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
