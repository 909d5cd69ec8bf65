//! Wire types of shardswarm: the command envelope, catalog entries, status DTOs, the manifest
//! and their codecs. Pure data: no IO, no async runtime.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod command;
pub mod envelope;
pub mod error;
mod info_hash;
pub mod manifest;
pub mod status;

pub use command::{Command, FileEntry, SyncTorrentsParams, SyncTorrentsResponse};
pub use envelope::{Header, RawRequest, Request, Response, Status};
pub use error::{ErrorBody, ErrorCode};
pub use info_hash::{InfoHash, ParseInfoHashError};
pub use manifest::{Manifest, ManifestError, ManifestShard, parse_shard_filename, shard_filename};
pub use status::{
    ConnectedPeer, DownloadProgress, NodeStatus, Role, ShardStatus, SwarmStatus, Transport,
};
