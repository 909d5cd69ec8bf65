//! `shardswarm chat --http URL "prompt"`: one chat turn through a swarm's OpenAI-compatible API.
//!
//! `POST {URL}/v1/chat/completions` with `"stream": true`; the answer arrives as server-sent
//! events in OpenAI's chunk format and ends with `data: [DONE]`. Each content delta goes to
//! stdout as soon as it arrives (flushed), a newline ends the answer, and one stats line goes
//! to stderr. An HTTP error status, or an `{"error": …}` event after streaming started, ends the
//! command non-zero with the server's message.
//!
//! [`SseDecoder`] and [`parse_payload`] are the pure part (line in, event out); [`stream_chat`]
//! is the reusable client that `demo` calls too.
//!
//! The request asks for a usage chunk (`stream_options.include_usage`), whose
//! `completion_tokens` is the token count of the stats line; without one the content chunks are
//! counted. `model` is sent only with `--model` (the swarm serves one model and ignores it).

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

/// Time to open the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while the answer streams (prefill of a long prompt across a slow swarm).
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest accepted SSE line.
const MAX_LINE: u64 = 1 << 20;

/// Flags of `shardswarm chat`.
#[derive(Debug, Args)]
pub(crate) struct ChatArgs {
    /// Base URL of a server's or node's HTTP API, e.g. http://127.0.0.1:7448.
    #[arg(long)]
    http: String,
    /// Bearer token for the HTTP API (the peer's `--api-key`).
    #[arg(long, env = "SHARDSWARM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Most tokens to generate (default: the server's).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy (default: the server's).
    #[arg(long)]
    temperature: Option<f32>,
    /// RNG seed (default: the server's choice).
    #[arg(long)]
    seed: Option<u64>,
    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// The model id to ask for (not sent by default: a swarm serves one model).
    #[arg(long)]
    model: Option<String>,
    /// The user message.
    prompt: String,
}

/// One chat turn to send.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChatRequest {
    /// Base URL of the HTTP API (`http://` is added when no scheme is given).
    pub(crate) base: String,
    /// Bearer token.
    pub(crate) api_key: Option<String>,
    /// Model id; `None`: not sent.
    pub(crate) model: Option<String>,
    /// System message.
    pub(crate) system: Option<String>,
    /// User message.
    pub(crate) prompt: String,
    /// `max_tokens`.
    pub(crate) max_tokens: Option<u32>,
    /// `temperature`.
    pub(crate) temperature: Option<f32>,
    /// `seed`.
    pub(crate) seed: Option<u64>,
}

/// What came back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ChatOutcome {
    /// The whole answer.
    pub(crate) text: String,
    /// Completion tokens: the server's `usage` when it sent one, else the content chunks.
    pub(crate) tokens: u64,
    /// From sending the request to `[DONE]`.
    pub(crate) elapsed: Duration,
    /// From sending the request to the first content.
    pub(crate) first_token: Option<Duration>,
    /// The last `finish_reason` seen (`stop`, `length`, …).
    pub(crate) finish_reason: Option<String>,
}

impl ChatOutcome {
    /// Tokens per second over the whole request.
    pub(crate) fn tokens_per_sec(&self) -> f64 {
        rate(self.tokens, self.elapsed)
    }

    /// `chat: N tokens in S s (R tok/s); first token after F s, then D tok/s`.
    pub(crate) fn stats_line(&self) -> String {
        let mut line = format!(
            "chat: {} tokens in {:.2} s ({:.1} tok/s)",
            self.tokens,
            self.elapsed.as_secs_f64(),
            self.tokens_per_sec()
        );
        if let Some(first) = self.first_token {
            let rest = self.elapsed.saturating_sub(first);
            line.push_str(&format!(
                "; first token after {:.2} s, then {:.1} tok/s",
                first.as_secs_f64(),
                rate(self.tokens.saturating_sub(1), rest)
            ));
        }
        if let Some(reason) = &self.finish_reason {
            line.push_str(&format!("; finish: {reason}"));
        }
        line
    }
}

fn rate(tokens: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        tokens as f64 / d.as_secs_f64()
    }
}

/// Runs `shardswarm chat`.
pub(crate) fn run(args: ChatArgs) -> Result<()> {
    let req = ChatRequest {
        base: args.http,
        api_key: args.api_key,
        model: args.model,
        system: args.system,
        prompt: args.prompt,
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        seed: args.seed,
    };
    let outcome = stream_to_stdout(&req)?;
    eprintln!("{}", outcome.stats_line());
    Ok(())
}

/// [`stream_chat`] with every delta written to stdout at once and a newline at the end.
pub(crate) fn stream_to_stdout(req: &ChatRequest) -> Result<ChatOutcome> {
    let stdout = std::io::stdout();
    let mut wrote = false;
    let result = stream_chat(req, |delta| {
        let mut out = stdout.lock();
        out.write_all(delta.as_bytes())?;
        wrote = true;
        out.flush()
    });
    // End the answer's line, also when the stream broke off, so an error starts on its own.
    if wrote || result.is_ok() {
        let mut out = stdout.lock();
        writeln!(out)
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
    }
    result
}

/// `http://` in front when `base` has no scheme; no trailing slash.
pub(crate) fn base_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(READ_TIMEOUT)
        .timeout_write(CONNECT_TIMEOUT)
        .build()
}

fn authorize(req: ureq::Request, api_key: Option<&str>) -> ureq::Request {
    match api_key {
        Some(key) => req.set("Authorization", &format!("Bearer {key}")),
        None => req,
    }
}

/// The JSON body of the request.
fn request_body(req: &ChatRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": req.prompt}));
    let mut body = json!({
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(m) = &req.model {
        body["model"] = json!(m);
    }
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(s) = req.seed {
        body["seed"] = json!(s);
    }
    body
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}` or
/// `{"error": "…"}`), else the body itself (trimmed, shortened).
fn error_message(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let e = &v["error"];
        if let Some(m) = e["message"].as_str().or_else(|| e.as_str()) {
            return m.to_owned();
        }
    }
    let body = body.trim();
    if body.is_empty() {
        "(empty body)".to_owned()
    } else {
        body.chars().take(500).collect()
    }
}

/// Sends one streaming chat request; `on_delta` gets each piece of content as it arrives.
/// Returns the whole text and its timing; fails on an HTTP error status, an error event, a
/// malformed stream, or an error of `on_delta`.
pub(crate) fn stream_chat(
    req: &ChatRequest,
    mut on_delta: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<ChatOutcome> {
    let base = base_url(&req.base);
    let agent = agent();
    let api_key = req.api_key.as_deref();
    let url = format!("{base}/v1/chat/completions");
    let body = request_body(req).to_string();
    let start = Instant::now();
    let resp = authorize(agent.post(&url), api_key)
        .set("Content-Type", "application/json")
        .set("Accept", "text/event-stream")
        .send_string(&body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let reason = r.status_text().to_owned();
            let text = r.into_string().unwrap_or_default();
            bail!(
                "POST {url} answered {code} {reason}: {}",
                error_message(&text)
            );
        }
        Err(e) => return Err(e).with_context(|| format!("POST {url}")),
    };
    let mut reader = BufReader::new(resp.into_reader());
    let mut decoder = SseDecoder::default();
    let mut answer = Answer::new(start);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading the answer of {url}"))?;
        if n as u64 == MAX_LINE && buf.last() != Some(&b'\n') {
            bail!("{url} sent an event line longer than {MAX_LINE} bytes");
        }
        let event = if n == 0 {
            decoder.finish()
        } else {
            decoder.push_line(&String::from_utf8_lossy(&buf))
        };
        if let Some(event) = event {
            let payload = if event.event.as_deref() == Some("error") {
                Payload::Error(error_message(&event.data))
            } else {
                parse_payload(&event.data).map_err(|e| anyhow::anyhow!("{url}: {e}"))?
            };
            if answer.apply(payload, &mut on_delta)? {
                break;
            }
        }
        if n == 0 {
            if answer.outcome.finish_reason.is_none() {
                bail!("the answer from {url} broke off before `data: [DONE]`");
            }
            break;
        }
    }
    Ok(answer.finish())
}

/// The answer being received.
struct Answer {
    start: Instant,
    outcome: ChatOutcome,
    chunks: u64,
    usage: Option<u64>,
}

impl Answer {
    fn new(start: Instant) -> Self {
        Answer {
            start,
            outcome: ChatOutcome {
                text: String::new(),
                tokens: 0,
                elapsed: Duration::ZERO,
                first_token: None,
                finish_reason: None,
            },
            chunks: 0,
            usage: None,
        }
    }

    /// Takes one payload in; true once the stream is over.
    fn apply(
        &mut self,
        payload: Payload,
        on_delta: &mut impl FnMut(&str) -> std::io::Result<()>,
    ) -> Result<bool> {
        match payload {
            Payload::Done => return Ok(true),
            Payload::Error(msg) => bail!("the server reported an error mid-answer: {msg}"),
            Payload::Chunk {
                content,
                finish_reason,
                completion_tokens,
            } => {
                if !content.is_empty() {
                    if self.outcome.first_token.is_none() {
                        self.outcome.first_token = Some(self.start.elapsed());
                    }
                    self.chunks += 1;
                    on_delta(&content).context("cannot write the answer")?;
                    self.outcome.text.push_str(&content);
                }
                if finish_reason.is_some() {
                    self.outcome.finish_reason = finish_reason;
                }
                if completion_tokens.is_some() {
                    self.usage = completion_tokens;
                }
            }
        }
        Ok(false)
    }

    fn finish(mut self) -> ChatOutcome {
        self.outcome.elapsed = self.start.elapsed();
        self.outcome.tokens = self.usage.unwrap_or(self.chunks);
        self.outcome
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// The server-sent-events line protocol (WHATWG): `data:` lines accumulate until a blank line
/// dispatches the event; lines starting with `:` are comments (keep-alives); `event:` names the
/// event; `id:`, `retry:` and unknown fields are ignored. Pure: feed it lines, get events.
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    data: Vec<String>,
    event: Option<String>,
}

impl SseDecoder {
    /// Feeds one line (with or without its `\n` / `\r\n`); returns an event when the line ends
    /// one.
    pub(crate) fn push_line(&mut self, line: &str) -> Option<SseEvent> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    /// The end of the stream: an event whose blank line never came is delivered anyway.
    pub(crate) fn finish(&mut self) -> Option<SseEvent> {
        self.dispatch()
    }

    /// The event so far, if it has data (an event without data lines is dropped, as the
    /// standard says); the buffers are reset either way.
    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.data).join("\n");
        Some(SseEvent { event, data })
    }
}

/// What one `data` payload of a chat stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// `[DONE]`: the answer is complete.
    Done,
    /// A `chat.completion.chunk`.
    Chunk {
        /// The content delta of the first choice (empty for role-only or final chunks).
        content: String,
        /// The first choice's `finish_reason`, once it is set.
        finish_reason: Option<String>,
        /// `usage.completion_tokens`, when the chunk carries usage.
        completion_tokens: Option<u64>,
    },
    /// `{"error": {"message": …}}`: the server gave up after streaming started.
    Error(String),
}

/// Interprets one event's data. Fails (with a short reason) on anything that is neither
/// `[DONE]`, an error object nor a chunk with `choices`.
pub(crate) fn parse_payload(data: &str) -> Result<Payload, String> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Payload::Done);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| {
        let head: String = data.chars().take(200).collect();
        format!("malformed event data ({e}): {head}")
    })?;
    if !v["error"].is_null() {
        return Ok(Payload::Error(error_message(data)));
    }
    let completion_tokens = v["usage"]["completion_tokens"].as_u64();
    let choices = match &v["choices"] {
        Value::Array(c) => c,
        // A usage-only chunk may come without `choices`.
        Value::Null if completion_tokens.is_some() => &Vec::new(),
        _ => return Err(format!("event without `choices`: {data}")),
    };
    let first = choices.first();
    let content = first
        .and_then(|c| c["delta"]["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let finish_reason = first
        .and_then(|c| c["finish_reason"].as_str())
        .map(str::to_owned);
    Ok(Payload::Chunk {
        content,
        finish_reason,
        completion_tokens,
    })
}

#[cfg(test)]
mod tests;
