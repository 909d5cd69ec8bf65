//! A tiny discrete-event simulator for [`Download`]: nodes with upload bandwidth, latency and
//! loss exchange requests, blocks, rejects and haves in virtual time, and every action an engine
//! emits is turned back into events. No sockets, no sleeping.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use shardswarm_torrent::picker::PickRng;
use shardswarm_torrent::{Action, Bitfield, Download, DownloadConfig, Info, Metainfo};

/// How a node answers requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Behavior {
    Honest,
    /// Claims pieces, never answers.
    Silent,
    /// Serves these pieces with one byte flipped.
    Corrupt(BTreeSet<u32>),
}

pub(crate) struct NodeSpec {
    pub(crate) seed: bool,
    pub(crate) behavior: Behavior,
    /// Upload bytes per second.
    pub(crate) up_rate: f64,
    /// One-way latency to everyone.
    pub(crate) latency: Duration,
    /// Probability a request to or block from this node is lost.
    pub(crate) loss: f64,
}

impl NodeSpec {
    pub(crate) fn honest(seed: bool, up_rate: f64, latency_ms: u64) -> NodeSpec {
        NodeSpec {
            seed,
            behavior: Behavior::Honest,
            up_rate,
            latency: Duration::from_millis(latency_ms),
            loss: 0.0,
        }
    }
}

struct Node {
    spec: NodeSpec,
    download: Option<Download<usize>>,
    data: Vec<u8>,
    have: Bitfield,
    upload_free_at: Duration,
    online: bool,
}

#[derive(Debug)]
enum Event {
    Request {
        from: usize,
        to: usize,
        id: u64,
        piece: u32,
        offset: u32,
        length: u32,
    },
    Piece {
        from: usize,
        to: usize,
        id: u64,
        data: Vec<u8>,
    },
    Reject {
        from: usize,
        to: usize,
        id: u64,
    },
    Have {
        from: usize,
        to: usize,
        piece: u32,
    },
    Leave(usize),
    Join(usize),
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) uploaded: Vec<u64>,
    pub(crate) completed_at: BTreeMap<usize, Duration>,
    pub(crate) bans: Vec<(usize, usize)>,
    pub(crate) cancels: usize,
    pub(crate) requests: usize,
    pub(crate) timeouts_fired: usize,
    pub(crate) rejected_blocks: usize,
}

pub(crate) struct Sim {
    pub(crate) meta: Metainfo,
    pub(crate) source: Vec<u8>,
    nodes: Vec<Node>,
    events: BTreeMap<(Duration, u64), Event>,
    seq: u64,
    now: Duration,
    base: Instant,
    rng: PickRng,
    banned: BTreeSet<(usize, usize)>,
    pub(crate) stats: Stats,
}

pub(crate) fn make_meta(len: usize, piece_length: u64, salt: u64) -> (Metainfo, Vec<u8>) {
    let mut rng = PickRng::new(salt);
    let source: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    let meta = Metainfo {
        info: Info {
            name: "shard.bin".into(),
            length: len as u64,
            piece_length,
            pieces: source
                .chunks(piece_length as usize)
                .map(|c| Sha1::digest(c).into())
                .collect(),
        },
        announce: None,
        created_by: None,
    };
    (meta, source)
}

impl Sim {
    pub(crate) fn new(
        meta: Metainfo,
        source: Vec<u8>,
        specs: Vec<NodeSpec>,
        config: DownloadConfig,
        seed: u64,
    ) -> Sim {
        let count = meta.piece_count();
        let base = Instant::now();
        let nodes: Vec<Node> = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let (have, data, download) = if spec.seed {
                    (Bitfield::full(count), source.clone(), None)
                } else {
                    let d =
                        Download::new(&meta, Bitfield::new(count), config.clone(), seed ^ i as u64);
                    (Bitfield::new(count), vec![0; source.len()], Some(d))
                };
                Node {
                    spec,
                    download,
                    data,
                    have,
                    upload_free_at: Duration::ZERO,
                    online: true,
                }
            })
            .collect();
        let n = nodes.len();
        let mut sim = Sim {
            meta,
            source,
            nodes,
            events: BTreeMap::new(),
            seq: 0,
            now: Duration::ZERO,
            base,
            rng: PickRng::new(seed),
            banned: BTreeSet::new(),
            stats: Stats {
                uploaded: vec![0; n],
                ..Stats::default()
            },
        };
        for d in 0..n {
            sim.connect_all(d);
        }
        sim
    }

    /// A downloader learns about every online peer; a silent/corrupt node advertises everything.
    fn connect_all(&mut self, d: usize) {
        let now = self.base + self.now;
        for u in 0..self.nodes.len() {
            if u == d || !self.nodes[u].online || self.banned.contains(&(d, u)) {
                continue;
            }
            let bits = match self.nodes[u].spec.behavior {
                Behavior::Honest => self.nodes[u].have.clone(),
                _ => Bitfield::full(self.meta.piece_count()),
            };
            if let Some(dl) = self.nodes[d].download.as_mut() {
                dl.add_peer(u, now);
                dl.peer_bitfield(u, bits);
            }
        }
    }

    fn schedule(&mut self, at: Duration, ev: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), ev);
    }

    pub(crate) fn schedule_leave(&mut self, at: Duration, node: usize) {
        self.schedule(at, Event::Leave(node));
    }

    pub(crate) fn schedule_join(&mut self, at: Duration, node: usize) {
        self.schedule(at, Event::Join(node));
    }

    fn lost(&mut self, node: usize) -> bool {
        let p = self.nodes[node].spec.loss;
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn latency(&self, a: usize, b: usize) -> Duration {
        self.nodes[a].spec.latency + self.nodes[b].spec.latency
    }

    /// Runs until every downloader completed, or `limit` of virtual time / events passed.
    pub(crate) fn run(&mut self, limit: Duration) -> bool {
        for _ in 0..5_000_000 {
            self.drive_all();
            if self.all_complete() {
                return true;
            }
            let next_event = self.events.keys().next().map(|(t, _)| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.online)
                .filter_map(|n| n.download.as_ref()?.poll_timeout())
                .min()
                .map(|t| t - self.base);
            let Some(next) = [next_event, next_timer].into_iter().flatten().min() else {
                return false;
            };
            if next > limit {
                return false;
            }
            self.now = self.now.max(next);
            if next_event == Some(next) {
                let key = *self.events.keys().next().expect("checked above");
                let ev = self.events.remove(&key).expect("key from the map");
                self.deliver(ev);
            } else {
                let now = self.base + self.now;
                for n in self.nodes.iter_mut().filter(|n| n.online) {
                    if let Some(d) = n.download.as_mut()
                        && d.poll_timeout().is_some_and(|t| t <= now)
                    {
                        d.handle_timeout(now);
                        self.stats.timeouts_fired += 1;
                    }
                }
            }
        }
        false
    }

    pub(crate) fn all_complete(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.download.as_ref().is_none_or(|d| d.is_complete()))
    }

    pub(crate) fn now(&self) -> Duration {
        self.now
    }

    pub(crate) fn node_data(&self, i: usize) -> &[u8] {
        &self.nodes[i].data
    }

    pub(crate) fn download(&self, i: usize) -> Option<&Download<usize>> {
        self.nodes[i].download.as_ref()
    }

    fn drive_all(&mut self) {
        for d in 0..self.nodes.len() {
            if !self.nodes[d].online {
                continue;
            }
            let now = self.base + self.now;
            while let Some(action) = self.nodes[d]
                .download
                .as_mut()
                .and_then(|dl| dl.poll_action(now))
            {
                match action {
                    Action::Request {
                        peer,
                        id,
                        piece,
                        offset,
                        length,
                    } => {
                        self.stats.requests += 1;
                        if self.lost(peer) {
                            continue;
                        }
                        let at = self.now + self.latency(d, peer);
                        self.schedule(
                            at,
                            Event::Request {
                                from: d,
                                to: peer,
                                id,
                                piece,
                                offset,
                                length,
                            },
                        );
                    }
                    Action::Cancel { .. } => self.stats.cancels += 1,
                    Action::Ban { peer } => {
                        self.stats.bans.push((d, peer));
                        self.banned.insert((d, peer));
                    }
                    Action::Completed => {
                        self.stats.completed_at.insert(d, self.now);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, ev: Event) {
        let now = self.base + self.now;
        match ev {
            Event::Leave(n) => {
                self.nodes[n].online = false;
                for d in 0..self.nodes.len() {
                    if let Some(dl) = self.nodes[d].download.as_mut() {
                        dl.remove_peer(n);
                    }
                }
                if let Some(dl) = self.nodes[n].download.as_mut() {
                    for u in 0..self.stats.uploaded.len() {
                        dl.remove_peer(u);
                    }
                }
            }
            Event::Join(n) => {
                self.nodes[n].online = true;
                self.connect_all(n);
                for d in 0..self.nodes.len() {
                    if d != n && self.nodes[d].online {
                        let bits = self.nodes[n].have.clone();
                        if let Some(dl) = self.nodes[d].download.as_mut()
                            && !dl.is_banned(n)
                        {
                            dl.add_peer(n, now);
                            dl.peer_bitfield(n, bits);
                        }
                    }
                }
            }
            Event::Request {
                from,
                to,
                id,
                piece,
                offset,
                length,
            } => {
                if !self.nodes[to].online
                    || !self.nodes[from].online
                    || self.banned.contains(&(from, to))
                {
                    return;
                }
                let serves_any = self.nodes[to].spec.behavior != Behavior::Honest;
                if self.nodes[to].spec.behavior == Behavior::Silent {
                    return;
                }
                if !serves_any && !self.nodes[to].have.get(piece) {
                    let at = self.now + self.latency(from, to);
                    self.schedule(
                        at,
                        Event::Reject {
                            from: to,
                            to: from,
                            id,
                        },
                    );
                    return;
                }
                let start = self.meta.piece_offset(piece) as usize + offset as usize;
                let mut data = self.nodes[to].data[start..start + length as usize].to_vec();
                if let Behavior::Corrupt(bad) = &self.nodes[to].spec.behavior {
                    // A corrupt node serves the true bytes but flips one in its bad pieces.
                    data = self.source[start..start + length as usize].to_vec();
                    if bad.contains(&piece) {
                        data[0] ^= 0x55;
                    }
                }
                let node = &mut self.nodes[to];
                let send_start = node.upload_free_at.max(self.now);
                let done = send_start + Duration::from_secs_f64(length as f64 / node.spec.up_rate);
                node.upload_free_at = done;
                self.stats.uploaded[to] += u64::from(length);
                if self.lost(to) {
                    return;
                }
                let at = done + self.latency(from, to);
                self.schedule(
                    at,
                    Event::Piece {
                        from: to,
                        to: from,
                        id,
                        data,
                    },
                );
            }
            Event::Reject { from, to, id } => {
                if let Some(dl) = self.nodes[to].download.as_mut() {
                    dl.request_rejected(from, id);
                }
            }
            Event::Have { from, to, piece } => {
                if self.nodes[to].online
                    && self.nodes[from].online
                    && let Some(dl) = self.nodes[to].download.as_mut()
                {
                    dl.peer_have(from, piece);
                }
            }
            Event::Piece { from, to, id, data } => self.on_piece(from, to, id, data, now),
        }
    }

    fn on_piece(&mut self, from: usize, to: usize, id: u64, data: Vec<u8>, now: Instant) {
        if !self.nodes[to].online || self.banned.contains(&(to, from)) {
            return;
        }
        let Some(dl) = self.nodes[to].download.as_mut() else {
            return;
        };
        match dl.pending_request(id) {
            Some(p) if p.peer == from && p.length as usize == data.len() => {}
            _ => {
                self.stats.rejected_blocks += 1;
                return;
            }
        }
        let Ok(rb) = dl.block_received(from, id, now) else {
            // A late block whose data is no longer wanted.
            self.stats.rejected_blocks += 1;
            return;
        };
        let start = self.meta.piece_offset(rb.piece) as usize + rb.offset as usize;
        self.nodes[to].data[start..start + data.len()].copy_from_slice(&data);
        if !rb.piece_complete {
            return;
        }
        let p0 = self.meta.piece_offset(rb.piece) as usize;
        let p1 = p0 + self.meta.piece_size(rb.piece) as usize;
        let got: [u8; 20] = Sha1::digest(&self.nodes[to].data[p0..p1]).into();
        let ok = Some(got) == self.meta.piece_hash(rb.piece);
        if let Some(dl) = self.nodes[to].download.as_mut() {
            dl.piece_verified(rb.piece, ok);
        }
        if ok {
            self.nodes[to].have.set(rb.piece);
            for peer in 0..self.nodes.len() {
                if peer != to && self.nodes[peer].download.is_some() {
                    let at = self.now + self.latency(to, peer);
                    self.schedule(
                        at,
                        Event::Have {
                            from: to,
                            to: peer,
                            piece: rb.piece,
                        },
                    );
                }
            }
        }
    }
}
