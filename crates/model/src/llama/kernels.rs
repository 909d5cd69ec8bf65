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
        Ok(Self { inner: QMatMul::from_arc(weight)? })
    }

    /// `x`: `[.., in]` f32 contiguous; returns `[.., out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        self.inner.forward(&x)
    }
}

/// Grouped-query causal attention without materialising repeated K/V heads.
///
/// `q`: `[1, n_head, s, d]` contiguous (already rotated); `k`, `v`: `[1, n_kv, kv_len, d]`
/// (views into the cache; strided rows are fine); `mask`: `[s, kv_len]` additive (0 / -inf) or
/// `None` for a single query. Query heads `g·rep .. (g+1)·rep` share kv head `g`, as in llama.cpp.
/// Returns `[1, n_head, s, d]`.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, n_head, s, d) = q.dims4()?;
    let (_, n_kv, kv_len, _) = k.dims4()?;
    let rep = n_head / n_kv;
    // Group the query heads of one kv head into the row dimension: [1, n_kv, rep·s, d].
    let qg = q.reshape((b, n_kv, rep * s, d))?;
    let att = (qg.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let att = match mask {
        None => att,
        Some(mask) => att
            .reshape((b, n_kv, rep, s, kv_len))?
            .broadcast_add(mask)?
            .reshape((b, n_kv, rep * s, kv_len))?,
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    let y = att.matmul(v)?;
    y.reshape((b, n_head, s, d))
}

/// RMSNorm with a dequantized f32 weight.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(weight: &QTensor, eps: f64) -> Result<Self> {
        Ok(Self { weight: weight.dequantize(&weight.device())?, eps: eps as f32 })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
        let (b, n_kv, l, d) = x.dims4()?;
        x.unsqueeze(2)?.expand((b, n_kv, rep, l, d))?.reshape((b, n_kv * rep, l, d))
    }

    #[test]
    fn grouped_attention_equals_repeated_kv_attention() -> Result<()> {
        let dev = Device::Cpu;
        let (h, kv, s, d) = (6, 2, 5, 8);
        let q = Tensor::randn(0f32, 1., (1, h, s, d), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, kv, s, d), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, kv, s, d), &dev)?;
        let mask: Vec<f32> = (0..s)
            .flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (s, s), &dev)?;
        let got = attention(&q, &k, &v, Some(&mask))?;
        let kr = repeat_kv(&k, h / kv)?;
        let vr = repeat_kv(&v, h / kv)?;
        let att = (q.matmul(&kr.t()?)? / (d as f64).sqrt())?.broadcast_add(&mask)?;
        let want = candle_nn::ops::softmax_last_dim(&att)?.matmul(&vr)?;
        let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?;
        assert!(diff.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }
}
