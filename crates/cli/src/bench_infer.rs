//! `shardswarm bench infer`: prefill and decode speed of the whole model in one process, ours
//! against llama.cpp on the same GGUF with the same thread count (issue 4).
//!
//! Models: the default model and synthetic ~1.1B-parameter llama GGUFs with random weights
//! (dim 2048, ffn 5632, 22 layers, 32/4 heads, vocab 32000, untied head — TinyLlama's shape)
//! in Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K, written with `shardswarm_model::synth` on first use and
//! cached under `--models-dir` (default `target/bench-models`) so reruns reuse them.
//!
//! One run of a model measures both sides, alternating which goes first:
//! - ours: this binary's `generate --model M --temperature 0 --max-tokens 32 --ignore-eos
//!   --threads T PROMPT` as a child process (a fresh process per run, candle's pools sized by
//!   `RAYON_NUM_THREADS`/`CANDLE_NUM_THREADS`), with a prompt built to tokenize to exactly
//!   `--prompt-tokens` tokens; the rates come from its stats line (prefill = the batch forward
//!   of the prompt incl. the head; decode = the single-token passes after it);
//! - llama.cpp: `llama-bench -m M -t T -p 64 -n 32 -r 1 -o json` (pp64 and tg32; it runs a
//!   warm-up of each first, and tg starts from an empty context where ours follows the prompt).
//!
//! The table gives the median over `--runs` of each rate and the ratio ours / llama.cpp, and
//! the median peak resident memory of each process (`VmHWM`, sampled every 5 ms by
//! [`crate::peak_rss`]): both map the GGUF, so touched weight pages count on both sides.

use anyhow::{Context, Result, bail, ensure};
use candle_core::quantized::GgmlDType;
use shardswarm_model::gguf::Value;
use shardswarm_model::synth::{SynthSpec, write_synth_model};
use shardswarm_model::{GgufFile, GgufTokenizer, GgufWriter};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::peak_rss::output_with_peak_rss;
use std::time::Instant;

/// Arguments of `shardswarm bench infer`.
#[derive(Debug, clap::Args)]
pub(crate) struct InferArgs {
    /// Models to measure, comma-separated: default, q4_0, q4_1, q8_0, q4_k, q5_k, q6_k
    /// (synthetic 1.1B).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "default,q4_0,q4_1,q8_0,q4_k"
    )]
    models: Vec<String>,
    /// The default model file (default: $SHARDSWARM_MODEL, else the fetch-model cache).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Compute threads for both engines.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Runs per model (each runs both engines); the table shows medians.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Directory of llama-bench (default: $LLAMA_CPP_BIN, else target/llama.cpp/build/bin).
    #[arg(long, value_name = "DIR")]
    llama_bin: Option<PathBuf>,
    /// Where the synthetic models are written and cached.
    #[arg(long, value_name = "DIR", default_value = "target/bench-models")]
    models_dir: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    model: String,
    ours_prefill: f64,
    theirs_prefill: f64,
    ours_decode: f64,
    theirs_decode: f64,
    /// Median peak RSS in MiB (NaN when not measurable).
    ours_rss_mib: f64,
    theirs_rss_mib: f64,
}

/// Prefill and decode tokens/s of one run of one engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub(crate) prefill: f64,
    pub(crate) decode: f64,
    /// Prompt tokens the engine reports having processed.
    pub(crate) prefill_tokens: usize,
}

/// Synthetic model of the benchmark: ~1.1B parameters, random weights, type `quant`.
fn synth_spec(quant: GgmlDType) -> SynthSpec {
    SynthSpec {
        name: format!("shardswarm-bench-1.1b-{quant:?}"),
        dim: 2048,
        layers: 22,
        heads: 32,
        kv_heads: 4,
        ffn: 5632,
        vocab: 32000,
        context: 2048,
        rope_base: 10_000.0,
        quant,
        tied: false,
        seed: 4,
    }
}

fn synth_quant(name: &str) -> Option<GgmlDType> {
    match name {
        "q4_0" => Some(GgmlDType::Q4_0),
        "q4_1" => Some(GgmlDType::Q4_1),
        "q8_0" => Some(GgmlDType::Q8_0),
        "q4_k" => Some(GgmlDType::Q4K),
        "q5_k" => Some(GgmlDType::Q5K),
        "q6_k" => Some(GgmlDType::Q6K),
        _ => None,
    }
}

fn default_model(args: &InferArgs) -> Result<PathBuf> {
    let path = args
        .model
        .clone()
        .or_else(|| std::env::var_os("SHARDSWARM_MODEL").map(PathBuf::from))
        .unwrap_or_else(|| {
            crate::fetch_model::default_model_path(&crate::fetch_model::default_cache_dir())
        });
    ensure!(
        path.is_file(),
        "default model not found at {}: run `shardswarm fetch-model` (or pass --model FILE)",
        path.display()
    );
    Ok(path)
}

/// The synthetic model file for `quant`, written once (to temporary names, then renamed).
fn synth_model(dir: &Path, name: &str, quant: GgmlDType) -> Result<PathBuf> {
    let path = dir.join(format!("synth-1.1b-v2-{name}.gguf"));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let raw = path.with_extension("gguf.raw");
    let tmp = path.with_extension("gguf.partial");
    eprintln!(
        "writing synthetic model {} (one-off, cached)…",
        path.display()
    );
    let t = Instant::now();
    write_synth_model(&raw, &synth_spec(quant))
        .with_context(|| format!("cannot write {}", raw.display()))?;
    with_llama_cpp_pre_tokenizer(&raw, &tmp)?;
    std::fs::remove_file(&raw).with_context(|| format!("cannot remove {}", raw.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename to {}", path.display()))?;
    eprintln!("  written in {:.0} s", t.elapsed().as_secs_f64());
    Ok(path)
}

/// Copies the GGUF `src` to `dst` with `tokenizer.ggml.pre = "gpt2"` renamed `"default"`:
/// llama.cpp refuses the name `gpt2` ("unknown pre-tokenizer type"), and `default` means the
/// same GPT-2 byte-level pre-tokenizer to it and to our tokenizer. Tensors are copied as is.
fn with_llama_cpp_pre_tokenizer(src: &Path, dst: &Path) -> Result<()> {
    let g = GgufFile::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    let mut w = GgufWriter::new();
    for (key, value) in g.metadata() {
        let value = match value {
            Value::String(s) if key == "tokenizer.ggml.pre" && s.as_slice() == b"gpt2" => {
                Value::string("default")
            }
            v => v.clone(),
        };
        w.push_metadata(key.clone(), value);
    }
    for t in g.tensors() {
        w.copy_tensor(t.name.clone(), &g, t);
    }
    let file =
        std::fs::File::create(dst).with_context(|| format!("cannot create {}", dst.display()))?;
    let mut out = std::io::BufWriter::new(file);
    w.write(&mut out)
        .with_context(|| format!("cannot write {}", dst.display()))?;
    out.flush()
        .with_context(|| format!("cannot write {}", dst.display()))?;
    Ok(())
}

/// Text that the model's tokenizer turns into exactly `n` tokens (BOS included when the model
/// adds one): the longest prefix of a fixed passage, at a character boundary, with `n` tokens.
fn prompt_of_tokens(tok: &GgufTokenizer, n: usize) -> Result<String> {
    const PASSAGE: &str = "The history of clocks is long and varied. Early civilizations \
        measured time with sundials, water clocks and candles marked with lines. Mechanical \
        clocks appeared in European monasteries in the thirteenth century, driven by weights \
        and regulated by a verge escapement. Pendulum clocks, introduced by Christiaan Huygens \
        in 1656, improved accuracy from minutes to seconds per day. Later, marine chronometers \
        allowed sailors to find their longitude at sea, quartz oscillators made watches cheap \
        and precise, and atomic clocks now define the second itself. ";
    let text = PASSAGE.repeat(1 + n / 8);
    let mut best = None;
    for (i, _) in text.char_indices().skip(1) {
        let count = tok.encode(&text[..i])?.len();
        if count == n {
            best = Some(i);
        } else if count > n {
            break;
        }
    }
    match best {
        Some(i) => Ok(text[..i].to_string()),
        None => bail!("cannot build a prompt of exactly {n} tokens for this tokenizer"),
    }
}

/// Parses `generate`'s stats line:
/// `prefill: N tok in S s (R tok/s), decode: M tok in S s (R tok/s)`.
pub(crate) fn parse_stats_line(line: &str) -> Option<Rates> {
    let rest = line.trim().strip_prefix("prefill: ")?;
    let (pre, dec) = rest.split_once(", decode: ")?;
    let part = |s: &str| -> Option<(usize, f64)> {
        let (n, rest) = s.split_once(" tok in ")?;
        let (secs, _) = rest.split_once(" s ")?;
        Some((n.parse().ok()?, secs.parse().ok()?))
    };
    let (pn, ps) = part(pre)?;
    let (dn, ds) = part(dec)?;
    (ps > 0.0 && ds > 0.0).then(|| Rates {
        prefill: pn as f64 / ps,
        decode: dn as f64 / ds,
        prefill_tokens: pn,
    })
}

/// One run's rates and peak resident memory (KiB).
type Measured = (Rates, Option<u64>);

/// `generate`'s rates from its finished process: the last stats line on its stderr.
pub(crate) fn generate_rates(out: &std::process::Output) -> Result<Rates> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("generate failed ({}): {}", out.status, stderr.trim());
    }
    stderr
        .lines()
        .rev()
        .find_map(parse_stats_line)
        .with_context(|| format!("no stats line in generate's stderr: {stderr}"))
}

/// Runs our `generate` once.
fn run_ours(exe: &Path, model: &Path, prompt: &str, args: &InferArgs) -> Result<Measured> {
    let threads = args.threads.to_string();
    let (out, rss) = output_with_peak_rss(
        Command::new(exe)
            .arg("generate")
            .arg("--model")
            .arg(model)
            .args(["--temperature", "0", "--ignore-eos", "--threads", &threads])
            .args(["--max-tokens", &args.gen_tokens.to_string()])
            .arg(prompt)
            .env("RAYON_NUM_THREADS", &threads)
            .env("CANDLE_NUM_THREADS", &threads),
    )
    .with_context(|| format!("cannot run {} generate", exe.display()))?;
    let rates = generate_rates(&out)?;
    ensure!(
        rates.prefill_tokens == args.prompt_tokens,
        "generate prefilled {} tokens, wanted {}",
        rates.prefill_tokens,
        args.prompt_tokens
    );
    Ok((rates, rss))
}

/// pp and tg rates from `llama-bench -o json` output.
fn parse_llama_bench(json: &str, prompt: usize, gen_tokens: usize) -> Result<Rates> {
    let v: serde_json::Value = serde_json::from_str(json).context("llama-bench JSON")?;
    let tests = v.as_array().context("llama-bench JSON is not an array")?;
    let rate = |n_prompt: usize, n_gen: usize| -> Result<f64> {
        tests
            .iter()
            .find(|t| {
                t["n_prompt"].as_u64() == Some(n_prompt as u64)
                    && t["n_gen"].as_u64() == Some(n_gen as u64)
            })
            .and_then(|t| t["avg_ts"].as_f64())
            .with_context(|| format!("no pp{n_prompt}/tg{n_gen} result in llama-bench output"))
    };
    Ok(Rates {
        prefill: rate(prompt, 0)?,
        decode: rate(0, gen_tokens)?,
        prefill_tokens: prompt,
    })
}

/// Runs llama-bench once.
fn run_theirs(bench: &Path, model: &Path, args: &InferArgs) -> Result<Measured> {
    let (out, rss) = output_with_peak_rss(
        Command::new(bench)
            .arg("-m")
            .arg(model)
            .args(["-t", &args.threads.to_string()])
            .args(["-p", &args.prompt_tokens.to_string()])
            .args(["-n", &args.gen_tokens.to_string()])
            .args(["-r", "1", "-o", "json"]),
    )
    .with_context(|| format!("cannot run {}", bench.display()))?;
    if !out.status.success() {
        bail!(
            "llama-bench failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rates = parse_llama_bench(
        &String::from_utf8_lossy(&out.stdout),
        args.prompt_tokens,
        args.gen_tokens,
    )?;
    Ok((rates, rss))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Measures one model: `runs` alternated runs of both engines.
fn bench_model(
    label: &str,
    model: &Path,
    exe: &Path,
    llama_bench: &Path,
    args: &InferArgs,
) -> Result<Row> {
    let tok = GgufTokenizer::from_file(model)
        .with_context(|| format!("cannot read the tokenizer of {}", model.display()))?;
    let prompt = prompt_of_tokens(&tok, args.prompt_tokens)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ours in order {
            if is_ours {
                ours.push(run_ours(exe, model, &prompt, args)?);
            } else {
                theirs.push(run_theirs(llama_bench, model, args)?);
            }
        }
        let ((o, o_rss), (t, t_rss)) = (ours[run], theirs[run]);
        eprintln!(
            "{label} run {}/{}: prefill {:.1} vs {:.1} tok/s, decode {:.1} vs {:.1} tok/s, \
             peak RSS {} vs {} (ours vs llama.cpp)",
            run + 1,
            args.runs,
            o.prefill,
            t.prefill,
            o.decode,
            t.decode,
            mib(o_rss),
            mib(t_rss)
        );
    }
    let med = |v: &[Measured], f: fn(&Rates) -> f64| median(v.iter().map(|m| f(&m.0)).collect());
    let med_rss = |v: &[Measured]| {
        median(
            v.iter()
                .filter_map(|m| m.1)
                .map(|kib| kib as f64 / 1024.0)
                .collect(),
        )
    };
    Ok(Row {
        model: label.to_string(),
        ours_prefill: med(&ours, |r| r.prefill),
        theirs_prefill: med(&theirs, |r| r.prefill),
        ours_decode: med(&ours, |r| r.decode),
        theirs_decode: med(&theirs, |r| r.decode),
        ours_rss_mib: med_rss(&ours),
        theirs_rss_mib: med_rss(&theirs),
    })
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_string(),
        |k| format!("{:.0} MiB", k as f64 / 1024.0),
    )
}

/// The result table (Markdown).
fn render_table(rows: &[Row], args: &InferArgs) -> String {
    let mut s = String::from(
        "| model | prefill ours (tok/s) | prefill llama.cpp | ratio | decode ours (tok/s) | \
         decode llama.cpp | ratio | peak RSS ours (MiB) | peak RSS llama.cpp | ratio |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2}× | {:.1} | {:.1} | {:.2}× | {:.0} | {:.0} | {:.2}× |\n",
            r.model,
            r.ours_prefill,
            r.theirs_prefill,
            r.ours_prefill / r.theirs_prefill,
            r.ours_decode,
            r.theirs_decode,
            r.ours_decode / r.theirs_decode,
            r.ours_rss_mib,
            r.theirs_rss_mib,
            r.ours_rss_mib / r.theirs_rss_mib
        ));
    }
    s.push_str(&format!(
        "\nprefill: {} prompt tokens, decode: {} generated tokens (greedy, eos ignored); {} \
         threads; median of {} alternated runs.\n",
        args.prompt_tokens, args.gen_tokens, args.threads, args.runs
    ));
    s
}

/// Runs `shardswarm bench infer`.
pub(crate) fn run(args: InferArgs) -> Result<()> {
    ensure!(args.threads >= 1, "--threads must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(
        args.prompt_tokens >= 1 && args.gen_tokens >= 2,
        "--prompt-tokens must be ≥ 1 and --gen-tokens ≥ 2"
    );
    let bin_dir = args.llama_bin.clone().unwrap_or_else(|| {
        std::env::var_os("LLAMA_CPP_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/llama.cpp/build/bin"))
    });
    let llama_bench = bin_dir.join("llama-bench");
    ensure!(
        llama_bench.is_file(),
        "llama-bench not found in {}: run `scripts/build-llama-cpp.sh` (or pass --llama-bin DIR \
         / set LLAMA_CPP_BIN)",
        bin_dir.display()
    );
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut models = Vec::new();
    for name in &args.models {
        let name = name.trim().to_ascii_lowercase();
        if name == "default" {
            models.push((
                "default (SmolLM2-135M Q4_1)".to_string(),
                default_model(&args)?,
            ));
        } else if let Some(q) = synth_quant(&name) {
            let path = synth_model(&args.models_dir, &name, q)?;
            models.push((format!("synthetic 1.1B {q:?}"), path));
        } else {
            bail!("unknown model {name:?}: use default, q4_0, q4_1, q8_0, q4_k, q5_k or q6_k");
        }
    }
    let mut rows = Vec::new();
    for (label, path) in &models {
        rows.push(bench_model(label, path, &exe, &llama_bench, &args)?);
    }
    print!("{}", render_table(&rows, &args));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_parses_to_exact_rates() {
        let r = parse_stats_line(
            "prefill: 64 tok in 0.500 s (128.0 tok/s), decode: 31 tok in 0.250 s (124.0 tok/s)",
        );
        assert_eq!(
            r,
            Some(Rates {
                prefill: 128.0,
                decode: 124.0,
                prefill_tokens: 64
            })
        );
        assert_eq!(parse_stats_line("loading model"), None);
        assert_eq!(
            parse_stats_line(
                "prefill: 1 tok in 0.000 s (0.0 tok/s), decode: 1 tok in 1 s (1 tok/s)"
            ),
            None,
            "zero time must not give an infinite rate"
        );
    }

    #[test]
    fn llama_bench_json_gives_pp_and_tg() -> Result<()> {
        let json = r#"[{"n_prompt": 64, "n_gen": 0, "avg_ts": 300.5, "model_type": "x"},
                       {"n_prompt": 0, "n_gen": 32, "avg_ts": 120.25}]"#;
        let r = parse_llama_bench(json, 64, 32)?;
        assert_eq!((r.prefill, r.decode), (300.5, 120.25));
        assert!(parse_llama_bench(json, 128, 32).is_err());
        assert!(parse_llama_bench("{}", 64, 32).is_err());
        Ok(())
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn prompt_has_exactly_the_asked_token_count() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("m.gguf");
        write_synth_model(&path, &SynthSpec::tiny(GgmlDType::Q8_0, 1))?;
        let tok = GgufTokenizer::from_file(&path)?;
        for n in [1, 7, 64] {
            let p = prompt_of_tokens(&tok, n)?;
            assert_eq!(tok.encode(&p)?.len(), n, "{p:?}");
        }
        Ok(())
    }

    #[test]
    fn synth_models_get_a_pre_tokenizer_llama_cpp_knows_and_the_same_tensors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (raw, out) = (dir.path().join("raw.gguf"), dir.path().join("out.gguf"));
        write_synth_model(&raw, &SynthSpec::tiny(GgmlDType::Q4_0, 3))?;
        with_llama_cpp_pre_tokenizer(&raw, &out)?;
        let (a, b) = (GgufFile::open(&raw)?, GgufFile::open(&out)?);
        assert_eq!(a.get_str("tokenizer.ggml.pre")?, "gpt2");
        assert_eq!(b.get_str("tokenizer.ggml.pre")?, "default");
        assert_eq!(a.metadata().len(), b.metadata().len());
        assert_eq!(a.tensors().len(), b.tensors().len());
        for (x, y) in a.tensors().iter().zip(b.tensors()) {
            assert_eq!((&x.name, &x.dims), (&y.name, &y.dims));
            assert_eq!(a.read_tensor(x)?, b.read_tensor(y)?, "{}", x.name);
        }
        Ok(())
    }

    #[test]
    fn bench_spec_is_about_1_1b_parameters_and_valid_for_every_type() -> Result<()> {
        let s = synth_spec(GgmlDType::Q4K);
        let kv = s.kv_heads * s.dim / s.heads;
        let layer = 2 * s.dim * s.dim + 2 * kv * s.dim + 3 * s.dim * s.ffn;
        let params = s.layers as usize * layer + 2 * s.vocab * s.dim;
        assert!((1_000_000_000..1_200_000_000).contains(&params), "{params}");
        for q in ["q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k"] {
            let q = synth_quant(q).context("known type")?;
            assert_eq!(s.dim % q.block_size(), 0);
            assert_eq!(s.ffn % q.block_size(), 0);
        }
        Ok(())
    }
}
