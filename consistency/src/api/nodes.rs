//! `POST /v1/nodes` (registration), `POST /v1/nodes/{id}/heartbeat` and
//! `POST /v1/nodes/{id}/drain`.
//!
//! All run on the leader: the heartbeat reply renews the node's lease, and only the leader's
//! failure detector judges leases. A heartbeat is recorded in the leader's memory only; it is
//! committed through Raft only when it changes something (a `down` node coming back). A drain
//! commits only the node's `draining` mark; the failure detector moves the copies
//! ([`crate::decide::repair`]).

use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use client::api::{HeartbeatRequest, HeartbeatResponse, NodeState, RegisterNodeRequest};
use client::types::NodeId;

use serde::Deserialize;

use super::error::ApiFailure;
use super::leader::on_leader;
use super::parse_json;
use crate::config::check_addr;
use crate::decide::repair;
use crate::manager::SharedManager;
use crate::state::{Command, Outcome};

/// The body of a drain request, if any: nothing to say yet, but a misspelt option is refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {}

fn parse_node_id(id: &str) -> Result<NodeId, ApiFailure> {
    NodeId::parse(id).map_err(ApiFailure::bad_request)
}

fn refused(outcome: Outcome) -> Result<(), ApiFailure> {
    match outcome {
        Outcome::Refused(refusal) => Err(refusal.into()),
        _ => Ok(()),
    }
}

pub async fn register(State(manager): State<SharedManager>, request: Request) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let request: RegisterNodeRequest = parse_json(&body)?;
        let id = parse_node_id(&request.id.0)?;
        check_addr(&request.addr).map_err(ApiFailure::bad_request)?;
        if request.capacity_bytes == 0 {
            return Err(ApiFailure::bad_request("capacity_bytes must be positive"));
        }
        let free_bytes = request.free_bytes.unwrap_or(request.capacity_bytes);
        if free_bytes > request.capacity_bytes {
            return Err(ApiFailure::bad_request(format!(
                "free_bytes {free_bytes} exceeds capacity_bytes {}",
                request.capacity_bytes
            )));
        }
        let command = Command::RegisterNode {
            id: id.clone(),
            addr: request.addr.clone(),
            capacity_bytes: request.capacity_bytes,
            free_bytes,
        };
        let cause = format!("node {id} registered from {}", request.addr);
        refused(m.propose(command, &cause).await?)?;
        m.with_liveness(Instant::now(), |l| {
            l.registered(&id, Instant::now(), Some(free_bytes))
        });
        let status = m.read(|a| a.state.nodes.get(&id).map(|n| a.state.node_status(n)));
        let status =
            status.ok_or_else(|| ApiFailure::internal("node vanished after registering"))?;
        Ok(Json(status).into_response())
    })
    .await
}

pub async fn heartbeat(
    State(manager): State<SharedManager>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        // Read on the leader, after the node sent the heartbeat: the database's count of the
        // lease starts no earlier than the node's, so it never ends first.
        let received = Instant::now();
        let id = parse_node_id(&id)?;
        let request: HeartbeatRequest = parse_json(&body)?;
        // Only a leader confirmed by a quorum *after* the heartbeat arrived may grant a lease: a
        // deposed leader that has not noticed yet would otherwise renew leases that its
        // successor does not know of and would not wait for. This also brings the applied state
        // up to date with everything committed before the heartbeat arrived.
        m.linearizable().await?;
        let node_state = m.read(|a| a.state.nodes.get(&id).map(|n| n.state));
        let node_state = node_state.ok_or_else(|| {
            ApiFailure::not_found(format!(
                "storage node {id} is not registered; POST /v1/nodes first"
            ))
        })?;
        if node_state == NodeState::Down {
            let last_vbas = request.units.clone();
            let command = Command::SetNodeState {
                node: id.clone(),
                state: NodeState::Up,
                last_vbas,
            };
            let cause = format!("heartbeat from node {id}, which was down");
            refused(m.propose(command, &cause).await?)?;
            tracing::info!(node = %id, "storage node is back up");
        }
        // Recorded only now, for registered nodes: the memory holds no names nobody registered,
        // and the failure detector sees the heartbeat before any reply to it renews a lease.
        let reply = m
            .with_liveness(Instant::now(), |l| {
                l.heard(&id, received, &request);
                l.io.record(&id, &request.io, crate::io_history::unix_ms());
                m.read(|a| HeartbeatResponse {
                    lease_ms: l.config().lease.as_millis() as u64,
                    node_state: a.state.nodes.get(&id).map_or(NodeState::Down, |n| n.state),
                    units: a.state.assigned_units(
                        &id,
                        |unit, generation| l.renews(&a.state, &id, unit, generation),
                        &|unit, copy| l.remembered(unit, copy, received),
                    ),
                })
            })
            .ok_or_else(|| {
                ApiFailure::unavailable("leadership moved while the heartbeat was answered")
            })?;
        Ok(Json(reply).into_response())
    })
    .await
}

/// Starts moving every copy off a node. Refused with 409 `insufficient_nodes`, changing nothing,
/// when some copy would find no other node; draining a draining node again is fine.
pub async fn drain(
    State(manager): State<SharedManager>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let id = parse_node_id(&id)?;
        if !body.iter().all(u8::is_ascii_whitespace) {
            let _: DrainRequest = parse_json(&body)?;
        }
        // The feasibility check counts free space.
        let (_placing, free) = m.placing().await?;
        if let Some(command) = m.read(|a| repair::drain(&a.state, &id, &free))? {
            refused(m.propose(command, "request: drain node").await?)?;
            tracing::info!(node = %id, "draining storage node");
        }
        let status = m.read(|a| a.state.nodes.get(&id).map(|n| a.state.node_status(n)));
        let status = status.ok_or_else(|| ApiFailure::internal("node vanished while draining"))?;
        Ok(Json(status).into_response())
    })
    .await
}
