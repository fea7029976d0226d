//! Raft RPC routes (the receiving side of [`crate::network`]) and the start-up probe.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::{Deserialize, Serialize};

use super::error::ApiFailure;
use crate::manager::SharedManager;
use crate::network::decode_snapshot_chunk;
use crate::raft_types::{RaftId, TypeConfig};

pub const PROBE_PATH: &str = "/raft/probe";

fn bad_body(e: impl std::fmt::Display) -> Response {
    ApiFailure::bad_request(format!("Raft RPC body: {e}")).into_response()
}

pub async fn append(State(manager): State<SharedManager>, body: Bytes) -> Response {
    match serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(rpc) => Json(manager.raft.append_entries(rpc).await).into_response(),
        Err(e) => bad_body(e),
    }
}

pub async fn vote(State(manager): State<SharedManager>, body: Bytes) -> Response {
    match serde_json::from_slice::<VoteRequest<RaftId>>(&body) {
        Ok(rpc) => Json(manager.raft.vote(rpc).await).into_response(),
        Err(e) => bad_body(e),
    }
}

pub async fn snapshot(State(manager): State<SharedManager>, body: Bytes) -> Response {
    match decode_snapshot_chunk(&body) {
        Ok(rpc) => Json(manager.raft.install_snapshot(rpc).await).into_response(),
        Err(e) => bad_body(e),
    }
}

/// `GET /raft/probe?id=N`: asked by a replica that starts with an empty data directory.
#[derive(Debug, Deserialize)]
pub struct ProbeQuery {
    pub id: RaftId,
}

/// What a peer knows that decides whether an empty replica may bootstrap or join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The peer belongs to an initialized cluster.
    pub initialized: bool,
    pub leader: Option<RaftId>,
    /// Whether the asking replica is a member of the cluster's membership.
    pub member: bool,
    /// Only from a leader: whether it has replicated log entries to the asking replica before.
    /// An empty replica that the leader has replicated to has lost its data, and must be
    /// removed from the membership before it comes back.
    pub replicated_before: bool,
}

pub async fn probe(
    State(manager): State<SharedManager>,
    Query(query): Query<ProbeQuery>,
) -> Json<ProbeReply> {
    let metrics = manager.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let initialized = m.last_log_index.is_some() || membership.nodes().next().is_some();
    let replicated_before = m
        .replication
        .as_ref()
        .and_then(|r| r.get(&query.id))
        .is_some_and(|matched| matched.is_some());
    Json(ProbeReply {
        initialized,
        leader: m.current_leader,
        member: membership.get_node(&query.id).is_some(),
        replicated_before,
    })
}
