//! Random llama GGUFs for tests and benchmarks, written with candle's GGUF writer.
//!
//! Deterministic: the same [`SynthSpec`] (seed included) gives the same bytes. The metadata
//! carries a small byte-level BPE vocabulary (3 control tokens `<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>`, the 256 byte symbols, a few merges, then filler tokens up to `vocab`) and a
//! ChatML chat template, so the tokenizer and `generate` work on it.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

/// Merges of the synthetic vocabulary (byte-level symbols; `Ġ` is the space byte).
const MERGES: &[(&str, &str)] = &[
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("Ġt", "he"),
    ("r", "e"),
    ("Ġ", "s"),
];
const SPECIALS: &[&str] = &["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Errors writing a synthetic model.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The spec is inconsistent (e.g. a dimension not a multiple of the quant block size).
    #[error("invalid synthetic model spec: {0}")]
    Spec(String),
    /// Writing failed.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        reason: String,
    },
    /// Quantization failed.
    #[error("quantize: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Shape, quantization and seed of a synthetic llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// `general.name`.
    pub name: String,
    /// Hidden size.
    pub dim: usize,
    /// Blocks.
    pub layers: u32,
    /// Query heads.
    pub heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// MLP inner size.
    pub ffn: usize,
    /// Vocabulary (at least [`SynthSpec::MIN_VOCAB`]).
    pub vocab: usize,
    /// Context length.
    pub context: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// Type of the 2-D weights (norms stay F32).
    pub quant: GgmlDType,
    /// No `output.weight`: the head is tied to the embedding.
    pub tied: bool,
    /// RNG seed.
    pub seed: u64,
}

impl SynthSpec {
    /// Smallest vocabulary: the specials, the 256 byte symbols and the merges.
    pub const MIN_VOCAB: usize = 3 + 256 + 10;

    /// A tiny model (dim 64, 4 layers, GQA 4/2) that runs in milliseconds.
    pub fn tiny(quant: GgmlDType, seed: u64) -> Self {
        Self {
            name: "synth-tiny".into(),
            dim: 64,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            ffn: 128,
            vocab: 320,
            context: 512,
            rope_base: 10_000.0,
            quant,
            tied: true,
            seed,
        }
    }

    fn check(&self) -> Result<(), SynthError> {
        let bs = self.quant.block_size();
        let bad = |m: String| Err(SynthError::Spec(m));
        if self.vocab < Self::MIN_VOCAB {
            return bad(format!("vocab {} < {}", self.vocab, Self::MIN_VOCAB));
        }
        if self.heads == 0
            || self.kv_heads == 0
            || !self.dim.is_multiple_of(self.heads)
            || !self.heads.is_multiple_of(self.kv_heads)
        {
            return bad(format!(
                "dim {} heads {} kv_heads {}",
                self.dim, self.heads, self.kv_heads
            ));
        }
        if !(self.dim / self.heads).is_multiple_of(2) || self.layers == 0 {
            return bad("odd head dimension or zero layers".into());
        }
        if !self.dim.is_multiple_of(bs) || !self.ffn.is_multiple_of(bs) {
            return bad(format!(
                "dim {} and ffn {} must be multiples of {bs} for {:?}",
                self.dim, self.ffn, self.quant
            ));
        }
        Ok(())
    }
}

/// GPT-2's byte → printable character table.
fn byte_symbols() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from('!')..=u32::from('~')).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// The synthetic vocabulary: token texts and GGUF token types (3 control, 1 normal).
pub fn synth_vocab(vocab: usize) -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; SPECIALS.len()];
    tokens.extend(byte_symbols().into_iter().map(String::from));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    types.resize(tokens.len(), 1);
    let mut i = 0;
    while tokens.len() < vocab {
        tokens.push(format!("<pad{i}>"));
        types.push(1);
        i += 1;
    }
    (tokens, types)
}

fn random(rng: &mut StdRng, dims: &[usize], scale: f32, offset: f32) -> Result<Tensor, SynthError> {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// Writes the model to `path`.
pub fn write_synth_model(path: &Path, spec: &SynthSpec) -> Result<(), SynthError> {
    spec.check()?;
    let werr = |e: &dyn std::fmt::Display| SynthError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let file = std::fs::File::create(path).map_err(|e| werr(&e))?;
    let mut w = BufWriter::new(file);
    write_synth_to(&mut w, spec)?;
    w.flush().map_err(|e| werr(&e))?;
    Ok(())
}

/// Writes the model to any seekable writer.
pub fn write_synth_to<W: Write + Seek>(w: &mut W, spec: &SynthSpec) -> Result<(), SynthError> {
    spec.check()?;
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let (d, f, hd) = (spec.dim, spec.ffn, spec.dim / spec.heads);
    let kv = spec.kv_heads * hd;
    let q = |t: Tensor| QTensor::quantize(&t, spec.quant);
    let norm = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32);
    let s_in = |n: usize| (3.0 / n as f32).sqrt();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    tensors.push((
        "token_embd.weight".into(),
        q(random(&mut rng, &[spec.vocab, d], 1.0, 0.0)?)?,
    ));
    for i in 0..spec.layers {
        let mut add = |name: &str, t: QTensor| tensors.push((format!("blk.{i}.{name}.weight"), t));
        add("attn_norm", norm(random(&mut rng, &[d], 0.1, 1.0)?)?);
        add("attn_q", q(random(&mut rng, &[d, d], s_in(d), 0.0)?)?);
        add("attn_k", q(random(&mut rng, &[kv, d], s_in(d), 0.0)?)?);
        add("attn_v", q(random(&mut rng, &[kv, d], s_in(d), 0.0)?)?);
        add("attn_output", q(random(&mut rng, &[d, d], s_in(d), 0.0)?)?);
        add("ffn_norm", norm(random(&mut rng, &[d], 0.1, 1.0)?)?);
        add("ffn_gate", q(random(&mut rng, &[f, d], s_in(d), 0.0)?)?);
        add("ffn_up", q(random(&mut rng, &[f, d], s_in(d), 0.0)?)?);
        add("ffn_down", q(random(&mut rng, &[d, f], s_in(f), 0.0)?)?);
    }
    tensors.push((
        "output_norm.weight".into(),
        norm(random(&mut rng, &[d], 0.1, 1.0)?)?,
    ));
    if !spec.tied {
        tensors.push((
            "output.weight".into(),
            q(random(&mut rng, &[spec.vocab, d], 1.0, 0.0)?)?,
        ));
    }

    let (tokens, types) = synth_vocab(spec.vocab);
    let u = |x: usize| Value::U32(x as u32);
    let strs = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String(spec.name.clone())),
        ("llama.block_count", Value::U32(spec.layers)),
        ("llama.context_length", u(spec.context)),
        ("llama.embedding_length", u(d)),
        ("llama.feed_forward_length", u(f)),
        ("llama.attention.head_count", u(spec.heads)),
        ("llama.attention.head_count_kv", u(spec.kv_heads)),
        ("llama.rope.freq_base", Value::F32(spec.rope_base)),
        ("llama.rope.dimension_count", u(hd)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", u(spec.vocab)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strs(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges",
            strs(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(CHATML.into())),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(w, &md_refs, &t_refs)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_are_gpt2s() {
        let t = byte_symbols();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let mut u = t.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 256);
    }

    #[test]
    fn same_spec_same_bytes_and_bad_spec_refused() -> Result<(), SynthError> {
        let spec = SynthSpec::tiny(GgmlDType::Q8_0, 7);
        let mut a = std::io::Cursor::new(Vec::new());
        let mut b = std::io::Cursor::new(Vec::new());
        write_synth_to(&mut a, &spec)?;
        write_synth_to(&mut b, &spec)?;
        assert_eq!(a.into_inner(), b.into_inner());
        let bad = SynthSpec {
            dim: 48,
            ..SynthSpec::tiny(GgmlDType::Q4K, 7)
        };
        assert!(write_synth_to(&mut std::io::Cursor::new(Vec::new()), &bad).is_err());
        Ok(())
    }
}
