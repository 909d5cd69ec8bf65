//! Shared by the model crate's integration tests.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The default model: `SHARDSWARM_MODEL`, else the `fetch-model` cache. Fails (never skips)
/// with the command to run when it is absent.
pub(crate) fn default_model() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHARDSWARM_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no HOME")?;
    let p = cache.join("shardswarm/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        bail!(
            "default model not found at {}: run `shardswarm fetch-model` (or set SHARDSWARM_MODEL)",
            p.display()
        );
    }
    Ok(p)
}
