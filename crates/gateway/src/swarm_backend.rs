//! The real [`Backend`]: the model card from a local shard's metadata, generations through
//! this peer's pipeline client over the swarm.

use std::sync::Arc;

use futures::future::BoxFuture;
use shardswarm_node::Handle;
use shardswarm_pipeline::{ClientError, GenParams, Sampling};
use tokio::sync::{Mutex, mpsc};

use crate::backend::{Backend, BackendError, Finish, GenerateRequest, Generated, ModelCard};

/// Serves the swarm's model through a peer's [`Handle`].
#[derive(Debug)]
pub struct SwarmBackend {
    handle: Handle,
    card: Mutex<Option<Arc<ModelCard>>>,
}

impl SwarmBackend {
    /// A backend for the peer behind `handle`.
    pub fn new(handle: Handle) -> Self {
        Self {
            handle,
            card: Mutex::new(None),
        }
    }

    async fn load_card(&self) -> Result<Arc<ModelCard>, BackendError> {
        let mut cached = self.card.lock().await;
        let file = self
            .handle
            .model_file()
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        let Some(file) = file else {
            let status = self.handle.route_status().await;
            let missing = status.map(|s| s.missing).unwrap_or_default();
            return Err(BackendError::NotReady { missing });
        };
        if let Some(card) = cached.as_ref()
            && card.model_id == file.model_id
        {
            return Ok(card.clone());
        }
        let path = file.path.clone();
        let info =
            tokio::task::spawn_blocking(move || shardswarm_model::ModelInfo::from_file(&path))
                .await
                .map_err(|e| BackendError::Failed(format!("model metadata task: {e}")))?
                .map_err(|e| BackendError::Failed(format!("model metadata: {e}")))?;
        let card = Arc::new(ModelCard {
            name: file.model,
            model_id: file.model_id,
            context_length: info.config.context_length,
            tokenizer: Arc::new(info.tokenizer),
            chat_template: info.chat_template.map(Arc::new),
        });
        *cached = Some(card.clone());
        Ok(card)
    }
}

impl Backend for SwarmBackend {
    fn model(&self) -> BoxFuture<'_, Result<Arc<ModelCard>, BackendError>> {
        Box::pin(self.load_card())
    }

    fn generate(
        &self,
        req: GenerateRequest,
        tokens: mpsc::Sender<u32>,
    ) -> BoxFuture<'_, Result<Generated, BackendError>> {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let result = self.run(req, tokens).await;
            let (outcome, n) = match &result {
                Ok(g) => (
                    match g.finish {
                        Finish::Eos => "eos",
                        Finish::Length => "length",
                        Finish::Cancelled => "cancelled",
                    },
                    g.completion_tokens as u64,
                ),
                Err(BackendError::NotReady { .. }) => ("not_ready", 0),
                Err(BackendError::BadRequest(_)) => ("bad_request", 0),
                Err(BackendError::Failed(_)) => ("failed", 0),
                Err(BackendError::Timeout(_)) => ("timeout", 0),
            };
            self.handle
                .metrics()
                .inference(outcome, n, started.elapsed().as_secs_f64());
            result
        })
    }
}

impl SwarmBackend {
    async fn run(
        &self,
        req: GenerateRequest,
        tokens: mpsc::Sender<u32>,
    ) -> Result<Generated, BackendError> {
        let card = self.load_card().await?;
        let status = self
            .handle
            .route_status()
            .await
            .map_err(|e| BackendError::Failed(e.to_string()))?;
        if !status.swarm_ready {
            return Err(BackendError::NotReady {
                missing: status.missing,
            });
        }
        let params = GenParams {
            prompt: req.prompt,
            max_tokens: req.max_tokens,
            sampling: Sampling {
                temperature: req.temperature,
                top_k: 0,
                top_p: req.top_p,
            },
            seed: req.seed,
            stop_ids: req.stop_ids,
            context: card.context_length,
        };
        let client = self.handle.inference().client.clone();
        match client.generate(&params, tokens).await {
            Ok(o) => {
                self.handle.metrics().steps(&o.step_times, o.route.len());
                Ok(Generated {
                    finish: match o.finish {
                        shardswarm_pipeline::Finish::Eos => Finish::Eos,
                        shardswarm_pipeline::Finish::Length => Finish::Length,
                        shardswarm_pipeline::Finish::Cancelled => Finish::Cancelled,
                    },
                    completion_tokens: o.tokens,
                })
            }
            Err(ClientError::NoRoute(e)) => Err(BackendError::NotReady { missing: e.missing }),
            Err(ClientError::BadRequest(m)) => Err(BackendError::BadRequest(m)),
            Err(e @ ClientError::Failed { .. }) => Err(BackendError::Failed(e.to_string())),
        }
    }
}
