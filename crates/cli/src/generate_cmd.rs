//! `shardswarm generate`: local generation in one process (BRIEF §1).
//!
//! The prompt is used raw (special tokens parsed, BOS only if the model's `add_bos_token`
//! says so); `--chat` wraps it in the model's chat template as one user turn. Text streams to
//! stdout (flushed per piece); at the end one stats line goes to stderr.
//!
//! Defaults follow llama.cpp: temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.0
//! (off) over the last 64 tokens, a random seed unless `--seed` is given; `--max-tokens`
//! defaults to 256. `--temperature 0` is greedy.
//!
//! `--threads T`: candle sizes its worker pools from `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`,
//! read once at first use. Setting the environment of a running process is `unsafe` (edition
//! 2024) and this workspace forbids unsafe code, so when those variables do not already say `T`
//! the command re-executes itself once with them set (the child inherits stdio) and exits with
//! the child's status.

use anyhow::{Context, Result, bail};
use shardswarm_model::{Device, GenerateOptions, Generator, SamplerConfig, StopReason};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Arguments of `shardswarm generate`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["model", "shards_dir"])))]
pub(crate) struct GenerateArgs {
    /// A whole-model GGUF file.
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// A directory of shard-N.gguf files (from `split`), chained in one process.
    #[arg(long, value_name = "DIR")]
    shards_dir: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template as one user turn.
    #[arg(long)]
    chat: bool,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Repetition penalty over the last 64 tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// RNG seed (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Compute threads (default: candle's choice, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The prompt.
    prompt: String,
}

/// Re-executes this process with candle's thread variables set to `threads`, unless they
/// already are. Returns only when no re-execution was needed.
fn ensure_threads(threads: usize) -> Result<()> {
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    let want = threads.to_string();
    let set = |k: &str| std::env::var(k).ok().as_deref() == Some(want.as_str());
    if set("RAYON_NUM_THREADS") && set("CANDLE_NUM_THREADS") {
        return Ok(());
    }
    let exe =
        std::env::current_exe().context("cannot find the current executable for --threads")?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("RAYON_NUM_THREADS", &want)
        .env("CANDLE_NUM_THREADS", &want)
        .status()
        .context("cannot re-execute with --threads")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Runs `shardswarm generate`.
pub(crate) fn run(args: GenerateArgs) -> Result<()> {
    if let Some(t) = args.threads {
        ensure_threads(t)?;
    }
    let device = Device::Cpu;
    let generator = match (&args.model, &args.shards_dir) {
        (Some(m), None) => Generator::load_model(m, &device)
            .with_context(|| format!("cannot load model {}", m.display()))?,
        (None, Some(d)) => Generator::load_shards_dir(d, &device)
            .with_context(|| format!("cannot load shards from {}", d.display()))?,
        _ => bail!("give exactly one of --model FILE or --shards-dir DIR"),
    };
    let prompt = if args.chat {
        generator.chat_prompt(&args.prompt)?
    } else {
        args.prompt.clone()
    };
    let seed = args.seed.unwrap_or_else(rand_seed);
    tracing::debug!(target: "shardswarm::generate", seed, "sampling seed");
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampler: SamplerConfig {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            repeat_penalty: args.repeat_penalty,
            repeat_last_n: 64,
            seed,
        },
        ignore_eos: args.ignore_eos,
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let stats = generator.generate(&prompt, &opts, |piece| {
        match stdout
            .write_all(piece.as_bytes())
            .and_then(|()| stdout.flush())
        {
            Ok(()) => true,
            Err(e) => {
                write_err = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    // End the line on a terminal so the stats line starts on its own; pipes get the text as is.
    if stats.stop != StopReason::Cancelled && stdout.is_terminal() {
        writeln!(stdout)
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    eprintln!("{}", stats.summary());
    Ok(())
}

/// A seed from the clock and the process id (no extra dependency needed for this).
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}
