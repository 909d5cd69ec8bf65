//! `--bt-listen`: accepts BitTorrent clients and serves them what the transfer actor holds.
//!
//! Per connection: the client's handshake names a torrent; the task registers with the actor as
//! an inbound piece stream (`InReady`), asks it for the metadata and our verified pieces
//! (`GetMetadata`, `Interested`), answers the handshake only if the actor has the torrent, then
//! runs a [`Serve`] session: client requests become actor requests, the actor's blocks go out as
//! `piece` messages through the shared upload rate limit.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

use libp2p::PeerId;
use shardswarm_btwire::{Handshake, Message, MessageDecoder, Serve, ServeOutput};
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::wire::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, debug, info, warn};

use super::{
    BtShared, CLIENT, HANDSHAKE_TIMEOUT, KEEPALIVE, READ_IDLE, TARGET, read_handshake,
    write_messages,
};
use crate::transfer::conn::{BLOCK_QUEUE, ConnMsg, Link, WRITE_QUEUE};

/// Inbound ids of BitTorrent connections live above those of libp2p streams.
const ID_BASE: u64 = 1 << 62;

/// Binds `addr` and serves clients from a background task; returns the bound address.
pub(crate) fn listen(addr: SocketAddr, shared: BtShared) -> Result<SocketAddr, String> {
    let std_listener =
        std::net::TcpListener::bind(addr).map_err(|e| format!("--bt-listen {addr}: {e}"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| format!("--bt-listen {addr}: {e}"))?;
    let listener =
        TcpListener::from_std(std_listener).map_err(|e| format!("--bt-listen {addr}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--bt-listen {addr}: {e}"))?;
    info!(target: TARGET, %bound, "BitTorrent wire listening on {bound}");
    tokio::spawn(accept_loop(listener, shared));
    Ok(bound)
}

async fn accept_loop(listener: TcpListener, shared: BtShared) {
    let mut next = 0u64;
    loop {
        let (sock, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(target: TARGET, error = %e, "accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = shared.inbound.clone().try_acquire_owned() else {
            debug!(target: TARGET, %addr, "too many BitTorrent connections; closing");
            continue;
        };
        next += 1;
        let id = ID_BASE | next;
        let shared = shared.clone();
        let span = tracing::info_span!(target: TARGET, "bt_in", %addr);
        tokio::spawn(
            async move {
                let _permit = permit;
                let peer = PeerId::random();
                let reason = match serve_conn(sock, peer, id, &shared).await {
                    Ok(r) | Err(r) => r,
                };
                debug!(target: TARGET, reason, "client connection closed");
                let _ = shared
                    .to_actor
                    .send(ConnMsg::Closed {
                        peer,
                        link: Link::In(id),
                        reason,
                    })
                    .await;
            }
            .instrument(span),
        );
    }
}

/// What the actor said about the torrent a client asked for.
async fn torrent_from_actor(
    ctl: &mut mpsc::Receiver<Frame>,
    info_hash: shardswarm_proto::InfoHash,
) -> Result<(Metainfo, Bitfield), String> {
    let mut info = None;
    let mut bits = None;
    let wait = async {
        while info.is_none() || bits.is_none() {
            match ctl.recv().await {
                Some(Frame::Metadata { info: i, .. }) => info = Some(i),
                Some(Frame::Bitfield { bits: b, .. }) => bits = Some(b),
                Some(Frame::NotHere { .. }) => return Err("torrent not held here".to_owned()),
                Some(_) => {}
                None => return Err("transfer service stopped".to_owned()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, wait)
        .await
        .map_err(|_| "no answer from the transfer service".to_owned())??;
    let (Some(info), Some(bits)) = (info, bits) else {
        return Err("incomplete answer from the transfer service".to_owned());
    };
    let meta = Metainfo::from_info_bytes(&info, Some(info_hash)).map_err(|e| e.to_string())?;
    let have = Bitfield::from_bytes(&bits, meta.piece_count()).map_err(|e| e.to_string())?;
    Ok((meta, have))
}

type SlotWait = Pin<
    Box<
        dyn Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send
            + 'static,
    >,
>;

enum Ev {
    Read(std::io::Result<usize>),
    Control(Option<Frame>),
    Block(Option<Frame>),
    Slot(Option<OwnedSemaphorePermit>),
    Tick,
}

async fn serve_conn(
    sock: TcpStream,
    peer: PeerId,
    id: u64,
    shared: &BtShared,
) -> Result<String, String> {
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let (hs, rest) = read_handshake(&mut rd).await?;
    let ih = hs.info_hash;
    let (tx, mut ctl) = mpsc::channel(WRITE_QUEUE);
    let (blocks, mut block_rx) = mpsc::channel(BLOCK_QUEUE);
    let to_actor = &shared.to_actor;
    let stopped = |_| "transfer service stopped".to_owned();
    to_actor
        .send(ConnMsg::InReady {
            peer,
            id,
            tx,
            blocks,
            // BitTorrent's own cancel is not relayed into the writer; nothing is withdrawn.
            cancelled: Default::default(),
        })
        .await
        .map_err(stopped)?;
    for frame in [
        Frame::GetMetadata { info_hash: ih },
        Frame::Interested { info_hash: ih },
    ] {
        let link = Link::In(id);
        to_actor
            .send(ConnMsg::Frame { peer, link, frame })
            .await
            .map_err(stopped)?;
    }
    let (meta, have) = torrent_from_actor(&mut ctl, ih).await?;
    wr.write_all(&Handshake::new(ih, shared.peer_id).encode())
        .await
        .map_err(|e| e.to_string())?;
    info!(target: TARGET, info_hash = %ih, file = meta.info.name, have = have.count_ones(),
        of = meta.piece_count(), magnet = !hs.supports_extensions(), "serving a BitTorrent client");
    let mut serve = Serve::new(&meta, have, &hs, CLIENT);
    let mut dec = MessageDecoder::new(serve.limits());
    dec.push(&rest);

    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut msgs = Vec::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut slot_wait: Option<SlotWait> = None;
    let mut block_done = false;
    let mut last_read = Instant::now();
    let mut last_write = Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        // Decode everything buffered before waiting again.
        while let Some(m) = dec.next_message().map_err(|e| e.to_string())? {
            serve.on_message(m).map_err(|e| e.to_string())?;
        }
        if permit.is_some() && !serve.holds_slot() {
            permit = None;
        }
        if serve.wants_slot() {
            if slot_wait.is_none() {
                slot_wait = Some(Box::pin(shared.slots.clone().acquire_owned()));
            }
        } else {
            slot_wait = None;
        }
        flush(&mut serve, &mut msgs, peer, id, shared).await?;
        if !msgs.is_empty() {
            let limit = &shared.upload_limit;
            write_messages(&mut wr, &msgs, limit, Some(&shared.metrics), &mut out)
                .await
                .map_err(|e| e.to_string())?;
            msgs.clear();
            last_write = Instant::now();
        }
        if block_done {
            // The block went out (or was dropped after a choke): its upload slot has room.
            block_done = false;
            to_actor
                .send(ConnMsg::BlockSent { id })
                .await
                .map_err(stopped)?;
        }
        let ev = tokio::select! {
            r = rd.read(&mut buf) => Ev::Read(r),
            f = ctl.recv() => Ev::Control(f),
            f = block_rx.recv() => Ev::Block(f),
            p = async {
                match slot_wait.as_mut() {
                    Some(w) => w.await.ok(),
                    None => std::future::pending().await,
                }
            } => Ev::Slot(p),
            _ = tick.tick() => Ev::Tick,
        };
        match ev {
            Ev::Read(Ok(0)) => return Ok("closed by the client".to_owned()),
            Ev::Read(Ok(n)) => {
                dec.push(&buf[..n]);
                last_read = Instant::now();
            }
            Ev::Read(Err(e)) => return Err(e.to_string()),
            Ev::Control(None) | Ev::Block(None) => return Ok("transfer service stopped".into()),
            Ev::Control(Some(f)) => serve.on_frame(f).map_err(|e| e.to_string())?,
            Ev::Block(Some(f)) => {
                serve.on_frame(f).map_err(|e| e.to_string())?;
                block_done = true;
            }
            Ev::Slot(p) => {
                slot_wait = None;
                if let Some(p) = p {
                    permit = Some(p);
                    serve.unchoke();
                    debug!(target: TARGET, "client unchoked");
                }
            }
            Ev::Tick => {
                if last_read.elapsed() > READ_IDLE {
                    return Ok("idle".to_owned());
                }
                if last_write.elapsed() > KEEPALIVE {
                    msgs.push(Message::KeepAlive);
                }
            }
        }
    }
}

/// Moves the session's output: frames to the actor now, messages into `msgs` (appended to
/// what is already there) for the caller to write.
async fn flush(
    serve: &mut Serve,
    msgs: &mut Vec<Message>,
    peer: PeerId,
    id: u64,
    shared: &BtShared,
) -> Result<(), String> {
    while let Some(o) = serve.poll_output() {
        match o {
            ServeOutput::Peer(m) => msgs.push(m),
            ServeOutput::Engine(frame) => shared
                .to_actor
                .send(ConnMsg::Frame {
                    peer,
                    link: Link::In(id),
                    frame,
                })
                .await
                .map_err(|_| "transfer service stopped".to_owned())?,
        }
    }
    Ok(())
}
