//! The compute kernels the llama forward calls: quantized linear layers and attention.
//!
//! Everything the stage does that costs time goes through this module, so that faster kernels
//! (our own SIMD mat-vec, a repacked layout, a fused attention) can replace these without
//! touching the stage API. Today both are candle's: `QMatMul` for the weights and candle tensor
//! ops for attention.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use std::sync::Arc;

/// A bias-free linear layer `y = x · Wᵀ` over a (possibly quantized) GGUF weight `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct QLinear {
    inner: QMatMul,
}

impl QLinear {
    /// Wraps a weight of shape `[out, in]`; the `Arc` lets a tied head share the embedding.
    pub(crate) fn new(weight: Arc<QTensor>) -> Result<Self> {
        weight.shape().dims2()?;
        Ok(Self {
            inner: QMatMul::from_arc(weight)?,
        })
    }

    /// `x`: `[.., in]` f32 contiguous; returns `[.., out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        self.inner.forward(&x)
    }
}

/// Grouped-query causal attention.
///
/// `q`: `[1, n_head, s, d]` contiguous (already rotated); `k`, `v`: `[1, n_kv, kv_len, d]`
/// (views into the cache; strided rows are fine); `mask`: `[s, kv_len]` additive (0 / -inf) or
/// `None` for a single query. Query head `h` uses kv head `h / (n_head / n_kv)`, as llama.cpp.
/// Returns `[1, n_head, s, d]`.
///
/// The K/V heads are repeated (copied) exactly as candle-transformers does, which keeps the
/// result bit-identical to its `quantized_llama`. Folding the query heads into rows instead
/// (no copies) is mathematically equal but rounds differently, and the 8-bit activation
/// quantization of the next matmul amplifies that to ~1% of the logits on SmolLM2: a faster
/// kernel here must be checked against the reference with a tolerance, not bit for bit.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, n_head, _, d) = q.dims4()?;
    let n_kv = k.dim(1)?;
    let k = repeat_kv(k, n_head / n_kv)?;
    let v = repeat_kv(v, n_head / n_kv)?;
    let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let att = match mask {
        None => att,
        Some(mask) => att.broadcast_add(mask)?,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    att.matmul(&v)
}

/// `[b, n_kv, l, d]` → `[b, n_kv·rep, l, d]` (contiguous), kv head `g` repeated `rep` times.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return x.contiguous();
    }
    let (b, n_kv, l, d) = x.dims4()?;
    Tensor::cat(&vec![x; rep], 2)?.reshape((b, n_kv * rep, l, d))
}

/// RMSNorm with a dequantized f32 weight.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(weight: &QTensor, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: weight.dequantize(&weight.device())?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn expand_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
        let (b, n_kv, l, d) = x.dims4()?;
        x.unsqueeze(2)?
            .expand((b, n_kv, rep, l, d))?
            .reshape((b, n_kv * rep, l, d))
    }

    #[test]
    fn gqa_attention_shares_kv_heads_like_llama_cpp() -> Result<()> {
        let dev = Device::Cpu;
        for (h, kv, s, d) in [(6, 2, 5, 8), (9, 3, 16, 64), (9, 3, 1, 64), (4, 4, 7, 16)] {
            let q = Tensor::randn(0f32, 1., (1, h, s, d), &dev)?;
            let k = Tensor::randn(0f32, 1., (1, kv, s, d), &dev)?;
            let v = Tensor::randn(0f32, 1., (1, kv, s, d), &dev)?;
            let mask: Vec<f32> = (0..s)
                .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (s, s), &dev)?;
            let got = attention(&q, &k, &v, Some(&mask))?;
            let kr = expand_kv(&k, h / kv)?;
            let vr = expand_kv(&v, h / kv)?;
            let att = (q.matmul(&kr.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
            let want = candle_nn::ops::softmax_last_dim(&att)?.matmul(&vr)?;
            let diff = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F32)?;
            let diff = diff.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{h} {kv} {s} {d}: {diff}");
        }
        Ok(())
    }
}
