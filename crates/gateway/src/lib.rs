//! The HTTP face of a peer: `GET /api/status` (BRIEF §4), Prometheus `GET /metrics`, the
//! OpenAI-compatible API (`/v1/…`, BRIEF §7) and the dashboard at `/` (`dashboard`: the page,
//! `GET /api/peers`, the live `GET /api/events` stream).
//!
//! [`router`] builds the axum `Router`; [`serve`] binds it, writes `DATA_DIR/http.addr` and runs
//! until the shutdown future resolves. With an API key ([`HttpOptions`], `--api-key`) every route
//! but the dashboard page and its assets asks for `Authorization: Bearer KEY` ([`auth`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod auth;
pub mod backend;
pub mod dashboard;
pub mod openai;
pub mod swarm_backend;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shardswarm_node::Handle;
use tracing::info;

/// One error type for every route, rendered as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The peer behind the gateway has stopped.
    #[error("the peer has shut down")]
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
        };
        (
            status,
            Json(json!({"error": {"code": code, "message": self.to_string()}})),
        )
            .into_response()
    }
}

/// Settings of a peer's HTTP API.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// `--api-key`: when set, every route but the dashboard page and its assets asks for
    /// `Authorization: Bearer KEY` ([`auth`]).
    pub api_key: Option<auth::ApiKey>,
}

/// The routes of a peer's HTTP API: status, metrics and the OpenAI-compatible API served by
/// the swarm's pipeline through this peer; no API key.
pub fn router(handle: Handle) -> Router {
    router_with(handle, HttpOptions::default())
}

/// [`router`] with `opts` (the API key).
pub fn router_with(handle: Handle, opts: HttpOptions) -> Router {
    let backend = std::sync::Arc::new(swarm_backend::SwarmBackend::new(handle.clone()));
    let api = Router::new()
        .route("/api/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(handle.clone())
        .merge(dashboard::api_routes(handle))
        .merge(openai::openai_router(
            backend,
            openai::ApiOptions::default(),
        ));
    let api = match opts.api_key {
        Some(key) => api.route_layer(axum::middleware::from_fn_with_state(key, auth::require_key)),
        None => api,
    };
    dashboard::page_routes().merge(api)
}

async fn status(
    State(handle): State<Handle>,
) -> Result<Json<shardswarm_proto::SwarmStatus>, ApiError> {
    handle
        .swarm_status()
        .await
        .map(Json)
        .map_err(|_| ApiError::Unavailable)
}

async fn metrics(State(handle): State<Handle>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        handle.metrics().encode(),
    )
}

/// Why the HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the address failed.
    #[error("cannot bind HTTP {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// Writing `http.addr` failed.
    #[error("cannot write {path}: {source}")]
    AddrFile {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Binds `addr`, writes the bound address to `data_dir/http.addr` and returns the bound address
/// and the server future (which ends when `shutdown` resolves). No API key.
pub async fn serve<S>(
    handle: Handle,
    addr: &str,
    data_dir: &Path,
    shutdown: S,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = std::io::Result<()>> + Send + use<S>,
    ),
    ServeError,
>
where
    S: Future<Output = ()> + Send + 'static,
{
    serve_with(handle, addr, data_dir, HttpOptions::default(), shutdown).await
}

/// [`serve`] with `opts` (the API key).
pub async fn serve_with<S>(
    handle: Handle,
    addr: &str,
    data_dir: &Path,
    opts: HttpOptions,
    shutdown: S,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = std::io::Result<()>> + Send + use<S>,
    ),
    ServeError,
>
where
    S: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    let path = data_dir.join("http.addr");
    shardswarm_node::hash_cache::write_atomic(&path, format!("{local}\n").as_bytes()).map_err(
        |source| ServeError::AddrFile {
            path: path.display().to_string(),
            source,
        },
    )?;
    let keyed = if opts.api_key.is_some() {
        " (API key required)"
    } else {
        ""
    };
    info!(target: "shardswarm::http", "HTTP API on http://{local}{keyed}");
    let app = router_with(handle, opts);
    let fut = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    };
    Ok((local, fut))
}
