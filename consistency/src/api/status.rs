//! `GET /v1/status` and `GET /health`.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use vbs_wire::api::{
    ClusterStatus, DeviceSpace, Health, ManagerStatus, NodeStatus, StatusCounts, VolumeMap,
};
use vbs_wire::types::{ManagerId, NodeId};

use super::error::ApiFailure;
use super::leader;
use crate::manager::SharedManager;
use crate::state::State as DbState;

/// Query parameters of reads.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Answer from this replica's own state, which may lag the leader's, instead of a
    /// linearizable read on the leader.
    #[serde(default)]
    pub local: bool,
}

impl ReadParams {
    pub fn of(request: &Request) -> Result<ReadParams, ApiFailure> {
        super::parse_query(request)
    }
}

/// Every node's status, with how long ago the leader heard from it. `heard` is keyed by node:
/// it comes from another read of the state, which may list other nodes.
fn node_statuses(
    state: &DbState,
    heard: &BTreeMap<NodeId, Instant>,
    now: Instant,
) -> Vec<NodeStatus> {
    state
        .nodes
        .values()
        .map(|n| {
            let mut status = state.node_status(n);
            status.last_heartbeat_ms_ago = heard
                .get(&n.id)
                .map(|at| now.saturating_duration_since(*at).as_millis() as u64);
            status
        })
        .collect()
}

/// Query parameters of `GET /v1/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusParams {
    #[serde(default)]
    local: bool,
    /// `false`: leave out the volume maps (the counts still cover them), for a summary.
    #[serde(default = "yes")]
    volumes: bool,
}

fn yes() -> bool {
    true
}

/// The status as this replica sees it; with `volumes`, every volume's map.
pub(crate) fn cluster_status(manager: &SharedManager, volumes: bool) -> ClusterStatus {
    let (term, leader, membership) = {
        let metrics = manager.raft.metrics();
        let m = metrics.borrow();
        (
            m.current_term,
            m.current_leader,
            m.membership_config.clone(),
        )
    };
    let voters: Vec<u64> = membership.membership().voter_ids().collect();
    let managers = membership
        .membership()
        .nodes()
        .map(|(id, node)| ManagerStatus {
            id: ManagerId(*id),
            addr: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let now = Instant::now();
    let (heard, devices): (
        BTreeMap<NodeId, Instant>,
        BTreeMap<NodeId, Vec<DeviceSpace>>,
    ) = manager
        .with_liveness(now, |l| {
            manager.read(|a| {
                let heard = a
                    .state
                    .nodes
                    .keys()
                    .filter_map(|n| Some((n.clone(), l.last_heard(n)?)))
                    .collect();
                let devices = a
                    .state
                    .nodes
                    .keys()
                    .map(|n| (n.clone(), l.devices(n).to_vec()))
                    .collect();
                (heard, devices)
            })
        })
        .unwrap_or_default();
    manager.read_with_memory(now, |a, remembered| {
        let mut nodes = node_statuses(&a.state, &heard, now);
        for node in &mut nodes {
            node.devices = devices.get(&node.id).cloned().unwrap_or_default();
        }
        let maps: Vec<VolumeMap> = a
            .state
            .volumes
            .values()
            .map(|v| a.state.volume_map(v, remembered))
            .collect();
        ClusterStatus {
            answered_by: ManagerId(manager.id()),
            leader: leader.map(ManagerId),
            term,
            applied_index: a.last_applied.map_or(0, |id| id.index),
            managers,
            counts: StatusCounts::of(&nodes, &maps),
            space: manager.config.space,
            nodes,
            volumes: if volumes { maps } else { Vec::new() },
        }
    })
}

pub async fn status(State(manager): State<SharedManager>, request: Request) -> Response {
    let params: StatusParams = match super::parse_query(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    leader::read(&manager, request, params.local, move |m| {
        Ok(Json(cluster_status(m, params.volumes)).into_response())
    })
    .await
}

/// Always answers while the process runs: liveness for supervisors, not readiness.
pub async fn health(State(manager): State<SharedManager>) -> Json<Health> {
    let metrics = manager.raft.metrics();
    let m = metrics.borrow();
    Json(Health {
        id: ManagerId(manager.id()),
        leader: m.current_leader.map(ManagerId),
        term: m.current_term,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::{cluster, node};
    use std::time::Duration;

    #[test]
    fn heartbeat_ages_go_to_the_node_they_belong_to() {
        // The liveness read saw n1 and n3; the state read also lists n2, registered in between.
        let state = cluster(&["n1", "n2", "n3"]);
        let now = Instant::now();
        let heard = BTreeMap::from([
            (node("n1"), now - Duration::from_millis(100)),
            (node("n3"), now - Duration::from_millis(300)),
        ]);
        let ages: Vec<(String, Option<u64>)> = node_statuses(&state, &heard, now)
            .into_iter()
            .map(|s| (s.id.0, s.last_heartbeat_ms_ago))
            .collect();
        assert_eq!(
            ages,
            [
                ("n1".to_string(), Some(100)),
                ("n2".to_string(), None),
                ("n3".to_string(), Some(300))
            ]
        );
    }
}
