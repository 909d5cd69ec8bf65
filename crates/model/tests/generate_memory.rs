//! Resident memory of loading one shard vs the whole default model (each test is its own
//! process under nextest). Weights are read once into candle's quantized storage; the tied
//! embedding stays quantized (candle-transformers' model dequantizes it to f32, +113 MB here).

mod common;
use anyhow::{Context, Result};
use common::default_model;
use shardswarm_model::{Device, Stage};
use std::path::Path;

fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kb * 1024)
}

/// Loads `file`, makes a 2048-position KV cache, runs one token when possible; returns the
/// RSS growth and the KV cache bytes.
fn measure(file: &Path) -> Result<(u64, u64)> {
    let before = rss_bytes()?;
    let stage = Stage::load(file, &Device::Cpu)?;
    let mut cache = stage.new_cache(2048)?;
    let c = stage.config();
    let kv_bytes = (stage.layers().len() * 2 * c.head_count_kv * c.head_dim * 2048 * 4) as u64;
    let h = if stage.has_embedding() {
        stage.embed(&[1])?
    } else {
        candle_core::Tensor::zeros(
            (1, 1, c.embedding_length),
            candle_core::DType::F32,
            &Device::Cpu,
        )?
    };
    stage.forward_layers(&h, 0, &mut cache)?;
    let grown = rss_bytes()?.saturating_sub(before);
    Ok((grown, kv_bytes))
}

const OVERHEAD: u64 = 48 << 20;

#[test]
fn one_shard_stays_within_its_size_plus_kv_cache_plus_overhead() -> Result<()> {
    let model = default_model()?;
    let dir = tempfile::tempdir()?;
    shardswarm_model::split::split(&model, 4, dir.path(), |_| {})?;
    let shard = dir.path().join("shard-1.gguf");
    let size = std::fs::metadata(&shard)?.len();
    let (grown, kv) = measure(&shard)?;
    eprintln!(
        "shard-1: file {} MB, RSS +{} MB (KV cache {} MB)",
        size >> 20,
        grown >> 20,
        kv >> 20
    );
    assert!(
        grown <= size + kv + OVERHEAD,
        "RSS grew {grown} > {size} + {kv} + {OVERHEAD}"
    );
    Ok(())
}

#[test]
fn whole_model_stays_within_its_size_plus_kv_cache_plus_overhead() -> Result<()> {
    let model = default_model()?;
    let size = std::fs::metadata(&model)?.len();
    let (grown, kv) = measure(&model)?;
    eprintln!(
        "whole model: file {} MB, RSS +{} MB (KV cache {} MB)",
        size >> 20,
        grown >> 20,
        kv >> 20
    );
    assert!(
        grown <= size + kv + OVERHEAD,
        "RSS grew {grown} > {size} + {kv} + {OVERHEAD}"
    );
    Ok(())
}
