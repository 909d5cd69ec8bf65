//! Names from the network (issue #9): a catalog's model id and file names become a directory
//! and a file under `DATA_DIR/models/`; every hostile one is refused with a clear error before
//! it touches a path, and every accepted one stays inside the data directory.

use std::path::Component;

use shardswarm_node::store::{LocalStore, PathError, validate_model_id};

/// Model ids and file names a hostile server or peer could send.
const HOSTILE: &[&str] = &[
    "",
    ".",
    "..",
    "../..",
    "../etc",
    "/etc/passwd",
    "/",
    "\\\\server\\share",
    "..\\..\\x",
    "a/b",
    "a\\b",
    "x\0y",
    "C:",
    "C:\\Windows",
    "CON",
    "nul",
    "Aux.gguf",
    "com1",
    "LPT9.gguf",
    "trailing.",
    "shard-0.gguf/",
    "shard-0.gguf\0",
    "line\nbreak",
    ".hidden",
];

/// Harmless as a directory name, but not a shard file name.
const NOT_SHARD_NAMES: &[&str] = &[
    "shard-0.gguf.part",
    "shard-0.gguf.resume",
    "shard-00.gguf",
    "shard--1.gguf",
    "shard-+1.gguf",
    "shard-99999999999.gguf",
    "model.gguf",
];

#[test]
fn hostile_model_ids_are_refused_with_a_clear_error() {
    let long = "a".repeat(129);
    for id in HOSTILE.iter().copied().chain([long.as_str()]) {
        let err = validate_model_id(id).expect_err(id);
        assert!(matches!(err, PathError::ModelId(_)));
        assert!(
            err.to_string().contains("is not a safe directory name"),
            "{err}"
        );
    }
}

#[test]
fn hostile_file_names_are_refused_with_a_clear_error() {
    let data = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::new(data.path());
    for name in HOSTILE.iter().chain(NOT_SHARD_NAMES) {
        let err = store.shard_path("0123456789abcdef", name).expect_err(name);
        assert!(matches!(err, PathError::FileName(_)), "{name:?}: {err}");
        assert!(err.to_string().contains("is not shard-N.gguf"), "{err}");
    }
    for id in HOSTILE {
        assert!(store.shard_path(id, "shard-0.gguf").is_err(), "{id:?}");
        assert!(store.model_dir(id).is_err(), "{id:?}");
    }
}

#[test]
fn accepted_names_stay_one_component_below_the_models_dir() {
    let data = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::new(data.path());
    let models = data.path().join("models");
    for (id, name) in [
        ("0123456789abcdef", "shard-0.gguf"),
        ("SmolLM2-135M.Q4_1", "shard-17.gguf"),
        ("a..b", "shard-4294967295.gguf"),
    ] {
        let path = store.shard_path(id, name).expect("accepted");
        let rest = path.strip_prefix(&models).expect("inside models/");
        let parts: Vec<_> = rest.components().collect();
        assert_eq!(parts.len(), 2, "{path:?}");
        assert!(
            parts.iter().all(|c| matches!(c, Component::Normal(_))),
            "{path:?}"
        );
    }
}
