//! The status documents: `GET /api/status`, `SWARM_STATUS` and `GET_NODE_STATUS` (BRIEF §4).

use serde::{Deserialize, Serialize};

use crate::InfoHash;

/// The swarm as one peer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SwarmStatus {
    /// True when every shard 0..N-1 is loaded by at least one live node.
    pub swarm_ready: bool,
    /// N, the number of shards in the catalog (0 when no catalog is known).
    pub total_shards: u32,
    /// The model's `general.name`.
    pub model: String,
    /// The catalog's model id.
    pub model_id: String,
    /// Shards that no live node has loaded.
    pub missing: Vec<u32>,
    /// One entry per shard.
    pub shards: Vec<ShardStatus>,
    /// The peers this view knows about (the local peer first).
    pub nodes: Vec<NodeStatus>,
}

/// One shard of the catalog and who serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// N.
    pub index: u32,
    /// `shard-N.gguf`.
    pub filename: String,
    /// The shard's info-hash.
    pub info_hash: InfoHash,
    /// Size in bytes.
    pub size: u64,
    /// Half-open layer range `[start, end)`.
    pub layers: [u32; 2],
    /// Peer IDs of live nodes that have it loaded.
    pub loaded_by: Vec<String>,
}

/// What a peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The rendezvous server.
    Server,
    /// A swarm node.
    #[default]
    Node,
}

/// One peer's own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    /// Its peer ID.
    pub peer_id: String,
    /// Server or node.
    pub role: Role,
    /// Addresses it listens on (or was seen at).
    pub addresses: Vec<String>,
    /// Shards it has loaded.
    pub loaded: Vec<u32>,
    /// Shards it holds complete and verified.
    pub verified: Vec<u32>,
    /// Shards it is downloading.
    pub downloading: Vec<DownloadProgress>,
}

/// Progress of one download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    /// Shard index.
    pub index: u32,
    /// Verified bytes so far.
    pub have: u64,
    /// Total bytes.
    pub size: u64,
}
