//! The standard BitTorrent peer wire protocol for shardswarm, sans-IO: regular clients
//! (libtorrent, Transmission, …) download the shards a peer holds, and a node downloads shards
//! from them, over plain TCP.
//!
//! - [`handshake`]: the BEP 3 handshake (with the BEP 10 extension bit).
//! - [`message`]: length-prefixed peer messages and their size-capped decoder.
//! - [`bencode`]: a bounded bencode codec for the extension dictionaries.
//! - [`extension`]: the BEP 10 extended handshake and BEP 9 `ut_metadata` (magnet links).
//! - [`serve`]: one connection serving a client, translated onto the piece engine's frames.
//! - [`fetch`]: one connection downloading from a client, presented to the piece engine as a
//!   peer (requests split into 16 KiB blocks and reassembled).
//!
//! Only the framing and the transport differ from shardswarm's own piece protocol: the
//! sessions speak [`shardswarm_torrent::wire::Frame`] towards the transfer actor, so the piece
//! engine, the storage and its SHA-1 checks are the same for both. No tokio, libp2p or candle.
//! Not supported: the fast extension (BEP 6), DHT/PEX, trackers, MSE/PE encryption, uTP.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bencode;
pub mod extension;
pub mod fetch;
pub mod handshake;
pub mod message;
pub mod serve;

pub use fetch::{Fetch, FetchError, FetchOutput};
pub use handshake::{HANDSHAKE_LEN, Handshake, HandshakeError};
pub use message::{Limits, MAX_BLOCK, Message, MessageDecoder, MessageError};
pub use serve::{Serve, ServeError, ServeOutput};

/// The prefix of our peer ids (Azureus style: client `SS`, version 0.1.0).
pub const PEER_ID_PREFIX: &[u8; 8] = b"-SS0100-";

/// A peer id: [`PEER_ID_PREFIX`] and 12 bytes the caller chose at random.
pub fn peer_id(random: [u8; 12]) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(PEER_ID_PREFIX);
    id[8..].copy_from_slice(&random);
    id
}
