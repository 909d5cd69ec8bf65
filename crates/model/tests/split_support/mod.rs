//! A tiny llama GGUF written with our own `GgufWriter`, shared by the split tests.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use shardswarm_model::gguf::{Array, GgmlType, GgufWriter, TensorData, Value};

/// Deterministic bytes (xorshift64*), so the tests need no RNG crate.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What the tiny model looks like.
#[derive(Debug, Clone)]
pub struct Tiny {
    pub blocks: u32,
    pub tied: bool,
    pub arch: &'static str,
    pub seed: u64,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            blocks: 5,
            tied: true,
            arch: "llama",
            seed: 7,
        }
    }
}

const DIM: u64 = 64;
const FFN: u64 = 128;
const KV: u64 = 32;
const VOCAB: u64 = 32;

/// Tensor names, types and dims in the order llama.cpp writes them (blocks lexicographic).
pub fn tensor_specs(t: &Tiny) -> Vec<(String, GgmlType, Vec<u64>)> {
    let mut v = vec![(
        "token_embd.weight".to_string(),
        GgmlType::Q8_0,
        vec![DIM, VOCAB],
    )];
    let mut blocks: Vec<String> = (0..t.blocks).map(|b| b.to_string()).collect();
    blocks.sort();
    for b in blocks {
        let p = |n: &str| format!("blk.{b}.{n}");
        v.push((p("attn_norm.weight"), GgmlType::F32, vec![DIM]));
        v.push((p("attn_q.weight"), GgmlType::Q4_0, vec![DIM, DIM]));
        v.push((p("attn_k.weight"), GgmlType::Q4_0, vec![DIM, KV]));
        v.push((p("attn_v.weight"), GgmlType::Q8_0, vec![DIM, KV]));
        v.push((p("attn_output.weight"), GgmlType::Q4_0, vec![DIM, DIM]));
        v.push((p("ffn_norm.weight"), GgmlType::F32, vec![DIM]));
        v.push((p("ffn_gate.weight"), GgmlType::Q4_0, vec![DIM, FFN]));
        v.push((p("ffn_up.weight"), GgmlType::Q4_0, vec![DIM, FFN]));
        v.push((p("ffn_down.weight"), GgmlType::Q8_0, vec![FFN, DIM]));
    }
    v.push(("output_norm.weight".into(), GgmlType::F32, vec![DIM]));
    if !t.tied {
        v.push(("output.weight".into(), GgmlType::Q8_0, vec![DIM, VOCAB]));
    }
    v
}

/// Metadata of the tiny model (llama keys, a tokenizer, a template, a nested array).
pub fn metadata(t: &Tiny) -> Vec<(String, Value)> {
    let tokens: Vec<Vec<u8>> = (0..VOCAB).map(|i| format!("tok{i}").into_bytes()).collect();
    let a = t.arch;
    vec![
        ("general.architecture".into(), Value::string(a)),
        ("general.name".into(), Value::string("Tiny Llama")),
        (format!("{a}.block_count"), Value::U32(t.blocks)),
        (format!("{a}.context_length"), Value::U32(256)),
        (format!("{a}.embedding_length"), Value::U32(DIM as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FFN as u32)),
        (format!("{a}.attention.head_count"), Value::U32(4)),
        (format!("{a}.attention.head_count_kv"), Value::U32(2)),
        (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), Value::string("gpt2")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(Array::String(tokens)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(Array::I32((0..VOCAB as i32).collect())),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(Array::String(vec![b"t o".to_vec()])),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::string("{% for m in messages %}{{ m.content }}{% endfor %}"),
        ),
        (
            "test.nested".into(),
            Value::Array(Array::Array(vec![
                Array::U64(vec![1, 2]),
                Array::F64(vec![0.25]),
            ])),
        ),
        ("general.file_type".into(), Value::U32(2)),
    ]
}

/// The bytes of the tiny GGUF.
pub fn build(t: &Tiny) -> Vec<u8> {
    let specs = tensor_specs(t);
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, ty, dims))| {
            random_bytes(
                t.seed * 1000 + i as u64,
                ty.tensor_bytes(dims).unwrap() as usize,
            )
        })
        .collect();
    let mut w = GgufWriter::new();
    for (k, v) in metadata(t) {
        w.push_metadata(k, v);
    }
    for ((name, ty, dims), data) in specs.iter().zip(&datas) {
        w.add_tensor(name.clone(), *ty, dims, TensorData::Bytes(data));
    }
    let mut out = Vec::new();
    w.write(&mut out).unwrap();
    out
}

/// Writes the tiny GGUF to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, t: &Tiny) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, build(t)).unwrap();
    path
}
