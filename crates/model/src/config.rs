//! Llama hyper-parameters read from GGUF metadata.
//!
//! Invariants of a [`LlamaConfig`] once built: the architecture is one we can run (`llama`, or
//! `mistral` with the same keys), `head_count` divides `embedding_length`, `head_count_kv`
//! divides `head_count`, and the rotary dimension equals the head dimension.

use candle_core::quantized::gguf_file::{Content, Value};
use std::collections::HashMap;

/// Architectures whose GGUF tensors and keys follow llama's layout and that this forward runs.
pub const SUPPORTED_ARCHS: &[&str] = &["llama", "mistral"];

/// Errors while reading model hyper-parameters from GGUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required metadata key is absent.
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key has a value of the wrong type.
    #[error("GGUF metadata key `{key}` should be {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The architecture is not one we can run.
    #[error(
        "unsupported model architecture `{arch}`: shardswarm runs llama-family models ({})",
        SUPPORTED_ARCHS.join(", ")
    )]
    UnsupportedArch {
        /// The `general.architecture` value.
        arch: String,
    },
    /// The hyper-parameters are inconsistent or use a feature we do not implement.
    #[error("unsupported or inconsistent model: {reason}")]
    Unsupported {
        /// What is wrong.
        reason: String,
    },
}

/// Hyper-parameters of a llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture`.
    pub arch: String,
    /// `general.name`, when present.
    pub name: Option<String>,
    /// Number of transformer blocks in the whole model.
    pub block_count: u32,
    /// Hidden size.
    pub embedding_length: usize,
    /// MLP inner size.
    pub feed_forward_length: usize,
    /// Attention (query) heads.
    pub head_count: usize,
    /// Key/value heads (grouped-query attention).
    pub head_count_kv: usize,
    /// Per-head dimension (`embedding_length / head_count`).
    pub head_dim: usize,
    /// RoPE base frequency.
    pub rope_freq_base: f32,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Training context length: the largest number of positions served.
    pub context_length: usize,
    /// Vocabulary size (rows of the embedding / head).
    pub vocab_size: usize,
}

pub(crate) fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, ConfigError> {
    md.get(key).ok_or_else(|| ConfigError::MissingKey {
        key: key.to_string(),
    })
}

/// Any integer metadata value as `u64` (GGUF writers disagree on integer widths).
pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

pub(crate) fn get_u64(md: &HashMap<String, Value>, key: &str) -> Result<u64, ConfigError> {
    as_u64(get(md, key)?).ok_or_else(|| ConfigError::WrongType {
        key: key.to_string(),
        expected: "a non-negative integer",
    })
}

pub(crate) fn get_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize, ConfigError> {
    let v = get_u64(md, key)?;
    usize::try_from(v).map_err(|_| ConfigError::WrongType {
        key: key.to_string(),
        expected: "an integer that fits in usize",
    })
}

pub(crate) fn get_f64(md: &HashMap<String, Value>, key: &str) -> Result<f64, ConfigError> {
    match get(md, key)? {
        Value::F32(x) => Ok(f64::from(*x)),
        Value::F64(x) => Ok(*x),
        other => as_u64(other)
            .map(|x| x as f64)
            .ok_or_else(|| ConfigError::WrongType {
                key: key.to_string(),
                expected: "a number",
            }),
    }
}

pub(crate) fn get_str<'a>(
    md: &'a HashMap<String, Value>,
    key: &str,
) -> Result<&'a str, ConfigError> {
    match get(md, key)? {
        Value::String(s) => Ok(s.as_str()),
        _ => Err(ConfigError::WrongType {
            key: key.to_string(),
            expected: "a string",
        }),
    }
}

pub(crate) fn get_bool(md: &HashMap<String, Value>, key: &str) -> Option<bool> {
    match md.get(key)? {
        Value::Bool(b) => Some(*b),
        other => as_u64(other).map(|x| x != 0),
    }
}

impl LlamaConfig {
    /// Reads the configuration from a parsed GGUF header (a whole model or a shard).
    pub fn from_content(content: &Content) -> Result<Self, ConfigError> {
        Self::from_metadata(&content.metadata, |name| {
            content
                .tensor_infos
                .get(name)
                .map(|t| t.shape.dims().to_vec())
        })
    }

    /// Reads the configuration from metadata; `tensor_dims` answers the dims of a tensor when the
    /// vocabulary size is not in the metadata.
    pub fn from_metadata(
        md: &HashMap<String, Value>,
        tensor_dims: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> Result<Self, ConfigError> {
        let arch = get_str(md, "general.architecture")?.to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(ConfigError::UnsupportedArch { arch });
        }
        let k = |s: &str| format!("{arch}.{s}");
        if let Ok(n) = get_u64(md, &k("expert_count"))
            && n > 1
        {
            return Err(ConfigError::Unsupported {
                reason: format!("mixture-of-experts models ({n} experts) are not supported"),
            });
        }
        let block_count =
            u32::try_from(get_u64(md, &k("block_count"))?).map_err(|_| ConfigError::WrongType {
                key: k("block_count"),
                expected: "a u32",
            })?;
        let embedding_length = get_usize(md, &k("embedding_length"))?;
        let feed_forward_length = get_usize(md, &k("feed_forward_length"))?;
        let head_count = get_usize(md, &k("attention.head_count"))?;
        let head_count_kv = match get_usize(md, &k("attention.head_count_kv")) {
            Ok(n) => n,
            Err(ConfigError::MissingKey { .. }) => head_count,
            Err(e) => return Err(e),
        };
        if head_count == 0 || head_count_kv == 0 || block_count == 0 {
            return Err(ConfigError::Unsupported {
                reason: "zero heads or zero blocks".to_string(),
            });
        }
        if !embedding_length.is_multiple_of(head_count) || !head_count.is_multiple_of(head_count_kv)
        {
            return Err(ConfigError::Unsupported {
                reason: format!(
                    "embedding {embedding_length}, heads {head_count}, kv heads {head_count_kv} do not divide"
                ),
            });
        }
        let head_dim = embedding_length / head_count;
        let rope_dim = match get_usize(md, &k("rope.dimension_count")) {
            Ok(n) => n,
            Err(ConfigError::MissingKey { .. }) => head_dim,
            Err(e) => return Err(e),
        };
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(ConfigError::Unsupported {
                reason: format!("rotary dimension {rope_dim} with head dimension {head_dim}"),
            });
        }
        let rope_freq_base = match get_f64(md, &k("rope.freq_base")) {
            Ok(x) => x as f32,
            Err(ConfigError::MissingKey { .. }) => 10_000.0,
            Err(e) => return Err(e),
        };
        let rms_norm_eps = get_f64(md, &k("attention.layer_norm_rms_epsilon"))?;
        let context_length = get_usize(md, &k("context_length"))?;
        if context_length == 0 {
            return Err(ConfigError::Unsupported {
                reason: "context length 0".to_string(),
            });
        }
        let vocab_size = match get_usize(md, &k("vocab_size")) {
            Ok(n) => n,
            Err(ConfigError::MissingKey { .. }) => match md.get("tokenizer.ggml.tokens") {
                Some(Value::Array(a)) => a.len(),
                _ => tensor_dims("token_embd.weight")
                    .or_else(|| tensor_dims("output.weight"))
                    .and_then(|d| d.first().copied())
                    .ok_or_else(|| ConfigError::MissingKey {
                        key: k("vocab_size"),
                    })?,
            },
            Err(e) => return Err(e),
        };
        if embedding_length == 0 || feed_forward_length == 0 || vocab_size == 0 {
            return Err(ConfigError::Unsupported {
                reason: format!(
                    "zero width (embedding {embedding_length}, feed-forward {feed_forward_length}, vocabulary {vocab_size})"
                ),
            });
        }
        let name = get_str(md, "general.name").ok().map(str::to_string);
        Ok(Self {
            arch,
            name,
            block_count,
            embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            rope_freq_base,
            rms_norm_eps,
            context_length,
            vocab_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(arch: &str) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("general.architecture".into(), Value::String(arch.into()));
        for (key, v) in [
            ("block_count", 4u32),
            ("embedding_length", 64),
            ("feed_forward_length", 128),
            ("attention.head_count", 4),
            ("attention.head_count_kv", 2),
            ("context_length", 256),
        ] {
            m.insert(format!("{arch}.{key}"), Value::U32(v));
        }
        m.insert(
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        );
        m.insert(format!("{arch}.vocab_size"), Value::U32(300));
        m
    }

    #[test]
    fn reads_llama_keys_with_defaults() {
        let c = LlamaConfig::from_metadata(&md("llama"), |_| None).expect("config");
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.rope_freq_base, 10_000.0);
        assert_eq!(c.vocab_size, 300);
        assert_eq!(c.block_count, 4);
    }

    #[test]
    fn refuses_other_architectures_by_name() {
        let err = LlamaConfig::from_metadata(&md("gemma2"), |_| None).expect_err("refused");
        assert!(err.to_string().contains("gemma2"), "{err}");
    }

    #[test]
    fn refuses_zero_widths() {
        let mut m = md("llama");
        m.insert("llama.feed_forward_length".into(), Value::U32(0));
        assert!(LlamaConfig::from_metadata(&m, |_| None).is_err());
        let mut m = md("llama");
        m.insert("llama.vocab_size".into(), Value::U32(0));
        assert!(LlamaConfig::from_metadata(&m, |_| None).is_err());
    }

    #[test]
    fn refuses_indivisible_heads() {
        let mut m = md("llama");
        m.insert("llama.attention.head_count_kv".into(), Value::U32(3));
        assert!(LlamaConfig::from_metadata(&m, |_| None).is_err());
    }
}
