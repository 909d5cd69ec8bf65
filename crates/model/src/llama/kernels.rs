//! The compute kernels the llama forward calls: quantized linear layers and attention.
//!
//! Everything the stage does that costs time goes through this module, so that faster kernels
//! can replace these without touching the stage API.
//!
//! - Quantized linear layers of the types `shardswarm-kernels` accelerates on this CPU (AVX2:
//!   Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K; NEON: Q4_0, Q4_1, Q8_0) run our own mat-vec on the GGUF
//!   blocks in place (read through candle's storage, no copy); the rest run candle's
//!   `QMatMul`. Layers that read the same input (Q/K/V, gate/up) go through one pass of the
//!   pool ([`QLinear::forward_many`]), prompts included ([`QLinear::runs_ours`]). On AVX2 the
//!   results equal candle's one-row path bit for bit (and its several-row path for Q4_0, Q4_1
//!   and Q8_0; for K-quant prompts candle's tiled kernels sum in another order). Prompts run
//!   tiled kernels with the same results (AVX2, AVX-VNNI or AVX-512 VNNI).
//! - Attention is candle tensor ops, except the softmax, which runs on the calling thread with
//!   candle's arithmetic ([`softmax_last_dim`]) instead of a round trip to candle's rayon pool.
//!
//! `SHARDSWARM_KERNELS` (read once per process) chooses: unset / `native`: the above; `candle`:
//! candle everywhere, softmax included (the baseline the benchmark compares against);
//! `scalar`: our scalar reference for every type it knows (slow; for checking the SIMD
//! kernels); `avx2`: the AVX2 kernels even where AVX-512 VNNI prompt kernels exist (their
//! baseline). The thread count is the kernels' default (`RAYON_NUM_THREADS`, which `--threads`
//! sets, else the available cores).

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Storage, Tensor};
use shardswarm_kernels::{Engine, Isa, QuantType, Weights};
use std::sync::{Arc, OnceLock};

/// The engine of the quantized layers, per `SHARDSWARM_KERNELS` (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelChoice {
    /// candle's `QMatMul` for every type.
    Candle,
    /// Ours on this instruction set; `all` = also types it does not accelerate.
    Ours { isa: Isa, all: bool },
}

impl KernelChoice {
    fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            Some("candle") => KernelChoice::Candle,
            Some("scalar") => KernelChoice::Ours {
                isa: Isa::Scalar,
                all: true,
            },
            // The AVX2 kernels on a CPU that also has AVX-512 VNNI: the baseline of its prompt
            // kernels (a CPU without AVX2 gets the native choice).
            Some("avx2") if Isa::Avx2.is_available() => KernelChoice::Ours {
                isa: Isa::Avx2,
                all: false,
            },
            None | Some("" | "native" | "avx2") => KernelChoice::Ours {
                isa: Isa::detect(),
                all: false,
            },
            Some(other) => {
                tracing::warn!(target: "shardswarm::model", value = other,
                    "unknown SHARDSWARM_KERNELS (candle, scalar, avx2, native); using native");
                KernelChoice::parse(None)
            }
        }
    }
}

/// Our engine and whether it takes every supported type, or `None` for candle everywhere.
fn our_engine() -> Option<(&'static Engine, bool)> {
    static ENGINE: OnceLock<Option<(Engine, bool)>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let choice = KernelChoice::parse(std::env::var("SHARDSWARM_KERNELS").ok().as_deref());
            let KernelChoice::Ours { isa, all } = choice else {
                return None;
            };
            let threads = shardswarm_kernels::default_threads();
            match Engine::new(isa, threads) {
                Ok(e) => {
                    tracing::debug!(target: "shardswarm::model", ?isa, threads, "quantized kernels");
                    Some((e, all))
                }
                Err(e) => {
                    tracing::warn!(target: "shardswarm::model", error = %e,
                        "our quantized kernels are unavailable; using candle's");
                    None
                }
            }
        })
        .as_ref()
        .map(|(e, all)| (e, *all))
}

/// Our name of a GGUF type, if the kernels know it.
fn quant_type(dtype: GgmlDType) -> Option<QuantType> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantType::Q4_0,
        GgmlDType::Q4_1 => QuantType::Q4_1,
        GgmlDType::Q8_0 => QuantType::Q8_0,
        GgmlDType::Q4K => QuantType::Q4_K,
        GgmlDType::Q5K => QuantType::Q5_K,
        GgmlDType::Q6K => QuantType::Q6_K,
        _ => return None,
    })
}

/// A weight our kernels run: the tensor (its storage is the raw GGUF blocks) and its type.
#[derive(Debug, Clone)]
struct OurWeight {
    weight: Arc<QTensor>,
    ty: QuantType,
    engine: &'static Engine,
}

/// A bias-free linear layer `y = x · Wᵀ` over a (possibly quantized) GGUF weight `[out, in]`.
#[derive(Debug, Clone)]
pub(crate) struct QLinear {
    inner: QMatMul,
    ours: Option<OurWeight>,
    out_dim: usize,
    in_dim: usize,
}

impl QLinear {
    /// Wraps a weight of shape `[out, in]`; the `Arc` lets a tied head share the embedding.
    pub(crate) fn new(weight: Arc<QTensor>) -> Result<Self> {
        Self::with_engine(weight, our_engine())
    }

    /// As [`QLinear::new`] with an explicit engine (`None`: candle's).
    fn with_engine(weight: Arc<QTensor>, engine: Option<(&'static Engine, bool)>) -> Result<Self> {
        let (out_dim, in_dim) = weight.shape().dims2()?;
        let ours = match (engine, quant_type(weight.dtype())) {
            (Some((engine, all)), Some(ty))
                if weight.device().is_cpu()
                    && ty.row_bytes(in_dim).is_some()
                    && (all || engine.isa().accelerates(ty)) =>
            {
                Some(OurWeight {
                    weight: weight.clone(),
                    ty,
                    engine,
                })
            }
            _ => None,
        };
        Ok(Self {
            inner: QMatMul::from_arc(weight)?,
            ours,
            out_dim,
            in_dim,
        })
    }

    /// `x`: `[.., in]` f32 contiguous; returns `[.., out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        match &self.ours {
            Some(_) if self.runs_ours(&x) => {
                let mut out = Self::forward_ours(&[self], &x)?;
                out.pop()
                    .ok_or_else(|| candle_core::Error::Msg("linear: no result".into()))
            }
            _ => self.inner.forward(&x),
        }
    }

    /// True when our kernels compute `x · Wᵀ` for this layer: the weight is ours and `x` is f32
    /// on the CPU — K-quant prompts (several rows) included. candle 0.11 would send those
    /// through its tiled kernels, which keep a repacked second copy of every weight they touch
    /// (2.3× llama.cpp's resident memory on a Q6_K model) and sum in another order than the
    /// row-by-row dot products of its own one-row path; ours give every row exactly the one-row
    /// result, so a prompt and the tokens after it share one arithmetic.
    fn runs_ours(&self, x: &Tensor) -> bool {
        self.ours.is_some() && x.dtype() == DType::F32 && x.device().is_cpu()
    }

    /// `[x · W₁ᵀ, …, x · Wₙᵀ]` for layers that read the same input (a block's Q, K, V; its
    /// gate and up): one pass of our kernels over all their rows when they all run on them,
    /// else one layer at a time. The results are the same either way, bit for bit.
    pub(crate) fn forward_many<const N: usize>(
        lins: [&QLinear; N],
        x: &Tensor,
    ) -> Result<[Tensor; N]> {
        let x = x.contiguous()?;
        let engine = lins.first().and_then(|l| l.ours.as_ref()).map(|w| w.engine);
        let fused = match engine {
            Some(e) => lins.iter().all(|l| {
                l.in_dim == lins[0].in_dim
                    && l.runs_ours(&x)
                    && l.ours.as_ref().is_some_and(|w| std::ptr::eq(w.engine, e))
            }),
            None => false,
        };
        let outs: Vec<Tensor> = if fused {
            Self::forward_ours(&lins, &x)?
        } else {
            lins.iter().map(|l| l.forward(&x)).collect::<Result<_>>()?
        };
        outs.try_into()
            .map_err(|_| candle_core::Error::Msg("linear: result count".into()))
    }

    /// Our mat-mul of `x` (contiguous f32 `[.., in]`) with every layer of `lins` (all with
    /// `ours` on one engine and the same `in_dim`); a prompt's rows share one pass over the
    /// weights.
    fn forward_ours(lins: &[&QLinear], x: &Tensor) -> Result<Vec<Tensor>> {
        let dims = x.dims();
        let in_dim = lins[0].in_dim;
        if dims.last() != Some(&in_dim) {
            candle_core::bail!("linear: input {dims:?}, weight in_dim {in_dim}");
        }
        let n = x.elem_count() / in_dim;
        let mut outs: Vec<Vec<f32>> = lins.iter().map(|l| vec![0f32; n * l.out_dim]).collect();
        {
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                candle_core::bail!("linear: our kernels need a CPU tensor");
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("linear: input not contiguous");
            };
            let xs = &cpu.as_slice::<f32>()?[start..end];
            let mut blocks = Vec::with_capacity(lins.len());
            let mut engine = None;
            for l in lins {
                let Some(w) = &l.ours else {
                    candle_core::bail!("linear: layer not on our kernels");
                };
                blocks.push((w.ty, w.weight.data()?, l.out_dim));
                engine = Some(w.engine);
            }
            let Some(engine) = engine else {
                return Ok(Vec::new());
            };
            let ws: Vec<Weights<'_>> = blocks
                .iter()
                .map(|(ty, data, rows)| Weights {
                    ty: *ty,
                    data,
                    rows: *rows,
                    cols: in_dim,
                })
                .collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            engine
                .matmul_many(&ws, xs, &mut refs)
                .map_err(|e| candle_core::Error::Msg(format!("linear: {e}")))?;
        }
        lins.iter()
            .zip(outs)
            .map(|(l, out)| {
                let mut shape = dims.to_vec();
                if let Some(last) = shape.last_mut() {
                    *last = l.out_dim;
                }
                Tensor::from_vec(out, shape, x.device())
            })
            .collect()
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
    let att = if our_engine().is_some() {
        softmax_last_dim(&att)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    att.matmul(&v)
}

/// Softmax over the last dimension on the calling thread, with the arithmetic of candle's
/// `softmax_last_dim` on x86-64 with AVX2 exactly (max, `exp(x − max)`, its sum's association,
/// divide), so results are bit-identical there. candle's version always hands the rows to its
/// rayon pool: at decode sizes (9 rows of ≤ a few hundred) that round trip costs more than the
/// work, and it wakes threads that compete with the mat-vec workers for the cores.
fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return candle_nn::ops::softmax_last_dim(x);
    }
    let x = x.contiguous()?;
    let dims = x.dims().to_vec();
    let d = dims.last().copied().unwrap_or(1).max(1);
    let mut dst = vec![0f32; x.elem_count()];
    {
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("softmax: not a CPU tensor");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: input not contiguous");
        };
        let src = &cpu.as_slice::<f32>()?[start..end];
        for (s, o) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
            let max = s[1..].iter().fold(s[0], |m, &v| m.max(v));
            for (o, &v) in o.iter_mut().zip(s) {
                *o = (v - max).exp();
            }
            let sum = candle_avx_sum(o);
            for o in o.iter_mut() {
                *o /= sum;
            }
        }
    }
    Tensor::from_vec(dst, dims, x.device())
}

/// `Σ xs` associated as candle 0.11's AVX2 `vec_sum`: four 8-lane accumulators over 32-value
/// steps, reduced `((a0 + a1) + (a2 + a3))` lane-wise, then halves, then pairs, then the tail
/// added one by one.
fn candle_avx_sum(xs: &[f32]) -> f32 {
    let (steps, tail) = xs.as_chunks::<32>();
    let mut acc = [[0f32; 8]; 4];
    for step in steps {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, a) in a.iter_mut().enumerate() {
                *a += step[8 * j + l];
            }
        }
    }
    let x: [f32; 8] = std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]));
    let t: [f32; 4] = std::array::from_fn(|l| x[l] + x[l + 4]);
    let mut sum = (t[0] + t[1]) + (t[2] + t[3]);
    for v in tail {
        sum += v;
    }
    sum
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
    use candle_core::{Device, Tensor};

    #[test]
    fn softmax_is_candles_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        for (rows, len) in [(9, 1), (9, 31), (9, 32), (9, 97), (3, 300), (1, 4096)] {
            let x = (Tensor::randn(0f32, 3.0, (rows, len), &dev)? * 1.7)?;
            let got = softmax_last_dim(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let want = candle_nn::ops::softmax_last_dim(&x)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{rows}×{len}");
        }
        // A causal mask's −∞ entries.
        let x = Tensor::new(&[[0.5f32, f32::NEG_INFINITY, 1.0], [2.0, 1.0, 0.0]], &dev)?;
        let got = softmax_last_dim(&x)?.to_vec2::<f32>()?;
        assert_eq!(got, candle_nn::ops::softmax_last_dim(&x)?.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn shardswarm_kernels_env_values() {
        assert_eq!(KernelChoice::parse(Some("candle")), KernelChoice::Candle);
        assert_eq!(
            KernelChoice::parse(Some("scalar")),
            KernelChoice::Ours {
                isa: Isa::Scalar,
                all: true
            }
        );
        let native = KernelChoice::Ours {
            isa: Isa::detect(),
            all: false,
        };
        assert_eq!(KernelChoice::parse(None), native);
        assert_eq!(KernelChoice::parse(Some("native")), native);
        assert_eq!(KernelChoice::parse(Some("bogus")), native);
        if Isa::Avx2.is_available() {
            assert_eq!(
                KernelChoice::parse(Some("avx2")),
                KernelChoice::Ours {
                    isa: Isa::Avx2,
                    all: false
                }
            );
        }
    }

    fn lin_ty(l: &QLinear) -> QuantType {
        l.ours.as_ref().map_or(QuantType::Q8_0, |w| w.ty)
    }

    /// Our kernels against candle's `QMatMul` on the same quantized weight, for every type the
    /// kernels know and both engines. This pins the block layouts to candle's (= GGUF's), and
    /// on AVX2 the accelerated types to candle's results bit for bit.
    ///
    /// Both quantize each input row to 8 bits with the same per-32 (per-256) scale, and sum
    /// exact integer block products; they differ in `f32` summation order, in the rounding of
    /// `1/d` vs `127/amax` (a quant can land one step apart) and in how Q8_1's `s` is rounded
    /// (candle: `f16(Σq)·d` in `f16`). Tolerance: |Δ| ≤ 1e-3 · Σ|w|·|x| per output.
    #[test]
    fn our_linear_matches_candle_qmatmul() -> Result<()> {
        let dev = Device::Cpu;
        let (out_dim, in_dim) = (70, 512);
        let w = Tensor::randn(0f32, 1.0, (out_dim, in_dim), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, in_dim), &dev)?;
        let w2 = Tensor::randn(0f32, 1.0, (64, in_dim), &dev)?;
        let engines: Vec<(&'static Engine, bool)> = [Isa::detect(), Isa::Scalar]
            .into_iter()
            .map(|isa| -> (&'static Engine, bool) {
                (Box::leak(Box::new(Engine::new(isa, 2).unwrap())), true)
            })
            .collect();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = Arc::new(QTensor::quantize(&w, dtype)?);
            let want = QLinear::with_engine(q.clone(), None)?.forward(&x)?;
            let wd = q.dequantize(&dev)?;
            let mag = x.abs()?.broadcast_matmul(&wd.abs()?.t()?)?;
            for &engine in &engines {
                let lin = QLinear::with_engine(q.clone(), Some(engine))?;
                assert!(lin.ours.is_some());
                let got = lin.forward(&x)?;
                assert_eq!(got.dims(), [1, 3, out_dim]);
                let k_quant = matches!(
                    lin_ty(&lin),
                    QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K
                );
                let simd = matches!(engine.0.isa(), Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni);
                if simd && engine.0.isa().accelerates(lin_ty(&lin)) && !k_quant {
                    // Same lane layout and f32 operation order as candle's AVX2 kernels.
                    let diff = (&got - &want)?.abs()?.flatten_all()?.max(0)?;
                    assert_eq!(diff.to_scalar::<f32>()?, 0.0, "{dtype:?} not bit-exact");
                }
                if simd && engine.0.isa().accelerates(lin_ty(&lin)) {
                    // Each row (a decode step) against candle's one-row (vec-dot) path.
                    let cand = QLinear::with_engine(q.clone(), None)?;
                    for r in 0..x.dim(1)? {
                        let xr = x.narrow(1, r, 1)?;
                        let diff = (got.narrow(1, r, 1)? - cand.forward(&xr)?)?
                            .abs()?
                            .flatten_all()?
                            .max(0)?;
                        assert_eq!(
                            diff.to_scalar::<f32>()?,
                            0.0,
                            "{dtype:?} row {r} not bit-exact"
                        );
                    }
                }
                let excess = ((got - &want)?.abs()? - (&mag * 1e-3)?)?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(
                    excess <= 0.0,
                    "{dtype:?} {:?}: over tolerance by {excess}",
                    engine.0.isa()
                );
                // Fused with another layer reading the same input: the same bits.
                let other = QLinear::with_engine(
                    Arc::new(QTensor::quantize(&w2, GgmlDType::Q8_0)?),
                    Some(engine),
                )?;
                let [a, b] = QLinear::forward_many([&lin, &other], &x)?;
                let same = |p: &Tensor, q: &Tensor| -> Result<bool> {
                    let (p, q) = (
                        p.flatten_all()?.to_vec1::<f32>()?,
                        q.flatten_all()?.to_vec1::<f32>()?,
                    );
                    Ok(p.iter().zip(&q).all(|(u, v)| u.to_bits() == v.to_bits()))
                };
                assert!(same(&a, &lin.forward(&x)?)? && same(&b, &other.forward(&x)?)?);
            }
        }
        Ok(())
    }

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
