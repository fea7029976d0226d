//! A cluster of a thousand volumes, as a new user would build it: 3 managers, 4 storage nodes,
//! 1,000 volumes of one 64 MiB slice with 2 copies (2,000 units, 500 per node), one block written
//! to each. Prints, in one run:
//!
//! - the rate of `vbs volume create` (one CLI process per volume, as a user or a script runs it);
//! - the size and time of `GET /v1/status`, whole and without the volume maps;
//! - idle CPU, memory and threads of every process;
//! - the failover of a killed node's primaries (SIGKILL to every slice served again elsewhere);
//! - the restart of that node (start to every copy `current` again), with no write missed;
//! - notification commits per second at 1 and 16 clients, beside etcd's on this kind of machine.
//!
//! Run: `cargo bench -p integration --bench scale` (release build). `VBS_SCALE_VOLUMES=N` changes
//! the number of volumes; `VBS_SCALE_KEEP=1` keeps the cluster's data and logs;
//! `VBS_SCALE_SKIP_NOTIFICATIONS=1` leaves out the notification commit rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use client::volume::{Volume, VolumeOptions};
use futures::stream::{self, StreamExt};
use integration::measure::{notification_commits, ProcessSample};
use integration::{copies_not_current, primaries_on, wait_until, Cluster, ClusterOptions};
use reqwest::Method;
use vbs_wire::api::NodeState;
use vbs_wire::managers::Managers;

const NODES: u64 = 4;
const IDLE_SAMPLE: Duration = Duration::from_secs(10);

/// Every manager's and storage node's process, by name.
fn processes(cluster: &mut Cluster) -> anyhow::Result<Vec<(String, u32)>> {
    let mut all = Vec::new();
    for id in cluster.manager_ids() {
        let pid = cluster.manager(id)?.pid().context("manager not running")?;
        all.push((format!("manager-{id}"), pid));
    }
    for name in cluster.storage_names() {
        let pid = cluster
            .storage_node(&name)?
            .pid()
            .context("node not running")?;
        all.push((name, pid));
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let volumes: usize = std::env::var("VBS_SCALE_VOLUMES")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("VBS_SCALE_VOLUMES")?
        .unwrap_or(1000);
    let options = ClusterOptions {
        storage_nodes: NODES,
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options)?;
    if std::env::var_os("VBS_SCALE_KEEP").is_some() {
        eprintln!(
            "keeping the cluster's data and logs in {}",
            cluster.keep_dir().display()
        );
    }
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    println!(
        "scale: 3 managers, {NODES} storage nodes, {volumes} volumes of one 64 MiB slice, 2 copies"
    );

    let started = Instant::now();
    for i in 0..volumes {
        cluster.create_volume(&format!("v{i:05}"), "64M", "2", "64M")?;
    }
    let create_rate = volumes as f64 / started.elapsed().as_secs_f64();
    println!("| what | measured |");
    println!("| --- | --- |");
    println!("| creating volumes with `vbs volume create` | {create_rate:.0} per second |");

    let managers = Arc::new(
        Managers::parse(&cluster.managers_arg(), Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?,
    );
    let written: Vec<anyhow::Result<()>> = stream::iter(0..volumes)
        .map(|i| {
            let managers = managers.clone();
            async move {
                let volume =
                    Volume::open(managers, &format!("v{i:05}"), VolumeOptions::default()).await?;
                volume
                    .write(0, bytes::Bytes::from(vec![(i % 251) as u8 + 1; 4096]))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(e) = written.into_iter().find_map(Result::err) {
        return Err(e.context("writing one block to each volume"));
    }

    let leader = cluster
        .wait_for_leader(&cluster.manager_ids(), Duration::from_secs(20))
        .await?;
    for path in ["/v1/status", "/v1/status?volumes=false"] {
        let mut took = Vec::new();
        let mut size = 0;
        for _ in 0..10 {
            let sent = Instant::now();
            let (status, body) = cluster.request(leader, Method::GET, path, None).await?;
            took.push(sent.elapsed());
            anyhow::ensure!(status.is_success(), "GET {path}: {status}");
            size = serde_json::to_vec(&body)?.len();
        }
        took.sort();
        println!(
            "| `GET {path}` | {:.1} KiB of JSON, {:.1} ms (median of 10) |",
            size as f64 / 1024.0,
            took[5].as_secs_f64() * 1000.0
        );
    }

    let all = processes(&mut cluster)?;
    let before: Vec<ProcessSample> = all
        .iter()
        .map(|(_, pid)| ProcessSample::read(*pid))
        .collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(IDLE_SAMPLE).await;
    for ((name, pid), before) in all.iter().zip(&before) {
        let now = ProcessSample::read(*pid)?;
        println!(
            "| idle {name} | CPU {:.1}%, RSS {:.0} MiB, {} threads |",
            now.cpu_share_since(before) * 100.0,
            now.rss_bytes as f64 / (1 << 20) as f64,
            now.threads
        );
    }

    // The node with the most primaries is killed: every one of them fails over.
    let status = cluster.status().await?;
    let victim = status
        .nodes
        .iter()
        .map(|n| n.id.clone())
        .max_by_key(|n| primaries_on(&status, n))
        .context("no storage node")?;
    let primaries = primaries_on(&status, &victim);
    let units = status
        .nodes
        .iter()
        .find(|n| n.id == victim)
        .map_or(0, |n| n.units.len());
    let killed = Instant::now();
    cluster.storage_node(&victim.0)?.kill();
    wait_until(
        "every primary of the killed node to fail over",
        Duration::from_secs(300),
        || async {
            let status = cluster.status().await?;
            Ok::<_, anyhow::Error>((primaries_on(&status, &victim) == 0).then_some(()))
        },
    )
    .await?;
    println!(
        "| SIGKILL of {victim} (holding {primaries} primaries): all failed over | {:.1} s |",
        killed.elapsed().as_secs_f64()
    );

    let restarted = Instant::now();
    cluster.storage_node(&victim.0)?.restart()?;
    let up = wait_until("the node up", Duration::from_secs(120), || async {
        let status = cluster.status().await?;
        let up = status
            .nodes
            .iter()
            .any(|n| n.id == victim && n.state == NodeState::Up);
        Ok::<_, anyhow::Error>(up.then(|| restarted.elapsed()))
    })
    .await?;
    let mut shown = Instant::now();
    let whole = wait_until("every copy current", Duration::from_secs(900), || {
        let show = shown.elapsed() >= Duration::from_secs(5);
        if show {
            shown = Instant::now();
        }
        let cluster = &cluster;
        async move {
            let status = cluster.status().await?;
            let behind = copies_not_current(&status);
            if show {
                eprintln!(
                    "  {:.0} s after the restart: {behind} copies not current",
                    restarted.elapsed().as_secs_f64()
                );
            }
            Ok::<_, anyhow::Error>((behind == 0).then(|| restarted.elapsed()))
        }
    })
    .await?;
    println!(
        "| restarting {victim} ({units} units, no write missed): registered | {:.1} s |",
        up.as_secs_f64()
    );
    println!(
        "| restarting {victim}: every copy `current` again | {:.1} s after the start, {:.1} s after it registered |",
        whole.as_secs_f64(),
        (whole - up).as_secs_f64()
    );
    drop(cluster);
    if std::env::var_os("VBS_SCALE_SKIP_NOTIFICATIONS").is_some() {
        return Ok(());
    }
    let runs = notification_commits(&[(1, 2_000), (16, 8_000)]).await?;
    for (run, etcd) in runs.iter().zip(["1.3k/s", "5.3k/s"]) {
        println!(
            "| notification commits, {} client(s) | {:.0}/s, p50 {} us (etcd on this machine: {etcd}) |",
            run.clients,
            run.per_second(),
            run.latencies.value_at_quantile(0.5)
        );
    }
    Ok(())
}
