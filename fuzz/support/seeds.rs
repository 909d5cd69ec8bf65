//! The committed seed corpus of a fuzz target, read by the proptest twins of the fuzz targets
//! in the crates' tests (each includes this file with `#[path]`).

use std::path::Path;

/// Every seed of fuzz target `target` (`fuzz/corpus/<target>`), in file-name order. Panics when
/// the directory is missing or empty: the twins would otherwise test nothing.
pub(crate) fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    let out: Vec<_> = files
        .iter()
        .map(|p| std::fs::read(p).expect("seed"))
        .collect();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}
