//! The OpenAI-compatible routes through `openai_router().oneshot(...)` (and one real socket)
//! against a mock backend whose model card comes from a tiny synthetic GGUF.

mod openai_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use openai_support::{Fixture, Mock, Script, WAIT, call, parse, post, post_sse};
use serde_json::{Value, json};
use shardswarm_gateway::backend::{BackendError, Finish, ModelCard};
use shardswarm_gateway::openai::ApiOptions;
use shardswarm_model::ChatMessage;
use tokio::sync::Barrier;

#[tokio::test]
async fn models_lists_the_card_name_and_is_503_without_a_model() -> Result<()> {
    let fx = Fixture::new()?;
    let (_, app) = fx.app(Script::Hang);
    let (status, text) = call(&app, Request::get("/v1/models").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_str(&text)?;
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "synth-tiny");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "shardswarm");
    assert!(
        v["data"][0]["created"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000)
    );

    let mut mock = Mock::new(fx.card.clone(), Script::Hang);
    mock.model_error = Some(BackendError::NotReady { missing: vec![0] });
    let (_, app) = fx.app_with(mock, ApiOptions::default());
    let (status, text) = call(&app, Request::get("/v1/models").body(Body::empty())?).await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("shard 0 is not loaded"), "{text}");
    Ok(())
}

#[tokio::test]
async fn completion_is_the_decoded_ids_with_usage_and_a_raw_prompt() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("Hi there, wörld!")?;
    let (mock, app) = fx.app(Script::Emit(ids.clone(), Finish::Eos));
    let prompt = "<|im_start|>the cat";
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"model": "whatever", "prompt": prompt}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "synth-tiny");
    assert_eq!(v["choices"][0]["text"], fx.decode(&ids)?);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    let prompt_ids = fx.card.tokenizer.encode(prompt)?;
    assert_eq!(prompt_ids[0], 1, "special tokens in the prompt are parsed");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": prompt_ids.len(), "completion_tokens": ids.len(),
            "total_tokens": prompt_ids.len() + ids.len()})
    );
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].prompt, prompt_ids);
    assert_eq!(seen[0].stop_ids, fx.card.tokenizer.stop_ids());
    assert_eq!(
        seen[0].max_tokens,
        512 - prompt_ids.len(),
        "default: rest of the context"
    );
    assert_eq!((seen[0].temperature, seen[0].top_p), (1.0, 1.0));
    Ok(())
}

#[tokio::test]
async fn parameters_reach_the_backend_and_max_tokens_ends_with_length() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("abcdefgh")?;
    let opts = ApiOptions {
        default_max_tokens: 10,
        ..ApiOptions::default()
    };
    let (mock, app) = fx.app_with(
        Mock::new(fx.card.clone(), Script::Emit(ids.clone(), Finish::Eos)),
        opts,
    );
    let body = json!({"prompt": ["hello"], "temperature": 0, "top_p": 0.5, "seed": 42,
        "max_tokens": 3, "n": 1, "logit_bias": {"1": 5}});
    let (status, v) = post(&app, "/v1/completions", body).await?;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], fx.decode(&ids[..3])?);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let (status, _) = post(&app, "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "max_completion_tokens": 4})).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&app, "/v1/completions", json!({"prompt": "x"})).await?;
    assert_eq!(status, StatusCode::OK);
    let seen = mock.seen();
    assert_eq!(seen[0].prompt, fx.card.tokenizer.encode("hello")?);
    assert_eq!(
        (seen[0].temperature, seen[0].top_p, seen[0].seed),
        (0.0, 0.5, 42)
    );
    assert_eq!(seen[0].max_tokens, 3);
    assert_eq!(seen[1].max_tokens, 4, "max_completion_tokens wins");
    assert_eq!(seen[2].max_tokens, 10, "default capped by ApiOptions");
    Ok(())
}

#[tokio::test]
async fn chat_renders_the_template_and_answers_with_a_message() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("Fine, thanks.")?;
    let (mock, app) = fx.app(Script::Emit(ids.clone(), Finish::Eos));
    let body = json!({"model": "synth-tiny", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "How are"}, {"type": "text", "text": "you?"}]},
    ]});
    let (status, v) = post(&app, "/v1/chat/completions", body).await?;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": fx.decode(&ids)?})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let rendered = fx.card.chat_template.as_ref().context("template")?.render(
        &[
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "How are\nyou?"),
        ],
        true,
    )?;
    assert!(rendered.ends_with("<|im_start|>assistant\n"));
    let prompt = fx.card.tokenizer.encode(&rendered)?;
    assert_eq!(mock.seen()[0].prompt, prompt);
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    Ok(())
}

#[tokio::test]
async fn chat_stream_sends_role_deltas_finish_usage_then_done() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("Streamed answer")?;
    let (_, app) = fx.app(Script::Emit(ids.clone(), Finish::Eos));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true,
        "stream_options": {"include_usage": true}});
    let (status, events) = post_sse(&app, "/v1/chat/completions", body).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events[..events.len() - 1])?;
    ensure!(chunks.len() >= 4, "{events:?}");
    let id = &chunks[0]["id"];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(&c["id"], id);
        assert_eq!(c["model"], "synth-tiny");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage, rest) = chunks.split_last().context("usage chunk")?;
    let (finish, deltas) = rest.split_last().context("finish chunk")?;
    let text: String = deltas[1..]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("<none>")
        })
        .collect();
    assert_eq!(text, fx.decode(&ids)?);
    assert!(
        deltas[1..]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], ids.len());
    Ok(())
}

#[tokio::test]
async fn completion_stream_never_splits_multibyte_characters() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("héllo 日本語 ✓")?;
    ensure!(
        ids.len() > "héllo 日本語 ✓".chars().count(),
        "chars span several tokens"
    );
    let (_, app) = fx.app(Script::Emit(ids.clone(), Finish::Length));
    let (status, events) = post_sse(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "stream": true}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events[..events.len() - 1])?;
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c.get("usage").is_none(), "no usage unless asked");
        let piece = c["choices"][0]["text"].as_str().context("text")?;
        assert!(!piece.contains('\u{FFFD}'), "split character in {piece:?}");
        text.push_str(piece);
    }
    assert_eq!(text, "héllo 日本語 ✓");
    let last = chunks.last().context("chunks")?;
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    Ok(())
}

#[tokio::test]
async fn stop_string_across_tokens_truncates_and_closes_the_channel() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("Hello world. Bye")?;
    let filler = fx.ids("z")?[0];
    let (mock, app) = fx.app(Script::EmitForever(ids, filler));
    let (status, v) = post(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "stop": ["nope", "orld"]}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["choices"][0]["text"], "Hello w");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    tokio::time::timeout(WAIT, mock.closed.notified()).await?;
    Ok(())
}

#[tokio::test]
async fn stop_string_in_a_stream_never_leaks_its_prefix() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("one, two, three")?;
    let filler = fx.ids("z")?[0];
    let (mock, app) = fx.app(Script::EmitForever(ids, filler));
    let body =
        json!({"messages": [{"role": "user", "content": "count"}], "stream": true, "stop": ", th"});
    let (status, events) = post_sse(&app, "/v1/chat/completions", body).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events[..events.len() - 1])?;
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(pieces.concat(), "one, two");
    let finish = chunks.last().context("finish")?;
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    tokio::time::timeout(WAIT, mock.closed.notified()).await?;
    Ok(())
}

#[tokio::test]
async fn bad_requests_get_openai_400s_and_never_reach_the_backend() -> Result<()> {
    let fx = Fixture::new()?;
    let (mock, app) = fx.app(Script::Emit(vec![], Finish::Eos));
    let chat = |extra: Value| {
        let mut b = json!({"messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        b
    };
    let cases: Vec<(&str, Value, Option<&str>, &str)> = vec![
        (
            "/v1/chat/completions",
            chat(json!({"temperature": 3})),
            Some("temperature"),
            "between 0 and 2",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"top_p": 0})),
            Some("top_p"),
            "top_p",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"n": 2})),
            Some("n"),
            "n must be 1",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 0})),
            Some("max_tokens"),
            "at least 1",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            Some("stop"),
            "at most 4",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"temperature": "hot"})),
            None,
            "invalid JSON body",
        ),
        (
            "/v1/chat/completions",
            chat(json!({"max_tokens": 600})),
            Some("messages"),
            "maximum context length is 512 tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            Some("messages"),
            "must not be empty",
        ),
        (
            "/v1/chat/completions",
            json!({}),
            Some("messages"),
            "messages is required",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            Some("messages[0]"),
            "text",
        ),
        (
            "/v1/completions",
            json!({"prompt": ""}),
            Some("prompt"),
            "must not be empty",
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"]}),
            Some("prompt"),
            "exactly one string",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(600)}),
            Some("prompt"),
            "maximum context length is 512 tokens",
        ),
    ];
    for (path, body, param, needle) in cases {
        let (status, v) = post(&app, path, body.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let err = &v["error"];
        assert_eq!(err["type"], "invalid_request_error", "{v}");
        assert_eq!(err["param"].as_str(), param, "{body}: {v}");
        let message = err["message"].as_str().context("message")?;
        assert!(message.contains(needle), "{body}: {message}");
        assert!(err.get("code").is_some());
    }
    // Malformed JSON and a missing content type are 400s in the same shape.
    let raw = |ct: &str, body: &str| {
        Request::post("/v1/completions")
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_owned()))
    };
    for req in [
        raw("application/json", "{\"prompt\": ")?,
        raw("text/plain", "{\"prompt\": \"x\"}")?,
    ] {
        let (status, text) = call(&app, req).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let v: Value = serde_json::from_str(&text)?;
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    assert!(mock.seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn chat_without_a_template_is_a_400_saying_so() -> Result<()> {
    let fx = Fixture::new()?;
    let card = ModelCard {
        name: fx.card.name.clone(),
        model_id: fx.card.model_id.clone(),
        context_length: fx.card.context_length,
        tokenizer: fx.card.tokenizer.clone(),
        chat_template: None,
    };
    let (_, app) = fx.app_with(
        Mock::new(Arc::new(card), Script::Hang),
        ApiOptions::default(),
    );
    let (status, v) = post(
        &app,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no chat template")),
        "{v}"
    );
    Ok(())
}

#[tokio::test]
async fn not_ready_is_a_503_naming_the_missing_shards() -> Result<()> {
    let fx = Fixture::new()?;
    let not_ready = BackendError::NotReady {
        missing: vec![1, 3],
    };
    let (_, app) = fx.app(Script::EmitThenFail(vec![], not_ready));
    for stream in [false, true] {
        let (status, v) = post(
            &app,
            "/v1/completions",
            json!({"prompt": "x", "stream": stream}),
        )
        .await?;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["error"]["type"], "service_unavailable");
        let message = v["error"]["message"].as_str().context("message")?;
        assert!(message.contains("shards 1, 3"), "{message}");
    }
    Ok(())
}

#[tokio::test]
async fn backend_failure_is_502_and_a_timeout_is_504() -> Result<()> {
    let fx = Fixture::new()?;
    let (_, app) = fx.app(Script::EmitThenFail(
        vec![],
        BackendError::Failed("stage 2 gone".into()),
    ));
    let (status, v) = post(&app, "/v1/completions", json!({"prompt": "x"})).await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stage 2 gone"))
    );

    let opts = ApiOptions {
        request_timeout: Duration::from_millis(100),
        ..ApiOptions::default()
    };
    let (_, app) = fx.app_with(Mock::new(fx.card.clone(), Script::Hang), opts);
    let (status, v) = post(&app, "/v1/completions", json!({"prompt": "x"})).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    Ok(())
}

#[tokio::test]
async fn an_error_after_the_stream_started_is_an_error_event() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("partial")?;
    let (_, app) = fx.app(Script::EmitThenFail(
        ids,
        BackendError::Failed("stage lost".into()),
    ));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
    let (status, events) = post_sse(&app, "/v1/chat/completions", body).await?;
    assert_eq!(status, StatusCode::OK);
    let chunks = parse(&events)?;
    let last = chunks.last().context("events")?;
    assert_eq!(last["error"]["type"], "server_error", "{events:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stage lost"))
    );
    let text: String = chunks[..chunks.len() - 1]
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "partial");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_run_at_the_same_time() -> Result<()> {
    let fx = Fixture::new()?;
    let ids = fx.ids("ok")?;
    let mut mock = Mock::new(fx.card.clone(), Script::Emit(ids, Finish::Eos));
    // Each generation waits for the other: a global lock would deadlock here.
    mock.barrier = Some(Barrier::new(2));
    let (_, app) = fx.app_with(mock, ApiOptions::default());
    let a = post(&app, "/v1/completions", json!({"prompt": "a"}));
    let b = post_sse(
        &app,
        "/v1/completions",
        json!({"prompt": "b", "stream": true}),
    );
    let (a, b) = tokio::join!(a, b);
    let ((status_a, a), (status_b, b)) = (a?, b?);
    assert_eq!((status_a, status_b), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a["choices"][0]["text"], "ok");
    assert_eq!(b.last().map(String::as_str), Some("[DONE]"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_closes_the_token_channel() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fx = Fixture::new()?;
    let ids = fx.ids("tick ")?;
    let (mock, app) = fx.app(Script::EmitForever(ids.clone(), ids[0]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let body = json!({"prompt": "x", "stream": true, "max_tokens": 100}).to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = tokio::time::timeout(WAIT, socket.read(&mut buf)).await??;
        ensure!(
            n > 0,
            "server closed early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(socket);
    tokio::time::timeout(WAIT, mock.closed.notified())
        .await
        .context("the backend never saw the channel close")?;
    server.abort();
    Ok(())
}
