//! `POST /v1/managers` and `DELETE /v1/managers/{id}`: membership changes of the manager cluster.
//!
//! A new replica joins as a learner, catches up, and then becomes a voter. Removing a replica
//! drops it from the membership entirely; that is also the first step of rejoining a replica
//! whose data directory was lost (see `docs/operations.md`).

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vbs_wire::api::AddManagerRequest;

use super::error::ApiFailure;
use super::leader::on_leader;
use super::parse_json;
use crate::config::check_addr;
use crate::manager::SharedManager;
use crate::raft_types::{ManagerNode, RaftId};

/// How long a new replica may take to catch up as a learner before the request gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a membership change request may run on the leader: catching up, then the change.
pub fn longest_change(commit_timeout: Duration) -> Duration {
    CATCH_UP_TIMEOUT + membership_timeout(commit_timeout)
}

/// A membership change commits two joint-consensus entries, each maybe after an election.
fn membership_timeout(commit_timeout: Duration) -> Duration {
    commit_timeout * 4
}

fn voters(manager: &SharedManager) -> BTreeSet<RaftId> {
    manager
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

async fn with_timeout<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ApiFailure> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(ApiFailure::unavailable(format!(
            "{what} did not finish within {} s; it may still complete, check GET /v1/status",
            timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(ApiFailure::unavailable(format!("{what} failed: {e}"))),
        Ok(Ok(value)) => Ok(value),
    }
}

pub async fn add(State(manager): State<SharedManager>, request: Request) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let request: AddManagerRequest = parse_json(&body)?;
        check_addr(&request.addr).map_err(ApiFailure::bad_request)?;
        let id = request.id.0;
        let mut members = voters(&m);
        if members.contains(&id) {
            return Err(ApiFailure::new(
                axum::http::StatusCode::CONFLICT,
                vbs_wire::api::ErrorCode::AlreadyExists,
                format!("manager {id} is already a voter"),
            ));
        }
        let node = ManagerNode { addr: request.addr };
        with_timeout(
            "adding the learner",
            CATCH_UP_TIMEOUT,
            m.raft.add_learner(id, node, true),
        )
        .await?;
        members.insert(id);
        with_timeout(
            "the membership change",
            membership_timeout(m.config.commit_timeout),
            m.raft.change_membership(members, false),
        )
        .await?;
        tracing::info!(manager = id, "manager added");
        Ok(Json(super::status::cluster_status(&m, true)).into_response())
    })
    .await
}

pub async fn remove(
    State(manager): State<SharedManager>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        let id: RaftId = id
            .parse()
            .map_err(|_| ApiFailure::bad_request(format!("manager id {id:?} is not a number")))?;
        let mut members = voters(&m);
        if !members.remove(&id) {
            return Err(ApiFailure::not_found(format!(
                "manager {id} is not a voter"
            )));
        }
        if members.is_empty() {
            return Err(ApiFailure::bad_request(
                "the last manager cannot be removed",
            ));
        }
        with_timeout(
            "the membership change",
            membership_timeout(m.config.commit_timeout),
            m.raft.change_membership(members, false),
        )
        .await?;
        tracing::info!(manager = id, "manager removed");
        Ok(Json(super::status::cluster_status(&m, true)).into_response())
    })
    .await
}
