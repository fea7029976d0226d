//! `POST /v1/nodes` (registration), `POST /v1/nodes/{id}/heartbeat` and
//! `POST /v1/nodes/{id}/drain`.
//!
//! All run on the leader: the heartbeat reply renews the node's lease, and only the leader's
//! failure detector judges leases. A heartbeat is recorded in the leader's memory only; it is
//! committed through Raft only when it changes something (a `down` node coming back,
//! [`crate::decide::liveness::on_heartbeat`]; carried out by [`crate::manager::events`]). A drain
//! commits only the node's `draining` mark; the failure detector moves the copies
//! ([`crate::decide::repair`]).

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vbs_wire::api::{DeviceIdentity, HeartbeatRequest, RegisterNodeRequest};
use vbs_wire::types::NodeId;

use serde::Deserialize;
use tracing::warn;

use super::error::ApiFailure;
use super::leader::on_leader;
use super::parse_json;
use crate::config::check_addr;
use crate::decide::repair;
use crate::manager::SharedManager;
use crate::state::Command;

/// The body of a drain request, if any: nothing to say yet, but a misspelt option is refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {}

fn parse_node_id(id: &str) -> Result<NodeId, ApiFailure> {
    NodeId::parse(id).map_err(ApiFailure::bad_request)
}

/// The devices a registration presents that the database does not know for the node, and whose
/// copies the node has not marked lost. A node registering for the first time, or for the first
/// time with identities, has all of its devices taken as its own.
fn unknown_devices<'a>(
    known: Option<&BTreeSet<String>>,
    presented: &'a [DeviceIdentity],
) -> Vec<&'a DeviceIdentity> {
    match known {
        Some(known) if !known.is_empty() => presented
            .iter()
            .filter(|d| !known.contains(&d.id) && !d.copies_marked_lost)
            .collect(),
        _ => Vec::new(),
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
        let known = m.read(|a| a.state.nodes.get(&id).map(|n| n.devices.clone()));
        let unknown = unknown_devices(known.as_ref(), &request.devices);
        for device in &unknown {
            warn!(node = %id, device = %device.id, dir = %device.dir,
                "a storage node presents a data directory the database does not know for it (wiped, replaced, or another node's): its copies there must not serve as current");
        }
        for device in request.devices.iter().filter(|d| d.copies_marked_lost) {
            warn!(node = %id, device = %device.id, dir = %device.dir,
                "a storage node marked the copies on an unknown data directory lost; the device is now known as the node's");
        }
        let command = Command::RegisterNode {
            id: id.clone(),
            addr: request.addr.clone(),
            capacity_bytes: request.capacity_bytes,
            free_bytes,
            devices: (unknown.is_empty() && !request.devices.is_empty())
                .then(|| request.devices.iter().map(|d| d.id.clone()).collect()),
        };
        let cause = format!("node {id} registered from {}", request.addr);
        m.apply(command, &cause).await?;
        m.with_liveness(Instant::now(), |l| {
            l.registered(&id, Instant::now(), Some(free_bytes))
        });
        let status = m.read(|a| a.state.nodes.get(&id).map(|n| a.state.node_status(n)));
        let mut status =
            status.ok_or_else(|| ApiFailure::internal("node vanished after registering"))?;
        status.unknown_devices = unknown.into_iter().map(|d| d.id.clone()).collect();
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
        let reply = m.heartbeat(&id, &request, received).await?;
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
            m.apply(command, "request: drain node").await?;
            tracing::info!(node = %id, "draining storage node");
        }
        let status = m.read(|a| a.state.nodes.get(&id).map(|n| a.state.node_status(n)));
        let status = status.ok_or_else(|| ApiFailure::internal("node vanished while draining"))?;
        Ok(Json(status).into_response())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, copies_marked_lost: bool) -> DeviceIdentity {
        DeviceIdentity {
            dir: format!("/data/{id}"),
            id: id.into(),
            copies_marked_lost,
        }
    }

    #[test]
    fn a_device_the_database_does_not_know_for_the_node_is_unknown_until_its_copies_are_marked_lost(
    ) {
        let presented = [device("a", false), device("b", false), device("c", true)];
        let ids = |found: Vec<&DeviceIdentity>| -> Vec<String> {
            found.into_iter().map(|d| d.id.clone()).collect()
        };
        // A new node, and a node that never presented identities, have theirs taken as given.
        assert!(unknown_devices(None, &presented).is_empty());
        assert!(unknown_devices(Some(&BTreeSet::new()), &presented).is_empty());
        let known: BTreeSet<String> = ["a".to_string()].into();
        assert_eq!(ids(unknown_devices(Some(&known), &presented)), ["b"]);
        let all_marked = [device("a", false), device("b", true)];
        assert!(unknown_devices(Some(&known), &all_marked).is_empty());
    }
}
