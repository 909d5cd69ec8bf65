//! Per-session key/value cache of one stage, preallocated and written in place.
//!
//! Invariants: `len <= capacity <= context`; rows `0..len` of every layer hold the keys/values
//! of positions `0..len`. Appending writes the new rows in place (no per-token concatenation);
//! when the capacity is exceeded the buffers grow by doubling (capped at the context length),
//! which copies once per doubling. Rewinding (`pos < len`) simply truncates.

use candle_core::{DType, Device, Result, Tensor};

/// K and V buffers of one layer: `[1, n_kv_heads, capacity, head_dim]`.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// The KV cache of one session for one stage's layers. Owned by the caller (one per session),
/// passed to [`crate::llama::Stage::forward_layers`].
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    first_layer: u32,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    context: usize,
    len: usize,
    device: Device,
}

impl KvCache {
    pub(crate) fn new(
        first_layer: u32,
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        context: usize,
        device: &Device,
    ) -> Result<Self> {
        let capacity = capacity.clamp(1, context);
        let layers = (0..n_layers)
            .map(|_| alloc(n_kv_heads, capacity, head_dim, device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            first_layer,
            n_kv_heads,
            head_dim,
            capacity,
            context,
            len: 0,
            device: device.clone(),
        })
    }

    /// Positions currently cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions that fit without growing the buffers.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position (keeps the buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn first_layer(&self) -> u32 {
        self.first_layer
    }

    pub(crate) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Truncates to `pos` positions (rewind), then makes room for `pos + extra`.
    pub(crate) fn prepare(&mut self, pos: usize, extra: usize) -> Result<()> {
        self.len = self.len.min(pos);
        let needed = pos + extra;
        if needed > self.capacity {
            let new_cap = needed.max(self.capacity * 2).min(self.context);
            for layer in &mut self.layers {
                let grown = alloc(self.n_kv_heads, new_cap, self.head_dim, &self.device)?;
                if self.len > 0 {
                    let k = layer.k.narrow(2, 0, self.len)?.contiguous()?;
                    let v = layer.v.narrow(2, 0, self.len)?.contiguous()?;
                    grown.k.slice_set(&k, 2, 0)?;
                    grown.v.slice_set(&v, 2, 0)?;
                }
                *layer = grown;
            }
            self.capacity = new_cap;
        }
        Ok(())
    }

    /// Writes `k`, `v` (`[1, n_kv, s, d]`) of layer `idx` at `pos` and returns views of rows
    /// `0..pos + s`. The caller advances the length with [`KvCache::set_len`] after all layers.
    pub(crate) fn append(
        &mut self,
        idx: usize,
        pos: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let s = k.dim(2)?;
        let layer = &self.layers[idx];
        layer.k.slice_set(&k.contiguous()?, 2, pos)?;
        layer.v.slice_set(&v.contiguous()?, 2, pos)?;
        Ok((
            layer.k.narrow(2, 0, pos + s)?,
            layer.v.narrow(2, 0, pos + s)?,
        ))
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }
}

fn alloc(n_kv: usize, cap: usize, d: usize, device: &Device) -> Result<LayerKv> {
    Ok(LayerKv {
        k: Tensor::zeros((1, n_kv, cap, d), DType::F32, device)?,
        v: Tensor::zeros((1, n_kv, cap, d), DType::F32, device)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_copying_existing_rows_and_rewinds() -> Result<()> {
        let dev = Device::Cpu;
        let mut c = KvCache::new(0, 1, 2, 4, 2, 16, &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 2, 2, 4), &dev)?;
        c.prepare(0, 2)?;
        c.append(0, 0, &k, &k)?;
        c.set_len(2);
        let k2 = Tensor::randn(0f32, 1., (1, 2, 3, 4), &dev)?;
        c.prepare(2, 3)?;
        assert!(c.capacity() >= 5);
        let (kall, _) = c.append(0, 2, &k2, &k2)?;
        let want = Tensor::cat(&[&k, &k2], 2)?;
        let d: f32 = (kall - want)?.abs()?.sum_all()?.to_scalar()?;
        assert_eq!(d, 0.0);
        c.set_len(5);
        c.prepare(1, 1)?;
        assert_eq!(c.len(), 1);
        Ok(())
    }
}
