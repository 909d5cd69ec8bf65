//! Prompt tiles on 256-bit vectors for x86 CPUs without AVX-512 VNNI: AVX2 (any x86-64 since
//! Haswell) and AVX-VNNI (256-bit `vpdpbusd`/`vpdpwssd`: Intel since Alder Lake).
//!
//! The per-row AVX2 kernels ([`crate::x86`], [`crate::x86_k`]) unpack every weight block once per
//! input row. Here [`RM`] weight rows meet [`RN`] input rows per pass (a tile), so each block is
//! unpacked once per tile and each input block loaded once per tile. Each output keeps the 8
//! `i32` lanes of the per-row kernel — the same exact integers — and the same `f32` steps (scale
//! `d_w·d_y`, one FMA per block in block order, the same horizontal sum), so the results are the
//! per-row kernels' results bit for bit. The integer dot products:
//! - Q4_0: the nibbles go in unsigned (`q`, value `q − 8`) and `8·Σy` comes back out through the
//!   activation's lane sums (as in [`crate::x86_vnni`]); AVX2: `vpmaddubsw` + `vpmaddwd`,
//!   AVX-VNNI: one `vpdpbusd`;
//! - Q8_0: AVX2 keeps the sign trick (`|x|`, `sign(y, x)`: `x + 128` would overflow
//!   `vpmaddubsw`'s 16-bit pairs), AVX-VNNI takes `x + 128` and subtracts `128·Σy`;
//! - Q4_K: `vpmaddubsw`, then the sub-block scale by `vpmaddwd` + add (AVX2) or `vpdpwssd`;
//! - Q4_1, whose reference sums block terms in block order: 8 weight rows transposed one per
//!   32-bit lane (as `crate::x86_vnni::q4_1` does with 16), so each lane is a whole output.
//!
//! The activations are the row pairs of the AVX-512 kernels ([`crate::act::Q8Pair`],
//! [`crate::act::Q8KPair`]): row `t` is half `t % 2` of pair `t / 2`.

#![allow(unsafe_code)]

use crate::act::{Q8Block, Q8KPair, Q8Pair};
use crate::quant::QuantType;
use std::arch::x86_64::*;

/// Weight rows per tile.
const RM: usize = 3;
/// Input rows per tile (3 × 3 accumulators, 3 weight vectors and one input vector fit in the
/// 16 vector registers).
const RN: usize = 3;
/// Q4_K tiles: 2 × 2 (each output keeps three accumulators).
const RM_K: usize = 2;
/// See [`RN`].
const RN_K: usize = 2;
/// Weight rows run against all input rows before moving on (they stay in L2).
const PANEL_ROWS: usize = 64;

/// True when `ty` has a tile here.
pub(crate) fn tiles(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_0 | QuantType::Q8_0 | QuantType::Q4_K)
}

/// Row `t`'s quants in a pair (32 bytes at `32·(t % 2)`).
#[inline]
fn half(qs: &[i8; 64], t: usize) -> &[i8] {
    &qs[32 * (t % 2)..32 * (t % 2) + 32]
}

/// Panels of [`PANEL_ROWS`] weight rows; in each, every group of `N` input rows (then single
/// ones); in each, every group of `M` weight rows (then single ones).
macro_rules! row_tiles {
    ($rows:expr, $n:expr, $M:expr, $N:expr, |$r:ident, $t:ident, $m:tt, $nn:tt| $tile:expr) => {{
        let (rows, n) = ($rows, $n);
        let mut panel = 0;
        while panel < rows {
            let end = (panel + PANEL_ROWS).min(rows);
            let mut $t = 0;
            while $t < n {
                let mut $r = panel;
                let step = if $t + $N <= n { $N } else { 1 };
                while $r < end {
                    match (step == $N, $r + $M <= end) {
                        (true, true) => {
                            const $m: usize = $M;
                            const $nn: usize = $N;
                            $tile;
                            $r += $M;
                        }
                        (true, false) => {
                            const $m: usize = 1;
                            const $nn: usize = $N;
                            $tile;
                            $r += 1;
                        }
                        (false, true) => {
                            const $m: usize = $M;
                            const $nn: usize = 1;
                            $tile;
                            $r += $M;
                        }
                        (false, false) => {
                            const $m: usize = 1;
                            const $nn: usize = 1;
                            $tile;
                            $r += 1;
                        }
                    }
                }
                $t += step;
            }
            panel = end;
        }
    }};
}

/// One set of tile kernels for the target features `$feat`, with the integer steps given:
/// `dot4(acc, u8s, i8s)` adds the 4-byte products per lane; `dot_q8(x, y, neg_sums)` is Q8_0's
/// lane sums; `scaled(acc, pairs16, scale16)` adds the scaled 16-bit pair sums.
macro_rules! tile_kernels {
    (
        $module:ident, $feat:literal,
        dot4: |$a:ident, $u:ident, $s:ident| $dot4:expr,
        dot_q8: |$x:ident, $y:ident, $ns:ident| $dot_q8:expr,
        scaled: |$acc:ident, $p:ident, $sc:ident| $scaled:expr $(,)?
    ) => {
        /// Tile kernels for these target features (see the module doc).
        pub(crate) mod $module {
            use super::*;

            /// See the macro doc.
            #[inline]
            #[target_feature(enable = $feat)]
            fn dot4($a: __m256i, $u: __m256i, $s: __m256i) -> __m256i {
                $dot4
            }

            /// See the macro doc.
            #[inline]
            #[target_feature(enable = $feat)]
            fn dot_q8($x: __m256i, $y: __m256i, $ns: __m256i) -> __m256i {
                $dot_q8
            }

            /// See the macro doc.
            #[inline]
            #[target_feature(enable = $feat)]
            fn scaled($acc: __m256i, $p: __m256i, $sc: __m256i) -> __m256i {
                $scaled
            }

            /// All Q4_0 (`B` = 18) or Q8_0 (`B` = 34) rows of `w` against the `n` input rows.
            ///
            /// # Safety
            /// The CPU must have `$feat`; `w` holds whole rows of `per_row` blocks, `pairs`
            /// `n.div_ceil(2) · per_row` entries and `out` rows × n values.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn tiled_q8<const B: usize>(
                w: &[u8],
                pairs: &[Q8Pair],
                per_row: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let (blocks, _) = w.as_chunks::<B>();
                row_tiles!(blocks.len() / per_row, n, RM, RN, |r, t, M, N| {
                    tile_q8::<B, M, N>(blocks, r, pairs, t, per_row, n, out)
                });
            }

            /// Weight rows `r0..r0 + M` × input rows `t0..t0 + N`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn tile_q8<const B: usize, const M: usize, const N: usize>(
                blocks: &[[u8; B]],
                r0: usize,
                pairs: &[Q8Pair],
                t0: usize,
                per_row: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let mut acc = [[_mm256_setzero_ps(); N]; M];
                for b in 0..per_row {
                    let mut wq = [_mm256_setzero_si256(); M];
                    let mut wd = [_mm256_setzero_ps(); M];
                    for i in 0..M {
                        let blk = &blocks[(r0 + i) * per_row + b];
                        wq[i] = if B == 18 {
                            q4_nibbles(blk)
                        } else {
                            assert!(B >= 34);
                            // SAFETY: bytes 2..34 of a block of ≥ 34 bytes (asserted).
                            unsafe { _mm256_loadu_si256(blk.as_ptr().add(2).cast()) }
                        };
                        wd[i] = _mm256_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
                    }
                    for j in 0..N {
                        let t = t0 + j;
                        let y = &pairs[(t / 2) * per_row + b];
                        let h = 8 * (t % 2);
                        // SAFETY: 32 bytes, 8 f32 and 8 i32 inside the pair's 64-byte fields.
                        let (yq, yd, ns) = unsafe {
                            (
                                _mm256_loadu_si256(half(&y.qs, t).as_ptr().cast()),
                                _mm256_loadu_ps(y.d.as_ptr().add(h)),
                                _mm256_loadu_si256(y.neg_sums.as_ptr().add(h).cast()),
                            )
                        };
                        let init = if B == 18 {
                            _mm256_slli_epi32::<3>(ns)
                        } else {
                            ns
                        };
                        for i in 0..M {
                            let isum = if B == 18 {
                                dot4(init, wq[i], yq)
                            } else {
                                dot_q8(wq[i], yq, init)
                            };
                            let xy = _mm256_cvtepi32_ps(isum);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], yd), xy, acc[i][j]);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    for (j, a) in acc.iter().enumerate() {
                        out[(r0 + i) * n + t0 + j] = crate::x86::hsum(*a);
                    }
                }
            }

            /// The 32 nibbles of a Q4_0 block as unsigned bytes (low nibbles first).
            #[inline]
            #[target_feature(enable = $feat)]
            fn q4_nibbles<const B: usize>(blk: &[u8; B]) -> __m256i {
                assert!(B >= 18);
                // SAFETY: bytes 2..18 of a block of ≥ 18 bytes (asserted).
                let q = unsafe { _mm_loadu_si128(blk.as_ptr().add(2).cast()) };
                let both = _mm256_srlv_epi64(
                    _mm256_broadcastsi128_si256(q),
                    _mm256_setr_epi64x(0, 0, 4, 4),
                );
                _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
            }

            /// All Q4_K rows of `w` against the `n` input rows.
            ///
            /// # Safety
            /// As [`tiled_q8`].
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn tiled_q4_k(
                w: &[u8],
                pairs: &[Q8KPair],
                per_row: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let (blocks, _) = w.as_chunks::<144>();
                row_tiles!(blocks.len() / per_row, n, RM_K, RN_K, |r, t, M, N| {
                    tile_q4_k::<M, N>(blocks, r, pairs, t, per_row, n, out)
                });
            }

            /// Q4_K weight rows `r0..r0 + M` × input rows `t0..t0 + N`, as
            /// `crate::x86_k::dot_q4_k` computes each.
            #[inline]
            #[target_feature(enable = $feat)]
            fn tile_q4_k<const M: usize, const N: usize>(
                blocks: &[[u8; 144]],
                r0: usize,
                pairs: &[Q8KPair],
                t0: usize,
                per_row: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let m4 = _mm256_set1_epi8(0x0f);
                let mut acc = [[_mm256_setzero_ps(); N]; M];
                let mut acc_m = [[_mm_setzero_ps(); N]; M];
                for b in 0..per_row {
                    let mut sm = [[0u8; 16]; M];
                    for (i, sm) in sm.iter_mut().enumerate() {
                        *sm = crate::x86_k::scales_mins_k4(&blocks[(r0 + i) * per_row + b][4..16]);
                    }
                    let mut sumi = [[_mm256_setzero_si256(); N]; M];
                    for s in 0..8 {
                        for i in 0..M {
                            let blk = &blocks[(r0 + i) * per_row + b];
                            // SAFETY: 32 bytes at 16 + 32·(s / 2) ≤ 112 of a 144-byte block.
                            let q = unsafe {
                                _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * (s / 2)).cast())
                            };
                            let q = if s % 2 == 0 {
                                _mm256_and_si256(q, m4)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4)
                            };
                            let scale = _mm256_set1_epi16(i16::from(sm[i][s]));
                            for j in 0..N {
                                let t = t0 + j;
                                let y = &pairs[(t / 2) * per_row + b];
                                // SAFETY: 32 bytes inside the pair's 64-byte sub-block row.
                                let yq = unsafe {
                                    _mm256_loadu_si256(half(&y.qs[s], t).as_ptr().cast())
                                };
                                let p = _mm256_maddubs_epi16(q, yq);
                                sumi[i][j] = scaled(sumi[i][j], p, scale);
                            }
                        }
                    }
                    for i in 0..M {
                        let blk = &blocks[(r0 + i) * per_row + b];
                        let d = _mm256_set1_ps(crate::x86::f16_one(blk[0], blk[1]));
                        let dmin = _mm_set1_ps(crate::x86::f16_one(blk[2], blk[3]));
                        // SAFETY: `sm[i]` is 16 bytes; the high 8 are the minimums.
                        let mins = _mm_cvtepu8_epi16(unsafe {
                            _mm_loadl_epi64(sm[i].as_ptr().add(8).cast())
                        });
                        for j in 0..N {
                            let t = t0 + j;
                            let y = &pairs[(t / 2) * per_row + b];
                            let (h8, h4) = (8 * (t % 2), 4 * (t % 2));
                            // SAFETY: 8 f32, 8 i16 and 4 f32 inside the pair's fields.
                            let (yd, sub_sums, neg_d4) = unsafe {
                                (
                                    _mm256_loadu_ps(y.d.as_ptr().add(h8)),
                                    _mm_loadu_si128(y.sub_sums.as_ptr().add(h8).cast()),
                                    _mm_loadu_ps(y.neg_d4.as_ptr().add(h4)),
                                )
                            };
                            let min_prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, sub_sums));
                            acc_m[i][j] =
                                _mm_fmadd_ps(_mm_mul_ps(dmin, neg_d4), min_prod, acc_m[i][j]);
                            let sumf = _mm256_cvtepi32_ps(sumi[i][j]);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(d, yd), sumf, acc[i][j]);
                        }
                    }
                }
                for i in 0..M {
                    for j in 0..N {
                        let m = acc_m[i][j];
                        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
                        let m = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
                        out[(r0 + i) * n + t0 + j] = crate::x86::hsum(acc[i][j]) + m;
                    }
                }
            }

            /// Q4_1 weight rows (8 per group, one per 32-bit lane, transposed block by block)
            /// against the `n` input rows, as `crate::x86_vnni::q4_1` does on 512 bits: each lane
            /// sums its row's exact block sums with the reference's `f32` steps in block order.
            /// Returns how many rows it did (whole groups); the caller runs the rest.
            ///
            /// # Safety
            /// The CPU must have `$feat`; `w` holds whole rows of `per_row` blocks, `acts`,
            /// `dy` and `sy` `n · per_row` entries, `out` rows × n values.
            #[target_feature(enable = $feat)]
            pub(crate) unsafe fn rows_q4_1(
                w: &[u8],
                acts: &[Q8Block],
                dy: &[f32],
                sy: &[f32],
                per_row: usize,
                out: &mut [f32],
            ) -> usize {
                let row_bytes = per_row * 20;
                let n = acts.len() / per_row;
                let groups = w.len() / row_bytes / 8;
                assert!(row_bytes <= i32::MAX as usize / 8);
                let lanes = _mm256_mullo_epi32(
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                    _mm256_set1_epi32(row_bytes as i32),
                );
                let mut tq = vec![[_mm256_setzero_si256(); 8]; per_row];
                let mut td = vec![[_mm256_setzero_ps(); 2]; per_row];
                for g in 0..groups {
                    let base = &w[g * 8 * row_bytes..(g + 1) * 8 * row_bytes];
                    for (b, (q, dm)) in tq.iter_mut().zip(td.iter_mut()).enumerate() {
                        let mut d = [0u16; 8];
                        let mut m = [0u16; 8];
                        for r in 0..8 {
                            let blk = &base[r * row_bytes + 20 * b..];
                            d[r] = u16::from_le_bytes([blk[0], blk[1]]);
                            m[r] = u16::from_le_bytes([blk[2], blk[3]]);
                        }
                        // SAFETY: 8 u16 each; unaligned loads. The gathers read dword k of
                        // row r's quants, inside `base` (r < 8, 20b + 4 + 4k + 4 ≤ row_bytes).
                        unsafe {
                            dm[0] = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
                            dm[1] = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().cast()));
                            let p = base.as_ptr().add(20 * b + 4).cast::<i32>();
                            for k in 0..4 {
                                let v = _mm256_i32gather_epi32::<1>(p.byte_add(4 * k), lanes);
                                q[k] = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
                                q[4 + k] = _mm256_and_si256(
                                    _mm256_srli_epi32::<4>(v),
                                    _mm256_set1_epi8(0x0f),
                                );
                            }
                        }
                    }
                    let out = &mut out[g * 8 * n..(g + 1) * 8 * n];
                    let mut t = 0;
                    while t + 4 <= n {
                        pass_q4_1::<4>(&tq, &td, acts, dy, sy, t, n, out);
                        t += 4;
                    }
                    while t < n {
                        pass_q4_1::<1>(&tq, &td, acts, dy, sy, t, n, out);
                        t += 1;
                    }
                }
                groups * 8
            }

            /// Input rows `t0..t0 + N` against a transposed group of 8 Q4_1 rows.
            #[inline]
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $feat)]
            fn pass_q4_1<const N: usize>(
                tq: &[[__m256i; 8]],
                td: &[[__m256; 2]],
                acts: &[Q8Block],
                dy: &[f32],
                sy: &[f32],
                t0: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let per_row = tq.len();
                let mut acc = [_mm256_setzero_ps(); N];
                for (b, (q, dm)) in tq.iter().zip(td).enumerate() {
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let i = (t0 + j) * per_row + b;
                        let y = &acts[i].qs;
                        let mut even = _mm256_setzero_si256();
                        let mut odd = _mm256_setzero_si256();
                        for k in 0..4 {
                            let quad = |s: usize| {
                                i32::from_le_bytes([
                                    y[4 * s] as u8,
                                    y[4 * s + 1] as u8,
                                    y[4 * s + 2] as u8,
                                    y[4 * s + 3] as u8,
                                ])
                            };
                            even = dot4(even, q[2 * k], _mm256_set1_epi32(quad(2 * k)));
                            odd = dot4(odd, q[2 * k + 1], _mm256_set1_epi32(quad(2 * k + 1)));
                        }
                        let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(even, odd));
                        // The reference's term: (Σq·y · d) · d_y + m · s_y, no FMA.
                        let term = _mm256_add_ps(
                            _mm256_mul_ps(_mm256_mul_ps(isum, dm[0]), _mm256_set1_ps(dy[i])),
                            _mm256_mul_ps(dm[1], _mm256_set1_ps(sy[i])),
                        );
                        *acc = _mm256_add_ps(*acc, term);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let mut v = [0f32; 8];
                    // SAFETY: `v` is 8 f32; unaligned store.
                    unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *a) };
                    for (r, v) in v.iter().enumerate() {
                        out[r * n + t0 + j] = *v;
                    }
                }
            }
        }
    };
}

tile_kernels!(
    plain, "avx2,fma,f16c",
    dot4: |acc, u, s| _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
    ),
    // The per-row kernel's sign trick (no offset: `neg_sums` unused).
    dot_q8: |x, y, neg_sums| {
        let _ = neg_sums;
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    },
    scaled: |acc, p, scale| _mm256_add_epi32(acc, _mm256_madd_epi16(scale, p)),
);

tile_kernels!(
    vnni, "avx2,fma,f16c,avxvnni",
    dot4: |acc, u, s| _mm256_dpbusd_avx_epi32(acc, u, s),
    dot_q8: |x, y, neg_sums| _mm256_dpbusd_avx_epi32(
        _mm256_slli_epi32::<7>(neg_sums),
        _mm256_xor_si256(x, _mm256_set1_epi8(i8::MIN)),
        y,
    ),
    scaled: |acc, p, scale| _mm256_dpwssd_avx_epi32(acc, p, scale),
);

/// `out[r·n + t] = dot(weight row r, input row t)` for the rows in `w`: the tiles of
/// `plain` (or `vnni` when `vnni`) for prompts of the types they cover, else the per-row AVX2
/// kernels.
///
/// # Panics
/// If the CPU lacks the features (AVX2, FMA, F16C; AVX-VNNI when `vnni`), or the sizes do not
/// match (`w` whole rows of the activations' width, `out` = rows × n).
pub(crate) fn rows(vnni: bool, ty: QuantType, w: &[u8], acts: &crate::act::Acts, out: &mut [f32]) {
    use crate::act::Acts;
    assert!(crate::x86::available() && (!vnni || is_x86_feature_detected!("avxvnni")));
    let (blocks, per_row) = match acts {
        Acts::Q8 {
            blocks, per_row, ..
        } => (blocks.len(), *per_row),
        Acts::Q8K {
            blocks, per_row, ..
        } => (blocks.len(), *per_row),
    };
    let n = blocks / per_row.max(1);
    let checked = |pairs: usize| {
        let row_bytes = per_row * ty.block_bytes();
        assert!(per_row > 0 && w.len().is_multiple_of(row_bytes));
        assert_eq!(out.len(), w.len() / row_bytes * n);
        assert_eq!(pairs, n.div_ceil(2) * per_row);
    };
    match acts {
        Acts::Q8 {
            blocks: act_blocks,
            d,
            s,
            ..
        } if n >= 2 && ty == QuantType::Q4_1 => {
            let row_bytes = per_row * ty.block_bytes();
            assert!(per_row > 0 && w.len().is_multiple_of(row_bytes));
            assert_eq!(out.len(), w.len() / row_bytes * n);
            assert!(d.len() == act_blocks.len() && s.len() == act_blocks.len());
            // SAFETY: the features were checked above, the sizes just now.
            let done = unsafe {
                if vnni {
                    vnni::rows_q4_1(w, act_blocks, d, s, per_row, out)
                } else {
                    plain::rows_q4_1(w, act_blocks, d, s, per_row, out)
                }
            };
            crate::x86::rows(ty, &w[done * row_bytes..], acts, &mut out[done * n..]);
        }
        Acts::Q8 { pairs, .. } if n >= 2 && tiles(ty) && !pairs.is_empty() => {
            checked(pairs.len());
            // SAFETY: the features were checked above, the sizes just now.
            unsafe {
                match (ty, vnni) {
                    (QuantType::Q4_0, false) => plain::tiled_q8::<18>(w, pairs, per_row, n, out),
                    (QuantType::Q4_0, true) => vnni::tiled_q8::<18>(w, pairs, per_row, n, out),
                    (_, false) => plain::tiled_q8::<34>(w, pairs, per_row, n, out),
                    (_, true) => vnni::tiled_q8::<34>(w, pairs, per_row, n, out),
                }
            }
        }
        Acts::Q8K { pairs, .. } if n >= 2 && ty == QuantType::Q4_K && !pairs.is_empty() => {
            checked(pairs.len());
            // SAFETY: as above.
            unsafe {
                if vnni {
                    vnni::tiled_q4_k(w, pairs, per_row, n, out)
                } else {
                    plain::tiled_q4_k(w, pairs, per_row, n, out)
                }
            }
        }
        _ => crate::x86::rows(ty, w, acts, out),
    }
}
