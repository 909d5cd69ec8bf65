//! Shared by the OpenAI route tests: a mock [`Backend`] that plays a [`Script`] of token ids
//! and records requests and cancellation, and a model card from a tiny synthetic GGUF.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use candle_core::quantized::GgmlDType;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value;
use shardswarm_gateway::backend::{
    Backend, BackendError, Finish, GenerateRequest, Generated, ModelCard,
};
use shardswarm_gateway::openai::{ApiOptions, openai_router};
use shardswarm_model::synth::{SynthSpec, write_synth_model};
use shardswarm_model::{ChatTemplate, GgufTokenizer};
use tokio::sync::{Barrier, Notify, mpsc};
use tower::ServiceExt;

/// Every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// What the mock's `generate` does.
#[derive(Clone)]
pub(crate) enum Script {
    /// Sends the ids (at most `max_tokens`), then ends with `finish` (or `Length`).
    Emit(Vec<u32>, Finish),
    /// Sends the ids, then the filler id forever, until the receiver is dropped.
    EmitForever(Vec<u32>, u32),
    /// Sends the ids, then fails.
    EmitThenFail(Vec<u32>, BackendError),
    /// Never sends anything.
    Hang,
}

/// A backend that plays a [`Script`], records each request and notices cancellation.
pub(crate) struct Mock {
    pub(crate) card: Arc<ModelCard>,
    pub(crate) model_error: Option<BackendError>,
    pub(crate) script: Script,
    /// Both generations must arrive before either proceeds (when set).
    pub(crate) barrier: Option<Barrier>,
    pub(crate) seen: Mutex<Vec<GenerateRequest>>,
    /// Notified when a send found the token channel closed.
    pub(crate) closed: Notify,
}

impl Mock {
    pub(crate) fn new(card: Arc<ModelCard>, script: Script) -> Self {
        Self {
            card,
            model_error: None,
            script,
            barrier: None,
            seen: Mutex::new(Vec::new()),
            closed: Notify::new(),
        }
    }

    pub(crate) fn seen(&self) -> Vec<GenerateRequest> {
        self.seen.lock().expect("lock").clone()
    }

    async fn send_all(
        &self,
        ids: impl Iterator<Item = u32>,
        tokens: &mpsc::Sender<u32>,
    ) -> Result<usize, Generated> {
        let mut n = 0;
        for id in ids {
            if tokens.send(id).await.is_err() {
                self.closed.notify_one();
                return Err(Generated {
                    finish: Finish::Cancelled,
                    completion_tokens: n,
                });
            }
            n += 1;
        }
        Ok(n)
    }
}

impl Backend for Mock {
    fn model(&self) -> BoxFuture<'_, Result<Arc<ModelCard>, BackendError>> {
        Box::pin(async move {
            match &self.model_error {
                Some(e) => Err(e.clone()),
                None => Ok(self.card.clone()),
            }
        })
    }

    fn generate(
        &self,
        req: GenerateRequest,
        tokens: mpsc::Sender<u32>,
    ) -> BoxFuture<'_, Result<Generated, BackendError>> {
        Box::pin(async move {
            self.seen.lock().expect("lock").push(req.clone());
            if let Some(b) = &self.barrier {
                b.wait().await;
            }
            match &self.script {
                Script::Emit(ids, finish) => {
                    let take = ids.len().min(req.max_tokens);
                    match self.send_all(ids[..take].iter().copied(), &tokens).await {
                        Err(cancelled) => Ok(cancelled),
                        Ok(n) if n < ids.len() => Ok(Generated {
                            finish: Finish::Length,
                            completion_tokens: n,
                        }),
                        Ok(n) => Ok(Generated {
                            finish: *finish,
                            completion_tokens: n,
                        }),
                    }
                }
                Script::EmitForever(ids, filler) => {
                    let all = ids.iter().copied().chain(std::iter::repeat(*filler));
                    match self.send_all(all, &tokens).await {
                        Err(cancelled) => Ok(cancelled),
                        Ok(_) => Err(BackendError::Failed("an endless iterator ended".into())),
                    }
                }
                Script::EmitThenFail(ids, e) => {
                    let _ = self.send_all(ids.iter().copied(), &tokens).await;
                    Err(e.clone())
                }
                Script::Hang => std::future::pending().await,
            }
        })
    }
}

/// A model card from a synthetic GGUF (ChatML template, context 512).
pub(crate) struct Fixture {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) card: Arc<ModelCard>,
}

impl Fixture {
    pub(crate) fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("tiny.gguf");
        let spec = SynthSpec::tiny(GgmlDType::Q8_0, 1);
        write_synth_model(&path, &spec)?;
        let tokenizer = GgufTokenizer::from_file(&path)?;
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let src = tokenizer.chat_template().context("synth has a template")?;
        let template =
            ChatTemplate::new(src, &text(tokenizer.bos_id()), &text(tokenizer.eos_id()))?;
        let card = ModelCard {
            name: spec.name.clone(),
            model_id: "0123456789abcdef".into(),
            context_length: spec.context,
            tokenizer: Arc::new(tokenizer),
            chat_template: Some(Arc::new(template)),
        };
        Ok(Self {
            _dir: dir,
            card: Arc::new(card),
        })
    }

    /// Token ids of `text` without BOS.
    pub(crate) fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.card.tokenizer.inner().encode(text, false);
        Ok(enc.map_err(|e| anyhow!("{e}"))?.get_ids().to_vec())
    }

    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(self.card.tokenizer.decode(ids)?)
    }

    pub(crate) fn app(&self, script: Script) -> (Arc<Mock>, Router) {
        self.app_with(Mock::new(self.card.clone(), script), ApiOptions::default())
    }

    pub(crate) fn app_with(&self, mock: Mock, opts: ApiOptions) -> (Arc<Mock>, Router) {
        let mock = Arc::new(mock);
        let router = openai_router(mock.clone(), opts);
        (mock, router)
    }
}

pub(crate) async fn call(app: &Router, req: Request<Body>) -> Result<(StatusCode, String)> {
    let resp = tokio::time::timeout(WAIT, app.clone().oneshot(req)).await??;
    let status = resp.status();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect()).await??;
    Ok((status, String::from_utf8(body.to_bytes().to_vec())?))
}

pub(crate) fn post_req(path: &str, body: &Value) -> Result<Request<Body>> {
    Ok(Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))?)
}

pub(crate) async fn post(app: &Router, path: &str, body: Value) -> Result<(StatusCode, Value)> {
    let (status, text) = call(app, post_req(path, &body)?).await?;
    Ok((status, serde_json::from_str(&text).context(text)?))
}

/// The `data:` payloads of an SSE body.
pub(crate) async fn post_sse(
    app: &Router,
    path: &str,
    body: Value,
) -> Result<(StatusCode, Vec<String>)> {
    let (status, text) = call(app, post_req(path, &body)?).await?;
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect();
    Ok((status, data))
}

pub(crate) fn parse(events: &[String]) -> Result<Vec<Value>> {
    events
        .iter()
        .map(|e| serde_json::from_str(e).context(e.clone()))
        .collect()
}
