//! What the OpenAI-compatible layer needs from the swarm: the model card (name, context,
//! tokenizer, chat template) and a token generator. The real implementation drives the
//! pipeline across the swarm's stages; tests of the HTTP layer use their own.

use std::sync::Arc;

use futures::future::BoxFuture;
use shardswarm_model::{ChatTemplate, GgufTokenizer};
use tokio::sync::mpsc;

/// The model the gateway serves.
#[derive(Debug)]
pub struct ModelCard {
    /// The model name (`GET /v1/models` id; the GGUF's `general.name` or the manifest's).
    pub name: String,
    /// The swarm's model id (first 16 hex of the source SHA-256).
    pub model_id: String,
    /// Longest prompt + completion, in tokens.
    pub context_length: usize,
    /// The model's tokenizer.
    pub tokenizer: Arc<GgufTokenizer>,
    /// The model's chat template, when the GGUF has one.
    pub chat_template: Option<Arc<ChatTemplate>>,
}

/// A generation request in tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The prompt ids (non-empty, within the context).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Softmax temperature; `<= 0` is greedy.
    pub temperature: f32,
    /// Nucleus sampling; `>= 1` disables.
    pub top_p: f32,
    /// RNG seed (the same seed and prompt give the same tokens).
    pub seed: u64,
    /// Token ids that end the generation (not sent).
    pub stop_ids: Vec<u32>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token.
    Eos,
    /// `max_tokens` reached, or the context is full.
    Length,
    /// The receiver of the tokens was dropped (client gone, stop string matched).
    Cancelled,
}

/// The outcome of a finished generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// Why it ended.
    pub finish: Finish,
    /// Tokens generated (sent).
    pub completion_tokens: usize,
}

/// Why a generation could not run or went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The swarm is not ready: these shards are loaded nowhere.
    #[error("the swarm is not ready: shards {missing:?} are not loaded by any node")]
    NotReady {
        /// The missing shard indices.
        missing: Vec<u32>,
    },
    /// The request cannot be served as asked (e.g. longer than the context).
    #[error("{0}")]
    BadRequest(String),
    /// Every stage holder failed and no other is left (or too many retries).
    #[error("inference failed: {0}")]
    Failed(String),
    /// The generation took longer than the request timeout.
    #[error("inference timed out after {0} s")]
    Timeout(u64),
}

/// The swarm side of the OpenAI API. `generate` sends each token id on `tokens` as soon as it
/// is known; when `tokens` is closed it stops and frees its sessions on every stage.
pub trait Backend: Send + Sync + 'static {
    /// The model card, or why there is none yet.
    fn model(&self) -> BoxFuture<'_, Result<Arc<ModelCard>, BackendError>>;
    /// Runs one generation.
    fn generate(
        &self,
        req: GenerateRequest,
        tokens: mpsc::Sender<u32>,
    ) -> BoxFuture<'_, Result<Generated, BackendError>>;
}
