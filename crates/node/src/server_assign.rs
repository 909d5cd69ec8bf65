//! The server's arbitration of `--shards auto` joins: each REQUEST_SHARDS is answered with the
//! least-held window (earlier assignments count as holders), and when a holder leaves, shards
//! nobody holds any more are handed to the remaining auto nodes with ASSIGN_SHARDS.

use libp2p::PeerId;
use serde_json::Value;
use shardswarm_proto::command::{Assignment, RequestShardsParams};
use shardswarm_proto::{Command, ErrorBody, ErrorCode};
use tracing::info;

use crate::assign::pick_window;
use crate::event_loop::{EventLoop, Pending, RoleState};
use crate::msglog;

/// What the server assigned to one auto node.
#[derive(Debug, Clone)]
pub(crate) struct Assigned {
    pub(crate) shards: Vec<u32>,
    pub(crate) max: u32,
}

impl EventLoop {
    /// Live holders per shard: loaded by a connected node, or assigned to one.
    fn holders(&self, except: Option<PeerId>) -> Vec<u32> {
        let RoleState::Server(s) = &self.role else {
            return Vec::new();
        };
        let mut c = vec![0u32; s.catalog.files.len()];
        for (peer, info) in &self.peers {
            if Some(*peer) == except {
                continue;
            }
            let mut mine: Vec<u32> = info
                .status
                .as_ref()
                .map(|st| st.loaded.clone())
                .unwrap_or_default();
            if let Some(a) = s.assignments.get(peer) {
                mine.extend(&a.shards);
            }
            mine.sort_unstable();
            mine.dedup();
            for i in mine {
                if let Some(slot) = c.get_mut(i as usize) {
                    *slot += 1;
                }
            }
        }
        c
    }

    pub(crate) fn answer_request_shards(
        &mut self,
        peer: PeerId,
        p: &RequestShardsParams,
    ) -> Result<Value, ErrorBody> {
        let s = self.server_for("REQUEST_SHARDS", &p.model_id)?;
        if p.max_shards == 0 {
            return Err(ErrorBody::new(
                ErrorCode::BadRequest,
                "max_shards must be at least 1",
            ));
        }
        let model_id = s.catalog.model_id.clone();
        let shards = pick_window(&self.holders(Some(peer)), p.max_shards);
        info!(target: msglog::SWARM, %peer, ?shards, "[SWARM] 🧩 Assigned shards {shards:?} to {peer}");
        if let RoleState::Server(s) = &mut self.role {
            s.assignments.insert(
                peer,
                Assigned {
                    shards: shards.clone(),
                    max: p.max_shards,
                },
            );
        }
        serde_json::to_value(Assignment { model_id, shards })
            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))
    }

    /// After a holder left: hands every shard of `left` (what it held) that nobody holds any
    /// more to the auto node with the fewest. Shards nobody was ever given are not orphans: they
    /// wait for the next REQUEST_SHARDS (nodes joining at the same moment ask after a peer's
    /// transient connection closed).
    pub(crate) fn reassign_orphans(&mut self, left: &[u32]) {
        let holders = self.holders(None);
        let RoleState::Server(s) = &mut self.role else {
            return;
        };
        let model_id = s.catalog.model_id.clone();
        let mut changed: Vec<PeerId> = Vec::new();
        let orphans = holders
            .iter()
            .enumerate()
            .filter(|&(i, c)| *c == 0 && left.contains(&(i as u32)));
        for (i, _) in orphans {
            let live = s
                .assignments
                .iter_mut()
                .filter(|(p, _)| self.peers.contains_key(p));
            let Some((peer, a)) =
                live.min_by_key(|(p, a)| (a.shards.len() >= a.max as usize, a.shards.len(), **p))
            else {
                return;
            };
            a.shards.push(i as u32);
            a.shards.sort_unstable();
            if !changed.contains(peer) {
                changed.push(*peer);
            }
        }
        for peer in changed {
            let Some(shards) = (match &self.role {
                RoleState::Server(s) => s.assignments.get(&peer).map(|a| a.shards.clone()),
                RoleState::Node(_) => None,
            }) else {
                continue;
            };
            info!(target: msglog::SWARM, %peer, ?shards, "[SWARM] 🧩 Re-assigned: {peer} now holds {shards:?}");
            let cmd = Command::AssignShards(Assignment {
                model_id: model_id.clone(),
                shards,
            });
            self.send_command(peer, cmd, Pending::Notify, true);
        }
    }
}
