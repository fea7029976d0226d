//! The replicated write path beside its floor, in one run on one machine:
//!
//! 1. `shared/tools/floor.py` (when present): raw fdatasync, loopback round trip, and the floor for a
//!    durable two-copy 4 KiB write (`rf2_floor_us`);
//! 2. `vbs-storage bench` at iodepth 1 and 32: the single-node engine on the same disk; then two
//!    engines at iodepth 32 at once, on two directories of the same disk: the disk and CPU work of
//!    two copies of every write, the most a two-copy volume on this one machine can reach;
//! 3. `vbs bench --rw randwrite --bs 4k` at iodepth 1 and 32 against a real cluster (3 managers,
//!    3 storage nodes, all on loopback): a 1 GiB volume of 2 replicas in 64 slices, then one in a
//!    single slice; after each row, every copy of every volume must still be `current`;
//! 4. first writes: a fresh 10 GiB volume of 160 slices written for one second at iodepth 32, then
//!    again for one second once every unit has been written (warm).
//!
//! Run: `cargo bench -p integration --bench write_path` (release build). `VBS_BENCH_RUNTIME`
//! sets the seconds per `vbs bench` run (default 10).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use integration::binaries::{binary, workspace_root};
use integration::{Cluster, ClusterOptions};
use serde_json::Value;

fn run_json(command: &mut Command) -> anyhow::Result<Value> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("no JSON line")?;
    serde_json::from_str(line).with_context(|| format!("parsing {line}"))
}

fn floor(dir: &Path) -> anyhow::Result<Option<Value>> {
    let script = workspace_root().join("../shared/tools/floor.py");
    if !script.exists() {
        return Ok(None);
    }
    run_json(Command::new("python3").arg(script).arg("--dir").arg(dir)).map(Some)
}

fn engine(dir: &Path, iodepth: u32, count: u32) -> anyhow::Result<Value> {
    run_json(&mut engine_command(dir, iodepth, count)?)
}

/// Two engine benchmarks at once, on `dir/a` and `dir/b`; their figures.
fn engine_pair(dir: &Path, iodepth: u32, count: u32) -> anyhow::Result<[Value; 2]> {
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a)?;
    std::fs::create_dir_all(&b)?;
    let (mut first, mut second) = (
        engine_command(&a, iodepth, count)?,
        engine_command(&b, iodepth, count)?,
    );
    std::thread::scope(|scope| {
        let other = scope.spawn(move || run_json(&mut second));
        let one = run_json(&mut first)?;
        let other = other
            .join()
            .map_err(|_| anyhow::anyhow!("the second engine benchmark panicked"))??;
        Ok([one, other])
    })
}

fn engine_command(dir: &Path, iodepth: u32, count: u32) -> anyhow::Result<Command> {
    let mut command = Command::new(binary("vbs-storage")?);
    command
        .args([
            "bench",
            "--json",
            "--iodepth",
            &iodepth.to_string(),
            "--count",
            &count.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir);
    Ok(command)
}

/// Copies of any volume that are not `current`, as `volume/slice@node status`.
async fn not_current(cluster: &Cluster) -> anyhow::Result<Vec<String>> {
    let status = cluster.status().await?;
    let mut found = Vec::new();
    for volume in &status.volumes {
        for slice in &volume.slices {
            for copy in &slice.copies {
                if copy.status != vbs_wire::api::CopyStatus::Current {
                    found.push(format!(
                        "{}/{}@{} {:?}",
                        volume.name, slice.unit, copy.node, copy.status
                    ));
                }
            }
        }
    }
    Ok(found)
}

fn f(value: &Value, key: &str) -> f64 {
    value[key].as_f64().unwrap_or(f64::NAN)
}

/// `vbs bench --rw randwrite --bs 4k` on `volume` for `runtime` seconds; its JSON summary.
fn vbs_bench(cluster: &Cluster, volume: &str, iodepth: u32, runtime: u64) -> anyhow::Result<Value> {
    let runtime = format!("{runtime}s");
    let depth = iodepth.to_string();
    let args = [
        "bench",
        volume,
        "--rw",
        "randwrite",
        "--bs",
        "4k",
        "--iodepth",
        &depth,
        "--runtime",
        &runtime,
        "--json",
    ];
    let out = cluster.vbs(&args)?;
    if !out.status.success() {
        bail!("vbs bench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("vbs bench printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runtime: u64 = std::env::var("VBS_BENCH_RUNTIME")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let options = ClusterOptions {
        storage_nodes: 3,
        storage_args: Vec::new(),
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).context("starting the cluster")?;
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    let engine_dir = cluster.dir.path().join("engine-bench");
    std::fs::create_dir_all(&engine_dir)?;

    let floor = floor(cluster.dir.path())?;
    let engine_1 = engine(&engine_dir, 1, 10_000)?;
    let engine_32 = engine(&engine_dir, 32, 100_000)?;
    let pair_32 = engine_pair(&engine_dir.join("pair"), 32, 100_000)?;
    // The pair's combined rate while both ran: each one's IOPS over the same span.
    let pair_iops = f(&pair_32[0], "iops").min(f(&pair_32[1], "iops"));

    // 64 slices of 16 MiB spread the volume's units over the nodes (about 43 per node), whose
    // writes share each node's device log; one slice of 1 GiB (the default slice size) keeps
    // every write of a node in one unit.
    let mut vbs = Vec::new();
    for (volume, slice) in [("many", "16M"), ("one", "1G")] {
        cluster.create_volume(volume, "1G", "2", slice)?;
        for iodepth in [1, 32] {
            vbs.push(vbs_bench(&cluster, volume, iodepth, runtime)?);
            let stale = not_current(&cluster).await?;
            if !stale.is_empty() {
                bail!("copies left current during {volume} at iodepth {iodepth}: {stale:?}");
            }
        }
    }
    // A fresh volume's first second, when every write is a unit's first, against a warm one.
    cluster.create_volume("fresh", "10G", "2", "64M")?;
    let fresh = vbs_bench(&cluster, "fresh", 32, 1)?;
    let _fill = vbs_bench(&cluster, "fresh", 32, runtime)?;
    let warm = vbs_bench(&cluster, "fresh", 32, 1)?;
    let stale = not_current(&cluster).await?;
    if !stale.is_empty() {
        bail!("copies left current during the first writes: {stale:?}");
    }

    println!("| what | IOPS | p50 us | p99 us |");
    println!("| --- | --- | --- | --- |");
    for (name, v) in [
        ("engine, iodepth 1", &engine_1),
        ("engine, iodepth 32", &engine_32),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} |",
            f(v, "iops"),
            f(v, "latency_us_p50"),
            f(v, "latency_us_p99")
        );
    }
    for (name, v) in [
        ("vbs, replicas 2, 64 slices, iodepth 1", &vbs[0]),
        ("vbs, replicas 2, 64 slices, iodepth 32", &vbs[1]),
        ("vbs, replicas 2, 1 slice, iodepth 1", &vbs[2]),
        ("vbs, replicas 2, 1 slice, iodepth 32", &vbs[3]),
        ("vbs, 160 slices, fresh, first second, iodepth 32", &fresh),
        ("vbs, 160 slices, warm, one second, iodepth 32", &warm),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} |",
            f(v, "iops"),
            f(v, "latency_us_p50"),
            f(v, "latency_us_p99")
        );
    }
    println!();
    println!(
        "raw fdatasync p50 (beside the engine): {} us",
        f(&engine_1, "raw_fdatasync_us_p50")
    );
    println!(
        "engine p50 / raw fdatasync p50 at iodepth 1: {:.2}",
        f(&engine_1, "ratio_p50")
    );
    println!(
        "engine IOPS iodepth 32 / iodepth 1: {:.1}",
        f(&engine_32, "iops") / f(&engine_1, "iops")
    );
    println!(
        "vbs IOPS iodepth 32, 64 slices / 1 slice: {:.2}",
        f(&vbs[1], "iops") / f(&vbs[3], "iops")
    );
    println!(
        "first writes: fresh 160-slice volume's first second / warm second: {:.2}",
        f(&fresh, "iops") / f(&warm, "iops")
    );
    println!("every copy stayed current through every row");
    println!(
        "vbs IOPS iodepth 32 / engine IOPS iodepth 32: {:.2} (64 slices), {:.2} (1 slice)",
        f(&vbs[1], "iops") / f(&engine_32, "iops"),
        f(&vbs[3], "iops") / f(&engine_32, "iops")
    );
    println!(
        "two engines at iodepth 32 at once: {:.0} and {:.0} IOPS; vbs IOPS iodepth 32 / the \
         slower of the two: {:.2} (64 slices), {:.2} (1 slice)",
        f(&pair_32[0], "iops"),
        f(&pair_32[1], "iops"),
        f(&vbs[1], "iops") / pair_iops,
        f(&vbs[3], "iops") / pair_iops
    );
    match floor {
        Some(floor) => {
            println!("floor: {floor}");
            println!(
                "vbs p50 at iodepth 1 / rf2_floor_us: {:.2} (64 slices), {:.2} (1 slice)",
                f(&vbs[0], "latency_us_p50") / f(&floor, "rf2_floor_us"),
                f(&vbs[2], "latency_us_p50") / f(&floor, "rf2_floor_us")
            );
        }
        None => {
            println!("floor: shared/tools/floor.py not found next to the workspace; not measured")
        }
    }
    Ok(())
}
