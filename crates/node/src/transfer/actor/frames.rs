//! The actor's reactions to frames, and turning engine actions into frames.

use std::time::Instant;

use libp2p::PeerId;
use shardswarm_proto::InfoHash;
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::download::Action;
use shardswarm_torrent::metainfo::Metainfo;
use shardswarm_torrent::wire::Frame;
use tracing::{debug, info, warn};

use super::{
    Actor, Inbound, MAX_BLOCK, MAX_CANCELLED, MAX_WAITING, REJECT_BUSY, REJECT_DONT_HAVE, Waiting,
};
use crate::transfer::TransferEvent;

/// Requests in flight to the server per download.
const SERVER_IN_FLIGHT: usize = 8;
use crate::transfer::conn::{ConnMsg, Link};

impl Actor {
    pub(super) fn on_conn(&mut self, msg: ConnMsg) {
        match msg {
            ConnMsg::OutReady { peer } => {
                self.out_ready.insert(peer);
                self.ask(peer);
            }
            ConnMsg::InReady {
                peer,
                id,
                tx,
                blocks,
                cancelled,
            } => {
                if self.banned.contains(&peer) {
                    return;
                }
                self.inbound.insert(
                    id,
                    Inbound {
                        tx,
                        blocks,
                        queued: 0,
                        waiting: Default::default(),
                        cancelled,
                    },
                );
            }
            ConnMsg::BlockSent { id } => {
                if let Some(inb) = self.inbound.get_mut(&id) {
                    inb.queued = inb.queued.saturating_sub(1);
                }
                self.serve_waiting(id);
            }
            ConnMsg::Closed { peer, link, reason } => {
                debug!(target: "shardswarm::pieces", %peer, ?link, reason, "piece stream closed");
                match link {
                    Link::Out => {
                        self.out.remove(&peer);
                        self.out_ready.remove(&peer);
                        if self.peers.contains_key(&peer) && !self.banned.contains(&peer) {
                            let wait = std::time::Duration::from_secs(1);
                            self.retry_out.insert(peer, Instant::now() + wait);
                        }
                        for t in self.torrents.values_mut() {
                            t.asked.remove(&peer);
                            if let Some(d) = &mut t.download {
                                d.remove_peer(peer);
                            }
                        }
                        self.wire.retain(|_, (_, _, p)| *p != peer);
                    }
                    Link::In(id) => {
                        self.inbound.remove(&id);
                        for t in self.torrents.values_mut() {
                            t.interested.remove(&id);
                        }
                    }
                }
            }
            ConnMsg::Frame { peer, link, frame } => {
                if self.banned.contains(&peer) {
                    return;
                }
                match link {
                    Link::Out => self.on_download_frame(peer, frame),
                    Link::In(id) => self.on_upload_frame(peer, id, frame),
                }
            }
        }
    }

    /// A frame on our download stream to `peer`.
    fn on_download_frame(&mut self, peer: PeerId, frame: Frame) {
        let now = Instant::now();
        match frame {
            Frame::Bitfield { info_hash, bits } => {
                let is_server = self.peers.get(&peer).copied().unwrap_or(false);
                let Some(d) = self.torrents.get_mut(&info_hash).and_then(|t| {
                    let n = t.meta.as_ref()?.piece_count();
                    Some((t.download.as_mut()?, n))
                }) else {
                    return;
                };
                let (download, n) = d;
                match Bitfield::from_bytes(&bits, n) {
                    Ok(bits) => {
                        download.add_peer(peer, now);
                        if is_server {
                            // The server's uplink is shared by every node: ask it for few blocks
                            // at a time and no endgame duplicates, so what peers have comes from them.
                            download.limit_peer(peer, SERVER_IN_FLIGHT, false);
                        }
                        download.peer_bitfield(peer, bits);
                    }
                    Err(e) => self.ban(peer, format!("bad bitfield: {e}")),
                }
            }
            Frame::Have { info_hash, piece } => {
                if let Some(d) = self
                    .torrents
                    .get_mut(&info_hash)
                    .and_then(|t| t.download.as_mut())
                {
                    d.peer_have(peer, piece);
                }
            }
            Frame::NotHere { info_hash } => {
                if let Some(d) = self
                    .torrents
                    .get_mut(&info_hash)
                    .and_then(|t| t.download.as_mut())
                {
                    d.remove_peer(peer);
                }
            }
            Frame::Piece { id, data } => self.on_piece(peer, id, &data, now),
            Frame::Reject { id, .. } => {
                if let Some((ih, eid, p)) = self.wire.remove(&id) {
                    self.by_engine.remove(&(ih, eid));
                    if p == peer
                        && let Some(d) =
                            self.torrents.get_mut(&ih).and_then(|t| t.download.as_mut())
                    {
                        d.request_rejected(peer, eid);
                    }
                }
            }
            Frame::Metadata { info_hash, info } => {
                let wanted = self
                    .torrents
                    .get(&info_hash)
                    .is_some_and(|t| t.meta.is_none());
                if !wanted {
                    return;
                }
                match Metainfo::from_info_bytes(&info, Some(info_hash)) {
                    Ok(meta) => {
                        debug!(target: "shardswarm::pieces", %peer, %info_hash, "metadata verified");
                        self.start_download(info_hash, meta);
                        let peers: Vec<PeerId> = self.out_ready.iter().copied().collect();
                        for p in peers {
                            self.ask(p);
                        }
                    }
                    Err(e) => self.ban(peer, format!("bad metadata for {info_hash}: {e}")),
                }
            }
            Frame::Hello { .. } => {}
            other => {
                debug!(target: "shardswarm::pieces", %peer, ?other, "unexpected frame on download stream")
            }
        }
    }

    fn on_piece(&mut self, peer: PeerId, id: u64, data: &[u8], now: Instant) {
        let Some((ih, eid, p)) = self.wire.remove(&id) else {
            return;
        };
        self.by_engine.remove(&(ih, eid));
        if p != peer {
            return;
        }
        // Data we asked `peer` for (for whichever torrent, on time or late): it is slow at
        // worst, not dead. Frames naming ids we never sent it do not count.
        for t in self.torrents.values_mut() {
            if let Some(d) = &mut t.download {
                d.peer_progress(peer, now);
            }
        }
        let is_server = self.peers.get(&peer).copied().unwrap_or(false);
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        let (Some(download), Some(store)) = (t.download.as_mut(), t.store.as_mut()) else {
            return;
        };
        let block = match download.block_received(peer, eid, now) {
            Ok(b) => b,
            Err(e) => {
                debug!(target: "shardswarm::pieces", %peer, error = %e, "late or unknown block");
                return;
            }
        };
        if data.len() != block.length as usize {
            let reason = format!(
                "block of {} bytes for a request of {}",
                data.len(),
                block.length
            );
            self.ban(peer, reason);
            return;
        }
        let source = if self.bt.is_bt(peer) {
            "bittorrent"
        } else if is_server {
            "server"
        } else {
            "peer"
        };
        self.metrics.downloaded(source, data.len() as u64);
        if let Err(e) = store.write_block(block.piece, block.offset, data) {
            self.pause(ih, &e, now);
            return;
        }
        if !block.piece_complete {
            return;
        }
        let ok = match store.verify_piece(block.piece) {
            Ok(ok) => ok,
            Err(e) => {
                self.pause(ih, &e, now);
                return;
            }
        };
        if ok {
            t.pause.reset();
        }
        download.piece_verified(block.piece, ok);
        self.metrics.piece(ok);
        if !ok {
            warn!(target: "shardswarm::pieces", %peer, shard = t.entry.shard_index, piece = block.piece, "piece failed its hash check");
            return;
        }
        for id in &t.interested {
            if let Some(Inbound { tx, .. }) = self.inbound.get(id) {
                let _ = tx.try_send(Frame::Have {
                    info_hash: ih,
                    piece: block.piece,
                });
            }
        }
        if !t.providing {
            t.providing = true;
            self.emit(TransferEvent::Providing { info_hash: ih });
        }
        self.report_progress(false);
    }

    /// A frame from a remote downloading from us.
    fn on_upload_frame(&mut self, peer: PeerId, conn: u64, frame: Frame) {
        let Some(tx) = self.inbound.get(&conn).map(|i| i.tx.clone()) else {
            return;
        };
        let reply = match frame {
            Frame::Interested { info_hash } => match self.torrents.get_mut(&info_hash) {
                Some(t) if t.store.is_some() => {
                    t.interested.insert(conn);
                    let bits = t
                        .store
                        .as_ref()
                        .map(|s| s.have().as_bytes().to_vec())
                        .unwrap_or_default();
                    Frame::Bitfield { info_hash, bits }
                }
                _ => Frame::NotHere { info_hash },
            },
            Frame::GetMetadata { info_hash } => {
                match self.torrents.get(&info_hash).and_then(|t| t.meta.as_ref()) {
                    Some(meta) => Frame::Metadata {
                        info_hash,
                        info: meta.info_bytes(),
                    },
                    None => Frame::NotHere { info_hash },
                }
            }
            Frame::Request {
                id,
                info_hash,
                piece,
                offset,
                length,
            } => {
                let servable = self
                    .torrents
                    .get(&info_hash)
                    .and_then(|t| t.store.as_ref())
                    .is_some_and(|s| length <= MAX_BLOCK && s.have().get(piece));
                let Some(inb) = self.inbound.get_mut(&conn) else {
                    return;
                };
                if !servable {
                    Frame::Reject {
                        id,
                        reason: REJECT_DONT_HAVE,
                    }
                } else if inb.waiting.len() >= MAX_WAITING {
                    Frame::Reject {
                        id,
                        reason: REJECT_BUSY,
                    }
                } else {
                    inb.waiting.push_back(Waiting {
                        id,
                        info_hash,
                        piece,
                        offset,
                        length,
                    });
                    self.serve_waiting(conn);
                    return;
                }
            }
            Frame::Cancel { id } => {
                if let Some(inb) = self.inbound.get_mut(&conn) {
                    let before = inb.waiting.len();
                    inb.waiting.retain(|w| w.id != id);
                    if inb.waiting.len() == before {
                        // Already handed to the writer (or sent): the writer drops it if it can.
                        inb.cancelled.insert(id);
                    }
                }
                return;
            }
            Frame::Hello { .. } => return,
            other => {
                debug!(target: "shardswarm::pieces", %peer, ?other, "unexpected frame on upload stream");
                return;
            }
        };
        if tx.try_send(reply).is_err() {
            debug!(target: "shardswarm::pieces", %peer, "control queue full; frame dropped");
        }
    }

    /// Moves waiting requests of inbound stream `conn` into its upload slot while there is room.
    fn serve_waiting(&mut self, conn: u64) {
        loop {
            let Some(inb) = self.inbound.get_mut(&conn) else {
                return;
            };
            if inb.queued >= self.block_queue {
                return;
            }
            let Some(w) = inb.waiting.pop_front() else {
                return;
            };
            let block = self
                .torrents
                .get(&w.info_hash)
                .and_then(|t| t.store.as_ref())
                .map(|s| s.read_block(w.piece, w.offset, w.length));
            let frame = match block {
                Some(Ok(data)) => Frame::Piece {
                    id: w.id,
                    data: data.into(),
                },
                _ => Frame::Reject {
                    id: w.id,
                    reason: REJECT_DONT_HAVE,
                },
            };
            let Some(inb) = self.inbound.get_mut(&conn) else {
                return;
            };
            match frame {
                Frame::Piece { .. } => {
                    if inb.blocks.try_send(frame).is_ok() {
                        inb.queued += 1;
                    }
                }
                reject => {
                    let _ = inb.tx.try_send(reject);
                }
            }
        }
    }

    /// Turns every pending engine action into frames.
    pub(super) fn drive(&mut self) {
        let now = Instant::now();
        let hashes: Vec<InfoHash> = self.torrents.keys().copied().collect();
        for ih in hashes {
            while let Some(action) = self
                .torrents
                .get_mut(&ih)
                .and_then(|t| t.download.as_mut())
                .and_then(|d| d.poll_action(now))
            {
                match action {
                    Action::Request {
                        peer,
                        id,
                        piece,
                        offset,
                        length,
                    } => {
                        self.next_wire += 1;
                        let wid = self.next_wire;
                        let frame = Frame::Request {
                            id: wid,
                            info_hash: ih,
                            piece,
                            offset,
                            length,
                        };
                        let sent = self
                            .out
                            .get(&peer)
                            .is_some_and(|tx| tx.try_send(frame).is_ok());
                        if sent {
                            self.wire.insert(wid, (ih, id, peer));
                            self.by_engine.insert((ih, id), wid);
                        } else if let Some(d) =
                            self.torrents.get_mut(&ih).and_then(|t| t.download.as_mut())
                        {
                            d.request_rejected(peer, id);
                        }
                    }
                    Action::Cancel { peer, id } => {
                        if let Some(wid) = self.by_engine.remove(&(ih, id)) {
                            // The uploader may send it anyway; the engine decides if it counts.
                            self.cancelled.push_back(wid);
                            while self.cancelled.len() > MAX_CANCELLED {
                                if let Some(old) = self.cancelled.pop_front() {
                                    self.wire.remove(&old);
                                }
                            }
                            if let Some(tx) = self.out.get(&peer) {
                                let _ = tx.try_send(Frame::Cancel { id: wid });
                            }
                        }
                    }
                    Action::Ban { peer } => {
                        self.ban(peer, "served a piece that failed its hash check".into())
                    }
                    Action::Completed => {
                        self.finish(ih);
                        break;
                    }
                }
            }
        }
    }

    /// Moves a complete download into place and switches it to seeding.
    pub(super) fn finish(&mut self, ih: InfoHash) {
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        let Some(store) = t.store.as_mut() else {
            return;
        };
        match store.finish() {
            Ok(path) => {
                info!(target: "shardswarm::pieces", shard = t.entry.shard_index, path = %path.display(), "shard complete and verified");
                t.download = None;
                let entry = t.entry.clone();
                self.bt_done(ih);
                self.emit(TransferEvent::Complete { entry, path });
                self.report_progress(true);
            }
            Err(e) => self.pause(ih, &e, Instant::now()),
        }
    }
}
