//! `shardswarm export-torrent FILE [-o OUT.torrent]`.

use std::path::Path;

use anyhow::{Context, Result};
use shardswarm_torrent::metainfo::Metainfo;

pub(crate) fn export(file: &Path, output: Option<&Path>) -> Result<()> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable file name", file.display()))?;
    let meta = Metainfo::from_file(file, name, None)
        .with_context(|| format!("hashing {}", file.display()))?;
    let out = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| format!("{name}.torrent").into());
    shardswarm_node::hash_cache::write_atomic(&out, &meta.to_torrent_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "wrote {} (info-hash {}, {} pieces of {} bytes)",
        out.display(),
        meta.info_hash(),
        meta.piece_count(),
        meta.info.piece_length
    );
    println!("{}", meta.magnet_link());
    Ok(())
}
