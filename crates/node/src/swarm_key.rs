//! The private-swarm check (`--swarm-key FILE`, BRIEF §6): the key, and the pure part of the
//! challenge-response every connection runs before the `Swarm` sees it (the async adapter that
//! drives it over a fresh muxer is `swarm_key_transport`).
//!
//! The handshake runs on the first substream of the connection, opened by the dialer:
//!
//! ```text
//! dialer   → listener  HELLO  = PREFIX (8) ‖ nonce_d (32)
//! listener → dialer    HELLO  = PREFIX (8) ‖ nonce_l (32) ‖ PROOF_l (32)
//! dialer   → listener  PROOF_d (32)
//! PROOF_x = HMAC-SHA256(key, DOMAIN ‖ role_x ‖ len ‖ id_x ‖ len ‖ id_other ‖ nonce_d ‖ nonce_l)
//! ```
//!
//! Invariants: every message has a fixed size, so nothing a peer sends can make us allocate; a
//! proof binds the prover's role and both peer IDs authenticated by noise/TLS plus both fresh
//! nonces, so it can neither be replayed on another connection, relayed between two peers, nor
//! reflected back to its sender; proofs are compared in constant time. Each side sends its
//! proof before it checks the other's, so both sides see a wrong key as a wrong key (not as a
//! closed connection) and log it; neither side hands the connection to the `Swarm` until it
//! checked the other's proof.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a swarm key.
pub const KEY_LEN: usize = 32;
/// The magic and version every handshake starts with: `SSWKEY`, then version 1 (u16 BE).
pub const PREFIX: [u8; 8] = *b"SSWKEY\x00\x01";
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256).
pub const PROOF_LEN: usize = 32;
/// Bytes of the dialer's hello.
pub const HELLO_LEN: usize = PREFIX.len() + NONCE_LEN;
/// Bytes of the listener's answer: its hello and its proof.
pub const REPLY_LEN: usize = HELLO_LEN + PROOF_LEN;
/// Domain separation of the MAC input.
const DOMAIN: &[u8] = b"shardswarm swarm-key handshake v1";

/// A swarm's shared secret: 32 random bytes, stored base64-encoded in the `--swarm-key` file.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; KEY_LEN]);

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmKey({})", self.fingerprint())
    }
}

/// Why text is not a swarm key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmKeyError {
    /// Not base64 (standard alphabet).
    #[error("not base64: {0}")]
    Base64(String),
    /// Decoded to the wrong number of bytes.
    #[error(
        "the key is {got} bytes, it must be exactly {KEY_LEN} (make one with `head -c 32 /dev/urandom | base64`)"
    )]
    Length {
        /// Bytes decoded.
        got: usize,
    },
}

/// Why a swarm key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyFileError {
    /// The file could not be read.
    #[error("cannot read the swarm key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("swarm key {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: SwarmKeyError,
    },
}

impl SwarmKey {
    /// The key made of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SwarmKey(bytes)
    }

    /// Parses base64 (standard alphabet, padding optional) of exactly 32 bytes; whitespace
    /// anywhere (trailing newline, line breaks) is ignored.
    pub fn parse(text: &str) -> Result<Self, SwarmKeyError> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let bytes = engine
            .decode(compact.as_bytes())
            .map_err(|e| SwarmKeyError::Base64(e.to_string()))?;
        let got = bytes.len();
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SwarmKeyError::Length { got })?;
        Ok(SwarmKey(key))
    }

    /// Reads and parses a key file.
    pub fn read(path: &Path) -> Result<Self, SwarmKeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwarmKeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        SwarmKey::parse(&text).map_err(|source| SwarmKeyFileError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The key as a key file holds it (base64, padded, no newline).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// 8 hex digits that tell keys apart without revealing them (for logs): the start of
    /// SHA-256 over a domain tag and the key.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"shardswarm swarm-key fingerprint");
        h.update(self.0);
        hex::encode(&h.finalize()[..4])
    }
}

/// The side of a connection, as far as the handshake is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Opens the handshake substream and speaks first.
    Dialer,
    /// Accepts it.
    Listener,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Dialer => b'D',
            Role::Listener => b'L',
        }
    }

    fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Listener,
            Role::Listener => Role::Dialer,
        }
    }
}

/// Why a handshake failed. Every variant refuses the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The remote's proof does not match our key.
    #[error("swarm key mismatch")]
    WrongKey,
    /// The remote does not speak the handshake: it has no swarm key (or is not shardswarm).
    #[error("the peer does not run the swarm-key handshake (it has no swarm key)")]
    NoKey,
    /// The remote speaks another version of the handshake.
    #[error("the peer speaks swarm-key handshake version {0}, this one version 1")]
    Version(u16),
    /// The remote did not finish in time.
    #[error("the swarm-key handshake timed out")]
    Timeout,
    /// The remote closed the connection during the handshake (it may have refused our key).
    #[error("the peer closed the connection during the swarm-key handshake")]
    Closed,
    /// The connection failed.
    #[error("connection failed during the swarm-key handshake: {0}")]
    Io(#[from] std::io::Error),
}

impl HandshakeError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::WrongKey => "wrong_key",
            HandshakeError::NoKey => "no_key",
            HandshakeError::Version(_) => "version",
            HandshakeError::Timeout => "timeout",
            HandshakeError::Closed => "closed",
            HandshakeError::Io(_) => "io",
        }
    }

    /// An IO error, with an early end of stream read as [`HandshakeError::Closed`].
    pub fn from_io(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => HandshakeError::Closed,
            _ => HandshakeError::Io(e),
        }
    }
}

/// Checks the first bytes a remote sent: our magic and version.
pub fn check_prefix(got: &[u8; PREFIX.len()]) -> Result<(), HandshakeError> {
    if got[..6] != PREFIX[..6] {
        return Err(HandshakeError::NoKey);
    }
    let version = u16::from_be_bytes([got[6], got[7]]);
    if got[6..] != PREFIX[6..] {
        return Err(HandshakeError::Version(version));
    }
    Ok(())
}

/// One side of one handshake, sans IO: it builds the messages to send and checks those
/// received; the caller moves the bytes.
pub struct Handshake {
    key: SwarmKey,
    role: Role,
    local: Vec<u8>,
    remote: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    remote_nonce: Option<[u8; NONCE_LEN]>,
}

impl Handshake {
    /// Our side, as `role`, between `local` and `remote` (the IDs noise/TLS authenticated),
    /// with a fresh random `nonce`.
    pub fn new(
        key: &SwarmKey,
        role: Role,
        local: &PeerId,
        remote: &PeerId,
        nonce: [u8; NONCE_LEN],
    ) -> Self {
        Handshake {
            key: key.clone(),
            role,
            local: local.to_bytes(),
            remote: remote.to_bytes(),
            nonce,
            remote_nonce: None,
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Our hello: prefix and nonce.
    pub fn hello(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..PREFIX.len()].copy_from_slice(&PREFIX);
        out[PREFIX.len()..].copy_from_slice(&self.nonce);
        out
    }

    /// Takes the remote's nonce (its prefix already checked with [`check_prefix`]).
    pub fn on_nonce(&mut self, nonce: [u8; NONCE_LEN]) {
        self.remote_nonce = Some(nonce);
    }

    /// Our proof; `None` before the remote's nonce arrived.
    pub fn proof(&self) -> Option<[u8; PROOF_LEN]> {
        Some(
            self.mac(self.role, &self.local, &self.remote)?
                .finalize()
                .into_bytes()
                .into(),
        )
    }

    /// Checks the remote's proof, in constant time; `WrongKey` also before its nonce arrived.
    pub fn verify(&self, proof: &[u8; PROOF_LEN]) -> Result<(), HandshakeError> {
        let mac = self
            .mac(self.role.other(), &self.remote, &self.local)
            .ok_or(HandshakeError::WrongKey)?;
        mac.verify_slice(proof)
            .map_err(|_| HandshakeError::WrongKey)
    }

    /// The MAC of `prover` (with ID `prover_id`) towards `verifier_id`.
    fn mac(&self, prover: Role, prover_id: &[u8], verifier_id: &[u8]) -> Option<HmacSha256> {
        let remote_nonce = self.remote_nonce?;
        let (nonce_d, nonce_l) = match self.role {
            Role::Dialer => (self.nonce, remote_nonce),
            Role::Listener => (remote_nonce, self.nonce),
        };
        let mut mac =
            HmacSha256::new_from_slice(&self.key.0).expect("HMAC takes keys of any length");
        mac.update(DOMAIN);
        mac.update(&[prover.tag()]);
        for id in [prover_id, verifier_id] {
            // Peer IDs are multihashes of a few dozen bytes; the length keeps the input
            // unambiguous.
            mac.update(&(id.len() as u16).to_be_bytes());
            mac.update(id);
        }
        mac.update(&nonce_d);
        mac.update(&nonce_l);
        Some(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SwarmKey {
        SwarmKey::from_bytes([b; KEY_LEN])
    }

    /// Runs a whole exchange in memory; returns (dialer's verdict, listener's verdict).
    fn exchange(
        kd: &SwarmKey,
        kl: &SwarmKey,
        d: PeerId,
        l: PeerId,
    ) -> (Result<(), HandshakeError>, Result<(), HandshakeError>) {
        let mut dialer = Handshake::new(kd, Role::Dialer, &d, &l, [1; NONCE_LEN]);
        let mut listener = Handshake::new(kl, Role::Listener, &l, &d, [2; NONCE_LEN]);
        let hello = dialer.hello();
        check_prefix(hello[..8].try_into().unwrap()).unwrap();
        listener.on_nonce(hello[8..].try_into().unwrap());
        let reply_hello = listener.hello();
        let proof_l = listener.proof().unwrap();
        dialer.on_nonce(reply_hello[8..].try_into().unwrap());
        let proof_d = dialer.proof().unwrap();
        (dialer.verify(&proof_l), listener.verify(&proof_d))
    }

    #[test]
    fn same_key_is_accepted_both_ways() {
        let (d, l) = (PeerId::random(), PeerId::random());
        let (a, b) = exchange(&key(7), &key(7), d, l);
        assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    }

    #[test]
    fn a_different_key_is_refused_by_both_sides() {
        let (d, l) = (PeerId::random(), PeerId::random());
        let (a, b) = exchange(&key(7), &key(8), d, l);
        assert!(matches!(a, Err(HandshakeError::WrongKey)));
        assert!(matches!(b, Err(HandshakeError::WrongKey)));
    }

    #[test]
    fn a_proof_does_not_verify_for_other_peers_nonces_or_roles() {
        let k = key(3);
        let (d, l, m) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut listener = Handshake::new(&k, Role::Listener, &l, &d, [2; NONCE_LEN]);
        listener.on_nonce([1; NONCE_LEN]);
        let proof_l = listener.proof().unwrap();
        // The intended dialer accepts it.
        let mut dialer = Handshake::new(&k, Role::Dialer, &d, &l, [1; NONCE_LEN]);
        dialer.on_nonce([2; NONCE_LEN]);
        dialer.verify(&proof_l).unwrap();
        // Relayed to another dialer (another remote ID): refused.
        let mut other = Handshake::new(&k, Role::Dialer, &m, &l, [1; NONCE_LEN]);
        other.on_nonce([2; NONCE_LEN]);
        assert!(other.verify(&proof_l).is_err());
        // Replayed on a connection with a fresh nonce: refused.
        let mut fresh = Handshake::new(&k, Role::Dialer, &d, &l, [9; NONCE_LEN]);
        fresh.on_nonce([2; NONCE_LEN]);
        assert!(fresh.verify(&proof_l).is_err());
        // Reflected: the listener's own proof sent back to it as a dialer's proof: refused.
        assert!(listener.verify(&proof_l).is_err());
    }

    #[test]
    fn no_proof_before_the_remote_nonce() {
        let (d, l) = (PeerId::random(), PeerId::random());
        let h = Handshake::new(&key(1), Role::Dialer, &d, &l, [1; NONCE_LEN]);
        assert!(h.proof().is_none());
        assert!(matches!(
            h.verify(&[0; PROOF_LEN]),
            Err(HandshakeError::WrongKey)
        ));
    }

    #[test]
    fn prefix_tells_keyless_peers_and_other_versions_apart() {
        check_prefix(&PREFIX).unwrap();
        // What a peer without a key sends first: multistream-select's header.
        let ms: [u8; 8] = *b"\x13/multis";
        assert!(matches!(check_prefix(&ms), Err(HandshakeError::NoKey)));
        let v2: [u8; 8] = *b"SSWKEY\x00\x02";
        assert!(matches!(check_prefix(&v2), Err(HandshakeError::Version(2))));
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn key_file_text_parses_with_whitespace_and_refuses_wrong_lengths() {
        let k = SwarmKey::from_bytes(std::array::from_fn(|i| i as u8));
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(SwarmKey::parse(&text).unwrap(), k);
        assert_eq!(SwarmKey::parse(&format!("  {text}\n")).unwrap(), k);
        let (a, b) = text.split_at(20);
        assert_eq!(SwarmKey::parse(&format!("{a}\r\n{b}\n\n")).unwrap(), k);
        assert_eq!(SwarmKey::parse(text.trim_end_matches('=')).unwrap(), k);
        assert_eq!(
            SwarmKey::parse("AAAA"),
            Err(SwarmKeyError::Length { got: 3 })
        );
        assert_eq!(SwarmKey::parse(""), Err(SwarmKeyError::Length { got: 0 }));
        let long = base64::engine::general_purpose::STANDARD.encode([0u8; 33]);
        assert_eq!(
            SwarmKey::parse(&long),
            Err(SwarmKeyError::Length { got: 33 })
        );
        assert!(matches!(
            SwarmKey::parse("not base64 at all!"),
            Err(SwarmKeyError::Base64(_))
        ));
    }

    #[test]
    fn key_files_are_read_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("swarm.key");
        std::fs::write(&good, format!("{}\n", key(5).to_base64())).unwrap();
        assert_eq!(SwarmKey::read(&good).unwrap(), key(5));
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "c2hvcnQ=\n").unwrap();
        let e = SwarmKey::read(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.key") && e.contains("5 bytes"), "{e}");
        let e = SwarmKey::read(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, SwarmKeyFileError::Read { .. }));
    }

    #[test]
    fn debug_and_fingerprint_do_not_reveal_the_key() {
        let k = key(0xab);
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.to_base64()) && !shown.contains("abab"));
        assert_eq!(k.fingerprint().len(), 8);
        assert_ne!(k.fingerprint(), key(0xac).fingerprint());
    }
}
