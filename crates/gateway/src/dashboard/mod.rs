//! The dashboard at `/`: one page (`index.html`, `app.js`, `style.css`, embedded in the binary,
//! no build step, no CDN) fed by `GET /api/events`, a server-sent-event stream of
//! [`Snapshot`]s, one at once on connect and then one a second.
//!
//! A snapshot is the swarm as this peer sees it for routing (the server's own status; a node
//! asks the server) with this peer's own entry taken fresh from it, plus the peers it is
//! connected to (role, transport, RTT) and its byte counters. The page computes rates from
//! successive snapshots; it never reloads.

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use futures::Stream;
use serde::{Deserialize, Serialize};
use shardswarm_node::{Handle, HandleError};
use shardswarm_proto::{ConnectedPeer, NodeStatus, Role, SwarmStatus};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// How often `GET /api/events` sends a snapshot.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One update of the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix milliseconds when it was taken.
    pub time_ms: u64,
    /// This peer (the one serving the page).
    pub peer_id: String,
    /// Server or node.
    pub role: Role,
    /// The swarm (shards, holders, every known node's progress and byte counters).
    pub status: SwarmStatus,
    /// The peers this one is connected to.
    pub peers: Vec<ConnectedPeer>,
    /// This peer's shard payload counters.
    pub bytes: Bytes,
}

/// Shard payload bytes this peer has moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Sent to other peers.
    pub uploaded: u64,
    /// Received from the server.
    pub downloaded_server: u64,
    /// Received from other nodes.
    pub downloaded_peer: u64,
}

/// Takes one snapshot of the peer behind `handle`.
pub async fn snapshot(handle: &Handle) -> Result<Snapshot, HandleError> {
    let own = handle.node_status().await?;
    let mut status = handle.route_status().await?;
    merge_own(&mut status, own.clone());
    let peers = handle.peers().await?;
    let m = handle.metrics();
    Ok(Snapshot {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        peer_id: own.peer_id,
        role: own.role,
        status,
        peers,
        bytes: Bytes {
            uploaded: m.uploaded_total(),
            downloaded_server: m.downloaded_from("server"),
            downloaded_peer: m.downloaded_from("peer"),
        },
    })
}

/// Puts this peer's fresh status in place of the (possibly older) one in `status`, first.
fn merge_own(status: &mut SwarmStatus, own: NodeStatus) {
    status.nodes.retain(|n| n.peer_id != own.peer_id);
    status.nodes.insert(0, own);
}

/// The dashboard's routes: [`page_routes`] and [`api_routes`].
pub fn routes(handle: Handle) -> Router {
    page_routes().merge(api_routes(handle))
}

/// The page and its assets: `/`, `/assets/app.js`, `/assets/style.css` (open even under
/// `--api-key`: the page is what asks for the key).
pub fn page_routes() -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css", STYLE_CSS) }),
        )
}

/// What the page reads: `/api/peers` and the live `/api/events`.
pub fn api_routes(handle: Handle) -> Router {
    Router::new()
        .route("/api/peers", get(peers))
        .route("/api/events", get(events))
        .with_state(handle)
}

fn asset(mime: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, format!("{mime}; charset=utf-8")),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        body,
    )
}

async fn peers(
    State(handle): State<Handle>,
) -> Result<axum::Json<Vec<ConnectedPeer>>, crate::ApiError> {
    handle
        .peers()
        .await
        .map(axum::Json)
        .map_err(|_| crate::ApiError::Unavailable)
}

async fn events(
    State(handle): State<Handle>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(snapshots(handle, INTERVAL)).keep_alive(KeepAlive::default())
}

/// A snapshot at once, then one every `every`; an `error` event and the end when the peer
/// stops.
fn snapshots(handle: Handle, every: Duration) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(Some((handle, tick)), |state| async move {
        let (handle, mut tick) = state?;
        tick.tick().await;
        match snapshot(&handle).await {
            Ok(snap) => {
                let event = Event::default()
                    .event("snapshot")
                    .json_data(&snap)
                    .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
                Some((Ok(event), Some((handle, tick))))
            }
            Err(e) => Some((
                Ok(Event::default().event("error").data(e.to_string())),
                None,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_fresh_status_replaces_the_routed_one_and_comes_first() {
        let mut status = SwarmStatus {
            nodes: vec![
                NodeStatus {
                    peer_id: "server".into(),
                    role: Role::Server,
                    ..Default::default()
                },
                NodeStatus {
                    peer_id: "me".into(),
                    verified: vec![0],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let own = NodeStatus {
            peer_id: "me".into(),
            verified: vec![0, 1],
            ..Default::default()
        };
        merge_own(&mut status, own.clone());
        assert_eq!(status.nodes.len(), 2);
        assert_eq!(status.nodes[0], own);
        assert_eq!(status.nodes[1].peer_id, "server");
    }

    #[test]
    fn assets_are_wired_into_the_page() {
        assert!(INDEX_HTML.contains("/assets/app.js"));
        assert!(INDEX_HTML.contains("/assets/style.css"));
        for id in [
            "banner",
            "matrix",
            "nodes",
            "chart",
            "chat-form",
            "chat-log",
        ] {
            assert!(INDEX_HTML.contains(&format!("id=\"{id}\"")), "no #{id}");
        }
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(APP_JS.contains("/api/events") && APP_JS.contains("/v1/chat/completions"));
    }
}
