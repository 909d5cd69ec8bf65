//! `manifest.json`, written by `shardswarm split` beside the shards (BRIEF §7).
//!
//! Invariants (checked by [`Manifest::validate`]): shard indices are `0..total_shards` in order,
//! layer ranges are non-empty, contiguous and cover `0..block_count`.

use serde::{Deserialize, Serialize};

use crate::InfoHash;

/// The description of a split model: one entry per shard file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of this file; currently 1.
    pub format: u32,
    /// First 16 hex digits of the source file's SHA-256.
    pub model_id: String,
    /// The model's `general.name` (or the source file stem when absent).
    pub model_name: String,
    /// `general.architecture` of the source, e.g. `llama`.
    pub architecture: String,
    /// File name of the source GGUF.
    pub source_file: String,
    /// Full SHA-256 of the source file, lowercase hex.
    pub source_sha256: String,
    /// Size of the source file in bytes.
    pub source_size: u64,
    /// Number of transformer blocks in the source model.
    pub block_count: u32,
    /// Number of shards.
    pub total_shards: u32,
    /// The shards, index order.
    pub shards: Vec<ManifestShard>,
}

/// One shard file of a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestShard {
    /// Position of the shard in the pipeline, from 0.
    pub index: u32,
    /// File name, `shard-{index}.gguf`.
    pub filename: String,
    /// Half-open layer range `[start, end)` held by this shard.
    pub layers: [u32; 2],
    /// File size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// BitTorrent v1 info-hash of the single-file torrent named `filename`.
    pub info_hash: InfoHash,
    /// Piece length used for `info_hash`.
    pub piece_length: u64,
}

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Malformed JSON or missing fields.
    #[error("manifest.json is not valid: {0}")]
    Json(String),
    /// `total_shards` disagrees with the shard list.
    #[error("manifest says {total_shards} shards but lists {listed}")]
    ShardCount {
        /// The declared count.
        total_shards: u32,
        /// Entries present.
        listed: usize,
    },
    /// A shard entry is out of order, badly named or has a bad layer range.
    #[error("manifest shard {position}: {reason}")]
    BadShard {
        /// Position in the list.
        position: usize,
        /// What is wrong.
        reason: String,
    },
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Pretty JSON, newline-terminated.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Checks the invariants stated in the module doc.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.total_shards as usize != self.shards.len() || self.shards.is_empty() {
            return Err(ManifestError::ShardCount {
                total_shards: self.total_shards,
                listed: self.shards.len(),
            });
        }
        let mut next_layer = 0u32;
        for (position, s) in self.shards.iter().enumerate() {
            let bad = |reason: String| ManifestError::BadShard { position, reason };
            if s.index as usize != position {
                return Err(bad(format!("index {} out of order", s.index)));
            }
            if s.filename != shard_filename(s.index) {
                return Err(bad(format!(
                    "filename {:?} is not {}",
                    s.filename,
                    shard_filename(s.index)
                )));
            }
            let [start, end] = s.layers;
            if start != next_layer || end <= start {
                return Err(bad(format!(
                    "layers [{start}, {end}) do not continue from {next_layer}"
                )));
            }
            next_layer = end;
        }
        if next_layer != self.block_count {
            return Err(ManifestError::BadShard {
                position: self.shards.len() - 1,
                reason: format!("layers end at {next_layer}, model has {}", self.block_count),
            });
        }
        Ok(())
    }
}

/// The file name of shard `index`: `shard-{index}.gguf`.
pub fn shard_filename(index: u32) -> String {
    format!("shard-{index}.gguf")
}

/// Parses `shard-N.gguf` back to `N` (strict: no sign, no leading zeros, no other suffix).
pub fn parse_shard_filename(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("shard-")?.strip_suffix(".gguf")?;
    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
        return None;
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let shard = |index: u32, layers: [u32; 2]| ManifestShard {
            index,
            filename: shard_filename(index),
            layers,
            size: 10,
            sha256: "00".repeat(32),
            info_hash: InfoHash([index as u8; 20]),
            piece_length: 262_144,
        };
        Manifest {
            format: 1,
            model_id: "0123456789abcdef".into(),
            model_name: "Tiny".into(),
            architecture: "llama".into(),
            source_file: "tiny.gguf".into(),
            source_sha256: "11".repeat(32),
            source_size: 20,
            block_count: 4,
            total_shards: 2,
            shards: vec![shard(0, [0, 1]), shard(1, [1, 4])],
        }
    }

    #[test]
    fn round_trips_and_validates() {
        let m = sample();
        assert_eq!(Manifest::from_json(m.to_json().as_bytes()).unwrap(), m);
    }

    #[test]
    fn rejects_gaps_and_short_cover() {
        let mut m = sample();
        m.shards[1].layers = [2, 4];
        assert!(m.validate().is_err());
        let mut m = sample();
        m.block_count = 5;
        assert!(m.validate().is_err());
    }

    #[test]
    fn shard_filenames_parse_strictly() {
        assert_eq!(parse_shard_filename("shard-0.gguf"), Some(0));
        assert_eq!(parse_shard_filename("shard-17.gguf"), Some(17));
        for bad in [
            "shard-01.gguf",
            "shard-.gguf",
            "shard--1.gguf",
            "shard-1.gguf.part",
            "x/shard-1.gguf",
        ] {
            assert_eq!(parse_shard_filename(bad), None, "{bad}");
        }
    }
}
