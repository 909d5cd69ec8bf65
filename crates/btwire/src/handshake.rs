//! The BEP 3 handshake: `19` `BitTorrent protocol`, 8 reserved bytes, the 20-byte info-hash and
//! the 20-byte peer id — 68 bytes, once per connection and direction, before any message.
//!
//! Invariants: [`Handshake::check_prefix`] refuses a foreign protocol from its first bytes (an
//! encrypted MSE/PE start, HTTP, …) before the rest arrives; decoding reads exactly
//! [`HANDSHAKE_LEN`] bytes and never panics.

use shardswarm_proto::InfoHash;

/// The protocol string.
pub const PSTR: &[u8; 19] = b"BitTorrent protocol";
/// Bytes of a handshake.
pub const HANDSHAKE_LEN: usize = 68;
/// Byte 5 of `reserved`, bit 0x10: the peer speaks the BEP 10 extension protocol.
const EXTENSION_BYTE: usize = 5;
const EXTENSION_BIT: u8 = 0x10;

/// Why the first bytes of a connection are not a BitTorrent handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first byte is not 19 or the protocol string differs (encryption, another protocol).
    #[error("not a BitTorrent handshake")]
    NotBitTorrent,
    /// The remote named another torrent than the one this connection is for.
    #[error("handshake for another torrent")]
    WrongTorrent,
}

/// One side's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Reserved bits (feature flags).
    pub reserved: [u8; 8],
    /// The torrent.
    pub info_hash: InfoHash,
    /// The sender's peer id.
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Our handshake: only the extension-protocol bit set (no DHT, no fast extension).
    pub fn new(info_hash: InfoHash, peer_id: [u8; 20]) -> Handshake {
        let mut reserved = [0u8; 8];
        reserved[EXTENSION_BYTE] |= EXTENSION_BIT;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the sender speaks BEP 10 (and so may use BEP 9 metadata exchange).
    pub fn supports_extensions(&self) -> bool {
        self.reserved[EXTENSION_BYTE] & EXTENSION_BIT != 0
    }

    /// The 68 wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PSTR);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Checks whatever part of the first 20 bytes (`19` + protocol string) has arrived.
    pub fn check_prefix(buf: &[u8]) -> Result<(), HandshakeError> {
        let n = buf.len().min(20);
        let mut want = [0u8; 20];
        want[0] = 19;
        want[1..].copy_from_slice(PSTR);
        if buf[..n] == want[..n] {
            Ok(())
        } else {
            Err(HandshakeError::NotBitTorrent)
        }
    }

    /// Decodes a handshake from the front of `buf`: `Ok(None)` while fewer than
    /// [`HANDSHAKE_LEN`] bytes are here (the prefix is checked already).
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, HandshakeError> {
        Handshake::check_prefix(buf)?;
        let Some(b) = buf.get(..HANDSHAKE_LEN) else {
            return Ok(None);
        };
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&b[28..48]);
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&b[48..68]);
        Ok(Some(Handshake {
            reserved,
            info_hash: InfoHash(info_hash),
            peer_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_extension_bit() {
        let h = Handshake::new(InfoHash([7; 20]), *b"-SS0100-abcdefghijkl");
        let bytes = h.encode();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], PSTR);
        assert_eq!(bytes[25], 0x10);
        assert!(h.supports_extensions());
        assert_eq!(Handshake::decode(&bytes).unwrap(), Some(h));
        assert_eq!(Handshake::decode(&bytes[..67]).unwrap(), None);
    }

    #[test]
    fn foreign_protocols_fail_on_the_first_bytes() {
        assert_eq!(
            Handshake::check_prefix(b"GET / HTTP/1.1"),
            Err(HandshakeError::NotBitTorrent)
        );
        assert_eq!(Handshake::check_prefix(&[19, b'B', b'i']), Ok(()));
        assert_eq!(
            Handshake::decode(&[19, b'X']),
            Err(HandshakeError::NotBitTorrent)
        );
    }
}
