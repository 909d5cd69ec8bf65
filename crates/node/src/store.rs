//! A node's shards on disk: `DATA_DIR/models/<model_id>/shard-N.gguf`.
//!
//! Names from the network (model ids, file names) are validated before they touch a path, so a
//! peer cannot make a node read or write outside its data directory.

use std::path::{Path, PathBuf};

use shardswarm_proto::{FileEntry, parse_shard_filename};
use shardswarm_torrent::metainfo::Metainfo;
use tracing::debug;

use crate::hash_cache::HashCache;

/// Why a name from the network is refused as a path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The model id has characters outside `[A-Za-z0-9._-]`, starts with a dot, is too long or
    /// is a Windows device name.
    #[error("model id {0:?} is not a safe directory name")]
    ModelId(String),
    /// The file name is not `shard-N.gguf`.
    #[error("file name {0:?} is not shard-N.gguf")]
    FileName(String),
}

/// Checks that `id` is safe as one directory name.
pub fn validate_model_id(id: &str) -> Result<(), PathError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        // Also one harmless path component on Windows (no `CON`, `nul.x`, trailing dot).
        && shardswarm_torrent::metainfo::validate_name(id).is_ok();
    if ok {
        Ok(())
    } else {
        Err(PathError::ModelId(id.chars().take(64).collect()))
    }
}

/// The shard files a node holds.
#[derive(Debug)]
pub struct LocalStore {
    models_dir: PathBuf,
    cache: HashCache,
}

impl LocalStore {
    /// The store under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        LocalStore {
            models_dir: data_dir.join("models"),
            cache: HashCache::open(&data_dir.join("catalog")),
        }
    }

    /// Where `filename` of `model_id` lives (validated).
    pub fn shard_path(&self, model_id: &str, filename: &str) -> Result<PathBuf, PathError> {
        validate_model_id(model_id)?;
        if parse_shard_filename(filename).is_none() {
            return Err(PathError::FileName(filename.chars().take(64).collect()));
        }
        Ok(self.models_dir.join(model_id).join(filename))
    }

    /// The directory of `model_id`'s shards (validated).
    pub fn model_dir(&self, model_id: &str) -> Result<PathBuf, PathError> {
        validate_model_id(model_id)?;
        Ok(self.models_dir.join(model_id))
    }

    /// The metainfo of the complete file when it is on disk with the catalog's size and
    /// info-hash; `None` when it is missing or differs.
    pub fn verified(&mut self, model_id: &str, entry: &FileEntry) -> Option<(PathBuf, Metainfo)> {
        let path = self.shard_path(model_id, &entry.filename).ok()?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() == entry.size => {}
            _ => return None,
        }
        match self.cache.metainfo(&path, &entry.filename) {
            Ok((m, _)) if m.info_hash() == entry.info_hash => Some((path, m)),
            Ok(_) => None,
            Err(e) => {
                debug!(target: "shardswarm::store", file = %path.display(), error = %e, "cannot hash");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        let store = LocalStore::new(Path::new("/data"));
        for id in ["..", ".", "", "a/b", "a\\b", "a\0b", "/etc", ".hidden"] {
            assert!(store.shard_path(id, "shard-0.gguf").is_err(), "{id:?}");
        }
        for f in [
            "../shard-0.gguf",
            "/etc/passwd",
            "shard-0.gguf\0",
            "x.gguf",
            "shard-1.gguf/..",
        ] {
            assert!(store.shard_path("m", f).is_err(), "{f:?}");
        }
        assert_eq!(
            store.shard_path("m-1.2_x", "shard-3.gguf").unwrap(),
            Path::new("/data/models/m-1.2_x/shard-3.gguf")
        );
    }
}
