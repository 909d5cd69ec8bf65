//! The Q4_1 prompt kernel: one weight row per 32-bit lane.
//!
//! Q4_1's result must keep the reference's order — each block's term `Σq·y · d · d_y + m · s_y`
//! in `f32`, added one block after another (see `crate::x86::dot_q4_1`) — so the pair tiles of
//! the other types (8 partial lanes per output) do not fit. Here a lane is a whole output:
//! [`GROUP`] weight rows are transposed block by block (4 quants of row `r` in 32-bit lane `r`,
//! 8 vectors per block, once per call), and each activation row meets them with 8 `vpdpbusd`
//! whose other operand is one broadcast 4-byte group of the activation block. Lane `r` then holds
//! row `r`'s exact block sum, the term is computed with the reference's `f32` operations on 16
//! outputs at once, and added to that output's running sum in block order — the reference's
//! result, bit for bit.

#![allow(unsafe_code)]

use crate::act::Q8Block;
use std::arch::x86_64::*;

/// Weight rows per group: one per 32-bit lane of a 512-bit vector.
pub(super) const GROUP: usize = 16;
/// Activation rows run together against a group's transposed blocks (4: 8 and more spilled
/// registers, 0.92 against 0.70 ms per 2048 × 2048 × 64 mat-mul).
const ROWS: usize = 4;
/// Bytes of a Q4_1 block.
const BLOCK: usize = 20;

/// One block of [`GROUP`] rows, transposed: `q[s]` lane `r` = quants `4s..4s + 4` of row `r`
/// (unsigned, 0..16), `d`/`m` lane `r` = row `r`'s scale and minimum.
#[derive(Clone, Copy)]
struct Transposed {
    q: [__m512i; 8],
    d: __m512,
    m: __m512,
}

/// `out[r·n + t]` for the first `rows / GROUP · GROUP` rows of `w` (Q4_1, `per_row` blocks each)
/// against the `n` activation rows `acts` (their scales and `s` terms in `dy`, `sy`). Returns
/// how many rows it did; the caller runs the rest.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VNNI, AVX2, FMA and F16C; `w` holds whole rows, `acts`,
/// `dy` and `sy` `n · per_row` entries, `out` rows × n values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn rows_q4_1(
    w: &[u8],
    acts: &[Q8Block],
    dy: &[f32],
    sy: &[f32],
    per_row: usize,
    out: &mut [f32],
) -> usize {
    let row_bytes = per_row * BLOCK;
    let rows = w.len() / row_bytes;
    let n = acts.len() / per_row;
    let groups = rows / GROUP;
    let mut tw = vec![
        Transposed {
            q: [_mm512_setzero_si512(); 8],
            d: _mm512_setzero_ps(),
            m: _mm512_setzero_ps(),
        };
        per_row
    ];
    for g in 0..groups {
        let base = &w[g * GROUP * row_bytes..(g + 1) * GROUP * row_bytes];
        transpose(base, row_bytes, &mut tw);
        let out = &mut out[g * GROUP * n..(g + 1) * GROUP * n];
        let mut t = 0;
        while t + ROWS <= n {
            pass::<ROWS>(&tw, acts, dy, sy, t, n, out);
            t += ROWS;
        }
        while t < n {
            pass::<1>(&tw, acts, dy, sy, t, n, out);
            t += 1;
        }
    }
    groups * GROUP
}

/// Transposes the blocks of [`GROUP`] rows starting at `base` (rows `row_bytes` apart).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn transpose(base: &[u8], row_bytes: usize, tw: &mut [Transposed]) {
    assert!(base.len() >= GROUP * row_bytes && row_bytes <= i32::MAX as usize / GROUP);
    let lane_rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    let m4 = _mm512_set1_epi8(0x0f);
    for (b, t) in tw.iter_mut().enumerate() {
        let at = b * BLOCK;
        // SAFETY: every gathered dword lies in row r's block b: offsets r·row_bytes + 20b + k
        // with k ≤ 16, < GROUP·row_bytes ≤ base.len() (asserted); the indices fit in i32.
        unsafe {
            let p = base.as_ptr().add(at);
            let dm = _mm512_i32gather_epi32::<1>(lane_rows, p.cast());
            t.d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm));
            t.m = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dm)));
            for k in 0..4 {
                let v = _mm512_i32gather_epi32::<1>(lane_rows, p.add(4 + 4 * k).cast());
                // Quants 4k.. are the low nibbles of bytes 4k.., quants 16 + 4k.. their high.
                t.q[k] = _mm512_and_si512(v, m4);
                t.q[4 + k] = _mm512_and_si512(_mm512_srli_epi32::<4>(v), m4);
            }
        }
    }
}

/// Activation rows `t0..t0 + N` against the transposed group: writes `out[r·n + t]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
fn pass<const N: usize>(
    tw: &[Transposed],
    acts: &[Q8Block],
    dy: &[f32],
    sy: &[f32],
    t0: usize,
    n: usize,
    out: &mut [f32],
) {
    let per_row = tw.len();
    let mut acc = [_mm512_setzero_ps(); N];
    for (b, t) in tw.iter().enumerate() {
        for (j, acc) in acc.iter_mut().enumerate() {
            let i = (t0 + j) * per_row + b;
            let y = &acts[i];
            // Two chains of 4, so the 8 dependent `vpdpbusd` overlap; the sums are exact.
            let mut even = _mm512_setzero_si512();
            let mut odd = _mm512_setzero_si512();
            for k in 0..4 {
                let quad = |s: usize| {
                    i32::from_le_bytes([
                        y.qs[4 * s] as u8,
                        y.qs[4 * s + 1] as u8,
                        y.qs[4 * s + 2] as u8,
                        y.qs[4 * s + 3] as u8,
                    ])
                };
                even = _mm512_dpbusd_epi32(even, t.q[2 * k], _mm512_set1_epi32(quad(2 * k)));
                odd = _mm512_dpbusd_epi32(odd, t.q[2 * k + 1], _mm512_set1_epi32(quad(2 * k + 1)));
            }
            let isum = _mm512_cvtepi32_ps(_mm512_add_epi32(even, odd));
            // The reference's term: (Σq·y · d) · d_y + m · s_y, no FMA.
            let term = _mm512_add_ps(
                _mm512_mul_ps(_mm512_mul_ps(isum, t.d), _mm512_set1_ps(dy[i])),
                _mm512_mul_ps(t.m, _mm512_set1_ps(sy[i])),
            );
            *acc = _mm512_add_ps(*acc, term);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let mut v = [0f32; GROUP];
        // SAFETY: `v` is 16 f32; unaligned store.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *a) };
        for (r, v) in v.iter().enumerate() {
            out[r * n + t0 + j] = *v;
        }
    }
}
