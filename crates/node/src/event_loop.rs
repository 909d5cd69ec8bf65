//! The event loop that owns the `Swarm`: it takes handle requests, swarm events and a 1 s tick,
//! and leaves role-specific decisions to `server_role` and `node_role`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad};
use shardswarm_proto::codec::{encode_request, encode_response};
use shardswarm_proto::status::Role;
use shardswarm_proto::{Command, Header, NodeStatus, Request as ProtoRequest};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, role_of_agent};
use crate::codec::InboundBytes;
use crate::dispatch::dispatch;
use crate::handle::{Event, HandleError, Request};
use crate::metrics::Metrics;
use crate::msglog;
use crate::node_role::NodeState;
use crate::server_role::ServerState;
use crate::transfer::{TransferCmd, TransferEvents, TransferHandle};

/// What an outbound request was for.
pub(crate) enum Pending {
    /// Raw bytes from a handle; the reply goes back to it.
    Raw(oneshot::Sender<Result<Vec<u8>, HandleError>>),
    /// SWARM_STATUS to the server, for routing.
    RouteStatus(oneshot::Sender<shardswarm_proto::SwarmStatus>),
    /// SYNC_TORRENTS to this peer.
    Sync,
    /// GET_NODE_STATUS (the server polling a node).
    NodeStatus,
    /// REQUEST_SHARDS (an auto node asking the server).
    Assignment,
    /// SHARD_LOADED (a node reporting to the server).
    Report,
    /// A notification whose answer is only logged.
    Notify,
}

/// What this peer knows about another.
#[derive(Debug, Default)]
pub(crate) struct PeerInfo {
    pub(crate) role: Option<Role>,
    pub(crate) addrs: Vec<Multiaddr>,
    pub(crate) status: Option<NodeStatus>,
}

/// The role-specific half of the loop's state.
pub(crate) enum RoleState {
    Server(Box<ServerState>),
    Node(Box<NodeState>),
}

pub(crate) struct EventLoop {
    pub(crate) swarm: Swarm<Behaviour>,
    pub(crate) transfer: TransferHandle,
    pub(crate) transfer_events: TransferEvents,
    pub(crate) rx: mpsc::Receiver<Request>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) listen_tx: watch::Sender<Option<Vec<Multiaddr>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) data_dir: PathBuf,
    pub(crate) role: RoleState,
    pub(crate) peers: HashMap<PeerId, PeerInfo>,
    pub(crate) pending: HashMap<OutboundRequestId, Pending>,
    pub(crate) listeners_pending: HashSet<ListenerId>,
    /// When the listen addresses are published even if some listeners never report one (a
    /// wildcard listener on a family the host has no address of — IPv6 disabled — stays
    /// silent forever). Set by the first address.
    pub(crate) listen_deadline: Option<Instant>,
    pub(crate) listen_addrs: Vec<Multiaddr>,
    /// Stages loaded here (shared with the stage server).
    pub(crate) stages: Arc<crate::inference::StageRegistry>,
    /// Results of stage loads running on the blocking pool.
    pub(crate) stage_tx: mpsc::Sender<StageLoaded>,
    pub(crate) stage_rx: mpsc::Receiver<StageLoaded>,
    /// Shards being loaded.
    pub(crate) loading: HashSet<u32>,
    /// Ping round-trip times (shared with the route source).
    pub(crate) rtts: crate::inference::Rtts,
    /// Open connections per peer (transport, remote addresses).
    pub(crate) connections: crate::peers::Connections,
    /// Inbound command rate per peer.
    pub(crate) cmd_limiter: crate::peer_limits::CommandLimiter,
    /// Reachability, relay reservation, direct vs relayed connections (`nat`).
    pub(crate) nat: crate::nat::NatState,
}

/// The handler of a command over its peer's rate: refuses without running it.
struct RateLimited;

impl crate::dispatch::Handler for RateLimited {
    fn handle(
        &mut self,
        _: PeerId,
        _: &shardswarm_proto::Request,
    ) -> Result<serde_json::Value, shardswarm_proto::ErrorBody> {
        Err(shardswarm_proto::ErrorBody::new(
            shardswarm_proto::ErrorCode::NotReady,
            RATE_LIMITED_MESSAGE,
        ))
    }
}

const RATE_LIMITED_MESSAGE: &str = "rate limited: this peer sent more commands per second than \
     allowed; retry later";

/// Refusals for rate are counted in the metrics, not logged one by one (a flood would flood
/// the log).
fn is_rate_limited(err: &shardswarm_proto::ErrorBody) -> bool {
    err.message == RATE_LIMITED_MESSAGE
}

/// A stage load finished.
pub(crate) struct StageLoaded {
    pub(crate) index: u32,
    pub(crate) result: Result<Arc<shardswarm_model::Stage>, String>,
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl EventLoop {
    pub(crate) fn local(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// Runs until a handle asks for shutdown or every handle is gone.
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if let RoleState::Server(_) = self.role {
            self.seed_catalog();
        }
        let ack = loop {
            tokio::select! {
                Some(ev) = self.transfer_events.recv() => self.on_transfer_event(ev),
                Some(done) = self.stage_rx.recv() => self.on_stage_loaded(done),
                ev = self.swarm.select_next_some() => self.on_swarm_event(ev),
                req = self.rx.recv() => match req {
                    None => break None,
                    Some(Request::Shutdown(ack)) => break Some(ack),
                    Some(req) => self.on_handle_request(req),
                },
                _ = tick.tick() => self.on_tick(),
            }
        };
        info!(target: "shardswarm::peer", "shutting down");
        self.close_connections().await;
        drop(self.swarm);
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
    }

    /// Closes every connection gracefully (so peers notice at once), for at most 500 ms.
    async fn close_connections(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let drain = async {
            while self.swarm.connected_peers().next().is_some() {
                let _ = self.swarm.select_next_some().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    }

    fn on_tick(&mut self) {
        self.listen_grace_check();
        match &self.role {
            RoleState::Server(_) => self.server_tick(),
            RoleState::Node(_) => self.node_tick(),
        }
    }

    fn on_handle_request(&mut self, req: Request) {
        match req {
            Request::SwarmStatus(tx) => {
                let _ = tx.send(self.swarm_status());
            }
            Request::NodeStatus(tx) => {
                let _ = tx.send(self.node_status());
            }
            Request::Peers(tx) => {
                let _ = tx.send(self.connected_peers());
            }
            Request::SendRaw { peer, bytes, reply } => {
                let total_len = bytes.len() as u64;
                let id = self
                    .swarm
                    .behaviour_mut()
                    .cmd
                    .send_request(&peer, InboundBytes { bytes, total_len });
                self.pending.insert(id, Pending::Raw(reply));
            }
            Request::Dial(addr, reply) => {
                let r = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| HandleError::Request {
                        peer: peer_of(&addr).unwrap_or(PeerId::random()),
                        reason: e.to_string(),
                    });
                let _ = reply.send(r);
            }
            Request::RouteStatus(reply) => self.route_status(reply),
            Request::ModelFile(reply) => {
                let _ = reply.send(self.model_file());
            }
            Request::Shutdown(_) => {}
        }
    }

    /// Sends `command` to `peer`; logs the seed's `[MSG]` block when `loud`.
    pub(crate) fn send_command(
        &mut self,
        peer: PeerId,
        command: Command,
        pending: Pending,
        loud: bool,
    ) {
        let req = ProtoRequest {
            header: Header {
                request_id: format!("req-{}", unix_nanos()),
                from: self.local().to_string(),
                to: peer.to_string(),
                timestamp: unix_now(),
            },
            command,
        };
        let raw = req.to_raw();
        let bytes = encode_request(&raw);
        let total_len = bytes.len() as u64;
        let id = self
            .swarm
            .behaviour_mut()
            .cmd
            .send_request(&peer, InboundBytes { bytes, total_len });
        if loud {
            msglog::sent(&peer, id, &raw);
        } else {
            debug!(target: msglog::MSG, %peer, command = raw.command, ?id, "sent");
        }
        if matches!(pending, Pending::Sync) {
            self.emit(Event::SyncSent {
                to: peer,
                request_id: raw.request_id.clone(),
            });
        }
        self.metrics
            .count_command(&raw.command, "outbound", "sent".into());
        self.pending.insert(id, pending);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.metrics.libp2p.record(&event);
        self.nat_observe(&event);
        match event {
            SwarmEvent::Behaviour(ev) => self.on_behaviour_event(ev),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => self.on_new_listen_addr(listener_id, address),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Err(e) = reason {
                    warn!(target: "shardswarm::peer", error = %e, "listener closed");
                }
                self.listener_settled(listener_id);
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                warn!(target: "shardswarm::peer", error = %error, "listener error");
                self.listener_settled(listener_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(target: "shardswarm::peer", peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                self.connection_up(peer_id, connection_id, crate::nat::shown_addr(&endpoint));
                if num_established.get() == 1 {
                    self.peers.entry(peer_id).or_default();
                    if let RoleState::Node(_) = self.role {
                        self.node_connected(peer_id, connection_id);
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                connection_id,
                cause,
                ..
            } => {
                self.connection_down(peer_id, connection_id);
                if num_established == 0 {
                    debug!(target: "shardswarm::peer", peer = %peer_id, "disconnected");
                    self.cmd_limiter.forget(&peer_id);
                    let gone = self.peers.remove(&peer_id);
                    // Only a node still without a catalog is told: in a running swarm, peers
                    // that drop a connection before identify (shutdowns, dial races) are
                    // common and not a hint of anything.
                    let unsynced = matches!(&self.role, RoleState::Node(n) if n.catalog.is_none());
                    if unsynced && cause.is_some() && gone.as_ref().is_none_or(|p| p.role.is_none())
                    {
                        // What a peer without the swarm key sees of a private swarm's refusal
                        // (the keyed side refuses in its transport, before identify).
                        warn!(target: "shardswarm::auth", peer = %peer_id, "connection closed by the peer before it identified itself: it may run a private swarm (start with its --swarm-key)");
                    }
                    self.transfer.send(TransferCmd::PeerDown { peer: peer_id });
                    if let RoleState::Server(s) = &mut self.role {
                        // What the leaver held: its assignment and what it reported loaded.
                        let mut held = s
                            .assignments
                            .remove(&peer_id)
                            .map(|a| a.shards)
                            .unwrap_or_default();
                        held.extend(
                            gone.and_then(|p| p.status)
                                .map(|st| st.loaded)
                                .unwrap_or_default(),
                        );
                        self.reassign_orphans(&held);
                        self.check_ready();
                    }
                    if let RoleState::Node(_) = self.role {
                        self.node_disconnected(peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id,
                error,
                connection_id,
            } => {
                debug!(target: "shardswarm::peer", peer = ?peer_id, error = %error, "dial failed");
                if let RoleState::Node(_) = self.role {
                    self.node_dial_failed(peer_id, connection_id);
                }
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Cmd(ev) => self.on_cmd_event(ev),
            BehaviourEvent::Identify(ev) => {
                self.metrics.libp2p.record(&ev);
                if let identify::Event::Received { peer_id, info, .. } = ev {
                    self.on_identified(peer_id, info);
                }
            }
            BehaviourEvent::Kad(ev) => {
                self.metrics.libp2p.record(&ev);
                match ev {
                    kad::Event::RoutingUpdated { peer, .. } => {
                        debug!(target: "shardswarm::dht", %peer, "routing updated");
                    }
                    kad::Event::OutboundQueryProgressed {
                        result:
                            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                                providers,
                                ..
                            })),
                        ..
                    } => {
                        let local = self.local();
                        for p in providers {
                            if p != local && !self.swarm.is_connected(&p) {
                                debug!(target: "shardswarm::dht", peer = %p, "dialing a provider");
                                let _ = self.swarm.dial(p);
                            }
                        }
                    }
                    _ => {}
                }
            }
            BehaviourEvent::Ping(ev) => {
                self.metrics.libp2p.record(&ev);
                if let (Ok(rtt), Ok(mut rtts)) = (&ev.result, self.rtts.write()) {
                    rtts.insert(ev.peer, *rtt);
                }
            }
            BehaviourEvent::Stream(()) => {}
            BehaviourEvent::RendezvousClient(ev) => self.on_rendezvous_client(ev),
            BehaviourEvent::RendezvousServer(ev) => {
                debug!(target: "shardswarm::rendezvous", ?ev, "rendezvous server event");
            }
            ev @ (BehaviourEvent::RelayServer(_)
            | BehaviourEvent::RelayClient(_)
            | BehaviourEvent::Autonat(_)
            | BehaviourEvent::Dcutr(_)) => self.on_nat_event(ev),
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let role = role_of_agent(&info.agent_version);
        if role.is_none() {
            debug!(target: "shardswarm::peer", %peer, agent = info.agent_version, "not a shardswarm peer");
            return;
        }
        if info.protocols.contains(&KAD_PROTOCOL) {
            for addr in &info.listen_addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
        }
        let entry = self.peers.entry(peer).or_default();
        let first = entry.role.is_none();
        if first {
            self.transfer.send(TransferCmd::PeerUp {
                peer,
                is_server: role == Some(Role::Server),
            });
        }
        entry.role = role;
        entry.addrs = info.listen_addrs;
        if first && role == Some(Role::Node) {
            self.emit(Event::PeerDiscovered { peer });
            if let RoleState::Server(_) = self.role {
                self.send_command(peer, Command::GetNodeStatus, Pending::NodeStatus, false);
            }
        }
    }

    fn on_cmd_event(&mut self, ev: request_response::Event<InboundBytes, Vec<u8>>) {
        use request_response::{Event as RrEvent, Message};
        match ev {
            RrEvent::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let local = self.local();
                let outcome = if self.cmd_limiter.allow(peer, Instant::now()) {
                    dispatch(self, local, peer, &request, unix_now())
                } else {
                    self.metrics.commands_rate_limited.inc();
                    dispatch(&mut RateLimited, local, peer, &request, unix_now())
                };
                let error = outcome.response.error_body().map(|e| e.code);
                let status = error
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "success".into());
                let command = outcome
                    .request
                    .as_ref()
                    .map(|r| r.command.name())
                    .unwrap_or("UNKNOWN");
                self.metrics.count_command(command, "inbound", status);
                if let Some(err) = outcome.response.error_body()
                    && !is_rate_limited(&err)
                {
                    warn!(target: "shardswarm::cmd", %peer, command = outcome.response.command, code = %err.code, "refused: {}", err.message);
                }
                let bytes = encode_response(&outcome.response);
                if self
                    .swarm
                    .behaviour_mut()
                    .cmd
                    .send_response(channel, bytes)
                    .is_err()
                {
                    debug!(target: "shardswarm::cmd", %peer, "response channel closed");
                }
                self.emit(Event::RequestServed {
                    peer,
                    command: outcome.response.command,
                    error,
                });
            }
            RrEvent::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match self.pending.remove(&request_id) {
                Some(Pending::Raw(tx)) => {
                    let _ = tx.send(Ok(response));
                }
                Some(Pending::RouteStatus(tx)) => {
                    let remote = shardswarm_proto::codec::decode_response(&response)
                        .ok()
                        .and_then(|r| r.payload::<shardswarm_proto::SwarmStatus>().ok());
                    let _ = tx.send(remote.unwrap_or_else(|| self.swarm_status()));
                }
                Some(Pending::Sync) => self.on_sync_response(peer, &response),
                Some(Pending::NodeStatus) => self.on_node_status_response(peer, &response),
                Some(Pending::Assignment) => self.on_assignment_response(peer, &response),
                Some(Pending::Report) => self.on_report_done(true),
                Some(Pending::Notify) | None => {}
            },
            RrEvent::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                debug!(target: "shardswarm::cmd", %peer, %error, "request failed");
                match self.pending.remove(&request_id) {
                    Some(Pending::Raw(tx)) => {
                        let _ = tx.send(Err(HandleError::Request {
                            peer,
                            reason: error.to_string(),
                        }));
                    }
                    Some(Pending::RouteStatus(tx)) => {
                        let _ = tx.send(self.swarm_status());
                    }
                    Some(Pending::Sync) => self.on_sync_failed(peer, &error.to_string()),
                    Some(Pending::Report) => self.on_report_done(false),
                    _ => {}
                }
            }
            RrEvent::InboundFailure { peer, error, .. } => {
                debug!(target: "shardswarm::cmd", %peer, %error, "inbound request failed");
            }
            RrEvent::ResponseSent { .. } => {}
        }
    }
}

/// The `/p2p/` peer ID at the end of `addr`, if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}
