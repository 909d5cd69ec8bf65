//! The weight types the kernels read, laid out byte for byte as GGUF/ggml stores them.
//!
//! A row of `cols` weights is `cols / block_elems` blocks back to back; a matrix is its rows
//! back to back (row-major, `[rows, cols]`, GGUF's `[out, in]`). All multi-byte fields are
//! little-endian; `f16` is IEEE binary16.
//!
//! | type | elems | bytes | layout (offsets in bytes) |
//! |---|---:|---:|---|
//! | Q4_0 | 32 | 18 | `d: f16` @0, `qs: [u8; 16]` @2; `x[j] = d·(lo(qs[j]) − 8)`, `x[j+16] = d·(hi(qs[j]) − 8)` |
//! | Q4_1 | 32 | 20 | `d: f16` @0, `m: f16` @2, `qs: [u8; 16]` @4; `x[j] = d·lo(qs[j]) + m`, `x[j+16] = d·hi(qs[j]) + m` |
//! | Q8_0 | 32 | 34 | `d: f16` @0, `qs: [i8; 32]` @2; `x[j] = d·qs[j]` |
//! | Q4_K | 256 | 144 | `d, dmin: f16` @0, `scales: [u8; 12]` @4 (8 × 6-bit scale/min pairs), `qs: [u8; 128]` @16 |
//! | Q5_K | 256 | 176 | as Q4_K, then `qh: [u8; 32]` @16 (5th bits), `qs: [u8; 128]` @48 |
//! | Q6_K | 256 | 210 | `ql: [u8; 128]` @0, `qh: [u8; 64]` @128, `scales: [i8; 16]` @192, `d: f16` @208 |
//!
//! (`lo`/`hi` = low/high nibble.) The K-quant element order is described where it is decoded,
//! in [`crate::scalar`].

/// A quantized weight type the kernels support, with ggml's name and layout.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    /// 4-bit, symmetric, one `f16` scale per 32 weights.
    Q4_0,
    /// 4-bit with an `f16` scale and minimum per 32 weights.
    Q4_1,
    /// 8-bit, one `f16` scale per 32 weights.
    Q8_0,
    /// 4-bit K-quant: super-blocks of 256 with 6-bit sub-block scales and minimums.
    Q4_K,
    /// 5-bit K-quant: as Q4_K plus a fifth bit per weight.
    Q5_K,
    /// 6-bit K-quant: super-blocks of 256 with 8-bit scales per 16 weights.
    Q6_K,
}

/// How the activation row is quantized for a weight type (once per input row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActKind {
    /// 32-element blocks with a scale and `scale · Σq` (ggml's Q8_0 and Q8_1 in one struct).
    Q8,
    /// 256-element blocks with an `f32` scale and 16-element partial sums (ggml's Q8_K).
    Q8K,
}

impl QuantType {
    /// All supported types.
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4_K,
        QuantType::Q5_K,
        QuantType::Q6_K,
    ];

    /// Weights per block.
    pub const fn block_elems(self) -> usize {
        match self {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => 32,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantType::Q4_0 => 18,
            QuantType::Q4_1 => 20,
            QuantType::Q8_0 => 34,
            QuantType::Q4_K => 144,
            QuantType::Q5_K => 176,
            QuantType::Q6_K => 210,
        }
    }

    /// Bytes of a row of `cols` weights, or `None` if `cols` is not a whole number of blocks.
    pub const fn row_bytes(self, cols: usize) -> Option<usize> {
        if cols.is_multiple_of(self.block_elems()) {
            Some(cols / self.block_elems() * self.block_bytes())
        } else {
            None
        }
    }

    /// The activation format this type's dot product takes.
    pub(crate) const fn act_kind(self) -> ActKind {
        match self {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => ActKind::Q8,
            QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => ActKind::Q8K,
        }
    }

    /// ggml's type id (`GGML_TYPE_*`), as GGUF stores it in tensor infos.
    pub const fn ggml_id(self) -> u32 {
        match self {
            QuantType::Q4_0 => 2,
            QuantType::Q4_1 => 3,
            QuantType::Q8_0 => 8,
            QuantType::Q4_K => 12,
            QuantType::Q5_K => 13,
            QuantType::Q6_K => 14,
        }
    }

    /// The type with ggml id `id`, if supported.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }
}

/// `f16` bits → `f32` (exact).
#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// `f32` → the nearest `f16` (ties to even), back as `f32`: what storing a scale as ggml's
/// `ggml_half` and reading it back gives.
#[inline]
pub(crate) fn round_to_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// The little-endian `u16` at `b[at..at + 2]`.
#[inline]
pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_ggml() {
        // ggml-common.h static_asserts: sizeof(block_q4_0) == 2 + 16, etc.
        let want = [
            (32, 18),
            (32, 20),
            (32, 34),
            (256, 144),
            (256, 176),
            (256, 210),
        ];
        for (t, (e, b)) in QuantType::ALL.into_iter().zip(want) {
            assert_eq!((t.block_elems(), t.block_bytes()), (e, b), "{t:?}");
            assert_eq!(QuantType::from_ggml_id(t.ggml_id()), Some(t));
        }
        assert_eq!(QuantType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(QuantType::Q4_K.row_bytes(576), None);
    }

    #[test]
    fn f16_helpers_round_like_ggml_half() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(round_to_f16(1.0 + 1.0 / 4096.0), 1.0); // below half an ulp (2^-11)
        assert_eq!(round_to_f16(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0); // tie → even
    }
}
