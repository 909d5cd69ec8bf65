//! Limits per remote peer: a token bucket on the commands each peer may send, and the libp2p
//! connection limits (per peer, incoming, pending, and process memory).
//!
//! A peer over its command rate gets `NOT_READY` ("rate limited … retry later") for the excess
//! requests, answered without running the command; its bucket refills at [`CMD_RATE`] per
//! second up to [`CMD_BURST`]. Normal traffic stays far below: a node sends a handful of
//! commands when it joins, the server polls each node once a second, and a gateway asks
//! `SWARM_STATUS` once per inference request.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::connection_limits::ConnectionLimits;

/// Commands per second a peer may keep sending.
pub const CMD_RATE: f64 = 20.0;
/// Commands a peer may send at once after a quiet spell.
pub const CMD_BURST: f64 = 100.0;

/// Most connections to one peer (QUIC and TCP dialed at once, plus relayed and re-dials).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;
/// Most incoming connections still in their handshake.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Most established incoming connections.
pub const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// New connections are refused while the process uses more than this share of the machine's
/// memory.
pub const MAX_MEMORY_FRACTION: f64 = 0.9;

/// The connection limits every peer runs with.
pub fn connection_limits() -> ConnectionLimits {
    ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets of inbound commands, one per peer.
#[derive(Debug)]
pub struct CommandLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<PeerId, Bucket>,
}

impl Default for CommandLimiter {
    fn default() -> Self {
        Self::new(CMD_RATE, CMD_BURST)
    }
}

impl CommandLimiter {
    /// `rate` commands per second, bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        CommandLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token of `peer`'s bucket at `now`; false when it is empty.
    pub fn allow(&mut self, peer: PeerId, now: Instant) -> bool {
        let b = self.buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets `peer` (its last connection closed), so the map stays bounded by the peers
    /// connected.
    pub fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }

    /// Peers with a bucket.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no peer has a bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_excess_is_refused_and_time_refills_it() {
        let mut l = CommandLimiter::new(10.0, 5.0);
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| l.allow(a, t0)).count(), 5);
        assert!(l.allow(b, t0), "another peer has its own bucket");
        assert!(!l.allow(a, t0 + Duration::from_millis(50)), "half a token");
        assert!(l.allow(a, t0 + Duration::from_millis(150)));
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| l.allow(a, later)).count(), 5);
        l.forget(&a);
        l.forget(&b);
        assert!(l.is_empty());
    }

    #[test]
    fn a_clock_going_backwards_never_adds_tokens() {
        let mut l = CommandLimiter::new(10.0, 1.0);
        let p = PeerId::random();
        let t = Instant::now() + Duration::from_secs(10);
        assert!(l.allow(p, t));
        assert!(!l.allow(p, t - Duration::from_secs(5)));
    }
}
