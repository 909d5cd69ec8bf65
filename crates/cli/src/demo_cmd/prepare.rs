//! The demo's inputs: the model (given, or the default one fetched into the cache) and its
//! shards under `DATA/shards`, split again only when `manifest.json` there does not describe
//! this model (same source SHA-256) in this many shards with every file present at its size.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shardswarm_model::split::{SplitProgress, split};
use shardswarm_proto::Manifest;
use shardswarm_torrent::metainfo::Metainfo;

use crate::fetch_model::{self, FetchOptions};

/// The model file and its SHA-256.
pub(super) struct Model {
    pub(super) path: PathBuf,
    pub(super) sha256: String,
}

/// `given`, hashed; else the default model, fetched if missing (its SHA-256 is checked by the
/// fetch).
pub(super) fn model(given: Option<&Path>) -> Result<Model> {
    match given {
        Some(path) => {
            let sha256 = fetch_model::sha256_file(path)
                .with_context(|| format!("reading the model {}", path.display()))?;
            Ok(Model {
                path: path.to_path_buf(),
                sha256,
            })
        }
        None => {
            let path = fetch_model::fetch_default_model(&FetchOptions::default())
                .context("fetching the default model")?;
            Ok(Model {
                path,
                sha256: fetch_model::DEFAULT_MODEL.sha256.to_owned(),
            })
        }
    }
}

/// The manifest in `dir` when it describes `model` split in `shards`, with every shard file
/// present at the size it names.
pub(super) fn reusable(dir: &Path, model: &Model, shards: u32) -> Option<Manifest> {
    let bytes = fs::read(dir.join("manifest.json")).ok()?;
    let m = Manifest::from_json(&bytes).ok()?;
    m.validate().ok()?;
    let files_ok = m.shards.iter().all(|s| {
        fs::metadata(dir.join(&s.filename)).is_ok_and(|md| md.is_file() && md.len() == s.size)
    });
    (m.source_sha256 == model.sha256 && m.total_shards == shards && files_ok).then_some(m)
}

/// The shards of `model` in `dir`: reused, or split afresh (the directory is emptied first, so
/// no stale shard of an earlier split stays beside the new ones). Returns the manifest and
/// whether it was reused.
pub(super) fn shards(
    model: &Model,
    shards: u32,
    dir: &Path,
    mp: &MultiProgress,
) -> Result<(Manifest, bool)> {
    if let Some(m) = reusable(dir, model, shards) {
        return Ok((m, true));
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let bar = mp.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {bytes}/{total_bytes}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    let output = split(&model.path, shards, dir, |p| match p {
        SplitProgress::Hashing { done, total } => {
            bar.set_message("hashing source");
            bar.set_length(total);
            bar.set_position(done);
        }
        SplitProgress::Writing { shard, done, total } => {
            bar.set_message(format!("shard {shard}"));
            bar.set_length(total);
            bar.set_position(done);
        }
    })
    .with_context(|| format!("splitting {}", model.path.display()));
    bar.finish_and_clear();
    mp.remove(&bar);
    let output = output?;
    let manifest = output.to_manifest(|s| {
        let path = dir.join(&s.filename);
        let meta = Metainfo::from_file(&path, &s.filename, None)
            .with_context(|| format!("hashing {} into a torrent", path.display()))?;
        Ok::<_, anyhow::Error>((meta.info_hash(), meta.info.piece_length))
    })?;
    manifest.validate().context("manifest of the split")?;
    // Written last: a split cut short leaves no manifest, so the next run splits again.
    let path = dir.join("manifest.json");
    shardswarm_node::hash_cache::write_atomic(&path, manifest.to_json().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((manifest, false))
}
