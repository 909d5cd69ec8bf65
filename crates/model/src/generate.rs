//! In-process text generation over a chain of stages (one whole model, or every shard).
//!
//! The prompt is prefilled in one batch through every stage, then tokens are generated one at
//! a time; each stage keeps its own KV cache for the session. Text streams through a callback
//! at UTF-8 boundaries. Stops on an end-of-generation token (eos, `<|im_end|>`, …) unless told
//! to ignore it, at `max_tokens`, or when the context is full.

use crate::llama::{KvCache, Stage, StageError};
use crate::sampler::{Sampler, SamplerConfig};
use crate::template::{ChatTemplate, TemplateError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use candle_core::Device;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Errors of loading a generator or generating.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A stage failed to load or compute.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// Tokenizer failure.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Chat template failure.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The stages do not form one model.
    #[error("stages do not chain into one model: {0}")]
    Chain(String),
    /// No shard files in a directory.
    #[error("no shard-N.gguf files in {0}")]
    NoShards(PathBuf),
    /// Directory listing failed.
    #[error("cannot list {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The prompt does not fit the model's context.
    #[error("prompt is {tokens} tokens but the model's context length is {context}")]
    PromptTooLong {
        /// Prompt tokens.
        tokens: usize,
        /// Context length.
        context: usize,
    },
    /// The prompt tokenized to nothing.
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampler: SamplerConfig,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-generation token was sampled (it is not part of the output).
    Eos,
    /// `max_tokens` reached.
    MaxTokens,
    /// The context length is exhausted.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// Timing and output of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens processed in the batch prefill.
    pub prefill_tokens: usize,
    /// Seconds of the prefill (all stages + head).
    pub prefill_secs: f64,
    /// Single-token forward passes after the prefill.
    pub decode_tokens: usize,
    /// Seconds of those passes.
    pub decode_secs: f64,
    /// Generated token ids (stop token excluded).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
}

impl GenerationStats {
    /// The stats line of `shardswarm generate`:
    /// `prefill: N tok in S s (R tok/s), decode: M tok in S s (R tok/s)`.
    pub fn summary(&self) -> String {
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        format!(
            "prefill: {} tok in {:.3} s ({:.1} tok/s), decode: {} tok in {:.3} s ({:.1} tok/s)",
            self.prefill_tokens,
            self.prefill_secs,
            rate(self.prefill_tokens, self.prefill_secs),
            self.decode_tokens,
            self.decode_secs,
            rate(self.decode_tokens, self.decode_secs)
        )
    }
}

/// Stages chained in one process, with the model's tokenizer.
#[derive(Debug)]
pub struct Generator {
    stages: Vec<Stage>,
    tokenizer: GgufTokenizer,
}

/// `shard-N.gguf` files of a directory, sorted by N.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let io = |source| GenerateError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(n) = name
            .strip_prefix("shard-")
            .and_then(|r| r.strip_suffix(".gguf"))
            && let Ok(n) = n.parse::<u32>()
        {
            found.push((n, path));
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(GenerateError::NoShards(dir.to_path_buf()));
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

impl Generator {
    /// A whole-model GGUF as one stage.
    pub fn load_model(path: &Path, device: &Device) -> Result<Self, GenerateError> {
        let stage = Stage::load(path, device)?;
        Self::new(vec![stage], GgufTokenizer::from_file(path)?)
    }

    /// Every `shard-N.gguf` of `dir`, chained in layer order.
    pub fn load_shards_dir(dir: &Path, device: &Device) -> Result<Self, GenerateError> {
        let files = shard_files(dir)?;
        let stages = files
            .iter()
            .map(|f| Stage::load(f, device))
            .collect::<Result<Vec<_>, _>>()?;
        let tokenizer = GgufTokenizer::from_file(&files[0])?;
        Self::new(stages, tokenizer)
    }

    /// Chains `stages` (any order); they must cover `0..block_count` contiguously.
    pub fn new(mut stages: Vec<Stage>, tokenizer: GgufTokenizer) -> Result<Self, GenerateError> {
        stages.sort_by_key(|s| s.layers().start);
        let chain = |m: String| Err(GenerateError::Chain(m));
        let Some(first) = stages.first() else {
            return chain("no stages".into());
        };
        let cfg = first.config().clone();
        let mut next = 0;
        for s in &stages {
            if s.layers().start != next {
                return chain(format!("layers {:?} follow layer {next}", s.layers()));
            }
            let c = s.config();
            if c.block_count != cfg.block_count
                || c.embedding_length != cfg.embedding_length
                || c.vocab_size != cfg.vocab_size
            {
                return chain(format!("stage {:?} is from a different model", s.layers()));
            }
            next = s.layers().end;
        }
        if next != cfg.block_count {
            return chain(format!(
                "layers end at {next}, the model has {}",
                cfg.block_count
            ));
        }
        if !first.has_embedding() || !stages.last().is_some_and(Stage::has_head) {
            return chain("the first stage needs the embedding and the last the head".into());
        }
        Ok(Self { stages, tokenizer })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The stages in layer order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// The model's context length.
    pub fn context_length(&self) -> usize {
        self.stages[0].config().context_length
    }

    /// `prompt` wrapped in the model's chat template as one user turn.
    pub fn chat_prompt(&self, prompt: &str) -> Result<String, GenerateError> {
        let src = self
            .tokenizer
            .chat_template()
            .ok_or(TemplateError::Missing)?;
        let text = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.token_text(i))
                .unwrap_or_default()
        };
        let t = ChatTemplate::new(
            src,
            &text(self.tokenizer.bos_id()),
            &text(self.tokenizer.eos_id()),
        )?;
        Ok(t.render_user_prompt(prompt)?)
    }

    fn new_caches(&self, capacity: usize) -> Result<Vec<KvCache>, GenerateError> {
        Ok(self
            .stages
            .iter()
            .map(|s| s.new_cache(capacity))
            .collect::<Result<Vec<_>, _>>()?)
    }

    /// Runs `tokens` at `pos` through every stage and returns the last position's logits.
    fn step(
        &self,
        tokens: &[u32],
        pos: usize,
        caches: &mut [KvCache],
    ) -> Result<Vec<f32>, GenerateError> {
        let mut h = self.stages[0].embed(tokens)?;
        for (stage, cache) in self.stages.iter().zip(caches.iter_mut()) {
            h = stage.forward_layers(&h, pos, cache)?;
        }
        let logits = self.stages[self.stages.len() - 1].head(&h)?;
        Ok(logits.to_vec1::<f32>().map_err(StageError::from)?)
    }

    /// Last-position logits of `tokens` from a fresh session (for tests and checks).
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        let mut caches = self.new_caches(tokens.len())?;
        self.step(tokens, 0, &mut caches)
    }

    /// Tokenizes `prompt` raw (specials parsed, BOS per the model) and generates.
    pub fn generate(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, GenerateError> {
        let ids = self.tokenizer.encode(prompt)?;
        self.generate_ids(&ids, opts, on_text)
    }

    /// Generates after `prompt` ids; `on_text` gets each completed piece of text and returns
    /// `false` to stop.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats, GenerateError> {
        let context = self.context_length();
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() > context {
            return Err(GenerateError::PromptTooLong {
                tokens: prompt.len(),
                context,
            });
        }
        let mut caches = self.new_caches((prompt.len() + opts.max_tokens).min(context))?;
        let mut sampler = Sampler::new(opts.sampler.clone());
        let mut history = prompt.to_vec();
        let mut stream = self.tokenizer.stream();
        let mut stats = GenerationStats {
            prefill_tokens: prompt.len(),
            prefill_secs: 0.0,
            decode_tokens: 0,
            decode_secs: 0.0,
            tokens: Vec::new(),
            stop: StopReason::MaxTokens,
        };
        let t0 = Instant::now();
        let mut logits = self.step(prompt, 0, &mut caches)?;
        stats.prefill_secs = t0.elapsed().as_secs_f64();
        let stops = self.tokenizer.stop_ids();
        let t1 = Instant::now();
        while stats.tokens.len() < opts.max_tokens {
            let tok = sampler.sample(&logits, &history);
            if !opts.ignore_eos && stops.contains(&tok) {
                stats.stop = StopReason::Eos;
                break;
            }
            stats.tokens.push(tok);
            history.push(tok);
            let piece = stream.push(tok)?;
            if !piece.is_empty() && !on_text(&piece) {
                stats.stop = StopReason::Cancelled;
                break;
            }
            if stats.tokens.len() == opts.max_tokens {
                break;
            }
            let pos = history.len() - 1;
            if pos >= context {
                stats.stop = StopReason::ContextFull;
                break;
            }
            logits = self.step(&[tok], pos, &mut caches)?;
            stats.decode_tokens += 1;
        }
        stats.decode_secs = t1.elapsed().as_secs_f64();
        let rest = stream.finish()?;
        if !rest.is_empty() && stats.stop != StopReason::Cancelled {
            on_text(&rest);
        }
        tracing::debug!(target: "shardswarm::model", stop = ?stats.stop, tokens = stats.tokens.len(), "generation done");
        Ok(stats)
    }
}
