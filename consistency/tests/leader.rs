//! Three manager replicas in one process, on loopback ports: what only a running cluster shows.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use consistency::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vbs_wire::api::{ApiError, ErrorCode, Health};

struct Replica {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn start_cluster() -> BTreeMap<u64, Replica> {
    let mut listeners = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listeners.insert(id, listener);
    }
    let peers: BTreeMap<u64, String> = listeners
        .iter()
        .map(|(id, l)| (*id, l.local_addr().expect("addr").to_string()))
        .collect();
    let mut replicas = BTreeMap::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(id, dir.path().to_path_buf(), peers.clone());
        config.raft_heartbeat = Duration::from_millis(50);
        config.election_timeout_min = Duration::from_millis(300);
        config.election_timeout_max = Duration::from_millis(600);
        config.commit_timeout = Duration::from_secs(1);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(consistency::run(listener, config, async move {
            let _ = stopped.await;
        }));
        let replica = Replica {
            addr: peers[&id].clone(),
            stop: Some(stop),
            task,
            _dir: dir,
        };
        replicas.insert(id, replica);
    }
    replicas
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Waits until every replica names the same leader.
async fn leader_of(replicas: &BTreeMap<u64, Replica>) -> u64 {
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders = Vec::new();
        for replica in replicas.values() {
            let health = http
                .get(format!("http://{}/health", replica.addr))
                .send()
                .await;
            if let Ok(response) = health {
                if let Ok(health) = response.json::<Health>().await {
                    leaders.push(health.leader);
                }
            }
        }
        if leaders.len() == replicas.len()
            && leaders.iter().all(|l| l.is_some() && *l == leaders[0])
        {
            return leaders[0].expect("checked").0;
        }
        assert!(
            Instant::now() < deadline,
            "no leader agreed on: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn error_of(response: reqwest::Response) -> (StatusCode, ApiError) {
    let status = response.status();
    let body = response
        .json::<ApiError>()
        .await
        .expect("a JSON error body");
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_quorum_grants_no_lease_and_errors_are_json() {
    let mut replicas = start_cluster().await;
    let leader = leader_of(&replicas).await;
    let base = format!("http://{}", replicas[&leader].addr);
    let http = http();

    // Errors axum makes itself have the API's JSON shape too.
    let (status, body) = error_of(
        http.put(format!("{base}/v1/volumes"))
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body.error.contains("PUT"), "{}", body.error);
    let (status, body) = error_of(
        http.post(format!("{base}/raft/append"))
            .body("not json")
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(
        (status, body.code),
        (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
    );
    let (status, _) = error_of(
        http.get(format!("{base}/raft/probe"))
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let node = json!({"id": "n1", "addr": "127.0.0.1:9000", "capacity_bytes": 1u64 << 30});
    let registered = http
        .post(format!("{base}/v1/nodes"))
        .json(&node)
        .send()
        .await
        .expect("answered");
    assert_eq!(registered.status(), StatusCode::OK);
    let heartbeat = || {
        http.post(format!("{base}/v1/nodes/n1/heartbeat"))
            .json(&json!({}))
            .send()
    };
    let first = heartbeat().await.expect("answered");
    assert_eq!(first.status(), StatusCode::OK);
    let _: Value = first.json().await.expect("a heartbeat reply");

    // The followers go away. The leader does not notice by itself that it may have been
    // deposed, so it must not renew a lease without a quorum confirming it still leads.
    for (id, replica) in replicas.iter_mut() {
        if *id != leader {
            let _ = replica.stop.take().expect("running").send(());
        }
    }
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        let replica = replicas.remove(&id).expect("replica");
        replica
            .task
            .await
            .expect("joined")
            .expect("stopped cleanly");
    }
    let started = Instant::now();
    let (status, body) = error_of(heartbeat().await.expect("answered")).await;
    assert_eq!(
        (status, body.code),
        (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        "{}",
        body.error
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 within a bound"
    );

    let mut last = replicas.remove(&leader).expect("leader");
    let _ = last.stop.take().expect("running").send(());
    last.task.await.expect("joined").expect("stopped cleanly");
}
