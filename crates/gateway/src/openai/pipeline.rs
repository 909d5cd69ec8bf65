//! The task behind one request: runs [`Backend::generate`], turns token ids into text pieces
//! (never splitting a UTF-8 character), applies the stop strings, and hands [`Event`]s to the
//! response.
//!
//! Invariants: exactly one final event ([`Event::Done`] or [`Event::Failed`]) ends the events,
//! unless the response went away first. The token receiver is dropped — which tells the backend
//! to stop — as soon as a stop string matches, the response's event receiver is dropped (client
//! gone), or the request timeout passes. The whole generation is bounded by that timeout.

use std::sync::Arc;
use std::time::Duration;

use shardswarm_model::GgufTokenizer;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::{Instrument, debug, warn};

use super::error::OpenAiError;
use super::stop::{Step, StopMatcher};
use crate::backend::{Backend, BackendError, Finish, GenerateRequest, Generated, ModelCard};

/// Token ids in flight between the backend and the detokenizer.
const TOKEN_BUFFER: usize = 16;
/// Events in flight between the task and the response.
const EVENT_BUFFER: usize = 16;

/// OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinishReason {
    /// A stop token or a stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    /// The wire value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What the generation task tells the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// More completion text (never empty).
    Text(String),
    /// The completion ended normally.
    Done {
        /// Why.
        reason: FinishReason,
        /// Tokens received from the backend.
        completion_tokens: usize,
    },
    /// The completion failed.
    Failed(OpenAiError),
}

/// How the detokenizer loop ended.
enum Consumed {
    /// The backend closed the token channel (the generation is over).
    Ended(usize),
    /// A stop string matched.
    Stopped(usize),
    /// The response is gone.
    ClientGone(usize),
    /// Detokenizing failed.
    Failed(OpenAiError),
}

/// Starts the generation; its events arrive on the returned receiver. Dropping the receiver
/// cancels the generation.
pub(crate) fn spawn(
    backend: Arc<dyn Backend>,
    card: Arc<ModelCard>,
    req: GenerateRequest,
    stops: Vec<String>,
    timeout: Duration,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let deadline = Instant::now() + timeout;
    let task = async move {
        run(&*backend, &card, req, stops, deadline, timeout, &tx).await;
    };
    tokio::spawn(task.in_current_span());
    rx
}

async fn run(
    backend: &dyn Backend,
    card: &ModelCard,
    req: GenerateRequest,
    stops: Vec<String>,
    deadline: Instant,
    timeout: Duration,
    out: &mpsc::Sender<Event>,
) {
    let timed_out = || BackendError::Timeout(timeout.as_secs());
    let (tok_tx, tok_rx) = mpsc::channel(TOKEN_BUFFER);
    let mut generation = backend.generate(req, tok_tx);
    let consumer = consume(&card.tokenizer, tok_rx, stops, out);
    tokio::pin!(consumer);
    let mut generated: Option<Result<Generated, BackendError>> = None;
    let consumed = loop {
        tokio::select! {
            r = &mut generation, if generated.is_none() => generated = Some(r),
            c = &mut consumer => break Some(c),
            () = sleep_until(deadline) => break None,
        }
    };
    // Here the consumer is finished (or about to be dropped), and with it the token receiver.
    let Some(consumed) = consumed else {
        drop(generation);
        warn!(target: "shardswarm::api", timeout_s = timeout.as_secs(), "generation timed out");
        let _ = out.send(Event::Failed(timed_out().into())).await;
        return;
    };
    let (early, tokens) = match consumed {
        Consumed::Ended(n) => {
            let result = match generated.take() {
                Some(r) => r,
                None => timeout_at(deadline, &mut generation)
                    .await
                    .unwrap_or_else(|_| Err(timed_out())),
            };
            let event = match result {
                Ok(g) => {
                    let reason = match g.finish {
                        Finish::Length => FinishReason::Length,
                        Finish::Eos | Finish::Cancelled => FinishReason::Stop,
                    };
                    debug!(target: "shardswarm::api", tokens = n, reason = reason.as_str(), "generation done");
                    Event::Done {
                        reason,
                        completion_tokens: n,
                    }
                }
                Err(e) => {
                    warn!(target: "shardswarm::api", error = %e, "generation failed");
                    Event::Failed(e.into())
                }
            };
            let _ = out.send(event).await;
            return;
        }
        Consumed::Stopped(n) => {
            debug!(target: "shardswarm::api", tokens = n, "stop string matched");
            (
                Some(Event::Done {
                    reason: FinishReason::Stop,
                    completion_tokens: n,
                }),
                n,
            )
        }
        Consumed::ClientGone(n) => {
            debug!(target: "shardswarm::api", tokens = n, "client went away, cancelling");
            (None, n)
        }
        Consumed::Failed(e) => {
            warn!(target: "shardswarm::api", error = %e, "detokenizing failed");
            (Some(Event::Failed(e)), 0)
        }
    };
    if let Some(event) = early {
        let _ = out.send(event).await;
    }
    // The token channel is closed: let the backend wind down its sessions.
    if generated.is_none() {
        match timeout_at(deadline, generation).await {
            Ok(Ok(g)) => {
                debug!(target: "shardswarm::api", sent = g.completion_tokens, read = tokens, "backend stopped")
            }
            Ok(Err(e)) => {
                debug!(target: "shardswarm::api", error = %e, "backend ended with an error after cancel")
            }
            Err(_) => warn!(target: "shardswarm::api", "backend did not stop before the timeout"),
        }
    }
}

/// Reads token ids until the channel closes, a stop string matches or the response is gone.
async fn consume(
    tokenizer: &GgufTokenizer,
    mut tokens: mpsc::Receiver<u32>,
    stops: Vec<String>,
    out: &mpsc::Sender<Event>,
) -> Consumed {
    let mut text = tokenizer.stream();
    let mut matcher = StopMatcher::new(stops);
    let mut count = 0;
    let detok = |e: shardswarm_model::TokenizerError| {
        Consumed::Failed(OpenAiError::Internal(format!("detokenizing: {e}")))
    };
    loop {
        let id = tokio::select! {
            biased;
            () = out.closed() => return Consumed::ClientGone(count),
            id = tokens.recv() => id,
        };
        let Some(id) = id else { break };
        count += 1;
        let piece = match text.push(id) {
            Ok(p) => p,
            Err(e) => return detok(e),
        };
        if piece.is_empty() {
            continue;
        }
        let (send, stopped) = match matcher.push(&piece) {
            Step::Emit(t) => (t, false),
            Step::Stop(t) => (t, true),
        };
        if !send.is_empty() && out.send(Event::Text(send)).await.is_err() {
            return Consumed::ClientGone(count);
        }
        if stopped {
            return Consumed::Stopped(count);
        }
    }
    // The generation is over: flush what the detokenizer and the matcher held back.
    let rest = match text.finish() {
        Ok(r) => r,
        Err(e) => return detok(e),
    };
    let (mut send, stopped) = match matcher.push(&rest) {
        Step::Emit(t) => (t, false),
        Step::Stop(t) => (t, true),
    };
    if !stopped {
        send.push_str(&matcher.finish());
    }
    if !send.is_empty() && out.send(Event::Text(send)).await.is_err() {
        return Consumed::ClientGone(count);
    }
    if stopped {
        Consumed::Stopped(count)
    } else {
        Consumed::Ended(count)
    }
}
