//! Answers in OpenAI's shapes: one JSON object, or server-sent events.
//!
//! A stream is `[chat: role chunk] text chunks… finish chunk [usage chunk] [DONE]`; a failure
//! after the stream started is one `data: {"error": …}` event, and the stream ends there.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::OpenAiError;
use super::pipeline::{Event, FinishReason};
use super::request::Route;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Builds the JSON objects of one response (same id, timestamp and model in every chunk).
#[derive(Debug, Clone)]
pub(crate) struct Framer {
    route: Route,
    id: String,
    created: u64,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
}

impl Framer {
    /// A response to a `route` request about `model` with a fresh id.
    pub(crate) fn new(
        route: Route,
        model: String,
        prompt_tokens: usize,
        include_usage: bool,
    ) -> Self {
        let prefix = match route {
            Route::Completions => "cmpl",
            Route::Chat => "chatcmpl",
        };
        Self {
            route,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model,
            prompt_tokens,
            include_usage,
        }
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.route, chunk) {
            (Route::Completions, _) => "text_completion",
            (Route::Chat, false) => "chat.completion",
            (Route::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The whole answer of a non-streamed request.
    pub(crate) fn response(
        &self,
        text: String,
        reason: FinishReason,
        completion_tokens: usize,
    ) -> Value {
        let choice = match self.route {
            Route::Completions => json!({
                "index": 0, "text": text, "finish_reason": reason.as_str(), "logprobs": null,
            }),
            Route::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason.as_str(),
                "logprobs": null,
            }),
        };
        json!({
            "id": self.id, "object": self.object(false), "created": self.created,
            "model": self.model, "choices": [choice], "usage": self.usage(completion_tokens),
        })
    }

    fn chunk(&self, choices: Value) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": self.object(true), "created": self.created,
            "model": self.model, "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// Chat streams open with the assistant's role.
    fn role_chunk(&self) -> Option<Value> {
        match self.route {
            Route::Completions => None,
            Route::Chat => Some(self.chunk(json!([{
                "index": 0, "delta": {"role": "assistant", "content": ""},
                "logprobs": null, "finish_reason": null,
            }]))),
        }
    }

    fn text_chunk(&self, text: &str) -> Value {
        self.chunk(match self.route {
            Route::Completions => json!([{
                "index": 0, "text": text, "logprobs": null, "finish_reason": null,
            }]),
            Route::Chat => json!([{
                "index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null,
            }]),
        })
    }

    fn finish_chunk(&self, reason: FinishReason) -> Value {
        self.chunk(match self.route {
            Route::Completions => json!([{
                "index": 0, "text": "", "logprobs": null, "finish_reason": reason.as_str(),
            }]),
            Route::Chat => json!([{
                "index": 0, "delta": {}, "logprobs": null, "finish_reason": reason.as_str(),
            }]),
        })
    }

    fn usage_chunk(&self, completion_tokens: usize) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = self.usage(completion_tokens);
        chunk
    }
}

/// Waits for the whole completion and answers with one JSON object.
pub(crate) async fn collect(
    framer: Framer,
    mut events: mpsc::Receiver<Event>,
) -> Result<Response, OpenAiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done {
                reason,
                completion_tokens,
            } => return Ok(Json(framer.response(text, reason, completion_tokens)).into_response()),
            Event::Failed(e) => return Err(e),
        }
    }
    Err(ended_early())
}

fn ended_early() -> OpenAiError {
    OpenAiError::Internal("the generation ended without a result".to_owned())
}

/// Answers with server-sent events. Waits for the first event so that a generation that fails
/// at once (swarm not ready, …) still gets a proper HTTP status.
pub(crate) async fn stream(
    framer: Framer,
    mut events: mpsc::Receiver<Event>,
) -> Result<Response, OpenAiError> {
    let first = match events.recv().await {
        Some(Event::Failed(e)) => return Err(e),
        Some(event) => event,
        None => return Err(ended_early()),
    };
    let queue = framer.role_chunk().map(data).into_iter().collect();
    let state = SseState {
        framer,
        events,
        first: Some(first),
        queue,
        finished: false,
    };
    let stream = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok::<_, Infallible>(event), state))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn data(value: Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// The SSE stream's state; dropping it (client gone) drops the event receiver.
struct SseState {
    framer: Framer,
    events: mpsc::Receiver<Event>,
    first: Option<Event>,
    queue: VecDeque<SseEvent>,
    finished: bool,
}

impl SseState {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            let event = match self.first.take() {
                Some(e) => Some(e),
                None => self.events.recv().await,
            };
            match event {
                Some(Event::Text(t)) => self.queue.push_back(data(self.framer.text_chunk(&t))),
                Some(Event::Done {
                    reason,
                    completion_tokens,
                }) => {
                    self.queue.push_back(data(self.framer.finish_chunk(reason)));
                    if self.framer.include_usage {
                        let usage = self.framer.usage_chunk(completion_tokens);
                        self.queue.push_back(data(usage));
                    }
                    self.queue.push_back(SseEvent::default().data("[DONE]"));
                    self.finished = true;
                }
                Some(Event::Failed(e)) => {
                    self.queue.push_back(data(e.body()));
                    self.finished = true;
                }
                None => {
                    self.queue.push_back(data(ended_early().body()));
                    self.finished = true;
                }
            }
        }
    }
}
