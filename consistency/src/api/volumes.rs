//! `GET|POST /v1/volumes`, `GET|DELETE /v1/volumes/{name}`, `POST /v1/volumes/{name}/resize`,
//! `POST /v1/volumes/{name}/slices/{index}/accept-loss`.

use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use vbs_wire::api::{
    AcceptLossRequest, CreateVolumeRequest, ResizeVolumeRequest, VolumeFilter, VolumeList,
    VolumeMap, MAX_VOLUMES_PER_PAGE,
};

use super::error::ApiFailure;
use super::leader::{self, on_leader};
use super::parse_json;
use super::status::ReadParams;
use crate::decide::{loss, placement};
use crate::manager::SharedManager;
use crate::state::view::{nothing_remembered, Remembered};
use crate::state::{Command, Outcome, Refusal, State as DbState, Volume};

/// Query parameters of `GET /v1/volumes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    #[serde(default)]
    local: bool,
    limit: Option<usize>,
    after: Option<String>,
    status: Option<VolumeFilter>,
}

/// One page of volumes in name order: those named after `after` that `status` admits, at most
/// `limit`, and where the next page starts if more match.
fn page(
    state: &DbState,
    remembered: Remembered,
    after: Option<&str>,
    status: Option<VolumeFilter>,
    limit: usize,
) -> VolumeList {
    let mut named: Vec<&Volume> = state
        .volumes
        .values()
        .filter(|v| after.is_none_or(|after| v.name.as_str() > after))
        .collect();
    named.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let mut volumes = Vec::new();
    let mut next = None;
    for volume in named {
        let map = state.volume_map(volume, remembered);
        if !status.is_none_or(|filter| filter.admits(&map)) {
            continue;
        }
        if volumes.len() == limit {
            next = volumes.last().map(|v: &VolumeMap| v.name.clone());
            break;
        }
        volumes.push(map);
    }
    VolumeList { volumes, next }
}

/// The map of volume `name` as the applied state has it now: what a change to it answers with.
fn volume_named(m: &SharedManager, name: &str) -> Result<Response, ApiFailure> {
    let map = m.read(|a| {
        a.state
            .volume_by_name(name)
            .map(|v| a.state.volume_map(v, &nothing_remembered))
    });
    map.map(|map| Json(map).into_response())
        .ok_or_else(|| ApiFailure::not_found(format!("volume {name:?} does not exist")))
}

pub async fn list(State(manager): State<SharedManager>, request: Request) -> Response {
    let params: ListParams = match super::parse_query(&request) {
        Ok(params) => params,
        Err(failure) => return failure.into_response(),
    };
    let limit = params.limit.unwrap_or(MAX_VOLUMES_PER_PAGE);
    if !(1..=MAX_VOLUMES_PER_PAGE).contains(&limit) {
        return ApiFailure::bad_request(format!(
            "limit must be between 1 and {MAX_VOLUMES_PER_PAGE}, got {limit}"
        ))
        .into_response();
    }
    let local = params.local;
    leader::read(&manager, request, local, move |m| {
        let page = m.read_with_memory(Instant::now(), |a, remembered| {
            page(
                &a.state,
                remembered,
                params.after.as_deref(),
                params.status,
                limit,
            )
        });
        Ok(Json(page).into_response())
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
    leader::read(&manager, request, params.local, move |m| {
        m.read_with_memory(Instant::now(), |a, remembered| {
            a.state
                .volume_by_name(&name)
                .map(|v| a.state.volume_map(v, remembered))
        })
        .map(|map| Json(map).into_response())
        .ok_or_else(|| ApiFailure::not_found(format!("volume {name:?} does not exist")))
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
        match m.apply(command, "request: create volume").await? {
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
            match m.apply(command, "request: grow volume").await? {
                Outcome::VolumeResized(_) => {}
                other => {
                    return Err(ApiFailure::internal(format!(
                        "unexpected outcome {other:?}"
                    )))
                }
            }
        }
        volume_named(&m, &name)
    })
    .await
}

/// An operator accepts the loss of what a slice's copies no longer hold (see
/// [`AcceptLossRequest`]); the managers' log keeps a `warn` line of it, and the event log a
/// `loss_accepted` event.
pub async fn accept_loss(
    State(manager): State<SharedManager>,
    Path((name, index)): Path<(String, u32)>,
    request: Request,
) -> Response {
    let m = manager.clone();
    on_leader(&manager, request, |body| async move {
        let request: AcceptLossRequest = parse_json(&body)?;
        if !request.confirm {
            return Err(ApiFailure::bad_request(format!(
                "accepting the loss of slice {index} of {name:?} drops for good whatever no copy \
                 holds any more; say so with \"confirm\": true (vbs volume accept-loss \
                 --yes-i-accept-data-loss)"
            )));
        }
        m.caught_up().await?;
        let decided = m.with_liveness(Instant::now(), |l| {
            m.read(|a| {
                loss::accept_loss(&a.state, &name, index, request.node.as_ref(), |n, u| {
                    l.last_vba(n, u)
                })
            })
        });
        let command = decided.ok_or_else(|| ApiFailure::unavailable("no longer the leader"))??;
        let Command::AcceptLoss {
            unit,
            node,
            last_vba,
            ..
        } = &command
        else {
            return Err(ApiFailure::internal("accept_loss decided another command"));
        };
        let cause = format!(
            "an operator accepted the loss of slice {unit} of {name}: the copy on {node} serves \
             as it is, ending at VBA {last_vba}"
        );
        tracing::warn!(volume = %name, %unit, %node, %last_vba, "{cause}");
        m.apply(command.clone(), &cause).await?;
        volume_named(&m, &name)
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
        match m
            .apply(Command::DeleteVolume { name }, "request: delete volume")
            .await?
        {
            Outcome::VolumeDeleted(id) if id == map.id => Ok(Json(map).into_response()),
            Outcome::VolumeDeleted(id) => Err(ApiFailure::internal(format!(
                "deleted volume {id}, which replaced volume {} meanwhile",
                map.id
            ))),
            other => Err(ApiFailure::internal(format!(
                "unexpected outcome {other:?}"
            ))),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use vbs_wire::api::CopyStatus;
    use vbs_wire::types::UnitId;

    use super::*;
    use crate::state::fixtures::{cluster, node, volume_on};

    /// 25 volumes created in reverse name order; every third has a stale copy.
    fn state() -> DbState {
        let mut state = cluster(&["a", "b"]);
        for i in (0..25).rev() {
            let id = volume_on(&mut state, &format!("v{i:02}"), &[&["a", "b"]]);
            if i % 3 == 0 {
                let slice = state.slice_mut(UnitId::new(id.0, 0)).unwrap();
                slice.copy_mut(&node("b")).unwrap().status = CopyStatus::Stale;
            }
        }
        state
    }

    /// Every page in turn, as a client pages: the names seen.
    fn all_pages(state: &DbState, status: Option<VolumeFilter>, limit: usize) -> Vec<String> {
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let list = page(state, &nothing_remembered, after.as_deref(), status, limit);
            assert!(list.volumes.len() <= limit);
            names.extend(list.volumes.iter().map(|v| v.name.clone()));
            match list.next {
                Some(next) => after = Some(next),
                None => return names,
            }
        }
    }

    #[test]
    fn pages_list_every_volume_once_in_name_order() {
        let state = state();
        let every: Vec<String> = (0..25).map(|i| format!("v{i:02}")).collect();
        for limit in [1, 2, 7, 25, 1000] {
            assert_eq!(all_pages(&state, None, limit), every, "limit {limit}");
        }
    }

    #[test]
    fn a_filter_lists_exactly_the_volumes_it_admits_across_pages() {
        let state = state();
        let stale: Vec<String> = (0..25)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("v{i:02}"))
            .collect();
        let current: Vec<String> = (0..25)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("v{i:02}"))
            .collect();
        for limit in [1, 4, 1000] {
            assert_eq!(
                all_pages(&state, Some(VolumeFilter::NotCurrent), limit),
                stale
            );
            assert_eq!(all_pages(&state, Some(VolumeFilter::Stale), limit), stale);
            assert_eq!(
                all_pages(&state, Some(VolumeFilter::Current), limit),
                current
            );
            assert!(all_pages(&state, Some(VolumeFilter::Down), limit).is_empty());
        }
    }

    #[test]
    fn a_full_last_page_says_no_next() {
        let state = state();
        let list = page(&state, &nothing_remembered, Some("v19"), None, 5);
        assert_eq!(list.volumes.len(), 5);
        assert_eq!(list.next, None);
    }
}
