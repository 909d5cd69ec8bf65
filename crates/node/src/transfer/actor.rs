//! The transfer actor: owns the torrents, reacts to stream frames and event-loop commands, and
//! turns engine actions into frames.
//!
//! Invariants: a wire request id is in `wire` while the engine has it outstanding, and after a
//! `Cancel` until its data comes or [`MAX_CANCELLED`] later cancels pushed it out (the engine
//! still takes a timed-out request's data if the block is wanted); a
//! banned peer gets no request and is served nothing; disk writes happen only for blocks the
//! engine accepted, and a piece counts only after `PieceStore::verify_piece` said so; a
//! storage error pauses the download and blames no peer (`pause`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;
use shardswarm_proto::{DownloadProgress, FileEntry, InfoHash};
use shardswarm_torrent::download::Download;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::storage::PieceStore;
use shardswarm_torrent::wire::Frame;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::conn::{self, ConnMsg};
use super::rate::RateLimiter;
use super::{TransferCmd, TransferConfig, TransferEvent, TransferEvents, TransferHandle};
use crate::metrics::Metrics;

/// Cancelled requests whose data is still recognised if it arrives.
const MAX_CANCELLED: usize = 4096;
/// Largest block we serve in one `Piece` frame.
const MAX_BLOCK: u32 = 4 * 1024 * 1024;
/// `Reject` reasons.
const REJECT_BUSY: u8 = 1;
const REJECT_DONT_HAVE: u8 = 2;
/// Least time between two progress events.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

struct Torrent {
    entry: FileEntry,
    dir: PathBuf,
    meta: Option<Metainfo>,
    store: Option<PieceStore>,
    download: Option<Download<PeerId>>,
    /// Inbound streams that asked for this torrent (they get `Have`s).
    interested: HashSet<u64>,
    /// Peers we sent `Interested` (or `GetMetadata`) on our stream.
    asked: HashSet<PeerId>,
    providing: bool,
    /// Paused after a storage error (see `pause`).
    pause: pause::Pause,
}

/// A remote's download stream to us.
struct Inbound {
    /// Control frames.
    tx: mpsc::Sender<Frame>,
    /// Blocks (its upload slot).
    blocks: mpsc::Sender<Frame>,
    /// Blocks handed to the writer and not yet written (at most `BLOCK_QUEUE`).
    queued: usize,
    /// Accepted requests waiting for the slot, in arrival order.
    waiting: std::collections::VecDeque<Waiting>,
    /// Requests cancelled after their block went to the writer (it drops them).
    cancelled: conn::CancelledIds,
}

/// A request waiting for its downloader's upload slot.
struct Waiting {
    id: u64,
    info_hash: InfoHash,
    piece: u32,
    offset: u32,
    length: u32,
}

/// Requests a downloader may have waiting before further ones are rejected as busy.
const MAX_WAITING: usize = 256;

struct Actor {
    control: libp2p_stream::Control,
    conn_tx: mpsc::Sender<ConnMsg>,
    events: mpsc::Sender<TransferEvent>,
    metrics: Arc<Metrics>,
    download_limit: RateLimiter,
    torrents: HashMap<InfoHash, Torrent>,
    peers: HashMap<PeerId, bool>,
    out: HashMap<PeerId, mpsc::Sender<Frame>>,
    out_ready: HashSet<PeerId>,
    inbound: HashMap<u64, Inbound>,
    wire: HashMap<u64, (InfoHash, u64, PeerId)>,
    by_engine: HashMap<(InfoHash, u64), u64>,
    /// Cancelled wire ids still in `wire`, oldest first (at most [`MAX_CANCELLED`]).
    cancelled: VecDeque<u64>,
    next_wire: u64,
    banned: HashSet<PeerId>,
    /// Peers whose download stream failed, and when to try again.
    retry_out: HashMap<PeerId, Instant>,
    last_progress: Instant,
    server_only: bool,
    /// `--bt-peer` clients and their fetch tasks.
    bt: bt::BtPeers,
    /// Which peers are only reachable through the relay (and its cap).
    paths: super::PathCaps,
    /// Blocks committed to one downloader's writer (see [`commit_depth`]).
    block_queue: usize,
}

/// How many read blocks may wait in one downloader's writer: [`conn::BLOCK_QUEUE`], or fewer
/// under `--upload-limit` (about 2 s of sending, at least 1), since a block in the writer goes
/// out even if its request is cancelled — with 4 blocks of 256 KiB at 64 KB/s that was 16 s of
/// uplink per downloader spent on blocks another peer may already have supplied.
fn commit_depth(limit: Option<super::Rate>) -> usize {
    const BLOCK: u64 = 256 * 1024;
    match limit {
        None => conn::BLOCK_QUEUE,
        Some(super::Rate(bytes_per_s)) => {
            let depth = (bytes_per_s.saturating_mul(2) / BLOCK).clamp(1, conn::BLOCK_QUEUE as u64);
            usize::try_from(depth).unwrap_or(1)
        }
    }
}

/// Starts the service on `control` (whose piece protocol is not yet accepted elsewhere).
pub(crate) fn spawn(
    mut control: libp2p_stream::Control,
    config: TransferConfig,
    metrics: Arc<Metrics>,
    paths: super::PathCaps,
) -> Result<(TransferHandle, TransferEvents), String> {
    let incoming = control
        .accept(conn::PIECES_PROTOCOL)
        .map_err(|e| format!("piece protocol: {e}"))?;
    let (tx, rx) = mpsc::channel(256);
    let (conn_tx, conn_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let upload_limit = RateLimiter::new(config.upload_limit);
    let download_limit = RateLimiter::new(config.download_limit);
    tokio::spawn(conn::accept_loop(
        incoming,
        conn_tx.clone(),
        upload_limit.clone(),
        metrics.clone(),
        paths.clone(),
    ));
    let (bt, bt_addr) = bt::BtPeers::start(
        &config,
        conn_tx.clone(),
        upload_limit,
        download_limit.clone(),
        metrics.clone(),
    )?;
    let actor = Actor {
        control,
        conn_tx,
        events: ev_tx,
        metrics,
        download_limit,
        torrents: HashMap::new(),
        peers: HashMap::new(),
        out: HashMap::new(),
        out_ready: HashSet::new(),
        inbound: HashMap::new(),
        wire: HashMap::new(),
        by_engine: HashMap::new(),
        cancelled: VecDeque::new(),
        next_wire: 0,
        banned: HashSet::new(),
        retry_out: HashMap::new(),
        last_progress: Instant::now(),
        server_only: config.server_only,
        bt,
        paths,
        block_queue: commit_depth(config.upload_limit),
    };
    tokio::spawn(actor.run(rx, conn_rx));
    Ok((TransferHandle { tx, bt_addr }, ev_rx))
}

impl Actor {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<TransferCmd>,
        mut conns: mpsc::Receiver<ConnMsg>,
    ) {
        loop {
            let deadline = self
                .torrents
                .values()
                .filter_map(|t| t.download.as_ref().and_then(Download::poll_timeout))
                .chain(self.retry_out.values().copied())
                .chain(self.next_resume())
                .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    None => return,
                },
                Some(msg) = conns.recv() => self.on_conn(msg),
                () = sleep => {
                    let now = Instant::now();
                    for t in self.torrents.values_mut() {
                        if let Some(d) = &mut t.download {
                            d.handle_timeout(now);
                        }
                    }
                    self.retry_streams(now);
                    self.resume_paused(now);
                }
            }
            self.drive();
        }
    }

    fn emit(&self, ev: TransferEvent) {
        if let Err(e) = self.events.try_send(ev) {
            warn!(target: "shardswarm::pieces", error = %e, "event queue full");
        }
    }

    fn on_cmd(&mut self, cmd: TransferCmd) {
        match cmd {
            TransferCmd::PeerUp { peer, is_server } => {
                if self.banned.contains(&peer) {
                    return;
                }
                self.peers.insert(peer, is_server);
                if self.server_only && !is_server {
                    return;
                }
                if self
                    .torrents
                    .values()
                    .any(|t| t.download.is_some() || t.meta.is_none())
                {
                    self.ensure_out(peer);
                }
            }
            TransferCmd::PeerDown { peer } => self.drop_peer(peer),
            TransferCmd::Seed { entry, path, meta } => {
                let dir = path.parent().map(PathBuf::from).unwrap_or_default();
                match PieceStore::seed(&path, &meta) {
                    Ok(store) => {
                        let ih = meta.info_hash();
                        self.torrents.insert(
                            ih,
                            Torrent {
                                entry,
                                dir,
                                meta: Some(meta),
                                store: Some(store),
                                download: None,
                                interested: HashSet::new(),
                                asked: HashSet::new(),
                                providing: false,
                                pause: pause::Pause::default(),
                            },
                        );
                        self.emit(TransferEvent::Providing { info_hash: ih });
                    }
                    Err(e) => self.emit(TransferEvent::Failed {
                        entry,
                        reason: e.to_string(),
                    }),
                }
            }
            TransferCmd::Fetch { entry, dir, meta } => self.fetch(entry, dir, meta),
        }
    }

    /// Emits download progress, at most every 500 ms unless `force`.
    pub(super) fn report_progress(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_progress) < PROGRESS_EVERY {
            return;
        }
        self.last_progress = now;
        let v = self
            .torrents
            .values()
            .filter_map(|t| {
                let d = t.download.as_ref()?;
                Some(DownloadProgress {
                    index: t.entry.shard_index,
                    have: d.verified_bytes(),
                    size: t.entry.size,
                })
            })
            .collect();
        self.emit(TransferEvent::Progress(v));
    }

    fn fetch(&mut self, entry: FileEntry, dir: PathBuf, meta: Option<Metainfo>) {
        let ih = entry.info_hash;
        if self.torrents.get(&ih).is_some_and(|t| t.store.is_some()) {
            return;
        }
        info!(target: "shardswarm::torrent_sync", "[TORRENT_SYNC] ✓ Download initiated (info_hash: {ih})");
        self.torrents.insert(
            ih,
            Torrent {
                entry,
                dir,
                meta: None,
                store: None,
                download: None,
                interested: HashSet::new(),
                asked: HashSet::new(),
                providing: false,
                pause: pause::Pause::default(),
            },
        );
        if let Some(meta) = meta {
            self.start_download(ih, meta);
        }
        let peers: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, is_server)| **is_server || !self.server_only)
            .map(|(p, _)| *p)
            .collect();
        for p in peers {
            self.ensure_out(p);
            self.ask(p);
        }
    }

    fn start_download(&mut self, ih: InfoHash, meta: Metainfo) {
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        if meta.info_hash() != ih
            || meta.info.name != t.entry.filename
            || meta.info.length != t.entry.size
        {
            warn!(target: "shardswarm::pieces", %ih, "metadata does not match the catalog entry");
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&t.dir) {
            let (entry, reason) = (t.entry.clone(), format!("{}: {e}", t.dir.display()));
            self.emit(TransferEvent::Failed { entry, reason });
            return;
        }
        let store = match PieceStore::open(&t.dir, &meta, false) {
            Ok(s) => s,
            Err(e) => {
                let entry = t.entry.clone();
                self.emit(TransferEvent::Failed {
                    entry,
                    reason: e.to_string(),
                });
                return;
            }
        };
        let have = store.have().clone();
        if have.count_ones() > 0 {
            info!(target: "shardswarm::pieces", shard = t.entry.shard_index, pieces = have.count_ones(),
                of = meta.piece_count(), "resuming with verified pieces");
        }
        let download = pause::new_download(ih, &meta, have);
        t.meta = Some(meta);
        t.store = Some(store);
        t.download = Some(download);
        t.asked.clear();
        let complete = t.download.as_ref().is_some_and(Download::is_complete);
        if complete {
            self.finish(ih);
        } else {
            self.bt_connect(ih);
        }
    }

    /// Reopens download streams that failed, once their back-off passed, while there is still
    /// something to fetch.
    fn retry_streams(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .retry_out
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| *p)
            .collect();
        let active = self
            .torrents
            .values()
            .any(|t| t.meta.is_none() || t.download.as_ref().is_some_and(|d| !d.is_complete()));
        for peer in due {
            self.retry_out.remove(&peer);
            if active && self.peers.contains_key(&peer) {
                self.ensure_out(peer);
            }
        }
    }

    /// Opens our download stream to `peer` unless it exists.
    fn ensure_out(&mut self, peer: PeerId) {
        if self.out.contains_key(&peer) || self.banned.contains(&peer) {
            return;
        }
        let (tx, rx) = mpsc::channel(conn::WRITE_QUEUE);
        self.out.insert(peer, tx);
        tokio::spawn(conn::run_outbound(
            self.control.clone(),
            peer,
            self.conn_tx.clone(),
            rx,
            self.download_limit.clone(),
            self.paths.clone(),
        ));
    }

    /// Sends `Interested` (or `GetMetadata`) for every active torrent not yet asked of `peer`.
    fn ask(&mut self, peer: PeerId) {
        if !self.out_ready.contains(&peer) {
            return;
        }
        let Some(tx) = self.out.get(&peer).cloned() else {
            return;
        };
        for (ih, t) in &mut self.torrents {
            let active = t.download.as_ref().is_some_and(|d| !d.is_complete()) || t.meta.is_none();
            if !active || t.asked.contains(&peer) {
                continue;
            }
            let frame = if t.meta.is_some() {
                Frame::Interested { info_hash: *ih }
            } else {
                Frame::GetMetadata { info_hash: *ih }
            };
            if tx.try_send(frame).is_ok() {
                t.asked.insert(peer);
            }
        }
    }

    fn drop_peer(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
        self.out.remove(&peer);
        self.out_ready.remove(&peer);
        for t in self.torrents.values_mut() {
            t.asked.remove(&peer);
            if let Some(d) = &mut t.download {
                d.remove_peer(peer);
            }
        }
        self.wire.retain(|_, (_, _, p)| *p != peer);
    }

    fn ban(&mut self, peer: PeerId, reason: String) {
        warn!(target: "shardswarm::pieces", %peer, reason, "banning peer");
        self.banned.insert(peer);
        self.drop_peer(peer);
        self.emit(TransferEvent::Banned { peer, reason });
    }
}

mod bt;
mod frames;
mod pause;
#[cfg(test)]
mod tests;
