//! A shard file as a node loads it after download: `Stage::load` (candle's GGUF reader, the
//! llama config, tensor shapes), `ModelInfo::from_file` and `GgufTokenizer::from_file` (the
//! tokenizer built from GGUF metadata). Never panics, never allocates without bound.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shardswarm_model::{Device, GgufTokenizer, ModelInfo, Stage};

fn scratch() -> &'static PathBuf {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = P.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let path = dir.path().join("shard-0.gguf");
        (dir, path)
    });
    path
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write");
    let _ = ModelInfo::from_file(path);
    if let Ok(t) = GgufTokenizer::from_file(path) {
        let _ = t.encode("hello <|im_start|> world");
    }
    if let Ok(stage) = Stage::load(path, &Device::Cpu) {
        let _ = stage.new_cache(4);
    }
});
