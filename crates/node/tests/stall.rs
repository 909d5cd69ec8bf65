//! A peer that stalls: it speaks the piece protocol far enough to be asked (Hello, a full
//! bitfield) and then never answers a request. A real libp2p peer in this process, built on the
//! node crate's own protocol pieces (identify as a shardswarm node, `/shardswarm/pieces/1.0.0`,
//! the torrent crate's frame codec). The node's requests to it time out, are cancelled and go to
//! the server instead, never back to the staller; the download completes with the server's
//! bytes and the swarm is ready.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, StreamProtocol, identify, noise, tcp, yamux};
use shardswarm_node::transfer::Rate;
use shardswarm_node::{Event, ShardPolicy, agent_version};
use shardswarm_proto::InfoHash;
use shardswarm_proto::status::Role;
use shardswarm_testkit::{
    assert_same_files, node_config, server_config, wait_for, wait_loaded, within,
    write_random_shards,
};
use shardswarm_torrent::bitfield::Bitfield;
use shardswarm_torrent::wire::{Frame, FrameDecoder};

const PIECES: StreamProtocol = StreamProtocol::new("/shardswarm/pieces/1.0.0");
const LIMIT: Duration = Duration::from_secs(90);

#[derive(NetworkBehaviour)]
struct Staller {
    identify: identify::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// What the staller was sent.
#[derive(Debug, Default)]
struct Seen {
    /// Request id → (torrent, piece, offset) and when it came.
    requests: BTreeMap<u64, ((InfoHash, u32, u32), Instant)>,
    /// Cancelled request id → when.
    cancels: BTreeMap<u64, Instant>,
}

/// Serves one inbound piece stream: Hello back, a full bitfield for every torrent it knows,
/// `NotHere` for metadata, and silence for requests.
async fn stall(
    mut stream: libp2p::Stream,
    pieces: BTreeMap<InfoHash, u32>,
    seen: Arc<Mutex<Seen>>,
) -> Result<()> {
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    loop {
        let frame = loop {
            if let Some(f) = dec.next_frame()? {
                break f;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            dec.push(&buf[..n]);
        };
        let reply = match frame {
            Frame::Hello { .. } => Some(Frame::Hello { version: 1 }),
            Frame::Interested { info_hash } => Some(match pieces.get(&info_hash) {
                Some(&n) => Frame::Bitfield {
                    info_hash,
                    bits: Bitfield::full(n).as_bytes().to_vec(),
                },
                None => Frame::NotHere { info_hash },
            }),
            Frame::GetMetadata { info_hash } => Some(Frame::NotHere { info_hash }),
            Frame::Request {
                id,
                info_hash,
                piece,
                offset,
                ..
            } => {
                if let Ok(mut s) = seen.lock() {
                    s.requests
                        .insert(id, ((info_hash, piece, offset), Instant::now()));
                }
                None
            }
            Frame::Cancel { id } => {
                if let Ok(mut s) = seen.lock() {
                    s.cancels.insert(id, Instant::now());
                }
                None
            }
            _ => None,
        };
        if let Some(f) = reply {
            out.clear();
            f.encode(&mut out);
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
    }
}

/// Starts the staller and dials `node`; returns what it sees.
fn start_staller(node: Multiaddr, pieces: BTreeMap<InfoHash, u32>) -> Result<Arc<Mutex<Seen>>> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Staller {
            identify: identify::Behaviour::new(
                identify::Config::new("/shardswarm/id/1.0.0".into(), key.public())
                    .with_agent_version(agent_version(Role::Node)),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(PIECES)
        .context("accept")?;
    swarm.dial(node)?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            tokio::spawn(stall(stream, pieces.clone(), s.clone()));
        }
    });
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_peers_requests_time_out_and_are_reissued_to_the_server() -> Result<()> {
    shardswarm_testkit::init_tracing();
    let tmp = tempfile::tempdir()?;
    let shards = tmp.path().join("shards");
    let manifest = write_random_shards(&shards, 2, 4_000_000, 9)?;
    let pieces: BTreeMap<InfoHash, u32> = manifest
        .shards
        .iter()
        .map(|s| (s.info_hash, s.size.div_ceil(s.piece_length) as u32))
        .collect();
    let mut cfg = server_config(tmp.path().join("server"), shards.clone());
    // ~4 s for a copy: the staller joins early and gets first-hand requests (not only endgame
    // duplicates, which the server's answers would cancel before any timeout).
    cfg.common.transfer.upload_limit = Some(Rate(2_000_000));
    let mut server = shardswarm_node::start_server(cfg).await?;
    let addrs = within(Duration::from_secs(10), server.handle.listen_addrs()).await??;
    let node_dir = tmp.path().join("node");
    let mut node =
        shardswarm_node::start_node(node_config(node_dir.clone(), addrs, ShardPolicy::All)).await?;
    let node_addrs = within(Duration::from_secs(10), node.handle.listen_addrs()).await??;
    let tcp = node_addrs
        .into_iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .context("the node listens on TCP")?;
    let seen = start_staller(tcp, pieces)?;

    let started = Instant::now();
    wait_loaded(&mut node.events, 2, LIMIT).await?;
    let took = started.elapsed();
    wait_for(&mut server.events, LIMIT, |e| {
        matches!(e, Event::SwarmReady { ready: true }).then_some(())
    })
    .await?;
    assert!(server.handle.swarm_status().await?.swarm_ready);
    assert_same_files(&manifest, &shards, &node_dir)?;

    let seen = std::mem::take(&mut *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    eprintln!(
        "done in {took:?}; the staller was asked for {} blocks and {} were cancelled",
        seen.requests.len(),
        seen.cancels.len()
    );
    assert!(!seen.requests.is_empty(), "the staller was never asked");
    // Every request to it was withdrawn (nothing completes while it holds a block)...
    let asked: BTreeSet<u64> = seen.requests.keys().copied().collect();
    let cancelled: BTreeSet<u64> = seen.cancels.keys().copied().collect();
    assert_eq!(asked, cancelled, "requests not cancelled");
    // ... and some by the request timeout (20 s), not only as endgame duplicates.
    let timed_out = seen
        .requests
        .iter()
        .filter(|(id, (_, at))| seen.cancels[*id].duration_since(*at) >= Duration::from_secs(19))
        .count();
    eprintln!("{timed_out} of them timed out");
    assert!(timed_out > 0, "no request to the staller timed out");
    // Re-issued elsewhere: no block was asked of the staller twice.
    let blocks: BTreeSet<_> = seen.requests.values().map(|(b, _)| b).collect();
    assert_eq!(
        blocks.len(),
        seen.requests.len(),
        "a timed-out block went back to the staller: {:?}",
        seen.requests
    );
    assert_eq!(node.handle.metrics().downloaded_from("peer"), 0);
    let total: u64 = manifest.shards.iter().map(|s| s.size).sum();
    assert_eq!(node.handle.metrics().downloaded_from("server"), total);
    // One request timeout (20 s) and the rest of the transfer, not a cascade of timeouts.
    assert!(took < Duration::from_secs(45), "took {took:?}");
    node.handle.shutdown().await;
    server.handle.shutdown().await;
    Ok(())
}
