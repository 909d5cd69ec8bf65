//! Tests for `chat`: the SSE decoder, payloads, error bodies, and whole requests against a
//! one-shot loopback HTTP server.

use super::*;

fn events(text: &str) -> Vec<SseEvent> {
    let mut d = SseDecoder::default();
    let mut out: Vec<SseEvent> = text
        .split_inclusive('\n')
        .filter_map(|l| d.push_line(l))
        .collect();
    out.extend(d.finish());
    out
}

fn chunk(content: &str) -> Payload {
    Payload::Chunk {
        content: content.to_owned(),
        finish_reason: None,
        completion_tokens: None,
    }
}

#[test]
fn sse_multi_line_data_is_joined_with_newlines() {
    let ev = events("data: {\"a\":\ndata: 1}\n\n");
    assert_eq!(
        ev,
        vec![SseEvent {
            event: None,
            data: "{\"a\":\n1}".into()
        }]
    );
}

#[test]
fn sse_comments_and_crlf_are_keepalives_not_events() {
    let ev = events(": keep-alive\r\n\r\n:\n\ndata: x\r\n\r\n");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].data, "x");
}

#[test]
fn sse_field_without_space_and_event_names_and_ignored_fields() {
    let ev = events("id: 7\nretry: 10\nevent: error\ndata:{\"x\":1}\n\ndata: y\n\n");
    assert_eq!(ev[0].event.as_deref(), Some("error"));
    assert_eq!(ev[0].data, "{\"x\":1}");
    assert_eq!(
        ev[1].event, None,
        "event names do not leak into the next event"
    );
}

#[test]
fn sse_event_without_trailing_blank_line_is_delivered_at_the_end() {
    let ev = events("data: a\n\ndata: [DONE]");
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1].data, "[DONE]");
}

#[test]
fn payload_done_chunks_usage_and_errors() {
    assert_eq!(parse_payload("[DONE]"), Ok(Payload::Done));
    assert_eq!(
        parse_payload(
            r#"{"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#
        ),
        Ok(chunk("Hi"))
    );
    assert_eq!(
        parse_payload(r#"{"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#),
        Ok(chunk(""))
    );
    assert_eq!(
        parse_payload(
            r#"{"choices":[{"delta":{},"finish_reason":"length"}],"usage":{"completion_tokens":12}}"#
        ),
        Ok(Payload::Chunk {
            content: String::new(),
            finish_reason: Some("length".into()),
            completion_tokens: Some(12)
        })
    );
    assert_eq!(
        parse_payload(r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#),
        Ok(Payload::Chunk {
            content: String::new(),
            finish_reason: None,
            completion_tokens: Some(5)
        })
    );
    assert_eq!(
        parse_payload(r#"{"error":{"message":"stage 3 is gone","type":"server_error"}}"#),
        Ok(Payload::Error("stage 3 is gone".into()))
    );
    assert!(parse_payload("{not json").is_err());
    assert!(parse_payload(r#"{"object":"something"}"#).is_err());
}

#[test]
fn a_whole_stream_decodes_to_text_done() {
    let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
                  : ping\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
                  data: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n\
                  data: [DONE]\n\n";
    let payloads: Vec<Payload> = events(stream)
        .iter()
        .map(|e| parse_payload(&e.data))
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    let text: String = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Chunk { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Hello");
    assert_eq!(payloads.last(), Some(&Payload::Done));
}

#[test]
fn error_bodies_give_the_servers_message() {
    assert_eq!(
        error_message(
            r#"{"error":{"message":"the swarm is not ready: shards [3]","code":"NOT_READY"}}"#
        ),
        "the swarm is not ready: shards [3]"
    );
    assert_eq!(error_message(r#"{"error":"nope"}"#), "nope");
    assert_eq!(error_message(""), "(empty body)");
    assert_eq!(error_message("Not Found\n"), "Not Found");
}

#[test]
fn request_body_has_only_what_was_asked() {
    let req = ChatRequest {
        prompt: "hi".into(),
        system: Some("be brief".into()),
        max_tokens: Some(8),
        seed: Some(1),
        ..Default::default()
    };
    let mut with_model = req.clone();
    with_model.model = Some("m".into());
    let b = request_body(&with_model);
    assert_eq!(b["stream"], true);
    assert_eq!(b["stream_options"]["include_usage"], true);
    assert_eq!(b["model"], "m");
    assert_eq!(b["messages"][0]["role"], "system");
    assert_eq!(b["messages"][1]["content"], "hi");
    assert_eq!(b["max_tokens"], 8);
    assert!(b.get("temperature").is_none());
    assert!(request_body(&req).get("model").is_none());
}

/// A one-request HTTP server on 127.0.0.1:0 answering `head` then each of `parts`; before
/// every part after the first it waits (bounded) for a signal on `gate`. Returns the base
/// URL and a handle giving the request text.
fn fake_server(
    head: &'static str,
    parts: Vec<&'static str>,
    gate: Option<std::sync::mpsc::Receiver<()>>,
) -> (String, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(sock.try_clone().expect("clone"));
        let mut request = String::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("request line");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("length");
            }
            request.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).expect("body");
        request.push_str(&String::from_utf8_lossy(&body));
        let mut sock = sock;
        sock.write_all(head.as_bytes()).expect("head");
        for (i, part) in parts.iter().enumerate() {
            if i > 0
                && let Some(g) = &gate
            {
                let _ = g.recv_timeout(Duration::from_secs(10));
            }
            sock.write_all(part.as_bytes()).expect("part");
            sock.flush().expect("flush");
        }
        request
    });
    (base, handle)
}

const SSE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

#[test]
fn deltas_are_delivered_as_they_arrive_not_at_the_end() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let (base, server) = fake_server(
        SSE_HEAD,
        vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
            ": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n",
        ],
        Some(rx),
    );
    let req = ChatRequest {
        base,
        api_key: Some("sekrit".into()),
        model: Some("m".into()),
        prompt: "hi".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let outcome = stream_chat(&req, |d| {
        seen.push(d.to_owned());
        // The server holds the rest back until the first delta got here.
        let _ = tx.try_send(());
        Ok(())
    })
    .expect("chat");
    let request = server.join().expect("server thread");
    assert_eq!(seen, ["Hel", "lo"]);
    assert_eq!(outcome.text, "Hello");
    assert_eq!(outcome.tokens, 2);
    assert_eq!(outcome.finish_reason.as_deref(), Some("stop"));
    assert!(outcome.first_token.is_some());
    assert!(
        request.starts_with("POST /v1/chat/completions "),
        "{request}"
    );
    assert!(
        request.contains("Authorization: Bearer sekrit"),
        "{request}"
    );
    assert!(request.contains("\"stream\":true"), "{request}");
}

#[test]
fn an_http_error_status_fails_with_the_servers_message() {
    let (base, _server) = fake_server(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
        vec![r#"{"error":{"message":"the swarm is not ready: shards [3]","code":"x"}}"#],
        None,
    );
    let req = ChatRequest {
        base,
        model: Some("m".into()),
        prompt: "hi".into(),
        ..Default::default()
    };
    let err = stream_chat(&req, |_| Ok(())).expect_err("503 must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("503"), "{msg}");
    assert!(msg.contains("the swarm is not ready: shards [3]"), "{msg}");
}

#[test]
fn an_error_event_after_streaming_started_fails_the_chat() {
    let (base, _server) = fake_server(
        SSE_HEAD,
        vec![
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
             data: {\"error\":{\"message\":\"stage 2 left\"}}\n\n",
        ],
        None,
    );
    let req = ChatRequest {
        base,
        model: Some("m".into()),
        prompt: "hi".into(),
        ..Default::default()
    };
    let mut text = String::new();
    let err = stream_chat(&req, |d| {
        text.push_str(d);
        Ok(())
    })
    .expect_err("error event must fail");
    assert_eq!(text, "Hi");
    assert!(format!("{err:#}").contains("stage 2 left"), "{err:#}");
}

#[test]
fn a_stream_cut_before_done_is_an_error() {
    let (base, _server) = fake_server(
        SSE_HEAD,
        vec!["data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"],
        None,
    );
    let req = ChatRequest {
        base,
        model: Some("m".into()),
        prompt: "hi".into(),
        ..Default::default()
    };
    let err = stream_chat(&req, |_| Ok(())).expect_err("cut stream must fail");
    assert!(format!("{err:#}").contains("[DONE]"), "{err:#}");
}

#[test]
fn base_url_gets_a_scheme_and_loses_the_slash() {
    assert_eq!(base_url("127.0.0.1:7448/"), "http://127.0.0.1:7448");
    assert_eq!(base_url("https://x.example"), "https://x.example");
}
