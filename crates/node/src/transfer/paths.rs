//! Which path a piece stream takes — a direct connection, or a connection relayed through the
//! server's circuit relay — and the bandwidth cap on the relayed ones (`--relayed-limit`).
//!
//! libp2p-stream opens a stream on any open connection to the peer and does not say which, so
//! the path is decided per peer: the event loop marks a peer *relayed* while every open
//! connection to it goes through a `/p2p-circuit`, and closes the relayed connections once a
//! direct one exists (see `nat`), so that new streams can only take the direct one. A stream
//! keeps the path it had when it was opened; a relayed stream ends as soon as the event loop
//! closes its peer's relayed connections ([`PathCaps::relayed_closed`]: a stream of a closed
//! connection may otherwise only notice at its next write) and is reopened on the direct one.
//!
//! Invariants: a stream of a relayed peer takes its tokens from the node-wide relayed buckets
//! (one per direction) on top of `--upload-limit`/`--download-limit`; direct streams never touch
//! them; every payload byte moved is counted once in
//! `shardswarm_piece_path_bytes_total{direction, path}`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use libp2p::PeerId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::rate::{Rate, RateLimiter};

/// Labels of `shardswarm_piece_path_bytes_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// `received` or `sent`.
    pub direction: &'static str,
    /// `direct` or `relayed`.
    pub path: &'static str,
}

/// Piece payload bytes by direction and path.
pub type PathBytes = Family<PathLabels, Counter>;

/// Which peers are relayed, and how often their relayed connections were closed for a direct
/// one.
#[derive(Debug, Default)]
struct Table {
    relayed: HashSet<PeerId>,
    closed: HashMap<PeerId, u64>,
}

/// The relayed peers and the relayed caps, shared by the event loop and the stream tasks.
#[derive(Debug, Clone)]
pub(crate) struct PathCaps {
    table: Arc<RwLock<Table>>,
    /// Bumped whenever relayed connections are closed.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    send: RateLimiter,
    recv: RateLimiter,
    bytes: PathBytes,
}

impl Default for PathCaps {
    fn default() -> Self {
        PathCaps::new(None, PathBytes::default())
    }
}

impl PathCaps {
    /// Caps relayed streams at `limit` bytes per second in each direction (none: uncapped),
    /// counting bytes in `bytes`.
    pub(crate) fn new(limit: Option<Rate>, bytes: PathBytes) -> Self {
        PathCaps {
            table: Arc::default(),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            send: RateLimiter::new(limit),
            recv: RateLimiter::new(limit),
            bytes,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `peer` as reachable only through the relay (or not any more).
    pub(crate) fn set_relayed(&self, peer: PeerId, relayed: bool) {
        let mut t = self.write();
        if relayed {
            t.relayed.insert(peer);
        } else {
            t.relayed.remove(&peer);
        }
    }

    /// The relayed connections to `peer` are being closed (a direct one replaced them): its
    /// relayed streams end now.
    pub(crate) fn relayed_closed(&self, peer: PeerId) {
        *self.write().closed.entry(peer).or_default() += 1;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Forgets `peer` once it has no connection left.
    pub(crate) fn forget(&self, peer: &PeerId) {
        let mut t = self.write();
        t.relayed.remove(peer);
        t.closed.remove(peer);
    }

    /// Whether streams to `peer` opened now go through the relay.
    pub(crate) fn is_relayed(&self, peer: &PeerId) -> bool {
        self.read().relayed.contains(peer)
    }

    fn closed_count(&self, peer: &PeerId) -> u64 {
        self.read().closed.get(peer).copied().unwrap_or(0)
    }

    /// The path of a stream to `peer` opened now.
    pub(crate) fn stream(&self, peer: &PeerId) -> StreamPath {
        let relayed = self.is_relayed(peer);
        let path = if relayed { "relayed" } else { "direct" };
        let count = |direction| {
            self.bytes
                .get_or_create(&PathLabels { direction, path })
                .clone()
        };
        StreamPath {
            relayed,
            send: if relayed {
                self.send.clone()
            } else {
                RateLimiter::default()
            },
            recv: if relayed {
                self.recv.clone()
            } else {
                RateLimiter::default()
            },
            sent: count("sent"),
            received: count("received"),
            moved: relayed.then(|| Moved {
                caps: self.clone(),
                peer: *peer,
                closed_at_open: self.closed_count(peer),
                rx: self.changed.subscribe(),
            }),
        }
    }
}

/// What a relayed stream watches to learn that its connection is being closed.
#[derive(Debug, Clone)]
struct Moved {
    caps: PathCaps,
    peer: PeerId,
    closed_at_open: u64,
    rx: tokio::sync::watch::Receiver<u64>,
}

/// One stream's path: its extra limits and its byte counters.
#[derive(Debug, Clone)]
pub(crate) struct StreamPath {
    relayed: bool,
    send: RateLimiter,
    recv: RateLimiter,
    sent: Counter,
    received: Counter,
    moved: Option<Moved>,
}

impl StreamPath {
    /// Whether the stream goes through the relay.
    pub(crate) fn relayed(&self) -> bool {
        self.relayed
    }

    /// Waits for the relayed cap (if any) before `bytes` of payload are sent, and counts them.
    pub(crate) async fn send(&self, bytes: usize) {
        if bytes > 0 {
            self.send.acquire(bytes).await;
            self.sent.inc_by(bytes as u64);
        }
    }

    /// Resolves when this relayed stream's connection is being closed for a direct one; never
    /// for a direct stream.
    pub(crate) async fn moved_to_direct(&mut self) {
        let Some(m) = &mut self.moved else {
            return std::future::pending().await;
        };
        loop {
            if m.caps.closed_count(&m.peer) > m.closed_at_open {
                return;
            }
            if m.rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Counts `bytes` of payload received and waits for the relayed cap (if any).
    pub(crate) async fn receive(&self, bytes: usize) {
        if bytes > 0 {
            self.received.inc_by(bytes as u64);
            self.recv.acquire(bytes).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn only_relayed_streams_are_capped_and_each_path_is_counted() {
        let bytes = PathBytes::default();
        let caps = PathCaps::new(Some(Rate(1000)), bytes.clone());
        let (direct, relayed) = (PeerId::random(), PeerId::random());
        caps.set_relayed(relayed, true);

        let d = caps.stream(&direct);
        assert!(!d.relayed());
        let start = Instant::now();
        d.send(1_000_000).await;
        assert!(
            start.elapsed() < Duration::from_millis(1),
            "direct is uncapped"
        );

        let r = caps.stream(&relayed);
        assert!(r.relayed());
        let start = Instant::now();
        for _ in 0..3 {
            r.send(1000).await;
        }
        // A quarter second of burst, then 1000 B/s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(2700), "{took:?}");
        r.receive(500).await;

        let get = |direction, path| bytes.get_or_create(&PathLabels { direction, path }).get();
        assert_eq!(get("sent", "direct"), 1_000_000);
        assert_eq!(get("sent", "relayed"), 3000);
        assert_eq!(get("received", "relayed"), 500);
        assert_eq!(get("received", "direct"), 0);

        // Once a direct connection replaced the relayed one, the relayed streams end and new
        // streams are direct.
        let mut moved = tokio::spawn({
            let mut r = r.clone();
            async move { r.moved_to_direct().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!moved.is_finished());
        caps.set_relayed(relayed, false);
        caps.relayed_closed(relayed);
        tokio::time::timeout(Duration::from_secs(1), &mut moved)
            .await
            .expect("the relayed stream learns it moved")
            .unwrap();
        assert!(!caps.stream(&relayed).relayed());
        let mut d = caps.stream(&direct);
        let direct_moved = tokio::time::timeout(Duration::from_secs(5), d.moved_to_direct());
        assert!(direct_moved.await.is_err(), "a direct stream never moves");
    }
}
