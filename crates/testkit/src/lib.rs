//! Test harness for shardswarm: shard fixtures, in-process swarms on loopback, and awaiting
//! events with timeouts (never sleeping).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use candle_core::quantized::GgmlDType;
use rand::{RngCore, SeedableRng};
use shardswarm_model::gguf::{GgmlType, GgufFile, GgufWriter, TensorData};
use shardswarm_model::synth::{SynthSpec, write_synth_model};
use shardswarm_node::{CommonConfig, Event, NodeConfig, ServerConfig, ShardPolicy, Started};
use shardswarm_proto::{Manifest, ManifestShard, shard_filename};
use shardswarm_torrent::metainfo::Metainfo;
use tokio::sync::broadcast;

/// Smallest `blk.{i}.payload` tensor, in floats: every shard carries seeded random bytes, even
/// when the requested size is below what the model part alone takes.
pub const MIN_PAYLOAD_FLOATS: usize = 64;

/// The synthetic llama model behind [`write_random_shards`]: `n` layers, as small as the
/// synthetic vocabulary allows (dim 32, 2 query heads / 1 KV head, Q8_0), weights from `seed`.
pub fn random_model_spec(n: u32, seed: u64) -> SynthSpec {
    SynthSpec {
        name: "random-test-model".into(),
        dim: 32,
        layers: n,
        heads: 2,
        kv_heads: 1,
        ffn: 64,
        vocab: SynthSpec::MIN_VOCAB,
        ..SynthSpec::tiny(GgmlDType::Q8_0, seed)
    }
}

/// Writes `n` real llama shards `shard-{i}.gguf` plus a `manifest.json` whose sizes and
/// info-hashes describe the files written (info-hashes computed by the torrent crate).
///
/// The shards are those `shardswarm_model::split` makes of a tiny synthetic llama model with
/// `n` layers ([`random_model_spec`]): shard `i` holds layer `i` (`[i, i + 1)`), shard 0 the
/// token embedding, the last one the output norm and head, and every one the tokenizer metadata
/// and the `shardswarm.*` keys, so each loads with `shardswarm_model::Stage::load` and together
/// they chain into a `Generator`. Each shard also carries one extra tensor `blk.{i}.payload`
/// (F32, seeded random bytes, at least [`MIN_PAYLOAD_FLOATS`] floats) sized so the file is about
/// `size + i * 977` bytes, but never below the model part: about 25 kB for the first and last
/// shard, less in between, 35 kB for a lone shard.
///
/// Deterministic: the same `(n, size, seed)` gives the same bytes; other seeds give other
/// weights, payloads and info-hashes. `n` must be at least 1.
pub fn write_random_shards(dir: &Path, n: u32, size: usize, seed: u64) -> Result<Manifest> {
    if n == 0 {
        bail!("write_random_shards needs at least one shard");
    }
    std::fs::create_dir_all(dir)?;
    let work = tempfile::tempdir()?;
    let source = work.path().join("random.gguf");
    write_synth_model(&source, &random_model_spec(n, seed))?;
    let split_dir = work.path().join("split");
    let split = shardswarm_model::split::split(&source, n, &split_dir, |_| {})?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut shards = Vec::new();
    for s in &split.shards {
        let index = s.index;
        if s.layers != [index, index + 1] {
            bail!("split put layers {:?} in shard {index}", s.layers);
        }
        let shard = GgufFile::open(&split_dir.join(&s.filename))?;
        let target = (size + index as usize * 977) as u64;
        let probe = vec![0u8; MIN_PAYLOAD_FLOATS * 4];
        let base = with_payload(&shard, index, &probe).encoded_len()?;
        let floats = MIN_PAYLOAD_FLOATS + (target.saturating_sub(base) / 4) as usize;
        let mut payload = vec![0u8; floats * 4];
        rng.fill_bytes(&mut payload);

        let filename = shard_filename(index);
        let path = dir.join(&filename);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        with_payload(&shard, index, &payload).write(&mut file)?;
        std::io::Write::flush(&mut file)?;
        drop(file);
        let meta = Metainfo::from_file(&path, &filename, None)?;
        shards.push(ManifestShard {
            index,
            filename,
            layers: s.layers,
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
        source_sha256: split.source_sha256,
        source_size: split.source_size,
        block_count: n,
        total_shards: n,
        shards,
    };
    std::fs::write(dir.join("manifest.json"), manifest.to_json())?;
    Ok(manifest)
}

/// `shard` (metadata and tensors as they are) plus the F32 tensor `blk.{index}.payload`.
fn with_payload<'a>(shard: &'a GgufFile, index: u32, payload: &'a [u8]) -> GgufWriter<'a> {
    let mut w = GgufWriter::new();
    for (key, value) in shard.metadata() {
        w.push_metadata(key.clone(), value.clone());
    }
    for t in shard.tensors() {
        w.copy_tensor(t.name.clone(), shard, t);
    }
    w.add_tensor(
        format!("blk.{index}.payload"),
        GgmlType::F32,
        &[(payload.len() / 4) as u64],
        TensorData::Bytes(payload),
    );
    w
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
        hash_progress: None,
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

/// Flips the first byte of every piece of every shard of `manifest` under `node_dir`, so the
/// node (already done verifying) serves corrupt pieces from then on.
pub fn corrupt_every_piece(manifest: &Manifest, node_dir: &Path) -> Result<()> {
    for s in &manifest.shards {
        let path = node_dir
            .join("models")
            .join(&manifest.model_id)
            .join(&s.filename);
        let mut bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
        for at in (0..bytes.len()).step_by(s.piece_length as usize) {
            bytes[at] ^= 0xff;
        }
        std::fs::write(&path, bytes)?;
    }
    Ok(())
}
