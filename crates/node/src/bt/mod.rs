//! The BitTorrent wire adapter: plain TCP connections to and from regular BitTorrent clients,
//! moved through the sans-IO sessions of `shardswarm_btwire` and joined to the transfer actor as
//! if they were piece-protocol streams (`ConnMsg`), so the same engine, store, SHA-1 checks,
//! bans and rate limits apply.
//!
//! - `inbound`: the `--bt-listen` listener; one task per accepted client, serving every torrent
//!   the actor holds (complete files and verified pieces of partial ones, metadata for magnets).
//!   Clients are unchoked while interested, up to [`UPLOAD_SLOTS`] at a time.
//! - `outbound`: one task per `--bt-peer` address and torrent being downloaded, presented to the
//!   actor as one more (synthetic) peer of the download; it reconnects with back-off until the
//!   download ends.
//!
//! Each connection gets a random libp2p `PeerId` as its key in the actor (never dialled: BT
//! peers are not in the actor's libp2p peer set). Connections we accept only upload; connections
//! we open only download.

mod inbound;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use shardswarm_btwire::{HANDSHAKE_LEN, Handshake, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

pub(crate) use inbound::listen;
pub(crate) use outbound::spawn_fetch;

use crate::metrics::Metrics;
use crate::transfer::RateLimiter;
use crate::transfer::conn::ConnMsg;

/// Log target of this adapter.
pub(crate) const TARGET: &str = "shardswarm::bt";
/// Our client name in extended handshakes.
const CLIENT: &str = concat!("shardswarm/", env!("CARGO_PKG_VERSION"));
/// Clients unchoked at once (the upload slots of the BitTorrent side).
pub(crate) const UPLOAD_SLOTS: usize = 8;
/// Accepted client connections at once; more are closed right away.
const MAX_INBOUND: usize = 64;
/// Time for a handshake (and, inbound, for the actor to answer about the torrent).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A keep-alive goes out after this long without writing.
const KEEPALIVE: Duration = Duration::from_secs(90);
/// A connection silent this long is closed (clients send keep-alives every two minutes).
const READ_IDLE: Duration = Duration::from_secs(240);

/// What every BitTorrent connection task shares.
#[derive(Debug, Clone)]
pub(crate) struct BtShared {
    pub(crate) to_actor: mpsc::Sender<ConnMsg>,
    pub(crate) upload_limit: RateLimiter,
    pub(crate) download_limit: RateLimiter,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) peer_id: [u8; 20],
    slots: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
}

impl BtShared {
    /// Shared state with a fresh random peer id.
    pub(crate) fn new(
        to_actor: mpsc::Sender<ConnMsg>,
        upload_limit: RateLimiter,
        download_limit: RateLimiter,
        metrics: Arc<Metrics>,
    ) -> BtShared {
        let key = libp2p::PeerId::random().to_bytes();
        let mut random = [0u8; 12];
        let tail = &key[key.len().saturating_sub(12)..];
        random[..tail.len()].copy_from_slice(tail);
        BtShared {
            to_actor,
            upload_limit,
            download_limit,
            metrics,
            peer_id: shardswarm_btwire::peer_id(random),
            slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            inbound: Arc::new(Semaphore::new(MAX_INBOUND)),
        }
    }
}

/// Reads the remote's handshake (refusing a foreign protocol from its first bytes); returns it
/// and whatever arrived after it.
async fn read_handshake(
    rd: &mut (impl AsyncRead + Unpin),
) -> Result<(Handshake, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some(h) = Handshake::decode(&buf).map_err(|e| e.to_string())? {
                let rest = buf.split_off(HANDSHAKE_LEN);
                return Ok((h, rest));
            }
            if buf.len() >= 1024 {
                return Err("handshake too long".to_owned());
            }
            let n = rd.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed during the handshake".to_owned());
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, read)
        .await
        .map_err(|_| "no handshake".to_owned())?
}

/// Writes `msgs` in one go; a `piece` first takes its bytes from `limit` and counts towards
/// `uploaded` once written.
async fn write_messages(
    wr: &mut (impl AsyncWrite + Unpin),
    msgs: &[Message],
    limit: &RateLimiter,
    uploaded: Option<&Metrics>,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    let mut payload = 0usize;
    for m in msgs {
        if let Message::Piece { data, .. } = m {
            limit.acquire(data.len()).await;
            payload += data.len();
        }
        m.encode(out);
    }
    if out.is_empty() {
        return Ok(());
    }
    wr.write_all(out).await?;
    if let (Some(metrics), true) = (uploaded, payload > 0) {
        metrics.uploaded(payload as u64);
    }
    Ok(())
}
