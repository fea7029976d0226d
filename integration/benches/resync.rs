//! Resync throughput, beside the disk's sequential write bandwidth, in one run:
//!
//! 1. the disk: 1 GiB written sequentially in 1 MiB writes, then fdatasync;
//! 2. incremental catch-up: a secondary is killed, 10,000 4 KiB writes to distinct blocks land
//!    without it, it is restarted; the rate is the resync's own report (bytes over elapsed time,
//!    as the leader computed it);
//! 3. full rebuild: a volume with a 1 GiB slice is filled, the node holding one copy is killed,
//!    and after the grace period the copy is recreated on the third node from nothing.
//!
//! Run: `cargo bench -p integration --bench resync` (release build).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::volume::{Volume, VolumeOptions};
use futures::stream::{self, StreamExt};
use integration::{wait_until, Cluster, ClusterOptions};
use vbs_wire::api::{CopyStatus, ResyncStatus, SliceMap};
use vbs_wire::managers::Managers;
use vbs_wire::types::NodeId;

const RESYNC_RATE: &str = "4G";

fn disk_bandwidth(dir: &std::path::Path) -> anyhow::Result<f64> {
    let path = dir.join("seq-write.tmp");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..1024 {
        file.write_all(&chunk)?;
    }
    file.sync_data()?;
    let mbps = 1024.0 * 1.048576 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(mbps)
}

async fn slice(cluster: &Cluster, volume: &str) -> anyhow::Result<SliceMap> {
    let status = cluster.status().await?;
    let map = status
        .volumes
        .into_iter()
        .find(|v| v.name == volume)
        .context("volume")?;
    Ok(map.slices[0].clone())
}

/// Waits until `node`'s copy of `volume` is current after a finished resync; returns its report.
async fn finished_resync(
    cluster: &Cluster,
    volume: &str,
    node: &NodeId,
) -> anyhow::Result<ResyncStatus> {
    wait_until("the resync to finish", Duration::from_secs(600), || async {
        let slice = slice(cluster, volume).await?;
        let copy = slice.copies.iter().find(|c| &c.node == node).cloned();
        Ok::<_, anyhow::Error>(copy.and_then(|c| {
            let finished = c.resync.filter(|r| r.progress.finished)?;
            (c.status == CopyStatus::Current).then_some(finished)
        }))
    })
    .await
}

async fn write_blocks(volume: &Arc<Volume>, blocks: u64, bs: u64) -> anyhow::Result<()> {
    let results: Vec<_> = stream::iter(0..blocks)
        .map(|i| {
            let volume = volume.clone();
            async move {
                volume
                    .write(
                        i * bs,
                        bytes::Bytes::from(vec![(i % 251) as u8 + 1; bs as usize]),
                    )
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        bail!("write failed: {e}");
    }
    Ok(())
}

fn mbps(status: &ResyncStatus) -> f64 {
    status.progress.bytes_done as f64 / 1e6 / (status.elapsed_ms as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "2s".into(), "--grace".into(), "5s".into()],
        storage_args: vec!["--resync-rate".into(), RESYNC_RATE.into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options)?;
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    let disk = disk_bandwidth(cluster.dir.path())?;
    let managers = Arc::new(
        Managers::parse(&cluster.managers_arg(), Duration::from_secs(5))
            .map_err(anyhow::Error::msg)?,
    );

    // Incremental catch-up of 10,000 missed 4 KiB writes.
    let out = cluster.vbs(&[
        "volume",
        "create",
        "inc",
        "--size",
        "1G",
        "--replicas",
        "2",
        "--slice-size",
        "1G",
    ])?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let volume = Arc::new(Volume::open(managers.clone(), "inc", VolumeOptions::default()).await?);
    write_blocks(&volume, 100, 4096).await?;
    let inc = slice(&cluster, "inc").await?;
    let secondary = inc
        .copies
        .iter()
        .find(|c| c.node != inc.primary)
        .context("secondary")?
        .node
        .clone();
    cluster.storage_node(&secondary.0)?.kill();
    write_blocks(&volume, 10_000, 4096).await?;
    cluster.storage_node(&secondary.0)?.restart()?;
    let incremental = finished_resync(&cluster, "inc", &secondary).await?;

    // Full rebuild of a 1 GiB copy.
    let out = cluster.vbs(&[
        "volume",
        "create",
        "full",
        "--size",
        "1G",
        "--replicas",
        "2",
        "--slice-size",
        "1G",
    ])?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let full_volume = Arc::new(Volume::open(managers, "full", VolumeOptions::default()).await?);
    write_blocks(&full_volume, 1024, 1 << 20).await?;
    let before = slice(&cluster, "full").await?;
    let gone = before
        .copies
        .iter()
        .find(|c| c.node != before.primary)
        .context("secondary")?
        .node
        .clone();
    cluster.storage_node(&gone.0)?.kill();
    let replacement = wait_until("a replacement copy", Duration::from_secs(120), || async {
        let slice = slice(&cluster, "full").await?;
        Ok::<_, anyhow::Error>(
            slice
                .copies
                .iter()
                .find(|c| !before.copies.iter().any(|b| b.node == c.node))
                .map(|c| c.node.clone()),
        )
    })
    .await?;
    let rebuild = finished_resync(&cluster, "full", &replacement).await?;

    println!("| what | records | bytes | seconds | MB/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, status) in [
        (
            "incremental catch-up, 10,000 missed 4 KiB writes",
            &incremental,
        ),
        ("full rebuild of a 1 GiB copy", &rebuild),
    ] {
        println!(
            "| {name} | {} | {} | {:.2} | {:.0} |",
            status.progress.records_done,
            status.progress.bytes_done,
            status.elapsed_ms as f64 / 1000.0,
            mbps(status)
        );
    }
    println!("| disk: 1 GiB sequential 1 MiB writes + fdatasync, same disk | | 1073741824 | | {disk:.0} |");
    println!(
        "full resync flag: incremental {} / rebuild {}",
        incremental.progress.full, rebuild.progress.full
    );
    Ok(())
}
