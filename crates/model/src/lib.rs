//! The model side of shardswarm: GGUF reading/writing and `split`, tokenizer, chat template,
//! layer-range llama forward and sampler. The only crate that uses candle.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod generate;
pub mod gguf;
pub mod info;
pub mod llama;
pub mod sampler;
pub mod split;
pub mod synth;
pub mod template;
pub mod tokenizer;

pub use candle_core::Device;
pub use config::{ConfigError, LlamaConfig};
pub use generate::{GenerateError, GenerateOptions, GenerationStats, Generator, StopReason};
pub use gguf::{GgufError, GgufFile, GgufWriter};
pub use info::ModelInfo;
pub use llama::{KvCache, Stage, StageError};
pub use sampler::{Sampler, SamplerConfig, sample_with_draw};
pub use split::{SplitError, SplitOutput, SplitProgress, SplitShard};
pub use template::{ChatMessage, ChatTemplate, TemplateError};
pub use tokenizer::{GgufTokenizer, TextStream, TokenizerError};
