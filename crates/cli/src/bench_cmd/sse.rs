//! A streamed `/v1/completions` request over a bare socket, timing each text chunk as its bytes
//! arrive: what `bench pipeline` measures decode speed with.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest streamed answer read.
const MAX_STREAM_BYTES: usize = 16 << 20;

/// What a streamed completion delivered.
#[derive(Debug, Default)]
pub(super) struct Streamed {
    /// Arrival of each non-empty text chunk, from the moment the request was sent.
    pub(super) chunk_times: Vec<Duration>,
    /// Arrival of `[DONE]`.
    pub(super) done: Duration,
    pub(super) text: String,
    /// From the usage chunk.
    pub(super) completion_tokens: Option<usize>,
    pub(super) finish: Option<String>,
}

impl Streamed {
    /// (chunks − 1) / (last − first), in chunks per second.
    pub(super) fn decode_rate(&self) -> Option<f64> {
        let (first, last) = (self.chunk_times.first()?, self.chunk_times.last()?);
        let secs = (*last - *first).as_secs_f64();
        (self.chunk_times.len() >= 2 && secs > 0.0)
            .then(|| (self.chunk_times.len() - 1) as f64 / secs)
    }
}

/// An HTTP/1.0 answer carrying server-sent events, fed as its bytes arrive.
#[derive(Debug, Default)]
struct SseReader {
    /// The status line, once the head is in.
    status: Option<String>,
    pending: Vec<u8>,
    out: Streamed,
}

impl SseReader {
    /// Takes the bytes that arrived `at`; true once `data: [DONE]` was seen. Fails on an error
    /// event or a malformed chunk; a non-200 answer is kept for [`Self::failure`].
    fn push(&mut self, bytes: &[u8], at: Duration) -> Result<bool> {
        self.pending.extend_from_slice(bytes);
        if self.status.is_none() {
            let Some(end) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(false);
            };
            let head = String::from_utf8_lossy(&self.pending[..end]).into_owned();
            self.pending.drain(..end + 4);
            self.status = Some(head.lines().next().unwrap_or("").to_owned());
        }
        if !self.ok() {
            return Ok(false);
        }
        while let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = String::from_utf8(line).context("non-UTF-8 event line")?;
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                self.out.done = at;
                return Ok(true);
            }
            let v: Value = serde_json::from_str(data).with_context(|| format!("event {data:?}"))?;
            if let Some(e) = v.get("error") {
                bail!("error event in the stream: {e}");
            }
            if let Some(t) = v["choices"][0]["text"].as_str()
                && !t.is_empty()
            {
                self.out.text.push_str(t);
                self.out.chunk_times.push(at);
            }
            if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                self.out.finish = Some(f.to_owned());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                self.out.completion_tokens = Some(n as usize);
            }
        }
        Ok(false)
    }

    fn ok(&self) -> bool {
        self.status.as_deref().is_some_and(|s| s.contains(" 200 "))
    }

    /// Why the answer ended before `[DONE]`.
    fn failure(&self) -> anyhow::Error {
        match &self.status {
            Some(s) if !self.ok() => anyhow::anyhow!(
                "POST /v1/completions: {s}: {}",
                String::from_utf8_lossy(&self.pending).trim()
            ),
            _ => anyhow::anyhow!(
                "the stream ended without [DONE]; text so far {:?}",
                self.out.text
            ),
        }
    }
}

/// `POST /v1/completions` with `stream: true` over HTTP/1.0 (so the answer ends when the
/// connection closes), timing each text chunk from the moment the request was written.
pub(super) async fn stream_completion(
    addr: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<Streamed> {
    let body = json!({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string();
    let request = format!(
        "POST /v1/completions HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true).context("TCP_NODELAY")?;
    s.write_all(request.as_bytes())
        .await
        .context("sending the request")?;
    let sent = Instant::now();
    let mut reader = SseReader::default();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).await.context("reading the stream")?;
        let at = sent.elapsed();
        if n == 0 {
            return Err(reader.failure());
        }
        total += n;
        ensure!(
            total <= MAX_STREAM_BYTES,
            "the answer is over {MAX_STREAM_BYTES} bytes"
        );
        if reader.push(&buf[..n], at)? {
            return Ok(reader.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sse_chunks_are_timed_as_they_arrive_across_split_reads() -> Result<()> {
        let mut r = SseReader::default();
        let head = "HTTP/1.0 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        let chunk = |t: &str| format!("data: {{\"choices\":[{{\"text\":\"{t}\"}}]}}\n\n");
        assert!(!r.push(&head.as_bytes()[..10], ms(1))?);
        assert!(!r.push(&head.as_bytes()[10..], ms(2))?);
        let a = chunk("Once");
        assert!(!r.push(&a.as_bytes()[..7], ms(10))?);
        assert!(!r.push(&a.as_bytes()[7..], ms(11))?);
        assert!(!r.push((chunk("") + &chunk(" upon")).as_bytes(), ms(61))?);
        let tail = "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n\
                    data: {\"choices\":[],\"usage\":{\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        assert!(r.push(tail.as_bytes(), ms(62))?);
        assert_eq!(r.out.text, "Once upon");
        assert_eq!(r.out.chunk_times, [ms(11), ms(61)]);
        assert_eq!(r.out.completion_tokens, Some(2));
        assert_eq!(r.out.finish.as_deref(), Some("length"));
        assert_eq!(r.out.done, ms(62));
        assert_eq!(r.out.decode_rate(), Some(20.0));
        Ok(())
    }

    #[test]
    fn sse_error_events_and_statuses_fail() -> Result<()> {
        let mut r = SseReader::default();
        let err = "HTTP/1.0 200 OK\r\n\r\ndata: {\"error\":{\"message\":\"no route\"}}\n\n";
        assert!(r.push(err.as_bytes(), ms(1)).is_err());
        let mut r = SseReader::default();
        let busy = "HTTP/1.0 503 Service Unavailable\r\n\r\n{\"error\":\"not ready\"}";
        assert!(!r.push(busy.as_bytes(), ms(1))?);
        let msg = r.failure().to_string();
        assert!(msg.contains("503") && msg.contains("not ready"), "{msg}");
        Ok(())
    }

    #[test]
    fn one_chunk_gives_no_rate() {
        let s = Streamed {
            chunk_times: vec![ms(5)],
            ..Streamed::default()
        };
        assert_eq!(s.decode_rate(), None);
    }
}
