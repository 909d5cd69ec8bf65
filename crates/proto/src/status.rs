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
    /// Shard payload bytes it has sent to other peers (its upload counter).
    #[serde(default)]
    pub bytes_up: u64,
    /// Shard payload bytes it has received (its download counter, every source).
    #[serde(default)]
    pub bytes_down: u64,
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

/// The transport a connection runs over, read from its remote address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TCP (noise + yamux).
    Tcp,
    /// Through a relay (`/p2p-circuit`), whatever carries the hop to the relay.
    Relayed,
    /// Anything else (e.g. an in-memory transport).
    Other,
}

impl Transport {
    /// Every variant, in display order.
    pub const ALL: [Transport; 4] = [
        Transport::Quic,
        Transport::Tcp,
        Transport::Relayed,
        Transport::Other,
    ];

    /// `quic`, `tcp`, `relayed` or `other` (the JSON and metric label spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::Relayed => "relayed",
            Transport::Other => "other",
        }
    }
}

/// A peer this peer has at least one open connection to (`GET /api/peers`, the dashboard's
/// node list).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectedPeer {
    /// Its peer ID.
    pub peer_id: String,
    /// Server or node; `None` until identify says it is a shardswarm peer.
    pub role: Option<Role>,
    /// The transport of its oldest open connection (the one in use).
    pub transport: Transport,
    /// The remote address of each open connection, oldest first.
    pub connections: Vec<String>,
    /// The addresses it announced it listens on (identify).
    pub listen_addresses: Vec<String>,
    /// The last ping round-trip time, in milliseconds.
    pub rtt_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_status_without_byte_counters_still_parses() {
        // As sent by peers from before the counters existed (BRIEF §4's example).
        let n: NodeStatus = serde_json::from_str(
            r#"{"peer_id":"12D3KooW","role":"node","addresses":[],"loaded":[0],"verified":[0,1],
                "downloading":[{"index":5,"have":1048576,"size":2097152}]}"#,
        )
        .unwrap();
        assert_eq!((n.bytes_up, n.bytes_down), (0, 0));
        assert_eq!(n.downloading[0].index, 5);
    }

    #[test]
    fn connected_peers_serialize_with_lowercase_transport_and_role() {
        let p = ConnectedPeer {
            peer_id: "p".into(),
            role: Some(Role::Server),
            transport: Transport::Relayed,
            connections: vec!["/ip4/1.2.3.4/tcp/1/p2p/r/p2p-circuit".into()],
            listen_addresses: vec![],
            rtt_ms: Some(1.5),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["transport"], "relayed");
        assert_eq!(v["role"], "server");
        let back: ConnectedPeer = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
        for t in Transport::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }
}
