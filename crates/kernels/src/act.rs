//! Activations quantized to 8 bits, once per input row, for the integer dot products.
//!
//! Two formats, in our own structs:
//! - [`Q8Block`] (32 values) serves Q4_0, Q4_1 and Q8_0 weights: ggml's `block_q8_0` plus the
//!   `s` of `block_q8_1`, with the scales kept as `f32` (holding `f16` values) so the hot loop
//!   converts nothing. `d = f16(amax / 127)`, `q = round(x · 127 / amax)` (ties away from
//!   zero), `s = f16(f16(Σq) · d)`.
//! - [`Q8KBlock`] (256 values) serves the K-quants: ggml's `block_q8_K` (`f32` scale chosen so
//!   the largest-magnitude value maps to −127, and the sums of each 16 values); quantized by
//!   the scalar code on every instruction set (two blocks per row at these widths).
//!
//! These are the numbers candle 0.11 computes (`BlockQ8_0`/`BlockQ8_1::from_float`), which the
//! model's whole-model reference tests compare against: with them our Q4_0/Q4_1/Q8_0 layers
//! give candle's results bit for bit. (ggml's own quantizer differs only in the last bits: it
//! rounds `s = f16(d · Σq)` from the unrounded `d`, and ties to even in its AVX2 version.)
//! The SIMD quantizers reproduce the scalar ones bit for bit. Non-finite inputs give
//! unspecified (but memory-safe) quants, as in ggml.

use crate::quant::{ActKind, QuantType, round_to_f16};

/// 32 activations quantized to `i8` with a scale.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    /// Scale: `amax / 127` rounded to `f16`.
    pub d: f32,
    /// `f16(f16(Σ qs) · d)`; used by Q4_1's minimum term.
    pub s: f32,
    /// Quantized values, `round(x · 127 / amax)` in `-127..=127`.
    pub qs: [i8; 32],
}

/// 256 activations quantized to `i8` with an `f32` scale and 16-value partial sums.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8KBlock {
    /// Scale: `x ≈ d · q`.
    pub d: f32,
    /// Quantized values in `-128..=127`.
    pub qs: [i8; 256],
    /// `bsums[j] = Σ qs[16j..16j + 16]`.
    pub bsums: [i16; 16],
}

/// Block `b` of two activation rows side by side, for the prompt kernels: with AVX-512 one
/// 64-byte vector holds both rows' quants, so each weight block is unpacked once for two rows
/// and each 32-bit lane of a `vpdpbusd` sums the same four products as a lane of the AVX2 path;
/// the 256-bit tiles read one half (one row) at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct Q8Pair {
    /// Row `t`'s 32 quants, then row `t + 1`'s (zeros when `t` is the last of several rows,
    /// row `t` again when it is the only one).
    pub(crate) qs: [i8; 64],
    /// Row `t`'s scale in lanes 0..8, row `t + 1`'s in lanes 8..16.
    pub(crate) d: [f32; 16],
    /// `−Σ qs[4k..4k + 4]` per 32-bit lane `k`: with unsigned weight bytes (Q4_0's nibbles,
    /// Q8_0's quants + 128) the kernel subtracts `offset · Σ` through this.
    pub(crate) neg_sums: [i32; 16],
}

impl Q8Pair {
    /// Rows `a` and `b` (`None`: a zero row).
    fn new(a: &Q8Block, b: Option<&Q8Block>) -> Self {
        let b = b.unwrap_or(&Q8Block::ZERO);
        let mut qs = [0i8; 64];
        qs[..32].copy_from_slice(&a.qs);
        qs[32..].copy_from_slice(&b.qs);
        let mut neg_sums = [0i32; 16];
        for (s, q) in neg_sums.iter_mut().zip(qs.chunks_exact(4)) {
            *s = -q.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        let mut d = [a.d; 16];
        d[8..].fill(b.d);
        Q8Pair { qs, d, neg_sums }
    }
}

/// Super-block `b` of two activation rows side by side, for the K-quant prompt kernels (see
/// [`Q8Pair`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct Q8KPair {
    /// Per 32-value sub-block `s`: row `t`'s quants, then row `t + 1`'s.
    pub(crate) qs: [[i8; 64]; 8],
    /// Row `t`'s scale in lanes 0..8, row `t + 1`'s in lanes 8..16.
    pub(crate) d: [f32; 16],
    /// The quants' sum over each sub-block: row `t`'s 8, then row `t + 1`'s.
    pub(crate) sub_sums: [i16; 16],
    /// Minus the scales, 4 lanes each (for the minimum term's 4-lane accumulator).
    pub(crate) neg_d4: [f32; 8],
}

impl Q8KPair {
    /// Rows `a` and `b` (`None`: a zero row).
    fn new(a: &Q8KBlock, b: Option<&Q8KBlock>) -> Self {
        let b = b.unwrap_or(&Q8KBlock::ZERO);
        let mut qs = [[0i8; 64]; 8];
        let mut sub_sums = [0i16; 16];
        for (s, v) in qs.iter_mut().enumerate() {
            v[..32].copy_from_slice(&a.qs[32 * s..32 * s + 32]);
            v[32..].copy_from_slice(&b.qs[32 * s..32 * s + 32]);
            // As AVX2's `hadd` of the 16-value sums: wrapping (never reached: |Σ| ≤ 32·128).
            sub_sums[s] = a.bsums[2 * s].wrapping_add(a.bsums[2 * s + 1]);
            sub_sums[8 + s] = b.bsums[2 * s].wrapping_add(b.bsums[2 * s + 1]);
        }
        let mut d = [a.d; 16];
        d[8..].fill(b.d);
        let mut neg_d4 = [-a.d; 8];
        neg_d4[4..].fill(-b.d);
        Q8KPair {
            qs,
            d,
            sub_sums,
            neg_d4,
        }
    }
}

impl Q8Block {
    /// All zeros.
    pub const ZERO: Q8Block = Q8Block {
        d: 0.0,
        s: 0.0,
        qs: [0; 32],
    };
}

impl Q8KBlock {
    /// All zeros.
    pub const ZERO: Q8KBlock = Q8KBlock {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
}

/// `n` input rows of `cols` values each, quantized for one weight type's dot product.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Acts {
    /// For Q4_0/Q4_1/Q8_0: `n · cols / 32` blocks, row after row.
    Q8 {
        /// The blocks.
        blocks: Vec<Q8Block>,
        /// Blocks per row.
        per_row: usize,
        /// `blocks[i].d` and `blocks[i].s` as plain arrays, for 8-wide loads
        /// (filled by [`Acts::finish`]).
        d: Vec<f32>,
        /// See `d`.
        s: Vec<f32>,
        /// Rows `2p` and `2p + 1` side by side, block by block (`pairs[p · per_row + b]`),
        /// for the AVX-512 VNNI prompt kernels; empty unless [`Acts::pair`] filled it.
        pairs: Vec<Q8Pair>,
    },
    /// For the K-quants: `n · cols / 256` blocks, row after row.
    Q8K {
        /// The blocks.
        blocks: Vec<Q8KBlock>,
        /// Blocks per row.
        per_row: usize,
        /// As the pairs of [`Acts::Q8`].
        pairs: Vec<Q8KPair>,
    },
}

impl Acts {
    /// Completes the derived fields once the blocks are quantized.
    pub(crate) fn finish(&mut self) {
        if let Acts::Q8 { blocks, d, s, .. } = self {
            *d = blocks.iter().map(|b| b.d).collect();
            *s = blocks.iter().map(|b| b.s).collect();
        }
    }

    /// The number of blocks and blocks per row.
    fn blocks(&self) -> (usize, usize) {
        match self {
            Acts::Q8 {
                blocks, per_row, ..
            } => (blocks.len(), *per_row),
            Acts::Q8K {
                blocks, per_row, ..
            } => (blocks.len(), *per_row),
        }
    }

    /// Blocks per row and the number of input rows.
    pub(crate) fn dims(&self) -> (usize, usize) {
        let (blocks, per_row) = self.blocks();
        (per_row, blocks / per_row.max(1))
    }

    /// Checks that `w` holds whole rows of `ty` as wide as these activations and that an output
    /// of `out` values is rows × n; returns the weight row's bytes and n.
    ///
    /// # Panics
    /// If not.
    pub(crate) fn check_shape(&self, ty: QuantType, w: &[u8], out: usize) -> (usize, usize) {
        let (blocks, per_row) = self.blocks();
        assert!(per_row > 0);
        let (row_bytes, n) = (per_row * ty.block_bytes(), blocks / per_row);
        assert!(w.len().is_multiple_of(row_bytes) && blocks.is_multiple_of(per_row));
        assert_eq!(out, w.len() / row_bytes * n);
        (row_bytes, n)
    }

    /// Fills the row pairs (an odd last row is paired with zeros, a single row with itself).
    pub(crate) fn pair(&mut self) {
        match self {
            Acts::Q8 {
                blocks,
                per_row,
                pairs,
                ..
            } => *pairs = paired(blocks, *per_row, Q8Pair::new),
            Acts::Q8K {
                blocks,
                per_row,
                pairs,
            } => *pairs = paired(blocks, *per_row, Q8KPair::new),
        }
    }

    /// Zeroed room for `n` rows of `cols` values (`cols` a multiple of the block size).
    pub(crate) fn zeroed(kind: ActKind, n: usize, cols: usize) -> Self {
        match kind {
            ActKind::Q8 => Acts::Q8 {
                blocks: vec![Q8Block::ZERO; n * cols / 32],
                per_row: cols / 32,
                d: Vec::new(),
                s: Vec::new(),
                pairs: Vec::new(),
            },
            ActKind::Q8K => Acts::Q8K {
                blocks: vec![Q8KBlock::ZERO; n * cols / 256],
                per_row: cols / 256,
                pairs: Vec::new(),
            },
        }
    }
}

/// Rows `2p` and `2p + 1` of `blocks` (`per_row` blocks each) side by side, block by block;
/// a single row is paired with itself (the one-row kernels pair weight rows instead).
fn paired<B, P>(blocks: &[B], per_row: usize, pair: fn(&B, Option<&B>) -> P) -> Vec<P> {
    let rows: Vec<&[B]> = blocks.chunks_exact(per_row).collect();
    let single = rows.len() == 1;
    rows.chunks(2)
        .flat_map(|two| {
            let (a, b) = (two[0], two.get(1).or(single.then_some(&two[0])));
            a.iter()
                .enumerate()
                .map(move |(i, x)| pair(x, b.map(|b| &b[i])))
        })
        .collect()
}

/// Quantizes 32 values into a [`Q8Block`] (scalar reference).
pub fn quantize_q8(x: &[f32; 32]) -> Q8Block {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v·id| ≤ 127 (plus rounding), so the cast never saturates for finite inputs.
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    let d = round_to_f16(d);
    Q8Block {
        d,
        s: round_to_f16(round_to_f16(sum as f32) * d),
        qs,
    }
}

/// Quantizes 256 values into a [`Q8KBlock`] (scalar reference, ggml's `quantize_row_q8_K_ref`
/// with ties away from zero, as candle's).
pub fn quantize_q8k(x: &[f32; 256]) -> Q8KBlock {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return Q8KBlock::ZERO;
    }
    let iscale = -127.0 / max;
    let mut out = Q8KBlock::ZERO;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = (iscale * v).round().clamp(-128.0, 127.0) as i8;
    }
    for (s, group) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
        *s = group.iter().map(|&q| i16::from(q)).sum();
    }
    out.d = 1.0 / iscale;
    out
}

/// Scalar quantization of `x` (`n · cols` values) into `acts` (from [`Acts::zeroed`]).
pub(crate) fn quantize_scalar(x: &[f32], acts: &mut Acts) {
    match acts {
        Acts::Q8 { blocks, .. } => {
            for (b, chunk) in blocks.iter_mut().zip(x.chunks_exact(32)) {
                if let Ok(chunk) = chunk.try_into() {
                    *b = quantize_q8(chunk);
                }
            }
        }
        Acts::Q8K { blocks, .. } => {
            for (b, chunk) in blocks.iter_mut().zip(x.chunks_exact(256)) {
                if let Ok(chunk) = chunk.try_into() {
                    *b = quantize_q8k(chunk);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_round_trips_within_half_a_step() {
        let x: [f32; 32] = std::array::from_fn(|i| (i as f32 - 15.5) * 0.37);
        let b = quantize_q8(&x);
        assert!(b.qs.iter().any(|&q| q.abs() == 127));
        for (q, v) in b.qs.iter().zip(x) {
            // d is rounded to f16 (rel. 2^-11) after the quants were chosen with the exact d.
            assert!((f32::from(*q) * b.d - v).abs() <= 0.5 * b.d + 127.0 * b.d / 2048.0);
        }
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        assert!((b.s - b.d * sum as f32).abs() <= 1e-3 * (b.d * sum as f32).abs().max(b.d));
        // Ties go away from zero, as f32::round (candle's quantizer).
        let mut t = [0f32; 32];
        t[0] = 127.0;
        t[1] = 0.5;
        t[2] = -2.5;
        assert_eq!(&quantize_q8(&t).qs[..3], &[127, 1, -3]);
    }

    #[test]
    fn q8k_maps_the_extreme_to_minus_127_and_sums_groups() {
        let x: [f32; 256] = std::array::from_fn(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01);
        let b = quantize_q8k(&x);
        let extreme = x.iter().position(|v| v.abs() == 0.5).unwrap_or(0);
        assert_eq!(b.qs[extreme], -127);
        for (j, s) in b.bsums.iter().enumerate() {
            let want: i16 = b.qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(*s, want);
        }
        for (q, v) in b.qs.iter().zip(x) {
            assert!((f32::from(*q) * b.d - v).abs() <= 0.5 * b.d.abs() * 1.0001);
        }
    }

    #[test]
    fn zeros_quantize_to_zero() {
        assert_eq!(quantize_q8(&[0.0; 32]), Q8Block::ZERO);
        assert_eq!(quantize_q8k(&[0.0; 256]), Q8KBlock::ZERO);
    }
}
