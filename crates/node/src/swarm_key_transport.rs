//! The transports of a peer (QUIC, TCP with noise and yamux, relayed circuits), gated by the swarm
//! key when there is one: every connection runs the [`crate::swarm_key`] handshake right after the
//! security and multiplexing upgrades, inside the transport's upgrade, so a peer without the key
//! never reaches the `Swarm` — no behaviour (identify, Kademlia, rendezvous, commands, pieces,
//! inference) ever sees it, not even for a moment. A refused connection is closed and logged
//! (`shardswarm::auth`, at warn the first time per peer, then at debug) and counted in
//! `shardswarm_swarm_key_refused_total{reason}`. A handshake cut short by the connection itself
//! (closed, IO error: e.g. a dial the remote cancelled because another address won) is no verdict
//! on the key: logged at debug only, not counted.
//!
//! While the handshake runs, the muxer itself is polled as well: yamux moves no bytes unless
//! its connection is driven. As dialer, a substream the remote opens before the handshake is
//! done means the remote runs without a key (a keyed listener opens nothing until it checked our
//! proof), so it fails at once instead of waiting for the timeout.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt, SubstreamBox};
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::{PeerId, noise, quic, relay, tcp, yamux};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rand::RngCore;
use tracing::{debug, warn};

use crate::swarm_key::{
    HELLO_LEN, Handshake, HandshakeError, NONCE_LEN, PREFIX, PROOF_LEN, REPLY_LEN, Role, SwarmKey,
    check_prefix,
};

/// How long the whole handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an outbound TCP connection may take to connect, secure and multiplex.
pub const TCP_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused connection may take to close gracefully (so the remote reads our proof
/// and logs a mismatch rather than a dropped connection).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Peers remembered for warn-once logging; past this the memory starts afresh.
const WARNED_CAP: usize = 4096;
const TARGET: &str = "shardswarm::auth";

/// Labels of `shardswarm_swarm_key_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `wrong_key`, `no_key`, `version` or `timeout`.
    pub reason: &'static str,
}

/// Connections refused by the swarm-key check, by reason.
pub type Refusals = Family<RefusalLabels, Counter>;

/// The boxed transport a peer's `Swarm` runs on.
pub type PeerTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// QUIC and TCP (noise, yamux) for `keypair`; with `key`, every connection must pass the
/// swarm-key handshake before it is handed on.
pub fn transport(keypair: &Keypair, key: Option<SwarmKey>) -> Result<PeerTransport, noise::Error> {
    transport_counted(keypair, key, Refusals::default(), None)
}

/// [`transport`], counting refusals in `refusals`; with `relay`, also connections relayed
/// through a circuit relay (`…/p2p-circuit`, upgraded with noise and yamux like TCP), which
/// pass the same swarm-key gate.
pub fn transport_counted(
    keypair: &Keypair,
    key: Option<SwarmKey>,
    refusals: Refusals,
    relay: Option<relay::client::Transport>,
) -> Result<PeerTransport, noise::Error> {
    let relayed = match relay {
        Some(r) => OptionalTransport::some(
            r.upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(keypair)?)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))),
        ),
        None => OptionalTransport::none(),
    };
    // The relay first: a circuit address is not for the TCP or QUIC transport.
    // A dial to a host whose firewall drops it (e.g. an AutoNAT dial-back to a node behind
    // NAT) would otherwise hang for the OS's SYN retries, about two minutes.
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(keypair)?)
        .multiplex(yamux::Config::default())
        .outbound_timeout(TCP_DIAL_TIMEOUT)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let tcp = relayed
        .or_transport(tcp)
        .map(|either, _| either.into_inner());
    let quic = quic::tokio::Transport::new(quic::Config::new(keypair))
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    let Some(key) = key else {
        return Ok(tcp
            .or_transport(quic)
            .map(|either, _| either.into_inner())
            .boxed());
    };
    let gate = Arc::new(Gate {
        key,
        local: keypair.public().to_peer_id(),
        warned: Mutex::default(),
        refusals,
    });
    let g = gate.clone();
    let tcp = tcp.and_then(move |(peer, muxer), endpoint| g.clone().check(peer, muxer, endpoint));
    let quic =
        quic.and_then(move |(peer, muxer), endpoint| gate.clone().check(peer, muxer, endpoint));
    Ok(tcp
        .or_transport(quic)
        .map(|either, _| either.into_inner())
        .boxed())
}

/// The swarm-key check shared by every connection of one peer.
struct Gate {
    key: SwarmKey,
    local: PeerId,
    /// Peers already warned about.
    warned: Mutex<HashSet<PeerId>>,
    refusals: Refusals,
}

impl Gate {
    /// Runs the handshake on a fresh connection; the connection only if it passed.
    async fn check(
        self: Arc<Self>,
        remote: PeerId,
        mut muxer: StreamMuxerBox,
        endpoint: ConnectedPoint,
    ) -> Result<(PeerId, StreamMuxerBox), HandshakeError> {
        let role = match &endpoint {
            ConnectedPoint::Dialer {
                role_override: Endpoint::Dialer,
                ..
            } => Role::Dialer,
            _ => Role::Listener,
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let hs = Handshake::new(&self.key, role, &self.local, &remote, nonce);
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, run(&mut muxer, hs))
            .await
            .unwrap_or(Err(HandshakeError::Timeout));
        match outcome {
            Ok(()) => {
                debug!(target: TARGET, peer = %remote, ?role, "swarm key verified");
                Ok((remote, muxer))
            }
            Err(e) => {
                self.refused(&remote, &endpoint, &e);
                if role == Role::Dialer && matches!(e, HandshakeError::WrongKey) {
                    // Our proof is the last message and may still be queued (closing a QUIC
                    // connection drops unsent data): let the remote read it, see the mismatch
                    // and close first, so both sides log the same reason.
                    let linger = poll_fn(|cx| drive(&mut muxer, Role::Dialer, cx));
                    let _ = tokio::time::timeout(CLOSE_GRACE, linger).await;
                }
                let close = poll_fn(|cx| muxer.poll_close_unpin(cx));
                let _ = tokio::time::timeout(CLOSE_GRACE, close).await;
                Err(e)
            }
        }
    }

    fn refused(&self, peer: &PeerId, endpoint: &ConnectedPoint, e: &HandshakeError) {
        let reason = e.reason();
        let addr = endpoint.get_remote_address();
        if matches!(e, HandshakeError::Closed | HandshakeError::Io(_)) {
            // Not a verdict on the key: the connection went away (the remote gave up, or
            // cancelled a dial it made to several addresses at once once another one won).
            debug!(target: TARGET, peer = %peer, %addr, reason, error = %e, "swarm-key handshake aborted");
            return;
        }
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
        let first = self.warned.lock().is_ok_and(|mut w| {
            if w.len() >= WARNED_CAP {
                w.clear();
            }
            w.insert(*peer)
        });
        if first {
            warn!(target: TARGET, peer = %peer, %addr, reason, error = %e, "connection refused: swarm key mismatch");
        } else {
            debug!(target: TARGET, peer = %peer, %addr, reason, error = %e, "connection refused: swarm key mismatch");
        }
    }
}

/// Opens (dialer) or accepts (listener) the handshake substream and runs the exchange on it,
/// driving the muxer all along.
async fn run(muxer: &mut StreamMuxerBox, mut hs: Handshake) -> Result<(), HandshakeError> {
    let role = hs.role();
    let mut stream = poll_fn(|cx| {
        let opened = match role {
            Role::Dialer => muxer.poll_outbound_unpin(cx),
            Role::Listener => muxer.poll_inbound_unpin(cx),
        };
        if let Poll::Ready(r) = opened {
            return Poll::Ready(r.map_err(HandshakeError::from_io));
        }
        drive(muxer, role, cx).map(Err)
    })
    .await?;
    let exchange = async move {
        exchange(&mut stream, &mut hs).await.map_err(|e| match e {
            Step::Io(e) => HandshakeError::from_io(e),
            Step::Refused(e) => e,
        })
    };
    let mut exchange = std::pin::pin!(exchange);
    poll_fn(|cx| {
        // The exchange first: once our last message is queued we are done, before the remote
        // (which then opens its streams) could look like a keyless peer.
        if let Poll::Ready(r) = exchange.poll_unpin(cx) {
            return Poll::Ready(r);
        }
        drive(muxer, role, cx).map(Err)
    })
    .await
}

/// Polls the muxer (so its connection moves bytes); `Ready` with the error that ends the
/// handshake: the connection failed, or (as dialer) the remote opened a substream.
fn drive(muxer: &mut StreamMuxerBox, role: Role, cx: &mut Context<'_>) -> Poll<HandshakeError> {
    loop {
        match muxer.poll_unpin(cx) {
            Poll::Ready(Ok(_)) => continue,
            Poll::Ready(Err(e)) => return Poll::Ready(HandshakeError::from_io(e)),
            Poll::Pending => break,
        }
    }
    if role == Role::Dialer
        && let Poll::Ready(r) = muxer.poll_inbound_unpin(cx)
    {
        return Poll::Ready(match r {
            Ok(_) => HandshakeError::NoKey,
            Err(e) => HandshakeError::from_io(e),
        });
    }
    Poll::Pending
}

enum Step {
    Io(std::io::Error),
    Refused(HandshakeError),
}

impl From<std::io::Error> for Step {
    fn from(e: std::io::Error) -> Self {
        Step::Io(e)
    }
}

impl From<HandshakeError> for Step {
    fn from(e: HandshakeError) -> Self {
        Step::Refused(e)
    }
}

/// The three messages (module doc of [`crate::swarm_key`]). Each side sends its proof before
/// it checks the other's.
async fn exchange(stream: &mut SubstreamBox, hs: &mut Handshake) -> Result<(), Step> {
    let mut prefix = [0u8; PREFIX.len()];
    let mut nonce = [0u8; NONCE_LEN];
    let mut proof = [0u8; PROOF_LEN];
    match hs.role() {
        Role::Dialer => {
            stream.write_all(&hs.hello()).await?;
            stream.flush().await?;
            stream.read_exact(&mut prefix).await?;
            check_prefix(&prefix)?;
            stream.read_exact(&mut nonce).await?;
            stream.read_exact(&mut proof).await?;
            hs.on_nonce(nonce);
            let ours = hs.proof().ok_or(HandshakeError::WrongKey)?;
            stream.write_all(&ours).await?;
            stream.flush().await?;
            hs.verify(&proof)?;
        }
        Role::Listener => {
            // The prefix alone first: a keyless dialer's first stream carries fewer bytes than
            // a whole hello, and it would wait for an answer.
            stream.read_exact(&mut prefix).await?;
            check_prefix(&prefix)?;
            stream.read_exact(&mut nonce).await?;
            hs.on_nonce(nonce);
            let ours = hs.proof().ok_or(HandshakeError::WrongKey)?;
            let mut reply = [0u8; REPLY_LEN];
            reply[..HELLO_LEN].copy_from_slice(&hs.hello());
            reply[HELLO_LEN..].copy_from_slice(&ours);
            stream.write_all(&reply).await?;
            stream.flush().await?;
            stream.read_exact(&mut proof).await?;
            hs.verify(&proof)?;
        }
    }
    Ok(())
}
