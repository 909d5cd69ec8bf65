//! A layer-range llama forward: the compute of one pipeline stage.
//!
//! A [`Stage`] holds the blocks `layers()` of a model (absolute indices), plus the token
//! embedding when its range starts at 0 and the final norm + output head when it ends at the
//! block count. It is loaded from a shard written by `split` (its `shardswarm.layer_start/end`
//! keys give the range) or from a whole-model GGUF (any sub-range). The stage itself is
//! immutable; all per-session state lives in a caller-owned [`KvCache`], so one stage can serve
//! many sessions. Activations between stages are f32 `[1, seq, dim]`.

mod block;
mod kernels;
mod kv_cache;
mod rope;

pub use kv_cache::KvCache;

use crate::config::{ConfigError, LlamaConfig, get_u64};
use block::Block;
use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use kernels::{QLinear, RmsNorm};
use rope::Rope;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Errors of loading or running a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a GGUF candle can parse (truncated, corrupt…).
    #[error("cannot parse GGUF {path}: {source}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: candle_core::Error,
    },
    /// The metadata does not describe a model we can run.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: ConfigError,
    },
    /// A tensor the layer range needs is absent or has the wrong shape.
    #[error("{path}: tensor `{name}` {problem}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The requested layer range is not inside what the file holds.
    #[error("{path}: layers {want:?} requested but the file holds {have:?}")]
    LayerRange {
        /// The file.
        path: PathBuf,
        /// Requested range.
        want: Range<u32>,
        /// Range in the file.
        have: Range<u32>,
    },
    /// Positions past the model's context length.
    #[error("position {end} is beyond the model's context length {context}")]
    ContextOverflow {
        /// One past the last position requested.
        end: usize,
        /// The context length.
        context: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The hidden states or cache do not fit this stage.
    #[error("bad input to stage {layers:?}: {reason}")]
    BadInput {
        /// The stage's layers.
        layers: Range<u32>,
        /// What is wrong.
        reason: String,
    },
    /// `embed` on a stage without the embedding, or `head` without the head.
    #[error("stage {layers:?} has no {part}")]
    MissingPart {
        /// The stage's layers.
        layers: Range<u32>,
        /// `"token embedding"` or `"output head"`.
        part: &'static str,
    },
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// The output norm and head of the last stage.
#[derive(Debug, Clone)]
struct Head {
    norm: RmsNorm,
    output: QLinear,
}

/// A contiguous range of a llama model's blocks, optionally with embedding and head.
#[derive(Debug, Clone)]
pub struct Stage {
    config: LlamaConfig,
    layers: Range<u32>,
    shard_index: Option<u32>,
    embedding: Option<Arc<QTensor>>,
    blocks: Vec<Block>,
    head: Option<Head>,
    rope: Rope,
    device: Device,
}

/// The layer range a GGUF holds: its `shardswarm.layer_start/end` keys, else the whole model.
fn file_range(
    content: &Content,
    config: &LlamaConfig,
) -> Result<(Range<u32>, Option<u32>), ConfigError> {
    let md = &content.metadata;
    if md.contains_key("shardswarm.layer_start") {
        let to_u32 = |key: &str| -> Result<u32, ConfigError> {
            u32::try_from(get_u64(md, key)?).map_err(|_| ConfigError::WrongType {
                key: key.to_string(),
                expected: "a u32",
            })
        };
        let start = to_u32("shardswarm.layer_start")?;
        let end = to_u32("shardswarm.layer_end")?;
        let index = to_u32("shardswarm.shard_index").ok();
        if start >= end || end > config.block_count {
            return Err(ConfigError::Unsupported {
                reason: format!(
                    "shard layer range {start}..{end} of {} blocks",
                    config.block_count
                ),
            });
        }
        Ok((start..end, index))
    } else {
        Ok((0..config.block_count, None))
    }
}

struct Loader<'a> {
    path: &'a Path,
    content: &'a Content,
    reader: BufReader<std::fs::File>,
    device: &'a Device,
}

impl Loader<'_> {
    fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<QTensor, StageError> {
        let err = |problem: String| StageError::Tensor {
            path: self.path.to_path_buf(),
            name: name.to_string(),
            problem,
        };
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| err("is missing".into()))?;
        if info.shape.dims() != dims {
            return Err(err(format!(
                "has shape {:?}, expected {dims:?}",
                info.shape.dims()
            )));
        }
        self.content
            .tensor(&mut self.reader, name, self.device)
            .map_err(|e| err(format!("cannot be read: {e}")))
    }
}

impl Stage {
    /// Loads everything a file holds: a shard's layer range, or the whole model.
    pub fn load(path: &Path, device: &Device) -> Result<Self, StageError> {
        Self::load_inner(path, None, device)
    }

    /// Loads the blocks `layers` from a shard or whole-model file (embedding when the range
    /// starts at 0, head when it ends at the block count). Only those tensors are read.
    pub fn load_range(
        path: &Path,
        layers: Range<u32>,
        device: &Device,
    ) -> Result<Self, StageError> {
        Self::load_inner(path, Some(layers), device)
    }

    fn load_inner(
        path: &Path,
        want: Option<Range<u32>>,
        device: &Device,
    ) -> Result<Self, StageError> {
        let io = |source| StageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = BufReader::new(std::fs::File::open(path).map_err(io)?);
        let content =
            crate::gguf::read_content(&mut reader).map_err(|source| StageError::Gguf {
                path: path.to_path_buf(),
                source,
            })?;
        let cfg_err = |source| StageError::Config {
            path: path.to_path_buf(),
            source,
        };
        let config = LlamaConfig::from_content(&content).map_err(cfg_err)?;
        let (have, shard_index) = file_range(&content, &config).map_err(cfg_err)?;
        let layers = match want {
            None => have.clone(),
            Some(w) if w.start < w.end && w.start >= have.start && w.end <= have.end => w,
            Some(w) => {
                return Err(StageError::LayerRange {
                    path: path.to_path_buf(),
                    want: w,
                    have,
                });
            }
        };
        let mut ld = Loader {
            path,
            content: &content,
            reader,
            device,
        };
        let c = &config;
        let (dim, kv_dim) = (c.embedding_length, c.head_count_kv * c.head_dim);
        let eps = c.rms_norm_eps;

        let embedding = if layers.start == 0 {
            Some(Arc::new(
                ld.tensor("token_embd.weight", &[c.vocab_size, dim])?,
            ))
        } else {
            None
        };
        // Capped by the tensors there are: the block count is the file's claim (found by the
        // `gguf_load` fuzz target: 117M blocks claimed, reserved up front, out of memory).
        let mut blocks = Vec::with_capacity(
            ((layers.end - layers.start) as usize).min(content.tensor_infos.len()),
        );
        for i in layers.clone() {
            let mut t = |name: &str, dims: &[usize]| -> Result<Arc<QTensor>, StageError> {
                Ok(Arc::new(
                    ld.tensor(&format!("blk.{i}.{name}.weight"), dims)?,
                ))
            };
            let lin = |w: Arc<QTensor>| QLinear::new(w).map_err(StageError::from);
            let norm = |w: Arc<QTensor>| RmsNorm::new(&w, eps).map_err(StageError::from);
            let ffn = c.feed_forward_length;
            blocks.push(Block {
                attn_norm: norm(t("attn_norm", &[dim])?)?,
                wq: lin(t("attn_q", &[dim, dim])?)?,
                wk: lin(t("attn_k", &[kv_dim, dim])?)?,
                wv: lin(t("attn_v", &[kv_dim, dim])?)?,
                wo: lin(t("attn_output", &[dim, dim])?)?,
                ffn_norm: norm(t("ffn_norm", &[dim])?)?,
                gate: lin(t("ffn_gate", &[ffn, dim])?)?,
                up: lin(t("ffn_up", &[ffn, dim])?)?,
                down: lin(t("ffn_down", &[dim, ffn])?)?,
                n_head: c.head_count,
                n_kv_head: c.head_count_kv,
                head_dim: c.head_dim,
            });
        }
        let head = if layers.end == c.block_count {
            let norm = RmsNorm::new(&ld.tensor("output_norm.weight", &[dim])?, eps)?;
            let output = if content.tensor_infos.contains_key("output.weight") {
                Arc::new(ld.tensor("output.weight", &[c.vocab_size, dim])?)
            } else if let Some(e) = &embedding {
                e.clone()
            } else {
                Arc::new(ld.tensor("token_embd.weight", &[c.vocab_size, dim])?)
            };
            Some(Head {
                norm,
                output: QLinear::new(output)?,
            })
        } else {
            None
        };
        let rope = Rope::new(c.head_dim, c.rope_freq_base, c.context_length, device)?;
        tracing::debug!(target: "shardswarm::model", path = %path.display(), ?layers,
            embedding = embedding.is_some(), head = head.is_some(), "stage loaded");
        Ok(Self {
            config,
            layers,
            shard_index,
            embedding,
            blocks,
            head,
            rope,
            device: device.clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The absolute block indices this stage computes.
    pub fn layers(&self) -> Range<u32> {
        self.layers.clone()
    }

    /// `shardswarm.shard_index` when loaded from a shard.
    pub fn shard_index(&self) -> Option<u32> {
        self.shard_index
    }

    /// True when the stage holds the token embedding (its range starts at 0).
    pub fn has_embedding(&self) -> bool {
        self.embedding.is_some()
    }

    /// True when the stage holds the final norm and output head.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A new, empty KV cache for this stage with room for `capacity` positions (grows on
    /// demand up to the context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, StageError> {
        let c = &self.config;
        Ok(KvCache::new(
            self.layers.start,
            self.blocks.len(),
            c.head_count_kv,
            c.head_dim,
            capacity,
            c.context_length,
            &self.device,
        )?)
    }

    /// Token ids → hidden states `[1, n, dim]` f32. Needs the embedding.
    pub fn embed(&self, tokens: &[u32]) -> Result<Tensor, StageError> {
        let emb = self.embedding.as_ref().ok_or(StageError::MissingPart {
            layers: self.layers(),
            part: "token embedding",
        })?;
        let vocab = self.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(StageError::TokenOutOfRange { id, vocab });
        }
        if tokens.is_empty() {
            return Err(self.bad("no tokens"));
        }
        let ids = Tensor::new(tokens, &self.device)?;
        Ok(emb.embedding(&ids)?.to_dtype(DType::F32)?.unsqueeze(0)?)
    }

    fn bad(&self, reason: impl Into<String>) -> StageError {
        StageError::BadInput {
            layers: self.layers(),
            reason: reason.into(),
        }
    }

    /// Runs this stage's blocks on `hidden` (`[1, s, dim]` f32) at positions `pos..pos+s`.
    ///
    /// `cache` must come from [`Stage::new_cache`] of this stage. `pos` must be at most the
    /// number of cached positions (`pos < cache.len()` rewinds the session to `pos`).
    /// A prompt is one call with `s = prompt length`, then one call per token.
    pub fn forward_layers(
        &self,
        hidden: &Tensor,
        pos: usize,
        cache: &mut KvCache,
    ) -> Result<Tensor, StageError> {
        let (b, s, dim) = hidden
            .dims3()
            .map_err(|_| self.bad(format!("shape {:?}", hidden.dims())))?;
        if b != 1 || s == 0 || dim != self.config.embedding_length || hidden.dtype() != DType::F32 {
            return Err(self.bad(format!(
                "expected f32 [1, s>0, {}], got {:?} {:?}",
                self.config.embedding_length,
                hidden.dtype(),
                hidden.dims()
            )));
        }
        if cache.first_layer() != self.layers.start || cache.n_layers() != self.blocks.len() {
            return Err(self.bad("the KV cache belongs to another stage"));
        }
        if pos > cache.len() {
            return Err(self.bad(format!("position {pos} but only {} cached", cache.len())));
        }
        let end = pos + s;
        if end > self.config.context_length || end > self.rope.max_positions() {
            return Err(StageError::ContextOverflow {
                end,
                context: self.config.context_length,
            });
        }
        cache.prepare(pos, s)?;
        let mask = if s > 1 {
            Some(causal_mask(s, pos, &self.device)?)
        } else {
            None
        };
        let mut x = hidden.clone();
        for (idx, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, pos, &self.rope, mask.as_ref(), cache, idx)?;
        }
        cache.set_len(end);
        Ok(x)
    }

    /// Final norm + head on the last position of `hidden` (`[1, s, dim]`): logits `[vocab]`.
    pub fn head(&self, hidden: &Tensor) -> Result<Tensor, StageError> {
        let head = self.head.as_ref().ok_or(StageError::MissingPart {
            layers: self.layers(),
            part: "output head",
        })?;
        let (b, s, dim) = hidden
            .dims3()
            .map_err(|_| self.bad(format!("shape {:?}", hidden.dims())))?;
        if b != 1 || s == 0 || dim != self.config.embedding_length {
            return Err(self.bad(format!("head input shape {:?}", hidden.dims())));
        }
        let last = hidden.narrow(1, s - 1, 1)?.squeeze(1)?;
        let x = head.norm.forward(&last)?;
        Ok(head.output.forward(&x)?.squeeze(0)?)
    }
}

/// Additive causal mask `[s, pos + s]`: query `i` (at `pos + i`) sees keys `0..=pos + i`.
fn causal_mask(s: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let kv = pos + s;
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| (0..kv).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (s, kv), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn stage_and_cache_can_move_between_threads() {
        // A node shares one stage across sessions and tasks, and keeps caches per session.
        assert_send_sync::<Stage>();
        assert_send_sync::<KvCache>();
    }

    #[test]
    fn causal_mask_respects_the_offset() -> candle_core::Result<()> {
        let m = causal_mask(2, 3, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(m[0][..4], [0.0; 4]);
        assert_eq!(m[0][4], f32::NEG_INFINITY);
        assert_eq!(m[1], [0.0; 5]);
        Ok(())
    }
}
