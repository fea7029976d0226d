//! `GET /v1/events[?after=SEQ][&limit=N][&local=true]`: the event log after a cursor
//! ([`vbs_wire::api::EventPage`]). The log is replicated state, so a follower's local read serves
//! the same entries, perhaps fewer of the newest.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use vbs_wire::api::MAX_EVENTS_PER_PAGE;

use super::error::ApiFailure;
use super::leader;
use crate::manager::SharedManager;

/// Query parameters of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    #[serde(default)]
    local: bool,
    /// Entries after this number; 0 (the default) from the oldest kept.
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub async fn list(State(manager): State<SharedManager>, request: Request) -> Response {
    let params: EventParams = match super::parse_query(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    let limit = params.limit.unwrap_or(MAX_EVENTS_PER_PAGE);
    if !(1..=MAX_EVENTS_PER_PAGE).contains(&limit) {
        return ApiFailure::bad_request(format!(
            "limit must be between 1 and {MAX_EVENTS_PER_PAGE}, got {limit}"
        ))
        .into_response();
    }
    let local = params.local;
    leader::read(&manager, request, local, move |m| {
        let page = m.read(|a| a.state.events.page(params.after, limit));
        Ok(Json(page).into_response())
    })
    .await
}
