//! Request bodies of `/v1/completions` and `/v1/chat/completions`, validated in one step into a
//! [`Plan`]: the prompt text, the token-level [`GenerateRequest`] and how to answer.
//!
//! Polymorphic fields (`prompt`, `stop`, message `content`) are read as JSON values and checked
//! by hand, so a wrong shape gets a message naming the field instead of serde's
//! "did not match any variant". Unknown fields are ignored.

use serde::Deserialize;
use serde_json::{Number, Value};
use shardswarm_model::ChatMessage;

use super::ApiOptions;
use super::error::OpenAiError;
use crate::backend::{GenerateRequest, ModelCard};

/// Most stop strings in one request (OpenAI's limit).
pub(crate) const MAX_STOPS: usize = 4;

/// The body of either route; each route reads the fields it knows. `model` is not read: the
/// swarm serves one model, so any value is accepted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RequestBody {
    /// `/v1/completions`: a string, or an array of exactly one string.
    #[serde(default)]
    pub(crate) prompt: Option<Value>,
    /// `/v1/chat/completions`: `[{role, content}]`.
    #[serde(default)]
    pub(crate) messages: Option<Value>,
    #[serde(default)]
    pub(crate) max_tokens: Option<i64>,
    /// Chat only; wins over `max_tokens`.
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub(crate) temperature: Option<f64>,
    #[serde(default)]
    pub(crate) top_p: Option<f64>,
    #[serde(default)]
    pub(crate) seed: Option<Number>,
    #[serde(default)]
    pub(crate) stop: Option<Value>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub(crate) n: Option<i64>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

/// Which route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// The sampling and answer settings, checked before the model is consulted.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) max_tokens: Option<usize>,
    pub(crate) temperature: f32,
    pub(crate) top_p: f32,
    pub(crate) seed: u64,
    pub(crate) stops: Vec<String>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// What the backend runs.
    pub(crate) generate: GenerateRequest,
    /// Stop strings (at most [`MAX_STOPS`], none empty).
    pub(crate) stops: Vec<String>,
    /// Answer with server-sent events.
    pub(crate) stream: bool,
    /// Streaming: send a usage chunk before `[DONE]`.
    pub(crate) include_usage: bool,
}

impl RequestBody {
    /// Checks the fields that do not need the model.
    pub(crate) fn settings(&self, route: Route) -> Result<Settings, OpenAiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(OpenAiError::invalid_value(
                format!("n must be 1 (got {n}): one choice per request is supported"),
                "n",
            ));
        }
        let (max_tokens, param) = match (route, self.max_completion_tokens) {
            (Route::Chat, Some(m)) => (Some(m), "max_completion_tokens"),
            _ => (self.max_tokens, "max_tokens"),
        };
        let max_tokens = match max_tokens {
            None => None,
            Some(m) if m >= 1 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            Some(m) => {
                return Err(OpenAiError::invalid_value(
                    format!("{param} must be at least 1 (got {m})"),
                    param,
                ));
            }
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(OpenAiError::invalid_value(
                format!("temperature must be between 0 and 2 (got {temperature})"),
                "temperature",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(OpenAiError::invalid_value(
                format!("top_p must be in (0, 1] (got {top_p})"),
                "top_p",
            ));
        }
        let seed = match &self.seed {
            None => rand::random(),
            Some(n) => match (n.as_u64(), n.as_i64()) {
                (Some(s), _) => s,
                // A negative seed keeps its bits: distinct seeds stay distinct.
                (None, Some(s)) => s as u64,
                _ => {
                    return Err(OpenAiError::invalid_value(
                        format!("seed must be an integer (got {n})"),
                        "seed",
                    ));
                }
            },
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream
            && self
                .stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        Ok(Settings {
            max_tokens,
            temperature: temperature as f32,
            top_p: top_p as f32,
            seed,
            stops: parse_stops(self.stop.as_ref())?,
            stream,
            include_usage,
        })
    }

    /// The prompt of `/v1/completions`, used raw.
    pub(crate) fn completion_prompt(&self) -> Result<String, OpenAiError> {
        let one = |v: &Value| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(OpenAiError::invalid(
                "prompt must be a string or an array of one string (token-id prompts are not supported)",
                Some("prompt"),
            )),
        };
        let text = match &self.prompt {
            None | Some(Value::Null) => {
                return Err(OpenAiError::invalid("prompt is required", Some("prompt")));
            }
            Some(Value::Array(items)) if items.len() == 1 => one(&items[0])?,
            Some(Value::Array(items)) => {
                return Err(OpenAiError::invalid(
                    format!(
                        "prompt arrays must hold exactly one string (got {}): batched prompts are not supported",
                        items.len()
                    ),
                    Some("prompt"),
                ));
            }
            Some(v) => one(v)?,
        };
        if text.is_empty() {
            return Err(OpenAiError::invalid(
                "prompt must not be empty",
                Some("prompt"),
            ));
        }
        Ok(text)
    }

    /// The chat messages, rendered with the model's chat template.
    pub(crate) fn chat_prompt(&self, card: &ModelCard) -> Result<String, OpenAiError> {
        let messages = parse_messages(self.messages.as_ref())?;
        let Some(template) = &card.chat_template else {
            return Err(OpenAiError::invalid(
                format!(
                    "the model {} has no chat template: use /v1/completions with a raw prompt",
                    card.name
                ),
                Some("messages"),
            ));
        };
        template
            .render(&messages, true)
            .map_err(|e| OpenAiError::invalid(e.to_string(), Some("messages")))
    }
}

fn parse_stops(stop: Option<&Value>) -> Result<Vec<String>, OpenAiError> {
    let bad = || {
        OpenAiError::invalid(
            format!("stop must be a string or an array of at most {MAX_STOPS} strings"),
            Some("stop"),
        )
    };
    let stops = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.len() <= MAX_STOPS => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Reads `[{role, content}]`; `content` is a string, `null`, or an array of
/// `{"type": "text", "text"}` parts (joined with `\n`).
fn parse_messages(messages: Option<&Value>) -> Result<Vec<ChatMessage>, OpenAiError> {
    let bad = |i: usize, what: &str| OpenAiError::InvalidRequest {
        message: format!("messages[{i}]: {what}"),
        param: Some(format!("messages[{i}]")),
        code: None,
    };
    let items = match messages {
        None | Some(Value::Null) => {
            return Err(OpenAiError::invalid(
                "messages is required",
                Some("messages"),
            ));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(OpenAiError::invalid(
                "messages must be an array of {role, content} objects",
                Some("messages"),
            ));
        }
    };
    if items.is_empty() {
        return Err(OpenAiError::invalid(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let role = match item.get("role") {
            Some(Value::String(r)) if !r.is_empty() => r.clone(),
            _ => return Err(bad(i, "role must be a non-empty string")),
        };
        let content = match item.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                        _ => {
                            return Err(bad(
                                i,
                                "only {\"type\": \"text\", \"text\": …} content parts are supported",
                            ));
                        }
                    }
                }
                texts.join("\n")
            }
            Some(_) => return Err(bad(i, "content must be a string or an array of text parts")),
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

/// Tokenizes the prompt and fits the completion into the context.
///
/// Without `max_tokens` the completion may use the rest of the context, capped at
/// [`ApiOptions::default_max_tokens`].
pub(crate) fn plan(
    card: &ModelCard,
    route: Route,
    prompt: &str,
    settings: Settings,
    opts: &ApiOptions,
) -> Result<Plan, OpenAiError> {
    let ids = card
        .tokenizer
        .encode(prompt)
        .map_err(|e| OpenAiError::Internal(format!("tokenizing the prompt: {e}")))?;
    let param = match route {
        Route::Completions => "prompt",
        Route::Chat => "messages",
    };
    if ids.is_empty() {
        return Err(OpenAiError::invalid(
            format!("the {param} encodes to no tokens"),
            Some(param),
        ));
    }
    let context = card.context_length;
    let room = context.saturating_sub(ids.len());
    let max_tokens = settings
        .max_tokens
        .unwrap_or_else(|| room.min(opts.default_max_tokens));
    if max_tokens == 0 || max_tokens > room {
        let message = if room == 0 {
            format!(
                "This model's maximum context length is {context} tokens, and the {param} alone has {} tokens: no room is left for a completion.",
                ids.len()
            )
        } else {
            format!(
                "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the {param}, {max_tokens} for the completion). Please reduce the length of the {param} or of the completion.",
                ids.len().saturating_add(max_tokens),
                ids.len()
            )
        };
        return Err(OpenAiError::InvalidRequest {
            message,
            param: Some(param.to_owned()),
            code: Some("context_length_exceeded"),
        });
    }
    Ok(Plan {
        generate: GenerateRequest {
            prompt: ids,
            max_tokens,
            temperature: settings.temperature,
            top_p: settings.top_p,
            seed: settings.seed,
            stop_ids: card.tokenizer.stop_ids().to_vec(),
        },
        stops: settings.stops,
        stream: settings.stream,
        include_usage: settings.include_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> RequestBody {
        serde_json::from_value(v).expect("valid body")
    }

    #[test]
    fn defaults_are_openai_defaults() {
        let s = body(json!({"prompt": "x", "seed": 7}))
            .settings(Route::Completions)
            .expect("valid");
        assert_eq!(
            s,
            Settings {
                max_tokens: None,
                temperature: 1.0,
                top_p: 1.0,
                seed: 7,
                stops: vec![],
                stream: false,
                include_usage: false,
            }
        );
    }

    #[test]
    fn max_completion_tokens_wins_in_chat_only() {
        let b = body(json!({"max_tokens": 5, "max_completion_tokens": 9}));
        assert_eq!(b.settings(Route::Chat).expect("ok").max_tokens, Some(9));
        assert_eq!(
            b.settings(Route::Completions).expect("ok").max_tokens,
            Some(5)
        );
    }

    #[test]
    fn out_of_range_values_name_their_param() {
        for (v, param) in [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"temperature": -0.1}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"n": 2}), "n"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"max_completion_tokens": -3}),
                "max_completion_tokens",
            ),
            (json!({"seed": 1.5}), "seed"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": [1]}), "stop"),
        ] {
            let err = body(v.clone()).settings(Route::Chat).expect_err("invalid");
            assert_eq!(err.param(), Some(param), "{v}");
        }
    }

    #[test]
    fn negative_seeds_and_usage_only_when_streaming() {
        let s = body(json!({"seed": -1, "stream_options": {"include_usage": true}}))
            .settings(Route::Chat)
            .expect("ok");
        assert_eq!(s.seed, u64::MAX);
        assert!(!s.include_usage);
    }

    #[test]
    fn prompt_shapes() {
        let p = |v: Value| body(json!({ "prompt": v })).completion_prompt();
        assert_eq!(p(json!("hi")), Ok("hi".to_owned()));
        assert_eq!(p(json!(["hi"])), Ok("hi".to_owned()));
        assert!(p(json!(["a", "b"])).is_err());
        assert!(p(json!([1, 2])).is_err());
        assert!(p(json!("")).is_err());
        assert!(body(json!({})).completion_prompt().is_err());
    }

    #[test]
    fn messages_accept_text_parts_and_reject_others() {
        let m = parse_messages(Some(&json!([
            {"role": "system", "content": null},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ])))
        .expect("valid");
        assert_eq!(
            m,
            [
                ChatMessage::new("system", ""),
                ChatMessage::new("user", "a\nb")
            ]
        );
        let err = parse_messages(Some(&json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ])))
        .expect_err("image");
        assert_eq!(err.param(), Some("messages[0]"));
        assert!(parse_messages(Some(&json!([]))).is_err());
        assert!(parse_messages(Some(&json!([{"content": "x"}]))).is_err());
    }
}
