//! Stream tasks of the piece protocol: one long-lived outbound stream per remote we download
//! from, and the inbound streams of remotes downloading from us. They only move frames; every
//! decision is the transfer actor's.
//!
//! libp2p-stream can drop an inbound stream when several arrive at once (FIELD-NOTES), so an
//! outbound stream counts as open only after the remote's `Hello` came back; an EOF before that
//! is retried a bounded number of times.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use shardswarm_torrent::wire::{Frame, FrameDecoder};
use tokio::sync::mpsc;
use tracing::debug;

use super::paths::{PathCaps, StreamPath};
use super::rate::RateLimiter;
use crate::metrics::Metrics;

/// Protocol id of the piece protocol.
pub(crate) const PIECES_PROTOCOL: StreamProtocol = StreamProtocol::new("/shardswarm/pieces/1.0.0");
/// Version in our `Hello`.
const VERSION: u16 = 1;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const OPEN_ATTEMPTS: u32 = 4;
/// Control frames queued towards one remote.
pub(crate) const WRITE_QUEUE: usize = 64;
/// Blocks queued towards one downloader (its upload slot): past this it gets `Reject(Choked)`
/// and turns to other peers, so one peer cannot claim the whole uplink.
pub(crate) const BLOCK_QUEUE: usize = 4;

/// Which stream a frame came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Link {
    /// Our download stream to the remote.
    Out,
    /// The remote's download stream to us (its id).
    In(u64),
}

/// Request ids of one inbound stream that were cancelled after their block was handed to the
/// writer: the writer drops such a block instead of sending it (a `Cancel` that arrives while
/// the block waits for upload tokens still saves the bytes).
#[derive(Debug, Clone, Default)]
pub(crate) struct CancelledIds(Arc<Mutex<HashSet<u64>>>);

impl CancelledIds {
    /// Most ids remembered: ids whose block already went out are never taken, so the set is
    /// cleared when it reaches this (forgetting only lets a few cancelled blocks go out).
    const CAP: usize = 256;

    /// Marks request `id` cancelled.
    pub(crate) fn insert(&self, id: u64) {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if set.len() >= Self::CAP {
            set.clear();
        }
        set.insert(id);
    }

    /// Whether `id` was cancelled (and forgets it).
    pub(crate) fn take(&self, id: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }
}

/// What stream tasks tell the actor.
#[derive(Debug)]
pub(crate) enum ConnMsg {
    /// Our outbound stream is up (Hello exchanged).
    OutReady { peer: PeerId },
    /// A block of inbound stream `id` was written: its upload slot has room again.
    BlockSent { id: u64 },
    /// An inbound stream is up; control frames for it go to `tx`, blocks to `blocks`, and
    /// requests cancelled once their block is queued to `cancelled`.
    InReady {
        peer: PeerId,
        id: u64,
        tx: mpsc::Sender<Frame>,
        blocks: mpsc::Sender<Frame>,
        cancelled: CancelledIds,
    },
    /// A frame arrived.
    Frame {
        peer: PeerId,
        link: Link,
        frame: Frame,
    },
    /// The stream ended (or never opened).
    Closed {
        peer: PeerId,
        link: Link,
        reason: String,
    },
}

async fn read_frame(
    stream: &mut (impl futures::AsyncRead + Unpin),
    dec: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<Option<Frame>, String> {
    loop {
        if let Some(f) = dec.next_frame().map_err(|e| e.to_string())? {
            return Ok(Some(f));
        }
        let n = stream.read(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(None);
        }
        dec.push(&buf[..n]);
    }
}

async fn write_frame(
    stream: &mut (impl futures::AsyncWrite + Unpin),
    frame: &Frame,
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    out.clear();
    frame.encode(out);
    stream.write_all(out).await?;
    stream.flush().await
}

fn payload_len(frame: &Frame) -> usize {
    match frame {
        Frame::Piece { data, .. } => data.len(),
        _ => 0,
    }
}

/// Opens our download stream to `peer`, exchanges Hello, then pumps frames both ways.
pub(crate) async fn run_outbound(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    to_actor: mpsc::Sender<ConnMsg>,
    mut rx: mpsc::Receiver<Frame>,
    download_limit: RateLimiter,
    paths: PathCaps,
) {
    let mut last_err = String::new();
    let mut opened = None;
    for attempt in 0..OPEN_ATTEMPTS {
        match open_and_greet(&mut control, peer).await {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(e) => {
                debug!(target: "shardswarm::pieces", %peer, attempt, error = e, "stream open failed");
                last_err = e;
            }
        }
    }
    let Some((stream, dec)) = opened else {
        let _ = to_actor
            .send(ConnMsg::Closed {
                peer,
                link: Link::Out,
                reason: last_err,
            })
            .await;
        return;
    };
    if to_actor.send(ConnMsg::OutReady { peer }).await.is_err() {
        return;
    }
    let path = paths.stream(&peer);
    debug!(target: "shardswarm::pieces", %peer, relayed = path.relayed(), "download stream open");
    let pump = Pump {
        peer,
        link: Link::Out,
        to_actor: &to_actor,
        read_limit: download_limit,
        write_limit: RateLimiter::default(),
        uploads: None,
        path,
        cancelled: None,
    };
    let reason = pump.run(stream, dec, &mut rx, None).await;
    let _ = to_actor
        .send(ConnMsg::Closed {
            peer,
            link: Link::Out,
            reason,
        })
        .await;
}

async fn open_and_greet(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
) -> Result<(Stream, FrameDecoder), String> {
    let mut stream = control
        .open_stream(peer, PIECES_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    write_frame(&mut stream, &Frame::Hello { version: VERSION }, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let first = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, &mut dec, &mut buf))
        .await
        .map_err(|_| "no hello".to_owned())??;
    match first {
        Some(Frame::Hello { .. }) => Ok((stream, dec)),
        // The type only: a hostile first frame may be an 8 MiB block (40 MB as Debug text).
        Some(other) => Err(format!(
            "expected hello, got frame type {}",
            other.type_byte()
        )),
        None => Err("stream closed before hello".into()),
    }
}

/// Accepts inbound piece streams for as long as the transfer service lives.
pub(crate) async fn accept_loop(
    mut incoming: libp2p_stream::IncomingStreams,
    to_actor: mpsc::Sender<ConnMsg>,
    upload_limit: RateLimiter,
    metrics: Arc<Metrics>,
    paths: PathCaps,
) {
    let mut next_id = 0u64;
    while let Some((peer, stream)) = incoming.next().await {
        next_id += 1;
        let id = next_id;
        let to_actor = to_actor.clone();
        let limits = (upload_limit.clone(), paths.stream(&peer));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let reason = match serve_inbound(stream, peer, id, &to_actor, limits, &metrics).await {
                Ok(r) | Err(r) => r,
            };
            let _ = to_actor
                .send(ConnMsg::Closed {
                    peer,
                    link: Link::In(id),
                    reason,
                })
                .await;
        });
    }
}

async fn serve_inbound(
    mut stream: Stream,
    peer: PeerId,
    id: u64,
    to_actor: &mpsc::Sender<ConnMsg>,
    (upload_limit, path): (RateLimiter, StreamPath),
    metrics: &Metrics,
) -> Result<String, String> {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream, &mut dec, &mut buf)).await {
        Ok(Ok(Some(Frame::Hello { .. }))) => {}
        Ok(Ok(Some(other))) => {
            return Err(format!(
                "expected hello, got frame type {}",
                other.type_byte()
            ));
        }
        Ok(Ok(None)) => return Err("stream closed before hello".into()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("no hello".into()),
    }
    let mut out = Vec::new();
    write_frame(&mut stream, &Frame::Hello { version: VERSION }, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel(WRITE_QUEUE);
    let (blocks, mut block_rx) = mpsc::channel(BLOCK_QUEUE);
    let cancelled = CancelledIds::default();
    to_actor
        .send(ConnMsg::InReady {
            peer,
            id,
            tx,
            blocks,
            cancelled: cancelled.clone(),
        })
        .await
        .map_err(|_| "transfer service stopped".to_owned())?;
    let pump = Pump {
        peer,
        link: Link::In(id),
        to_actor,
        read_limit: RateLimiter::default(),
        write_limit: upload_limit,
        uploads: Some(metrics),
        path,
        cancelled: Some(cancelled),
    };
    Ok(pump.run(stream, dec, &mut rx, Some(&mut block_rx)).await)
}

/// The two directions of one stream.
struct Pump<'a> {
    peer: PeerId,
    link: Link,
    to_actor: &'a mpsc::Sender<ConnMsg>,
    read_limit: RateLimiter,
    write_limit: RateLimiter,
    /// Counts blocks as they are written (upload side).
    uploads: Option<&'a Metrics>,
    /// Direct or relayed: the relayed cap and the per-path byte counters.
    path: StreamPath,
    /// Upload side: blocks cancelled after they were queued here.
    cancelled: Option<CancelledIds>,
}

async fn recv_or_pending(rx: Option<&mut mpsc::Receiver<Frame>>) -> Option<Frame> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Pump<'_> {
    /// Moves frames until either side ends; returns why it ended. Control frames go before
    /// queued blocks.
    async fn run(
        self,
        stream: Stream,
        mut dec: FrameDecoder,
        rx: &mut mpsc::Receiver<Frame>,
        mut blocks: Option<&mut mpsc::Receiver<Frame>>,
    ) -> String {
        let (mut reader, mut writer) = stream.split();
        let (peer, link, to_actor) = (self.peer, self.link, self.to_actor);
        let mut path = self.path.clone();
        let read = async {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match read_frame(&mut reader, &mut dec, &mut buf).await {
                    Ok(Some(frame)) => {
                        self.read_limit.acquire(payload_len(&frame)).await;
                        self.path.receive(payload_len(&frame)).await;
                        if to_actor
                            .send(ConnMsg::Frame { peer, link, frame })
                            .await
                            .is_err()
                        {
                            return "transfer service stopped".to_owned();
                        }
                    }
                    Ok(None) => return "closed by remote".to_owned(),
                    Err(e) => return e,
                }
            }
        };
        let write = async {
            let mut out = Vec::new();
            loop {
                let frame = tokio::select! {
                    biased;
                    f = rx.recv() => f,
                    Some(f) = recv_or_pending(blocks.as_deref_mut()) => Some(f),
                };
                let Some(frame) = frame else { break };
                let withdrawn = |f: &Frame| match (f, &self.cancelled) {
                    (Frame::Piece { id, .. }, Some(c)) => c.take(*id),
                    _ => false,
                };
                let len = payload_len(&frame);
                let mut skip = withdrawn(&frame);
                if !skip {
                    self.write_limit.acquire(len).await;
                    // A cancel may have come while the block waited for tokens.
                    skip = withdrawn(&frame);
                }
                if skip {
                    if let Link::In(id) = link
                        && to_actor.send(ConnMsg::BlockSent { id }).await.is_err()
                    {
                        return "transfer service stopped".to_owned();
                    }
                    continue;
                }
                self.path.send(len).await;
                if let Err(e) = write_frame(&mut writer, &frame, &mut out).await {
                    return e.to_string();
                }
                if let (Some(m), true) = (self.uploads, len > 0) {
                    m.uploaded(len as u64);
                }
                if let (Link::In(id), Frame::Piece { .. }) = (link, &frame)
                    && to_actor.send(ConnMsg::BlockSent { id }).await.is_err()
                {
                    return "transfer service stopped".to_owned();
                }
            }
            let _ = writer.close().await;
            "closed locally".to_owned()
        };
        tokio::select! {
            r = read => r,
            w = write => w,
            () = path.moved_to_direct() => "relayed connection replaced by a direct one".to_owned(),
        }
    }
}
