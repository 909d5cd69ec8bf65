//! `split` on tiny llama GGUFs written by the test: round trip, determinism, refusals.

mod split_support;

use std::collections::HashMap;
use std::path::Path;

use shardswarm_model::gguf::{GgufFile, Value};
use shardswarm_model::split::{SplitError, SplitOutput, split};
use split_support::{Tiny, write};

fn run_split(src: &Path, n: u32, out: &Path) -> Result<SplitOutput, SplitError> {
    split(src, n, out, |_| {})
}

/// Checks every invariant of a split of `tiny` into `n` shards.
fn check_split(tiny: &Tiny, n: u32) {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "tiny.gguf", tiny);
    let out_dir = dir.path().join("out");
    let out = run_split(&src, n, &out_dir).unwrap();
    let source = GgufFile::open(&src).unwrap();
    assert_eq!(out.shards.len(), n as usize);
    assert_eq!(out.block_count, tiny.blocks);
    assert_eq!(out.model_name, "Tiny Llama");
    assert_eq!(out.model_id, &out.source_sha256[..16]);
    assert_eq!(out.source_size, std::fs::metadata(&src).unwrap().len());

    // Every source tensor lands in exactly one shard, byte-for-byte.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut next_layer = 0;
    for s in &out.shards {
        let path = out_dir.join(&s.filename);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, s.size);
        let shard = GgufFile::open(&path).unwrap();
        let [start, end] = s.layers;
        assert_eq!(start, next_layer);
        assert!(end > start);
        next_layer = end;

        // Metadata: the source's, in order, then the shardswarm keys.
        let md = shard.metadata();
        assert_eq!(&md[..source.metadata().len()], source.metadata());
        let extra: Vec<(&str, &Value)> = md[source.metadata().len()..]
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let expected = [
            ("shardswarm.shard_index", Value::U32(s.index)),
            ("shardswarm.shard_count", Value::U32(n)),
            ("shardswarm.layer_start", Value::U32(start)),
            ("shardswarm.layer_end", Value::U32(end)),
            (
                "shardswarm.source_sha256",
                Value::string(out.source_sha256.clone()),
            ),
            ("shardswarm.block_count", Value::U32(tiny.blocks)),
        ];
        assert_eq!(
            extra,
            expected.iter().map(|(k, v)| (*k, v)).collect::<Vec<_>>()
        );

        // Tensors: the source's relative order, then the tied head copy.
        let names: Vec<&str> = shard.tensors().iter().map(|t| t.name.as_str()).collect();
        let mut expected_names: Vec<&str> = source
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .filter(|name| match *name {
                "token_embd.weight" => s.index == 0,
                "output_norm.weight" | "output.weight" => s.index == n - 1,
                other => {
                    let b: u32 = other.split('.').nth(1).unwrap().parse().unwrap();
                    (start..end).contains(&b)
                }
            })
            .collect();
        if tiny.tied && s.index == n - 1 {
            expected_names.push("output.weight");
        }
        assert_eq!(names, expected_names, "shard {}", s.index);

        for t in shard.tensors() {
            let data = shard.read_tensor(t).unwrap();
            let src_name = if tiny.tied && t.name == "output.weight" {
                "token_embd.weight"
            } else {
                t.name.as_str()
            };
            let st = source.tensor(src_name).unwrap();
            assert_eq!(
                (t.ggml_type, &t.dims),
                (st.ggml_type, &st.dims),
                "{}",
                t.name
            );
            assert_eq!(data, source.read_tensor(st).unwrap(), "{} bytes", t.name);
            *seen.entry(t.name.clone()).or_default() += 1;
        }
    }
    assert_eq!(next_layer, tiny.blocks);
    for t in source.tensors() {
        assert_eq!(
            seen.get(&t.name),
            Some(&1),
            "{} should be in exactly one shard",
            t.name
        );
    }
    let expected_total = source.tensors().len() + usize::from(tiny.tied);
    assert_eq!(seen.len(), expected_total);
}

#[test]
fn split_into_one_two_and_n_shards_reproduces_every_tensor() {
    let tiny = Tiny::default();
    for n in [1, 2, 3, tiny.blocks] {
        check_split(&tiny, n);
    }
}

#[test]
fn untied_head_is_carried_as_is() {
    let tiny = Tiny {
        tied: false,
        blocks: 12,
        ..Tiny::default()
    };
    for n in [1, 4, 12] {
        check_split(&tiny, n);
    }
}

#[test]
fn splitting_twice_gives_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(
        dir.path(),
        "tiny.gguf",
        &Tiny {
            blocks: 11,
            ..Tiny::default()
        },
    );
    let a = run_split(&src, 4, &dir.path().join("a")).unwrap();
    let b = run_split(&src, 4, &dir.path().join("b")).unwrap();
    assert_eq!(a, b);
    for s in &a.shards {
        let x = std::fs::read(dir.path().join("a").join(&s.filename)).unwrap();
        let y = std::fs::read(dir.path().join("b").join(&s.filename)).unwrap();
        assert!(x == y, "{} differs", s.filename);
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 4, "no temp files left: {leftovers:?}");
}

#[test]
fn refuses_zero_shards_and_more_shards_than_layers() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "tiny.gguf", &Tiny::default());
    for n in [0, 6, 100] {
        let err = run_split(&src, n, &dir.path().join("out")).unwrap_err();
        assert!(
            matches!(err, SplitError::BadShardCount { requested, block_count: 5 } if requested == n),
            "{err}"
        );
    }
}

#[test]
fn refuses_non_llama_architecture_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(
        dir.path(),
        "phi.gguf",
        &Tiny {
            arch: "phi3",
            ..Tiny::default()
        },
    );
    let err = run_split(&src, 2, &dir.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("\"phi3\""), "{err}");
    assert!(!dir.path().join("out").exists());
}

#[test]
fn refuses_truncated_files_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = split_support::build(&Tiny::default());
    let len = bytes.len();
    let source = GgufFile::from_bytes(bytes.clone()).unwrap();
    let in_data = source.tensors()[3].data_offset as usize + 5;
    for cut in [
        0,
        3,
        8,
        20,
        100,
        1000,
        source.data_offset() as usize - 3,
        in_data,
        len - 1,
    ] {
        let path = dir.path().join(format!("cut-{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = run_split(&path, 2, &dir.path().join("out")).unwrap_err();
        assert!(
            matches!(err, SplitError::Gguf { .. }),
            "cut at {cut}: {err}"
        );
    }
    assert!(!dir.path().join("out").exists());
}

#[test]
fn refuses_to_split_a_shard() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(dir.path(), "tiny.gguf", &Tiny::default());
    run_split(&src, 2, &dir.path().join("out")).unwrap();
    let err = run_split(
        &dir.path().join("out/shard-0.gguf"),
        1,
        &dir.path().join("again"),
    )
    .unwrap_err();
    assert!(matches!(err, SplitError::AlreadyShard { .. }), "{err}");
}

#[test]
fn manifest_from_split_output_validates() {
    let dir = tempfile::tempdir().unwrap();
    let src = write(
        dir.path(),
        "tiny.gguf",
        &Tiny {
            blocks: 7,
            ..Tiny::default()
        },
    );
    let out = run_split(&src, 3, &dir.path().join("out")).unwrap();
    let m = out
        .to_manifest(|s| {
            Ok::<_, std::convert::Infallible>((
                shardswarm_proto::InfoHash([s.index as u8; 20]),
                1 << 18,
            ))
        })
        .unwrap();
    m.validate().unwrap();
    assert_eq!(m.total_shards, 3);
    assert_eq!(m.source_file, "tiny.gguf");
}
