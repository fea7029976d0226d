//! Requests that must run on the leader: state changes, heartbeats (their reply grants a lease,
//! which only the leader may do) and linearizable reads. A follower forwards them to the leader
//! once and relays the answer; a request that was already forwarded is not forwarded again, so a
//! stale view of who leads cannot make requests bounce between replicas.

use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, request::Parts, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::error::ApiFailure;
use super::MAX_API_BODY_BYTES;
use crate::manager::{Route, SharedManager};

/// Names the replica that forwarded a request.
pub const FORWARDED_HEADER: &str = "x-vbs-forwarded-by";
/// Time the leader gets beyond the commit timeout before a forwarded request is given up.
const FORWARD_SLACK: Duration = Duration::from_secs(2);

/// Runs `local` with the request body on the leader; elsewhere forwards the request there.
pub async fn on_leader<F, Fut>(manager: &SharedManager, request: Request, local: F) -> Response
where
    F: FnOnce(Bytes) -> Fut,
    Fut: Future<Output = Result<Response, ApiFailure>>,
{
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_API_BODY_BYTES).await {
        Ok(body) => body,
        Err(e) => {
            let failure = ApiFailure::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                vbs_wire::api::ErrorCode::BadRequest,
                format!("request body unreadable or over {MAX_API_BODY_BYTES} bytes: {e}"),
            );
            return failure.into_response();
        }
    };
    match manager.route() {
        Route::Local => local(body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Route::Forward { leader, addr } if !parts.headers.contains_key(FORWARDED_HEADER) => {
            forward(manager, leader, &addr, &parts, body).await
        }
        Route::Forward { leader, .. } => ApiFailure::unavailable(format!(
            "manager {} is not the leader (it believes manager {leader} is) and the request was \
             already forwarded once; retry",
            manager.id()
        ))
        .into_response(),
        Route::NoLeader => ApiFailure::unavailable(format!(
            "no leader is known to manager {}: an election is under way or fewer than a quorum \
             of managers are reachable",
            manager.id()
        ))
        .into_response(),
    }
}

/// Answers a read: from this replica's own state when `local` (`?local=true`, which may lag the
/// leader's), else as a linearizable read on the leader, forwarded there from a follower.
pub async fn read<F>(manager: &SharedManager, request: Request, local: bool, read: F) -> Response
where
    F: FnOnce(&SharedManager) -> Result<Response, ApiFailure> + Send + 'static,
{
    if local {
        return read(manager).unwrap_or_else(IntoResponse::into_response);
    }
    let m = manager.clone();
    on_leader(manager, request, |_| async move {
        m.linearizable().await?;
        read(&m)
    })
    .await
}

/// How long a follower waits for the leader's answer to a forwarded request: what the leader
/// may take for it, plus slack. Membership changes wait for a new replica to catch up, far
/// longer than a commit; giving up on them early would report a failure that is not one.
fn forward_timeout(path: &str, commit_timeout: Duration) -> Duration {
    let on_leader = if path.starts_with("/v1/managers") {
        super::managers::longest_change(commit_timeout)
    } else {
        commit_timeout
    };
    on_leader + FORWARD_SLACK
}

async fn forward(
    manager: &SharedManager,
    leader: u64,
    addr: &str,
    parts: &Parts,
    body: Bytes,
) -> Response {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = manager
        .forward_client
        .request(
            parts.method.clone(),
            manager.config.security.url(addr, path),
        )
        .header(FORWARDED_HEADER, manager.id().to_string())
        .timeout(forward_timeout(
            parts.uri.path(),
            manager.config.commit_timeout,
        ))
        .body(body);
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            return ApiFailure::unavailable(format!(
                "the leader (manager {leader} at {addr}) did not answer the forwarded request: {e}"
            ))
            .into_response()
        }
    };
    let status = response.status();
    let mut headers = Vec::new();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            headers.push((name, value.clone()));
        }
    }
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiFailure::unavailable(format!(
                "the leader (manager {leader}) answer was cut off: {e}"
            ))
            .into_response()
        }
    };
    let mut relayed = Response::new(Body::from(bytes));
    *relayed.status_mut() = status;
    for (name, value) in headers {
        relayed.headers_mut().insert(name, value);
    }
    relayed
        .headers_mut()
        .insert("x-vbs-answered-by", HeaderValue::from(leader));
    relayed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_membership_change_waits_as_long_as_the_leader_may_take() {
        let commit = Duration::from_secs(3);
        assert_eq!(
            forward_timeout("/v1/volumes", commit),
            commit + FORWARD_SLACK
        );
        let managers = forward_timeout("/v1/managers/4", commit);
        assert!(
            managers > super::super::managers::longest_change(commit),
            "{managers:?}"
        );
    }
}
