//! What a gateway needs to serve a model without running any layer: the configuration, the
//! tokenizer and the chat template, read from the metadata of any shard (split copies the
//! source metadata into every shard) or of a whole-model file.

use std::io::BufReader;
use std::path::Path;

use crate::{ChatTemplate, GenerateError, GgufTokenizer, LlamaConfig, StageError};

/// A model's configuration, tokenizer and chat template.
#[derive(Debug)]
pub struct ModelInfo {
    /// The llama configuration (context length, widths, vocabulary).
    pub config: LlamaConfig,
    /// The tokenizer.
    pub tokenizer: GgufTokenizer,
    /// The chat template, when the file has one that compiles.
    pub chat_template: Option<ChatTemplate>,
}

impl ModelInfo {
    /// Reads the metadata of `path` (tensors are not read).
    pub fn from_file(path: &Path) -> Result<Self, GenerateError> {
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
        let config = LlamaConfig::from_content(&content).map_err(|source| StageError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        let tokenizer = GgufTokenizer::from_file(path)?;
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let chat_template = match tokenizer.chat_template() {
            None => None,
            Some(src) => {
                match ChatTemplate::new(src, &text(tokenizer.bos_id()), &text(tokenizer.eos_id())) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(target: "shardswarm::model", error = %e, "the chat template does not compile; chat is unavailable");
                        None
                    }
                }
            }
        };
        Ok(Self {
            config,
            tokenizer,
            chat_template,
        })
    }
}
