//! One llama transformer block: pre-norm grouped-query attention with RoPE, then a pre-norm
//! SwiGLU MLP, both residual.

use super::kernels::{QLinear, RmsNorm, attention};
use super::kv_cache::KvCache;
use super::rope::Rope;
use candle_core::{Result, Tensor};

/// Weights of one block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: RmsNorm,
    pub(crate) wq: QLinear,
    pub(crate) wk: QLinear,
    pub(crate) wv: QLinear,
    pub(crate) wo: QLinear,
    pub(crate) ffn_norm: RmsNorm,
    pub(crate) gate: QLinear,
    pub(crate) up: QLinear,
    pub(crate) down: QLinear,
    pub(crate) n_head: usize,
    pub(crate) n_kv_head: usize,
    pub(crate) head_dim: usize,
}

impl Block {
    /// `x`: `[1, s, dim]` at positions `pos..pos+s`; `idx` is this block's slot in `cache`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        pos: usize,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
        idx: usize,
    ) -> Result<Tensor> {
        let (b, s, dim) = x.dims3()?;
        let h = self.attn_norm.forward(x)?;
        let [q, k, v] = QLinear::forward_many([&self.wq, &self.wk, &self.wv], &h)?;
        let q = q
            .reshape((b, s, self.n_head, self.head_dim))?
            .transpose(1, 2)?;
        let k = k
            .reshape((b, s, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?;
        let v = v
            .reshape((b, s, self.n_kv_head, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = rope.apply(&q, pos)?;
        let k = rope.apply(&k, pos)?;
        let (k_all, v_all) = cache.append(idx, pos, &k, &v)?;
        let y = attention(&q, &k_all, &v_all, mask)?;
        let y = y.transpose(1, 2)?.reshape((b, s, dim))?;
        let x = (x + self.wo.forward(&y)?)?;
        let h = self.ffn_norm.forward(&x)?;
        let [gate, up] = QLinear::forward_many([&self.gate, &self.up], &h)?;
        let mlp = self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
        x + mlp
    }
}
