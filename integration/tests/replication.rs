//! The replicated write path with real processes: 3 managers, 3 storage nodes, the `vbs` CLI and
//! the client library.

use std::collections::BTreeMap;
use std::time::Duration;

use integration::gateway::tagged_block;
use integration::{wait_until, Cluster, ClusterOptions};
use rand::{Rng, RngCore, SeedableRng};
use vbs_wire::api::{ClusterStatus, CopyStatus, VolumeMap};
use vbs_wire::conn::{Connection, DataError};
use vbs_wire::proto::{ClientRequest, ErrorCode, PeerKind, PeerRequest, Request};
use vbs_wire::types::{Generation, Lba};

const STARTUP: Duration = Duration::from_secs(30);

fn cluster(storage_nodes: u64) -> Cluster {
    let options = ClusterOptions {
        storage_nodes,
        ..ClusterOptions::default()
    };
    Cluster::start(options).expect("cluster starts")
}

/// Runs `vbs ARGS`, which must succeed; returns its stdout.
fn vbs_ok(cluster: &Cluster, args: &[&str]) -> Vec<u8> {
    let out = cluster.vbs(args).expect("vbs runs");
    assert!(
        out.status.success(),
        "vbs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `vbs ARGS`, which must fail with one line on stderr containing `words`.
fn vbs_refused(cluster: &Cluster, args: &[&str], words: &str) {
    let out = cluster.vbs(args).expect("vbs runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "vbs {args:?} should fail");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line for {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(words),
        "vbs {args:?}: expected {words:?} in {stderr:?}"
    );
}

async fn volume_map(cluster: &Cluster, name: &str) -> VolumeMap {
    let status: ClusterStatus = cluster.status().await.expect("status");
    status
        .volumes
        .into_iter()
        .find(|v| v.name == name)
        .expect("volume exists")
}

#[tokio::test]
async fn data_written_through_the_cli_reads_back_and_every_copy_ends_at_the_same_vba() {
    let mut cluster = cluster(3);
    cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("storage nodes up");
    vbs_ok(
        &cluster,
        &[
            "volume",
            "create",
            "vol",
            "--size",
            "8M",
            "--replicas",
            "2",
            "--slice-size",
            "2M",
        ],
    );
    let map = volume_map(&cluster, "vol").await;
    assert_eq!(map.slices.len(), 4);

    let seed: u64 = rand::random();
    println!("seed {seed} (replay: the data and offsets below derive from it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = vec![0u8; 8 << 20];
    rng.fill_bytes(&mut model);
    let dir = cluster.dir.path().to_path_buf();
    let whole = dir.join("whole.bin");
    std::fs::write(&whole, &model).unwrap();
    vbs_ok(
        &cluster,
        &[
            "write",
            "vol",
            "--offset",
            "0",
            "--file",
            whole.to_str().unwrap(),
        ],
    );
    // Overwrites at random places, some across slice boundaries, one through stdin.
    for i in 0..12 {
        let blocks = rng.random_range(1..=64u64);
        let offset = rng.random_range(0..(2048 - blocks)) * 4096;
        let mut data = vec![0u8; (blocks * 4096) as usize];
        rng.fill_bytes(&mut data);
        model[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        let offset = offset.to_string();
        if i == 0 {
            let out = cluster
                .vbs_with_input(&["write", "vol", "--offset", &offset], Some(&data))
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        } else {
            let file = dir.join(format!("part-{i}.bin"));
            std::fs::write(&file, &data).unwrap();
            vbs_ok(
                &cluster,
                &[
                    "write",
                    "vol",
                    "--offset",
                    &offset,
                    "--file",
                    file.to_str().unwrap(),
                ],
            );
        }
    }
    let out_file = dir.join("read.bin");
    vbs_ok(
        &cluster,
        &[
            "read",
            "vol",
            "--offset",
            "0",
            "--length",
            "8M",
            "--out",
            out_file.to_str().unwrap(),
        ],
    );
    let read = std::fs::read(&out_file).unwrap();
    assert!(
        read == model,
        "the volume does not read back what was written (seed {seed})"
    );
    let stdout = vbs_ok(
        &cluster,
        &["read", "vol", "--offset", "4k", "--length", "8k"],
    );
    assert_eq!(stdout, &model[4096..12288]);

    // Every copy of every slice holds the same history: compare the logs offline.
    for name in cluster.storage_names() {
        cluster.storage_node(&name).unwrap().kill();
    }
    let mut per_node = BTreeMap::new();
    for name in cluster.storage_names() {
        per_node.insert(name.clone(), cluster.unit_last_vbas(&name).unwrap());
    }
    for slice in &map.slices {
        let unit = slice.unit.to_string();
        let vbas: Vec<u64> = slice
            .copies
            .iter()
            .map(|c| per_node[&c.node.0][&unit])
            .collect();
        assert!(vbas[0] > 0, "slice {unit} was written");
        assert!(
            vbas.iter().all(|v| *v == vbas[0]),
            "copies of {unit} end at VBAs {vbas:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_secondary_is_marked_stale_and_no_acknowledged_write_is_lost() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    // A long lease, so the copy is seen stale (the primary's report) before the failure
    // detector would call its node down.
    let options = ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "30s".into()],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(options).expect("cluster starts");
    cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("storage nodes up");
    vbs_ok(
        &cluster,
        &[
            "volume",
            "create",
            "survivor",
            "--size",
            "4M",
            "--replicas",
            "2",
            "--slice-size",
            "4M",
        ],
    );
    let map = volume_map(&cluster, "survivor").await;
    let slice = map.slices[0].clone();
    let secondary = slice
        .copies
        .iter()
        .find(|c| c.node != slice.primary)
        .unwrap()
        .node
        .clone();

    let managers = Arc::new(
        vbs_wire::managers::Managers::parse(&cluster.managers_arg(), Duration::from_secs(5))
            .unwrap(),
    );
    let volume = Arc::new(
        client::volume::Volume::open(
            managers,
            "survivor",
            client::volume::VolumeOptions::default(),
        )
        .await
        .expect("volume opens"),
    );
    // One writer, so the last acknowledged write of each block is the newest one.
    let acked = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (volume, acked, count, stop) =
            (volume.clone(), acked.clone(), count.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tag = 0u64;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tag += 1;
                let block = tag % 1024;
                match volume.write(block * 4096, tagged_block(tag)).await {
                    Ok(()) => {
                        acked.lock().unwrap().insert(block, tag);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        })
    };
    let acks = |n: u64| {
        let count = count.clone();
        async move { Ok::<_, anyhow::Error>((count.load(Ordering::Relaxed) >= n).then_some(())) }
    };
    wait_until("200 acknowledged writes", STARTUP, || acks(200))
        .await
        .unwrap();
    cluster.storage_node(&secondary.0).unwrap().kill();
    let at_kill = count.load(Ordering::Relaxed);
    wait_until(
        "writes to go on after the kill",
        Duration::from_secs(30),
        || acks(at_kill + 200),
    )
    .await
    .unwrap();
    wait_until(
        "the killed copy to be stale",
        Duration::from_secs(20),
        || async {
            let status = cluster.status().await?;
            let copy = status.volumes[0].slices[0]
                .copies
                .iter()
                .find(|c| c.node == secondary)
                .cloned();
            Ok::<_, anyhow::Error>(copy.filter(|c| c.status == CopyStatus::Stale).map(|_| ()))
        },
    )
    .await
    .unwrap();
    let table = String::from_utf8(vbs_ok(&cluster, &["status"])).unwrap();
    assert!(
        table.contains("stale"),
        "vbs status shows the stale copy:\n{table}"
    );
    stop.store(true, Ordering::Relaxed);
    let failures = writer.await.unwrap();
    assert!(failures.is_empty(), "writes failed: {failures:?}");

    // Every acknowledged write is on the surviving primary.
    let acked = acked.lock().unwrap().clone();
    let data = volume.read(0, 1024 * 4096).await.expect("read back");
    for (block, tag) in acked {
        let got = &data[(block * 4096) as usize..((block + 1) * 4096) as usize];
        assert_eq!(
            got,
            &tagged_block(tag)[..],
            "block {block} lost write {tag}"
        );
    }
}

#[tokio::test]
async fn writes_with_a_stale_generation_are_refused() {
    let cluster = cluster(2);
    cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("storage nodes up");
    vbs_ok(
        &cluster,
        &[
            "volume",
            "create",
            "fenced",
            "--size",
            "1M",
            "--replicas",
            "2",
            "--slice-size",
            "1M",
        ],
    );
    let map = volume_map(&cluster, "fenced").await;
    let slice = &map.slices[0];
    let primary = slice
        .copies
        .iter()
        .find(|c| c.node == slice.primary)
        .unwrap();
    let connection = Connection::connect(
        &primary.addr,
        PeerKind::Client,
        "test",
        Duration::from_secs(2),
    )
    .await
    .expect("connects to the primary");
    let write = |generation: Generation| {
        Request::Client(ClientRequest::Write {
            unit: slice.unit,
            generation,
            lba: Lba(0),
            data: bytes::Bytes::from(vec![7u8; 4096]),
        })
    };
    // The current generation is accepted once the node has learned its units.
    wait_until("the primary to accept writes", STARTUP, || async {
        match connection
            .call(write(slice.generation), Duration::from_secs(5))
            .await
        {
            Ok(_) => Ok(Some(())),
            Err(e)
                if e.remote().is_some_and(|r| {
                    matches!(r.code, ErrorCode::UnknownUnit | ErrorCode::Unavailable)
                }) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap();
    let older = Generation(slice.generation.0 - 1);
    match connection.call(write(older), Duration::from_secs(5)).await {
        Err(DataError::Remote { error, .. }) => {
            assert_eq!(error.code, ErrorCode::StaleGeneration, "{error}");
            assert_eq!(error.detail, slice.generation.0);
        }
        other => panic!("a write of generation {older} must be refused, got {other:?}"),
    }
    // The secondary refuses records of an older generation too.
    let secondary = slice
        .copies
        .iter()
        .find(|c| c.node != slice.primary)
        .unwrap();
    let peer = Connection::connect(
        &secondary.addr,
        PeerKind::Node,
        "test",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let replicate = Request::Peer(PeerRequest::Replicate {
        unit: slice.unit,
        generation: older,
        committed: vbs_wire::types::Vba(0),
        records: vec![vbs_wire::proto::WireRecord {
            vba: vbs_wire::types::Vba(2),
            generation: older,
            body: vbs_wire::proto::RecordBody::Write {
                lba: Lba(1),
                data: bytes::Bytes::from(vec![1u8; 4096]),
            },
        }],
    });
    let refused = peer
        .call(replicate, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(
        refused.remote().map(|e| e.code),
        Some(ErrorCode::StaleGeneration),
        "{refused}"
    );
    let status = cluster.status().await.unwrap();
    let copy = &status.volumes[0].slices[0].copies;
    assert!(
        copy.iter().all(|c| c.status == CopyStatus::Current),
        "nothing was marked: {copy:?}"
    );
}

#[tokio::test]
async fn bad_cli_input_gets_one_clear_line() {
    let cluster = cluster(2);
    cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("storage nodes up");
    vbs_ok(
        &cluster,
        &[
            "volume",
            "create",
            "small",
            "--size",
            "1M",
            "--replicas",
            "2",
        ],
    );
    vbs_refused(
        &cluster,
        &["read", "nosuch", "--offset", "0", "--length", "4k"],
        "nosuch",
    );
    vbs_refused(
        &cluster,
        &["read", "small", "--offset", "100", "--length", "4k"],
        "4096",
    );
    vbs_refused(
        &cluster,
        &["volume", "create", "typo", "--size", "1Gx"],
        "suffix",
    );
    vbs_refused(
        &cluster,
        &["read", "small", "--offset", "2M", "--length", "4k"],
        "beyond",
    );
    let unreachable = std::process::Command::new(integration::binaries::binary("vbs").unwrap())
        .args(["--managers", "127.0.0.1:1", "status"])
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
}
