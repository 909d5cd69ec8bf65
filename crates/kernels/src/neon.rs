//! NEON kernels for aarch64 — UNTESTED: this project has no ARM machine; they compile
//! (`cargo check --target aarch64-unknown-linux-gnu`) and follow the same arithmetic as the
//! scalar reference, but no test has run them. Report problems with `SHARDSWARM_KERNELS=scalar`
//! as the comparison.
//!
//! Baseline NEON only (no `dotprod`): `i8 × i8` products widen to `i16` (`vmull_s8`, never
//! overflowing: |p| ≤ 2¹⁴) and pairwise-add to `i32`; one `f32` FMA per block applies the
//! scales. Activations are quantized by the scalar reference; K-quants use the reference dot.

#![allow(unsafe_code)]

use crate::act::{Acts, Q8Block};
use crate::quant::{QuantType, f16_to_f32, le16};
use std::arch::aarch64::*;

/// True when this CPU has NEON (every aarch64 Linux CPU does).
pub(crate) fn available() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

/// True when this module has a SIMD dot product for `ty`.
pub(crate) fn accelerates(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0)
}

/// Quantizes `x` into `acts` (the scalar reference).
pub(crate) fn quantize(x: &[f32], acts: &mut Acts) {
    crate::act::quantize_scalar(x, acts);
}

/// `out[r·n + t] = dot(weight row r, activation row t)` for the rows in `w`.
///
/// # Panics
/// If the CPU lacks NEON or the sizes do not match.
pub(crate) fn rows(ty: QuantType, w: &[u8], acts: &Acts, out: &mut [f32]) {
    assert!(available(), "NEON kernels on a CPU without NEON");
    match (ty, acts) {
        (
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0,
            Acts::Q8 {
                blocks, per_row, ..
            },
        ) => {
            let row_bytes = per_row * ty.block_bytes();
            assert!(w.len().is_multiple_of(row_bytes) && *per_row > 0);
            assert_eq!(out.len(), w.len() / row_bytes * (blocks.len() / per_row));
            // SAFETY: NEON was detected just above.
            unsafe { rows_q8(ty, w, blocks, *per_row, out) }
        }
        _ => crate::engine::scalar_rows(ty, w, acts, out),
    }
}

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

#[target_feature(enable = "neon")]
fn rows_q8(ty: QuantType, w: &[u8], acts: &[Q8Block], per_row: usize, out: &mut [f32]) {
    match ty {
        QuantType::Q4_0 => each_row!(18, dot_q4_0, w, acts, per_row, out),
        QuantType::Q4_1 => each_row!(20, dot_q4_1, w, acts, per_row, out),
        QuantType::Q8_0 => each_row!(34, dot_q8_0, w, acts, per_row, out),
        _ => unreachable!("rows_q8 on a K-quant"),
    }
}

/// `Σ a·b` over 16 `i8` lanes, as 4 `i32` partial sums.
#[inline]
#[target_feature(enable = "neon")]
fn dot16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// The activation block's quants, as two 16-lane halves.
#[inline]
#[target_feature(enable = "neon")]
fn load_q8(y: &Q8Block) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 32 bytes: loads of 16 at offsets 0 and 16.
    unsafe { (vld1q_s8(y.qs.as_ptr()), vld1q_s8(y.qs.as_ptr().add(16))) }
}

/// 16 bytes of nibbles → (low nibbles, high nibbles) as `i8` minus `off`.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(q: uint8x16_t, off: i8) -> (int8x16_t, int8x16_t) {
    let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
    (vsubq_s8(lo, vdupq_n_s8(off)), vsubq_s8(hi, vdupq_n_s8(off)))
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_0(w: &[[u8; 18]], act: &[Q8Block]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, y) in w.iter().zip(act) {
        let d = f16_to_f32(le16(b, 0)) * y.d;
        // SAFETY: bytes 2..18 of an 18-byte block.
        let q = unsafe { vld1q_u8(b.as_ptr().add(2)) };
        let (lo, hi) = nibbles(q, 8);
        let (y0, y1) = load_q8(y);
        let s = vaddq_s32(dot16(lo, y0), dot16(hi, y1));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}

/// Q4_1: exact integer block sums, block terms added in block order as the scalar reference
/// does (see the x86 module for why).
#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_1(w: &[[u8; 20]], act: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in w.iter().zip(act) {
        let (d, m) = (f16_to_f32(le16(b, 0)), f16_to_f32(le16(b, 2)));
        // SAFETY: bytes 4..20 of a 20-byte block.
        let q = unsafe { vld1q_u8(b.as_ptr().add(4)) };
        let (lo, hi) = nibbles(q, 0);
        let (y0, y1) = load_q8(y);
        let isum = vaddvq_s32(vaddq_s32(dot16(lo, y0), dot16(hi, y1)));
        sum += isum as f32 * d * y.d + m * y.s;
    }
    sum
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q8_0(w: &[[u8; 34]], act: &[Q8Block]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (b, y) in w.iter().zip(act) {
        let d = f16_to_f32(le16(b, 0)) * y.d;
        // SAFETY: bytes 2..18 and 18..34 of a 34-byte block.
        let (x0, x1) = unsafe {
            (
                vld1q_s8(b.as_ptr().add(2).cast()),
                vld1q_s8(b.as_ptr().add(18).cast()),
            )
        };
        let (y0, y1) = load_q8(y);
        let s = vaddq_s32(dot16(x0, y0), dot16(x1, y1));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), d);
    }
    vaddvq_f32(acc)
}
