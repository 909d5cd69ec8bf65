//! A download whose storage failed (a full disk, an IO error on write, sync, resume file or
//! rename) is paused, not left half-alive: its outstanding requests are cancelled, its engine is
//! dropped, the event loop hears why, and after a back-off (5 s, doubling up to 2 min) a fresh
//! engine starts from the store's verified pieces and asks the peers again.
//!
//! Invariants: a storage error never blames a peer (no strike, no ban: the data was fine, our
//! disk was not); the store keeps exactly its verified pieces (see `PieceStore`); a paused torrent
//! sends no requests and takes no blocks (late ones are dropped as unknown ids); the torrent
//! keeps serving its verified pieces meanwhile.

use std::time::{Duration, Instant};

use shardswarm_proto::InfoHash;
use shardswarm_torrent::download::{Download, DownloadConfig};
use shardswarm_torrent::storage::StorageError;
use shardswarm_torrent::wire::Frame;
use tracing::{info, warn};

use super::Actor;
use crate::transfer::TransferEvent;

/// First pause after a storage error.
pub(super) const FIRST_PAUSE: Duration = Duration::from_secs(5);
/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_secs(120);

/// The pause state of one torrent.
#[derive(Debug, Clone)]
pub(super) struct Pause {
    /// When the paused download starts again (`None`: running).
    pub(super) until: Option<Instant>,
    /// The next pause's length.
    pub(super) next: Duration,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            until: None,
            next: FIRST_PAUSE,
        }
    }
}

impl Pause {
    /// Pauses from `now`; returns for how long.
    pub(super) fn start(&mut self, now: Instant) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(MAX_PAUSE);
        self.until = Some(now + wait);
        wait
    }

    /// Storage worked again: the next error pauses briefly again.
    pub(super) fn reset(&mut self) {
        self.next = FIRST_PAUSE;
    }
}

/// A download engine for `meta` from the verified pieces `have`.
pub(super) fn new_download(
    ih: InfoHash,
    meta: &shardswarm_torrent::metainfo::Metainfo,
    have: shardswarm_torrent::bitfield::Bitfield,
) -> Download<libp2p::PeerId> {
    // A different tie-break order on every node: with one seed everywhere, every node would
    // ask the server for the same "rarest" pieces first and the server would send them N times.
    let seed =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), ih.0);
    Download::new(meta, have, DownloadConfig::default(), seed)
}

impl Actor {
    /// Torrent `ih`'s storage failed with `error`: pause its download (see the module docs).
    pub(super) fn pause(&mut self, ih: InfoHash, error: &StorageError, now: Instant) {
        let Some(t) = self.torrents.get_mut(&ih) else {
            return;
        };
        if t.download.take().is_none() {
            return;
        }
        t.asked.clear();
        let wait = t.pause.start(now);
        let entry = t.entry.clone();
        let outstanding: Vec<(u64, libp2p::PeerId)> = self
            .wire
            .iter()
            .filter(|(_, (h, _, _))| *h == ih)
            .map(|(wid, (_, _, peer))| (*wid, *peer))
            .collect();
        for (wid, peer) in outstanding {
            self.wire.remove(&wid);
            if let Some(tx) = self.out.get(&peer) {
                let _ = tx.try_send(Frame::Cancel { id: wid });
            }
        }
        self.by_engine.retain(|(h, _), _| *h != ih);
        let what = if error.is_disk_full() {
            "not enough disk space"
        } else {
            "storage error"
        };
        warn!(target: "shardswarm::pieces", shard = entry.shard_index, error = %error, retry_in = ?wait,
            "download paused: {what}");
        self.emit(TransferEvent::Failed {
            entry,
            reason: format!("{what}: {error}; paused, retrying in {wait:?}"),
        });
        self.report_progress(true);
    }

    /// Restarts every paused download whose pause is over.
    pub(super) fn resume_paused(&mut self, now: Instant) {
        let due: Vec<InfoHash> = self
            .torrents
            .iter()
            .filter(|(_, t)| t.pause.until.is_some_and(|u| u <= now))
            .map(|(ih, _)| *ih)
            .collect();
        for ih in due {
            let Some(t) = self.torrents.get_mut(&ih) else {
                continue;
            };
            t.pause.until = None;
            let (Some(meta), Some(store)) = (&t.meta, &t.store) else {
                continue;
            };
            let have = store.have().clone();
            info!(target: "shardswarm::pieces", shard = t.entry.shard_index, pieces = have.count_ones(),
                of = meta.piece_count(), "resuming the paused download");
            t.download = Some(new_download(ih, meta, have));
            t.asked.clear();
        }
        // Peers that came while every download was paused have no stream yet.
        let known: Vec<libp2p::PeerId> = self
            .peers
            .iter()
            .filter(|(_, is_server)| **is_server || !self.server_only)
            .map(|(p, _)| *p)
            .collect();
        for p in known {
            self.ensure_out(p);
        }
        let peers: Vec<libp2p::PeerId> = self.out_ready.iter().copied().collect();
        for p in peers {
            self.ask(p);
        }
    }

    /// The earliest end of a pause.
    pub(super) fn next_resume(&self) -> Option<Instant> {
        self.torrents.values().filter_map(|t| t.pause.until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_after_success() {
        let t0 = Instant::now();
        let mut p = Pause::default();
        let waits: Vec<u64> = (0..8).map(|_| p.start(t0).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 120, 120, 120]);
        assert_eq!(p.until, Some(t0 + MAX_PAUSE));
        p.reset();
        assert_eq!(p.start(t0), FIRST_PAUSE);
    }
}
