//! Pipeline-parallel inference of shardswarm.
//!
//! A generation runs layer range by layer range on the peers that hold the shards: the gateway
//! plans a route ([`plan`]), opens one stream to the first hop, and each hop forwards f32
//! hidden states to the next over its own stream ([`frame`]); the last hop samples the next
//! token and the answer travels back up. [`StageServer`] is the stage side, [`Client`] the
//! gateway side; both reach peers through a [`Dialer`], which the node crate implements on
//! libp2p streams (and tests on in-memory pipes).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod client;
pub mod frame;
pub mod io;
pub mod plan;
pub mod stage_server;

use futures::future::BoxFuture;

pub use client::{
    Client, ClientConfig, ClientError, Finish, GenParams, Outcome, RouteSource, RouteView,
};
pub use frame::{Hop, PROTOCOL, Sampling};
pub use io::{BoxStream, Duplex};
pub use plan::{Holders, NoRoute, plan};
pub use stage_server::{StageLimits, StageServer, StageSource, StageUsage};

/// Opens a fresh stream of the inference protocol to a peer.
pub trait Dialer: Send + Sync {
    /// A new stream to `peer` (base58 peer ID), or why not.
    fn open(&self, peer: &str) -> BoxFuture<'_, Result<BoxStream, String>>;
}
