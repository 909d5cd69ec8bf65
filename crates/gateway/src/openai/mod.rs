//! The OpenAI-compatible API (BRIEF §7) over any [`Backend`]:
//!
//! - `GET /v1/models`: the one model, `id` = the model card's name.
//! - `POST /v1/completions`: `prompt` (a string or an array of one string) used raw, like
//!   `shardswarm generate`: special tokens in it are parsed, BOS as the model says.
//! - `POST /v1/chat/completions`: `messages` rendered with the model's chat template (with the
//!   assistant's turn opened), then tokenized the same way.
//!
//! Both take `max_tokens` (chat also `max_completion_tokens`, which wins), `temperature`
//! (default 1, in `[0, 2]`, 0 = greedy), `top_p` (default 1, in `(0, 1]`), `seed` (default
//! random), `stop` (a string or up to 4), `stream`, `stream_options.include_usage` and `n`
//! (only 1). `model` may be anything: the swarm serves one model and answers with its name.
//! Other fields are ignored. Without `max_tokens` a completion may use the rest of the context,
//! at most [`ApiOptions::default_max_tokens`].
//!
//! Each request runs in its own task (no global lock); a client that goes away, a matched stop
//! string or the request timeout closes the token channel, which stops the backend.

mod error;
mod pipeline;
mod request;
mod response;
mod stop;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::{Instrument, debug, info_span};

pub use error::OpenAiError;

use crate::backend::Backend;
use request::{RequestBody, Route};
use response::Framer;

/// Settings of the OpenAI-compatible routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiOptions {
    /// Longest a generation may take, from the request to the last token (default 300 s); past
    /// it the request fails with 504 (or an error event when streaming).
    pub request_timeout: Duration,
    /// Completion length when the request gives no `max_tokens` (default 512), further capped by
    /// what is left of the context after the prompt.
    pub default_max_tokens: usize,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(300),
            default_max_tokens: 512,
        }
    }
}

struct ApiState {
    backend: Arc<dyn Backend>,
    opts: ApiOptions,
    /// `created` of the model object: when the router was built.
    created: u64,
}

/// The OpenAI-compatible routes (`/v1/models`, `/v1/completions`, `/v1/chat/completions`)
/// over `backend`.
pub fn openai_router(backend: Arc<dyn Backend>, opts: ApiOptions) -> Router {
    let state = Arc::new(ApiState {
        backend,
        opts,
        created: response::unix_now(),
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .with_state(state)
}

async fn models(State(state): State<Arc<ApiState>>) -> Result<Response, OpenAiError> {
    let card = state.backend.model().await?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": card.name,
            "object": "model",
            "created": state.created,
            "owned_by": "shardswarm",
        }],
    }))
    .into_response())
}

async fn completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<RequestBody>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let span = info_span!(target: "shardswarm::api", "completions");
    complete(state, Route::Completions, body)
        .instrument(span)
        .await
}

async fn chat_completions(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<RequestBody>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let span = info_span!(target: "shardswarm::api", "chat_completions");
    complete(state, Route::Chat, body).instrument(span).await
}

async fn complete(
    state: Arc<ApiState>,
    route: Route,
    body: Result<Json<RequestBody>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let result = async {
        let Json(body) = body?;
        let settings = body.settings(route)?;
        let card = state.backend.model().await?;
        let prompt = match route {
            Route::Completions => body.completion_prompt()?,
            Route::Chat => body.chat_prompt(&card)?,
        };
        let plan = request::plan(&card, route, &prompt, settings, &state.opts)?;
        let prompt_tokens = plan.generate.prompt.len();
        let framer = Framer::new(route, card.name.clone(), prompt_tokens, plan.include_usage);
        debug!(
            target: "shardswarm::api",
            id = framer.id(),
            prompt_tokens,
            max_tokens = plan.generate.max_tokens,
            stream = plan.stream,
            "generating"
        );
        let events = pipeline::spawn(
            state.backend.clone(),
            card,
            plan.generate,
            plan.stops,
            state.opts.request_timeout,
        );
        if plan.stream {
            response::stream(framer, events).await
        } else {
            response::collect(framer, events).await
        }
    }
    .await;
    if let Err(e) = &result {
        debug!(target: "shardswarm::api", status = e.status().as_u16(), error = %e, "request refused");
    }
    result
}
