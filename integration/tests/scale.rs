//! A cluster with many volumes, as users run one: a node restarted with hundreds of units is whole
//! again in a few batched steps, not one step per unit.

use std::sync::Arc;
use std::time::Duration;

use client::api::{ClusterStatus, CopyStatus, NodeState};
use client::managers::Managers;
use client::types::NodeId;
use client::volume::{Volume, VolumeOptions};
use futures::stream::{self, StreamExt};
use integration::{wait_until, Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::json;

const STARTUP: Duration = Duration::from_secs(30);

/// Creates `count` volumes of one 1 MiB slice with 2 copies, named `v0000`..., through the API.
async fn create_volumes(cluster: &Cluster, count: usize) {
    let leader = cluster
        .wait_for_leader(&cluster.manager_ids(), STARTUP)
        .await
        .unwrap();
    for i in 0..count {
        let body = json!({
            "name": format!("v{i:04}"), "size_bytes": 1 << 20, "slice_bytes": 1 << 20, "replicas": 2
        });
        let _: serde_json::Value = cluster
            .call(leader, Method::POST, "/v1/volumes", Some(&body))
            .await
            .unwrap();
    }
}

/// Writes one block to each of the `count` volumes.
async fn write_one_block_each(cluster: &Cluster, count: usize) {
    let managers =
        Arc::new(Managers::parse(&cluster.managers_arg(), Duration::from_secs(5)).unwrap());
    let written: Vec<_> = stream::iter(0..count)
        .map(|i| {
            let managers = managers.clone();
            async move {
                let volume =
                    Volume::open(managers, &format!("v{i:04}"), VolumeOptions::default()).await?;
                volume.write(0, bytes::Bytes::from(vec![7u8; 4096])).await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for result in written {
        result.unwrap();
    }
}

fn copies_not_current(status: &ClusterStatus) -> usize {
    status
        .volumes
        .iter()
        .flat_map(|v| &v.slices)
        .flat_map(|s| &s.copies)
        .filter(|c| c.status != CopyStatus::Current)
        .count()
}

fn primaries_on(status: &ClusterStatus, node: &NodeId) -> usize {
    status
        .volumes
        .iter()
        .flat_map(|v| &v.slices)
        .filter(|s| &s.primary == node)
        .count()
}

/// Before batching, each unit of a restarted node cost two Raft commits of its own (`syncing`,
/// then `caught up`) and hundreds of concurrent requests to the managers, which refused
/// connections past their limit: the node took minutes to be whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_with_hundreds_of_units_is_whole_again_in_a_few_batched_commits() {
    const VOLUMES: usize = 300;
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "2s".into()],
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create_volumes(&cluster, VOLUMES).await;
    write_one_block_each(&cluster, VOLUMES).await;

    let status = cluster.status().await.unwrap();
    let victim = NodeId::parse("n1").unwrap();
    let units = status
        .nodes
        .iter()
        .find(|n| n.id == victim)
        .map_or(0, |n| n.units.len());
    assert!(units >= 150, "n1 holds {units} units");
    cluster.storage_node("n1").unwrap().kill();
    wait_until(
        "n1's primaries to fail over",
        Duration::from_secs(60),
        || async {
            let status = cluster.status().await?;
            Ok::<_, anyhow::Error>((primaries_on(&status, &victim) == 0).then_some(()))
        },
    )
    .await
    .unwrap();
    let before = cluster.status().await.unwrap().applied_index;

    cluster.storage_node("n1").unwrap().restart().unwrap();
    let whole = wait_until("every copy current", Duration::from_secs(120), || async {
        let status = cluster.status().await?;
        let up = status
            .nodes
            .iter()
            .any(|n| n.id == victim && n.state == NodeState::Up);
        Ok::<_, anyhow::Error>((up && copies_not_current(&status) == 0).then_some(status))
    })
    .await
    .unwrap();
    let commits = whole.applied_index - before;
    eprintln!(
        "n1 came back with {units} units: {commits} Raft entries until every copy was current"
    );
    // The node up, its copies `syncing` in one notification, and `caught up` in batches per
    // primary; not two per unit.
    assert!(
        commits < units as u64 / 4,
        "{commits} Raft entries for {units} units"
    );
}
