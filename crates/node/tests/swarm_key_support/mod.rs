//! Helpers of the swarm-key tests: a raw libp2p probe that tries each surface of a peer by
//! hand, and a capture of the `shardswarm::auth` log events.
//!
//! The probe runs on the very transport a peer runs on (`swarm_key_transport::transport`),
//! with or without a key, plus identify (as every shardswarm peer runs it, so a keyless probe
//! opens a stream at once, as a keyless node would), Kademlia on the shardswarm DHT protocol and
//! libp2p-stream. Each surface call returns `Ok` when the target served it and `Err(why)` when
//! it did not; the same calls succeed for a probe with the right key, so every refusal asserted
//! by the tests could also have been a success.
#![allow(dead_code, unreachable_pub)]

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::kad::store::MemoryStore;
use libp2p::kad::{self, GetProvidersOk, QueryResult, RecordKey};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify};
use serde_json::json;
use shardswarm_node::SwarmKey;
use shardswarm_node::swarm_key_transport::transport;
use shardswarm_pipeline::frame::{Frame as InferFrame, Hop, Input, Sampling};
use shardswarm_proto::{InfoHash, Response};
use shardswarm_torrent::wire::{Frame, FrameDecoder};
use tokio::sync::broadcast;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Bound of every single probe operation.
pub const OP_LIMIT: Duration = Duration::from_secs(25);

// ---- the auth log ------------------------------------------------------------------------------

/// One `shardswarm::auth` event.
#[derive(Debug, Clone, Default)]
pub struct AuthLog {
    /// The `peer` field: the remote that was refused.
    pub peer: String,
    /// The `reason` field.
    pub reason: String,
    /// The message.
    pub message: String,
    /// The level.
    pub level: String,
}

struct Capture(broadcast::Sender<AuthLog>);

#[derive(Default)]
struct Fields(AuthLog);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "reason" => self.0.reason = value.to_owned(),
            "message" => self.0.message = value.to_owned(),
            "peer" => self.0.peer = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let v = format!("{value:?}");
        match field.name() {
            "peer" => self.0.peer = v,
            "message" => self.0.message = v,
            "reason" => self.0.reason = v.trim_matches('"').to_owned(),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut f = Fields::default();
        event.record(&mut f);
        f.0.level = event.metadata().level().to_string();
        let _ = self.0.send(f.0);
    }
}

static AUTH_LOG: OnceLock<broadcast::Sender<AuthLog>> = OnceLock::new();

/// Installs logging (test output, `RUST_LOG`, default warn) plus the capture of every
/// `shardswarm::auth` event (debug and up); returns a receiver of those from now on.
pub fn auth_log() -> broadcast::Receiver<AuthLog> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let tx = AUTH_LOG.get_or_init(|| {
        let (tx, _) = broadcast::channel(4096);
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let capture = Capture(tx.clone()).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("shardswarm::auth", tracing::Level::DEBUG),
        );
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_test_writer()
                    .with_filter(filter),
            )
            .with(capture)
            .try_init();
        tx
    });
    tx.subscribe()
}

/// Waits (at most `limit`) for a refusal naming `peer` (with `reason`, when given); returns
/// it. On timeout the error lists the other refusals of `peer` seen meanwhile.
pub async fn refusal_of(
    rx: &mut broadcast::Receiver<AuthLog>,
    peer: PeerId,
    reason: Option<&str>,
    limit: Duration,
) -> Result<AuthLog> {
    auth_event(rx, peer, "connection refused", reason, limit).await
}

/// Waits (at most `limit`) for an auth log event naming `peer` whose message contains `what`
/// (with `reason`, when given).
pub async fn auth_event(
    rx: &mut broadcast::Receiver<AuthLog>,
    peer: PeerId,
    what: &str,
    reason: Option<&str>,
    limit: Duration,
) -> Result<AuthLog> {
    let want = peer.to_string();
    let mut others = Vec::new();
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(ev) if ev.peer == want && ev.message.contains(what) => {
                    if reason.is_none_or(|r| r == ev.reason) {
                        return Ok(ev);
                    }
                    others.push(ev);
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => bail!("log capture closed"),
            }
        }
    };
    let r = tokio::time::timeout(limit, fut).await;
    r.map_err(|_| {
        anyhow!("no {what:?} about {peer} ({reason:?}) logged within {limit:?}; others about it: {others:?}")
    })?
}

// ---- the probe ---------------------------------------------------------------------------------

/// Kademlia protocol of shardswarm's DHT.
pub const KAD: StreamProtocol = StreamProtocol::new("/shardswarm/kad/1.0.0");
const CMD: StreamProtocol = StreamProtocol::new("/shardswarm/cmd/1.0.0");
const PIECES: StreamProtocol = StreamProtocol::new("/shardswarm/pieces/1.0.0");
const INFER: StreamProtocol = StreamProtocol::new(shardswarm_pipeline::PROTOCOL);

#[derive(NetworkBehaviour)]
pub struct ProbeBehaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    stream: libp2p_stream::Behaviour,
}

/// How a plain dial ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Dialed {
    /// The connection is up and stayed up while identify ran.
    Up,
    /// The dial failed (our own handshake refused, or the remote closed it before).
    Failed(String),
    /// It was up on our side, then the remote closed it before identifying itself.
    ClosedByRemote(String),
}

/// A raw libp2p peer on loopback with (or without) a swarm key.
pub struct Probe {
    pub swarm: Swarm<ProbeBehaviour>,
    pub id: PeerId,
    pub listen: Vec<Multiaddr>,
}

impl Probe {
    /// A probe with `key`, listening on loopback QUIC and TCP.
    pub async fn new(key: Option<SwarmKey>) -> Result<Probe> {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|k| {
                transport(k, key)
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })?
            .with_behaviour(|k| {
                let id = k.public().to_peer_id();
                let mut cfg = kad::Config::new(KAD);
                cfg.set_query_timeout(Duration::from_secs(15));
                ProbeBehaviour {
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/shardswarm/id/1.0.0".into(),
                        k.public(),
                    )),
                    kad: kad::Behaviour::with_config(id, MemoryStore::new(id), cfg),
                    stream: libp2p_stream::Behaviour::new(),
                }
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        for a in shardswarm_testkit::loopback_listen() {
            swarm.listen_on(a)?;
        }
        let id = *swarm.local_peer_id();
        let mut probe = Probe {
            swarm,
            id,
            listen: Vec::new(),
        };
        let mut listen = Vec::new();
        probe
            .until(Duration::from_secs(10), |ev| {
                if let SwarmEvent::NewListenAddr { address, .. } = ev {
                    listen.push(address.clone().with_p2p(id).unwrap_or(address.clone()));
                }
                (listen.len() == 2).then_some(())
            })
            .await?;
        // As shardswarm peers do on loopback: the listen addresses count as external, so the
        // DHT runs in server mode and provider records carry addresses.
        for a in &listen {
            probe.swarm.add_external_address(a.clone());
        }
        probe
            .swarm
            .behaviour_mut()
            .kad
            .set_mode(Some(kad::Mode::Server));
        probe.listen = listen;
        Ok(probe)
    }

    /// Makes `peer` reachable at `addrs` for dials and the DHT.
    pub fn learn(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        for a in addrs {
            self.swarm.add_peer_address(peer, a.clone());
            self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
        }
    }

    /// Polls the swarm until `pick` says `Some`, for at most `limit`.
    pub async fn until<T>(
        &mut self,
        limit: Duration,
        mut pick: impl FnMut(&SwarmEvent<ProbeBehaviourEvent>) -> Option<T>,
    ) -> Result<T> {
        let fut = async {
            loop {
                let ev = self.swarm.select_next_some().await;
                tracing::debug!(target: "probe", me = %self.id, ?ev, "event");
                if let Some(t) = pick(&ev) {
                    return t;
                }
            }
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| anyhow!("probe: nothing within {limit:?}"))
    }

    /// Awaits `fut` while the swarm runs.
    pub async fn drive<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output> {
        let run = async {
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    out = &mut fut => return out,
                    ev = self.swarm.select_next_some() => {
                        tracing::debug!(target: "probe", me = %self.id, ?ev, "event");
                    }
                }
            }
        };
        tokio::time::timeout(OP_LIMIT, run)
            .await
            .map_err(|_| anyhow!("probe operation took over {OP_LIMIT:?}"))
    }

    /// Dials `addr` (of `peer`) alone and reports how the connection went.
    pub async fn dial(&mut self, peer: PeerId, addr: &Multiaddr) -> Result<Dialed> {
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        let conn = opts.connection_id();
        self.swarm.dial(opts)?;
        let mut up = false;
        self.until(OP_LIMIT, |ev| match ev {
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } if *connection_id == conn => Some(Dialed::Failed(error.to_string())),
            SwarmEvent::ConnectionEstablished { connection_id, .. } if *connection_id == conn => {
                up = true;
                None
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                cause,
                ..
            } if *connection_id == conn => Some(Dialed::ClosedByRemote(format!("{cause:?}"))),
            // The remote identified itself on this connection: it was let in.
            SwarmEvent::Behaviour(ProbeBehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                ..
            })) if up && *connection_id == conn => Some(Dialed::Up),
            _ => None,
        })
        .await
    }

    /// Sends one command envelope on `/shardswarm/cmd/1.0.0` and decodes the answer.
    pub async fn command(&mut self, to: PeerId, command: &str) -> Result<Response, String> {
        let mut body = json!({"command": command, "request_id": "req-probe",
            "from": self.id.to_string(), "to": to.to_string(), "timestamp": 1});
        if command == "SYNC_TORRENTS" {
            body["params"] = json!({"total_shards": 2});
        }
        let mut control = self.swarm.behaviour().stream.new_control();
        let op = async move {
            let mut s = control
                .open_stream(to, CMD)
                .await
                .map_err(|e| format!("open: {e}"))?;
            let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            s.write_all(&bytes)
                .await
                .map_err(|e| format!("write: {e}"))?;
            s.close().await.map_err(|e| format!("close: {e}"))?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if got.is_empty() {
                return Err("no answer (end of stream)".to_owned());
            }
            shardswarm_proto::codec::decode_response(&got).map_err(|e| format!("{e:?}"))
        };
        self.drive(op).await.map_err(|e| e.to_string())?
    }

    /// Opens the piece protocol, says Hello and Interested in `info_hash`, and asks for the first
    /// `length` bytes of piece 0; returns the bitfield and the block.
    pub async fn piece(
        &mut self,
        to: PeerId,
        info_hash: InfoHash,
        length: u32,
    ) -> Result<(Vec<u8>, usize), String> {
        let mut control = self.swarm.behaviour().stream.new_control();
        let op = async move {
            let mut s = control
                .open_stream(to, PIECES)
                .await
                .map_err(|e| format!("open: {e}"))?;
            let mut out = Vec::new();
            for f in [
                Frame::Hello { version: 1 },
                Frame::Interested { info_hash },
                Frame::Request {
                    id: 1,
                    info_hash,
                    piece: 0,
                    offset: 0,
                    length,
                },
            ] {
                f.encode(&mut out);
            }
            s.write_all(&out).await.map_err(|e| format!("write: {e}"))?;
            s.flush().await.map_err(|e| format!("flush: {e}"))?;
            let mut dec = FrameDecoder::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut bits = None;
            loop {
                while let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
                    match f {
                        Frame::Bitfield { bits: b, .. } => bits = Some(b),
                        Frame::Piece { id: 1, data } => {
                            return Ok((bits.unwrap_or_default(), data.len()));
                        }
                        Frame::Reject { reason, .. } => return Err(format!("rejected {reason}")),
                        _ => {}
                    }
                }
                let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("end of stream".to_owned());
                }
                dec.push(&buf[..n]);
            }
        };
        self.drive(op).await.map_err(|e| e.to_string())?
    }

    /// Opens `/shardswarm/infer/1.0.0` to `to`, opens a session on its shards `0..shards` and
    /// runs one step; returns the first frame that comes back.
    pub async fn infer(&mut self, to: PeerId, shards: u32) -> Result<InferFrame, String> {
        let mut control = self.swarm.behaviour().stream.new_control();
        let op = async move {
            let s = control
                .open_stream(to, INFER)
                .await
                .map_err(|e| format!("open: {e}"))?;
            let mut s = s.compat();
            let open = InferFrame::Open {
                session: 7,
                hops: vec![Hop {
                    peer: to.to_string(),
                    shards: 0..shards,
                }],
                capacity: 8,
                sampling: Sampling::greedy(),
            };
            let step = InferFrame::Step {
                pos: 0,
                budget_ms: 10_000,
                draw: 0.0,
                input: Input::Tokens(vec![1]),
            };
            // Both frames in one write: a peer that refuses the session answers `Error` and
            // closes at once, which must still read as an answer.
            let mut bytes = open.to_bytes();
            bytes.extend_from_slice(&step.to_bytes());
            let written = tokio::io::AsyncWriteExt::write_all(&mut s, &bytes).await;
            let _ = tokio::io::AsyncWriteExt::flush(&mut s).await;
            match shardswarm_pipeline::io::read_frame(&mut s).await {
                Ok(Some(f)) => Ok(f),
                Ok(None) => Err(format!("end of stream (write: {written:?})")),
                Err(e) => Err(format!("read: {e} (write: {written:?})")),
            }
        };
        self.drive(op).await.map_err(|e| e.to_string())?
    }

    /// Looks up the providers of `key` in the DHT (through the peers [`Probe::learn`]ed).
    pub async fn providers(&mut self, key: &[u8]) -> Result<Vec<PeerId>> {
        let qid = self
            .swarm
            .behaviour_mut()
            .kad
            .get_providers(RecordKey::new(&key));
        let mut found = Vec::new();
        self.until(OP_LIMIT, |ev| match ev {
            SwarmEvent::Behaviour(ProbeBehaviourEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id, result, step, ..
                },
            )) if *id == qid => {
                if let QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) = result
                {
                    found.extend(providers.iter().copied());
                }
                step.last.then_some(())
            }
            _ => None,
        })
        .await?;
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// Announces this probe as a provider of `key`; how many peers answered the announcement's
    /// requests (kad reports the query as done either way).
    pub async fn provide(&mut self, key: &[u8]) -> Result<u32> {
        let qid = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(RecordKey::new(&key))?;
        self.until(OP_LIMIT, |ev| match ev {
            SwarmEvent::Behaviour(ProbeBehaviourEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id,
                    result: QueryResult::StartProviding(_),
                    stats,
                    step,
                },
            )) if *id == qid && step.last => Some(stats.num_successes()),
            _ => None,
        })
        .await
    }

    /// Whether the probe is connected to `peer` right now.
    pub fn connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }
}
