//! Configuration of the two roles, already validated (the CLI parses flags into these).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use libp2p::Multiaddr;

use crate::hash_cache::HashProgress;

/// Which shards a node wants (`--shards`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardPolicy {
    /// Take the window the server assigns (BRIEF §4).
    Auto,
    /// Mirror every shard.
    All,
    /// Exactly these shard indices.
    Pinned(Vec<u32>),
}

/// Why a `--shards` value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--shards takes auto, all or a comma-separated list of indices, got {0:?}")]
pub struct ShardPolicyParseError(pub String);

impl FromStr for ShardPolicy {
    type Err = ShardPolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ShardPolicy::Auto),
            "all" => Ok(ShardPolicy::All),
            list => {
                let mut v = list
                    .split(',')
                    .map(|p| p.trim().parse::<u32>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| ShardPolicyParseError(s.to_owned()))?;
                if v.is_empty() {
                    return Err(ShardPolicyParseError(s.to_owned()));
                }
                v.sort_unstable();
                v.dedup();
                Ok(ShardPolicy::Pinned(v))
            }
        }
    }
}

impl ShardPolicy {
    /// The shards this policy asks for out of `total`. `Auto` is decided by the server; until it
    /// has, it wants nothing.
    pub fn wanted(&self, total: u32) -> Vec<u32> {
        match self {
            ShardPolicy::Auto => Vec::new(),
            ShardPolicy::All => (0..total).collect(),
            ShardPolicy::Pinned(v) => v.iter().copied().filter(|&i| i < total).collect(),
        }
    }
}

/// Which transports to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports {
    /// QUIC over UDP (primary).
    pub quic: bool,
    /// TCP with noise and yamux (fallback).
    pub tcp: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Transports {
            quic: true,
            tcp: true,
        }
    }
}

/// Settings shared by the server and node roles.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `DATA_DIR`: identity, catalog cache, shards, `http.addr`.
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Transports enabled.
    pub transports: Transports,
    /// How long a command request may take.
    pub request_timeout: Duration,
    /// Bandwidth limits of piece transfers.
    pub transfer: crate::transfer::TransferConfig,
    /// Session and KV-memory limits of the stage server.
    pub stage_limits: shardswarm_pipeline::StageLimits,
    /// The private swarm's key (`--swarm-key`): when set, every connection must prove it
    /// holds the same key before any behaviour sees it (see `swarm_key`).
    pub swarm_key: Option<crate::swarm_key::SwarmKey>,
}

impl CommonConfig {
    /// Defaults for `data_dir` listening on `listen`.
    pub fn new(data_dir: PathBuf, listen: Vec<Multiaddr>) -> Self {
        CommonConfig {
            data_dir,
            listen,
            transports: Transports::default(),
            request_timeout: Duration::from_secs(10),
            transfer: Default::default(),
            stage_limits: Default::default(),
            swarm_key: None,
        }
    }
}

/// The rendezvous server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// Where the shards (and maybe `manifest.json`) are; may be read-only.
    pub shards_dir: PathBuf,
    /// How often the shards directory is checked for changes.
    pub rescan_interval: Duration,
    /// Told about hashing progress (the catalog at start, and rescans); `None`: log lines only.
    pub hash_progress: Option<HashProgress>,
}

/// A swarm node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// The server's addresses (`--server`); empty when joining through peers only.
    pub server: Vec<Multiaddr>,
    /// Other peers to join through (`--peer`).
    pub peers: Vec<Multiaddr>,
    /// Which shards to hold.
    pub shards: ShardPolicy,
    /// Most shards to hold under `auto`.
    pub max_shards: Option<u32>,
}

/// The default listen addresses of a server on `port` (QUIC first, then TCP; IPv4 and IPv6).
pub fn default_listen(port: u16) -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip6/::/udp/{port}/quic-v1"),
        format!("/ip6/::/tcp/{port}"),
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_policy_parses() {
        assert_eq!("auto".parse::<ShardPolicy>().unwrap(), ShardPolicy::Auto);
        assert_eq!("all".parse::<ShardPolicy>().unwrap(), ShardPolicy::All);
        assert_eq!(
            "3,0,3".parse::<ShardPolicy>().unwrap(),
            ShardPolicy::Pinned(vec![0, 3])
        );
        assert!("".parse::<ShardPolicy>().is_err());
        assert!("1,x".parse::<ShardPolicy>().is_err());
        assert_eq!(ShardPolicy::Pinned(vec![1, 9]).wanted(8), vec![1]);
    }

    #[test]
    fn default_listen_puts_quic_first() {
        let v = default_listen(7447);
        assert_eq!(v.len(), 4);
        assert!(v[0].to_string().contains("quic-v1"));
    }
}
