//! Tests of the durable store: openraft's conformance suite, then what it does not cover:
//! reopening after a crash, and the content of snapshots.

use std::collections::BTreeSet;
use std::io::Write;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{blank_ent, log_id, membership_ent, StoreBuilder, Suite};
use openraft::{RaftSnapshotBuilder, Vote};
use tempfile::TempDir;

use super::state_machine::command_entry;
use super::{open, LogStore, StateMachine};
use crate::raft_types::{StorageError, TypeConfig};
use crate::state::fixtures::node;
use crate::state::{Command, State};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = open(dir.path()).expect("store opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the store passes openraft's suite");
}

fn register(name: &str) -> Command {
    Command::RegisterNode {
        id: node(name),
        addr: format!("{name}:7000"),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 30,
        devices: None,
    }
}

fn create(name: &str, nodes: &[&str]) -> Command {
    Command::CreateVolume {
        name: name.into(),
        size_bytes: 4096,
        slice_bytes: 4096,
        replicas: nodes.len() as u32,
        placement: vec![nodes.iter().map(|n| node(n)).collect()],
    }
}

fn state_of(sm: &StateMachine) -> State {
    sm.shared().read().state.clone()
}

#[tokio::test]
async fn log_vote_and_state_survive_a_reopen_and_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vote = Vote::new_committed(3, 2);
    let entries = vec![
        membership_ent::<TypeConfig>(1, 1, 1, vec![BTreeSet::from([1, 2, 3])]),
        command_entry(1, 2, register("n1")),
        command_entry(1, 3, register("n2")),
        command_entry(3, 4, create("vol", &["n1", "n2"])),
    ];
    let state = {
        let (mut log, mut sm) = open(dir.path()).expect("opens");
        log.save_vote(&vote).await.expect("vote saved");
        log.blocking_append(entries.clone())
            .await
            .expect("appended");
        sm.apply(entries.clone()).await.expect("applied");
        state_of(&sm)
    };
    assert_eq!(state.volumes.len(), 1);

    // A crash in the middle of the next append leaves half a record behind.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("raft-log"))
        .expect("log file");
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{'])
        .expect("torn write");
    drop(file);

    let (mut log, mut sm) = open(dir.path()).expect("reopens past a torn tail");
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    let back = log.try_get_log_entries(1..5).await.expect("entries");
    assert_eq!(back, entries);
    let log_state = log.get_log_state().await.expect("log state");
    assert_eq!(log_state.last_log_id, Some(log_id(3, 1, 4)));
    assert_eq!(state_of(&sm), state);
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(3, 1, 4))
    );

    // Appending after the cut works, and truncate and purge survive a reopen too.
    log.blocking_append([blank_ent::<TypeConfig>(3, 1, 5), blank_ent(3, 1, 6)])
        .await
        .expect("appended after the cut");
    log.truncate(log_id(3, 1, 6)).await.expect("truncated");
    log.purge(log_id(1, 1, 2)).await.expect("purged");
    drop((log, sm));
    let (mut log, _sm) = open(dir.path()).expect("reopens");
    let log_state = log.get_log_state().await.expect("log state");
    assert_eq!(log_state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(log_state.last_log_id, Some(log_id(3, 1, 5)));
    let indexes: Vec<u64> = log
        .try_get_log_entries(0..10)
        .await
        .expect("entries")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [3, 4, 5]);
}

#[tokio::test]
async fn a_snapshot_holds_the_whole_state_and_install_replaces_everything() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut leader) = open(leader_dir.path()).expect("opens");
    leader
        .apply([
            membership_ent::<TypeConfig>(1, 1, 1, vec![BTreeSet::from([1])]),
            command_entry(1, 2, register("n1")),
            command_entry(1, 3, register("n2")),
            command_entry(1, 4, create("vol", &["n1", "n2"])),
        ])
        .await
        .expect("applied");
    let expected = state_of(&leader);
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("built");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 4)));
    let content: State = serde_json::from_slice(snapshot.snapshot.get_ref()).expect("decodes");
    assert_eq!(
        content, expected,
        "the snapshot holds exactly the applied state"
    );

    // A follower with unrelated state, including a node the snapshot does not know.
    let follower_dir = tempfile::tempdir().expect("temp dir");
    let (_flog, mut follower) = open(follower_dir.path()).expect("opens");
    follower
        .apply([
            command_entry(1, 1, register("stray")),
            command_entry(1, 2, create("old", &["stray"])),
        ])
        .await
        .expect("applied");
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("installed");
    assert_eq!(state_of(&follower), expected);
    drop((_flog, follower));

    // Reopened from sled alone: nothing of the old state is left.
    let (_flog, mut follower) = open(follower_dir.path()).expect("reopens");
    assert_eq!(state_of(&follower), expected);
    assert_eq!(
        follower.applied_state().await.expect("applied").0,
        Some(log_id(1, 1, 4))
    );
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("kept as a file");
    assert_eq!(current.meta, snapshot.meta);
}

#[tokio::test]
async fn sled_behind_the_snapshot_is_caught_up_from_the_snapshot_file_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source_dir = tempfile::tempdir().expect("temp dir");
    let (_l, mut source) = open(source_dir.path()).expect("opens");
    source
        .apply([
            command_entry(1, 1, register("n1")),
            command_entry(1, 2, create("vol", &["n1"])),
        ])
        .await
        .expect("applied");
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("built");
    {
        let (_log, mut sm) = open(dir.path()).expect("opens");
        sm.apply([command_entry(1, 1, register("n1"))])
            .await
            .expect("applied");
    }
    // As if sled lost the applies that followed, while the snapshot file (fsynced) survived.
    let stored = super::snapshot::StoredSnapshot {
        meta: snapshot.meta.clone(),
        data: snapshot.snapshot.into_inner(),
    };
    super::snapshot::write(dir.path(), &stored).expect("written");
    let (_log, mut sm) = open(dir.path()).expect("reopens");
    assert_eq!(state_of(&sm), state_of(&source));
    assert_eq!(
        sm.applied_state().await.expect("applied").0,
        Some(log_id(1, 1, 2))
    );
}

#[tokio::test]
async fn slice_changes_and_deleted_volumes_survive_a_reopen_of_sled() {
    use crate::state::command::{CopyChange, SliceUpdate};
    use vbs_wire::api::CopyStatus;
    use vbs_wire::types::{Generation, UnitId, Vba};

    let dir = tempfile::tempdir().expect("temp dir");
    let expected = {
        let (_log, mut sm) = open(dir.path()).expect("opens");
        let update = SliceUpdate {
            new_primary: Some(node("n2")),
            copies: vec![CopyChange {
                node: node("n1"),
                status: CopyStatus::Stale,
                last_vba: Vba(7),
            }],
            ..SliceUpdate::new(UnitId::new(1, 0), Generation(1))
        };
        sm.apply([
            command_entry(1, 1, register("n1")),
            command_entry(1, 2, register("n2")),
            command_entry(1, 3, create("keep", &["n1", "n2"])),
            command_entry(1, 4, create("drop", &["n2", "n1"])),
            command_entry(
                1,
                5,
                Command::UpdateSlices {
                    updates: vec![update],
                },
            ),
            command_entry(
                1,
                6,
                Command::DeleteVolume {
                    name: "drop".into(),
                },
            ),
        ])
        .await
        .expect("applied");
        state_of(&sm)
    };
    assert_eq!(expected.volumes.len(), 1);
    // Two registrations, two creations, a failover with its copy change, a deletion.
    assert_eq!(expected.events.last_seq(), 7, "{:?}", expected.events);
    let (_log, sm) = open(dir.path()).expect("reopens");
    assert_eq!(state_of(&sm), expected, "the event log too");
}

#[tokio::test]
async fn copy_set_changes_and_drains_survive_a_reopen_of_sled() {
    use crate::state::command::SliceUpdate;
    use vbs_wire::types::{Generation, UnitId};

    let dir = tempfile::tempdir().expect("temp dir");
    let expected = {
        let (_log, mut sm) = open(dir.path()).expect("opens");
        let unit = UnitId::new(1, 0);
        let replace = SliceUpdate {
            add: vec![node("n3")],
            remove: vec![node("n2")],
            ..SliceUpdate::new(unit, Generation(1))
        };
        sm.apply([
            command_entry(1, 1, register("n1")),
            command_entry(1, 2, register("n2")),
            command_entry(1, 3, register("n3")),
            command_entry(1, 4, create("vol", &["n1", "n2"])),
            command_entry(
                1,
                5,
                Command::UpdateSlices {
                    updates: vec![replace],
                },
            ),
            command_entry(
                1,
                6,
                Command::SetDraining {
                    node: node("n1"),
                    draining: true,
                },
            ),
        ])
        .await
        .expect("applied");
        let state = state_of(&sm);
        assert!(state.nodes[&node("n3")].units.contains(&unit));
        assert!(state.nodes[&node("n2")].units.is_empty());
        assert!(state.nodes[&node("n1")].draining);
        state
    };
    let (_log, sm) = open(dir.path()).expect("reopens");
    let reopened = state_of(&sm);
    assert_eq!(reopened, expected);
    reopened.check_invariants().expect("consistent");
}

#[tokio::test]
async fn a_snapshot_built_from_an_older_state_never_replaces_a_newer_installed_one() {
    let leader_dir = tempfile::tempdir().expect("temp dir");
    let (_log, mut leader) = open(leader_dir.path()).expect("opens");
    leader
        .apply([
            command_entry(1, 1, register("n1")),
            command_entry(1, 2, register("n2")),
            command_entry(1, 3, create("vol", &["n1", "n2"])),
        ])
        .await
        .expect("applied");
    let newer = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("built");

    let dir = tempfile::tempdir().expect("temp dir");
    let (_flog, mut follower) = open(dir.path()).expect("opens");
    follower
        .apply([command_entry(1, 1, register("n1"))])
        .await
        .expect("applied");
    // The follower's own snapshot task copied its state (index 1) ...
    let older = super::snapshot::StoredSnapshot {
        meta: openraft::SnapshotMeta {
            last_log_id: Some(log_id(1, 1, 1)),
            last_membership: Default::default(),
            snapshot_id: "1-1-1".into(),
        },
        data: super::snapshot::encode_state(&state_of(&follower)).expect("encodes"),
    };
    // ... then the leader's snapshot (index 3) was installed, and only then the task writes.
    let newer_meta = newer.meta.clone();
    follower
        .install_snapshot(&newer.meta, newer.snapshot)
        .await
        .expect("installed");
    assert!(!follower.save_snapshot(&older).expect("no error"));
    let current = follower
        .get_current_snapshot()
        .await
        .expect("read")
        .expect("present");
    assert_eq!(current.meta, newer_meta);
    drop((_flog, follower));
    // Even with sled lost entirely, the snapshot file restores the installed state.
    std::fs::remove_dir_all(dir.path().join("state")).expect("sled removed");
    let (_flog, follower) = open(dir.path()).expect("reopens");
    assert_eq!(state_of(&follower), state_of(&leader));
}

#[test]
fn a_state_database_in_use_is_refused_in_one_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _held = StateMachine::open(dir.path()).expect("opens");
    let error = StateMachine::open(dir.path())
        .err()
        .expect("a second open of a database in use is refused");
    let message = error.to_string();
    assert!(
        message.contains("could not acquire lock") && message.contains("another vbs-manager"),
        "{message}"
    );
}

#[test]
fn a_reopen_waits_for_the_lock_of_a_database_just_closed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let held = StateMachine::open(dir.path()).expect("opens");
    // Closed from another thread a moment after the reopen started: the reopen must wait for
    // the lock rather than fail.
    let (started, starting) = std::sync::mpsc::channel();
    let closer = std::thread::spawn(move || {
        starting.recv().expect("the reopen started");
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
    });
    started.send(()).expect("the closer waits");
    StateMachine::open(dir.path()).expect("reopens once the lock is released");
    closer.join().expect("the closer finished");
}
