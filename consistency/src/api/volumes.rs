//! `GET|POST /v1/volumes`, `GET|DELETE /v1/volumes/{name}`, `POST /v1/volumes/{name}/resize`.

use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use client::api::{CreateVolumeRequest, ResizeVolumeRequest, VolumeList};

use super::error::ApiFailure;
use super::leader::on_leader;
use super::parse_json;
use super::status::ReadParams;
use crate::decide::placement;
use crate::manager::SharedManager;
use crate::state::view::nothing_remembered;
use crate::state::{Command, Outcome, Refusal};

pub async fn list(State(manager): State<SharedManager>, request: Request) -> Response {
    let params = match ReadParams::of(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    let read = |m: &SharedManager| {
        m.read_with_memory(Instant::now(), |a, remembered| VolumeList {
            volumes: a
                .state
                .volumes
                .values()
                .map(|v| a.state.volume_map(v, remembered))
                .collect(),
        })
    };
    if params.local {
        return Json(read(&manager)).into_response();
    }
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        m.linearizable().await?;
        Ok(Json(read(&m)).into_response())
    })
    .await
}

pub async fn show(
    State(manager): State<SharedManager>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let params = match ReadParams::of(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    let read = move |m: &SharedManager| -> Result<Response, ApiFailure> {
        m.read_with_memory(Instant::now(), |a, remembered| {
            a.state
                .volume_by_name(&name)
                .map(|v| a.state.volume_map(v, remembered))
        })
        .map(|map| Json(map).into_response())
        .ok_or_else(|| ApiFailure::not_found(format!("volume {name:?} does not exist")))
    };
    if params.local {
        return read(&manager).unwrap_or_else(IntoResponse::into_response);
    }
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        m.linearizable().await?;
        read(&m)
    })
    .await
}

pub async fn create(State(manager): State<SharedManager>, request: Request) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let request: CreateVolumeRequest = parse_json(&body)?;
        let spec = placement::validate(&request)?;
        let (_placing, free) = m.placing().await?;
        let command = m.read(|a| placement::place(&a.state, &spec, |n| free.get(n).copied()))?;
        match m.propose(command).await? {
            Outcome::VolumeCreated(id) => {
                let map = m.read(|a| {
                    a.state
                        .volumes
                        .get(&id)
                        .map(|v| a.state.volume_map(v, &nothing_remembered))
                });
                let map = map.ok_or_else(|| {
                    ApiFailure::internal(format!("volume {id} vanished right after creation"))
                })?;
                Ok((StatusCode::CREATED, Json(map)).into_response())
            }
            Outcome::Refused(refusal) => Err(refusal.into()),
            other => Err(ApiFailure::internal(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    })
    .await
}

/// Grows a volume (its new slices placed as a new volume's are) and answers its map. The same
/// size again changes nothing; a smaller one is refused.
pub async fn resize(
    State(manager): State<SharedManager>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let request: ResizeVolumeRequest = parse_json(&body)?;
        let (_placing, free) = m.placing().await?;
        let command = m.read(|a| {
            placement::grow(&a.state, &name, request.size_bytes, |n| {
                free.get(n).copied()
            })
        })?;
        if let Some(command) = command {
            match m.propose(command).await? {
                Outcome::VolumeResized(_) => {}
                Outcome::Refused(refusal) => return Err(refusal.into()),
                other => {
                    return Err(ApiFailure::internal(format!(
                        "unexpected outcome {other:?}"
                    )))
                }
            }
        }
        let map = m.read(|a| {
            a.state
                .volume_by_name(&name)
                .map(|v| a.state.volume_map(v, &nothing_remembered))
        });
        map.map(|map| Json(map).into_response())
            .ok_or_else(|| ApiFailure::not_found(format!("volume {name:?} does not exist")))
    })
    .await
}

pub async fn delete(
    State(manager): State<SharedManager>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |_| async move {
        // A new leader may not have applied its predecessor's last changes yet: without this, a
        // volume created just before the election would be "not found".
        m.caught_up().await?;
        let map = m.read(|a| {
            a.state
                .volume_by_name(&name)
                .map(|v| a.state.volume_map(v, &nothing_remembered))
        });
        let map = map.ok_or_else(|| {
            ApiFailure::from(Refusal::NotFound(format!("volume {name:?} does not exist")))
        })?;
        match m.propose(Command::DeleteVolume { name }).await? {
            Outcome::VolumeDeleted(id) if id == map.id => Ok(Json(map).into_response()),
            Outcome::VolumeDeleted(id) => Err(ApiFailure::internal(format!(
                "deleted volume {id}, which replaced volume {} meanwhile",
                map.id
            ))),
            Outcome::Refused(refusal) => Err(refusal.into()),
            other => Err(ApiFailure::internal(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    })
    .await
}
