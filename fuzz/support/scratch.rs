//! One scratch file per fuzz process for the targets that must read their input from disk,
//! in a private temp dir (on tmpfs when there is one), rewritten for every input.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The scratch file, named `name` (the first call's name holds for the process).
pub(crate) fn scratch(name: &str) -> &'static PathBuf {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = P.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let path = dir.path().join(name);
        (dir, path)
    });
    path
}
