//! The manager cluster as real processes: election, replication, crash of the leader, recovery
//! of a crashed member, and loss of quorum.

use std::time::{Duration, Instant};

use integration::{wait_until, Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use vbs_wire::api::{ClusterStatus, VolumeList, VolumeMap};

const ELECTION: Duration = Duration::from_secs(20);
const CATCH_UP: Duration = Duration::from_secs(20);

fn start(managers: u64, args: &[&str]) -> Cluster {
    let options = ClusterOptions {
        managers,
        manager_args: args.iter().map(|s| s.to_string()).collect(),
        ..ClusterOptions::default()
    };
    Cluster::start(options).expect("cluster starts")
}

/// Registers storage nodes that never heartbeat: they stay `up` for one lease after the leader
/// hears of them, which is all a test of the managers alone needs.
async fn register_nodes(cluster: &Cluster, via: u64, names: &[&str]) {
    for name in names {
        let body = json!({"id": name, "addr": format!("127.0.0.1:{}", 9000), "capacity_bytes": 1u64 << 30});
        let _: Value = cluster
            .call(via, Method::POST, "/v1/nodes", Some(&body))
            .await
            .expect("registered");
    }
}

async fn create_volume(cluster: &Cluster, via: u64, name: &str) -> VolumeMap {
    let body = json!({"name": name, "size_bytes": 8192, "slice_bytes": 4096, "replicas": 2});
    cluster
        .call(via, Method::POST, "/v1/volumes", Some(&body))
        .await
        .expect("volume created")
}

/// A request that must be refused: what it is, method, path, body (`None`: malformed JSON),
/// expected status, and words the error must contain.
struct BadInput(
    &'static str,
    Method,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
);

fn follower_of(cluster: &Cluster, leader: u64) -> u64 {
    cluster
        .manager_ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower")
}

#[tokio::test]
async fn a_leader_is_elected_and_every_member_agrees() {
    let cluster = start(3, &[]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    for id in &ids {
        // The linearizable read, forwarded to the leader by followers.
        let status: ClusterStatus = cluster
            .call(*id, Method::GET, "/v1/status", None)
            .await
            .expect("status");
        assert_eq!(status.leader.map(|l| l.0), Some(leader), "manager {id}");
        assert_eq!(status.managers.len(), 3);
        assert!(status.managers.iter().all(|m| m.voter));
        let local = cluster.local_status(*id).await.expect("local status");
        assert_eq!(local.answered_by.0, *id);
        assert_eq!((local.leader, local.term), (status.leader, status.term));
    }
}

#[tokio::test]
async fn a_volume_created_on_one_member_is_visible_on_all_and_bad_input_is_refused() {
    let cluster = start(3, &[]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    let follower = follower_of(&cluster, leader);
    register_nodes(&cluster, follower, &["n1", "n2", "n3"]).await;
    let created = create_volume(&cluster, follower, "vol-a").await;
    assert_eq!(created.slices.len(), 2);
    let applied = cluster
        .local_status(leader)
        .await
        .expect("status")
        .applied_index;
    for id in &ids {
        let map: VolumeMap = cluster
            .call(*id, Method::GET, "/v1/volumes/vol-a", None)
            .await
            .expect("volume map");
        assert_eq!(map, created, "linearizable read on manager {id}");
        let local = cluster
            .wait_for_applied(*id, applied, CATCH_UP)
            .await
            .expect("applied");
        assert_eq!(
            local.volumes,
            vec![created.clone()],
            "local state of manager {id}"
        );
    }

    let cases: Vec<BadInput> = vec![
        BadInput(
            "malformed JSON",
            Method::POST,
            "/v1/volumes",
            None,
            StatusCode::BAD_REQUEST,
            "request body",
        ),
        BadInput(
            "unknown field",
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "x", "size_bytes": 4096, "replica": 2})),
            StatusCode::BAD_REQUEST,
            "unknown field `replica`",
        ),
        BadInput(
            "unaligned size",
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "x", "size_bytes": 5000})),
            StatusCode::BAD_REQUEST,
            "multiple of 4096",
        ),
        BadInput(
            "more replicas than nodes up",
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "x", "size_bytes": 4096, "replicas": 5})),
            StatusCode::CONFLICT,
            "are up",
        ),
        BadInput(
            "name taken",
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "vol-a", "size_bytes": 4096, "replicas": 1})),
            StatusCode::CONFLICT,
            "already exists",
        ),
        BadInput(
            "unknown volume",
            Method::GET,
            "/v1/volumes/nope",
            None,
            StatusCode::NOT_FOUND,
            "nope",
        ),
        BadInput(
            "heartbeat of an unknown node",
            Method::POST,
            "/v1/nodes/ghost/heartbeat",
            Some(json!({})),
            StatusCode::NOT_FOUND,
            "not registered",
        ),
    ];
    for BadInput(what, method, path, body, expected, words) in cases {
        let url = format!("http://{}{path}", cluster.manager_addr(follower));
        let request = cluster.http.request(method, url);
        let request = match &body {
            Some(body) => request.json(body),
            None => request
                .header("content-type", "application/json")
                .body("{\"name\": "),
        };
        let response = request.send().await.expect("answered");
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!(status, expected, "{what}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(words),
            "{what}: {error:?} should mention {words:?}"
        );
    }
    let after: VolumeList = cluster
        .call(leader, Method::GET, "/v1/volumes", None)
        .await
        .expect("list");
    assert_eq!(after.volumes, vec![created], "nothing half-applied");
}

#[tokio::test]
async fn killing_the_leader_elects_another_within_5s_and_loses_nothing() {
    let mut cluster = start(3, &[]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    register_nodes(&cluster, leader, &["n1", "n2"]).await;
    let created = create_volume(&cluster, leader, "survivor").await;

    cluster.kill_manager(leader).expect("killed");
    let killed_at = Instant::now();
    let rest: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = cluster
        .wait_for_leader(&rest, ELECTION)
        .await
        .expect("new leader");
    let elapsed = killed_at.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "new leader after {elapsed:?}"
    );
    assert_ne!(new_leader, leader);

    // Every committed change is still there, through either survivor.
    for id in &rest {
        let map: VolumeMap = cluster
            .call(*id, Method::GET, "/v1/volumes/survivor", None)
            .await
            .expect("volume");
        assert_eq!(map, created);
    }
    // And the cluster still takes changes.
    create_volume(&cluster, rest[0], "after-failover").await;
}

#[tokio::test]
async fn a_killed_member_restarted_catches_up_through_a_snapshot() {
    // Snapshots every 5 entries, so the leader purges what the killed member missed and has to
    // send it a snapshot.
    let mut cluster = start(3, &["--snapshot-every", "5"]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    register_nodes(&cluster, leader, &["n1", "n2"]).await;
    let victim = follower_of(&cluster, leader);
    cluster.kill_manager(victim).expect("killed");
    for i in 0..12 {
        create_volume(&cluster, leader, &format!("v{i}")).await;
    }
    let expected: ClusterStatus = cluster
        .call(leader, Method::GET, "/v1/status", None)
        .await
        .expect("status");
    assert!(
        std::fs::read_dir(cluster.manager_data_dir(leader))
            .expect("data dir")
            .flatten()
            .any(|e| e.file_name() == "snapshot"),
        "the leader built a snapshot"
    );
    cluster.restart_manager(victim).expect("restarted");
    let caught_up = cluster
        .wait_for_applied(victim, expected.applied_index, CATCH_UP)
        .await
        .expect("caught up");
    assert_eq!(caught_up.volumes, expected.volumes);
    assert_eq!(caught_up.nodes.len(), expected.nodes.len());
    let snapshot = cluster.manager_data_dir(victim).join("snapshot");
    assert!(
        snapshot.exists(),
        "the restarted member installed a snapshot"
    );
}

#[tokio::test]
async fn without_quorum_changes_fail_with_503_quickly_and_succeed_once_a_member_returns() {
    let mut cluster = start(3, &[]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    register_nodes(&cluster, leader, &["n1"]).await;
    let survivor = leader;
    let down: Vec<u64> = ids.iter().copied().filter(|id| *id != survivor).collect();
    for id in &down {
        cluster.kill_manager(*id).expect("killed");
    }
    let body = json!({"name": "blocked", "size_bytes": 4096, "replicas": 1});
    for attempt in 0..3 {
        let started = Instant::now();
        let (status, error) = cluster
            .request(survivor, Method::POST, "/v1/volumes", Some(&body))
            .await
            .expect("answered");
        let took = started.elapsed();
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "attempt {attempt}: {error}"
        );
        assert_eq!(error["code"], "unavailable", "{error}");
        assert!(
            took < Duration::from_secs(6),
            "attempt {attempt} took {took:?}"
        );
    }

    cluster.restart_manager(down[0]).expect("restarted");
    let pair = [survivor, down[0]];
    cluster
        .wait_for_leader(&pair, ELECTION)
        .await
        .expect("quorum again");
    // The timed-out proposals may have been committed after all: the name may now be taken.
    let created = wait_until("the change to succeed", CATCH_UP, || async {
        // Registering again keeps the node up under the new leader's failure detector.
        let node = json!({"id": "n1", "addr": "127.0.0.1:9000", "capacity_bytes": 1u64 << 30});
        cluster
            .request(survivor, Method::POST, "/v1/nodes", Some(&node))
            .await?;
        let (status, value) = cluster
            .request(survivor, Method::POST, "/v1/volumes", Some(&body))
            .await?;
        Ok::<_, anyhow::Error>(match status {
            StatusCode::CREATED => Some(value),
            StatusCode::CONFLICT if value["code"] == "already_exists" => Some(value),
            _ => None,
        })
    })
    .await
    .expect("changes work again");
    assert!(created.is_object());
    let map: VolumeMap = cluster
        .call(down[0], Method::GET, "/v1/volumes/blocked", None)
        .await
        .expect("visible");
    assert_eq!(map.replicas, 1);
}

#[tokio::test]
async fn a_member_that_lost_its_data_is_refused_then_rejoins_as_documented() {
    let mut cluster = start(3, &[]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    register_nodes(&cluster, leader, &["n1", "n2"]).await;
    let created = create_volume(&cluster, leader, "kept").await;
    let victim = follower_of(&cluster, leader);
    cluster.kill_manager(victim).expect("killed");
    std::fs::remove_dir_all(cluster.manager_data_dir(victim)).expect("data wiped");

    // Started empty while the cluster still counts on it: it refuses and exits.
    cluster.restart_manager(victim).expect("started");
    wait_until("the wiped member to refuse to start", CATCH_UP, || async {
        Ok::<_, anyhow::Error>((!cluster.manager_running(victim)).then_some(()))
    })
    .await
    .expect("refused");
    let log = cluster.manager_log(victim, 1000);
    assert!(
        log.contains("DELETE /v1/managers/"),
        "refused for the documented reason: {log}"
    );

    // docs/operations.md: remove it, start it empty, add it again.
    let path = format!("/v1/managers/{victim}");
    let _: ClusterStatus = cluster
        .call(leader, Method::DELETE, &path, None)
        .await
        .expect("removed");
    cluster.restart_manager(victim).expect("started empty");
    let body = json!({"id": victim, "addr": cluster.manager_addr(victim)});
    let status: ClusterStatus = cluster
        .call(leader, Method::POST, "/v1/managers", Some(&body))
        .await
        .expect("added");
    assert_eq!(
        status.managers.iter().filter(|m| m.voter).count(),
        3,
        "{status:?}"
    );
    let applied = cluster
        .local_status(leader)
        .await
        .expect("status")
        .applied_index;
    let rejoined = cluster
        .wait_for_applied(victim, applied, CATCH_UP)
        .await
        .expect("caught up");
    assert_eq!(rejoined.volumes, vec![created]);
}

#[tokio::test]
async fn vbs_node_drain_starts_a_drain_or_refuses_it_whole() {
    let cluster = start(3, &["--grace", "1h"]);
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, ELECTION)
        .await
        .expect("leader elected");
    register_nodes(&cluster, leader, &["n1", "n2", "n3"]).await;
    let body = json!({"name": "wide", "size_bytes": 4096, "slice_bytes": 4096, "replicas": 3});
    let _: VolumeMap = cluster
        .call(leader, Method::POST, "/v1/volumes", Some(&body))
        .await
        .expect("volume created");
    let text = |out: &std::process::Output| {
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Every node holds a copy of the 3-replica slice: n1's has nowhere to go.
    let refused = cluster.vbs(&["node", "drain", "n1"]).expect("vbs runs");
    let (_, stderr) = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot drain node n1"), "{stderr}");
    let unknown = cluster.vbs(&["node", "drain", "zz"]).expect("vbs runs");
    assert!(
        text(&unknown).1.contains("not registered"),
        "{:?}",
        text(&unknown)
    );
    let status: ClusterStatus = cluster
        .call(leader, Method::GET, "/v1/status", None)
        .await
        .expect("status");
    assert!(
        status.nodes.iter().all(|n| !n.draining),
        "nothing half-applied"
    );

    // A fourth node can take the copy (registered just now, so it is up).
    register_nodes(&cluster, leader, &["n4"]).await;
    let started = cluster.vbs(&["node", "drain", "n1"]).expect("vbs runs");
    let (stdout, stderr) = text(&started);
    assert!(started.status.success(), "{stderr}");
    assert!(
        stdout.contains("draining storage node n1: 1 unit to move"),
        "{stdout}"
    );
    let again = cluster.vbs(&["node", "drain", "n1"]).expect("vbs runs");
    assert!(
        again.status.success(),
        "draining twice is fine: {:?}",
        text(&again)
    );
    let list = cluster.vbs(&["node", "list"]).expect("vbs runs");
    let (stdout, _) = text(&list);
    let n1 = stdout
        .lines()
        .find(|l| l.starts_with("n1 "))
        .expect("n1 listed");
    assert!(n1.contains("draining"), "{stdout}");
    let json = cluster.vbs(&["node", "list", "--json"]).expect("vbs runs");
    let nodes: Vec<vbs_wire::api::NodeStatus> =
        serde_json::from_slice(&json.stdout).expect("the nodes as JSON");
    let drained: Vec<&str> = nodes
        .iter()
        .filter(|n| n.draining)
        .map(|n| n.id.0.as_str())
        .collect();
    assert_eq!(drained, ["n1"]);
}
