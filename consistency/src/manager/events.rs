//! What a notification or a heartbeat does on the leader. The decision is a pure function of
//! [`crate::decide`], taken on the applied state and the leader's memory; this file carries out
//! its effects in order: the leader's memory first (a revoked lease, remembered resync
//! progress), then the command committed through Raft. The HTTP handlers (`api/notifications.rs`,
//! `api/nodes.rs`) only parse requests and write answers.

use std::time::Instant;

use vbs_wire::api::{HeartbeatRequest, HeartbeatResponse, NodeState, Notification, SliceMap};
use vbs_wire::types::NodeId;

use super::{Manager, ManagerError};
use crate::decide::liveness;
use crate::decide::notify::{self, Decision};
use crate::io_history;
use crate::state::Refusal;

impl Manager {
    /// Acts on a notification and returns the maps of the slices it names, as they are after it.
    pub async fn notification(
        &self,
        notification: &Notification,
    ) -> Result<Vec<SliceMap>, ManagerError> {
        // Decisions skip the lease wait for a primary whose node is `down`: that must not be a
        // new leader's stale view of a node its predecessor brought back up.
        self.caught_up().await?;
        let now = Instant::now();
        let decision = self
            .with_liveness(now, |l| {
                self.read(|a| {
                    let decision = notify::decide(&a.state, l, notification, now)?;
                    match &decision {
                        Decision::Revoke { units, .. } | Decision::Failover { units, .. } => {
                            // Replies computed from here on stop renewing the primary's lease.
                            for (unit, generation) in units {
                                if let Some(slice) = a.state.slice(*unit) {
                                    let cause = notify::describe(notification);
                                    l.revoke(*unit, *generation, &slice.primary, &cause);
                                }
                            }
                        }
                        Decision::Remember {
                            unit,
                            node,
                            progress,
                            status,
                        } => {
                            let exists =
                                |u, n: &_| a.state.slice(u).is_some_and(|s| s.copy(n).is_some());
                            l.resyncs
                                .record(*unit, node, *progress, *status, now, exists)?;
                        }
                        Decision::Nothing | Decision::Propose(_) => {}
                    }
                    Ok::<_, Refusal>(decision)
                })
            })
            .ok_or(ManagerError::NoLongerLeader("deciding"))??;
        match decision {
            Decision::Nothing | Decision::Remember { .. } => {}
            Decision::Propose(command) | Decision::Failover { command, .. } => {
                self.apply(command, &notify::describe(notification)).await?;
            }
            Decision::Revoke { retry_after, .. } => {
                let retry_after_ms = retry_after.as_millis().max(1) as u64;
                return Err(Refusal::LeaseNotExpired { retry_after_ms }.into());
            }
        }
        Ok(self.read_with_memory(Instant::now(), |a, remembered| {
            notify::units_of(notification)
                .iter()
                .filter_map(|u| a.state.slice_map(u.unit, remembered))
                .collect()
        }))
    }

    /// Takes in a heartbeat `received` (read on the leader when it arrived) from node `id`, and
    /// returns the reply: the lease it grants and the node's units.
    pub async fn heartbeat(
        &self,
        id: &NodeId,
        request: &HeartbeatRequest,
        received: Instant,
    ) -> Result<HeartbeatResponse, ManagerError> {
        // Only a leader confirmed by a quorum *after* the heartbeat arrived may grant a lease: a
        // deposed leader that has not noticed yet would otherwise renew leases that its
        // successor does not know of and would not wait for. This also brings the applied state
        // up to date with everything committed before the heartbeat arrived.
        self.linearizable().await?;
        if let Some(command) = self.read(|a| liveness::on_heartbeat(&a.state, id, request))? {
            let cause = format!("heartbeat from node {id}, which was down");
            self.apply(command, &cause).await?;
            tracing::info!(node = %id, "storage node is back up");
        }
        // Recorded only now, for registered nodes: the memory holds no names nobody registered,
        // and the failure detector sees the heartbeat before any reply to it renews a lease.
        self.with_liveness(Instant::now(), |l| {
            l.heard(id, received, request);
            l.io.record(id, &request.io, io_history::unix_ms());
            self.read(|a| HeartbeatResponse {
                lease_ms: l.config().lease.as_millis() as u64,
                node_state: a.state.nodes.get(id).map_or(NodeState::Down, |n| n.state),
                units: a.state.assigned_units(
                    id,
                    |unit, generation| l.renews(&a.state, id, unit, generation),
                    &|unit, copy| l.remembered(unit, copy, received),
                ),
            })
        })
        .ok_or(ManagerError::NoLongerLeader("the heartbeat was answered"))
    }
}
