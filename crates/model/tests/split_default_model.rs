//! `split` of the default model (SmolLM2-135M-Instruct Q4_1) into 8 shards: layer ranges,
//! byte balance, and every shard opening with our reader and with candle's.

use candle_core::quantized::gguf_file;
use shardswarm_model::gguf::GgufFile;
use shardswarm_model::split::split;

mod common;

fn default_model() -> std::path::PathBuf {
    common::default_model().expect("the default model")
}

#[test]
fn default_model_splits_into_eight_balanced_shards() {
    let model = default_model();
    let dir = tempfile::tempdir().unwrap();
    let out = split(&model, 8, dir.path(), |_| {}).unwrap();
    assert_eq!(out.block_count, 30);
    assert_eq!(out.architecture, "llama");
    assert_eq!(
        out.source_sha256,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(out.model_id, "b179c9523d0e6a0f");

    let ranges: Vec<[u32; 2]> = out.shards.iter().map(|s| s.layers).collect();
    assert_eq!(ranges.first().unwrap()[0], 0);
    assert_eq!(ranges.last().unwrap()[1], 30);
    for w in ranges.windows(2) {
        assert_eq!(w[0][1], w[1][0], "{ranges:?}");
    }
    // Every block is 2,216,448 bytes and the embedding (and its tied copy) ~30 MB: balancing
    // by bytes puts one layer beside each, and shares the 28 others 5/5/5/5/4/4 in the middle.
    assert_eq!(ranges[0], [0, 1], "{ranges:?}");
    assert_eq!(ranges[7], [29, 30], "{ranges:?}");
    let mut middle: Vec<u32> = ranges[1..7].iter().map(|[s, e]| e - s).collect();
    middle.sort();
    assert_eq!(middle, [4, 4, 5, 5, 5, 5], "{ranges:?}");

    let source = GgufFile::open(&model).unwrap();
    let mut tensors = 0;
    for s in &out.shards {
        let path = dir.path().join(&s.filename);
        let ours = GgufFile::open(&path).unwrap();
        assert_eq!(ours.get_u32("shardswarm.shard_index").unwrap(), s.index);
        assert_eq!(ours.get_u32("shardswarm.layer_start").unwrap(), s.layers[0]);
        assert_eq!(ours.get_u32("shardswarm.layer_end").unwrap(), s.layers[1]);
        assert_eq!(
            ours.get("tokenizer.chat_template"),
            source.get("tokenizer.chat_template")
        );
        assert_eq!(
            ours.get("tokenizer.ggml.merges"),
            source.get("tokenizer.ggml.merges")
        );
        tensors += ours.tensors().len();
        let mut f = std::fs::File::open(&path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(content.tensor_infos.len(), ours.tensors().len());
        assert_eq!(content.tensor_data_offset, ours.data_offset());
        eprintln!("{} layers {:?} size {}", s.filename, s.layers, s.size);
    }
    // Every source tensor once, plus the tied head copy.
    assert_eq!(tensors, source.tensors().len() + 1);
    let last = GgufFile::open(&dir.path().join("shard-7.gguf")).unwrap();
    let head = last.tensor("output.weight").unwrap();
    let embd = source.tensor("token_embd.weight").unwrap();
    assert_eq!(
        last.read_tensor(head).unwrap(),
        source.read_tensor(embd).unwrap()
    );
}
