//! Prompt tiles on 256-bit vectors (all six types) for x86 CPUs without AVX-512 VNNI: AVX2 (any x86-64 since
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
//! - Q4_K, Q5_K (fifth bit from `qh`), Q6_K (6-bit quants, the 32 offset as
//!   `maddubs(q, y) − maddubs(32, y)`): `vpmaddubsw`, then the sub-block scale by `vpmaddwd` +
//!   add (AVX2) or `vpdpwssd` (AVX-VNNI);
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
const RM: usize = 2;
/// Input rows per tile: 2 × 3 accumulators, the weight vectors and scales and the input's
/// three vectors fit in the 16 vector registers VEX code has (3 × 3 spilled: Q4_0 with
/// AVX-VNNI took 2.98 ms against 2.03 ms per 2048 × 2048 × 64 mat-mul here).
const RN: usize = 3;
/// Weight rows per K-quant tile: each output keeps three accumulators, so 1 × 4 (2 × 2 was
/// 10–25% slower).
const RM_K: usize = 1;
/// Input rows per K-quant tile.
const RN_K: usize = 4;
/// Input rows per pass over a transposed group of Q4_1 rows (3: 4 spilled, 5–10% slower).
const Q4_1_ROWS: usize = 3;
/// Weight rows run against all input rows before moving on (they stay in L2).
const PANEL_ROWS: usize = 64;

/// True when `ty` has a tile here.
pub(crate) fn tiles(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q4_0 | QuantType::Q8_0 | QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K
    )
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

#[macro_use]
mod k;
#[macro_use]
mod q4_1;
#[macro_use]
mod q8;

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
            q8_tiles!($feat);
            k_tiles!($feat);
            q4_1_tiles!($feat);
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
    let (per_row, n) = acts.dims();
    match acts {
        Acts::Q8 {
            blocks: act_blocks,
            d,
            s,
            ..
        } if n >= 2 && ty == QuantType::Q4_1 => {
            let (row_bytes, _) = acts.check_shape(ty, w, out.len());
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
            acts.check_shape(ty, w, out.len());
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
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
        Acts::Q8K { pairs, .. } if n >= 2 && tiles(ty) && !pairs.is_empty() => {
            acts.check_shape(ty, w, out.len());
            assert_eq!(pairs.len(), n.div_ceil(2) * per_row);
            // SAFETY: as above.
            unsafe {
                match (ty, vnni) {
                    (QuantType::Q4_K, false) => plain::tiled_k4::<144>(w, pairs, per_row, n, out),
                    (QuantType::Q4_K, true) => vnni::tiled_k4::<144>(w, pairs, per_row, n, out),
                    (QuantType::Q5_K, false) => plain::tiled_k4::<176>(w, pairs, per_row, n, out),
                    (QuantType::Q5_K, true) => vnni::tiled_k4::<176>(w, pairs, per_row, n, out),
                    (_, false) => plain::tiled_q6_k(w, pairs, per_row, n, out),
                    (_, true) => vnni::tiled_q6_k(w, pairs, per_row, n, out),
                }
            }
        }
        _ => crate::x86::rows(ty, w, acts, out),
    }
}
