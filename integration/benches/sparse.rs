//! Copying a volume out with block status: `qemu-img convert` and `nbdcopy` of a 16 GiB volume
//! with 64 MiB written, beside the same of a 16 GiB volume written full, in one run. The NBD
//! export's `base:allocation` context tells them where the holes are, so a mostly empty volume
//! should copy in time proportional to its data, not its size.
//!
//! Run: `cargo bench -p integration --bench sparse` (release build; about 32 GiB of disk for
//! the full volume's two copies). It installs Debian's qemu-utils, libnbd-bin and fio when they
//! are missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use integration::gateway::NbdGateway;
use integration::{Cluster, ClusterOptions};

const SIZE: &str = "16G";
const SIZE_BYTES: u64 = 16 << 30;
/// The mostly empty volume: 64 MiB in 1 MiB pieces spread over the whole volume.
const SPARSE_PIECES: u64 = 64;

fn tool(program: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    integration::tools::ensure(program, package)
}

fn run(program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` and returns how long it took.
fn timed(program: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    run(program, args)?;
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let qemu_img = tool("qemu-img", "qemu-utils")?;
    let qemu_io = tool("qemu-io", "qemu-utils")?;
    let nbdcopy = tool("nbdcopy", "libnbd-bin")?;
    let nbdinfo = tool("nbdinfo", "libnbd-bin")?;
    let fio = tool("fio", "fio")?;
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })?;
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    for name in ["sparse", "full"] {
        let out = cluster.vbs(&["volume", "create", name, "--size", SIZE, "--replicas", "2"])?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let gateway = NbdGateway::start(&cluster, "sparse").await?;
    let url = |name: &str| format!("nbd://{}/{name}", gateway.addr);

    // The sparse volume: 1 MiB every 256 MiB.
    let stride = SIZE_BYTES / SPARSE_PIECES;
    let commands: Vec<String> = (0..SPARSE_PIECES)
        .map(|i| format!("write -P 0x5a {} 1M", i * stride + 4096 * i))
        .collect();
    let mut args = vec!["-f".to_string(), "raw".into(), url("sparse")];
    for command in &commands {
        args.extend(["-c".to_string(), command.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&qemu_io, &args)?;

    // The full volume, written sequentially in 1 MiB writes of non-zero data.
    let started = Instant::now();
    run(
        &fio,
        &[
            "--name=fill",
            "--ioengine=nbd",
            &format!("--uri={}", url("full")),
            "--rw=write",
            "--bs=1M",
            "--iodepth=8",
            &format!("--size={SIZE}"),
            "--buffer_pattern=0xa5",
        ],
    )?;
    let fill = started.elapsed();
    println!(
        "filled the full volume: {SIZE} in {:.1} s ({:.0} MB/s)",
        fill.as_secs_f64(),
        SIZE_BYTES as f64 / fill.as_secs_f64() / 1e6
    );

    println!(
        "| volume | data | nbdinfo --map | qemu-img convert to a raw file | nbdcopy to null: |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for name in ["sparse", "full"] {
        let map = timed(&nbdinfo, &["--map", &url(name)])?;
        let out = cluster.dir.path().join(format!("{name}.raw"));
        let out_path = out.to_str().context("a UTF-8 path")?;
        let convert = timed(
            &qemu_img,
            &["convert", "-f", "raw", "-O", "raw", &url(name), out_path],
        )?;
        std::fs::remove_file(&out).context("removing the copy")?;
        let copy = timed(&nbdcopy, &[&url(name), "null:"])?;
        let data = if name == "sparse" {
            format!("{} MiB", SPARSE_PIECES)
        } else {
            SIZE.to_string()
        };
        println!(
            "| {name} ({SIZE}) | {data} | {:.2} s | {:.1} s | {:.1} s |",
            map.as_secs_f64(),
            convert.as_secs_f64(),
            copy.as_secs_f64()
        );
    }
    Ok(())
}
