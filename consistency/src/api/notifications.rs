//! `POST /v1/notifications`: reports from storage nodes and clients, decided by
//! [`crate::decide::notify`] on the leader. Resync progress reports are only remembered in the
//! leader's memory; every other kind that changes something is committed.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vbs_wire::api::{Notification, NotificationResponse};

use super::error::ApiFailure;
use super::leader::on_leader;
use super::parse_json;
use crate::decide::notify::{self, Decision};
use crate::manager::SharedManager;
use crate::state::{Outcome, Refusal};

pub async fn notify(State(manager): State<SharedManager>, request: Request) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let notification: Notification = parse_json(&body)?;
        // Decisions skip the lease wait for a primary whose node is `down`: that must not be a
        // new leader's stale view of a node its predecessor brought back up.
        m.caught_up().await?;
        let now = Instant::now();
        let decision = m
            .with_liveness(now, |l| {
                m.read(|a| {
                    let decision = notify::decide(&a.state, l, &notification, now)?;
                    match &decision {
                        Decision::Revoke { units, .. } | Decision::Failover { units, .. } => {
                            // Replies computed from here on stop renewing the primary's lease.
                            for (unit, generation) in units {
                                if let Some(slice) = a.state.slice(*unit) {
                                    let cause = notify::describe(&notification);
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
            .ok_or_else(|| ApiFailure::unavailable("leadership moved while deciding"))??;
        match decision {
            Decision::Nothing | Decision::Remember { .. } => {}
            Decision::Propose(command) | Decision::Failover { command, .. } => {
                let cause = notify::describe(&notification);
                if let Outcome::Refused(refusal) = m.propose(command, &cause).await? {
                    return Err(refusal.into());
                }
            }
            Decision::Revoke { retry_after, .. } => {
                let retry_after_ms = retry_after.as_millis().max(1) as u64;
                return Err(Refusal::LeaseNotExpired { retry_after_ms }.into());
            }
        }
        let slices = m.read_with_memory(Instant::now(), |a, remembered| {
            notify::units_of(&notification)
                .iter()
                .filter_map(|u| a.state.slice_map(u.unit, remembered))
                .collect()
        });
        Ok(Json(NotificationResponse { slices }).into_response())
    })
    .await
}
