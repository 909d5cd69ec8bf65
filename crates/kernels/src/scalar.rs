//! The scalar reference: dequantization and integer dot products for every supported type.
//!
//! Written for clarity, not speed: each block's quants are decoded to integers, multiplied with
//! the activation quants in `i32` (exact), and only the per-block (or per-super-block) integer
//! sums are scaled in `f32`, in block order — ggml's generic `ggml_vec_dot_*` arithmetic. The
//! SIMD kernels must agree with these up to `f32` summation order (see the property tests).
//!
//! K-quant element order inside a 256-value super-block (ggml's `dequantize_row_*_K`):
//! - Q4_K / Q5_K: sub-block `sb = e / 32` (8 of them, each with a 6-bit scale and minimum from
//!   `scale_min_k4`); value `e = 32·sb + l` is nibble `sb % 2` of `qs[32·(sb / 2) + l]`,
//!   plus (Q5_K) 16 × bit `sb` of `qh[l]`; `x = d·scale·q − dmin·min`.
//! - Q6_K: value `e = 128·h + 32·k + l` (`h` < 2, `k` < 4, `l` < 32) is nibble `k / 2` of
//!   `ql[64·h + 32·(k % 2) + l]` plus 16 × bits `2k..2k + 2` of `qh[32·h + l]`, minus 32;
//!   its scale is `scales[e / 16]` (`i8`); `x = d·scale·q`.

use crate::act::{Q8Block, Q8KBlock};
use crate::quant::{QuantType, f16_to_f32, le16};

/// Scale and minimum of Q4_K/Q5_K sub-block `j` (< 8) from the 12 packed bytes: the first four
/// are the low 6 bits of bytes 0..4 / 4..8; the last four take their low 4 bits from bytes
/// 8..12 and their top 2 bits from the top bits of bytes 0..4 / 4..8.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Integer quants of one K-quant super-block (before the minimum / offset is applied), and the
/// integer scale of each of its groups (`group = 256 / scales.len()` values each).
struct KBlock {
    q: [i32; 256],
    scales: [i32; 16],
    mins: [i32; 16],
    groups: usize,
    d: f32,
    dmin: f32,
}

fn decode_k(ty: QuantType, b: &[u8]) -> KBlock {
    let mut k = KBlock {
        q: [0; 256],
        scales: [0; 16],
        mins: [0; 16],
        groups: 8,
        d: 0.0,
        dmin: 0.0,
    };
    match ty {
        QuantType::Q4_K | QuantType::Q5_K => {
            k.d = f16_to_f32(le16(b, 0));
            k.dmin = f16_to_f32(le16(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if ty == QuantType::Q5_K {
                (Some(&b[16..48]), &b[48..176])
            } else {
                (None, &b[16..144])
            };
            for sb in 0..8 {
                let (sc, m) = scale_min_k4(sb, scales);
                k.scales[sb] = i32::from(sc);
                k.mins[sb] = i32::from(m);
                for l in 0..32 {
                    let byte = qs[32 * (sb / 2) + l];
                    let mut q = i32::from((byte >> (4 * (sb % 2))) & 0xf);
                    if let Some(qh) = qh {
                        q += 16 * i32::from((qh[l] >> sb) & 1);
                    }
                    k.q[32 * sb + l] = q;
                }
            }
        }
        QuantType::Q6_K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            k.d = f16_to_f32(le16(b, 208));
            k.groups = 16;
            for (s, &v) in k.scales.iter_mut().zip(sc) {
                *s = i32::from(v as i8);
            }
            for h in 0..2 {
                for kk in 0..4 {
                    for l in 0..32 {
                        let lo = (ql[64 * h + 32 * (kk % 2) + l] >> (4 * (kk / 2))) & 0xf;
                        let hi = (qh[32 * h + l] >> (2 * kk)) & 3;
                        k.q[128 * h + 32 * kk + l] = i32::from(lo | (hi << 4)) - 32;
                    }
                }
            }
        }
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => {
            unreachable!("decode_k on a 32-value type")
        }
    }
    k
}

/// Dequantizes one row (`row.len()` a multiple of the block size in bytes) into `out`.
///
/// # Panics
/// If `out.len()` is not the row's number of values.
pub fn dequantize_row(ty: QuantType, row: &[u8], out: &mut [f32]) {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    assert_eq!(
        row.len() / bb * be,
        out.len(),
        "dequantize_row: size mismatch"
    );
    for (b, y) in row.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 => {
                let d = f16_to_f32(le16(b, 0));
                let (m, qs, off) = if ty == QuantType::Q4_1 {
                    (f16_to_f32(le16(b, 2)), &b[4..20], 0.0)
                } else {
                    (0.0, &b[2..18], 8.0)
                };
                for (j, &q) in qs.iter().enumerate() {
                    y[j] = d * (f32::from(q & 0xf) - off) + m;
                    y[j + 16] = d * (f32::from(q >> 4) - off) + m;
                }
            }
            QuantType::Q8_0 => {
                let d = f16_to_f32(le16(b, 0));
                for (v, &q) in y.iter_mut().zip(&b[2..34]) {
                    *v = d * f32::from(q as i8);
                }
            }
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => {
                let k = decode_k(ty, b);
                let per = 256 / k.groups;
                for (e, v) in y.iter_mut().enumerate() {
                    let g = e / per;
                    *v = k.d * (k.scales[g] * k.q[e]) as f32 - k.dmin * k.mins[g] as f32;
                }
            }
        }
    }
}

/// Integer dot product of 32 weight quants (given by `wq`) with an activation block.
fn isum32(wq: impl Fn(usize) -> i32, y: &Q8Block) -> i32 {
    (0..32).map(|j| wq(j) * i32::from(y.qs[j])).sum()
}

/// Dot product of one Q4_0/Q4_1/Q8_0 row with the activation blocks of one input row.
///
/// # Panics
/// If the row and the activations do not have the same number of blocks.
pub fn dot_q8(ty: QuantType, row: &[u8], act: &[Q8Block]) -> f32 {
    let bb = ty.block_bytes();
    assert_eq!(row.len(), act.len() * bb, "dot_q8: size mismatch");
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(act) {
        let d = f16_to_f32(le16(b, 0));
        match ty {
            QuantType::Q4_0 => {
                let qs = &b[2..18];
                let nib = |j: usize| i32::from((qs[j % 16] >> (4 * (j / 16))) & 0xf) - 8;
                sum += isum32(nib, y) as f32 * d * y.d;
            }
            QuantType::Q4_1 => {
                let m = f16_to_f32(le16(b, 2));
                let qs = &b[4..20];
                let nib = |j: usize| i32::from((qs[j % 16] >> (4 * (j / 16))) & 0xf);
                sum += isum32(nib, y) as f32 * d * y.d + m * y.s;
            }
            QuantType::Q8_0 => {
                let qs = &b[2..34];
                sum += isum32(|j| i32::from(qs[j] as i8), y) as f32 * d * y.d;
            }
            _ => unreachable!("dot_q8 on a K-quant"),
        }
    }
    sum
}

/// Dot product of one Q4_K/Q5_K/Q6_K row with the activation blocks of one input row.
///
/// # Panics
/// If the row and the activations do not have the same number of blocks.
pub fn dot_q8k(ty: QuantType, row: &[u8], act: &[Q8KBlock]) -> f32 {
    let bb = ty.block_bytes();
    assert_eq!(row.len(), act.len() * bb, "dot_q8k: size mismatch");
    let mut sum = 0f32;
    for (b, y) in row.chunks_exact(bb).zip(act) {
        let k = decode_k(ty, b);
        let per = 256 / k.groups;
        let mut isum = 0i32;
        let mut imin = 0i32;
        for g in 0..k.groups {
            let e = g * per..(g + 1) * per;
            let s: i32 = e.clone().map(|i| k.q[i] * i32::from(y.qs[i])).sum();
            isum += k.scales[g] * s;
            let ysum: i32 = y.bsums[e.start / 16..e.end / 16]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
            imin += k.mins[g] * ysum;
        }
        sum += k.d * y.d * isum as f32 - k.dmin * y.d * imin as f32;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::{quantize_q8, quantize_q8k};

    /// A Q4_1 block with d = 0.5, m = -1, nibbles j % 16 (low) and 15 - j % 16 (high).
    fn q4_1_block() -> Vec<u8> {
        let mut b = vec![0x00, 0x38, 0x00, 0xbc]; // f16 0.5, f16 -1.0
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        b
    }

    #[test]
    fn q4_1_dequantizes_low_nibbles_first() {
        let mut y = [0f32; 32];
        dequantize_row(QuantType::Q4_1, &q4_1_block(), &mut y);
        assert_eq!(y[0], -1.0);
        assert_eq!(y[15], 6.5);
        assert_eq!(y[16], 6.5);
        assert_eq!(y[31], -1.0);
    }

    #[test]
    fn q6_k_scale_of_value_e_is_scales_e_over_16() {
        // All quants 32 (→ 0 after the offset) except value 200 set to 63 (→ +31).
        let mut b = vec![0u8; 210];
        for v in &mut b[0..128] {
            *v = 0x00;
        }
        for v in &mut b[128..192] {
            *v = 0b1010_1010; // high bits 2 in every pair → q = 32
        }
        // e = 200 = 128·1 + 32·2 + 8: nibble 1 of ql[64 + 8], bits 4..6 of qh[32 + 8].
        b[64 + 8] = 0xf0;
        b[128 + 32 + 8] = 0b1011_1010;
        for (g, s) in b[192..208].iter_mut().enumerate() {
            *s = g as u8 + 1;
        }
        b[208..210].copy_from_slice(&[0x00, 0x3c]); // d = 1
        let mut y = [0f32; 256];
        dequantize_row(QuantType::Q6_K, &b, &mut y);
        assert_eq!(y[200], 31.0 * (200 / 16 + 1) as f32);
        assert_eq!(y.iter().filter(|v| **v != 0.0).count(), 1);
    }

    #[test]
    fn integer_dots_equal_dequantized_dots_on_exact_activations() {
        // Activations that quantize exactly (integers with max 127) make the integer dot equal
        // to the f32 dot of the dequantized row, up to f32 rounding.
        let x: Vec<f32> = (0..512)
            .map(|i| match i % 32 {
                0 => 127.0,
                _ => ((i * 29 % 255) as f32) - 127.0,
            })
            .collect();
        for ty in QuantType::ALL {
            let bb = ty.block_bytes();
            let row: Vec<u8> = (0..512 / ty.block_elems() * bb)
                .map(|i| (i * 97 % 251) as u8)
                .collect::<Vec<_>>()
                .chunks(bb)
                .flat_map(|b| {
                    let mut b = b.to_vec();
                    // sane f16 scales: 0x2c00 = 0.0625 at each scale offset
                    for at in scale_offsets(ty) {
                        b[at..at + 2].copy_from_slice(&[0x00, 0x2c]);
                    }
                    b
                })
                .collect();
            let mut w = vec![0f32; 512];
            dequantize_row(ty, &row, &mut w);
            let want: f64 = w.iter().zip(&x).map(|(a, b)| f64::from(*a * *b)).sum();
            let got = match ty.act_kind() {
                crate::quant::ActKind::Q8 => {
                    let act: Vec<Q8Block> = x
                        .chunks_exact(32)
                        .map(|c| quantize_q8(c.try_into().unwrap()))
                        .collect();
                    dot_q8(ty, &row, &act)
                }
                crate::quant::ActKind::Q8K => {
                    let act: Vec<Q8KBlock> = x
                        .chunks_exact(256)
                        .map(|c| quantize_q8k(c.try_into().unwrap()))
                        .collect();
                    dot_q8k(ty, &row, &act)
                }
            };
            let scale: f64 = w
                .iter()
                .zip(&x)
                .map(|(a, b)| f64::from((a * b).abs()))
                .sum();
            assert!(
                (f64::from(got) - want).abs() <= 1e-5 * scale,
                "{ty:?}: {got} vs {want}"
            );
        }
    }

    /// Byte offsets of the f16 scales in a block of `ty`.
    fn scale_offsets(ty: QuantType) -> Vec<usize> {
        match ty {
            QuantType::Q4_0 | QuantType::Q8_0 => vec![0],
            QuantType::Q4_1 | QuantType::Q4_K | QuantType::Q5_K => vec![0, 2],
            QuantType::Q6_K => vec![208],
        }
    }
}
