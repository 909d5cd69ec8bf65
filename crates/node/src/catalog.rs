//! The server's catalog (BRIEF §4): `manifest.json` in the shards directory when present
//! (written by `split`), else every `shard-N.gguf` there, N contiguous from 0.
//!
//! Invariants: `files[i].shard_index == i`; layer ranges are contiguous and non-empty; every
//! info-hash was computed from (or checked against) the file as it is on disk now.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use shardswarm_model::gguf::GgufFile;
use shardswarm_proto::{FileEntry, Manifest, ManifestError, parse_shard_filename, shard_filename};
use shardswarm_torrent::metainfo::Metainfo;
use tracing::{info, warn};

use crate::hash_cache::{HashCache, HashCacheError};

/// Why the shards directory cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Listing or reading the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// No shard files.
    #[error("no shard-N.gguf files in {dir}")]
    Empty {
        /// The shards directory.
        dir: PathBuf,
    },
    /// Shard indices are not contiguous from 0.
    #[error("shard-{missing}.gguf is missing in {dir} (shards must be numbered 0..N-1)")]
    Gap {
        /// The shards directory.
        dir: PathBuf,
        /// The first missing index.
        missing: u32,
    },
    /// `manifest.json` is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A file disagrees with the manifest.
    #[error("{file} does not match manifest.json: {what}")]
    Mismatch {
        /// The shard file.
        file: String,
        /// What differs.
        what: String,
    },
    /// A shard's GGUF header could not be read.
    #[error("{path}: {reason}")]
    Gguf {
        /// The shard file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// Hashing failed.
    #[error(transparent)]
    Hash(#[from] HashCacheError),
}

/// The files the server offers, with their metainfo.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The model id (manifest's, else the directory name).
    pub model_id: String,
    /// The model name (`general.name`, or the manifest's).
    pub model: String,
    /// One entry per shard, index order.
    pub files: Vec<FileEntry>,
    /// Metainfo per shard, index order.
    pub metainfo: Vec<Metainfo>,
    /// Size and mtime of every file, to notice changes.
    pub fingerprint: Fingerprint,
}

/// Sizes and modification times of the files a catalog was built from.
pub type Fingerprint = Vec<(String, u64, u128)>;

/// The current fingerprint of `dir` (its `manifest.json` and `shard-N.gguf` files).
pub fn fingerprint(dir: &Path) -> Result<Fingerprint, CatalogError> {
    let io = |source| CatalogError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "manifest.json" && parse_shard_filename(&name).is_none() {
            continue;
        }
        let meta = entry.metadata().map_err(io)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        out.push((name, meta.len(), mtime));
    }
    out.sort();
    Ok(out)
}

impl Catalog {
    /// Builds the catalog of `dir`, hashing through `cache`.
    pub fn load(dir: &Path, cache: &mut HashCache) -> Result<Catalog, CatalogError> {
        let fingerprint = fingerprint(dir)?;
        let manifest_path = dir.join("manifest.json");
        if manifest_path.exists() {
            let bytes = std::fs::read(&manifest_path).map_err(|source| CatalogError::Io {
                path: manifest_path.clone(),
                source,
            })?;
            let manifest = Manifest::from_json(&bytes)?;
            return Self::from_manifest(dir, manifest, cache, fingerprint);
        }
        Self::from_files(dir, cache, fingerprint)
    }

    fn from_manifest(
        dir: &Path,
        manifest: Manifest,
        cache: &mut HashCache,
        fingerprint: Fingerprint,
    ) -> Result<Catalog, CatalogError> {
        let mut files = Vec::new();
        let mut metainfo = Vec::new();
        for s in &manifest.shards {
            let path = dir.join(&s.filename);
            let (m, computed) = cache.metainfo(&path, &s.filename)?;
            log_hashed(&s.filename, &m, computed);
            let mismatch = |what: String| CatalogError::Mismatch {
                file: s.filename.clone(),
                what,
            };
            if m.info.length != s.size {
                return Err(mismatch(format!("size {} != {}", m.info.length, s.size)));
            }
            if m.info.piece_length == s.piece_length && m.info_hash() != s.info_hash {
                return Err(mismatch(format!(
                    "info-hash {} != {}",
                    m.info_hash(),
                    s.info_hash
                )));
            }
            files.push(FileEntry {
                info_hash: m.info_hash(),
                filename: s.filename.clone(),
                size: s.size,
                shard_index: s.index,
                layers: s.layers,
            });
            metainfo.push(m);
        }
        Ok(Catalog {
            model_id: manifest.model_id,
            model: manifest.model_name,
            files,
            metainfo,
            fingerprint,
        })
    }

    fn from_files(
        dir: &Path,
        cache: &mut HashCache,
        fingerprint: Fingerprint,
    ) -> Result<Catalog, CatalogError> {
        let mut indices: Vec<u32> = fingerprint
            .iter()
            .filter_map(|(name, _, _)| parse_shard_filename(name))
            .collect();
        indices.sort_unstable();
        if indices.is_empty() {
            return Err(CatalogError::Empty {
                dir: dir.to_owned(),
            });
        }
        if let Some(missing) = (0u32..).zip(&indices).find(|(want, got)| want != *got) {
            return Err(CatalogError::Gap {
                dir: dir.to_owned(),
                missing: missing.0,
            });
        }
        let mut files = Vec::new();
        let mut metainfo = Vec::new();
        let mut model = None;
        for &index in &indices {
            let filename = shard_filename(index);
            let path = dir.join(&filename);
            let header = read_header(&path)?;
            model.get_or_insert(header.name);
            let (m, computed) = cache.metainfo(&path, &filename)?;
            log_hashed(&filename, &m, computed);
            files.push(FileEntry {
                info_hash: m.info_hash(),
                filename,
                size: m.info.length,
                shard_index: index,
                layers: header.layers,
            });
            metainfo.push(m);
        }
        let model_id = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_owned());
        Ok(Catalog {
            model: model.unwrap_or_else(|| model_id.clone()),
            model_id,
            files,
            metainfo,
            fingerprint,
        })
    }

    /// The number of shards.
    pub fn total_shards(&self) -> u32 {
        self.files.len() as u32
    }
}

fn log_hashed(filename: &str, m: &Metainfo, computed: bool) {
    if computed {
        info!(target: "shardswarm::catalog", file = filename, info_hash = %m.info_hash(), "hashed");
    }
}

struct Header {
    name: String,
    layers: [u32; 2],
}

/// Reads the model name and the `shardswarm.layer_*` range of a shard file.
fn read_header(path: &Path) -> Result<Header, CatalogError> {
    let gguf_err = |reason: String| CatalogError::Gguf {
        path: path.to_owned(),
        reason,
    };
    let file = GgufFile::open(path).map_err(|e| gguf_err(e.to_string()))?;
    let u32_key = |key: &str| {
        file.get(key)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| {
                gguf_err(format!(
                    "not a shardswarm shard: no {key} (split it with `shardswarm split`)"
                ))
            })
    };
    let layers = [
        u32_key("shardswarm.layer_start")?,
        u32_key("shardswarm.layer_end")?,
    ];
    if layers[1] <= layers[0] {
        return Err(gguf_err(format!("empty layer range {layers:?}")));
    }
    let name = match file.get("general.name").and_then(|v| v.as_str()) {
        Some(n) => n.to_owned(),
        None => {
            warn!(target: "shardswarm::catalog", file = %path.display(), "no general.name");
            String::new()
        }
    };
    Ok(Header { name, layers })
}
