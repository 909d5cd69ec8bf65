//! BitTorrent for shardswarm: BEP 3 metainfo (info dictionary, info-hash, `.torrent` files and
//! magnet links) for the single-file torrents that carry model shards, and the piece engine that
//! moves them between peers.
//!
//! - [`metainfo`]: the torrent description and its info-hash.
//! - [`bitfield`]: sets of pieces in BEP 3 bit order.
//! - [`wire`]: the frames of the piece protocol `/shardswarm/pieces/1.0.0` and their codec.
//! - [`picker`]: rarest-first block selection with endgame and parole.
//! - [`download`]: the sans-IO download state machine (one per torrent), driven by events and
//!   virtual time through `poll_action`/`poll_timeout`.
//! - [`storage`]: a preallocated part file written in place, hashed pieces, a crash-safe resume
//!   file and the atomic move into place.
//!
//! Sans-IO apart from [`metainfo::Metainfo::from_file`] and [`storage`] (synchronous `std::fs`);
//! no tokio, libp2p or candle here.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bitfield;
pub mod download;
pub mod metainfo;
pub mod picker;
pub mod storage;
pub mod wire;

pub use bitfield::{Bitfield, BitfieldError};
pub use download::{Action, Download, DownloadConfig, DownloadError, ReceivedBlock};
pub use metainfo::{Info, Metainfo, MetainfoError, piece_length_for};
pub use storage::{PieceStore, StorageError};
pub use wire::{Frame, FrameDecoder, WireError};
