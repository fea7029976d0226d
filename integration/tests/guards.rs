//! Guards that keep a storage node from serving a copy it must not: across a crash of the node,
//! against a real `vbs-storage` driven by a scripted manager (what the database says is in the
//! script, so the moment between the node marking a copy and the database hearing of it can be
//! held open and the node killed inside it); and a data directory taken from another node, in a
//! whole cluster.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use integration::binaries::binary;
use integration::cluster::free_port;
use integration::process::Process;
use integration::user::slice_of;
use integration::wait_until;
use vbs_wire::api::{
    ApiError, AssignedUnit, CopyInfo, CopyStatus, ErrorCode, HeartbeatResponse, NodeState,
    NodeStatus, Notification, NotificationResponse, Role,
};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

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
        device_ids: Vec::new(),
        unknown_devices: Vec::new(),
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
            loss_accepted_vba: None,
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

/// A data directory taken from another node: x, the primary of a slice whose other copy (on y)
/// went stale, is stopped, and started again with a copy of y's data directory in place of its
/// own. The database knows x as the slice's only current copy, and without device identities x
/// would serve y's stale copy as current. The managers do not know y's device as x's: x marks
/// every copy on it lost, so the slice's copy on x is not current (the slice has no current copy
/// left, as it truly has none), while x's copies of slices with a current copy elsewhere resync
/// and serve the newest data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_another_node_is_never_served_as_current() {
    use integration::{Cluster, ClusterOptions};
    const SLICE: u64 = 16 << 20;
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    cluster
        .wait_for_storage_up(WAIT)
        .await
        .expect("storage nodes up");
    cluster
        .create_volume("swap", "64M", "2", "16M")
        .expect("volume created");
    let write = |cluster: &Cluster, slice: u64, fill: u8| {
        let file = cluster.dir.path().join(format!("block-{slice}-{fill}"));
        std::fs::write(&file, vec![fill; 4096]).expect("block file");
        let offset = (slice * SLICE).to_string();
        let out = cluster
            .vbs(&[
                "write",
                "swap",
                "--offset",
                &offset,
                "--file",
                &file.display().to_string(),
            ])
            .expect("vbs runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for slice in 0..4 {
        write(&cluster, slice, 0xa0);
    }
    let map = |status: &vbs_wire::api::ClusterStatus| {
        status
            .volumes
            .iter()
            .find(|v| v.name == "swap")
            .expect("the volume")
            .slices
            .clone()
    };
    let slices = map(&cluster.status().await.expect("status"));
    let first = &slices[0];
    let x = first.primary.0.clone();
    let y = first
        .copies
        .iter()
        .find(|c| c.node.0 != x)
        .expect("a second copy")
        .node
        .0
        .clone();

    // y's copy of slice 0 goes stale; x alone holds the newest block.
    cluster.storage_node(&y).expect("y").kill();
    write(&cluster, 0, 0xb0);
    cluster.storage_node(&x).expect("x").kill();
    // x's data directory is replaced by a copy of y's.
    let (x_dir, y_dir) = (cluster.storage_data_dir(&x), cluster.storage_data_dir(&y));
    std::fs::rename(&x_dir, x_dir.with_extension("away")).expect("x's directory moved away");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&y_dir)
        .arg(&x_dir)
        .status()
        .expect("cp runs");
    assert!(copied.success());
    cluster
        .storage_node(&x)
        .expect("x")
        .restart()
        .expect("x starts");

    cluster
        .wait_for_storage_log(&x, "x to mark the copies on y's device lost", WAIT, |log| {
            log.contains("do not know this data directory")
        })
        .await;
    let managers: String = (1..=3).map(|id| cluster.manager_log(id, 400)).collect();
    assert!(
        managers.contains("presents a data directory the database does not know"),
        "{managers}"
    );
    // Slice 0's copy on x is reported not current, and stays so: it has nothing to resync from.
    let unit = first.unit;
    wait_until("slice 0's copy on x not current", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let slice = map(&status)
            .into_iter()
            .find(|s| s.unit == unit)
            .expect("slice 0");
        let on_x = slice
            .copies
            .iter()
            .find(|c| c.node.0 == x)
            .map(|c| c.status);
        Ok::<_, String>((on_x != Some(CopyStatus::Current)).then_some(()))
    })
    .await
    .expect("the copy on x is not current");
    // Every other slice with a copy on x and a current copy elsewhere gets x's copy back current.
    wait_until("x's other copies current again", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let pending = map(&status)
            .iter()
            .filter(|s| s.unit != unit && s.copies.iter().any(|c| c.node.0 == x))
            .filter(|s| s.copies.iter().any(|c| c.node.0 != y && c.node.0 != x))
            .filter(|s| {
                s.copies
                    .iter()
                    .any(|c| c.node.0 == x && c.status != CopyStatus::Current)
            })
            .count();
        Ok::<_, String>((pending == 0).then_some(()))
    })
    .await
    .expect("x's copies resync");
    let status = cluster.status().await.expect("status");
    let slice = map(&status)
        .into_iter()
        .find(|s| s.unit == unit)
        .expect("slice 0");
    let on_x = slice
        .copies
        .iter()
        .find(|c| c.node.0 == x)
        .expect("x's copy");
    assert_ne!(on_x.status, CopyStatus::Current, "{slice:?}");
}

/// Where a write record whose block is all `fill` starts, in the segment files under `dir`.
fn record_of(dir: &std::path::Path, fill: u8) -> (std::path::PathBuf, u64) {
    use storagenode::engine::record::HEADER_BYTES;
    let block = vec![fill; 4096];
    for entry in std::fs::read_dir(dir.join("log")).expect("the log directory") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("a segment");
        if let Some(at) = bytes
            .windows(block.len())
            .position(|w| w == block.as_slice())
        {
            return (path, (at - HEADER_BYTES) as u64);
        }
    }
    panic!("no record of a block of {fill:#x} under {}", dir.display());
}

/// A torn tail on the only current copy: x, primary of a slice whose other copy went stale,
/// loses (while stopped) the last records it had synced, which the database had recorded for its
/// copy. Started again, it must not number new writes from its shorter log: it reports itself
/// not current, and the slice serves nothing until an operator accepts the loss, which takes
/// `--yes-i-accept-data-loss`, leaves an audit line and an event, and makes x serve again exactly
/// what it holds, with a new generation; the stale copy then resyncs from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_lost_recorded_writes_serves_only_once_an_operator_accepts_the_loss() {
    use integration::{Cluster, ClusterOptions};
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    cluster
        .wait_for_storage_up(WAIT)
        .await
        .expect("storage nodes up");
    cluster
        .create_volume("torn", "64M", "2", "16M")
        .expect("volume created");
    let first = slice_of(&cluster.status().await.expect("status"), "torn", 0);
    let x = first.primary.0.clone();
    let y = first
        .copies
        .iter()
        .find(|c| c.node.0 != x)
        .expect("a second copy")
        .node
        .0
        .clone();
    for lba in 0..5u64 {
        cluster.write_with_cli("torn", lba * 4096, &[0x10 + lba as u8; 4096]);
    }
    // y stops; the two writes after it are on x alone (y goes stale at the first).
    cluster.storage_node(&y).expect("y").kill();
    cluster.write_with_cli("torn", 5 * 4096, &[0x20; 4096]);
    cluster.write_with_cli("torn", 6 * 4096, &[0x21; 4096]);
    wait_until("x to report VBA 7", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let slice = slice_of(&status, "torn", 0);
        let on_x = slice
            .copies
            .iter()
            .find(|c| c.node.0 == x)
            .and_then(|c| c.reported_vba);
        Ok::<_, String>((on_x == Some(Vba(7))).then_some(()))
    })
    .await
    .expect("x's heartbeat reports the writes");
    // x dies and is judged down, which records VBA 7 for its copy.
    cluster.storage_node(&x).expect("x").kill();
    wait_until("x to be judged down", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let down = status
            .nodes
            .iter()
            .any(|n| n.id.0 == x && n.state == NodeState::Down);
        Ok::<_, String>(down.then_some(()))
    })
    .await
    .expect("x down");
    // Its disk loses the last two records (VBAs 6 and 7), acknowledged and synced.
    let (segment, at) = record_of(&cluster.storage_data_dir(&x), 0x20);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("segment");
        let len = file.metadata().expect("metadata").len();
        file.write_all_at(&vec![0u8; (len - at) as usize], at)
            .expect("zeroing");
        file.sync_all().expect("sync");
    }
    cluster
        .storage_node(&x)
        .expect("x")
        .restart()
        .expect("x starts again");

    cluster
        .wait_for_storage_log(&x, "x to refuse to serve its shorter log", WAIT, |log| {
            log.contains("this primary's log ends below the VBA the database recorded")
        })
        .await;
    wait_until("slice 0 to have no current copy", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let slice = slice_of(&status, "torn", 0);
        let none = slice.copies.iter().all(|c| c.status != CopyStatus::Current);
        Ok::<_, String>(none.then_some(()))
    })
    .await
    .expect("no current copy");

    // Refused without the confirmation, and nothing changes.
    let out = cluster
        .vbs(&["volume", "accept-loss", "torn", "--slice", "0"])
        .expect("vbs runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--yes-i-accept-data-loss"),
        "{stderr}"
    );
    let slice = slice_of(&cluster.status().await.expect("status"), "torn", 0);
    assert!(
        slice.copies.iter().all(|c| c.status != CopyStatus::Current),
        "{slice:?}"
    );

    let out = cluster
        .vbs(&[
            "volume",
            "accept-loss",
            "torn",
            "--slice",
            "0",
            "--yes-i-accept-data-loss",
        ])
        .expect("vbs runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("vbs volume accept-loss: {stdout}");
    assert!(
        stdout.contains(&format!("serves again from {x}, ending at VBA 5")),
        "{stdout}"
    );
    let managers: String = (1..=3).map(|id| cluster.manager_log(id, 400)).collect();
    assert!(
        managers.contains("an operator accepted the loss of slice"),
        "{managers}"
    );
    let events = cluster.vbs(&["events"]).expect("vbs events");
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("loss accepted for slice"), "{events}");

    // x serves what it holds: the first five blocks; the two lost writes read as never written.
    for lba in 0..5u64 {
        let block = cluster
            .read_with_cli("torn", lba * 4096, 4096)
            .expect("a block x holds");
        assert_eq!(block, vec![0x10 + lba as u8; 4096], "LBA {lba}");
    }
    assert_eq!(
        cluster
            .read_with_cli("torn", 5 * 4096, 4096)
            .expect("LBA 5"),
        vec![0u8; 4096]
    );
    cluster.write_with_cli("torn", 5 * 4096, &[0x30; 4096]);
    // y returns, resyncs from x, and the slice has two current copies again.
    cluster
        .storage_node(&y)
        .expect("y")
        .restart()
        .expect("y starts again");
    wait_until("y current again", WAIT, || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        let slice = slice_of(&status, "torn", 0);
        let all = slice.copies.iter().all(|c| c.status == CopyStatus::Current);
        Ok::<_, String>(all.then_some(()))
    })
    .await
    .expect("both copies current");
    assert_eq!(
        cluster
            .read_with_cli("torn", 5 * 4096, 4096)
            .expect("LBA 5"),
        vec![0x30u8; 4096]
    );
}
