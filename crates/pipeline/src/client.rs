//! The gateway side of the pipeline: plans a route, opens a session on its first hop, runs the
//! prompt and then one step per token, and sends each token as soon as it is known.
//!
//! Fault tolerance: when a step fails, the peer named by the error (the hop that failed, or the
//! one its upstream could not reach in time) is excluded at its second fault (a first one may
//! be transient: libp2p drops inbound streams that arrive faster than they are accepted, so it
//! is retried after a short backoff), a new route is planned from the live holders, and the session is rebuilt by replaying the prompt and the tokens generated so far,
//! step by step exactly as they first ran (so greedy output is bit-identical); the draw for the
//! pending token is kept, so seeded sampling continues unchanged. The caller sees no error
//! unless no holder is left or the attempts run out.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::Dialer;
use crate::frame::{ErrorCode, Frame, Hop, Input, Sampling};
use crate::io::{BoxStream, read_frame, write_frame};
use crate::plan::{Holders, NoRoute, plan};
use crate::stage_server::HOP_MARGIN_MS;

const TARGET: &str = "shardswarm::pipeline";

/// The live holders of every shard, as the gateway sees them now.
#[derive(Debug, Clone, Default)]
pub struct RouteView {
    /// Shards in the model.
    pub total_shards: u32,
    /// Who has loaded which shard.
    pub holders: Holders,
}

/// Where the client learns the holders and the latency of each peer.
pub trait RouteSource: Send + Sync {
    /// The current holders.
    fn view(&self) -> BoxFuture<'_, RouteView>;
    /// The last measured round-trip time to `peer`, if any.
    fn latency(&self, peer: &str) -> Option<Duration>;
}

/// Tuning of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Fixed part of a step's time budget.
    pub step_base: Duration,
    /// Added per position in the step (prefill takes longer).
    pub step_per_position: Duration,
    /// Most route rebuilds per generation.
    pub max_recoveries: usize,
    /// Cost of one concurrent session on a peer, against its latency.
    pub load_penalty: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            step_base: Duration::from_secs(4),
            step_per_position: Duration::from_millis(40),
            max_recoveries: 6,
            load_penalty: Duration::from_millis(20),
        }
    }
}

/// One generation in tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Prompt ids (non-empty).
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How the last stage samples.
    pub sampling: Sampling,
    /// Seed of the draws.
    pub seed: u64,
    /// Ids that end the generation (not sent).
    pub stop_ids: Vec<u32>,
    /// The model's context length.
    pub context: usize,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop id came.
    Eos,
    /// `max_tokens` or the context was reached.
    Length,
    /// The token receiver was dropped.
    Cancelled,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Why it ended.
    pub finish: Finish,
    /// Tokens sent.
    pub tokens: usize,
    /// How often the route was rebuilt.
    pub recoveries: usize,
    /// The route of the last attempt.
    pub route: Vec<Hop>,
    /// The round trip of every step of the last attempt, in order: the prompt first (a replay
    /// after a rebuild included), then one per decode step.
    pub step_times: Vec<Duration>,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Some shards have no usable holder.
    #[error(transparent)]
    NoRoute(#[from] NoRoute),
    /// The request itself is unusable.
    #[error("{0}")]
    BadRequest(String),
    /// Steps kept failing.
    #[error("gave up after {recoveries} route rebuilds; last error: {last}")]
    Failed {
        /// Rebuilds tried.
        recoveries: usize,
        /// The last fault.
        last: String,
    },
}

/// A step that failed at `peer`.
#[derive(Debug)]
struct Fault {
    peer: String,
    message: String,
}

/// Runs generations over the swarm.
pub struct Client {
    dialer: Arc<dyn Dialer>,
    routes: Arc<dyn RouteSource>,
    cfg: ClientConfig,
    load: Mutex<HashMap<String, usize>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// Counts a route's peers as busy while it lives.
struct LoadGuard<'a> {
    client: &'a Client,
    peers: Vec<String>,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut load) = self.client.load.lock() {
            for p in &self.peers {
                if let Some(n) = load.get_mut(p) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }
}

/// An open session: the stream to the first hop.
struct Session<'a> {
    stream: BoxStream,
    first: String,
    _load: LoadGuard<'a>,
}

impl Client {
    /// A client dialing through `dialer` and routing over `routes`.
    pub fn new(dialer: Arc<dyn Dialer>, routes: Arc<dyn RouteSource>, cfg: ClientConfig) -> Self {
        Self {
            dialer,
            routes,
            cfg,
            load: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions this client has open per peer.
    pub fn load(&self) -> HashMap<String, usize> {
        self.load.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn cost(&self, peer: &str) -> f64 {
        let rtt = self
            .routes
            .latency(peer)
            .unwrap_or(Duration::from_millis(5));
        let load = self
            .load
            .lock()
            .map(|l| l.get(peer).copied().unwrap_or(0))
            .unwrap_or(0);
        rtt.as_secs_f64() * 1e3 + load as f64 * self.cfg.load_penalty.as_secs_f64() * 1e3 + 1.0
    }

    async fn open(
        &self,
        route: &[Hop],
        capacity: usize,
        sampling: Sampling,
        session: u64,
    ) -> Result<Session<'_>, Fault> {
        let peers: Vec<String> = route.iter().map(|h| h.peer.clone()).collect();
        if let Ok(mut load) = self.load.lock() {
            for p in &peers {
                *load.entry(p.clone()).or_default() += 1;
            }
        }
        let guard = LoadGuard {
            client: self,
            peers,
        };
        let first = route[0].peer.clone();
        let fault = |message: String| Fault {
            peer: first.clone(),
            message,
        };
        let mut stream = self.dialer.open(&first).await.map_err(fault)?;
        let open = Frame::Open {
            session,
            hops: route.to_vec(),
            capacity: capacity as u32,
            sampling,
        };
        write_frame(&mut stream, &open)
            .await
            .map_err(|e| fault(e.to_string()))?;
        Ok(Session {
            stream,
            first,
            _load: guard,
        })
    }

    async fn step(
        &self,
        s: &mut Session<'_>,
        hops: usize,
        pos: usize,
        input: Input,
        draw: f32,
    ) -> Result<u32, Fault> {
        let n = input.positions() as u32;
        let budget = self.cfg.step_base
            + self.cfg.step_per_position * n
            + Duration::from_millis(u64::from(HOP_MARGIN_MS) * hops as u64);
        let frame = Frame::Step {
            pos: pos as u32,
            budget_ms: budget.as_millis() as u32,
            draw,
            input,
        };
        let first = s.first.clone();
        let fault = |message: String| Fault {
            peer: first.clone(),
            message,
        };
        let exchange = async {
            write_frame(&mut s.stream, &frame).await?;
            read_frame(&mut s.stream).await
        };
        let wait = budget + Duration::from_millis(HOP_MARGIN_MS.into());
        match tokio::time::timeout(wait, exchange).await {
            Err(_) => Err(fault(format!("no answer within {} ms", wait.as_millis()))),
            Ok(Err(e)) => Err(fault(e.to_string())),
            Ok(Ok(None)) => Err(fault("closed the session".into())),
            Ok(Ok(Some(Frame::Token { id }))) => Ok(id),
            Ok(Ok(Some(Frame::Error {
                code,
                peer,
                message,
            }))) => {
                let peer = if code == ErrorCode::BadRequest {
                    first
                } else {
                    peer
                };
                Err(Fault {
                    peer,
                    message: format!("{code:?}: {message}"),
                })
            }
            Ok(Ok(Some(other))) => Err(fault(format!("unexpected {} frame", other.kind()))),
        }
    }

    /// Generates `p`, sending each token on `tx` as it comes. Returns when a stop id comes,
    /// `max_tokens` or the context is reached, or `tx` is closed.
    pub async fn generate(
        &self,
        p: &GenParams,
        tx: mpsc::Sender<u32>,
    ) -> Result<Outcome, ClientError> {
        if p.prompt.is_empty() {
            return Err(ClientError::BadRequest("empty prompt".into()));
        }
        if p.prompt.len() > p.context {
            return Err(ClientError::BadRequest(format!(
                "the prompt has {} tokens, the context is {}",
                p.prompt.len(),
                p.context
            )));
        }
        let capacity = (p.prompt.len() + p.max_tokens).min(p.context);
        let greedy = p.sampling.temperature <= 0.0;
        let mut rng = StdRng::seed_from_u64(p.seed);
        let mut pending_draw: Option<f32> = None;
        let mut generated: Vec<u32> = Vec::new();
        let mut excluded: HashSet<String> = HashSet::new();
        let mut strikes: HashMap<String, u32> = HashMap::new();
        let mut recoveries = 0;
        let mut last_fault = String::new();
        loop {
            let view = self.routes.view().await;
            let route = match plan(view.total_shards, &view.holders, &excluded, |q| {
                self.cost(q)
            }) {
                Ok(r) => r,
                Err(e) if recoveries == 0 => return Err(e.into()),
                Err(e) => {
                    return Err(ClientError::Failed {
                        recoveries,
                        last: format!("{last_fault}; then {e}"),
                    });
                }
            };
            let session_id: u64 = rand::random();
            info!(target: TARGET, session = session_id, route = %describe(&route), "pipeline route");
            let started = Instant::now();
            let mut step_times: Vec<Duration> = Vec::new();
            let result = async {
                let mut s = self.open(&route, capacity, p.sampling, session_id).await?;
                let mut done = 0usize; // steps run in this session
                loop {
                    let fresh = done == generated.len();
                    if fresh && generated.len() >= p.max_tokens {
                        return Ok(Finish::Length);
                    }
                    let (pos, input) = if done == 0 {
                        (0, Input::Tokens(p.prompt.clone()))
                    } else {
                        let pos = p.prompt.len() + done - 1;
                        if pos >= p.context {
                            return Ok(Finish::Length);
                        }
                        (pos, Input::Tokens(vec![generated[done - 1]]))
                    };
                    let draw = if fresh && !greedy {
                        *pending_draw.get_or_insert_with(|| rng.random::<f32>())
                    } else {
                        0.0
                    };
                    let step_started = Instant::now();
                    let tok = self.step(&mut s, route.len(), pos, input, draw).await?;
                    step_times.push(step_started.elapsed());
                    done += 1;
                    if !fresh {
                        continue;
                    }
                    pending_draw = None;
                    if p.stop_ids.contains(&tok) {
                        return Ok(Finish::Eos);
                    }
                    generated.push(tok);
                    if tx.send(tok).await.is_err() {
                        return Ok(Finish::Cancelled);
                    }
                }
            }
            .await;
            match result {
                Ok(finish) => {
                    info!(target: TARGET, hops = route.len(), tokens = generated.len(), ?finish,
                        secs = started.elapsed().as_secs_f64(), "generation done");
                    return Ok(Outcome {
                        finish,
                        tokens: generated.len(),
                        recoveries,
                        route,
                        step_times,
                    });
                }
                Err(Fault { peer, message }) => {
                    warn!(target: TARGET, %peer, error = %message, tokens = generated.len(),
                        "pipeline step failed; rerouting around the peer and replaying");
                    last_fault = format!("{peer}: {message}");
                    // A first fault may be transient (libp2p drops inbound streams that arrive
                    // faster than they are accepted): a peer is excluded at its second strike.
                    let strike = strikes.entry(peer.clone()).or_default();
                    *strike += 1;
                    if *strike >= 2 {
                        excluded.insert(peer);
                    }
                    recoveries += 1;
                    if recoveries > self.cfg.max_recoveries {
                        return Err(ClientError::Failed {
                            recoveries: recoveries - 1,
                            last: last_fault,
                        });
                    }
                    let backoff = rand::random_range(10..50) * recoveries as u64;
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
            }
        }
    }
}

/// `peer[0..2] -> peer[2..8]`: a route for the logs.
pub fn describe(route: &[Hop]) -> String {
    route
        .iter()
        .map(|h| format!("{}[{}..{}]", h.peer, h.shards.start, h.shards.end))
        .collect::<Vec<_>>()
        .join(" -> ")
}
