//! The persistent node identity: `DATA_DIR/identity.key`, libp2p's protobuf encoding of an
//! ed25519 keypair, mode 0600. The peer ID stays the same across restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file exists but is not a protobuf-encoded keypair.
    #[error("identity key {path} is not a libp2p keypair: {reason}")]
    Decode {
        /// The key file.
        path: PathBuf,
        /// The decoder's reason.
        reason: String,
    },
}

/// Loads `path`, or creates a new ed25519 keypair there (atomically, mode 0600).
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::Decode {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("key.tmp");
            {
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(&tmp).map_err(io)?;
                f.write_all(&bytes).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn garbage_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create(&path),
            Err(IdentityError::Decode { .. })
        ));
    }
}
