//! The stage side of the pipeline: one task per session stream. It checks the route, reserves
//! KV memory, runs its layer ranges on each step and forwards the hidden states to the next
//! hop (or samples the next token when it is the last), relaying the answer back up.
//!
//! A session lives as long as its upstream stream: end of stream, an idle period longer than
//! the TTL, or any error frees its KV caches and closes the downstream stream, which frees the
//! next stage's session in turn.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use candle_core::Tensor;
use shardswarm_model::{KvCache, SamplerConfig, Stage, sample_with_draw};
use tracing::{debug, warn};

use crate::Dialer;
use crate::frame::{ErrorCode, Frame, Hop, Input, Sampling};
use crate::io::{BoxStream, read_frame, write_frame};

/// Target of this module's log lines.
const TARGET: &str = "shardswarm::pipeline";
/// What each hop keeps of the step budget for itself: the next hop gets this much less.
pub const HOP_MARGIN_MS: u32 = 500;

/// Where the stage server finds the layers it has loaded.
pub trait StageSource: Send + Sync {
    /// The loaded stage of `shard`, if any.
    fn stage(&self, shard: u32) -> Option<Arc<Stage>>;
}

/// Limits of a stage server.
#[derive(Debug, Clone)]
pub struct StageLimits {
    /// Most concurrent sessions.
    pub max_sessions: usize,
    /// Most KV-cache bytes reserved by all sessions together.
    pub max_kv_bytes: u64,
    /// A session with no step for this long is freed.
    pub idle_ttl: Duration,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            max_kv_bytes: 2 << 30,
            idle_ttl: Duration::from_secs(120),
        }
    }
}

/// Sessions and KV bytes in use right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageUsage {
    /// Open sessions.
    pub sessions: usize,
    /// KV-cache bytes reserved.
    pub kv_bytes: u64,
}

/// Serves the sessions of one peer.
pub struct StageServer {
    local: String,
    stages: Arc<dyn StageSource>,
    dialer: Arc<dyn Dialer>,
    limits: StageLimits,
    usage: Mutex<StageUsage>,
}

impl std::fmt::Debug for StageServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageServer")
            .field("local", &self.local)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A reservation of session capacity, returned on drop.
struct Admission<'a> {
    server: &'a StageServer,
    bytes: u64,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Ok(mut u) = self.server.usage.lock() {
            u.sessions -= 1;
            u.kv_bytes -= self.bytes;
        }
    }
}

/// A step failure to report upstream.
struct Fault {
    code: ErrorCode,
    peer: String,
    message: String,
}

impl Fault {
    fn frame(self) -> Frame {
        Frame::Error {
            code: self.code,
            peer: self.peer,
            message: self.message,
        }
    }
}

/// The state of one session on this peer.
struct Session {
    stages: Vec<Arc<Stage>>,
    caches: Vec<KvCache>,
    first: bool,
    last: bool,
    sampling: Sampling,
    next: Option<(String, BoxStream)>,
}

impl StageServer {
    /// A server for peer `local` (base58 id) computing with `stages` and reaching the next hop
    /// through `dialer`.
    pub fn new(
        local: String,
        stages: Arc<dyn StageSource>,
        dialer: Arc<dyn Dialer>,
        limits: StageLimits,
    ) -> Self {
        Self {
            local,
            stages,
            dialer,
            limits,
            usage: Mutex::new(StageUsage::default()),
        }
    }

    /// Sessions and KV bytes in use.
    pub fn usage(&self) -> StageUsage {
        self.usage.lock().map(|u| *u).unwrap_or_default()
    }

    fn fault(&self, code: ErrorCode, message: impl Into<String>) -> Fault {
        Fault {
            code,
            peer: self.local.clone(),
            message: message.into(),
        }
    }

    fn admit(&self, bytes: u64) -> Result<Admission<'_>, Fault> {
        let mut u = self
            .usage
            .lock()
            .map_err(|_| self.fault(ErrorCode::Compute, "usage lock poisoned"))?;
        if u.sessions >= self.limits.max_sessions {
            return Err(self.fault(
                ErrorCode::Busy,
                format!(
                    "{} sessions open (limit {})",
                    u.sessions, self.limits.max_sessions
                ),
            ));
        }
        if u.kv_bytes + bytes > self.limits.max_kv_bytes {
            return Err(self.fault(
                ErrorCode::Busy,
                format!(
                    "KV memory: {} + {bytes} bytes over the limit of {}",
                    u.kv_bytes, self.limits.max_kv_bytes
                ),
            ));
        }
        u.sessions += 1;
        u.kv_bytes += bytes;
        Ok(Admission {
            server: self,
            bytes,
        })
    }

    /// Serves one session on `up` until it ends. Never panics on the peer's input: every bad
    /// frame gets an [`Frame::Error`] and the stream is closed.
    pub async fn serve(&self, mut up: BoxStream) {
        let ttl = self.limits.idle_ttl;
        let open = match tokio::time::timeout(ttl, read_frame(&mut up)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                let f = self.fault(ErrorCode::BadRequest, e.to_string());
                let _ = write_frame(&mut up, &f.frame()).await;
                return;
            }
        };
        let Frame::Open {
            session,
            hops,
            capacity,
            sampling,
        } = open
        else {
            let f = self.fault(ErrorCode::BadRequest, "expected Open as the first frame");
            let _ = write_frame(&mut up, &f.frame()).await;
            return;
        };
        let (mut s, _admission) = match self.open(&hops, capacity, sampling).await {
            Ok(x) => x,
            Err(f) => {
                let _ = write_frame(&mut up, &f.frame()).await;
                return;
            }
        };
        debug!(target: TARGET, session, shards = ?hops[0].shards, next = ?s.next.as_ref().map(|n| &n.0), "session open");
        loop {
            let frame = match tokio::time::timeout(ttl, read_frame(&mut up)).await {
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => break,
                Err(_) => {
                    debug!(target: TARGET, session, "session idle past its TTL: freed");
                    break;
                }
                Ok(Err(e)) => {
                    let f = self.fault(ErrorCode::BadRequest, e.to_string());
                    let _ = write_frame(&mut up, &f.frame()).await;
                    break;
                }
            };
            let reply = match frame {
                Frame::Step {
                    pos,
                    budget_ms,
                    draw,
                    input,
                } => match self.step(&mut s, pos, budget_ms, draw, input).await {
                    Ok(id) => Frame::Token { id },
                    Err(f) => f.frame(),
                },
                _ => self.fault(ErrorCode::BadRequest, "expected Step").frame(),
            };
            let failed = matches!(reply, Frame::Error { .. });
            if write_frame(&mut up, &reply).await.is_err() || failed {
                break;
            }
        }
        debug!(target: TARGET, session, "session closed");
    }

    /// Checks the route, reserves memory, makes the caches and opens the next hop.
    async fn open(
        &self,
        hops: &[Hop],
        capacity: u32,
        sampling: Sampling,
    ) -> Result<(Session, Admission<'_>), Fault> {
        let me = hops
            .first()
            .ok_or_else(|| self.fault(ErrorCode::BadRequest, "empty route"))?;
        if me.peer != self.local {
            return Err(self.fault(
                ErrorCode::BadRequest,
                format!(
                    "the route names {} for this hop, this is {}",
                    me.peer, self.local
                ),
            ));
        }
        let mut stages = Vec::new();
        for shard in me.shards.clone() {
            let stage = self.stages.stage(shard).ok_or_else(|| {
                self.fault(
                    ErrorCode::NotHolding,
                    format!("shard {shard} is not loaded here"),
                )
            })?;
            if let Some(prev) = stages.last().map(|s: &Arc<Stage>| s.layers().end)
                && prev != stage.layers().start
            {
                return Err(self.fault(ErrorCode::Compute, "loaded shards are not contiguous"));
            }
            stages.push(stage);
        }
        let (Some(head), Some(tail)) = (stages.first(), stages.last()) else {
            return Err(self.fault(ErrorCode::BadRequest, "empty shard range"));
        };
        let first = me.shards.start == 0;
        let last = hops.len() == 1;
        if first && !head.has_embedding() {
            return Err(self.fault(ErrorCode::NotHolding, "no token embedding here"));
        }
        if last && !tail.has_head() {
            return Err(self.fault(
                ErrorCode::BadRequest,
                "the route ends before the model's last layer",
            ));
        }
        let cfg = head.config();
        let capacity = (capacity as usize).clamp(1, cfg.context_length);
        let bytes: u64 = stages
            .iter()
            .map(|s| {
                let c = s.config();
                let layers = (s.layers().end - s.layers().start) as u64;
                layers * 2 * (c.head_count_kv * c.head_dim * 4 * capacity) as u64
            })
            .sum();
        let admission = self.admit(bytes)?;
        let caches = stages
            .iter()
            .map(|s| s.new_cache(capacity))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fault(ErrorCode::Compute, e.to_string()))?;
        let next = match hops.get(1) {
            None => None,
            Some(hop) => {
                let mut stream = self.dialer.open(&hop.peer).await.map_err(|e| Fault {
                    code: ErrorCode::Unreachable,
                    peer: hop.peer.clone(),
                    message: e,
                })?;
                let open = Frame::Open {
                    session: 0,
                    hops: hops[1..].to_vec(),
                    capacity: capacity as u32,
                    sampling,
                };
                write_frame(&mut stream, &open).await.map_err(|e| Fault {
                    code: ErrorCode::Unreachable,
                    peer: hop.peer.clone(),
                    message: e.to_string(),
                })?;
                Some((hop.peer.clone(), stream))
            }
        };
        Ok((
            Session {
                stages,
                caches,
                first,
                last,
                sampling,
                next,
            },
            admission,
        ))
    }

    /// Runs one step here, then below; returns the next token.
    async fn step(
        &self,
        s: &mut Session,
        pos: u32,
        budget_ms: u32,
        draw: f32,
        input: Input,
    ) -> Result<u32, Fault> {
        let n = input.positions();
        match (&input, s.first) {
            (Input::Tokens(_), true) | (Input::Hidden { .. }, false) => {}
            _ => {
                return Err(self.fault(
                    ErrorCode::BadRequest,
                    "the first hop takes tokens, the others hidden states",
                ));
            }
        }
        let stages = s.stages.clone();
        let mut caches = std::mem::take(&mut s.caches);
        let last = s.last;
        let sampling = s.sampling;
        let local = self.local.clone();
        let work = tokio::task::spawn_blocking(move || {
            let r = compute(
                &stages,
                &mut caches,
                pos as usize,
                input,
                last,
                sampling,
                draw,
            );
            (r, caches)
        });
        let (result, caches) = work
            .await
            .map_err(|e| self.fault(ErrorCode::Compute, format!("compute task: {e}")))?;
        s.caches = caches;
        let out = result.map_err(|m| Fault {
            code: ErrorCode::Compute,
            peer: local,
            message: m,
        })?;
        match out {
            Output::Token(id) => Ok(id),
            Output::Hidden(data) => {
                let Some((peer, stream)) = s.next.as_mut() else {
                    return Err(self.fault(ErrorCode::Compute, "no next hop"));
                };
                let dim = data.len() / n.max(1);
                let budget = budget_ms.saturating_sub(HOP_MARGIN_MS);
                let frame = Frame::Step {
                    pos,
                    budget_ms: budget,
                    draw,
                    input: Input::Hidden {
                        n: n as u32,
                        dim: dim as u32,
                        data,
                    },
                };
                let unreachable = |m: String| Fault {
                    code: ErrorCode::Unreachable,
                    peer: peer.clone(),
                    message: m,
                };
                let exchange = async {
                    write_frame(stream, &frame).await?;
                    read_frame(stream).await
                };
                let reply = tokio::time::timeout(Duration::from_millis(budget.into()), exchange)
                    .await
                    .map_err(|_| Fault {
                        code: ErrorCode::Timeout,
                        peer: peer.clone(),
                        message: format!("no answer within {budget} ms"),
                    })?
                    .map_err(|e| unreachable(e.to_string()))?;
                match reply {
                    Some(Frame::Token { id }) => Ok(id),
                    Some(Frame::Error {
                        code,
                        peer,
                        message,
                    }) => Err(Fault {
                        code,
                        peer,
                        message,
                    }),
                    Some(_) => Err(unreachable("unexpected frame".into())),
                    None => {
                        warn!(target: TARGET, %peer, "next hop closed the session");
                        Err(unreachable("closed the stream".into()))
                    }
                }
            }
        }
    }
}

/// What a step produced here.
enum Output {
    Token(u32),
    Hidden(Vec<f32>),
}

/// The blocking part of a step: embed (first hop), the layers, then head + sampling (last hop).
fn compute(
    stages: &[Arc<Stage>],
    caches: &mut [KvCache],
    pos: usize,
    input: Input,
    last: bool,
    sampling: Sampling,
    draw: f32,
) -> Result<Output, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let first = stages.first().ok_or("no stages")?;
    let mut h = match input {
        Input::Tokens(ids) => first.embed(&ids).map_err(|e| err(&e))?,
        Input::Hidden { n, dim, data } => {
            if dim as usize != first.config().embedding_length {
                return Err(format!(
                    "hidden width {dim}, the model's is {}",
                    first.config().embedding_length
                ));
            }
            Tensor::from_vec(data, (1, n as usize, dim as usize), first.device())
                .map_err(|e| err(&e))?
        }
    };
    for (stage, cache) in stages.iter().zip(caches.iter_mut()) {
        h = stage.forward_layers(&h, pos, cache).map_err(|e| err(&e))?;
    }
    if !last {
        let data = h
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(&e))?;
        return Ok(Output::Hidden(data));
    }
    let tail = stages.last().ok_or("no stages")?;
    let logits = tail
        .head(&h)
        .and_then(|t| t.to_vec1::<f32>().map_err(Into::into))
        .map_err(|e| err(&e))?;
    let cfg = SamplerConfig {
        temperature: sampling.temperature,
        top_k: sampling.top_k as usize,
        top_p: sampling.top_p,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        seed: 0,
    };
    Ok(Output::Token(sample_with_draw(&cfg, &logits, &[], draw)))
}
