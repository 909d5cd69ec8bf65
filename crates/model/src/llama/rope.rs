//! Rotary position embedding, interleaved pairs `(2i, 2i+1)` as llama.cpp's "norm" RoPE.
//!
//! The cos/sin table covers the model's whole context length (candle's stock model stops at
//! 4096) up to [`MAX_TABLE`] entries; callers check positions against [`Rope::max_positions`]
//! before applying.

use candle_core::{Device, Result, Tensor};

/// Most entries of one table (16 MiB of f32): 131,072 positions at head dimension 64, 65,536
/// at 128. A file claiming a longer context gets this many positions; longer sequences are
/// refused by the callers' check against [`Rope::max_positions`].
pub(crate) const MAX_TABLE: usize = 1 << 22;

/// Precomputed cos/sin tables `[max_positions, head_dim / 2]`.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
    max_positions: usize,
}

impl Rope {
    /// Tables for positions `0..max_positions` with frequencies `base^(-2i/head_dim)`.
    pub(crate) fn new(
        head_dim: usize,
        base: f32,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let half = head_dim / 2;
        // The context length is the file's claim: the table stops at MAX_TABLE entries.
        let max_positions = max_positions.min(MAX_TABLE / half.max(1));
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let mut angles = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            angles.extend(theta.iter().map(|t| p as f32 * t));
        }
        let angles = Tensor::from_vec(angles, (max_positions, half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            max_positions,
        })
    }

    /// Positions the table covers.
    pub(crate) fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Rotates `x: [b, heads, s, d]` for positions `pos .. pos + s`.
    pub(crate) fn apply(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (_, _, s, _) = x.dims4()?;
        let cos = self.cos.narrow(0, pos, s)?;
        let sin = self.sin.narrow(0, pos, s)?;
        candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_table_covers_full_context() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::new(8, 10_000.0, 8192, &dev)?;
        assert_eq!(rope.max_positions(), 8192);
        let x = Tensor::randn(0f32, 1., (1, 2, 1, 8), &dev)?;
        let y = rope.apply(&x, 0)?;
        let d: f32 = (x - &y)?.abs()?.sum_all()?.to_scalar()?;
        assert!(d < 1e-6);
        // The last position exists (candle's stock table would fail past 4096).
        rope.apply(&y, 8191)?;
        assert!(rope.apply(&y, 8192).is_err());
        Ok(())
    }

    #[test]
    fn a_hostile_context_length_is_clamped_not_allocated() -> Result<()> {
        // A shard claiming a 2^32-token context asked for a 2^34-float table (and overflowed
        // `max_positions * half` on the way): found writing the `gguf_load` fuzz target.
        let rope = Rope::new(64, 10_000.0, u32::MAX as usize, &Device::Cpu)?;
        assert_eq!(rope.max_positions(), MAX_TABLE / 32);
        let rope = Rope::new(64, 10_000.0, usize::MAX, &Device::Cpu)?;
        assert_eq!(rope.max_positions(), 131_072);
        Ok(())
    }
}
