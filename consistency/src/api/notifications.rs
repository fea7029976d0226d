//! `POST /v1/notifications`: reports from storage nodes and clients, decided by
//! [`crate::decide::notify`] on the leader and carried out by [`crate::manager::events`]. Resync
//! progress reports are only remembered in the leader's memory; every other kind that changes
//! something is committed.

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use vbs_wire::api::{Notification, NotificationResponse};

use super::leader::on_leader;
use super::parse_json;
use crate::manager::SharedManager;

pub async fn notify(State(manager): State<SharedManager>, request: Request) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let notification: Notification = parse_json(&body)?;
        let slices = m.notification(&notification).await?;
        Ok(Json(NotificationResponse { slices }).into_response())
    })
    .await
}
