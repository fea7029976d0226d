//! A fake manager (HTTP) and fake storage nodes (the data-plane protocol) for in-process tests of
//! the client library and the `vbs` command. They keep just enough state to route, fence and
//! store blocks, and let a test script failures: error answers, silence, held requests.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use vbs_wire::api::{
    ApiError, ClusterStatus, CopyInfo, CopyStatus, ErrorCode as ApiCode, ManagerStatus,
    Notification, NotificationResponse, Role, SliceMap, VolumeList, VolumeMap,
};
use vbs_wire::conn::read_frame;
use vbs_wire::proto::{
    self, ClientRequest, ErrorCode, Frame, HelloOk, Request, Response, WireError,
};
use vbs_wire::types::{Generation, Lba, ManagerId, NodeId, SliceIndex, UnitId, Vba, VolumeId};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Manager

/// What the fake manager answers to the next notification.
pub enum NotifyReply {
    LeaseNotExpired {
        retry_after_ms: u64,
    },
    /// Commit this slice (the failed-over one) into the map and answer with it.
    FailOver(SliceMap),
}

#[derive(Default)]
pub struct ManagerState {
    pub map: Mutex<Option<VolumeMap>>,
    pub volume_gets: AtomicUsize,
    pub notifications: Mutex<Vec<Notification>>,
    pub notify_replies: Mutex<VecDeque<NotifyReply>>,
}

pub struct FakeManager {
    pub addr: String,
    pub state: Arc<ManagerState>,
}

impl FakeManager {
    pub async fn start(map: Option<VolumeMap>) -> FakeManager {
        let state = Arc::new(ManagerState {
            map: Mutex::new(map),
            ..ManagerState::default()
        });
        let app = Router::new()
            .route("/v1/status", get(status))
            .route("/v1/volumes", get(list))
            .route("/v1/volumes/{name}", get(volume))
            .route("/v1/notifications", post(notify))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeManager { addr, state }
    }

    pub fn set_map(&self, map: VolumeMap) {
        *lock(&self.state.map) = Some(map);
    }

    pub fn gets(&self) -> usize {
        self.state.volume_gets.load(Ordering::SeqCst)
    }

    pub fn notifications(&self) -> Vec<Notification> {
        lock(&self.state.notifications).clone()
    }
}

fn api_error(status: StatusCode, code: ApiCode, error: &str, retry: Option<u64>) -> HttpResponse {
    let body = ApiError {
        error: error.into(),
        code,
        retry_after_ms: retry,
    };
    (status, Json(body)).into_response()
}

async fn status(State(state): State<Arc<ManagerState>>) -> Json<ClusterStatus> {
    let volumes: Vec<_> = lock(&state.map).iter().cloned().collect();
    Json(ClusterStatus {
        answered_by: ManagerId(1),
        leader: Some(ManagerId(1)),
        term: 1,
        applied_index: 1,
        space: Default::default(),
        managers: vec![ManagerStatus {
            id: ManagerId(1),
            addr: "127.0.0.1:1".into(),
            voter: true,
        }],
        nodes: Vec::new(),
        counts: vbs_wire::api::StatusCounts::of(&[], &volumes),
        volumes,
    })
}

async fn list(State(state): State<Arc<ManagerState>>) -> Json<VolumeList> {
    Json(VolumeList {
        volumes: lock(&state.map).iter().cloned().collect(),
        next: None,
    })
}

async fn volume(State(state): State<Arc<ManagerState>>, Path(name): Path<String>) -> HttpResponse {
    state.volume_gets.fetch_add(1, Ordering::SeqCst);
    match &*lock(&state.map) {
        Some(map) if map.name == name => Json(map.clone()).into_response(),
        _ => api_error(
            StatusCode::NOT_FOUND,
            ApiCode::NotFound,
            &format!("volume {name:?} does not exist"),
            None,
        ),
    }
}

async fn notify(
    State(state): State<Arc<ManagerState>>,
    Json(notification): Json<Notification>,
) -> HttpResponse {
    lock(&state.notifications).push(notification);
    let reply = lock(&state.notify_replies).pop_front();
    match reply {
        Some(NotifyReply::LeaseNotExpired { retry_after_ms }) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiCode::LeaseNotExpired,
            "the primary's lease has not run out",
            Some(retry_after_ms),
        ),
        Some(NotifyReply::FailOver(slice)) => {
            if let Some(map) = &mut *lock(&state.map) {
                map.slices[slice.index.0 as usize] = slice.clone();
            }
            Json(NotificationResponse {
                slices: vec![slice],
            })
            .into_response()
        }
        None => api_error(
            StatusCode::CONFLICT,
            ApiCode::Conflict,
            "no reply scripted",
            None,
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Storage node

/// What the node knows of one of its units.
#[derive(Clone, Copy, Debug)]
pub struct UnitRole {
    pub generation: Generation,
    pub primary: bool,
    pub blocks: u64,
}

/// What the node saw of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: &'static str,
    pub unit: UnitId,
    pub generation: Generation,
    pub bytes: u64,
}

#[derive(Default)]
pub struct NodeState {
    pub units: Mutex<HashMap<UnitId, UnitRole>>,
    blocks: Mutex<HashMap<(UnitId, u64), Bytes>>,
    /// Error codes to answer the next requests with, before normal service resumes.
    pub script: Mutex<VecDeque<ErrorCode>>,
    /// Never answer (a hung node).
    pub silent: AtomicBool,
    /// Hold every read until this many requests are in flight at once (0: off).
    pub gate: AtomicUsize,
    in_flight: Mutex<usize>,
    in_flight_changed: tokio::sync::Notify,
    pub max_in_flight: AtomicUsize,
    pub seen: Mutex<Vec<Seen>>,
    /// Damage the first byte of every read answer (bit rot, a bug).
    pub corrupt_reads: AtomicBool,
    /// Connections accepted.
    pub connections: AtomicUsize,
    /// Stop reading requests (the socket buffers fill and senders block) until resumed.
    paused: AtomicBool,
    resumed: tokio::sync::Notify,
}

pub struct FakeNode {
    pub id: NodeId,
    pub addr: String,
    pub state: Arc<NodeState>,
}

impl FakeNode {
    pub async fn start(id: &str) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(NodeState::default());
        let (serving, name) = (state.clone(), id.to_string());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(serving.clone(), name.clone(), stream));
            }
        });
        FakeNode {
            id: NodeId(id.into()),
            addr,
            state,
        }
    }

    pub fn set_unit(&self, unit: UnitId, generation: u64, primary: bool, blocks: u64) {
        lock(&self.state.units).insert(
            unit,
            UnitRole {
                generation: Generation(generation),
                primary,
                blocks,
            },
        );
    }

    pub fn copy(&self, role: Role) -> CopyInfo {
        CopyInfo {
            node: self.id.clone(),
            addr: self.addr.clone(),
            role,
            status: CopyStatus::Current,
            last_vba: Vba::ZERO,
            reported_vba: None,
            resync: None,
            scrub: None,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    pub fn pause_reading(&self) {
        self.state.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume_reading(&self) {
        self.state.paused.store(false, Ordering::SeqCst);
        self.state.resumed.notify_waiters();
    }
}

/// A slice of volume `volume` whose primary is `primary`, with `secondary` as its other copy.
pub fn slice(
    volume: u64,
    index: u32,
    generation: u64,
    primary: &FakeNode,
    secondary: &FakeNode,
) -> SliceMap {
    SliceMap {
        unit: UnitId::new(volume, index),
        index: SliceIndex(index),
        generation: Generation(generation),
        primary: primary.id.clone(),
        copies: vec![primary.copy(Role::Primary), secondary.copy(Role::Secondary)],
    }
}

/// A volume map, its slices given.
pub fn volume_map(
    name: &str,
    size_bytes: u64,
    slice_bytes: u64,
    slices: Vec<SliceMap>,
) -> VolumeMap {
    VolumeMap {
        id: VolumeId(slices[0].unit.volume.0),
        name: name.into(),
        size_bytes,
        block_bytes: 4096,
        slice_bytes,
        replicas: 2,
        slices,
    }
}

async fn serve(state: Arc<NodeState>, name: String, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut read, write) = stream.into_split();
    let write = Arc::new(tokio::sync::Mutex::new(write));
    let mut buf = BytesMut::new();
    match read_frame(&mut read, &mut buf).await {
        Ok(Some((_, Frame::Hello(_)))) => {}
        _ => return,
    }
    let ok = Frame::HelloOk(HelloOk {
        version: proto::PROTOCOL_VERSION,
        node: name,
        challenge: None,
    });
    if send(&write, 0, &ok).await.is_err() {
        return;
    }
    loop {
        loop {
            let resumed = state.resumed.notified();
            if !state.paused.load(Ordering::SeqCst) {
                break;
            }
            resumed.await;
        }
        let Ok(Some((id, frame))) = read_frame(&mut read, &mut buf).await else {
            return;
        };
        let Frame::Request(request) = frame else {
            return;
        };
        let (state, write) = (state.clone(), write.clone());
        tokio::spawn(async move {
            if let Some(response) = answer(&state, request).await {
                let _ = send(&write, id, &Frame::Response(response)).await;
            }
        });
    }
}

async fn send(
    write: &tokio::sync::Mutex<OwnedWriteHalf>,
    id: u64,
    frame: &Frame,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    proto::encode(&mut buf, id, frame);
    write.lock().await.write_all(&buf).await
}

/// The answer to `request`, or `None` to stay silent.
async fn answer(state: &NodeState, request: Request) -> Option<Response> {
    let (kind, bytes) = match &request {
        Request::Client(ClientRequest::Read { blocks, .. }) => ("read", u64::from(*blocks) * 4096),
        Request::Client(ClientRequest::Write { data, .. }) => ("write", data.len() as u64),
        Request::Client(ClientRequest::Trim { blocks, .. }) => ("trim", blocks * 4096),
        Request::Client(ClientRequest::Flush { .. }) => ("flush", 0),
        _ => ("other", 0),
    };
    lock(&state.seen).push(Seen {
        kind,
        unit: request.unit(),
        generation: request.generation(),
        bytes,
    });
    if state.silent.load(Ordering::SeqCst) {
        return None;
    }
    let in_flight = {
        let mut n = lock(&state.in_flight);
        *n += 1;
        *n
    };
    state.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
    state.in_flight_changed.notify_waiters();
    let gate = state.gate.load(Ordering::SeqCst);
    if gate > 0 && kind == "read" {
        loop {
            let changed = state.in_flight_changed.notified();
            if *lock(&state.in_flight) >= gate || state.max_in_flight.load(Ordering::SeqCst) >= gate
            {
                break;
            }
            changed.await;
        }
    }
    let response = serve_request(state, request);
    *lock(&state.in_flight) -= 1;
    Some(response.unwrap_or_else(Response::Error))
}

fn serve_request(state: &NodeState, request: Request) -> Result<Response, WireError> {
    if let Some(code) = lock(&state.script).pop_front() {
        return Err(WireError::new(code, "scripted"));
    }
    let unit = request.unit();
    let role = lock(&state.units)
        .get(&unit)
        .copied()
        .ok_or_else(|| WireError::new(ErrorCode::UnknownUnit, format!("no unit {unit}")))?;
    let generation = request.generation();
    if generation < role.generation {
        return Err(
            WireError::new(ErrorCode::StaleGeneration, "stale").with_detail(role.generation.0)
        );
    }
    if generation > role.generation {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "generation not known yet",
        ));
    }
    if !role.primary {
        return Err(WireError::new(ErrorCode::NotPrimary, "not the primary"));
    }
    let in_range = |lba: Lba, blocks: u64| {
        if lba.0 + blocks > role.blocks {
            Err(WireError::new(ErrorCode::OutOfRange, "beyond the unit"))
        } else {
            Ok(())
        }
    };
    let mut stored = lock(&state.blocks);
    Ok(match request {
        Request::Client(ClientRequest::Read { lba, blocks, .. }) => {
            in_range(lba, u64::from(blocks))?;
            let mut data = BytesMut::zeroed(blocks as usize * 4096);
            for (i, block) in data.chunks_mut(4096).enumerate() {
                if let Some(b) = stored.get(&(unit, lba.0 + i as u64)) {
                    block.copy_from_slice(b);
                }
            }
            if state.corrupt_reads.load(Ordering::SeqCst) {
                data[0] ^= 0x55;
            }
            Response::Read {
                data: data.freeze(),
            }
        }
        Request::Client(ClientRequest::Write { lba, data, .. }) => {
            in_range(lba, data.len() as u64 / 4096)?;
            for (i, block) in data.chunks(4096).enumerate() {
                stored.insert((unit, lba.0 + i as u64), Bytes::copy_from_slice(block));
            }
            Response::Write { first_vba: Vba(1) }
        }
        Request::Client(ClientRequest::Trim { lba, blocks, .. }) => {
            in_range(lba, blocks)?;
            for i in 0..blocks {
                stored.remove(&(unit, lba.0 + i));
            }
            Response::Trim { vba: Vba(1) }
        }
        Request::Client(ClientRequest::Flush { .. }) => Response::Flush,
        Request::Client(ClientRequest::Allocation { lba, blocks, .. }) => {
            in_range(lba, blocks)?;
            let mut extents: Vec<proto::Extent> = Vec::new();
            for i in 0..blocks {
                let allocated = stored.contains_key(&(unit, lba.0 + i));
                match extents.last_mut() {
                    Some(last) if last.allocated == allocated => last.blocks += 1,
                    _ => extents.push(proto::Extent {
                        blocks: 1,
                        allocated,
                    }),
                }
            }
            Response::Allocation { extents }
        }
        _ => {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "not a client request",
            ))
        }
    })
}
