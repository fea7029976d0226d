//! Drains, re-replication and resync notifications against a running manager (one replica, in
//! this process), with storage nodes played by heartbeat loops: what the unit tests of
//! `decide::repair` cannot show is the failure detector carrying a drain or a re-replication
//! through, one committed step after another, and the lease handover of a drained primary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consistency::config::Config;
use reqwest::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vbs_wire::api::{
    ApiError, ClusterStatus, CopyStatus, ErrorCode, NodeStatus, Notification, NotificationResponse,
    ResyncProgress, SliceMap, UnitGeneration, VolumeMap,
};
use vbs_wire::types::NodeId;

const WAIT: Duration = Duration::from_secs(20);

struct Manager {
    base: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// Heartbeat loops keep beating while their flag is set.
    alive: BTreeMap<String, Arc<AtomicBool>>,
    _dir: tempfile::TempDir,
}

impl Manager {
    /// One replica with a 1 s lease and the given grace period, and storage nodes `names` that
    /// heartbeat every 100 ms.
    async fn start(grace: Duration, names: &[&str]) -> Manager {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(
            1,
            dir.path().to_path_buf(),
            BTreeMap::from([(1, addr.clone())]),
        );
        config.raft_heartbeat = Duration::from_millis(50);
        config.election_timeout_min = Duration::from_millis(300);
        config.election_timeout_max = Duration::from_millis(600);
        config.lease.lease = Duration::from_secs(1);
        config.lease.clock_margin = Duration::from_millis(100);
        config.grace = grace;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(consistency::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let mut manager = Manager {
            base: format!("http://{addr}"),
            http,
            stop: Some(stop),
            task,
            alive: BTreeMap::new(),
            _dir: dir,
        };
        for (i, name) in names.iter().enumerate() {
            manager.add_node(name, 9001 + i as u16).await;
        }
        manager
    }

    async fn add_node(&mut self, name: &str, port: u16) {
        let body =
            json!({"id": name, "addr": format!("127.0.0.1:{port}"), "capacity_bytes": 1u64 << 30});
        let deadline = Instant::now() + WAIT;
        // The first requests may find no leader yet.
        loop {
            let answer = self
                .http
                .post(format!("{}/v1/nodes", self.base))
                .json(&body)
                .send()
                .await;
            if answer.is_ok_and(|a| a.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "node {name} never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let alive = Arc::new(AtomicBool::new(true));
        self.alive.insert(name.to_string(), alive.clone());
        let (http, url) = (
            self.http.clone(),
            format!("{}/v1/nodes/{name}/heartbeat", self.base),
        );
        tokio::spawn(async move {
            while alive.load(Ordering::Relaxed) {
                let _ = http.post(&url).json(&json!({})).send().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    fn silence(&self, name: &str) {
        self.alive[name].store(false, Ordering::Relaxed);
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("answered")
    }

    async fn status(&self) -> ClusterStatus {
        let response = self
            .http
            .get(format!("{}/v1/status", self.base))
            .send()
            .await
            .expect("answered");
        response.json().await.expect("a status")
    }

    async fn slice(&self) -> SliceMap {
        let response = self
            .http
            .get(format!("{}/v1/volumes/vol", self.base))
            .send()
            .await
            .expect("answered");
        let map: VolumeMap = response.json().await.expect("a volume map");
        map.slices[0].clone()
    }

    /// Waits until the volume's only slice satisfies `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&SliceMap) -> bool) -> SliceMap {
        let deadline = Instant::now() + WAIT;
        loop {
            let slice = self.slice().await;
            if done(&slice) {
                return slice;
            }
            assert!(Instant::now() < deadline, "never {what}: {slice:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn notify(
        &self,
        notification: &Notification,
    ) -> Result<NotificationResponse, (StatusCode, ApiError)> {
        let response = self
            .post(
                "/v1/notifications",
                serde_json::to_value(notification).expect("json"),
            )
            .await;
        let status = response.status();
        if status.is_success() {
            Ok(response.json().await.expect("a notification reply"))
        } else {
            Err((status, response.json().await.expect("an error body")))
        }
    }

    async fn drain(&self, node: &str) -> Result<NodeStatus, (StatusCode, ApiError)> {
        let response = self
            .post(&format!("/v1/nodes/{node}/drain"), json!({}))
            .await;
        let status = response.status();
        if status.is_success() {
            Ok(response.json().await.expect("a node status"))
        } else {
            Err((status, response.json().await.expect("an error body")))
        }
    }

    async fn stop(mut self) {
        for alive in self.alive.values() {
            alive.store(false, Ordering::Relaxed);
        }
        let _ = self.stop.take().expect("running").send(());
        self.task.await.expect("joined").expect("stopped cleanly");
    }
}

fn copy_on<'a>(slice: &'a SliceMap, node: &str) -> Option<&'a vbs_wire::api::CopyInfo> {
    slice.copies.iter().find(|c| c.node.0 == node)
}

fn unit_at(slice: &SliceMap) -> UnitGeneration {
    UnitGeneration {
        unit: slice.unit,
        generation: slice.generation,
    }
}

/// Plays the storage nodes' part of a resync: the new copy says it is syncing and reports its
/// progress, then the primary says it caught up.
async fn resync(manager: &Manager, slice: &SliceMap, node: &str) {
    let source = NodeId(node.into());
    manager
        .notify(&Notification::Syncing {
            source: source.clone(),
            units: vec![unit_at(slice)],
        })
        .await
        .expect("syncing accepted");
    let progress = |bytes_done, finished| Notification::ResyncProgress {
        source: source.clone(),
        unit: unit_at(slice),
        progress: ResyncProgress {
            records_done: bytes_done / 4096,
            records_total: 1,
            bytes_done,
            bytes_total: 4096,
            full: true,
            finished,
        },
    };
    let reply = manager
        .notify(&progress(0, false))
        .await
        .expect("progress accepted");
    let shown = reply.slices[0]
        .copies
        .iter()
        .find(|c| c.node == source)
        .expect("copy");
    assert_eq!(shown.status, CopyStatus::Syncing);
    assert_eq!(shown.resync.map(|r| r.progress.bytes_total), Some(4096));
    manager
        .notify(&Notification::CaughtUp {
            source: slice.primary.clone(),
            target: source.clone(),
            units: vec![unit_at(slice)],
        })
        .await
        .expect("caught up accepted");
    manager
        .notify(&progress(4096, true))
        .await
        .expect("final progress accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_primary_hands_over_after_its_copy_moved_and_leaves() {
    let manager = Manager::start(Duration::from_secs(600), &["n1", "n2", "n3"]).await;
    let create = json!({"name": "vol", "size_bytes": 4096, "slice_bytes": 4096, "replicas": 2});
    assert_eq!(
        manager.post("/v1/volumes", create).await.status(),
        StatusCode::CREATED
    );
    let start = manager.slice().await;
    let primary = start.primary.0.clone();
    let secondary = start.copies[1].node.0.clone();
    let spare = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != primary && *n != secondary)
        .expect("a third node");

    let (status, error) = manager.drain("zz").await.expect_err("unknown node");
    assert_eq!(
        (status, error.code),
        (StatusCode::NOT_FOUND, ErrorCode::NotFound)
    );

    let drained = manager.drain(&primary).await.expect("drain accepted");
    assert!(drained.draining);
    assert!(
        manager.drain(&primary).await.expect("again").draining,
        "draining twice is fine"
    );
    // With the primary draining, the secondary's copy has nowhere to go.
    let (status, error) = manager.drain(&secondary).await.expect_err("no room");
    assert_eq!(
        (status, error.code),
        (StatusCode::CONFLICT, ErrorCode::InsufficientNodes)
    );
    assert!(error.error.contains("cannot drain"), "{}", error.error);
    let nodes = manager.status().await.nodes;
    assert!(
        !nodes.iter().any(|n| n.id.0 == secondary && n.draining),
        "nothing half-applied"
    );

    let added = manager
        .wait_for("a new copy on the spare node", |s| {
            copy_on(s, spare).is_some()
        })
        .await;
    assert_eq!(
        copy_on(&added, spare).map(|c| c.status),
        Some(CopyStatus::Stale)
    );
    assert_eq!(
        added.generation.0,
        start.generation.0 + 1,
        "a copy-set change"
    );
    resync(&manager, &added, spare).await;

    // The primary hands over once its lease on the slice has run out, then its copy goes.
    let done = manager
        .wait_for("the drained primary gone", |s| {
            copy_on(s, &primary).is_none()
        })
        .await;
    assert_ne!(done.primary.0, primary);
    assert_eq!(done.copies.len(), 2);
    assert!(
        done.copies.iter().all(|c| c.status == CopyStatus::Current),
        "{done:#?}"
    );
    assert_eq!(
        done.generation.0,
        added.generation.0 + 2,
        "handover, then removal"
    );
    let last = copy_on(&done, spare)
        .and_then(|c| c.resync)
        .expect("the last resync stays shown");
    assert!(last.progress.finished);

    let status = manager.status().await;
    let node = status
        .nodes
        .iter()
        .find(|n| n.id.0 == primary)
        .expect("node");
    assert!(node.draining && node.units.is_empty(), "{node:?}");
    let metrics = manager
        .http
        .get(format!("{}/metrics", manager.base))
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("vbs_storage_nodes_draining 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vbs_resync_bytes_remaining 0"),
        "{metrics}"
    );
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_the_grace_period_has_its_copies_recreated() {
    let grace = Duration::from_secs(2);
    let manager = Manager::start(grace, &["n1", "n2", "n3"]).await;
    let create = json!({"name": "vol", "size_bytes": 4096, "slice_bytes": 4096, "replicas": 2});
    assert_eq!(
        manager.post("/v1/volumes", create).await.status(),
        StatusCode::CREATED
    );
    let start = manager.slice().await;
    let lost = start.primary.0.clone();
    let survivor = start.copies[1].node.0.clone();
    let spare = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != lost && *n != survivor)
        .expect("a third node");

    let silenced = Instant::now();
    manager.silence(&lost);
    let failed_over = manager
        .wait_for("failed over", |s| s.primary.0 == survivor)
        .await;
    assert_eq!(
        copy_on(&failed_over, &lost).map(|c| c.status),
        Some(CopyStatus::Down)
    );
    assert!(
        copy_on(&failed_over, spare).is_none(),
        "not before the grace period"
    );

    let replaced = manager
        .wait_for("the lost copy replaced", |s| copy_on(s, &lost).is_none())
        .await;
    assert!(
        silenced.elapsed() >= grace,
        "replaced after {:?}",
        silenced.elapsed()
    );
    assert_eq!(
        copy_on(&replaced, spare).map(|c| c.status),
        Some(CopyStatus::Stale)
    );
    assert_eq!(replaced.generation.0, failed_over.generation.0 + 1);
    resync(&manager, &replaced, spare).await;
    let healthy = manager.slice().await;
    assert!(
        healthy
            .copies
            .iter()
            .all(|c| c.status == CopyStatus::Current),
        "{healthy:#?}"
    );
    manager.stop().await;
}
