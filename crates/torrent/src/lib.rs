//! BitTorrent for shardswarm: BEP 3 metainfo (info dictionary, info-hash, `.torrent` files and
//! magnet links) for the single-file torrents that carry model shards.
//!
//! Sans-IO apart from [`metainfo::Metainfo::from_file`], which streams a file to hash it; no
//! tokio, libp2p or candle here.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod metainfo;

pub use metainfo::{Info, Metainfo, MetainfoError, piece_length_for};
