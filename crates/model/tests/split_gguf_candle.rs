//! Our writer's files (and split shards) read back identically with candle's GGUF reader, for
//! every quantized type candle supports.

mod split_support;

use candle_core::quantized::{GgmlDType, gguf_file};
use shardswarm_model::gguf::{GgmlType, GgufFile, GgufWriter, TensorData, Value};

const PAIRS: [(GgmlType, GgmlDType); 15] = [
    (GgmlType::F32, GgmlDType::F32),
    (GgmlType::F16, GgmlDType::F16),
    (GgmlType::BF16, GgmlDType::BF16),
    (GgmlType::Q4_0, GgmlDType::Q4_0),
    (GgmlType::Q4_1, GgmlDType::Q4_1),
    (GgmlType::Q5_0, GgmlDType::Q5_0),
    (GgmlType::Q5_1, GgmlDType::Q5_1),
    (GgmlType::Q8_0, GgmlDType::Q8_0),
    (GgmlType::Q8_1, GgmlDType::Q8_1),
    (GgmlType::Q2_K, GgmlDType::Q2K),
    (GgmlType::Q3_K, GgmlDType::Q3K),
    (GgmlType::Q4_K, GgmlDType::Q4K),
    (GgmlType::Q5_K, GgmlDType::Q5K),
    (GgmlType::Q6_K, GgmlDType::Q6K),
    (GgmlType::Q8_K, GgmlDType::Q8K),
];

#[test]
fn every_candle_type_round_trips_through_candle() {
    let datas: Vec<Vec<u8>> = PAIRS
        .iter()
        .enumerate()
        .map(|(i, (t, _))| {
            split_support::random_bytes(i as u64, t.tensor_bytes(&[512, 3]).unwrap() as usize)
        })
        .collect();
    let mut w = GgufWriter::new();
    w.push_metadata("general.architecture", Value::string("llama"));
    for ((t, _), data) in PAIRS.iter().zip(&datas) {
        w.add_tensor(format!("t.{t}"), *t, &[512, 3], TensorData::Bytes(data));
    }
    let mut bytes = Vec::new();
    w.write(&mut bytes).unwrap();
    let ours = GgufFile::from_bytes(bytes.clone()).unwrap();
    let mut cursor = std::io::Cursor::new(bytes);
    let content = gguf_file::Content::read(&mut cursor).unwrap();
    assert_eq!(content.tensor_data_offset, ours.data_offset());
    for ((t, c), data) in PAIRS.iter().zip(&datas) {
        let name = format!("t.{t}");
        let info = &content.tensor_infos[&name];
        assert_eq!(info.ggml_dtype, *c, "{name}");
        assert_eq!(
            info.shape.dims(),
            &[3, 512],
            "{name}: candle reverses ggml order"
        );
        assert_eq!(info.offset, ours.tensor(&name).unwrap().offset, "{name}");
        if matches!(c, GgmlDType::Q8_1 | GgmlDType::Q8K) {
            // candle parses Q8_1/Q8_K infos but refuses to load their data ("not supported yet").
            continue;
        }
        let q = content
            .tensor(&mut cursor, &name, &candle_core::Device::Cpu)
            .unwrap();
        assert_eq!(q.data().unwrap().as_ref(), data.as_slice(), "{name}");
    }
}

#[test]
fn tiny_shards_open_with_candle() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = split_support::Tiny {
        blocks: 6,
        ..Default::default()
    };
    let src = split_support::write(dir.path(), "tiny.gguf", &tiny);
    let out = shardswarm_model::split::split(&src, 3, &dir.path().join("out"), |_| {}).unwrap();
    for s in &out.shards {
        let mut f = std::fs::File::open(dir.path().join("out").join(&s.filename)).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        let ours = GgufFile::open(&dir.path().join("out").join(&s.filename)).unwrap();
        assert_eq!(content.tensor_infos.len(), ours.tensors().len());
        assert_eq!(
            content.metadata["shardswarm.shard_index"].to_u32().unwrap(),
            s.index
        );
        for t in ours.tensors() {
            let q = content
                .tensor(&mut f, &t.name, &candle_core::Device::Cpu)
                .unwrap();
            assert_eq!(
                q.data().unwrap().as_ref(),
                ours.read_tensor(t).unwrap().as_slice(),
                "{}",
                t.name
            );
        }
    }
}
