//! Scrub: how fast one pass reads a volume back, and what crosses the network between storage
//! nodes while it does, in one run:
//!
//! 1. a volume of one 1 GiB slice with 2 copies is filled with 1 MiB writes;
//! 2. the page cache is dropped (the scrub reads from the disk), and `vbs scrub` runs with the
//!    nodes' scrub rate unbounded (`--scrub-rate 4G`): its rate, beside the disk's sequential read
//!    bandwidth measured on a file of the same size just before;
//! 3. the bytes between the storage nodes' addresses during the pass, counted by packet filter
//!    rules (every byte on the wire both ways, TCP and IP headers included), per GiB scrubbed;
//! 4. the same pass over a second cluster left at the default `--scrub-rate` (16 MiB/s) with a
//!    256 MiB volume, to show the budget holds.
//!
//! Run: `cargo bench -p integration --bench scrub` (release build; root, for the page cache and
//! the packet filter).

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::volume::{Volume, VolumeOptions};
use futures::stream::{self, StreamExt};
use integration::{Cluster, ClusterOptions};
use vbs_wire::managers::Managers;

const CHAIN: &str = "VBS_SCRUB_BENCH";

fn drop_caches() -> anyhow::Result<()> {
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (root?)")
}

/// MB/s of reading a new 1 GiB file from the disk (written, synced, cache dropped).
fn disk_read_bandwidth(dir: &std::path::Path) -> anyhow::Result<f64> {
    let path = dir.join("seq-read.tmp");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..1024 {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    drop(file);
    drop_caches()?;
    let mut file = std::fs::File::open(&path)?;
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    while file.read(&mut buf)? > 0 {}
    let mbps = 1024.0 * 1.048576 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok(mbps)
}

fn iptables(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("iptables").args(args).output()?;
    if !out.status.success() {
        bail!(
            "iptables {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Counting rules for every packet from one storage node's address to another's.
fn count_between(ips: &[String]) -> anyhow::Result<()> {
    let _ = iptables(&["-D", "OUTPUT", "-j", CHAIN]);
    let _ = iptables(&["-F", CHAIN]);
    let _ = iptables(&["-X", CHAIN]);
    iptables(&["-N", CHAIN])?;
    for a in ips {
        for b in ips.iter().filter(|b| *b != a) {
            iptables(&["-A", CHAIN, "-s", a, "-d", b])?;
        }
    }
    iptables(&["-I", "OUTPUT", "-j", CHAIN])?;
    Ok(())
}

fn counted_bytes() -> anyhow::Result<u64> {
    let listing = iptables(&["-L", CHAIN, "-v", "-x", "-n"])?;
    Ok(listing
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

fn stop_counting() {
    let _ = iptables(&["-D", "OUTPUT", "-j", CHAIN]);
    let _ = iptables(&["-F", CHAIN]);
    let _ = iptables(&["-X", CHAIN]);
}

async fn cluster(storage_args: &[&str]) -> anyhow::Result<Cluster> {
    let mut args = ClusterOptions::default().storage_args;
    args.extend(storage_args.iter().map(|a| a.to_string()));
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 2,
        storage_args: args,
        addresses: integration::nemesis::ADDRESSES,
        ..ClusterOptions::default()
    })?;
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// Creates `name` (one slice, 2 copies) and fills it with 1 MiB writes.
async fn filled(cluster: &Cluster, name: &str, mib: u64) -> anyhow::Result<()> {
    let size = format!("{mib}M");
    cluster.create_volume(name, &size, "2", &size)?;
    let managers = Arc::new(
        Managers::parse(&cluster.managers_arg(), Duration::from_secs(5))
            .map_err(anyhow::Error::msg)?,
    );
    let volume = Arc::new(Volume::open(managers, name, VolumeOptions::default()).await?);
    let results: Vec<_> = stream::iter(0..mib)
        .map(|i| {
            let volume = volume.clone();
            async move {
                let data = bytes::Bytes::from(vec![(i % 251) as u8 + 1; 1 << 20]);
                volume.write(i << 20, data).await
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    if let Some(e) = results.into_iter().find_map(Result::err) {
        bail!("write failed: {e}");
    }
    Ok(())
}

/// One `vbs scrub NAME`: its seconds and its summary.
fn scrub(cluster: &Cluster, name: &str) -> anyhow::Result<(f64, String)> {
    let started = Instant::now();
    let out = cluster.vbs(&["scrub", name])?;
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("vbs scrub: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((
        seconds,
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', "; "),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The nemesis uses the same addresses and the packet filter.
    let _lock = integration::nemesis::RunLock::acquire()?;
    let fast = cluster(&["--scrub-rate", "4G"]).await?;
    let disk = disk_read_bandwidth(fast.dir.path())?;
    filled(&fast, "big", 1024).await?;
    drop_caches()?;
    let ips: Vec<String> = fast
        .storage_names()
        .iter()
        .map(|n| fast.storage_ip(n).to_string())
        .collect();
    count_between(&ips)?;
    let scrubbed = scrub(&fast, "big");
    let wire = counted_bytes();
    stop_counting();
    let (seconds, summary) = scrubbed?;
    let wire = wire?;
    drop(fast);

    let slow = cluster(&[]).await?;
    filled(&slow, "small", 256).await?;
    drop_caches()?;
    let (slow_seconds, slow_summary) = scrub(&slow, "small")?;

    // Each copy reads the whole volume: 2 GiB of records in the first pass.
    let read_mb = 2.0 * 1024.0 * 1.048576;
    println!("| what | seconds | MB/s |");
    println!("| --- | --- | --- |");
    println!(
        "| scrub of a 1 GiB slice, 2 copies, --scrub-rate 4G, cold cache (both copies' reads) | {seconds:.1} | {:.0} |",
        read_mb / seconds
    );
    println!(
        "| scrub of a 256 MiB slice, 2 copies, default --scrub-rate 16M (both copies' reads) | {slow_seconds:.1} | {:.1} |",
        2.0 * 256.0 * 1.048576 / slow_seconds
    );
    println!("| disk: a 1 GiB file read sequentially, cold cache, same disk | | {disk:.0} |");
    println!(
        "bytes between the storage nodes during the 1 GiB pass: {wire} ({:.1} KiB per GiB scrubbed)",
        wire as f64 / 1024.0
    );
    println!("summary: {summary}");
    println!("summary at the default rate: {slow_summary}");
    Ok(())
}
