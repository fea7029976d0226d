//! `GET /v1/status`, `GET /health` and `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use client::api::{ClusterStatus, CopyStatus, Health, ManagerStatus, NodeState, NodeStatus};
use client::types::{ManagerId, NodeId};
use serde::Deserialize;

use super::error::ApiFailure;
use super::leader::on_leader;
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
        Query::<ReadParams>::try_from_uri(request.uri())
            .map(|q| q.0)
            .map_err(|e| ApiFailure::bad_request(format!("query string: {}", e.body_text())))
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

/// The status as this replica sees it.
pub(crate) fn cluster_status(manager: &SharedManager) -> ClusterStatus {
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
    let heard: BTreeMap<NodeId, Instant> = manager
        .with_liveness(now, |l| {
            manager.read(|a| {
                a.state
                    .nodes
                    .keys()
                    .filter_map(|n| Some((n.clone(), l.last_heard(n)?)))
                    .collect()
            })
        })
        .unwrap_or_default();
    manager.read_with_resyncs(now, |a, resyncs| {
        let nodes = node_statuses(&a.state, &heard, now);
        ClusterStatus {
            answered_by: ManagerId(manager.id()),
            leader: leader.map(ManagerId),
            term,
            applied_index: a.last_applied.map_or(0, |id| id.index),
            managers,
            nodes,
            volumes: a
                .state
                .volumes
                .values()
                .map(|v| a.state.volume_map(v, resyncs))
                .collect(),
        }
    })
}

pub async fn status(State(manager): State<SharedManager>, request: Request) -> Response {
    let params = match ReadParams::of(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    if params.local {
        return Json(cluster_status(&manager)).into_response();
    }
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        m.linearizable().await?;
        Ok(Json(cluster_status(&m)).into_response())
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

/// Prometheus text exposition, computed at scrape time from the Raft metrics and the applied
/// state; a handful of gauges does not warrant a metrics registry.
pub async fn metrics(State(manager): State<SharedManager>) -> Response {
    let (term, leader, is_leader, last_log, applied) = {
        let metrics = manager.raft.metrics();
        let m = metrics.borrow();
        (
            m.current_term,
            m.current_leader,
            m.state == openraft::ServerState::Leader,
            m.last_log_index,
            m.last_applied.map(|id| id.index),
        )
    };
    let committed = manager.log.committed_index();
    let (up, down, draining, copies, volumes) = manager.read(|a| {
        let up = a
            .state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Up)
            .count();
        let draining = a.state.nodes.values().filter(|n| n.draining).count();
        let mut copies = [0usize; CopyStatus::ALL.len()];
        for volume in a.state.volumes.values() {
            for copy in volume.slices.iter().flat_map(|s| &s.copies) {
                copies[CopyStatus::ALL
                    .iter()
                    .position(|s| *s == copy.status)
                    .unwrap_or(0)] += 1;
            }
        }
        let nodes = a.state.nodes.len();
        (up, nodes - up, draining, copies, a.state.volumes.len())
    });
    // Only the leader hears progress reports; elsewhere these read 0.
    let resyncs = manager
        .with_liveness(Instant::now(), |l| {
            manager.read(|a| {
                l.resyncs.running(|unit, node| {
                    a.state
                        .slice(unit)
                        .and_then(|s| s.copy(node))
                        .map(|c| c.status)
                })
            })
        })
        .unwrap_or_default();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge("vbs_raft_term", "Current Raft term.", &[("", term)]);
    gauge(
        "vbs_raft_is_leader",
        "1 if this manager is the Raft leader.",
        &[("", is_leader as u64)],
    );
    gauge(
        "vbs_raft_leader_id",
        "Id of the known leader, 0 if none.",
        &[("", leader.unwrap_or(0))],
    );
    gauge(
        "vbs_raft_last_log_index",
        "Index of the last Raft log entry.",
        &[("", last_log.unwrap_or(0))],
    );
    gauge(
        "vbs_raft_commit_index",
        "Highest committed Raft log index known here.",
        &[("", committed.unwrap_or(0))],
    );
    gauge(
        "vbs_raft_applied_index",
        "Highest Raft log index applied here.",
        &[("", applied.unwrap_or(0))],
    );
    gauge(
        "vbs_storage_nodes",
        "Storage nodes by status.",
        &[
            ("{status=\"up\"}", up as u64),
            ("{status=\"down\"}", down as u64),
        ],
    );
    let labels: Vec<String> = CopyStatus::ALL
        .iter()
        .map(|s| format!("{{status=\"{}\"}}", s.as_str()))
        .collect();
    let samples: Vec<(&str, u64)> = labels
        .iter()
        .zip(copies)
        .map(|(l, n)| (l.as_str(), n as u64))
        .collect();
    gauge(
        "vbs_storage_nodes_draining",
        "Storage nodes being drained.",
        &[("", draining as u64)],
    );
    gauge("vbs_copies", "Copies of slices by update status.", &samples);
    gauge(
        "vbs_resyncs_running",
        "Resyncs under way, as reported to the leader (0 on other managers).",
        &[("", resyncs.count)],
    );
    gauge(
        "vbs_resync_bytes_remaining",
        "Bytes the resyncs under way still have to copy, as last reported to the leader.",
        &[("", resyncs.bytes_remaining)],
    );
    gauge("vbs_volumes", "Volumes.", &[("", volumes as u64)]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
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
