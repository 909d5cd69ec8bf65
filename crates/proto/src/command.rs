//! The commands of `/shardswarm/cmd/1.0.0`, their typed parameters and response payloads.
//!
//! Each command's payload is documented in `docs/PROTOCOL.md`; keep the two in step.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::InfoHash;
use crate::status::{NodeStatus, SwarmStatus};

/// Shards a node assumes when it has never seen a catalog (BRIEF §3).
pub const DEFAULT_TOTAL_SHARDS: u32 = 8;

/// A command with its parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Node → server (or peer): "which shard files exist?" Answer: [`SyncTorrentsResponse`].
    SyncTorrents(SyncTorrentsParams),
    /// "Which shard files do you hold, verified?" Answer: [`ListFilesResponse`].
    ListFiles,
    /// "What does the swarm look like from where you stand?" Answer: [`SwarmStatus`].
    SwarmStatus,
    /// "What is your own state?" Answer: [`NodeStatus`].
    GetNodeStatus,
    /// Server → node: the catalog changed, sync again. Answer: empty success.
    CatalogChanged(CatalogChangedParams),
    /// Node → server: "these shards are now loaded (and these verified)". Answer: empty success.
    ShardLoaded(ShardLoadedParams),
    /// Node (`--shards auto`) → server: "which shards should I hold?" Answer: [`Assignment`].
    RequestShards(RequestShardsParams),
    /// Server → node (`--shards auto`): "hold these shards" (the whole set). Answer: empty.
    AssignShards(Assignment),
}

/// Params of `REQUEST_SHARDS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestShardsParams {
    /// The catalog the node synced.
    pub model_id: String,
    /// Most shards the node will hold (`--max-shards`, else what fits in half its free memory).
    pub max_shards: u32,
}

/// Payload of a `REQUEST_SHARDS` success, and params of `ASSIGN_SHARDS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The catalog the indices refer to.
    pub model_id: String,
    /// The shards to hold, ascending.
    pub shards: Vec<u32>,
}

/// Why a raw command could not be typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandParseError {
    /// No such command.
    Unknown(String),
    /// The params do not fit the command.
    BadParams {
        /// The command name.
        command: &'static str,
        /// What serde said.
        reason: String,
    },
}

/// Params of `SYNC_TORRENTS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncTorrentsParams {
    /// Shards the node expects (its last catalog's count, else 8); the responder's catalog wins.
    pub total_shards: u32,
}

/// Params of `CATALOG_CHANGED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogChangedParams {
    /// The new catalog's model id.
    pub model_id: String,
    /// The new catalog's shard count.
    pub total_shards: u32,
}

/// Params of `SHARD_LOADED`: the node's complete picture, not a delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLoadedParams {
    /// The catalog the indices refer to.
    pub model_id: String,
    /// Shards the node has loaded.
    pub loaded: Vec<u32>,
    /// Shards the node holds complete and verified.
    pub verified: Vec<u32>,
}

/// One shard file in a catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// BitTorrent v1 info-hash of the single-file torrent named `filename`.
    pub info_hash: InfoHash,
    /// `shard-N.gguf`.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// N.
    pub shard_index: u32,
    /// Half-open layer range `[start, end)` held by the shard.
    pub layers: [u32; 2],
}

/// Payload of a `SYNC_TORRENTS` success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncTorrentsResponse {
    /// The model's id (first 16 hex of the source SHA-256, or the directory name).
    pub model_id: String,
    /// The model's name (`general.name`).
    pub model: String,
    /// Number of shards in the catalog.
    pub total_shards: u32,
    /// Every shard file, index order.
    pub files: Vec<FileEntry>,
}

/// Payload of a `LIST_FILES` success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListFilesResponse {
    /// The responder's model id, if it knows one.
    pub model_id: Option<String>,
    /// The files it holds complete and verified.
    pub files: Vec<FileEntry>,
}

/// Payload of a `SWARM_STATUS` success.
pub type SwarmStatusResponse = SwarmStatus;
/// Payload of a `GET_NODE_STATUS` success.
pub type NodeStatusResponse = NodeStatus;

impl Command {
    /// The wire name, e.g. `SYNC_TORRENTS`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::SyncTorrents(_) => "SYNC_TORRENTS",
            Command::ListFiles => "LIST_FILES",
            Command::SwarmStatus => "SWARM_STATUS",
            Command::GetNodeStatus => "GET_NODE_STATUS",
            Command::CatalogChanged(_) => "CATALOG_CHANGED",
            Command::ShardLoaded(_) => "SHARD_LOADED",
            Command::RequestShards(_) => "REQUEST_SHARDS",
            Command::AssignShards(_) => "ASSIGN_SHARDS",
        }
    }

    /// Builds a command from its wire name and params.
    pub fn from_parts(name: &str, params: &Value) -> Result<Command, CommandParseError> {
        fn parse<T: serde::de::DeserializeOwned>(
            command: &'static str,
            params: &Value,
        ) -> Result<T, CommandParseError> {
            T::deserialize(params).map_err(|e| CommandParseError::BadParams {
                command,
                reason: e.to_string(),
            })
        }
        fn no_params(command: &'static str, params: &Value) -> Result<(), CommandParseError> {
            match params {
                Value::Null => Ok(()),
                Value::Object(_) => Ok(()),
                _ => Err(CommandParseError::BadParams {
                    command,
                    reason: "params must be an object".into(),
                }),
            }
        }
        Ok(match name {
            "SYNC_TORRENTS" => Command::SyncTorrents(parse("SYNC_TORRENTS", params)?),
            "LIST_FILES" => {
                no_params("LIST_FILES", params)?;
                Command::ListFiles
            }
            "SWARM_STATUS" => {
                no_params("SWARM_STATUS", params)?;
                Command::SwarmStatus
            }
            "GET_NODE_STATUS" => {
                no_params("GET_NODE_STATUS", params)?;
                Command::GetNodeStatus
            }
            "CATALOG_CHANGED" => Command::CatalogChanged(parse("CATALOG_CHANGED", params)?),
            "SHARD_LOADED" => Command::ShardLoaded(parse("SHARD_LOADED", params)?),
            "REQUEST_SHARDS" => Command::RequestShards(parse("REQUEST_SHARDS", params)?),
            "ASSIGN_SHARDS" => Command::AssignShards(parse("ASSIGN_SHARDS", params)?),
            other => return Err(CommandParseError::Unknown(other.chars().take(64).collect())),
        })
    }

    /// The wire name and params of this command.
    pub fn to_parts(&self) -> (&'static str, Value) {
        let params = match self {
            Command::SyncTorrents(p) => serde_json::to_value(p),
            Command::CatalogChanged(p) => serde_json::to_value(p),
            Command::ShardLoaded(p) => serde_json::to_value(p),
            Command::RequestShards(p) => serde_json::to_value(p),
            Command::AssignShards(p) => serde_json::to_value(p),
            Command::ListFiles | Command::SwarmStatus | Command::GetNodeStatus => {
                Ok(Value::Object(Default::default()))
            }
        };
        (self.name(), params.unwrap_or(Value::Null))
    }
}
