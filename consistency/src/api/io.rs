//! `GET /v1/io[?volume=NAME]`: the leader's IO history ([`vbs_wire::api::IoHistory`]), which the
//! dashboard charts. Only the leader has it: a follower forwards the request.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use vbs_wire::api::IoHistory;

use super::error::ApiFailure;
use super::leader::on_leader;
use crate::io_history::{unix_ms, STEP_MS, WINDOW_STEPS};
use crate::manager::SharedManager;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IoParams {
    /// Only this volume's series (and every node's).
    volume: Option<String>,
}

pub async fn history(State(manager): State<SharedManager>, request: Request) -> Response {
    let params: IoParams = match super::parse_query(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        let now_ms = unix_ms();
        let (nodes, mut volumes) = m
            .with_liveness(Instant::now(), |l| {
                m.read(|a| {
                    l.io.series(now_ms, |id| {
                        a.state.volumes.get(&id).map(|v| v.name.clone())
                    })
                })
            })
            .ok_or_else(|| ApiFailure::unavailable("leadership moved while reading IO history"))?;
        if let Some(name) = &params.volume {
            if m.read(|a| a.state.volume_by_name(name).is_none()) {
                return Err(ApiFailure::not_found(format!(
                    "volume {name:?} does not exist"
                )));
            }
            volumes.retain(|s| &s.name == name);
        }
        Ok(Json(IoHistory {
            step_ms: STEP_MS,
            window_ms: STEP_MS * WINDOW_STEPS,
            now_ms,
            nodes,
            volumes,
        })
        .into_response())
    })
    .await
}
