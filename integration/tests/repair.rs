//! Read repair against real processes: bit rot made by flipping one byte of a record in a storage
//! node's log files, then read through the `vbs` CLI and through NBD (qemu-io). A copy whose
//! record fails its checksum gets it back from another current copy and the reader sees the
//! right data; with no good copy left, the read fails with an error of its own (NBD: EIO).

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::cluster::free_port;
use integration::gateway::{tagged_block, NbdGateway};
use integration::user::qemu_io;
use integration::{wait_until, Cluster, ClusterOptions};
use storagenode::engine::record::{HEADER_BYTES, RECORD_MAGIC};
use storagenode::engine::segment::SEGMENT_HEADER_BYTES;
use vbs_wire::types::NodeId;

const STARTUP: Duration = Duration::from_secs(30);
const BLOCK: u64 = 4096;

/// A cluster of 3 storage nodes, each with its own `/metrics`, and a volume `rot` of 4 slices
/// with `replicas` copies each. Returns the metrics address of each node.
async fn cluster(replicas: &str) -> (Cluster, Vec<(String, String)>) {
    cluster_with(replicas, &[]).await
}

/// [`cluster`], with `extra` arguments for every storage node.
async fn cluster_with(replicas: &str, extra: &[&str]) -> (Cluster, Vec<(String, String)>) {
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 0,
        ..ClusterOptions::default()
    })
    .unwrap();
    let mut metrics = Vec::new();
    for n in 1..=3 {
        let name = format!("n{n}");
        let addr = format!("127.0.0.1:{}", free_port().unwrap());
        let mut args = ClusterOptions::default().storage_args;
        args.extend(["--metrics-listen".to_string(), addr.clone()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        cluster.add_storage_node(&name, &args).unwrap();
        metrics.push((name, addr));
    }
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    cluster
        .create_volume("rot", "64M", replicas, "16M")
        .unwrap();
    (cluster, metrics)
}

/// Every log segment file under `dir`.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(segments(&path));
        } else if path.extension().is_some_and(|e| e == "seg") {
            found.push(path);
        }
    }
    found
}

/// Where the write record holding `data` is in node `node`'s log: the segment file and the
/// record's offset. Walks each segment record by record, as the format lays them out.
fn find_record(cluster: &Cluster, node: &NodeId, data: &[u8]) -> (PathBuf, u64) {
    for path in segments(&cluster.storage_data_dir(&node.0)) {
        let bytes = std::fs::read(&path).unwrap();
        let mut at = SEGMENT_HEADER_BYTES as usize;
        while at + HEADER_BYTES <= bytes.len() && bytes[at..at + 4] == RECORD_MAGIC.to_le_bytes() {
            let kind = bytes[at + 5];
            let length = u64::from_le_bytes(bytes[at + 48..at + 56].try_into().unwrap()) as usize;
            let data_bytes = if kind == 1 { length } else { 0 };
            let body = &bytes[at + HEADER_BYTES..(at + HEADER_BYTES + data_bytes).min(bytes.len())];
            if body == data {
                return (path, at as u64);
            }
            at += HEADER_BYTES + data_bytes;
        }
    }
    panic!("no record of the block on {node}");
}

/// Bit rot: flips one bit of the byte at `offset` of `file`.
fn flip(file: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], offset).unwrap();
    file.sync_all().unwrap();
}

/// Damages node `node`'s record of `data`: a byte of its data, or of its header (the LBA field).
fn damage(cluster: &Cluster, node: &NodeId, data: &[u8], header: bool) {
    let (file, at) = find_record(cluster, node, data);
    let offset = if header {
        at + 40
    } else {
        at + HEADER_BYTES as u64 + 1000
    };
    flip(&file, offset);
}

/// The value of `series` in the `/metrics` of the storage node at `addr`.
async fn metric(cluster: &Cluster, addr: &str, series: &str) -> u64 {
    let text = cluster
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

async fn damaged_records(cluster: &Cluster, addr: &str, outcome: &str) -> u64 {
    let series = format!("vbs_damaged_records_total{{outcome=\"{outcome}\"}}");
    metric(cluster, addr, &series).await
}

fn metrics_of<'a>(metrics: &'a [(String, String)], node: &NodeId) -> &'a str {
    &metrics.iter().find(|(name, _)| *name == node.0).unwrap().1
}

fn repair_lines(cluster: &Cluster, node: &NodeId) -> usize {
    std::fs::read_to_string(cluster.dir.path().join(format!("{}.log", node.0)))
        .unwrap()
        .matches("repaired a damaged record from another copy")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_damaged_on_the_primary_is_read_from_the_other_copy_and_repaired() {
    let (mut cluster, metrics) = cluster("2").await;
    let (primary, _) = cluster.copies_of("rot", 0).await;
    let in_data = tagged_block(0xd1);
    let in_header = tagged_block(0xd2);
    cluster.write_with_cli("rot", 3 * BLOCK, &in_data);
    cluster.write_with_cli("rot", 9 * BLOCK, &in_header);
    damage(&cluster, &primary, &in_data, false);
    damage(&cluster, &primary, &in_header, true);

    assert_eq!(
        cluster.read_with_cli("rot", 3 * BLOCK, BLOCK).unwrap(),
        in_data.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 9 * BLOCK, BLOCK).unwrap(),
        in_header.to_vec()
    );
    let addr = metrics_of(&metrics, &primary);
    assert_eq!(damaged_records(&cluster, addr, "repaired").await, 2);
    assert_eq!(damaged_records(&cluster, addr, "unrepaired").await, 0);
    assert_eq!(repair_lines(&cluster, &primary), 2);
    // Repaired in place: reading again finds nothing damaged.
    assert_eq!(
        cluster.read_with_cli("rot", 3 * BLOCK, BLOCK).unwrap(),
        in_data.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 9 * BLOCK, BLOCK).unwrap(),
        in_header.to_vec()
    );
    assert_eq!(damaged_records(&cluster, addr, "repaired").await, 2);
    // Repaired in place: killed, the node reads its whole log back at start, and serves.
    let node = cluster.storage_node(&primary.0).unwrap();
    node.kill();
    node.restart().unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    assert_eq!(
        cluster.read_with_cli("rot", 3 * BLOCK, BLOCK).unwrap(),
        in_data.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 9 * BLOCK, BLOCK).unwrap(),
        in_header.to_vec()
    );
    // Its copies resync; until they do, a damaged record would have no other current copy.
    wait_until("every copy current", Duration::from_secs(30), || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((integration::copies_not_current(&status) == 0).then_some(()))
    })
    .await
    .unwrap();

    // Through NBD, in slice 1: written and read by qemu-io.
    let gateway = NbdGateway::start(&cluster, "rot").await.unwrap();
    let offset = 16 << 20;
    let written = qemu_io(&gateway.url, &[&format!("write -P 0x5a {offset} 4k")]);
    assert!(written.contains("wrote 4096/4096"), "{written}");
    let (slice_primary, _) = cluster.copies_of("rot", 1).await;
    damage(&cluster, &slice_primary, &[0x5a; 4096], false);
    let read = qemu_io(&gateway.url, &[&format!("read -P 0x5a {offset} 4k")]);
    assert!(read.contains("read 4096/4096"), "{read}");
    assert!(!read.contains("fail") && !read.contains("error"), "{read}");
    let addr = metrics_of(&metrics, &slice_primary);
    assert!(damaged_records(&cluster, addr, "repaired").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_damaged_on_every_copy_fails_with_an_error_naming_it_and_eio_over_nbd() {
    let (cluster, metrics) = cluster("2").await;
    let (primary, secondaries) = cluster.copies_of("rot", 0).await;
    let secondary = &secondaries[0];
    let block = tagged_block(0xe1);
    cluster.write_with_cli("rot", 5 * BLOCK, &block);
    let beside = tagged_block(0xe2);
    cluster.write_with_cli("rot", 6 * BLOCK, &beside);
    damage(&cluster, &primary, &block, false);
    damage(&cluster, secondary, &block, true);

    let error = cluster.read_with_cli("rot", 5 * BLOCK, BLOCK).unwrap_err();
    eprintln!("vbs read of a block damaged on both copies: {error}");
    for part in [
        "read of volume \"rot\"",
        "block 5",
        "damaged on every copy tried",
        &secondary.0,
    ] {
        assert!(error.contains(part), "{part:?} missing from: {error}");
    }
    // The block beside it is not affected.
    assert_eq!(
        cluster.read_with_cli("rot", 6 * BLOCK, BLOCK).unwrap(),
        beside.to_vec()
    );
    let addr = metrics_of(&metrics, &primary);
    assert!(damaged_records(&cluster, addr, "unrepaired").await >= 1);
    assert_eq!(damaged_records(&cluster, addr, "repaired").await, 0);

    let gateway = NbdGateway::start(&cluster, "rot").await.unwrap();
    let read = qemu_io(&gateway.url, &[&format!("read {} 4k", 5 * BLOCK)]);
    assert!(read.contains("Input/output error"), "{read}");
}

/// Damage on the secondaries shows once one of them is primary: with the old primary killed, the
/// new one repairs its damaged record from the other secondary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_damaged_on_secondaries_are_repaired_by_whichever_becomes_primary() {
    let (mut cluster, metrics) = cluster("3").await;
    let (primary, secondaries) = cluster.copies_of("rot", 0).await;
    let (first, second) = (tagged_block(0xf1), tagged_block(0xf2));
    cluster.write_with_cli("rot", 2 * BLOCK, &first);
    cluster.write_with_cli("rot", 7 * BLOCK, &second);
    // Each secondary has one of the two damaged, the other intact.
    damage(&cluster, &secondaries[0], &first, false);
    damage(&cluster, &secondaries[1], &second, true);
    cluster.storage_node(&primary.0).unwrap().kill();

    assert_eq!(
        cluster.read_with_cli("rot", 2 * BLOCK, BLOCK).unwrap(),
        first.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 7 * BLOCK, BLOCK).unwrap(),
        second.to_vec()
    );
    let (new_primary, _) = cluster.copies_of("rot", 0).await;
    assert!(
        secondaries.contains(&new_primary),
        "{new_primary} took over"
    );
    let mut repaired = 0;
    for node in &secondaries {
        repaired += damaged_records(&cluster, metrics_of(&metrics, node), "repaired").await;
    }
    // The new primary repaired the one block damaged on its own copy; the other it read intact.
    assert_eq!(repaired, 1);
    assert_eq!(repair_lines(&cluster, &new_primary), 1);
}

/// `vbs scrub rot`: its exit status, what it printed on stdout and on stderr.
fn vbs_scrub(cluster: &Cluster) -> (bool, String, String) {
    let out = cluster.vbs(&["scrub", "rot"]).unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_finds_and_repairs_damage_on_any_copy_without_a_client_read() {
    let (cluster, metrics) = cluster("2").await;
    let (primary, secondaries) = cluster.copies_of("rot", 0).await;
    let secondary = &secondaries[0];
    let (on_secondary, on_primary) = (tagged_block(0xa1), tagged_block(0xa2));
    cluster.write_with_cli("rot", 4 * BLOCK, &on_secondary);
    cluster.write_with_cli("rot", 8 * BLOCK, &on_primary);
    // Blocks elsewhere in the volume, so every slice has records to compare.
    for slice in 1..4u64 {
        cluster.write_with_cli("rot", slice * (16 << 20), &tagged_block(0xb0 + slice));
    }
    let (ok, stdout, stderr) = vbs_scrub(&cluster);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("found nothing wrong"), "{stdout}");

    damage(&cluster, secondary, &on_secondary, false);
    damage(&cluster, &primary, &on_primary, true);
    let (ok, stdout, stderr) = vbs_scrub(&cluster);
    eprintln!("vbs scrub after two flipped bytes:\n{stdout}");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("scrubbed \"rot\": 4 slices, 10 records"),
        "{stdout}"
    );
    assert!(
        stdout.contains("found 2 damaged records, repaired 2; 0 ranges where copies disagree"),
        "{stdout}"
    );
    for node in [&primary, secondary] {
        let addr = metrics_of(&metrics, node);
        assert_eq!(
            damaged_records(&cluster, addr, "repaired").await,
            1,
            "{node}"
        );
    }
    // The leader hears of each slice's last scrub with the primary's next heartbeat.
    let shown = wait_until(
        "vbs status to show the scrub",
        Duration::from_secs(10),
        || async {
            let out = cluster.vbs(&["status", "--all"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok::<_, String>(text.contains("ago, 2 repaired").then_some(text))
        },
    )
    .await
    .unwrap();
    assert!(shown.contains("LAST SCRUB"), "{shown}");
    // Repaired for good: the next pass finds nothing, and no read ever saw the damage.
    let (ok, stdout, _) = vbs_scrub(&cluster);
    assert!(ok && stdout.contains("found nothing wrong"), "{stdout}");
    assert_eq!(
        cluster.read_with_cli("rot", 4 * BLOCK, BLOCK).unwrap(),
        on_secondary.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 8 * BLOCK, BLOCK).unwrap(),
        on_primary.to_vec()
    );

    // Damage on every copy: the pass says so and fails.
    let lost = tagged_block(0xa3);
    cluster.write_with_cli("rot", 12 * BLOCK, &lost);
    damage(&cluster, &primary, &lost, false);
    damage(&cluster, secondary, &lost, false);
    let (ok, stdout, stderr) = vbs_scrub(&cluster);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("found 2 damaged records, repaired 0"),
        "{stdout}"
    );
    assert!(stderr.contains("could not be repaired"), "{stderr}");
    let summary = wait_until(
        "vbs status to flag the slice",
        Duration::from_secs(10),
        || async {
            let out = cluster.vbs(&["status"]).unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            Ok::<_, String>(
                text.contains("1 slices: their last scrub found damage")
                    .then_some(text),
            )
        },
    )
    .await
    .unwrap();
    eprintln!("vbs status after a scrub that could not repair:\n{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_scrub_repairs_a_secondary_on_its_own() {
    let (cluster, metrics) = cluster_with("2", &["--scrub-interval", "2s"]).await;
    let (_, secondaries) = cluster.copies_of("rot", 0).await;
    let block = tagged_block(0xc1);
    cluster.write_with_cli("rot", 6 * BLOCK, &block);
    damage(&cluster, &secondaries[0], &block, false);
    let addr = metrics_of(&metrics, &secondaries[0]);
    wait_until(
        "the background scrub to repair the secondary",
        Duration::from_secs(30),
        || async {
            Ok::<_, String>((damaged_records(&cluster, addr, "repaired").await == 1).then_some(()))
        },
    )
    .await
    .unwrap();
    assert_eq!(repair_lines(&cluster, &secondaries[0]), 1);
}

/// A copy whose record was replaced by another valid one (a misdirected write that kept its
/// checksum): no read notices, the scrub's digests do, and the copy takes the primary's record
/// of that VBA in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_mends_a_copy_that_differs_although_each_record_passes_its_checksum() {
    let (mut cluster, metrics) = cluster("2").await;
    let (primary, secondaries) = cluster.copies_of("rot", 0).await;
    let block = tagged_block(0xd7);
    cluster.write_with_cli("rot", 3 * BLOCK, &block);
    let (file, at) = find_record(&cluster, &secondaries[0], &block);
    let mut record = vec![0u8; HEADER_BYTES + BLOCK as usize];
    {
        use std::os::unix::fs::FileExt;
        let segment = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        segment.read_exact_at(&mut record, at).unwrap();
        record[HEADER_BYTES + 100] ^= 0x01;
        let batch_start = u32::from_le_bytes(record[12..16].try_into().unwrap());
        let nonce = u64::from_le_bytes(record[16..24].try_into().unwrap());
        storagenode::engine::record::reseal(&mut record, nonce, batch_start);
        segment.write_all_at(&record, at).unwrap();
        segment.sync_all().unwrap();
    }
    let (ok, stdout, stderr) = vbs_scrub(&cluster);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("found 1 damaged records, repaired 1; 0 ranges where copies disagree"),
        "{stdout}"
    );
    let addr = metrics_of(&metrics, &primary);
    assert_eq!(
        metric(&cluster, addr, "vbs_scrub_mismatches_total").await,
        0
    );
    let (ok, stdout, _) = vbs_scrub(&cluster);
    assert!(ok && stdout.contains("found nothing wrong"), "{stdout}");
    // The secondary now holds the primary's block: it serves it once it is the primary.
    cluster.storage_node(&primary.0).unwrap().kill();
    assert_eq!(
        cluster.read_with_cli("rot", 3 * BLOCK, BLOCK).unwrap(),
        block.to_vec()
    );
}

/// Damage read at start: a killed node reads back the log written since its last checkpoint, and
/// there meets a damaged record that is dead (its block written again since) and one that is live.
/// Their headers read, so it opens, serves, and the next scrub repairs the live one. (Damage to the
/// very last record of a log is a torn tail: cut off, and the copy resynced.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_opens_past_damaged_records_in_its_log_and_a_scrub_repairs_the_live_one() {
    let (mut cluster, metrics) = cluster("2").await;
    let (primary, _) = cluster.copies_of("rot", 0).await;
    let (dead, overwriting, live) = (tagged_block(0xc1), tagged_block(0xc2), tagged_block(0xc3));
    cluster.write_with_cli("rot", 3 * BLOCK, &dead);
    cluster.write_with_cli("rot", 3 * BLOCK, &overwriting);
    cluster.write_with_cli("rot", 4 * BLOCK, &live);
    // A record after the live one: damage to the last record of the log reads as a torn tail.
    cluster.write_with_cli("rot", 6 * BLOCK, &tagged_block(0xc5));
    cluster.storage_node(&primary.0).unwrap().kill();
    damage(&cluster, &primary, &dead, false);
    damage(&cluster, &primary, &live, false);
    cluster.storage_node(&primary.0).unwrap().restart().unwrap();
    let log = cluster
        .wait_for_storage_log(&primary.0, "the node to start", STARTUP, |log| {
            log.matches("storage node starting").count() == 2
        })
        .await;
    assert!(
        log.contains("records whose data is damaged"),
        "the node says what it found at start:\n{log}"
    );
    wait_until("every copy current", Duration::from_secs(30), || async {
        let status = cluster.status().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((integration::copies_not_current(&status) == 0).then_some(()))
    })
    .await
    .unwrap();
    // A scrub covers what every copy is known to hold: the last write becomes known so with the
    // next one.
    cluster.write_with_cli("rot", 5 * BLOCK, &tagged_block(0xc4));

    let (ok, stdout, stderr) = vbs_scrub(&cluster);
    eprintln!("vbs scrub after a start past damaged records:\n{stdout}");
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("found 1 damaged records, repaired 1"),
        "{stdout}"
    );
    let addr = metrics_of(&metrics, &primary);
    assert_eq!(damaged_records(&cluster, addr, "repaired").await, 1);
    assert_eq!(
        cluster.read_with_cli("rot", 3 * BLOCK, BLOCK).unwrap(),
        overwriting.to_vec()
    );
    assert_eq!(
        cluster.read_with_cli("rot", 4 * BLOCK, BLOCK).unwrap(),
        live.to_vec()
    );
}
