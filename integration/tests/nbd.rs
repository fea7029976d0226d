//! `vbs nbd` driven by block tools nobody here wrote: qemu-io, qemu-img (Debian's qemu-utils)
//! and e2fsprogs, against a real cluster.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use integration::gateway::NbdGateway;
use integration::{Cluster, ClusterOptions};

const STARTUP: Duration = Duration::from_secs(30);

/// `program` from Debian's `package`, installed when missing.
fn tool(program: &str, package: &str) -> String {
    integration::tools::ensure(program, package)
        .unwrap_or_else(|e| panic!("{program} is needed (Debian package {package}): {e:#}"))
        .to_string_lossy()
        .into_owned()
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn cluster_with_export(volume: &str, size: &str) -> (Cluster, NbdGateway, String) {
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    let out = cluster
        .vbs(&[
            "volume",
            "create",
            volume,
            "--size",
            size,
            "--replicas",
            "2",
            "--slice-size",
            "16M",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gateway = NbdGateway::start(&cluster, volume).await.unwrap();
    let url = gateway.url.clone();
    (cluster, gateway, url)
}

fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_read_back_including_unaligned_ones() {
    let qemu_io = tool("qemu-io", "qemu-utils");
    let (_cluster, _gateway, url) = cluster_with_export("pat", "64M").await;
    let out = run(
        &qemu_io,
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0x5c 20M 64k",
            "-c",
            "write -P 0xcd 1536 1000",
            "-c",
            "write -z 40M 8k",
            "-c",
            "read -P 0xab 0 1536",
            "-c",
            "read -P 0xcd 1536 1000",
            "-c",
            "read -P 0xab 2536 1046040",
            "-c",
            "read -P 0x5c 20M 64k",
            "-c",
            "read -P 0 40M 8k",
            "-c",
            "flush",
            "-c",
            "discard 20M 64k",
            "-c",
            "read -P 0 20M 64k",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("verification failed"), "{text}");
    assert!(!text.contains("failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_converted_in_and_out_is_identical_and_ext4_checks_clean() {
    let qemu_img = tool("qemu-img", "qemu-utils");
    let mkfs = tool("mkfs.ext4", "e2fsprogs");
    let fsck = tool("e2fsck", "e2fsprogs");
    let (cluster, _gateway, url) = cluster_with_export("img", "64M").await;
    let dir = cluster.dir.path();

    // A filesystem image with files in it, made without mounting anything.
    let image = dir.join("fs.img");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..20 {
        let data: Vec<u8> = (0..100_000u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8)
            .collect();
        std::fs::write(files.join(format!("file-{i}")), data).unwrap();
    }
    run(
        &qemu_img,
        &["create", "-f", "raw", image.to_str().unwrap(), "64M"],
    );
    run(
        &mkfs,
        &[
            "-q",
            "-F",
            "-d",
            files.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );

    run(
        &qemu_img,
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            image.to_str().unwrap(),
            &url,
        ],
    );
    let back = dir.join("back.img");
    run(
        &qemu_img,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sha256(&image),
        sha256(&back),
        "the image did not come back identical"
    );
    run(&fsck, &["-fn", back.to_str().unwrap()]);

    // qemu-img bench: durable 4 KiB writes at depth 32, a flush every 32.
    let out = run(
        &qemu_img,
        &[
            "bench",
            "-f",
            "raw",
            "-t",
            "none",
            "-w",
            "-s",
            "4096",
            "-c",
            "2000",
            "-d",
            "32",
            "--flush-interval=32",
            &url,
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Run completed"));
}
