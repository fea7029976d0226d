//! Failover, incremental resync and re-replication with real processes: 3 managers, 3 storage
//! nodes, and a client writing through the library while nodes are killed, hung and restarted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::volume::{Volume, VolumeOptions};
use integration::gateway::tagged_block;
use integration::user::slice_of;
use integration::{wait_until, Cluster, ClusterOptions};
use vbs_wire::api::{CopyInfo, CopyStatus, SliceMap};
use vbs_wire::managers::Managers;
use vbs_wire::types::{NodeId, UnitId};

const STARTUP: Duration = Duration::from_secs(30);

fn start(manager_args: &[&str], storage_args: &[&str]) -> Cluster {
    let mut options = ClusterOptions {
        storage_nodes: 3,
        manager_args: manager_args.iter().map(|s| s.to_string()).collect(),
        ..ClusterOptions::default()
    };
    options
        .storage_args
        .extend(storage_args.iter().map(|s| s.to_string()));
    Cluster::start(options).expect("cluster starts")
}

fn create(cluster: &Cluster, name: &str, size: &str, replicas: &str, slice: &str) {
    cluster.create_volume(name, size, replicas, slice).unwrap();
}

async fn open(cluster: &Cluster, name: &str) -> Arc<Volume> {
    let managers =
        Arc::new(Managers::parse(&cluster.managers_arg(), Duration::from_secs(5)).unwrap());
    let options = VolumeOptions {
        io_timeout: Duration::from_secs(2),
        ..VolumeOptions::default()
    };
    Arc::new(
        Volume::open(managers, name, options)
            .await
            .expect("volume opens"),
    )
}

fn copy_on<'a>(slice: &'a SliceMap, node: &NodeId) -> Option<&'a CopyInfo> {
    slice.copies.iter().find(|c| &c.node == node)
}

/// Waits until `node`'s copy of slice 0 of `volume` is `current` again and its resync reported
/// finished (the copy's own last progress report may land just after its primary reports it
/// caught up); `observe` sees the copy at every probe. Returns the copy.
async fn copy_current_again(
    cluster: &Cluster,
    volume: &str,
    node: &NodeId,
    observe: impl Fn(&CopyInfo),
) -> CopyInfo {
    let observe = &observe;
    wait_until(
        &format!("{node}'s copy of {volume} to be current again"),
        Duration::from_secs(90),
        || async move {
            let slice = slice_of(&cluster.status().await?, volume, 0);
            let copy = copy_on(&slice, node).cloned().expect("copy kept");
            observe(&copy);
            let finished = copy.resync.as_ref().is_some_and(|r| r.progress.finished);
            Ok::<_, anyhow::Error>((copy.status == CopyStatus::Current && finished).then_some(copy))
        },
    )
    .await
    .unwrap()
}

/// One client writing block after block (each block once, so every record stays live), recording
/// what was acknowledged and when.
struct Writer {
    acked: Arc<Mutex<BTreeMap<u64, u64>>>,
    count: Arc<AtomicU64>,
    /// Milliseconds since `start` of every acknowledgement, to find gaps.
    times: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
    start: Instant,
}

impl Writer {
    fn spawn(volume: Arc<Volume>, blocks: u64) -> Writer {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let count = Arc::new(AtomicU64::new(0));
        let times = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let task = {
            let (acked, count, times, stop) =
                (acked.clone(), count.clone(), times.clone(), stop.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut tag = 0;
                while !stop.load(Ordering::Relaxed) && tag < blocks {
                    tag += 1;
                    match volume.write((tag - 1) * 4096, tagged_block(tag)).await {
                        Ok(()) => {
                            acked.lock().unwrap().insert(tag - 1, tag);
                            times
                                .lock()
                                .unwrap()
                                .push(start.elapsed().as_millis() as u64);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        };
        Writer {
            acked,
            count,
            times,
            stop,
            task,
            start,
        }
    }

    async fn wait_for(&self, n: u64, timeout: Duration) {
        let count = self.count.clone();
        wait_until(&format!("{n} acknowledged writes"), timeout, || {
            let count = count.clone();
            async move { Ok::<_, anyhow::Error>((count.load(Ordering::Relaxed) >= n).then_some(())) }
        })
        .await
        .unwrap();
    }

    /// Stops writing; returns what was acknowledged, the longest pause between two
    /// acknowledgements after `since_ms`, and the failed writes.
    async fn finish(self, since_ms: u64) -> (BTreeMap<u64, u64>, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        let times = self.times.lock().unwrap().clone();
        let mut longest = 0;
        let mut previous = since_ms;
        for t in times.into_iter().filter(|t| *t >= since_ms) {
            longest = longest.max(t - previous);
            previous = t;
        }
        let acked = self.acked.lock().unwrap().clone();
        (acked, Duration::from_millis(longest), failures)
    }
}

async fn assert_reads_back(volume: &Volume, acked: &BTreeMap<u64, u64>) {
    let Some(last) = acked.keys().last() else {
        return;
    };
    let data = volume.read(0, (last + 1) * 4096).await.expect("reads back");
    for (block_index, tag) in acked {
        let got = &data[(block_index * 4096) as usize..((block_index + 1) * 4096) as usize];
        assert_eq!(
            got,
            &tagged_block(*tag)[..],
            "block {block_index}: acknowledged write {tag} lost"
        );
    }
}

/// Waits until both slices of `volume` have 2 current copies and none on `node`, and the resync
/// of every copy that `before` did not have reported finished. A copy is `current` once its
/// primary reports it caught up; its own last progress report, which says the resync finished,
/// may land a moment later.
async fn copies_moved_off(
    cluster: &Cluster,
    volume: &str,
    node: &NodeId,
    before: &[SliceMap],
) -> Vec<SliceMap> {
    wait_until(
        &format!("every slice of {volume} at 2 current copies, none on {node}"),
        Duration::from_secs(90),
        || async {
            let status = cluster.status().await?;
            let slices: Vec<SliceMap> = (0..2).map(|i| slice_of(&status, volume, i)).collect();
            let moved = slices.iter().zip(before).all(|(s, old)| {
                s.copies.len() == 2
                    && copy_on(s, node).is_none()
                    && s.copies.iter().all(|c| {
                        let added = copy_on(old, &c.node).is_none();
                        c.status == CopyStatus::Current
                            && if added {
                                c.resync.is_some_and(|r| r.progress.finished)
                            } else {
                                c.resync.is_none_or(|r| r.progress.finished)
                            }
                    })
            });
            Ok::<_, anyhow::Error>(moved.then_some(slices))
        },
    )
    .await
    .unwrap()
}

/// Every slice that had a copy on `node` got a copy on another node, filled by a full resync, and
/// a newer generation with the changed copy set.
fn assert_rebuilt_in_full(before: &[SliceMap], after: &[SliceMap], node: &NodeId) {
    for (old, new) in before.iter().zip(after) {
        if copy_on(old, node).is_none() {
            continue;
        }
        let added = new
            .copies
            .iter()
            .find(|c| copy_on(old, &c.node).is_none())
            .expect("a copy on a node that had none");
        let resync = added.resync.expect("the new copy's resync is reported");
        assert!(
            resync.progress.full && resync.progress.finished,
            "{resync:?}"
        );
        assert!(
            new.generation > old.generation,
            "a copy-set change bumps the generation"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_resyncs_when_back_and_serves_alone() {
    // A 2 s lease so the failover comes quickly; a slow resync so `syncing` can be seen.
    let mut cluster = start(&["--lease", "2s"], &["--resync-rate", "400k"]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "fo", "16M", "2", "16M");
    let volume = open(&cluster, "fo").await;
    let before = slice_of(&cluster.status().await.unwrap(), "fo", 0);
    let old_primary = before.primary.clone();

    let writer = Writer::spawn(volume.clone(), 4096);
    writer.wait_for(300, STARTUP).await;
    cluster.storage_node(&old_primary.0).unwrap().kill();
    let killed_at = writer.start.elapsed().as_millis() as u64;
    let at_kill = writer.count.load(Ordering::Relaxed);
    writer
        .wait_for(at_kill + 300, Duration::from_secs(60))
        .await;
    let (acked, pause, failures) = writer.finish(killed_at).await;
    assert!(failures.is_empty(), "writes failed: {failures:?}");
    assert!(
        pause <= Duration::from_secs(10),
        "writes paused {pause:?} after the primary was killed"
    );
    let after = slice_of(&cluster.status().await.unwrap(), "fo", 0);
    assert_ne!(after.primary, old_primary);
    assert!(after.generation > before.generation);
    assert_reads_back(&volume, &acked).await;

    // The killed node comes back: its copy is stale, syncs, and is current again.
    let unit = after.unit.to_string();
    let held_before = cluster.unit_last_vbas(&old_primary.0).unwrap()[&unit];
    cluster
        .storage_node(&old_primary.0)
        .unwrap()
        .restart()
        .unwrap();
    let seen = Mutex::new(Vec::new());
    let returned = copy_current_again(&cluster, "fo", &old_primary, |copy| {
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&copy.status) {
            seen.push(copy.status);
        }
    })
    .await;
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.contains(&CopyStatus::Syncing),
        "statuses seen: {seen:?}"
    );
    let report = returned.resync.unwrap().progress;
    assert!(!report.full, "an incremental resync, not a full one");
    // The other copy goes away: the returned copy alone serves every acknowledged write.
    let other = after.primary.clone();
    cluster.storage_node(&other.0).unwrap().kill();
    assert_reads_back(&volume, &acked).await;

    // What was sent is what was missed. Every write went to a new block, so every record the new
    // primary holds past the returning copy's last VBA was live and had to be sent, give or take
    // the one write in flight at the kill (the writer keeps one at a time), which the client
    // retried on the new primary: one more when the copy held it and dropped it as an
    // unacknowledged tail; one fewer when only the new primary held it, since the retry made
    // that record dead.
    let primary_last = cluster.unit_last_vbas(&other.0).unwrap()[&unit];
    let missed = primary_last - held_before;
    assert!(
        (missed - 1..=missed + 1).contains(&report.records_done),
        "resync sent {} records; the copy held VBA {held_before}, the primary {primary_last}",
        report.records_done
    );
    assert_eq!(report.records_done, report.records_total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_secondary_is_marked_stale_and_catches_up_after_it_resumes() {
    // A long lease: a hang of a few seconds is not a node down, only an unresponsive copy.
    let mut cluster = start(&["--lease", "30s"], &["--write-timeout", "1s"]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "hang", "16M", "3", "16M");
    let volume = open(&cluster, "hang").await;
    let slice = slice_of(&cluster.status().await.unwrap(), "hang", 0);
    let hung = slice
        .copies
        .iter()
        .find(|c| c.node != slice.primary)
        .unwrap()
        .node
        .clone();

    let writer = Writer::spawn(volume.clone(), 4096);
    writer.wait_for(200, STARTUP).await;
    cluster
        .storage_node(&hung.0)
        .unwrap()
        .signal(libc::SIGSTOP)
        .unwrap();
    let stopped_at = writer.start.elapsed().as_millis() as u64;
    let at_stop = writer.count.load(Ordering::Relaxed);
    writer
        .wait_for(at_stop + 200, Duration::from_secs(30))
        .await;
    wait_until(
        "the hung copy to be stale",
        Duration::from_secs(20),
        || async {
            let slice = slice_of(&cluster.status().await?, "hang", 0);
            Ok::<_, anyhow::Error>(
                copy_on(&slice, &hung)
                    .filter(|c| c.status == CopyStatus::Stale)
                    .map(|_| ()),
            )
        },
    )
    .await
    .unwrap();

    // It resumes while the writes go on, catches up and is current again.
    cluster
        .storage_node(&hung.0)
        .unwrap()
        .signal(libc::SIGCONT)
        .unwrap();
    let at_resume = writer.count.load(Ordering::Relaxed);
    wait_until(
        "the resumed copy to be current",
        Duration::from_secs(60),
        || async {
            let slice = slice_of(&cluster.status().await?, "hang", 0);
            Ok::<_, anyhow::Error>(
                copy_on(&slice, &hung)
                    .filter(|c| c.status == CopyStatus::Current)
                    .map(|_| ()),
            )
        },
    )
    .await
    .unwrap();
    writer
        .wait_for(at_resume + 100, Duration::from_secs(30))
        .await;
    let (acked, pause, failures) = writer.finish(stopped_at).await;
    assert!(failures.is_empty(), "writes failed: {failures:?}");
    assert!(pause <= Duration::from_secs(10), "writes paused {pause:?}");

    assert_reads_back(&volume, &acked).await;

    // Its copy is whole: all three copies hold the same log and the same blocks.
    for copy in &slice.copies {
        cluster.storage_node(&copy.node.0).unwrap().kill();
    }
    let unit = slice.unit.to_string();
    let copies: Vec<(u64, String)> = slice
        .copies
        .iter()
        .map(|c| cluster.unit_check(&c.node.0, &unit).unwrap())
        .collect();
    assert!(
        copies.iter().all(|c| *c == copies[0]),
        "copies differ: {copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_node_down_past_the_grace_period_are_recreated_elsewhere() {
    let mut cluster = start(&["--lease", "2s", "--grace", "3s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "rr", "8M", "2", "4M");
    let volume = open(&cluster, "rr").await;
    let writer = Writer::spawn(volume.clone(), 1500);
    writer.wait_for(1500, STARTUP).await;
    let (acked, _, failures) = writer.finish(0).await;
    assert!(failures.is_empty(), "{failures:?}");

    // The node holding a copy of both slices, if one does, else any node with a copy.
    let status = cluster.status().await.unwrap();
    let slices: Vec<SliceMap> = (0..2).map(|i| slice_of(&status, "rr", i)).collect();
    let gone = cluster
        .storage_names()
        .into_iter()
        .map(NodeId)
        .max_by_key(|n| slices.iter().filter(|s| copy_on(s, n).is_some()).count())
        .unwrap();
    cluster.storage_node(&gone.0).unwrap().kill();

    let healed = copies_moved_off(&cluster, "rr", &gone, &slices).await;
    assert_rebuilt_in_full(&slices, &healed, &gone);
    assert_reads_back(&volume, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_completes_once_when_the_manager_leader_dies_in_the_middle() {
    let mut cluster = start(&["--lease", "2s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "lk", "4M", "2", "4M");
    let volume = open(&cluster, "lk").await;
    volume.write(0, tagged_block(1)).await.unwrap();
    let before = slice_of(&cluster.status().await.unwrap(), "lk", 0);
    let leader = cluster.status().await.unwrap().leader.expect("a leader").0;

    // The primary dies; while its lease runs out, so does the manager leader.
    cluster.storage_node(&before.primary.0).unwrap().kill();
    wait_until(
        "the leader to have missed the primary for most of its lease",
        STARTUP,
        || async {
            let status = cluster.status().await?;
            let node = status
                .nodes
                .iter()
                .find(|n| n.id == before.primary)
                .cloned();
            let silent = node.and_then(|n| n.last_heartbeat_ms_ago).unwrap_or(0);
            Ok::<_, anyhow::Error>((silent >= 1500).then_some(()))
        },
    )
    .await
    .unwrap();
    kill_leader(&mut cluster, leader, Duration::from_secs(20)).await;
    let after = wait_until(
        "the slice to fail over",
        Duration::from_secs(30),
        || async {
            let slice = slice_of(&cluster.status().await?, "lk", 0);
            Ok::<_, anyhow::Error>((slice.primary != before.primary).then_some(slice))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        after.generation.0,
        before.generation.0 + 1,
        "one failover, not two"
    );
    volume
        .write(4096, tagged_block(2))
        .await
        .expect("writes go on at the new primary");
    let data = volume.read(0, 8192).await.unwrap();
    assert_eq!(&data[..4096], &tagged_block(1)[..]);
    assert_eq!(&data[4096..], &tagged_block(2)[..]);
    cluster.restart_manager(leader).unwrap();
    let settled = slice_of(&cluster.status().await.unwrap(), "lk", 0);
    assert_eq!(
        settled.generation, after.generation,
        "the restarted manager changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_copies_over_while_a_client_writes() {
    let mut cluster = start(&["--lease", "2s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "dr", "64M", "2", "32M");
    let volume = open(&cluster, "dr").await;
    let blocks = 16384;
    let writer = Writer::spawn(volume.clone(), blocks);
    writer.wait_for(300, STARTUP).await;

    // The node that is primary of a slice, so the drain also hands a primary over.
    let status = cluster.status().await.unwrap();
    let before: Vec<SliceMap> = (0..2).map(|i| slice_of(&status, "dr", i)).collect();
    let drained = before[0].primary.clone();
    let out = cluster.vbs(&["node", "drain", &drained.0]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let after = copies_moved_off(&cluster, "dr", &drained, &before).await;
    assert_rebuilt_in_full(&before, &after, &drained);
    // Writes go on after the hand-over.
    let done = writer.count.load(Ordering::Relaxed);
    writer.wait_for((done + 200).min(blocks), STARTUP).await;
    let (acked, longest, failures) = writer.finish(0).await;
    eprintln!(
        "drain of {drained}: {done} writes acknowledged when it completed, {} in all; longest \
         pause {longest:?}; {} failed writes",
        acked.len(),
        failures.len()
    );

    // The drained node holds nothing the volume needs: without it, every acknowledged write
    // reads back.
    cluster.storage_node(&drained.0).unwrap().kill();
    assert_reads_back(&volume, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_back_with_an_empty_disk_within_its_lease_does_not_serve_it() {
    back_with_an_empty_disk(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secondary_back_with_an_empty_disk_within_its_lease_is_not_current() {
    back_with_an_empty_disk(false).await;
}

/// Kills manager `leader` and waits up to `timeout` for another to be elected.
async fn kill_leader(cluster: &mut Cluster, leader: u64, timeout: Duration) {
    cluster.kill_manager(leader).unwrap();
    let others: Vec<u64> = cluster
        .manager_ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    cluster.wait_for_leader(&others, timeout).await.unwrap();
}

/// Writes blocks `0..blocks`, block `b` tagged `b + 1`; what was acknowledged, by block.
async fn write_tagged_blocks(volume: &Volume, blocks: u64) -> BTreeMap<u64, u64> {
    let mut acked = BTreeMap::new();
    for block in 0..blocks {
        volume
            .write(block * 4096, tagged_block(block + 1))
            .await
            .unwrap();
        acked.insert(block, block + 1);
    }
    acked
}

/// Kills `node`, deletes its data and starts it again at once, as after a replaced disk; returns
/// once the node has created `unit` again (empty).
async fn back_with_its_disk_wiped(cluster: &mut Cluster, node: &NodeId, unit: UnitId) {
    cluster.storage_node(&node.0).unwrap().kill();
    let data_dir = cluster.storage_data_dir(&node.0);
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    cluster.storage_node(&node.0).unwrap().restart().unwrap();
    let unit_dir = data_dir.join("units").join(unit.to_string());
    wait_until(
        "the node back with its unit created again",
        STARTUP,
        || async { Ok::<_, anyhow::Error>(unit_dir.exists().then_some(())) },
    )
    .await
    .unwrap();
}

/// A node whose disk was replaced or wiped comes back before its lease ran out, so nothing failed
/// over and the database still holds its copy `current`: the empty unit must neither serve as the
/// primary nor count as a current copy. It resyncs in full, then holds every acknowledged block
/// alone.
async fn back_with_an_empty_disk(wipe_primary: bool) {
    let mut cluster = start(&["--lease", "5s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "wiped", "16M", "2", "16M");
    let volume = open(&cluster, "wiped").await;
    let before = slice_of(&cluster.status().await.unwrap(), "wiped", 0);
    let wiped = if wipe_primary {
        before.primary.clone()
    } else {
        let secondary = before.copies.iter().find(|c| c.node != before.primary);
        secondary.expect("two copies").node.clone()
    };
    let acked = write_tagged_blocks(&volume, 64).await;
    // The heartbeats tell the managers how far each copy is, with no status change.
    let watched = &cluster;
    wait_until(
        "the status to show both copies at the last VBA",
        Duration::from_secs(30),
        || async move {
            let slice = slice_of(&watched.status().await?, "wiped", 0);
            let vbas: Vec<Option<u64>> = slice
                .copies
                .iter()
                .map(|c| c.reported_vba.map(|v| v.0))
                .collect();
            Ok::<_, anyhow::Error>((vbas == [Some(64), Some(64)]).then_some(()))
        },
    )
    .await
    .unwrap();

    // The node's disk is replaced; read only once it has its unit again (empty), so that the
    // reads find it up.
    back_with_its_disk_wiped(&mut cluster, &wiped, before.unit).await;

    // Every acknowledged block reads back: the empty unit never serves as the current primary.
    assert_reads_back(&volume, &acked).await;
    if wipe_primary {
        let after = slice_of(&cluster.status().await.unwrap(), "wiped", 0);
        assert_ne!(after.primary, wiped, "the empty copy is still the primary");
        assert!(after.generation > before.generation);
    }

    // It resyncs in full from the primary and is current again.
    let returned = copy_current_again(&cluster, "wiped", &wiped, |_| {}).await;
    let report = returned.resync.unwrap().progress;
    assert!(report.full, "an emptied copy resyncs in full: {report:?}");
    // The other copy goes away: the emptied one serves every acknowledged block alone.
    let after = slice_of(&cluster.status().await.unwrap(), "wiped", 0);
    let other = after.copies.iter().find(|c| c.node != wiped);
    let other = other.expect("two copies").node.clone();
    cluster.storage_node(&other.0).unwrap().kill();
    assert_reads_back(&volume, &acked).await;
}

/// As above, but the managers' leader changed just before the node came back, so the leader
/// answering it has not yet heard how far the other copy is (its node is stopped, within its
/// lease). The emptied primary must not serve until it knows whether the slice was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_back_with_an_empty_disk_after_a_leader_change_waits_to_learn_what_it_lost() {
    // A lease long enough that the stopped node is not marked down while the test reads.
    let mut cluster = start(&["--lease", "12s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "wiped", "16M", "2", "16M");
    let volume = open(&cluster, "wiped").await;
    let before = slice_of(&cluster.status().await.unwrap(), "wiped", 0);
    let wiped = before.primary.clone();
    let other = before.copies.iter().find(|c| c.node != wiped);
    let other = other.expect("two copies").node.clone();
    let acked = write_tagged_blocks(&volume, 64).await;

    // The other copy's node stops (no heartbeats), then the leader is replaced: the new leader
    // knows of the slice only its committed state, in which both copies are current at VBA 0.
    cluster
        .storage_node(&other.0)
        .unwrap()
        .signal(libc::SIGSTOP)
        .unwrap();
    let leader = cluster
        .wait_for_leader(&cluster.manager_ids(), STARTUP)
        .await
        .unwrap();
    kill_leader(&mut cluster, leader, STARTUP).await;

    // The primary's disk is replaced.
    back_with_its_disk_wiped(&mut cluster, &wiped, before.unit).await;

    // The new leader hears the emptied unit reported at VBA 0, and from the other copy nothing.
    let watched = &cluster;
    let emptied = &wiped;
    wait_until(
        "the leader to hear the emptied unit",
        STARTUP,
        || async move {
            let slice = slice_of(&watched.status().await?, "wiped", 0);
            let heard = slice
                .copies
                .iter()
                .map(|c| (&c.node == emptied, c.reported_vba.map(|v| v.0)))
                .collect::<Vec<_>>();
            let want = heard.iter().all(|(mine, vba)| {
                if *mine {
                    *vba == Some(0)
                } else {
                    vba.is_none()
                }
            });
            Ok::<_, anyhow::Error>(want.then_some(()))
        },
    )
    .await
    .unwrap();

    // While the other copy is silent, the emptied primary serves nothing: for four seconds
    // reads fail or wait, and never return the empty unit's zeroes.
    let volume = open(&cluster, "wiped").await;
    let silent_until = Instant::now() + Duration::from_secs(4);
    let mut answered = 0;
    while Instant::now() < silent_until {
        let read = tokio::time::timeout(Duration::from_millis(500), volume.read(0, 4096)).await;
        if let Ok(Ok(data)) = read {
            assert!(
                data == tagged_block(1),
                "block 0 read from the emptied unit (all zeroes: {})",
                data.iter().all(|b| *b == 0)
            );
            answered += 1;
        }
    }
    println!("reads answered while the other copy was stopped: {answered}");

    // The other node heartbeats again; the primary learns the slice was written, reports its
    // copy not current, and the other copy takes over with every acknowledged block.
    cluster
        .storage_node(&other.0)
        .unwrap()
        .signal(libc::SIGCONT)
        .unwrap();
    assert_reads_back(&volume, &acked).await;
    let after = slice_of(&cluster.status().await.unwrap(), "wiped", 0);
    assert_eq!(
        after.primary, other,
        "the copy that kept the data is the primary"
    );
}

/// Reads every block of `acked` one at a time through a volume whose operations give up after
/// `bound`, and returns the longest read. Nothing is written meanwhile: a read must not depend
/// on a later write to complete.
async fn read_each_within(
    cluster: &Cluster,
    name: &str,
    acked: &BTreeMap<u64, u64>,
    bound: Duration,
) -> Duration {
    let managers =
        Arc::new(Managers::parse(&cluster.managers_arg(), Duration::from_secs(5)).unwrap());
    let options = VolumeOptions {
        io_timeout: Duration::from_secs(2),
        retry_deadline: bound,
        ..VolumeOptions::default()
    };
    let volume = Volume::open(managers, name, options).await.unwrap();
    let mut longest = Duration::ZERO;
    for (block, tag) in acked {
        let started = Instant::now();
        let data = volume
            .read(block * 4096, 4096)
            .await
            .unwrap_or_else(|e| panic!("block {block}: {e}"));
        longest = longest.max(started.elapsed());
        assert_eq!(data, tagged_block(*tag), "block {block}");
    }
    longest
}

/// The primary is killed, the slice fails over, the writes go on on the new primary alone, and
/// the old primary comes back, resyncs and joins. Then only reads come: each must complete
/// within the lease plus 5 s. (They used to wait for a write that would never come: the new
/// primary counted the copy that joined as holding nothing, so nothing written in its
/// generation could be read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_killed_primary_returns_complete_without_a_later_write() {
    let lease = Duration::from_secs(2);
    let mut cluster = start(&["--lease", "2s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "ro", "16M", "2", "16M");
    let volume = open(&cluster, "ro").await;
    let before = slice_of(&cluster.status().await.unwrap(), "ro", 0);
    let old_primary = before.primary.clone();
    let mut acked = write_tagged_blocks(&volume, 100).await;
    cluster.storage_node(&old_primary.0).unwrap().kill();
    for block in 100..200 {
        volume
            .write(block * 4096, tagged_block(block + 1))
            .await
            .unwrap();
        acked.insert(block, block + 1);
    }
    let after = slice_of(&cluster.status().await.unwrap(), "ro", 0);
    assert_ne!(after.primary, old_primary, "the slice failed over");
    cluster
        .storage_node(&old_primary.0)
        .unwrap()
        .restart()
        .unwrap();
    copy_current_again(&cluster, "ro", &old_primary, |_| {}).await;

    let bound = lease + Duration::from_secs(5);
    let longest = read_each_within(&cluster, "ro", &acked, bound).await;
    println!("longest read after the copy rejoined: {longest:?}");
}

/// The primary is killed and started again at once, within its lease: it stays the primary. Its
/// window of what each copy holds starts empty, so reads of what it wrote before must learn from
/// the copies how far they are, not wait for the next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_primary_restarts_within_its_lease_complete_without_a_later_write() {
    let lease = Duration::from_secs(5);
    let mut cluster = start(&["--lease", "5s"], &[]);
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create(&cluster, "ro", "16M", "2", "16M");
    let volume = open(&cluster, "ro").await;
    let before = slice_of(&cluster.status().await.unwrap(), "ro", 0);
    let acked = write_tagged_blocks(&volume, 100).await;
    let primary = cluster.storage_node(&before.primary.0).unwrap();
    primary.kill();
    primary.restart().unwrap();

    let bound = lease + Duration::from_secs(5);
    let longest = read_each_within(&cluster, "ro", &acked, bound).await;
    println!("longest read after the primary restarted: {longest:?}");
    let after = slice_of(&cluster.status().await.unwrap(), "ro", 0);
    assert_eq!(
        (after.primary, after.generation),
        (before.primary, before.generation),
        "the restarted primary kept its role"
    );
}
