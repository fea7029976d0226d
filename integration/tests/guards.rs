//! Guards that keep a storage node from serving a copy it must not, across a crash of the node,
//! against a real `vbs-storage` driven by a scripted manager: what the database says is in the
//! script, so the moment between the node marking a copy and the database hearing of it can be
//! held open and the node killed inside it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use client::api::{
    ApiError, AssignedUnit, CopyInfo, CopyStatus, ErrorCode, HeartbeatResponse, NodeState,
    NodeStatus, Notification, NotificationResponse, Role,
};
use client::types::{Generation, NodeId, UnitId, Vba};
use integration::binaries::binary;
use integration::cluster::free_port;
use integration::process::Process;
use integration::wait_until;

const UNIT_BYTES: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// The scripted manager: every heartbeat is answered with `unit` assigned to n1 as its current
/// primary, and the other copy, on n2, reported at VBA 7: the slice was written.
struct Script {
    node_addr: String,
    /// Answer notifications with 503 (the database cannot be reached to commit them).
    refuse_notifications: AtomicBool,
    /// Every notification received, answered or not.
    notifications: Mutex<Vec<Notification>>,
}

fn unit() -> UnitId {
    UnitId::new(1, 0)
}

async fn register(State(script): State<Arc<Script>>) -> Json<NodeStatus> {
    Json(NodeStatus {
        id: NodeId("n1".into()),
        addr: script.node_addr.clone(),
        state: NodeState::Up,
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 30,
        last_heartbeat_ms_ago: None,
        units: vec![unit()],
        draining: false,
        devices: Vec::new(),
    })
}

async fn heartbeat(State(script): State<Arc<Script>>) -> Json<HeartbeatResponse> {
    let copy = |node: &str, role, reported| CopyInfo {
        node: NodeId(node.into()),
        addr: script.node_addr.clone(),
        role,
        status: CopyStatus::Current,
        last_vba: Vba::ZERO,
        reported_vba: reported,
        resync: None,
        scrub: None,
    };
    Json(HeartbeatResponse {
        lease_ms: 5_000,
        node_state: NodeState::Up,
        units: vec![AssignedUnit {
            unit: unit(),
            volume_size_bytes: UNIT_BYTES,
            slice_bytes: UNIT_BYTES,
            unit_bytes: UNIT_BYTES,
            generation: Generation(1),
            role: Role::Primary,
            status: CopyStatus::Current,
            lease_renewed: true,
            copies: vec![
                copy("n1", Role::Primary, None),
                copy("n2", Role::Secondary, Some(Vba(7))),
            ],
        }],
    })
}

async fn notify(
    State(script): State<Arc<Script>>,
    Json(notification): Json<Notification>,
) -> Response {
    script
        .notifications
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(notification);
    if script.refuse_notifications.load(Ordering::Relaxed) {
        let error = ApiError {
            code: ErrorCode::Unavailable,
            error: "no quorum (scripted)".into(),
            retry_after_ms: None,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response();
    }
    Json(NotificationResponse { slices: Vec::new() }).into_response()
}

/// How many `not_current` reports from n1 name the unit.
fn reports_not_current(script: &Script) -> usize {
    script
        .notifications
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|n| matches!(n, Notification::NotCurrent { units, .. } if units.iter().any(|u| u.unit == unit())))
        .count()
}

/// A node whose disk lost a written copy (it must create the unit empty while the database holds
/// it current and written) marks the copy lost and reports it. Killed before the report got
/// through, the node finds the unit on disk when it starts again: it must still know the copy
/// is lost, report it, and never serve it as the current primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_marked_lost_stays_lost_across_a_crash_before_its_report() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node_addr = format!("127.0.0.1:{}", free_port().expect("a port"));
    let script = Arc::new(Script {
        node_addr: node_addr.clone(),
        refuse_notifications: AtomicBool::new(true),
        notifications: Mutex::new(Vec::new()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("manager port");
    let manager: SocketAddr = listener.local_addr().expect("manager address");
    let app = Router::new()
        .route("/v1/nodes", post(register))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/notifications", post(notify))
        .with_state(script.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let args = vec![
        "--id".to_string(),
        "n1".into(),
        "--listen".into(),
        node_addr.clone(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--managers".into(),
        manager.to_string(),
        "--segment-size".into(),
        "1M".into(),
    ];
    let mut node = Process::start(
        "n1",
        &binary("vbs-storage").expect("vbs-storage built"),
        args,
        dir.path().join("n1.log"),
    )
    .expect("vbs-storage starts");
    // The node creates the unit empty, finds the slice written, and tries to report the copy
    // lost; the report cannot be committed.
    wait_until("n1 to report the copy lost", WAIT, || async {
        Ok::<_, anyhow::Error>((reports_not_current(&script) > 0).then_some(()))
    })
    .await
    .expect("a report of the lost copy");
    node.kill();

    // Started again, its disk holds the unit: only the kept mark says its data is lost.
    let before = reports_not_current(&script);
    script.refuse_notifications.store(false, Ordering::Relaxed);
    node.restart().expect("vbs-storage starts again");
    wait_until(
        "n1 to report the copy lost again after its restart",
        WAIT,
        || async { Ok::<_, anyhow::Error>((reports_not_current(&script) > before).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.path().join("n1.log")).unwrap_or_default();
        panic!("{e:#}\n--- n1's log ---\n{log}")
    });
}
