//! The libp2p adapter of the inference pipeline: loaded stages, the stage server behind the
//! `/shardswarm/infer/1.0.0` protocol, a [`Dialer`] on libp2p streams and the route source
//! (holders from the swarm status, latency from ping) for this peer's gateway.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use libp2p::{PeerId, StreamProtocol};
use shardswarm_model::Stage;
use shardswarm_pipeline::{
    BoxStream, Client, ClientConfig, Dialer, PROTOCOL, RouteSource, RouteView, StageLimits,
    StageServer, StageSource,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, warn};

use crate::handle::Request;

const TARGET: &str = "shardswarm::pipeline";

/// The stages this peer has loaded, by shard index.
#[derive(Debug, Default)]
pub struct StageRegistry(RwLock<HashMap<u32, Arc<Stage>>>);

impl StageRegistry {
    /// Adds (or replaces) the stage of `shard`.
    pub fn insert(&self, shard: u32, stage: Arc<Stage>) {
        if let Ok(mut m) = self.0.write() {
            m.insert(shard, stage);
        }
    }

    /// The shards loaded here.
    pub fn shards(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .0
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }
}

impl StageSource for StageRegistry {
    fn stage(&self, shard: u32) -> Option<Arc<Stage>> {
        self.0.read().ok().and_then(|m| m.get(&shard).cloned())
    }
}

/// Round-trip times measured by ping.
pub(crate) type Rtts = Arc<RwLock<HashMap<PeerId, Duration>>>;

/// Opens inference streams over libp2p; a stream to this peer itself is an in-memory pipe
/// served by the local stage server.
struct NodeDialer {
    control: libp2p_stream::Control,
    local: PeerId,
    server: OnceLock<Weak<StageServer>>,
}

impl Dialer for NodeDialer {
    fn open(&self, peer: &str) -> BoxFuture<'_, Result<BoxStream, String>> {
        let peer = peer.to_owned();
        Box::pin(async move {
            let id: PeerId = peer
                .parse()
                .map_err(|e| format!("bad peer id {peer}: {e}"))?;
            if id == self.local {
                let server = self
                    .server
                    .get()
                    .and_then(Weak::upgrade)
                    .ok_or("this peer's stage server is gone")?;
                let (a, b) = tokio::io::duplex(1 << 20);
                tokio::spawn(async move { server.serve(Box::new(b)).await });
                return Ok(Box::new(a) as BoxStream);
            }
            let mut control = self.control.clone();
            let stream = control
                .open_stream(id, StreamProtocol::new(PROTOCOL))
                .await
                .map_err(|e| format!("cannot open an inference stream to {peer}: {e}"))?;
            Ok(Box::new(stream.compat()) as BoxStream)
        })
    }
}

/// Holders from this peer's swarm status, latency from ping.
struct SwarmRoutes {
    tx: mpsc::WeakSender<Request>,
    rtts: Rtts,
}

impl RouteSource for SwarmRoutes {
    fn view(&self) -> BoxFuture<'_, RouteView> {
        Box::pin(async move {
            let Some(tx) = self.tx.upgrade() else {
                return RouteView::default();
            };
            let (reply, rx) = oneshot::channel();
            if tx.send(Request::RouteStatus(reply)).await.is_err() {
                return RouteView::default();
            }
            let Ok(status) = rx.await else {
                return RouteView::default();
            };
            RouteView {
                total_shards: status.total_shards,
                holders: status
                    .shards
                    .into_iter()
                    .map(|s| (s.index, s.loaded_by))
                    .collect(),
            }
        })
    }

    fn latency(&self, peer: &str) -> Option<Duration> {
        let id: PeerId = peer.parse().ok()?;
        self.rtts.read().ok()?.get(&id).copied()
    }
}

/// This peer's side of the pipeline: its stage server and its gateway client.
#[derive(Debug)]
pub struct Inference {
    /// The stages loaded here.
    pub stages: Arc<StageRegistry>,
    /// Serves sessions for other peers (and this one).
    pub server: Arc<StageServer>,
    /// Runs generations over the swarm (used by this peer's HTTP gateway).
    pub client: Arc<Client>,
}

impl Inference {
    /// Wires the stage server to libp2p (accepting the protocol) and builds the client.
    pub(crate) fn start(
        mut control: libp2p_stream::Control,
        local: PeerId,
        tx: mpsc::WeakSender<Request>,
        rtts: Rtts,
        limits: StageLimits,
    ) -> Result<Arc<Self>, String> {
        let mut incoming = control
            .accept(StreamProtocol::new(PROTOCOL))
            .map_err(|e| format!("cannot accept {PROTOCOL}: {e}"))?;
        let stages = Arc::new(StageRegistry::default());
        let dialer = Arc::new(NodeDialer {
            control,
            local,
            server: OnceLock::new(),
        });
        let server = Arc::new(StageServer::new(
            local.to_string(),
            stages.clone(),
            dialer.clone(),
            limits,
        ));
        if dialer.server.set(Arc::downgrade(&server)).is_err() {
            warn!(target: TARGET, "stage server set twice");
        }
        let accept_server = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Some((peer, stream)) = incoming.next().await {
                let Some(server) = accept_server.upgrade() else {
                    break;
                };
                debug!(target: TARGET, %peer, "inference stream");
                tokio::spawn(async move { server.serve(Box::new(stream.compat())).await });
            }
        });
        let routes = Arc::new(SwarmRoutes { tx, rtts });
        let client = Arc::new(Client::new(dialer, routes, ClientConfig::default()));
        Ok(Arc::new(Self {
            stages,
            server,
            client,
        }))
    }
}
