//! A shard file as a node loads it after download: `Stage::load` (candle's GGUF reader, the
//! llama config, tensor shapes), `ModelInfo::from_file` and `GgufTokenizer::from_file` (the
//! tokenizer built from GGUF metadata). Never panics, never allocates without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardswarm_model::{Device, GgufTokenizer, ModelInfo, Stage};

#[path = "../support/scratch.rs"]
mod support;
use support::scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch("shard-0.gguf");
    std::fs::write(path, data).expect("write");
    let _ = ModelInfo::from_file(path);
    if let Ok(t) = GgufTokenizer::from_file(path) {
        let _ = t.encode("hello <|im_start|> world");
    }
    if let Ok(stage) = Stage::load(path, &Device::Cpu) {
        let _ = stage.new_cache(4);
    }
});
