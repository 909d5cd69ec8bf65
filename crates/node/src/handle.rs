//! The cloneable handle to a running peer, and the events it broadcasts.
//!
//! As in rust-libp2p's file-sharing example: typed requests with `oneshot` replies go into the
//! event loop that owns the `Swarm`; no JSON between internal components.

use libp2p::{Multiaddr, PeerId};
use shardswarm_proto::{ConnectedPeer, ErrorCode, FileEntry, NodeStatus, Response, SwarmStatus};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::metrics::Metrics;

/// Something that happened in a peer, for tests, the CLI and the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection to the server is up.
    ConnectedToServer {
        /// The server's peer ID.
        server: PeerId,
    },
    /// `SYNC_TORRENTS` was sent.
    SyncSent {
        /// Receiver.
        to: PeerId,
        /// The envelope's `request_id`.
        request_id: String,
    },
    /// A catalog arrived.
    CatalogReceived {
        /// Sender.
        from: PeerId,
        /// The model id.
        model_id: String,
        /// The files.
        files: Vec<FileEntry>,
    },
    /// The node compared the catalog with its disk.
    SyncDecision {
        /// The model id.
        model_id: String,
        /// Shards wanted and present, verified.
        present: Vec<u32>,
        /// Shards wanted and missing.
        missing: Vec<u32>,
    },
    /// A command request was answered.
    RequestServed {
        /// The sender.
        peer: PeerId,
        /// The command name as sent.
        command: String,
        /// `None` on success, else the error code sent back.
        error: Option<ErrorCode>,
    },
    /// A shard is complete and verified on disk.
    ShardVerified {
        /// Its index.
        index: u32,
    },
    /// A shard is loaded (opened as GGUF) and served.
    ShardLoaded {
        /// Its index.
        index: u32,
    },
    /// The server's view of readiness flipped.
    SwarmReady {
        /// Ready or not.
        ready: bool,
    },
    /// A peer was banned by the piece engine.
    PeerBanned {
        /// The peer.
        peer: PeerId,
    },
    /// Another shardswarm node became known (rendezvous, identify or DHT).
    PeerDiscovered {
        /// Its peer ID.
        peer: PeerId,
    },
}

/// Why a request through the handle failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The peer's event loop has stopped.
    #[error("the peer has shut down")]
    Stopped,
    /// The request failed on the network.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The remote.
        peer: PeerId,
        /// libp2p's reason.
        reason: String,
    },
}

/// Requests from handles to the event loop.
#[derive(Debug)]
pub(crate) enum Request {
    SwarmStatus(oneshot::Sender<SwarmStatus>),
    NodeStatus(oneshot::Sender<NodeStatus>),
    Peers(oneshot::Sender<Vec<ConnectedPeer>>),
    SendRaw {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, HandleError>>,
    },
    Dial(Multiaddr, oneshot::Sender<Result<(), HandleError>>),
    /// The swarm status used for routing: the server's own; a node asks the server.
    RouteStatus(oneshot::Sender<SwarmStatus>),
    /// A local file with the model's metadata (any shard), with the model's name and id.
    ModelFile(oneshot::Sender<Option<ModelFile>>),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to a running server or node.
#[derive(Debug, Clone)]
pub struct Handle {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) listen: watch::Receiver<Option<Vec<Multiaddr>>>,
    pub(crate) peer_id: PeerId,
    pub(crate) metrics: std::sync::Arc<Metrics>,
    pub(crate) inference: std::sync::Arc<crate::inference::Inference>,
    /// Where the BitTorrent wire listener is bound (`--bt-listen`).
    pub(crate) bt_listen: Option<std::net::SocketAddr>,
}

/// A local GGUF file carrying the model's metadata (tokenizer, template, configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFile {
    /// The file (a shard of the swarm's model).
    pub path: std::path::PathBuf,
    /// The model name (`general.name` or the manifest's).
    pub model: String,
    /// The model id.
    pub model_id: String,
}

impl Handle {
    /// The address the BitTorrent wire listener is bound to (`--bt-listen`), if any.
    pub fn bt_listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.bt_listen
    }

    /// This peer's ID.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This peer's side of the inference pipeline.
    pub fn inference(&self) -> &std::sync::Arc<crate::inference::Inference> {
        &self.inference
    }

    /// The swarm status to route by (a node asks the server, falling back to its own view).
    pub async fn route_status(&self) -> Result<SwarmStatus, HandleError> {
        self.ask(Request::RouteStatus).await
    }

    /// A local file with the model's metadata, once this peer has one.
    pub async fn model_file(&self) -> Result<Option<ModelFile>, HandleError> {
        self.ask(Request::ModelFile).await
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The metrics registry of this peer.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Waits until every listener is up and returns the addresses, each ending in `/p2p/<id>`,
    /// QUIC first.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, HandleError> {
        let mut rx = self.listen.clone();
        let got = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| HandleError::Stopped)?;
        Ok(got.clone().unwrap_or_default())
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, HandleError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| HandleError::Stopped)?;
        rx.await.map_err(|_| HandleError::Stopped)
    }

    /// The swarm as this peer sees it.
    pub async fn swarm_status(&self) -> Result<SwarmStatus, HandleError> {
        self.ask(Request::SwarmStatus).await
    }

    /// This peer's own state.
    pub async fn node_status(&self) -> Result<NodeStatus, HandleError> {
        self.ask(Request::NodeStatus).await
    }

    /// The peers this peer is connected to: role, transport in use, addresses, ping RTT.
    pub async fn peers(&self) -> Result<Vec<ConnectedPeer>, HandleError> {
        self.ask(Request::Peers).await
    }

    /// Sends raw request bytes on the command protocol and returns the raw response.
    pub async fn send_raw(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, HandleError> {
        self.ask(|reply| Request::SendRaw { peer, bytes, reply })
            .await?
    }

    /// Sends raw request bytes and decodes the response envelope.
    pub async fn send_raw_decoded(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<Response, HandleError> {
        let bytes = self.send_raw(peer, bytes).await?;
        shardswarm_proto::codec::decode_response(&bytes).map_err(|e| HandleError::Request {
            peer,
            reason: e.to_string(),
        })
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), HandleError> {
        self.ask(|reply| Request::Dial(addr, reply)).await?
    }

    /// Stops the peer: connections close and the event loop ends.
    pub async fn shutdown(&self) {
        let _ = self.ask(Request::Shutdown).await;
    }
}
