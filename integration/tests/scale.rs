//! A cluster with many volumes, as users run one: placement spreads units and primaries evenly,
//! the volume list pages and filters, and a node restarted with hundreds of units is whole again
//! in a few batched steps, not one step per unit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use client::volume::{Volume, VolumeOptions};
use futures::stream::{self, StreamExt};
use integration::{
    copies_not_current, primaries_on, volumes_with_a_copy_on, wait_until, Cluster, ClusterOptions,
};
use reqwest::Method;
use vbs_wire::api::{NodeState, VolumeList};
use vbs_wire::managers::Managers;
use vbs_wire::types::NodeId;

const STARTUP: Duration = Duration::from_secs(30);

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

/// Every volume name `GET /v1/volumes` lists, a page of `limit` at a time, with `filter`.
async fn all_pages(cluster: &Cluster, limit: usize, filter: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/v1/volumes?limit={limit}{after}{filter}");
        let (status, body) = cluster.request(1, Method::GET, &path, None).await.unwrap();
        assert!(status.is_success(), "GET {path}: {status} {body}");
        let page: VolumeList = serde_json::from_value(body).unwrap();
        assert!(page.volumes.len() <= limit);
        names.extend(page.volumes.into_iter().map(|v| v.name));
        match page.next {
            Some(next) => after = format!("&after={next}"),
            None => return names,
        }
    }
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
    let names = (0..VOLUMES).map(|i| format!("v{i:04}"));
    cluster
        .create_one_slice_volumes(names, 1 << 20)
        .await
        .unwrap();
    write_one_block_each(&cluster, VOLUMES).await;

    let status = cluster.status().await.unwrap();
    // Placement: nodes of equal size hold equal numbers of units and primaries.
    let spread: BTreeMap<String, (usize, usize)> = status
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.0.clone(),
                (n.units.len(), primaries_on(&status, &n.id)),
            )
        })
        .collect();
    for (units, primaries) in spread.values() {
        assert_eq!(
            *units,
            VOLUMES * 2 / 3,
            "units and primaries per node: {spread:?}"
        );
        assert_eq!(
            *primaries,
            VOLUMES / 3,
            "units and primaries per node: {spread:?}"
        );
    }
    let every: Vec<String> = (0..VOLUMES).map(|i| format!("v{i:04}")).collect();
    for limit in [1000, 7] {
        assert_eq!(
            all_pages(&cluster, limit, "").await,
            every,
            "pages of {limit}"
        );
    }
    let counts = status.counts;
    assert_eq!(
        (counts.volumes, counts.slices, counts.copies.current),
        (VOLUMES as u64, VOLUMES as u64, 2 * VOLUMES as u64)
    );

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
    let down = cluster.status().await.unwrap();
    let before = down.applied_index;
    // What needs attention: exactly the volumes with a copy on the node that is down.
    let on_victim = volumes_with_a_copy_on(&down, &victim);
    assert_eq!(on_victim.len(), units);
    for limit in [1000, 9] {
        assert_eq!(
            all_pages(&cluster, limit, "&status=not-current").await,
            on_victim
        );
        assert_eq!(all_pages(&cluster, limit, "&status=down").await, on_victim);
    }
    assert_eq!(down.counts.copies.down, units as u64);

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
