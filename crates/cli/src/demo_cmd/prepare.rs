//! The demo's inputs: the model (given, or the default one fetched into the cache) and its
//! shards under `DATA/shards`, split again only when `manifest.json` there does not describe
//! this model (same source SHA-256) in this many shards with every file present at its size.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar};
use shardswarm_proto::Manifest;

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
    let manifest = crate::split_cmd::split_to_manifest(&model.path, shards, dir, &bar);
    mp.remove(&bar);
    let manifest = manifest?;
    // Written last: a split cut short leaves no manifest, so the next run splits again.
    let path = dir.join("manifest.json");
    shardswarm_node::hash_cache::write_atomic(&path, manifest.to_json().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((manifest, false))
}
