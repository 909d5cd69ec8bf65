//! The actor over a disk that fills up (faults injected into its `PieceStore`), fed frames by
//! hand as one peer: the download pauses with a clear reason, cancels what it asked, blames and
//! bans nobody, counts nothing, and once space is back resumes and finishes the right file.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::storage::faults::{IoFaults, IoOp};

use super::*;
use crate::transfer::conn::{ConnMsg, Link};

const PIECE: usize = 16 * 1024;
const PIECES: usize = 4;

/// A disk that refuses block writes with ENOSPC while `full`.
#[derive(Debug, Default)]
struct Disk {
    full: AtomicBool,
}

impl IoFaults for Disk {
    fn before(&self, op: IoOp, _: &Path, _: u64) -> io::Result<()> {
        if op == IoOp::Write && self.full.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }
}

fn actor() -> (Actor, mpsc::Receiver<TransferEvent>) {
    let control = libp2p_stream::Behaviour::new().new_control();
    let (conn_tx, _) = mpsc::channel(16);
    let (events, ev_rx) = mpsc::channel(64);
    let metrics = Arc::new(Metrics::new(Registry::default()));
    let (bt, _) = bt::BtPeers::start(
        &TransferConfig::default(),
        conn_tx.clone(),
        RateLimiter::default(),
        RateLimiter::default(),
        metrics.clone(),
    )
    .unwrap();
    let actor = Actor {
        control,
        conn_tx,
        events,
        metrics,
        download_limit: RateLimiter::default(),
        torrents: HashMap::new(),
        peers: HashMap::new(),
        out: HashMap::new(),
        out_ready: HashSet::new(),
        inbound: HashMap::new(),
        wire: HashMap::new(),
        by_engine: HashMap::new(),
        cancelled: Default::default(),
        next_wire: 0,
        banned: HashSet::new(),
        retry_out: HashMap::new(),
        last_progress: Instant::now(),
        server_only: false,
        bt,
        paths: Default::default(),
        block_queue: crate::transfer::conn::BLOCK_QUEUE,
    };
    (actor, ev_rx)
}

fn frames(rx: &mut mpsc::Receiver<Frame>) -> Vec<Frame> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

fn events(rx: &mut mpsc::Receiver<TransferEvent>) -> Vec<TransferEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// Answers every `Request` among `frames` with the right bytes of `source`.
fn serve(actor: &mut Actor, peer: PeerId, frames: &[Frame], source: &[u8]) -> usize {
    let mut served = 0;
    for f in frames {
        if let Frame::Request {
            id,
            piece,
            offset,
            length,
            ..
        } = *f
        {
            let at = piece as usize * PIECE + offset as usize;
            let data = source[at..at + length as usize].to_vec().into();
            let frame = Frame::Piece { id, data };
            actor.on_conn(ConnMsg::Frame {
                peer,
                link: Link::Out,
                frame,
            });
            served += 1;
        }
    }
    served
}

fn bitfield(actor: &mut Actor, peer: PeerId, ih: InfoHash) {
    let bits = Bitfield::full(PIECES as u32).as_bytes().to_vec();
    actor.on_conn(ConnMsg::Frame {
        peer,
        link: Link::Out,
        frame: Frame::Bitfield {
            info_hash: ih,
            bits,
        },
    });
    actor.drive();
}

#[tokio::test]
async fn a_full_disk_pauses_the_download_without_blaming_the_peer_and_it_resumes_later() {
    let tmp = tempfile::tempdir().unwrap();
    let source: Vec<u8> = (0..PIECES * PIECE)
        .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 10) as u8)
        .collect();
    let src = tmp.path().join("shard-0.gguf");
    std::fs::write(&src, &source).unwrap();
    let meta = Metainfo::from_file(&src, "shard-0.gguf", Some(PIECE as u64)).unwrap();
    let ih = meta.info_hash();
    let entry = FileEntry {
        info_hash: ih,
        filename: "shard-0.gguf".into(),
        size: source.len() as u64,
        shard_index: 0,
        layers: [0, 1],
    };
    let dir = tmp.path().join("node");
    let (mut actor, mut ev) = actor();
    actor.fetch(entry, dir.clone(), Some(meta));
    let disk = Arc::new(Disk::default());
    let t = actor.torrents.get_mut(&ih).unwrap();
    t.store.as_mut().unwrap().set_faults(disk.clone());

    let server = PeerId::random();
    let (tx, mut rx) = mpsc::channel(64);
    actor.peers.insert(server, true);
    actor.out.insert(server, tx);
    actor.out_ready.insert(server);
    actor.ask(server);
    assert!(matches!(
        frames(&mut rx)[..],
        [Frame::Interested { info_hash }] if info_hash == ih
    ));
    bitfield(&mut actor, server, ih);
    let asked = frames(&mut rx);
    assert_eq!(asked.len(), PIECES, "{asked:?}");

    // The disk is full when the first block arrives.
    disk.full.store(true, Ordering::SeqCst);
    serve(&mut actor, server, &asked[..1], &source);
    let evs = events(&mut ev);
    let reason = evs
        .iter()
        .find_map(|e| match e {
            TransferEvent::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("a Failed event");
    assert!(
        reason.starts_with("not enough disk space: disk full: cannot write")
            && reason.contains("No space left on device")
            && reason.contains("retrying in 5s"),
        "{reason}"
    );
    assert!(!evs.iter().any(|e| matches!(
        e,
        TransferEvent::Banned { .. } | TransferEvent::Complete { .. }
    )));
    assert!(actor.banned.is_empty());
    let t = &actor.torrents[&ih];
    assert!(t.download.is_none() && t.pause.until.is_some());
    assert_eq!(t.store.as_ref().unwrap().have().count_ones(), 0);
    // What it had asked is cancelled; nothing more is asked while paused.
    let cancels = frames(&mut rx);
    assert_eq!(cancels.len(), PIECES - 1, "{cancels:?}");
    assert!(cancels.iter().all(|f| matches!(f, Frame::Cancel { .. })));
    // Blocks still arriving for cancelled requests are dropped.
    disk.full.store(false, Ordering::SeqCst);
    serve(&mut actor, server, &asked[1..], &source);
    actor.drive();
    assert!(frames(&mut rx).is_empty());
    assert_eq!(
        actor.torrents[&ih]
            .store
            .as_ref()
            .unwrap()
            .have()
            .count_ones(),
        0
    );
    assert!(!dir.join("shard-0.gguf").exists());
    assert!(dir.join("shard-0.gguf.part").exists());

    // Not before the pause is over; then it asks again and finishes.
    actor.resume_paused(Instant::now());
    assert!(frames(&mut rx).is_empty());
    actor.resume_paused(Instant::now() + pause::FIRST_PAUSE);
    assert!(matches!(frames(&mut rx)[..], [Frame::Interested { .. }]));
    bitfield(&mut actor, server, ih);
    let asked = frames(&mut rx);
    assert_eq!(serve(&mut actor, server, &asked, &source), PIECES);
    actor.drive();
    let done = events(&mut ev)
        .into_iter()
        .find_map(|e| match e {
            TransferEvent::Complete { path, .. } => Some(path),
            _ => None,
        })
        .expect("complete");
    assert_eq!(std::fs::read(done).unwrap(), source);
    assert!(actor.banned.is_empty());
}
