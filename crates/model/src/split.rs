//! `split`: cuts a llama GGUF into N shard GGUFs by contiguous layer ranges (BRIEF §7).
//!
//! Invariants of the output:
//! - ranges are contiguous, non-empty and cover `0..block_count`; they minimise the largest
//!   shard's tensor bytes, and among those the sum of squared shard bytes (earliest cut on ties),
//!   so the result is deterministic. The embedding counts toward shard 0, the final norm and the
//!   head toward the last shard;
//! - shard k holds the source metadata in source order plus the `shardswarm.*` keys, and only its
//!   tensors in source order: `blk.{i}.*` for i in its range, `token_embd.weight` (shard 0),
//!   `output_norm.weight` and `output.weight` (last shard; a copy of `token_embd.weight` appended
//!   at the end when the source ties the head), and `rope_freqs.weight` (every shard) if present;
//! - tensor bytes are byte-for-byte the source's; files are written to a temp name, fsynced and
//!   renamed, so a reader never sees a half-written `shard-{k}.gguf`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shardswarm_proto::{InfoHash, Manifest, ManifestShard, shard_filename};

use crate::gguf::{GgufError, GgufFile, GgufWriter, TensorInfo, Value};

/// Shard index (u32).
pub const KEY_SHARD_INDEX: &str = "shardswarm.shard_index";
/// Shard count (u32).
pub const KEY_SHARD_COUNT: &str = "shardswarm.shard_count";
/// First layer held (u32).
pub const KEY_LAYER_START: &str = "shardswarm.layer_start";
/// One past the last layer held (u32).
pub const KEY_LAYER_END: &str = "shardswarm.layer_end";
/// SHA-256 of the source file, lowercase hex (string).
pub const KEY_SOURCE_SHA256: &str = "shardswarm.source_sha256";
/// Block count of the source model (u32).
pub const KEY_BLOCK_COUNT: &str = "shardswarm.block_count";

const EMBEDDING: &str = "token_embd.weight";
const OUTPUT_NORM: &str = "output_norm.weight";
const OUTPUT: &str = "output.weight";
const ROPE_FREQS: &str = "rope_freqs.weight";

/// Why a split failed.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The source (or a written shard) is not a readable GGUF.
    #[error("{} is not a usable GGUF", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        #[source]
        source: GgufError,
    },
    /// Reading or writing files failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Only the llama architecture can be split.
    #[error(
        "architecture {arch:?} is not supported: shardswarm runs llama-architecture GGUFs only"
    )]
    UnsupportedArchitecture {
        /// `general.architecture` of the source.
        arch: String,
    },
    /// Zero shards, or more shards than layers.
    #[error("cannot split {block_count} layers into {requested} shards (need 1..={block_count})")]
    BadShardCount {
        /// Shards asked for.
        requested: u32,
        /// Layers of the model.
        block_count: u32,
    },
    /// The source is itself a shard.
    #[error("{} is already a shardswarm shard; split the original model", path.display())]
    AlreadyShard {
        /// The file.
        path: PathBuf,
    },
    /// The tensors do not form a complete llama model.
    #[error("not a complete llama model: {reason}")]
    Incomplete {
        /// What is missing or unexpected.
        reason: String,
    },
    /// The output would overwrite the source.
    #[error("output {} would overwrite the source", path.display())]
    OverwritesSource {
        /// The output path.
        path: PathBuf,
    },
}

/// Progress reports of [`split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitProgress {
    /// Hashing the source: `done` of `total` bytes.
    Hashing {
        /// Bytes hashed.
        done: u64,
        /// Source size.
        total: u64,
    },
    /// Writing shard `shard`: `done` of `total` bytes.
    Writing {
        /// Shard index.
        shard: u32,
        /// Bytes written.
        done: u64,
        /// Shard size.
        total: u64,
    },
}

/// One written shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitShard {
    /// Shard index from 0.
    pub index: u32,
    /// `shard-{index}.gguf`.
    pub filename: String,
    /// Half-open layer range.
    pub layers: [u32; 2],
    /// File size.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// What [`split`] wrote and the source it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOutput {
    /// First 16 hex digits of the source SHA-256.
    pub model_id: String,
    /// `general.name`, else the source file stem.
    pub model_name: String,
    /// `general.architecture`.
    pub architecture: String,
    /// Number of transformer blocks.
    pub block_count: u32,
    /// SHA-256 of the source, lowercase hex.
    pub source_sha256: String,
    /// Source file size.
    pub source_size: u64,
    /// Source file name.
    pub source_file: String,
    /// The shards, index order.
    pub shards: Vec<SplitShard>,
}

impl SplitOutput {
    /// Builds the manifest; `torrent` gives each shard's info-hash and piece length.
    pub fn to_manifest<E>(
        &self,
        mut torrent: impl FnMut(&SplitShard) -> Result<(InfoHash, u64), E>,
    ) -> Result<Manifest, E> {
        let mut shards = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let (info_hash, piece_length) = torrent(s)?;
            shards.push(ManifestShard {
                index: s.index,
                filename: s.filename.clone(),
                layers: s.layers,
                size: s.size,
                sha256: s.sha256.clone(),
                info_hash,
                piece_length,
            });
        }
        Ok(Manifest {
            format: 1,
            model_id: self.model_id.clone(),
            model_name: self.model_name.clone(),
            architecture: self.architecture.clone(),
            source_file: self.source_file.clone(),
            source_sha256: self.source_sha256.clone(),
            source_size: self.source_size,
            block_count: self.block_count,
            total_shards: self.shards.len() as u32,
            shards,
        })
    }
}

/// Where each source tensor goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Block(u32),
    First,
    Last,
    Every,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SplitError {
    let context = context.into();
    move |source| SplitError::Io { context, source }
}

/// Splits `source` into `shards` files `shard-{k}.gguf` in `out_dir` (created if needed).
pub fn split(
    source: &Path,
    shards: u32,
    out_dir: &Path,
    mut progress: impl FnMut(SplitProgress),
) -> Result<SplitOutput, SplitError> {
    let gguf_err = |source_err| SplitError::Gguf {
        path: source.to_path_buf(),
        source: source_err,
    };
    let g = GgufFile::open(source).map_err(gguf_err)?;
    let arch = g
        .get_str("general.architecture")
        .map_err(gguf_err)?
        .to_string();
    if arch != "llama" {
        return Err(SplitError::UnsupportedArchitecture { arch });
    }
    if g.get(KEY_SHARD_COUNT).is_some() {
        return Err(SplitError::AlreadyShard {
            path: source.to_path_buf(),
        });
    }
    let block_count = g.get_u32("llama.block_count").map_err(gguf_err)?;
    if shards == 0 || shards > block_count {
        return Err(SplitError::BadShardCount {
            requested: shards,
            block_count,
        });
    }
    // Every block has tensors, so a count past the tensors is a lie (refused before anything is
    // allocated per block).
    if block_count as usize > g.tensors().len() {
        return Err(incomplete(format!(
            "{block_count} blocks claimed but the file has {} tensors",
            g.tensors().len()
        )));
    }
    let places = classify(g.tensors(), block_count)?;
    let embedding = g
        .tensor(EMBEDDING)
        .ok_or_else(|| incomplete(format!("no {EMBEDDING}")))?;
    let norm = g
        .tensor(OUTPUT_NORM)
        .ok_or_else(|| incomplete(format!("no {OUTPUT_NORM}")))?;
    let tied = g.tensor(OUTPUT).is_none();
    let head_size = g.tensor(OUTPUT).unwrap_or(embedding).size;

    let mut costs = vec![0u64; block_count as usize];
    for (t, place) in g.tensors().iter().zip(&places) {
        if let Place::Block(b) = place {
            costs[*b as usize] += t.size;
        }
    }
    if let Some(b) = costs.iter().position(|&c| c == 0) {
        return Err(incomplete(format!("block {b} has no tensors")));
    }
    costs[0] += embedding.size;
    costs[block_count as usize - 1] += norm.size + head_size;
    let ranges = partition(&costs, shards);

    let source_size = g.file_len();
    let source_sha256 = hash_file(source, source_size, &mut progress)?;
    let source_file = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_name = match g.get_str("general.name") {
        Ok(name) if !name.is_empty() => name.to_string(),
        _ => source
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    fs::create_dir_all(out_dir).map_err(io_err(format!("creating {}", out_dir.display())))?;
    let source_canon =
        fs::canonicalize(source).map_err(io_err(format!("resolving {}", source.display())))?;

    let mut written = Vec::with_capacity(ranges.len());
    for (k, &[start, end]) in ranges.iter().enumerate() {
        let k = k as u32;
        let last = k + 1 == shards;
        let mut w = GgufWriter::new();
        for (key, value) in g.metadata() {
            w.push_metadata(key.clone(), value.clone());
        }
        w.push_metadata(KEY_SHARD_INDEX, Value::U32(k))
            .push_metadata(KEY_SHARD_COUNT, Value::U32(shards))
            .push_metadata(KEY_LAYER_START, Value::U32(start))
            .push_metadata(KEY_LAYER_END, Value::U32(end))
            .push_metadata(KEY_SOURCE_SHA256, Value::string(source_sha256.clone()))
            .push_metadata(KEY_BLOCK_COUNT, Value::U32(block_count));
        for (t, place) in g.tensors().iter().zip(&places) {
            let keep = match *place {
                Place::Block(b) => (start..end).contains(&b),
                Place::First => k == 0,
                Place::Last => last,
                Place::Every => true,
            };
            if keep {
                w.copy_tensor(t.name.clone(), &g, t);
            }
        }
        if last && tied {
            w.copy_tensor(OUTPUT, &g, embedding);
        }
        let filename = shard_filename(k);
        let path = out_dir.join(&filename);
        if fs::canonicalize(&path).is_ok_and(|p| p == source_canon) {
            return Err(SplitError::OverwritesSource { path });
        }
        let (size, sha256) = write_atomically(&w, &path, k, &mut progress)?;
        tracing::info!(target: "shardswarm::split", shard = k, start, end, size, "wrote {}", path.display());
        written.push(SplitShard {
            index: k,
            filename,
            layers: [start, end],
            size,
            sha256,
        });
    }
    Ok(SplitOutput {
        model_id: source_sha256[..16].to_string(),
        model_name,
        architecture: arch,
        block_count,
        source_sha256,
        source_size,
        source_file,
        shards: written,
    })
}

fn incomplete(reason: String) -> SplitError {
    SplitError::Incomplete { reason }
}

/// Assigns each tensor (in file order) to a block or a special place; refuses unknown names.
fn classify(tensors: &[TensorInfo], block_count: u32) -> Result<Vec<Place>, SplitError> {
    tensors
        .iter()
        .map(|t| match t.name.as_str() {
            EMBEDDING => Ok(Place::First),
            OUTPUT_NORM | OUTPUT => Ok(Place::Last),
            ROPE_FREQS => Ok(Place::Every),
            name => {
                let block = name
                    .strip_prefix("blk.")
                    .and_then(|rest| rest.split_once('.'))
                    .filter(|(digits, _)| {
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|(digits, _)| digits.parse::<u32>().ok());
                match block {
                    Some(b) if b < block_count => Ok(Place::Block(b)),
                    Some(b) => Err(incomplete(format!(
                        "tensor {name} is in block {b} but the model has {block_count} blocks"
                    ))),
                    None => Err(incomplete(format!(
                        "unexpected tensor {name} for the llama architecture"
                    ))),
                }
            }
        })
        .collect()
}

/// Splits `costs` (one per layer) into `parts` contiguous non-empty ranges minimising the
/// largest part, then the sum of squared parts; ties go to the earliest cut. Requires
/// `1 <= parts <= costs.len()`.
pub fn partition(costs: &[u64], parts: u32) -> Vec<[u32; 2]> {
    let n = costs.len();
    let p = (parts as usize).clamp(1, n.max(1));
    let mut prefix = vec![0u64; n + 1];
    for (i, c) in costs.iter().enumerate() {
        prefix[i + 1] = prefix[i].saturating_add(*c);
    }
    let sum = |i: usize, j: usize| prefix[j] - prefix[i];
    // Phase 1: the smallest possible largest part. `best[j]`: layers `0..j` in `k` parts.
    let mut best: Vec<u64> = (0..=n)
        .map(|j| if j == 0 { u64::MAX } else { sum(0, j) })
        .collect();
    for k in 2..=p {
        best = (0..=n)
            .map(|j| {
                (k - 1..j.max(k - 1))
                    .map(|i| best[i].max(sum(i, j)))
                    .min()
                    .unwrap_or(u64::MAX)
            })
            .collect();
    }
    let cap = best[n];
    // Phase 2: under that cap, the smallest sum of squares; `cuts[k - 2][j]` is where the
    // last of `k` parts covering `0..j` starts.
    let sq = |i: usize, j: usize| {
        let s = sum(i, j);
        (s <= cap).then(|| u128::from(s) * u128::from(s))
    };
    let mut cost: Vec<Option<u128>> = (0..=n)
        .map(|j| if j == 0 { None } else { sq(0, j) })
        .collect();
    let mut cuts: Vec<Vec<usize>> = Vec::with_capacity(p.saturating_sub(1));
    for k in 2..=p {
        let mut cut = vec![0usize; n + 1];
        let next: Vec<Option<u128>> = (0..=n)
            .map(|j| {
                let mut best_here: Option<u128> = None;
                for (i, prev) in cost.iter().enumerate().take(j).skip(k - 1) {
                    let total = prev.zip(sq(i, j)).map(|(a, b)| a + b);
                    if let Some(t) = total.filter(|t| best_here.is_none_or(|cur| *t < cur)) {
                        best_here = Some(t);
                        cut[j] = i;
                    }
                }
                best_here
            })
            .collect();
        cost = next;
        cuts.push(cut);
    }
    let mut ends = vec![n];
    for cut in cuts.iter().rev() {
        let j = *ends.last().unwrap_or(&n);
        ends.push(cut[j]);
    }
    ends.push(0);
    ends.reverse();
    ends.windows(2)
        .map(|w| [w[0] as u32, w[1] as u32])
        .collect()
}

fn hash_file(
    path: &Path,
    total: u64,
    progress: &mut impl FnMut(SplitProgress),
) -> Result<String, SplitError> {
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
        progress(SplitProgress::Hashing { done, total });
    }
    Ok(hex::encode(h.finalize()))
}

/// Writes `w` to a temp file beside `path`, fsyncs, renames; returns (size, sha256).
fn write_atomically(
    w: &GgufWriter<'_>,
    path: &Path,
    shard: u32,
    progress: &mut impl FnMut(SplitProgress),
) -> Result<(u64, String), SplitError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let total = w.encoded_len().map_err(|source| SplitError::Gguf {
        path: path.to_path_buf(),
        source,
    })?;
    let file = File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
    let result = (|| {
        let mut hashing = HashingWriter {
            inner: file,
            hash: Sha256::new(),
            done: 0,
            reported: 0,
            total,
            shard,
            progress,
        };
        let mut buffered = BufWriter::with_capacity(1 << 20, &mut hashing);
        let size = w.write(&mut buffered).map_err(|source| SplitError::Gguf {
            path: tmp.clone(),
            source,
        })?;
        buffered
            .flush()
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        drop(buffered);
        (hashing.progress)(SplitProgress::Writing {
            shard,
            done: size,
            total,
        });
        hashing
            .inner
            .sync_all()
            .map_err(io_err(format!("syncing {}", tmp.display())))?;
        let sha = hex::encode(hashing.hash.finalize());
        fs::rename(&tmp, path).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))?;
        Ok((size, sha))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else if let Ok(d) = File::open(dir) {
        // Best effort: persist the rename (not supported on every platform).
        let _ = d.sync_all();
    }
    result
}

/// Hashes and counts what is written, reporting progress every 8 MiB.
struct HashingWriter<'p, P> {
    inner: File,
    hash: Sha256,
    done: u64,
    reported: u64,
    total: u64,
    shard: u32,
    progress: &'p mut P,
}

impl<P: FnMut(SplitProgress)> Write for HashingWriter<'_, P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.done += n as u64;
        if self.done - self.reported >= 8 << 20 {
            self.reported = self.done;
            (self.progress)(SplitProgress::Writing {
                shard: self.shard,
                done: self.done,
                total: self.total,
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
