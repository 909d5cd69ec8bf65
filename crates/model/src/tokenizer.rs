//! A `tokenizers::Tokenizer` built from GGUF metadata, matching llama.cpp's tokenization.
//!
//! Byte-level BPE from `tokenizer.ggml.tokens` + `tokenizer.ggml.merges`, the pre-tokenizer that
//! `tokenizer.ggml.pre` names, control / user-defined tokens as special added tokens (parsed in
//! raw text), and a byte-level decoder. SentencePiece vocabularies (`tokenizer.ggml.model =
//! "llama"`) are refused: they carry scores, not merges, and need a different model.

use crate::config::{as_u64, get_bool};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's `llama3` / `llama-bpe` pre-tokenizer regex.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's `qwen2` pre-tokenizer regex.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token texts that end a turn in common chat formats (llama.cpp treats them as end-of-generation).
const EOG_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
];

/// Errors while building or using the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or malformed.
    #[error("tokenizer metadata `{key}`: {problem}")]
    Metadata {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// A tokenizer model we cannot build.
    #[error("unsupported tokenizer model `{model}` (supported: byte-level BPE `gpt2`)")]
    UnsupportedModel {
        /// `tokenizer.ggml.model`.
        model: String,
    },
    /// The file could not be read.
    #[error("cannot read GGUF header of {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// The `tokenizers` crate failed.
    #[error("tokenizer: {0}")]
    Tokenizers(String),
}

fn tk_err(e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Tokenizers(e.to_string())
}

/// A GGUF model's tokenizer plus the ids and flags generation needs.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    inner: Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
}

fn string_array<'a>(
    md: &'a HashMap<String, Value>,
    key: &'static str,
) -> Result<Vec<&'a str>, TokenizerError> {
    let err = |problem: &str| TokenizerError::Metadata {
        key,
        problem: problem.to_string(),
    };
    match md.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(err("contains a non-string")),
            })
            .collect(),
        Some(_) => Err(err("is not an array")),
        None => Err(err("is missing")),
    }
}

fn opt_id(md: &HashMap<String, Value>, key: &str, vocab: usize) -> Option<u32> {
    md.get(key)
        .and_then(as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .filter(|&v| (v as usize) < vocab)
}

fn pre_tokenizer(pre: &str) -> Result<(PreTokenizerWrapper, bool), TokenizerError> {
    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tk_err)?
        .into())
    };
    Ok(match pre {
        // SmolLM: Digits(individual) + ByteLevel(add_prefix_space = false, GPT-2 regex).
        "smollm" => (
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            false,
        ),
        "llama-bpe" | "llama3" | "smaug-bpe" => (
            Sequence::new(vec![
                split(REGEX_LLAMA3)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            false,
        ),
        "qwen2" => (
            Sequence::new(vec![
                split(REGEX_QWEN2)?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
            true,
        ),
        other => {
            if !matches!(other, "gpt2" | "default" | "") {
                tracing::warn!(target: "shardswarm::model", pre = other,
                    "unknown tokenizer.ggml.pre, using the GPT-2 byte-level pre-tokenizer");
            }
            (ByteLevel::new(false, true, true).into(), false)
        }
    })
}

impl GgufTokenizer {
    /// Reads the GGUF header of `path` and builds its tokenizer.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let file_err = |reason: String| TokenizerError::File {
            path: path.display().to_string(),
            reason,
        };
        let mut f = std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| file_err(e.to_string()))?,
        );
        let content = crate::gguf::read_content(&mut f).map_err(|e| file_err(e.to_string()))?;
        Self::from_metadata(&content.metadata)
    }

    /// Builds the tokenizer from GGUF metadata.
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, TokenizerError> {
        let model = match md.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(TokenizerError::Metadata {
                    key: "tokenizer.ggml.model",
                    problem: "is missing".into(),
                });
            }
        };
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { model });
        }
        let tokens = string_array(md, "tokenizer.ggml.tokens")?;
        let merges = string_array(md, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| TokenizerError::Metadata {
                        key: "tokenizer.ggml.merges",
                        problem: format!("bad entry {m:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tk_err)?;
        let mut inner = Tokenizer::new(bpe);
        let pre = match md.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.as_str(),
            _ => "default",
        };
        let (pt, nfc) = pre_tokenizer(pre)?;
        inner.with_pre_tokenizer(Some(pt));
        if nfc {
            inner.with_normalizer(Some(NFC)).map_err(tk_err)?;
        }
        inner.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));

        // Control (3), user-defined (4) and unknown (2) tokens are matched in raw text.
        let types: Vec<u64> = match md.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| as_u64(v).unwrap_or(1)).collect(),
            _ => Vec::new(),
        };
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(types.iter())
            .filter(|(_, ty)| matches!(ty, 2..=4))
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(specials).map_err(tk_err)?;

        let n = tokens.len();
        let bos = opt_id(md, "tokenizer.ggml.bos_token_id", n);
        let eos = opt_id(md, "tokenizer.ggml.eos_token_id", n);
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        stop_ids.extend(opt_id(md, "tokenizer.ggml.eot_token_id", n));
        stop_ids.extend(opt_id(md, "tokenizer.ggml.eom_token_id", n));
        for (i, (t, ty)) in tokens.iter().zip(types.iter()).enumerate() {
            if (*ty == 3 || *ty == 4) && EOG_TEXTS.contains(t) {
                stop_ids.push(i as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let add_bos =
            get_bool(md, "tokenizer.ggml.add_bos_token").unwrap_or(false) && bos.is_some();
        let chat_template = match md.get("tokenizer.chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(Self {
            inner,
            bos,
            eos,
            add_bos,
            stop_ids,
            chat_template,
        })
    }

    /// Tokenizes raw text: special tokens in it are parsed as specials; BOS is prepended only
    /// when the model's `add_bos_token` says so.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos
            && let Some(b) = self.bos
        {
            ids.push(b);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Detokenizes, special tokens included as their text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// A streaming decoder that yields text only at UTF-8 boundaries.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tok: self,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// BOS id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// EOS id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether BOS is prepended to prompts.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The token text of an id.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Ids that end generation: eos, eot, and end-of-turn control tokens like `<|im_end|>`.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The GGUF `tokenizer.chat_template`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// Incremental detokenizer: push ids, get the newly completed text. Bytes of a multi-byte
/// character split across tokens are held back until the character is complete.
#[derive(Debug)]
pub struct TextStream<'a> {
    tok: &'a GgufTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream<'_> {
    /// Adds one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        // An incomplete UTF-8 sequence decodes to U+FFFD at the end: wait for more tokens.
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        let new = text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = text.len();
        // Keep the buffer short: restart once everything is emitted.
        if self.ids.len() > 64 {
            self.ids.clear();
            self.emitted = 0;
        }
        Ok(new)
    }

    /// Text still held back at the end of generation (an incomplete character decodes lossily).
    pub fn finish(&mut self) -> Result<String, TokenizerError> {
        let text = self.tok.decode(&self.ids)?;
        let rest = text.get(self.emitted..).unwrap_or_default().to_string();
        self.ids.clear();
        self.emitted = 0;
        Ok(rest)
    }
}
