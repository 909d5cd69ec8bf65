//! The piece transfer service: downloads shards piece by piece from the server and from other
//! nodes at once, and serves the pieces this peer holds (also of files still downloading).
//!
//! One actor task owns every torrent's sans-IO [`Download`](shardswarm_torrent::download) engine
//! and [`PieceStore`](shardswarm_torrent::storage::PieceStore); stream tasks (`conn`) only move
//! frames. The event loop feeds it peers and shards to fetch or seed, and hears back when a
//! shard is complete.

mod actor;
pub(crate) mod conn;
pub mod paths;
pub mod rate;

use std::path::PathBuf;

use libp2p::PeerId;
use shardswarm_proto::{DownloadProgress, FileEntry, InfoHash};
use shardswarm_torrent::metainfo::Metainfo;
use tokio::sync::mpsc;

pub(crate) use actor::spawn;
pub(crate) use paths::PathCaps;
pub use rate::{Rate, RateLimiter};

/// Limits of the transfer service.
#[derive(Debug, Clone, Default)]
pub struct TransferConfig {
    /// Cap on payload bytes sent per second (`--upload-limit`).
    pub upload_limit: Option<Rate>,
    /// Cap on payload bytes received per second (`--download-limit`).
    pub download_limit: Option<Rate>,
    /// Download only from the server, never from other nodes (`--fetch-from server`): the star
    /// baseline of the distribution benchmark, or a node that trusts only the server.
    pub server_only: bool,
    /// Also serve every held torrent over the standard BitTorrent wire on this TCP address
    /// (`--bt-listen`).
    pub bt_listen: Option<std::net::SocketAddr>,
    /// Also download from these BitTorrent clients (`--bt-peer`).
    pub bt_peers: Vec<std::net::SocketAddr>,
    /// Cap on payload bytes per second, each direction, over connections relayed through the
    /// server's circuit relay (`--relayed-limit`); none: uncapped. Direct connections (also
    /// hole-punched ones) are never under it.
    pub relayed_limit: Option<Rate>,
}

/// What the event loop asks of the transfer service.
#[derive(Debug)]
pub(crate) enum TransferCmd {
    /// A shardswarm peer is connected (and identified).
    PeerUp { peer: PeerId, is_server: bool },
    /// It is gone.
    PeerDown { peer: PeerId },
    /// Serve this complete file.
    Seed {
        entry: FileEntry,
        path: PathBuf,
        meta: Metainfo,
    },
    /// Download this shard into `dir` (final name `entry.filename`).
    Fetch {
        entry: FileEntry,
        dir: PathBuf,
        meta: Option<Metainfo>,
    },
}

/// What the transfer service tells the event loop.
#[derive(Debug)]
pub(crate) enum TransferEvent {
    /// The first verified piece of a torrent: time to announce it in the DHT.
    Providing { info_hash: InfoHash },
    /// A shard is complete, verified and moved into place.
    Complete { entry: FileEntry, path: PathBuf },
    /// A download cannot go on.
    Failed { entry: FileEntry, reason: String },
    /// A peer was banned (corrupt data or metadata, protocol violation).
    Banned { peer: PeerId, reason: String },
    /// Progress of every running download (sent at most every 500 ms, and when one ends).
    Progress(Vec<DownloadProgress>),
}

/// The event loop's end of the service.
#[derive(Debug, Clone)]
pub(crate) struct TransferHandle {
    pub(crate) tx: mpsc::Sender<TransferCmd>,
    /// Where the BitTorrent listener is bound (`--bt-listen`).
    pub(crate) bt_addr: Option<std::net::SocketAddr>,
}

impl TransferHandle {
    /// Queues a command; a full queue is logged, never blocks the event loop.
    pub(crate) fn send(&self, cmd: TransferCmd) {
        if let Err(e) = self.tx.try_send(cmd) {
            tracing::warn!(target: "shardswarm::pieces", error = %e, "transfer service queue full");
        }
    }
}

/// Events the event loop reads.
pub(crate) type TransferEvents = mpsc::Receiver<TransferEvent>;
