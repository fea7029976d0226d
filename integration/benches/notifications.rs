//! Notification throughput of a 3-manager cluster on loopback: each notification marks one copy
//! `stale`, so each is one Raft commit (fdatasync on a majority) plus the HTTP round trip.
//!
//! Run with `cargo bench -p integration --bench notifications`. Prints commits/s and latency
//! p50/p99 for 1 and for 16 concurrent clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::api::{Notification, UnitGeneration, VolumeMap};
use hdrhistogram::Histogram;
use integration::{Cluster, ClusterOptions};
use reqwest::Method;
use serde_json::json;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Notifications per run; each needs a unit of its own, since a copy already stale commits
/// nothing.
const RUNS: [(usize, usize); 2] = [(1, 2_000), (16, 8_000)];

/// One notification to send: the secondary of a slice says it is not current.
fn notifications(map: &VolumeMap) -> Vec<Notification> {
    map.slices
        .iter()
        .map(|slice| {
            let secondary = slice
                .copies
                .iter()
                .find(|c| c.node != slice.primary)
                .expect("2 copies");
            Notification::NotCurrent {
                source: secondary.node.clone(),
                units: vec![UnitGeneration {
                    unit: slice.unit,
                    generation: slice.generation,
                }],
            }
        })
        .collect()
}

async fn run(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    work: Vec<Notification>,
) -> anyhow::Result<(Duration, Histogram<u64>)> {
    let queue = Arc::new(std::sync::Mutex::new(work));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new(3).expect("valid histogram");
            loop {
                let next = queue.lock().expect("queue lock").pop();
                let Some(notification) = next else { break };
                let sent = Instant::now();
                let response = http.post(&url).json(&notification).send().await?;
                let status = response.status();
                if !status.is_success() {
                    anyhow::bail!("notification refused: {status} {}", response.text().await?);
                }
                latencies.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok(latencies)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for task in tasks {
        all.add(task.await??)?;
    }
    Ok((started.elapsed(), all))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A long lease: the storage nodes here are names only and never heartbeat, and heartbeat
    // replies listing thousands of units would compete with what is measured.
    let options = ClusterOptions {
        managers: 3,
        manager_args: vec!["--lease".into(), "10m".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).context("starting managers")?;
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, Duration::from_secs(20))
        .await?;
    for node in NODES {
        let body = json!({"id": node, "addr": "127.0.0.1:9000", "capacity_bytes": 1u64 << 40});
        let _: serde_json::Value = cluster
            .call(leader, Method::POST, "/v1/nodes", Some(&body))
            .await?;
    }
    let total: usize = RUNS.iter().map(|(_, n)| n).sum();
    let volume = json!({
        "name": "bench", "size_bytes": total as u64 * 4096, "slice_bytes": 4096, "replicas": 2
    });
    let map: VolumeMap = cluster
        .call(leader, Method::POST, "/v1/volumes", Some(&volume))
        .await?;
    let mut work = notifications(&map);

    let url = format!("http://{}/v1/notifications", cluster.manager_addr(leader));
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(32)
        .build()?;
    println!("notifications to a 3-manager cluster on loopback (one Raft commit each)");
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>10}",
        "clients", "commits", "commits/s", "p50 us", "p99 us"
    );
    for (clients, count) in RUNS {
        let batch: Vec<Notification> = work.drain(..count).collect();
        let (elapsed, latencies) = run(&http, &url, clients, batch).await?;
        println!(
            "{clients:>8} {count:>8} {:>10.0} {:>10} {:>10}",
            count as f64 / elapsed.as_secs_f64(),
            latencies.value_at_quantile(0.50),
            latencies.value_at_quantile(0.99),
        );
    }
    Ok(())
}
