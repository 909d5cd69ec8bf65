//! `shardswarm split MODEL.gguf --shards N --out DIR` (BRIEF §7): writes the shard GGUFs, then
//! hashes each into a BitTorrent v1 metainfo and writes `DIR/manifest.json` atomically. A short
//! table goes to stdout; progress and logs go to stderr.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use shardswarm_model::split::{SplitProgress, split};
use shardswarm_proto::parse_shard_filename;
use shardswarm_torrent::metainfo::Metainfo;

/// Runs the subcommand.
pub(crate) fn run(model: &Path, shards: u32, out: &Path) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    let manifest = split_to_manifest(model, shards, out, &bar)?;
    let manifest_path = out.join("manifest.json");
    write_atomically(&manifest_path, manifest.to_json().as_bytes())?;
    tracing::info!(target: "shardswarm::split", path = %manifest_path.display(), model_id = %manifest.model_id, "wrote manifest");
    warn_stale_shards(out, shards);

    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{} ({}, {} layers) -> {} shards in {}, model_id {}",
        manifest.model_name,
        manifest.architecture,
        manifest.block_count,
        manifest.total_shards,
        out.display(),
        manifest.model_id
    )?;
    writeln!(
        stdout,
        "{:<14} {:>9} {:>12}  info_hash",
        "shard", "layers", "bytes"
    )?;
    for s in &manifest.shards {
        let layers = format!("{}..{}", s.layers[0], s.layers[1]);
        writeln!(
            stdout,
            "{:<14} {:>9} {:>12}  {}",
            s.filename, layers, s.size, s.info_hash
        )?;
    }
    writeln!(stdout, "manifest: {}", manifest_path.display())?;
    Ok(())
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Shard files from an earlier split with more shards stay on disk; say so (the manifest is
/// what counts, but a directory scan without it would pick them up).
fn warn_stale_shards(out: &Path, shards: u32) {
    let Ok(entries) = fs::read_dir(out) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let index = name.to_str().and_then(parse_shard_filename);
        if index.is_some_and(|i| i >= shards) {
            tracing::warn!(
                target: "shardswarm::split",
                file = %entry.path().display(),
                "stale shard from an earlier split; remove it"
            );
        }
    }
}

/// Splits `model` into `shards` files in `out` with progress on `bar` (hashing the source, then
/// writing each shard), and returns the validated manifest of the files written (not yet saved).
pub(crate) fn split_to_manifest(
    model: &Path,
    shards: u32,
    out: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<shardswarm_proto::Manifest> {
    bar.set_style(
        ProgressStyle::with_template("{msg:>16} [{bar:30}] {bytes}/{total_bytes}")
            .context("progress bar template")?
            .progress_chars("=> "),
    );
    let output = split(model, shards, out, |p| match p {
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
    .with_context(|| format!("splitting {}", model.display()));
    bar.finish_and_clear();
    let manifest = output?.to_manifest(|s| {
        let path = out.join(&s.filename);
        let meta = Metainfo::from_file(&path, &s.filename, None)
            .with_context(|| format!("hashing {} into a torrent", path.display()))?;
        Ok::<_, anyhow::Error>((meta.info_hash(), meta.info.piece_length))
    })?;
    manifest.validate().context("manifest of the split")?;
    Ok(manifest)
}
