//! `--bt-peer`: downloads a torrent from a regular BitTorrent client.
//!
//! One task per (address, torrent), started by the transfer actor once the torrent's metadata is
//! known. It tells the actor its stream is ready at once (so the actor sends `Interested` as to
//! any peer), then connects, runs a [`Fetch`] session over the connection, and reconnects with
//! back-off when the connection drops; meanwhile the engine does not count it as a peer. It ends
//! when the actor drops its sender (download complete, or the peer banned).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shardswarm_btwire::{Fetch, FetchOutput, Handshake, Message, MessageDecoder};
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::wire::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info};

use super::{
    BtShared, CLIENT, HANDSHAKE_TIMEOUT, KEEPALIVE, READ_IDLE, TARGET, read_handshake,
    write_messages,
};
use crate::transfer::RateLimiter;
use crate::transfer::conn::{ConnMsg, Link, WRITE_QUEUE};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts downloading `meta` from the client at `addr`; returns the peer key the actor knows
/// it by and the sender of its "download stream".
pub(crate) fn spawn_fetch(
    addr: SocketAddr,
    meta: &Metainfo,
    shared: BtShared,
) -> (PeerId, mpsc::Sender<Frame>) {
    let peer = PeerId::random();
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let span = tracing::info_span!(target: TARGET, "bt_out", %addr, info_hash = %meta.info_hash());
    info!(target: TARGET, %addr, %peer, file = meta.info.name, "fetching from BitTorrent peer {addr}");
    tokio::spawn(run(addr, peer, Fetch::new(meta), shared, rx).instrument(span));
    (peer, tx)
}

/// How a connection ended.
enum End {
    /// The actor dropped us: stop for good.
    Stopped,
    /// The connection failed; try again later.
    Closed(String),
}

async fn run(
    addr: SocketAddr,
    peer: PeerId,
    mut fetch: Fetch,
    shared: BtShared,
    mut rx: mpsc::Receiver<Frame>,
) {
    let to_actor = shared.to_actor.clone();
    if to_actor.send(ConnMsg::OutReady { peer }).await.is_err() {
        return;
    }
    let mut backoff = FIRST_BACKOFF;
    let reason = 'outer: loop {
        match connect(addr, &fetch, shared.peer_id).await {
            Ok((rd, wr, hs, rest)) => match fetch.connected(&hs, CLIENT) {
                Ok(()) => {
                    info!(target: TARGET, %addr, "connected to BitTorrent peer {addr}");
                    backoff = FIRST_BACKOFF;
                    let end = pump(rd, wr, rest, &mut fetch, peer, &shared, &mut rx).await;
                    fetch.disconnected();
                    if forward(&mut fetch, peer, &shared, None).await.is_err() {
                        break "transfer service stopped".to_owned();
                    }
                    match end {
                        End::Stopped => break "download over".to_owned(),
                        End::Closed(reason) => {
                            info!(target: TARGET, %addr, reason, "BitTorrent peer connection lost")
                        }
                    }
                }
                Err(e) => debug!(target: TARGET, %addr, error = %e, "refused handshake"),
            },
            Err(e) => debug!(target: TARGET, %addr, error = e, "cannot connect"),
        }
        // Wait, still answering the actor (requests are refused while disconnected).
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                f = rx.recv() => match f {
                    None => break 'outer "download over".to_owned(),
                    Some(f) => {
                        fetch.on_frame(f);
                        if forward(&mut fetch, peer, &shared, None).await.is_err() {
                            break 'outer "transfer service stopped".to_owned();
                        }
                    }
                },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    debug!(target: TARGET, %addr, reason, "BitTorrent fetch task ends");
    let _ = to_actor
        .send(ConnMsg::Closed {
            peer,
            link: Link::Out,
            reason,
        })
        .await;
}

async fn connect(
    addr: SocketAddr,
    fetch: &Fetch,
    peer_id: [u8; 20],
) -> Result<(OwnedReadHalf, OwnedWriteHalf, Handshake, bytes::BytesMut), String> {
    let sock = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    wr.write_all(&Handshake::new(fetch.info_hash(), peer_id).encode())
        .await
        .map_err(|e| e.to_string())?;
    let (hs, rest) = read_handshake(&mut rd).await?;
    Ok((rd, wr, hs, rest))
}

/// Moves the session's output: frames to the actor, messages into `msgs` when connected
/// (dropped otherwise: nothing is due to a client we are not connected to).
async fn forward(
    fetch: &mut Fetch,
    peer: PeerId,
    shared: &BtShared,
    mut msgs: Option<&mut Vec<Message>>,
) -> Result<(), ()> {
    while let Some(o) = fetch.poll_output() {
        match o {
            FetchOutput::Peer(m) => {
                if let Some(msgs) = msgs.as_deref_mut() {
                    msgs.push(m);
                }
            }
            FetchOutput::Engine(frame) => shared
                .to_actor
                .send(ConnMsg::Frame {
                    peer,
                    link: Link::Out,
                    frame,
                })
                .await
                .map_err(|_| ())?,
        }
    }
    Ok(())
}

enum Ev {
    Read(std::io::Result<usize>),
    Frame(Option<Frame>),
    Tick,
}

/// Runs one connection until it fails or the actor lets go.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    rest: bytes::BytesMut,
    fetch: &mut Fetch,
    peer: PeerId,
    shared: &BtShared,
    rx: &mut mpsc::Receiver<Frame>,
) -> End {
    let mut dec = MessageDecoder::new(fetch.limits());
    dec.push(&rest);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut msgs = Vec::new();
    let no_limit = RateLimiter::default();
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        loop {
            let m = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return End::Closed(e.to_string()),
            };
            if let Message::Piece { data, .. } = &m {
                shared.download_limit.acquire(data.len()).await;
            }
            if let Err(e) = fetch.on_message(m) {
                return End::Closed(e.to_string());
            }
        }
        if forward(fetch, peer, shared, Some(&mut msgs)).await.is_err() {
            return End::Stopped;
        }
        if !msgs.is_empty() {
            if let Err(e) = write_messages(&mut wr, &msgs, &no_limit, None, &mut out).await {
                return End::Closed(e.to_string());
            }
            msgs.clear();
            last_write = Instant::now();
        }
        let ev = tokio::select! {
            r = rd.read(&mut buf) => Ev::Read(r),
            f = rx.recv() => Ev::Frame(f),
            _ = tick.tick() => Ev::Tick,
        };
        match ev {
            Ev::Read(Ok(0)) => return End::Closed("closed by the peer".to_owned()),
            Ev::Read(Ok(n)) => {
                dec.push(&buf[..n]);
                last_read = Instant::now();
            }
            Ev::Read(Err(e)) => return End::Closed(e.to_string()),
            Ev::Frame(None) => return End::Stopped,
            Ev::Frame(Some(f)) => fetch.on_frame(f),
            Ev::Tick => {
                if last_read.elapsed() > READ_IDLE {
                    return End::Closed("idle".to_owned());
                }
                if last_write.elapsed() > KEEPALIVE {
                    msgs.push(Message::KeepAlive);
                }
            }
        }
    }
}
