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

/// Writes `n` shard files plus a `manifest.json` whose info-hashes are computed by the torrent
/// crate. Each shard is a small valid GGUF (so nodes can "load" it: header and tensor table)
/// holding one layer: a `blk.{i}.payload` F32 tensor of seeded random bytes, about `size` bytes.
pub fn write_random_shards(dir: &Path, n: u32, size: usize, seed: u64) -> Result<Manifest> {
    use shardswarm_model::gguf::{GgmlType, GgufWriter, TensorData, Value};
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shards = Vec::new();
    for index in 0..n {
        let filename = shard_filename(index);
        let path = dir.join(&filename);
        let floats = (size + index as usize * 977) / 4;
        let mut payload = vec![0u8; floats * 4];
        rng.fill_bytes(&mut payload);
        let mut w = GgufWriter::new();
        w.push_metadata("general.architecture", Value::string("llama"))
            .push_metadata("general.name", Value::string("random-test-model"))
            .push_metadata("shardswarm.shard_index", Value::U32(index))
            .push_metadata("shardswarm.shard_count", Value::U32(n))
            .push_metadata("shardswarm.layer_start", Value::U32(index))
            .push_metadata("shardswarm.layer_end", Value::U32(index + 1))
            .add_tensor(
                format!("blk.{index}.payload"),
                GgmlType::F32,
                &[floats as u64],
                TensorData::Bytes(&payload),
            );
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        w.write(&mut file)?;
        std::io::Write::flush(&mut file)?;
        drop(file);
        let meta = Metainfo::from_file(&path, &filename, None)?;
        shards.push(ManifestShard {
            index,
            filename,
            layers: [index, index + 1],
            size: meta.info.length,
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

/// Logs to the test output, filtered by `RUST_LOG` (default: warnings). Safe to call twice.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
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

/// Waits until `count` distinct shards were reported loaded on `events`.
pub async fn wait_loaded(
    rx: &mut broadcast::Receiver<Event>,
    count: usize,
    limit: Duration,
) -> Result<()> {
    let mut done = std::collections::BTreeSet::new();
    wait_for(rx, limit, |e| {
        if let Event::ShardLoaded { index } = e {
            done.insert(*index);
        }
        (done.len() >= count).then_some(())
    })
    .await
}

/// Asserts that every shard of `manifest` under `node_dir` equals the one in `shards_dir`.
pub fn assert_same_files(manifest: &Manifest, shards_dir: &Path, node_dir: &Path) -> Result<()> {
    for s in &manifest.shards {
        let got = std::fs::read(
            node_dir
                .join("models")
                .join(&manifest.model_id)
                .join(&s.filename),
        )
        .with_context(|| format!("{} of {}", s.filename, node_dir.display()))?;
        let want = std::fs::read(shards_dir.join(&s.filename))?;
        if got != want {
            bail!(
                "{} under {} differs from the server's",
                s.filename,
                node_dir.display()
            );
        }
    }
    Ok(())
}
