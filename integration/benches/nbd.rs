//! `vbs nbd` (replicas 2) beside `qemu-nbd --cache=none` and `nbdkit file` serving raw files on the
//! same disk, in one run, with the same `qemu-img bench` flags for all three, every side durable:
//!
//! - 4 KiB writes at depth 1 with a flush after every write;
//! - 4 KiB writes at depth 32 with a flush every 32;
//! - 1 MiB sequential writes at depth 8 with a flush every 8.
//!
//! Run: `cargo bench -p integration --bench nbd` (release build). It installs Debian's qemu-utils
//! and nbdkit when they are missing.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use integration::cluster::free_port;
use integration::{wait_until, Cluster, ClusterOptions};

struct Server {
    name: &'static str,
    url: String,
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn listening(port: u16) -> anyhow::Result<()> {
    wait_until("a server to listen", Duration::from_secs(30), || async {
        Ok::<_, anyhow::Error>(
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ()),
        )
    })
    .await
}

fn tool(program: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    integration::tools::ensure(program, package)
}

fn raw_file(path: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    let out = Command::new(tool("qemu-img", "qemu-utils")?)
        .args(["create", "-f", "raw"])
        .arg(path)
        .arg(bytes.to_string())
        .output()
        .context("qemu-img create (qemu-utils)")?;
    if !out.status.success() {
        bail!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Written through once, so neither server pays for allocating space during the measurement.
    let out = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "conv=fsync,notrunc"])
        .arg(format!("of={}", path.display()))
        .arg(format!("count={}", bytes >> 20))
        .output()?;
    if !out.status.success() {
        bail!("dd: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `qemu-img bench` against `url`; returns operations per second and MB/s.
fn bench(
    url: &str,
    size: &str,
    count: u32,
    depth: u32,
    flush_every: Option<u32>,
) -> anyhow::Result<(f64, f64)> {
    let mut cmd = Command::new(tool("qemu-img", "qemu-utils")?);
    cmd.args(["bench", "-f", "raw", "-t", "none", "-w", "-s", size])
        .args(["-c", &count.to_string(), "-d", &depth.to_string()]);
    if let Some(every) = flush_every {
        cmd.arg(format!("--flush-interval={every}"));
    }
    let out = cmd.arg(url).output().context("qemu-img bench")?;
    if !out.status.success() {
        bail!(
            "qemu-img bench {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let seconds: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Run completed in ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no run time in {text}"))?;
    let bytes = vbs_wire::size::parse_size(size).map_err(anyhow::Error::msg)? * u64::from(count);
    Ok((f64::from(count) / seconds, bytes as f64 / seconds / 1e6))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        storage_args: Vec::new(),
        ..ClusterOptions::default()
    })?;
    cluster.wait_for_storage_up(Duration::from_secs(60)).await?;
    let out = cluster.vbs(&[
        "volume",
        "create",
        "cmp",
        "--size",
        "2G",
        "--replicas",
        "2",
        "--slice-size",
        "2G",
    ])?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = cluster.dir.path();
    let mut servers = Vec::new();

    let port = free_port()?;
    let child = Command::new(integration::binaries::binary("vbs")?)
        .args([
            "--managers",
            &cluster.managers_arg(),
            "nbd",
            "cmp",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    servers.push(Server {
        name: "vbs nbd, replicas 2",
        url: format!("nbd://127.0.0.1:{port}/cmp"),
        child,
    });
    listening(port).await?;

    let qemu_file = dir.join("qemu-nbd.img");
    raw_file(&qemu_file, 2 << 30)?;
    let port = free_port()?;
    let child = Command::new(tool("qemu-nbd", "qemu-utils")?)
        .args([
            "-f",
            "raw",
            "--cache=none",
            "--aio=threads",
            "--persistent",
            "-x",
            "cmp",
            "-b",
            "127.0.0.1",
        ])
        .args(["-p", &port.to_string()])
        .arg(&qemu_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("qemu-nbd (qemu-utils)")?;
    servers.push(Server {
        name: "qemu-nbd --cache=none",
        url: format!("nbd://127.0.0.1:{port}/cmp"),
        child,
    });
    listening(port).await?;

    let nbdkit_file = dir.join("nbdkit.img");
    raw_file(&nbdkit_file, 2 << 30)?;
    let port = free_port()?;
    let child = Command::new(tool("nbdkit", "nbdkit")?)
        .args([
            "-f",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-e",
            "cmp",
            "file",
        ])
        .arg(format!("file={}", nbdkit_file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nbdkit (apt-get install nbdkit)")?;
    servers.push(Server {
        name: "nbdkit file",
        url: format!("nbd://127.0.0.1:{port}/cmp"),
        child,
    });
    listening(port).await?;

    println!("| server | 4k QD1, flush every write (IOPS) | 4k QD32, flush every 32 (IOPS) | 1M sequential QD8, flush every 8 (MB/s) |");
    println!("| --- | --- | --- | --- |");
    for server in &servers {
        let (qd1, _) = bench(&server.url, "4096", 2000, 1, Some(1))?;
        let (qd32, _) = bench(&server.url, "4096", 20000, 32, Some(32))?;
        let (_, seq) = bench(&server.url, "1M", 1000, 8, Some(8))?;
        println!("| {} | {qd1:.0} | {qd32:.0} | {seq:.0} |", server.name);
    }
    Ok(())
}
