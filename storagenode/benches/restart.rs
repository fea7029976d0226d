//! Restart time: how long a device holding many units and much written log takes to open, which
//! is the time a restarted storage node needs before it serves.
//!
//! Builds a device of `VBS_RESTART_UNITS` units (default 1000) and writes `VBS_RESTART_GIB` GiB of
//! 4 KiB blocks (default 20) spread over them, with syncs off to build it quickly (what is on disk
//! is the same), writes a checkpoint and then 64 MiB more, then opens it cold (page cache dropped
//! when run as root) and warm, first from the checkpoint, then with the checkpoint removed (the
//! whole log read), and prints the figures. The data directory is `VBS_RESTART_DIR` (default a temporary directory under
//! `target/`), removed at the end.
//!
//! Run: `cargo bench -p storagenode --bench restart`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use storagenode::engine::{Device, DeviceOptions, Op};
use vbs_wire::types::{Generation, Lba, UnitId, BLOCK_BYTES};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn drop_caches() -> bool {
    // Dirty pages first, or they stay cached.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// The process's resident memory, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() -> anyhow::Result<()> {
    let units = env("VBS_RESTART_UNITS", 1000);
    let gib = env("VBS_RESTART_GIB", 20);
    let base = std::env::var("VBS_RESTART_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    let dir = tempfile::tempdir_in(base)?;
    let options = DeviceOptions {
        sync: false,
        ..DeviceOptions::default()
    };
    let blocks = gib * (1 << 30) / BLOCK_BYTES;
    let unit_bytes = 1u64 << 30;
    println!(
        "restart bench: {units} units of 1 GiB, {gib} GiB of 4 KiB writes, in {}",
        dir.path().display()
    );
    let started = Instant::now();
    {
        let (device, _) = Device::open_dir(dir.path(), &options)?;
        let device = Arc::new(device);
        let before = rss();
        let handles: Vec<Arc<_>> = (0..units)
            .map(|i| device.create_unit(UnitId::new(1 + i / 100, (i % 100) as u32), unit_bytes))
            .collect::<Result<_, _>>()?;
        println!(
            "memory per unit with no writes: {:.1} KiB (resident, over {units} units)",
            rss().saturating_sub(before) as f64 / units as f64 / 1024.0
        );
        let data = Bytes::from(vec![0x5au8; BLOCK_BYTES as usize]);
        let writers = 4u64;
        std::thread::scope(|scope| {
            for w in 0..writers {
                let handles = &handles;
                let data = data.clone();
                scope.spawn(move || {
                    let mut n = w;
                    while n < blocks {
                        let unit = &handles[(n % units) as usize];
                        let lba = (n / units) % (unit_bytes / BLOCK_BYTES);
                        let ops = (0..64)
                            .map(|i| Op::Write {
                                lba: Lba((lba + i) % (unit_bytes / BLOCK_BYTES)),
                                data: data.clone(),
                            })
                            .collect();
                        unit.append(Generation(1), ops).expect("append");
                        n += writers * 64;
                    }
                });
            }
        });
        let report = device.checkpoint()?;
        println!(
            "checkpoint: {:.1} MB for {} units, written in {} ms",
            report.bytes as f64 / 1e6,
            report.units,
            report.millis
        );
        // Some log after the checkpoint, as on a node that ran on after it.
        for n in 0..(64 << 20) / BLOCK_BYTES / 64 {
            let unit = &handles[(n % units) as usize];
            let ops = (0..64)
                .map(|i| Op::Write {
                    lba: Lba(i),
                    data: data.clone(),
                })
                .collect();
            unit.append(Generation(1), ops)?;
        }
    }
    println!("built in {:.1} s", started.elapsed().as_secs_f64());
    for (from, run) in [
        ("checkpoint", "cold"),
        ("checkpoint", "warm"),
        ("whole log", "cold"),
        ("whole log", "warm"),
    ] {
        if from == "whole log" {
            let _ = std::fs::remove_file(dir.path().join("checkpoint"));
        }
        let run = if run == "cold" && !drop_caches() {
            "not cold (not root)"
        } else {
            run
        };
        let began = Instant::now();
        let (device, _) = Device::open_dir(dir.path(), &options)?;
        let opened = began.elapsed();
        let (stats, live) = device.log_stats();
        println!(
            "open from the {from} ({run}): {:.2} s for {} units, {:.1} GiB of log ({:.1} GiB live), {:.2} s per GiB",
            opened.as_secs_f64(),
            device.units().len(),
            stats.log_bytes as f64 / (1u64 << 30) as f64,
            live as f64 / (1u64 << 30) as f64,
            opened.as_secs_f64() / (stats.log_bytes as f64 / (1u64 << 30) as f64)
        );
    }
    Ok(())
}
