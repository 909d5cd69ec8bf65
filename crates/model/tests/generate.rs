//! `generate` behaviour through the library: stats, stopping rules, context limits, streaming.

mod common;
use anyhow::Result;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use common::default_model;
use shardswarm_model::synth::{SynthSpec, write_synth_model};
use shardswarm_model::{
    GenerateError, GenerateOptions, Generator, SamplerConfig, Stage, StageError, StopReason,
};
use std::path::PathBuf;

fn synth(spec: SynthSpec) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("m.gguf");
    write_synth_model(&path, &spec)?;
    Ok((dir, path))
}

fn sampled(seed: u64, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampler: SamplerConfig {
            seed,
            ..SamplerConfig::default()
        },
        ignore_eos: true,
    }
}

#[test]
fn max_tokens_stats_and_streamed_text_agree() -> Result<()> {
    let (_d, path) = synth(SynthSpec::tiny(GgmlDType::Q8_0, 11))?;
    let g = Generator::load_model(&path, &Device::Cpu)?;
    let mut streamed = String::new();
    let stats = g.generate("hello there", &sampled(3, 10), |t| {
        streamed.push_str(t);
        true
    })?;
    assert_eq!(stats.tokens.len(), 10);
    assert_eq!(stats.stop, StopReason::MaxTokens);
    assert_eq!(
        stats.prefill_tokens,
        g.tokenizer().encode("hello there")?.len()
    );
    assert_eq!(
        stats.decode_tokens, 9,
        "the last sampled token needs no forward pass"
    );
    assert_eq!(streamed, g.tokenizer().decode(&stats.tokens)?);
    let line = stats.summary();
    assert!(
        line.starts_with(&format!("prefill: {} tok in ", stats.prefill_tokens)),
        "{line}"
    );
    assert!(
        line.contains(", decode: 9 tok in ") && line.ends_with("tok/s)"),
        "{line}"
    );
    Ok(())
}

#[test]
fn same_seed_same_tokens_different_seed_differs() -> Result<()> {
    let (_d, path) = synth(SynthSpec::tiny(GgmlDType::Q4_0, 12))?;
    let g = Generator::load_model(&path, &Device::Cpu)?;
    let run = |seed| {
        g.generate("abc", &sampled(seed, 24), |_| true)
            .map(|s| s.tokens)
    };
    assert_eq!(run(5)?, run(5)?);
    assert_ne!(run(5)?, run(6)?);
    Ok(())
}

#[test]
fn stops_when_the_context_is_full_and_refuses_long_prompts() -> Result<()> {
    let (_d, path) = synth(SynthSpec {
        context: 32,
        ..SynthSpec::tiny(GgmlDType::Q8_0, 13)
    })?;
    let g = Generator::load_model(&path, &Device::Cpu)?;
    let prompt: Vec<u32> = (3..23).collect();
    let stats = g.generate_ids(&prompt, &sampled(1, 100), |_| true)?;
    assert_eq!(stats.stop, StopReason::ContextFull);
    // Positions 20..=31 are forwarded, plus the token sampled from position 31's logits.
    assert_eq!(stats.tokens.len(), 13);
    let long: Vec<u32> = (0..40).map(|i| 3 + i % 200).collect();
    let err = g
        .generate_ids(&long, &sampled(1, 4), |_| true)
        .expect_err("too long");
    assert!(
        matches!(
            err,
            GenerateError::PromptTooLong {
                tokens: 40,
                context: 32
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("context length is 32"), "{err}");
    Ok(())
}

#[test]
fn callback_can_cancel() -> Result<()> {
    let (_d, path) = synth(SynthSpec::tiny(GgmlDType::F32, 14))?;
    let g = Generator::load_model(&path, &Device::Cpu)?;
    let mut pieces = 0;
    let stats = g.generate_ids(&[40, 41, 42], &sampled(2, 50), |_| {
        pieces += 1;
        pieces < 3
    })?;
    assert_eq!(stats.stop, StopReason::Cancelled);
    assert!(stats.tokens.len() < 50);
    Ok(())
}

#[test]
fn serves_positions_past_4096_up_to_the_context_length() -> Result<()> {
    let (_d, path) = synth(SynthSpec {
        context: 8192,
        ..SynthSpec::tiny(GgmlDType::Q8_0, 15)
    })?;
    let stage = Stage::load(&path, &Device::Cpu)?;
    let mut cache = stage.new_cache(256)?;
    let mut pos = 0;
    while pos < 4200 {
        let chunk: Vec<u32> = (0..600).map(|i| 3 + ((pos + i) % 250) as u32).collect();
        let h = stage.forward_layers(&stage.embed(&chunk)?, pos, &mut cache)?;
        pos += chunk.len();
        let logits = stage.head(&h)?.to_vec1::<f32>()?;
        assert!(logits.iter().all(|x| x.is_finite()));
    }
    assert_eq!(cache.len(), 4200);
    // A cache smaller than the input grows in place.
    let mut small = stage.new_cache(1)?;
    let h = stage.embed(&[5])?;
    stage.forward_layers(&Tensor::cat(&[&h; 2], 1)?, 0, &mut small)?;
    assert!(small.capacity() >= 2 && small.len() == 2);
    // One past the context is a clear error, not a panic.
    let mut c = stage.new_cache(8192)?;
    let big: Vec<u32> = vec![7; 8192];
    stage.forward_layers(&stage.embed(&big[..1])?, 0, &mut c)?;
    let err = stage
        .forward_layers(&stage.embed(&big)?, 1, &mut c)
        .expect_err("overflow");
    assert!(
        matches!(
            err,
            StageError::ContextOverflow {
                end: 8193,
                context: 8192
            }
        ),
        "{err}"
    );
    Ok(())
}

#[test]
fn stage_rejects_bad_inputs_without_panicking() -> Result<()> {
    let (_d, path) = synth(SynthSpec::tiny(GgmlDType::Q8_0, 16))?;
    let first = Stage::load_range(&path, 0..2, &Device::Cpu)?;
    let last = Stage::load_range(&path, 2..4, &Device::Cpu)?;
    assert!(first.has_embedding() && !first.has_head());
    assert!(!last.has_embedding() && last.has_head());
    assert!(matches!(
        first.embed(&[100_000]),
        Err(StageError::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        last.embed(&[1]),
        Err(StageError::MissingPart { .. })
    ));
    assert!(matches!(
        first.head(&first.embed(&[1])?),
        Err(StageError::MissingPart { .. })
    ));
    let mut cache = last.new_cache(8)?;
    let wrong_dim = Tensor::zeros((1, 2, 63), candle_core::DType::F32, &Device::Cpu)?;
    assert!(matches!(
        last.forward_layers(&wrong_dim, 0, &mut cache),
        Err(StageError::BadInput { .. })
    ));
    let mut other = first.new_cache(8)?;
    let h = first.embed(&[1, 2])?;
    assert!(matches!(
        last.forward_layers(&h, 0, &mut other),
        Err(StageError::BadInput { .. })
    ));
    assert!(matches!(
        last.forward_layers(&h, 5, &mut cache),
        Err(StageError::BadInput { .. })
    ));
    assert!(matches!(
        Stage::load_range(&path, 3..9, &Device::Cpu),
        Err(StageError::LayerRange { .. })
    ));
    Ok(())
}

#[test]
fn shards_dir_with_a_missing_shard_is_refused() -> Result<()> {
    let (_d, path) = synth(SynthSpec::tiny(GgmlDType::Q8_0, 17))?;
    let dir = tempfile::tempdir()?;
    shardswarm_model::split::split(&path, 3, dir.path(), |_| {})?;
    assert_eq!(
        Generator::load_shards_dir(dir.path(), &Device::Cpu)?
            .stages()
            .len(),
        3
    );
    std::fs::remove_file(dir.path().join("shard-1.gguf"))?;
    let err = Generator::load_shards_dir(dir.path(), &Device::Cpu).expect_err("gap");
    assert!(matches!(err, GenerateError::Chain(_)), "{err}");
    Ok(())
}

#[test]
fn default_model_chat_stops_on_im_end() -> Result<()> {
    let g = Generator::load_model(&default_model()?, &Device::Cpu)?;
    let prompt = g.chat_prompt("What is the capital of France? Answer in one word.")?;
    let opts = GenerateOptions {
        max_tokens: 48,
        sampler: SamplerConfig::greedy(),
        ignore_eos: false,
    };
    let mut text = String::new();
    let stats = g.generate(&prompt, &opts, |t| {
        text.push_str(t);
        true
    })?;
    assert_eq!(stats.stop, StopReason::Eos, "{text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    assert!(!text.contains("<|im_end|>"));
    Ok(())
}
