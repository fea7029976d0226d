//! A device that fills up under a running cluster: each storage node's data directory is a small
//! tmpfs made by the test, and another file fills the primary's during writes. Writes are refused
//! with an error of their own kind (the CLI names the node, NBD says ENOSPC), nothing
//! acknowledged is lost, the copy stays current, and writes go on once the file is deleted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration::{wait_until, Cluster, ClusterOptions};
use vbs_wire::api::CopyStatus;

const STARTUP: Duration = Duration::from_secs(30);
const VOLUME_BYTES: usize = 8 << 20;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} (the test runs as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file, until it refuses more.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("another-tenant");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x77u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    // The last partial chunk may have left a few bytes: fill them one at a time.
    while file.write_all(&[0x77]).is_ok() {}
    let _ = file.sync_all();
    path
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..VOLUME_BYTES)
        .map(|i| (i / 4096) as u8 ^ seed.wrapping_add(i as u8))
        .collect()
}

fn write(cluster: &Cluster, data: &[u8]) -> std::process::Output {
    let file = cluster.dir.path().join("data");
    std::fs::write(&file, data).unwrap();
    cluster
        .vbs(&[
            "write",
            "full",
            "--offset",
            "0",
            "--file",
            file.to_str().unwrap(),
        ])
        .unwrap()
}

fn read_all(cluster: &Cluster) -> Vec<u8> {
    let out = cluster
        .vbs(&[
            "read",
            "full",
            "--offset",
            "0",
            "--length",
            &VOLUME_BYTES.to_string(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_device_refuses_writes_clearly_keeps_its_copy_current_and_recovers_when_freed() {
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 0,
        ..ClusterOptions::default()
    })
    .unwrap();
    let mut mounts = Vec::new();
    for name in ["n1", "n2"] {
        mounts.push(Tmpfs::mount(&cluster.storage_data_dir(name), "24M"));
        cluster
            .add_storage_node(name, &ClusterOptions::default().storage_args)
            .unwrap();
    }
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    cluster.create_volume("full", "8M", "2", "8M").unwrap();
    let status = cluster.status().await.unwrap();
    let slice = &status.volumes[0].slices[0];
    let primary = slice.primary.clone();
    let primary_dir = cluster.storage_data_dir(&primary.0);

    let first = pattern(1);
    let out = write(&cluster, &first);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Another tenant of the primary's filesystem writes it full.
    let filler = fill(&primary_dir);
    let second = pattern(2);
    let out = write(&cluster, &second);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("vbs write on a full device: {stderr}");
    assert!(
        !out.status.success(),
        "a write of 8 MiB fit on a full device"
    );
    let expected = format!("no space left on storage node {primary}");
    assert!(
        stderr.contains(&expected),
        "{expected:?} missing from: {stderr}"
    );
    assert!(
        stderr.contains(&primary_dir.display().to_string()),
        "{stderr}"
    );

    // The managers hear of it with the node's next heartbeat: the device needs attention, and
    // the node takes no new copies, so a new volume of two copies does not fit on two nodes.
    let summary = wait_until(
        "vbs status to name the full device",
        Duration::from_secs(10),
        || async {
            let out = cluster.vbs(&["status"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok::<_, String>(
                text.contains("past the full threshold (95%)")
                    .then_some(text),
            )
        },
    )
    .await
    .unwrap();
    assert!(
        summary.contains(&format!(
            "storage node {primary}: device {}",
            primary_dir.display()
        )),
        "{summary}"
    );
    let refused = cluster.create_volume("more", "4M", "2", "4M").unwrap_err();
    assert!(
        refused.to_string().contains("--full-percent"),
        "{refused:#}"
    );

    // Through NBD, the same refusal is ENOSPC.
    let gateway = integration::gateway::NbdGateway::start(&cluster, "full")
        .await
        .unwrap();
    let qemu_io = integration::tools::ensure("qemu-io", "qemu-utils").expect("qemu-io");
    let out = Command::new(qemu_io)
        .args(["-f", "raw", &gateway.url, "-c", "write -P 0x33 0 8M"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("No space left on device"), "{text}");
    drop(gateway);

    // The copy is still current, the node still serves, and every block holds one of the
    // writes (the first, or the refused second where a part of it went through first).
    let status = cluster.status().await.unwrap();
    for copy in &status.volumes[0].slices[0].copies {
        assert_eq!(copy.status, CopyStatus::Current, "{copy:?}");
    }
    assert!(cluster.storage_node_running(&primary.0));
    let now = read_all(&cluster);
    for (i, block) in now.chunks(4096).enumerate() {
        let range = i * 4096..(i + 1) * 4096;
        assert!(
            block == &first[range.clone()]
                || block == &second[range.clone()]
                || block.iter().all(|b| *b == 0x33),
            "block {i} holds neither write"
        );
    }

    // Space comes back: the same write succeeds without anyone touching vbs.
    std::fs::remove_file(&filler).unwrap();
    let third = pattern(3);
    wait_until(
        "a write after space came back",
        Duration::from_secs(30),
        || async {
            let out = write(&cluster, &third);
            Ok::<_, String>(out.status.success().then_some(()))
        },
    )
    .await
    .unwrap();
    assert!(
        read_all(&cluster) == third,
        "the volume reads back the last write"
    );
    wait_until(
        "the node to take copies again",
        Duration::from_secs(10),
        || async {
            Ok::<_, String>(
                cluster
                    .create_volume("more", "4M", "2", "4M")
                    .is_ok()
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();

    // Nothing half-written is left in the log: a restarted primary reads it all back.
    let node = cluster.storage_node(&primary.0).unwrap();
    node.kill();
    node.restart().unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    assert!(
        read_all(&cluster) == third,
        "the volume reads back after a restart"
    );
    drop(cluster);
    drop(mounts);
}
