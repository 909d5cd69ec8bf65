//! The actor's side of the BitTorrent wire (`crate::bt`): the listener is started with the
//! actor; a download whose metadata is known gets one fetch task per `--bt-peer` address, which
//! the actor treats as one more download stream (in `out`, never in the libp2p peer set, so it
//! is never dialled or retried here: the task reconnects by itself). Completion drops those
//! streams; a ban drops one like any other, and a banned address is not asked for later
//! torrents.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use libp2p::PeerId;
use shardswarm_proto::InfoHash;
use tokio::sync::mpsc;

use super::Actor;
use crate::bt::{self, BtShared};
use crate::metrics::Metrics;
use crate::transfer::conn::ConnMsg;
use crate::transfer::{RateLimiter, TransferConfig};

/// The `--bt-peer` clients and the fetch tasks running for them.
pub(super) struct BtPeers {
    shared: Option<BtShared>,
    addrs: Vec<SocketAddr>,
    by_torrent: HashMap<InfoHash, Vec<PeerId>>,
    keys: HashSet<PeerId>,
    /// The address behind every fetch task ever started (a banned one is not dialled again).
    addr_of: HashMap<PeerId, SocketAddr>,
}

impl BtPeers {
    /// Starts the `--bt-listen` listener if configured; returns the state and the bound address.
    pub(super) fn start(
        config: &TransferConfig,
        to_actor: mpsc::Sender<ConnMsg>,
        upload_limit: RateLimiter,
        download_limit: RateLimiter,
        metrics: Arc<Metrics>,
    ) -> Result<(BtPeers, Option<SocketAddr>), String> {
        let wanted = config.bt_listen.is_some() || !config.bt_peers.is_empty();
        let shared = wanted.then(|| BtShared::new(to_actor, upload_limit, download_limit, metrics));
        let bound = match (config.bt_listen, &shared) {
            (Some(addr), Some(shared)) => Some(bt::listen(addr, shared.clone())?),
            _ => None,
        };
        Ok((
            BtPeers {
                shared,
                addrs: config.bt_peers.clone(),
                by_torrent: HashMap::new(),
                keys: HashSet::new(),
                addr_of: HashMap::new(),
            },
            bound,
        ))
    }

    /// Whether `peer` is one of our BitTorrent fetch tasks.
    pub(super) fn is_bt(&self, peer: PeerId) -> bool {
        self.keys.contains(&peer)
    }
}

impl Actor {
    /// Starts fetching torrent `ih` (metadata known, download running) from every `--bt-peer`.
    pub(super) fn bt_connect(&mut self, ih: InfoHash) {
        let Some(shared) = self.bt.shared.clone() else {
            return;
        };
        if self.bt.addrs.is_empty() || self.bt.by_torrent.contains_key(&ih) {
            return;
        }
        let Some(meta) = self.torrents.get(&ih).and_then(|t| t.meta.as_ref()) else {
            return;
        };
        let mut keys = Vec::new();
        for &addr in &self.bt.addrs {
            let banned = self
                .banned
                .iter()
                .any(|p| self.bt.addr_of.get(p) == Some(&addr));
            if banned {
                tracing::debug!(target: bt::TARGET, %addr, "banned BitTorrent peer not asked again");
                continue;
            }
            let (peer, tx) = bt::spawn_fetch(addr, meta, shared.clone());
            self.out.insert(peer, tx);
            self.bt.keys.insert(peer);
            self.bt.addr_of.insert(peer, addr);
            keys.push(peer);
        }
        self.bt.by_torrent.insert(ih, keys);
    }

    /// Torrent `ih` is complete: its fetch tasks end (their senders are dropped).
    pub(super) fn bt_done(&mut self, ih: InfoHash) {
        for peer in self.bt.by_torrent.remove(&ih).unwrap_or_default() {
            self.out.remove(&peer);
            self.out_ready.remove(&peer);
            self.bt.keys.remove(&peer);
        }
    }
}
