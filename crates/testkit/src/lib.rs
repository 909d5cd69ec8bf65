//! Test harness for shardswarm: shard fixtures, in-process swarms on loopback, and awaiting
//! events with timeouts (never sleeping).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::{RngCore, SeedableRng};
use shardswarm_node::{CommonConfig, Event, NodeConfig, ServerConfig, ShardPolicy, Started};
use shardswarm_proto::{Manifest, ManifestShard, shard_filename};
use shardswarm_torrent::metainfo::Metainfo;
use tokio::sync::broadcast;

/// Writes `n` shard files of random bytes (seeded) plus a `manifest.json` whose info-hashes are
/// computed by the torrent crate. Layers: one per shard. Returns the manifest.
pub fn write_random_shards(dir: &Path, n: u32, size: usize, seed: u64) -> Result<Manifest> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shards = Vec::new();
    for index in 0..n {
        let filename = shard_filename(index);
        let path = dir.join(&filename);
        let mut bytes = vec![0u8; size + index as usize * 977];
        rng.fill_bytes(&mut bytes);
        std::fs::write(&path, &bytes)?;
        let meta = Metainfo::from_file(&path, &filename, None)?;
        shards.push(ManifestShard {
            index,
            filename,
            layers: [index, index + 1],
            size: bytes.len() as u64,
            sha256: String::new(),
            info_hash: meta.info_hash(),
            piece_length: meta.info.piece_length,
        });
    }
    let manifest = Manifest {
        format: 1,
        model_id: format!("random{seed:010}"),
        model_name: "random-test-model".into(),
        architecture: "llama".into(),
        source_file: "random.gguf".into(),
        source_sha256: String::new(),
        source_size: 0,
        block_count: n,
        total_shards: n,
        shards,
    };
    std::fs::write(dir.join("manifest.json"), manifest.to_json())?;
    Ok(manifest)
}

/// Loopback listen addresses on port 0: QUIC and TCP.
pub fn loopback_listen() -> Vec<libp2p::Multiaddr> {
    ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A server config on loopback.
pub fn server_config(data_dir: PathBuf, shards_dir: PathBuf) -> ServerConfig {
    ServerConfig {
        common: CommonConfig::new(data_dir, loopback_listen()),
        shards_dir,
        rescan_interval: Duration::from_secs(3600),
    }
}

/// A node config on loopback joining `server`.
pub fn node_config(
    data_dir: PathBuf,
    server: Vec<libp2p::Multiaddr>,
    shards: ShardPolicy,
) -> NodeConfig {
    NodeConfig {
        common: CommonConfig::new(data_dir, loopback_listen()),
        server,
        peers: Vec::new(),
        shards,
        max_shards: None,
    }
}

/// Starts a server on loopback and waits for its addresses.
pub async fn start_server(
    data_dir: PathBuf,
    shards_dir: PathBuf,
) -> Result<(Started, Vec<libp2p::Multiaddr>)> {
    let started = shardswarm_node::start_server(server_config(data_dir, shards_dir)).await?;
    let addrs = within(Duration::from_secs(10), started.handle.listen_addrs()).await??;
    Ok((started, addrs))
}

/// Awaits `fut` for at most `limit`.
pub async fn within<F: std::future::Future>(limit: Duration, fut: F) -> Result<F::Output> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("timed out after {limit:?}"))
}

/// Waits (at most `limit`) for the first event `pick` maps to `Some`.
pub async fn wait_for<T>(
    rx: &mut broadcast::Receiver<Event>,
    limit: Duration,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> Result<T> {
    let fut = async {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    if let Some(t) = pick(&ev) {
                        return Ok(t);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => bail!("missed {n} events"),
                Err(broadcast::error::RecvError::Closed) => bail!("peer stopped"),
            }
        }
    };
    within(limit, fut).await?
}
