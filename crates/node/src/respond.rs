//! Answers to inbound commands, per role.

use libp2p::PeerId;
use serde_json::{Value, json};
use shardswarm_proto::command::{ListFilesResponse, SyncTorrentsParams};
use shardswarm_proto::status::Role;
use shardswarm_proto::{Command, ErrorBody, ErrorCode, Request, SyncTorrentsResponse};
use tracing::{info, warn};

use crate::dispatch::Handler;
use crate::event_loop::{EventLoop, RoleState};
use crate::msglog;

fn to_value(v: impl serde::Serialize) -> Result<Value, ErrorBody> {
    serde_json::to_value(v).map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))
}

impl Handler for EventLoop {
    fn handle(&mut self, peer: PeerId, request: &Request) -> Result<Value, ErrorBody> {
        match &request.command {
            Command::SyncTorrents(params) => self.answer_sync(peer, params),
            Command::ListFiles => self.answer_list_files(),
            Command::SwarmStatus => to_value(self.swarm_status()),
            Command::GetNodeStatus => to_value(self.node_status()),
            Command::ShardLoaded(p) => self.answer_shard_loaded(peer, p),
            Command::RequestShards(p) => self.answer_request_shards(peer, p),
            Command::AssignShards(a) => self.accept_assignment(peer, a),
            Command::CatalogChanged(p) => match &mut self.role {
                RoleState::Server(_) => Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    "the server owns the catalog; CATALOG_CHANGED is sent by it, not to it",
                )),
                RoleState::Node(n) => {
                    if n.server != Some(peer) {
                        return Err(ErrorBody::new(
                            ErrorCode::Forbidden,
                            "only the rendezvous server announces catalog changes",
                        ));
                    }
                    info!(target: msglog::SYNC, model_id = p.model_id, total_shards = p.total_shards,
                        "[TORRENT_SYNC] 🔔 Server announced a catalog change");
                    n.resync = true;
                    Ok(json!({}))
                }
            },
        }
    }
}

impl EventLoop {
    /// The catalog this peer can vouch for: the server's own, or the one a node synced.
    fn held_catalog(&self) -> Option<SyncTorrentsResponse> {
        match &self.role {
            RoleState::Server(s) => Some(SyncTorrentsResponse {
                model_id: s.catalog.model_id.clone(),
                model: s.catalog.model.clone(),
                total_shards: s.catalog.total_shards(),
                files: s.catalog.files.clone(),
            }),
            RoleState::Node(n) => n.catalog.clone(),
        }
    }

    fn answer_sync(
        &mut self,
        peer: PeerId,
        params: &SyncTorrentsParams,
    ) -> Result<Value, ErrorBody> {
        info!(target: msglog::SYNC, "[TORRENT_SYNC] 📥 Received SYNC_TORRENTS request from {peer}");
        let catalog = self
            .held_catalog()
            .ok_or_else(|| ErrorBody::new(ErrorCode::NotReady, "this peer has no catalog yet"))?;
        if params.total_shards != catalog.total_shards {
            warn!(target: msglog::SYNC, %peer, expected = params.total_shards, catalog = catalog.total_shards,
                "[TORRENT_SYNC] peer expected {} shards; the catalog has {}", params.total_shards, catalog.total_shards);
        }
        to_value(catalog)
    }

    fn answer_list_files(&mut self) -> Result<Value, ErrorBody> {
        let role = match self.role {
            RoleState::Server(_) => Role::Server,
            RoleState::Node(_) => Role::Node,
        };
        let catalog = self.held_catalog();
        let verified = self.node_status().verified;
        let files = catalog
            .as_ref()
            .map(|c| {
                c.files
                    .iter()
                    .filter(|f| role == Role::Server || verified.contains(&f.shard_index))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        to_value(ListFilesResponse {
            model_id: catalog.map(|c| c.model_id),
            files,
        })
    }
}
