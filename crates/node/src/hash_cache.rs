//! The info-hash cache in `DATA_DIR/catalog/`: a file's metainfo is computed once and reused
//! while its size and modification time stay the same, so restarts do not re-hash shards.
//!
//! Layout: `index.json` maps a file's absolute path to `{size, mtime_ns, info_hash}`; the
//! metainfo itself is kept as a standard `<info_hash>.torrent`. Every write is atomic; a corrupt
//! index or torrent is ignored (and recomputed), never trusted.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use shardswarm_proto::InfoHash;
use shardswarm_torrent::metainfo::{Metainfo, MetainfoError};
use tracing::{debug, warn};

/// Why a file's metainfo could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum HashCacheError {
    /// Reading the file or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// Hashing the file failed.
    #[error("hashing {path}: {source}")]
    Metainfo {
        /// The file concerned.
        path: PathBuf,
        /// The torrent crate's error.
        source: MetainfoError,
    },
}

/// What the cache reports while it hashes a file it does not know yet (a cached file reports
/// nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashEvent<'a> {
    /// Hashing of `file` (`bytes` long) begins.
    Started {
        /// The file's name in the catalog.
        file: &'a str,
        /// Its size.
        bytes: u64,
    },
    /// `bytes` more of the current file are hashed.
    Hashed {
        /// Bytes hashed since the last event.
        bytes: u64,
    },
    /// The current file is done (successfully or not).
    Finished {
        /// The file's name in the catalog.
        file: &'a str,
    },
}

/// A callback for [`HashEvent`]s (the CLI draws a progress bar with it); cheap to clone.
#[derive(Clone)]
pub struct HashProgress(Arc<dyn Fn(HashEvent<'_>) + Send + Sync>);

impl HashProgress {
    /// Wraps `f`.
    pub fn new(f: impl Fn(HashEvent<'_>) + Send + Sync + 'static) -> Self {
        HashProgress(Arc::new(f))
    }

    fn report(&self, event: HashEvent<'_>) {
        (self.0)(event);
    }
}

impl fmt::Debug for HashProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashProgress(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: u128,
    info_hash: InfoHash,
}

/// A directory of cached metainfo, keyed by file path, size and mtime.
#[derive(Debug)]
pub struct HashCache {
    dir: PathBuf,
    index: BTreeMap<String, Entry>,
    progress: Option<HashProgress>,
}

impl HashCache {
    /// Opens (or starts) the cache in `dir`.
    pub fn open(dir: &Path) -> Self {
        let index = std::fs::read(dir.join("index.json"))
            .ok()
            .and_then(|b| match serde_json::from_slice(&b) {
                Ok(i) => Some(i),
                Err(e) => {
                    warn!(target: "shardswarm::catalog", error = %e, "ignoring corrupt info-hash cache index");
                    None
                }
            })
            .unwrap_or_default();
        HashCache {
            dir: dir.to_owned(),
            index,
            progress: None,
        }
    }

    /// Reports hashing progress to `progress` from now on.
    pub fn set_progress(&mut self, progress: Option<HashProgress>) {
        self.progress = progress;
    }

    /// The metainfo of `path` as a torrent named `name`: from the cache when the file is
    /// unchanged, else computed (streaming) and cached. Returns whether it was computed.
    pub fn metainfo(
        &mut self,
        path: &Path,
        name: &str,
    ) -> Result<(Metainfo, bool), HashCacheError> {
        let io = |source| HashCacheError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let key = key.to_string_lossy().into_owned();
        if let Some(entry) = self.index.get(&key)
            && entry.size == meta.len()
            && entry.mtime_ns == mtime_ns
            && let Some(m) = self.load_torrent(entry.info_hash, name)
        {
            debug!(target: "shardswarm::catalog", file = %path.display(), "info-hash from cache");
            return Ok((m, false));
        }
        if let Some(p) = &self.progress {
            p.report(HashEvent::Started {
                file: name,
                bytes: meta.len(),
            });
        }
        let progress = self.progress.clone();
        let hashed = Metainfo::from_file_with_progress(path, name, None, &mut |bytes| {
            if let Some(p) = &progress {
                p.report(HashEvent::Hashed { bytes });
            }
        });
        if let Some(p) = &self.progress {
            p.report(HashEvent::Finished { file: name });
        }
        let m = hashed.map_err(|source| HashCacheError::Metainfo {
            path: path.to_owned(),
            source,
        })?;
        let entry = Entry {
            size: meta.len(),
            mtime_ns,
            info_hash: m.info_hash(),
        };
        self.index.insert(key, entry);
        if let Err(e) = self.save(&m) {
            warn!(target: "shardswarm::catalog", dir = %self.dir.display(), error = %e, "could not write the info-hash cache");
        }
        Ok((m, true))
    }

    fn load_torrent(&self, hash: InfoHash, name: &str) -> Option<Metainfo> {
        let bytes = std::fs::read(self.dir.join(format!("{hash}.torrent"))).ok()?;
        let m = Metainfo::from_torrent_bytes(&bytes).ok()?;
        (m.info_hash() == hash && m.info.name == name).then_some(m)
    }

    fn save(&self, m: &Metainfo) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_atomic(
            &self.dir.join(format!("{}.torrent", m.info_hash())),
            &m.to_torrent_bytes(),
        )?;
        let index = serde_json::to_vec_pretty(&self.index).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("index.json"), &index)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn progress_covers_every_byte_of_a_new_file_and_is_silent_for_a_cached_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shard-0.gguf");
        std::fs::write(&file, vec![3u8; 1_000_003]).unwrap();
        let cache_dir = dir.path().join("catalog");
        let events: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = events.clone();
        let progress = HashProgress::new(move |e| {
            let line = match e {
                HashEvent::Started { file, bytes } => format!("start {file} {bytes}"),
                HashEvent::Hashed { bytes } => format!("hashed {bytes}"),
                HashEvent::Finished { file } => format!("done {file}"),
            };
            log.lock().unwrap().push(line);
        });
        let mut cache = HashCache::open(&cache_dir);
        cache.set_progress(Some(progress.clone()));
        cache.metainfo(&file, "shard-0.gguf").unwrap();
        let seen = std::mem::take(&mut *events.lock().unwrap());
        assert_eq!(seen.first().unwrap(), "start shard-0.gguf 1000003");
        assert_eq!(seen.last().unwrap(), "done shard-0.gguf");
        let hashed: u64 = seen[1..seen.len() - 1]
            .iter()
            .map(|l| l.strip_prefix("hashed ").unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(hashed, 1_000_003);
        let mut cache = HashCache::open(&cache_dir);
        cache.set_progress(Some(progress));
        let (_, computed) = cache.metainfo(&file, "shard-0.gguf").unwrap();
        assert!(!computed);
        assert!(
            events.lock().unwrap().is_empty(),
            "a cached file reports nothing"
        );
    }

    #[test]
    fn second_lookup_comes_from_cache_and_change_rehashes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shard-0.gguf");
        std::fs::write(&file, vec![7u8; 300_000]).unwrap();
        let cache_dir = dir.path().join("catalog");
        let (a, computed) = HashCache::open(&cache_dir)
            .metainfo(&file, "shard-0.gguf")
            .unwrap();
        assert!(computed);
        let (b, computed) = HashCache::open(&cache_dir)
            .metainfo(&file, "shard-0.gguf")
            .unwrap();
        assert!(!computed, "a restart must not re-hash an unchanged file");
        assert_eq!(a.info_hash(), b.info_hash());
        std::fs::write(&file, vec![8u8; 300_001]).unwrap();
        let (c, computed) = HashCache::open(&cache_dir)
            .metainfo(&file, "shard-0.gguf")
            .unwrap();
        assert!(computed);
        assert_ne!(c.info_hash(), a.info_hash());
    }

    #[test]
    fn corrupt_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let cache_dir = dir.path().join("catalog");
        std::fs::create_dir_all(&cache_dir).unwrap();
        std::fs::write(cache_dir.join("index.json"), b"{{{").unwrap();
        assert!(HashCache::open(&cache_dir).metainfo(&file, "f").is_ok());
    }
}
