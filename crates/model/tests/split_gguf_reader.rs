//! Targeted refusals of the GGUF reader: each corrupt header field gives its own typed error.

mod split_support;

use shardswarm_model::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, TensorData, Value};

/// Header bytes: magic, version, tensor count, metadata count.
fn header(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn one_tensor_file(offset: u64, dims: &[u64], ty: u32, data_len: usize) -> Vec<u8> {
    let mut b = header(3, 1, 0);
    string(&mut b, "t");
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data_len, 0);
    b
}

#[test]
fn accepts_v2_and_v3_and_refuses_other_versions_and_magic() {
    assert_eq!(GgufFile::from_bytes(header(2, 0, 0)).unwrap().version(), 2);
    assert_eq!(GgufFile::from_bytes(header(3, 0, 0)).unwrap().version(), 3);
    for v in [1, 4, 0x0300_0000] {
        assert!(matches!(
            GgufFile::from_bytes(header(v, 0, 0)),
            Err(GgufError::UnsupportedVersion { .. })
        ));
    }
    let mut b = header(3, 0, 0);
    b[0] = b'X';
    assert!(matches!(
        GgufFile::from_bytes(b),
        Err(GgufError::BadMagic { .. })
    ));
    assert!(matches!(
        GgufFile::from_bytes(b"GGU".to_vec()),
        Err(GgufError::Truncated { .. })
    ));
}

#[test]
fn refuses_counts_larger_than_the_file_can_hold() {
    let err = GgufFile::from_bytes(header(3, 1000, 0)).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    let err = GgufFile::from_bytes(header(3, u64::MAX, 0)).unwrap_err();
    assert!(matches!(err, GgufError::TooLarge { .. }), "{err}");
    let mut b = header(3, 0, 1);
    b.extend(u64::MAX.to_le_bytes()); // key length
    assert!(GgufFile::from_bytes(b).is_err());
}

#[test]
fn tensor_checks_bounds_alignment_type_and_blocks() {
    assert!(GgufFile::from_bytes(one_tensor_file(0, &[4], 0, 16)).is_ok());
    let err = GgufFile::from_bytes(one_tensor_file(0, &[4], 0, 15)).unwrap_err();
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{err}");
    let err = GgufFile::from_bytes(one_tensor_file(u64::MAX - 3, &[4], 0, 16)).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::BadTensor { .. } | GgufError::TensorOutOfBounds { .. }
        ),
        "{err}"
    );
    let err = GgufFile::from_bytes(one_tensor_file(8, &[4], 0, 64)).unwrap_err();
    assert!(
        matches!(err, GgufError::BadTensor { .. }),
        "unaligned offset: {err}"
    );
    let err = GgufFile::from_bytes(one_tensor_file(0, &[4], 99, 64)).unwrap_err();
    assert!(
        matches!(err, GgufError::UnsupportedType { type_id: 99, .. }),
        "{err}"
    );
    let err = GgufFile::from_bytes(one_tensor_file(0, &[16], 2, 64)).unwrap_err();
    assert!(
        matches!(err, GgufError::BadTensor { .. }),
        "Q4_0 needs whole 32-blocks: {err}"
    );
    let err = GgufFile::from_bytes(one_tensor_file(0, &[1, 1, 1, 1, 1], 0, 64)).unwrap_err();
    assert!(matches!(err, GgufError::TooLarge { .. }), "5 dims: {err}");
    let err = GgufFile::from_bytes(one_tensor_file(0, &[u64::MAX, u64::MAX], 0, 64)).unwrap_err();
    assert!(
        matches!(err, GgufError::BadTensor { .. }),
        "overflow: {err}"
    );
}

#[test]
fn refuses_duplicate_keys_bad_alignment_and_deep_nesting() {
    let mut b = header(3, 0, 2);
    for _ in 0..2 {
        string(&mut b, "k");
        b.extend(0u32.to_le_bytes());
        b.push(1);
    }
    assert!(matches!(
        GgufFile::from_bytes(b),
        Err(GgufError::DuplicateKey { .. })
    ));

    for bad in [Value::U32(0), Value::U32(48), Value::U64(32)] {
        let mut w = GgufWriter::new();
        w.push_metadata("general.alignment", bad.clone());
        assert!(
            matches!(
                w.write(&mut Vec::new()),
                Err(GgufError::BadAlignment { .. })
            ),
            "{bad:?}"
        );
    }

    // Arrays nested 6 deep: [[[[[[]]]]]].
    let mut b = header(3, 0, 1);
    string(&mut b, "deep");
    b.extend(9u32.to_le_bytes());
    for _ in 0..6 {
        b.extend(9u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let err = GgufFile::from_bytes(b).unwrap_err();
    assert!(matches!(err, GgufError::TooLarge { .. }), "{err}");

    let mut b = header(3, 0, 1);
    string(&mut b, "flag");
    b.extend(7u32.to_le_bytes());
    b.push(2);
    assert!(matches!(
        GgufFile::from_bytes(b),
        Err(GgufError::Malformed { .. })
    ));
}

#[test]
fn open_streams_tensors_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let data = split_support::random_bytes(3, 34 * 4);
    let mut w = GgufWriter::new();
    w.add_tensor("q", GgmlType::Q8_0, &[64, 2], TensorData::Bytes(&data));
    let mut bytes = Vec::new();
    w.write(&mut bytes).unwrap();
    let path = dir.path().join("one.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let t = g.tensor("q").unwrap();
    let mut copied = Vec::new();
    assert_eq!(g.copy_tensor(t, &mut copied).unwrap(), data.len() as u64);
    assert_eq!(copied, data);
    assert_eq!(g.path(), Some(path.as_path()));
    assert!(g.get_u32("missing").is_err());
}
