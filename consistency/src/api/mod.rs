//! The HTTP API (axum): the public routes of [`vbs_wire::api`] and the Raft RPC routes, on one
//! listener.
//!
//! - [`auth`]: the bearer token every route but `/health` and the dashboard's files requires.
//! - [`error`]: error answers.
//! - [`leader`]: running a request on the leader, or forwarding it there.
//! - [`volumes`], [`nodes`], [`notifications`], [`managers`]: the routes that change state.
//! - [`status`]: status and health.
//! - [`events`]: the event log.
//! - [`io`]: the leader's IO history, for the dashboard's charts.
//! - [`metrics`]: Prometheus metrics.
//! - [`dashboard`]: the dashboard at `/`, a page compiled into the binary (from
//!   `consistency/assets/dashboard/`) that polls `GET /v1/status`.
//! - [`raft`]: the Raft RPC routes and the start-up probe.

pub mod auth;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod io;
pub mod leader;
pub mod managers;
pub mod metrics;
pub mod nodes;
pub mod notifications;
pub mod raft;
pub mod status;
pub mod volumes;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use self::error::ApiFailure;
use crate::manager::SharedManager;

/// Largest body of a public API request.
pub const MAX_API_BODY_BYTES: usize = 1 << 20;
/// Largest body of a Raft RPC: an append batch or one snapshot chunk (1 MiB) with headroom.
pub const MAX_RAFT_BODY_BYTES: usize = 32 << 20;

/// Parses a JSON request body, naming what was wrong (unknown field, missing field, bad type).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiFailure> {
    serde_json::from_slice(body).map_err(|e| ApiFailure::bad_request(format!("request body: {e}")))
}

/// Parses a request's query string, naming what was wrong in it.
pub fn parse_query<T: DeserializeOwned>(request: &axum::extract::Request) -> Result<T, ApiFailure> {
    axum::extract::Query::<T>::try_from_uri(request.uri())
        .map(|q| q.0)
        .map_err(|e| ApiFailure::bad_request(format!("query string: {}", e.body_text())))
}

/// Every route of a manager replica.
pub fn router(manager: SharedManager) -> Router {
    let public = Router::new()
        .route("/", get(dashboard::index))
        .route("/ui/{asset}", get(dashboard::asset))
        .route("/v1/status", get(status::status))
        .route("/v1/nodes", post(nodes::register))
        .route("/v1/nodes/{id}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{id}/drain", post(nodes::drain))
        .route("/v1/notifications", post(notifications::notify))
        .route("/v1/volumes", get(volumes::list).post(volumes::create))
        .route(
            "/v1/volumes/{name}",
            get(volumes::show).delete(volumes::delete),
        )
        .route("/v1/volumes/{name}/resize", post(volumes::resize))
        .route(
            "/v1/volumes/{name}/slices/{index}/accept-loss",
            post(volumes::accept_loss),
        )
        .route("/v1/events", get(events::list))
        .route("/v1/io", get(io::history))
        .route("/v1/managers", post(managers::add))
        .route("/v1/managers/{id}", axum::routing::delete(managers::remove))
        .route("/metrics", get(metrics::metrics))
        .route("/health", get(status::health))
        .layer(DefaultBodyLimit::max(MAX_API_BODY_BYTES));
    let raft = Router::new()
        .route(crate::network::APPEND_PATH, post(raft::append))
        .route(crate::network::VOTE_PATH, post(raft::vote))
        .route(crate::network::SNAPSHOT_PATH, post(raft::snapshot))
        .route(raft::PROBE_PATH, get(raft::probe))
        .layer(DefaultBodyLimit::max(MAX_RAFT_BODY_BYTES));
    public
        .merge(raft)
        .fallback(not_found)
        .layer(axum::middleware::map_response(error::json_errors))
        // Outermost: a request without the token learns nothing, not even which routes exist.
        .layer(axum::middleware::from_fn_with_state(
            manager.clone(),
            auth::require_token,
        ))
        .with_state(manager)
}

async fn not_found(uri: axum::http::Uri) -> ApiFailure {
    ApiFailure::not_found(format!("no route {}", uri.path()))
}
