//! The Raft state machine: the [`State`] in memory, mirrored into a sled tree, plus snapshot
//! files.
//!
//! Each batch of applied entries is written to sled as one atomic batch holding the changed
//! records *and* the last applied log id, so sled always holds the state of some applied prefix
//! of the log. sled is not fsynced here (its `flush` is only `sync_file_range`): after a crash
//! it may have lost the last applies, and openraft applies those entries again from the Raft log,
//! which is durable. The log is only purged up to a snapshot, and snapshots are durable files, so
//! when sled is found behind the snapshot on open, the snapshot is loaded into it first.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use parking_lot::{Mutex, RwLock};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::snapshot::{self, StoredSnapshot};
use crate::raft_types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::apply::Touched;
use crate::state::{Outcome, State, Volume};
use vbs_wire::types::{SliceIndex, UnitId, VolumeId};

const TREE: &str = "state";
const FORMAT: u64 = 1;
const KEY_FORMAT: &[u8] = b"meta/format";
const KEY_APPLIED: &[u8] = b"meta/applied";
const KEY_MEMBERSHIP: &[u8] = b"meta/membership";
const KEY_NEXT_VOLUME_ID: &[u8] = b"meta/next_volume_id";
const NODE_PREFIX: &[u8] = b"node/";
const VOLUME_PREFIX: &[u8] = b"volume/";
const SLICE_PREFIX: &[u8] = b"slice/";
const EVENT_PREFIX: &[u8] = b"event/";

/// A volume in sled without its slices, which are records of their own so that a status change
/// rewrites one slice rather than the whole volume.
#[derive(Serialize, serde::Deserialize)]
struct VolumeRecord {
    id: VolumeId,
    name: String,
    size_bytes: u64,
    slice_bytes: u64,
    replicas: u32,
    slice_count: u32,
}

/// The state at some applied log index, as the API reads it.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared read access to the applied state, for the API and the failure detector.
pub type SharedState = Arc<RwLock<Applied>>;

struct Inner {
    tree: sled::Tree,
    /// Held by the sled handle's lifetime: dropping the last `Db` flushes and closes it.
    _db: sled::Db,
    snapshot_dir: PathBuf,
    shared: SharedState,
    /// Distinguishes snapshots built at the same log id.
    snapshots_built: AtomicU64,
    /// The last log id of the snapshot file; held while the file is replaced. openraft builds
    /// snapshots in a task of their own, concurrently with installing one from the leader, so
    /// without it the two could write the temporary file at once, or a snapshot built from an
    /// older state could replace a newer installed one after the log was purged up to the
    /// latter.
    snapshot_file: Mutex<Option<LogId>>,
}

/// The state machine store; clones share it (openraft takes one as its snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("state key {}: {e}", String::from_utf8_lossy(key))))
}

/// Slices of a deleted volume to remove: the apply that deleted it recorded how many it had.
fn removed_slices(touched: &Touched, id: VolumeId) -> u32 {
    touched.removed_slices.get(&id).copied().unwrap_or(0)
}

fn node_key(id: &vbs_wire::types::NodeId) -> Vec<u8> {
    [NODE_PREFIX, id.0.as_bytes()].concat()
}

fn volume_key(id: VolumeId) -> Vec<u8> {
    [VOLUME_PREFIX, &id.0.to_be_bytes()[..]].concat()
}

fn slice_key(unit: UnitId) -> Vec<u8> {
    [
        SLICE_PREFIX,
        &unit.volume.0.to_be_bytes()[..],
        &unit.slice.0.to_be_bytes()[..],
    ]
    .concat()
}

fn event_key(seq: u64) -> Vec<u8> {
    [EVENT_PREFIX, &seq.to_be_bytes()[..]].concat()
}

/// Writes (or, when `volume` is `None`, removes) a volume's header and slices into `batch`.
fn put_volume(
    batch: &mut sled::Batch,
    id: VolumeId,
    volume: Option<&Volume>,
    old_slices: u32,
) -> io::Result<()> {
    let Some(volume) = volume else {
        batch.remove(volume_key(id));
        for index in 0..old_slices {
            batch.remove(slice_key(UnitId {
                volume: id,
                slice: SliceIndex(index),
            }));
        }
        return Ok(());
    };
    let record = VolumeRecord {
        id,
        name: volume.name.clone(),
        size_bytes: volume.size_bytes,
        slice_bytes: volume.slice_bytes,
        replicas: volume.replicas,
        slice_count: volume.slices.len() as u32,
    };
    batch.insert(volume_key(id), encode(&record)?);
    for (index, slice) in volume.slices.iter().enumerate() {
        batch.insert(
            slice_key(UnitId {
                volume: id,
                slice: SliceIndex(index as u32),
            }),
            encode(slice)?,
        );
    }
    Ok(())
}

fn sm_read_err(e: io::Error) -> StorageError {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: io::Error) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

/// How long [`open_sled`] waits for the lock of a database that was just closed.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled at `path`, waiting (bounded) for its file lock. Dropping a `sled::Db` does not
/// release the lock at once: its flusher thread holds it until it exits (sled issue #1289), so
/// a reopen right after a close, in the same process or by a restarted manager, may find it
/// still held for a moment.
fn open_sled(path: &Path) -> io::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Ok(db) => return Ok(db),
            // sled 0.34 reports a held lock only in the message of an `Other` error.
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::other(format!(
                        "{e}: is another vbs-manager using {}?",
                        path.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

impl StateMachine {
    /// Opens the state machine in `dir` (sled under `dir/state`, the snapshot file in `dir`).
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let db = open_sled(&dir.join("state"))?;
        let tree = db.open_tree(TREE).map_err(io::Error::other)?;
        let mut applied = load(&tree)?;
        let stored = snapshot::read(dir)?;
        let snapshot_file = stored.as_ref().and_then(|s| s.meta.last_log_id);
        if let Some(stored) = stored {
            if stored.meta.last_log_id > applied.last_applied {
                tracing::info!(
                    snapshot = ?stored.meta.last_log_id,
                    sled = ?applied.last_applied,
                    "state in sled is behind the snapshot; loading the snapshot"
                );
                applied = replace_all(&tree, &stored)?;
            }
        }
        let inner = Inner {
            tree,
            _db: db,
            snapshot_dir: dir.to_path_buf(),
            shared: Arc::new(RwLock::new(applied)),
            snapshots_built: AtomicU64::new(0),
            snapshot_file: Mutex::new(snapshot_file),
        };
        Ok(StateMachine {
            inner: Arc::new(inner),
        })
    }

    /// The applied state, for readers.
    pub fn shared(&self) -> SharedState {
        self.inner.shared.clone()
    }

    /// Makes `stored` the snapshot file, unless the file already holds a newer snapshot. Returns
    /// whether it was written. Blocking. For tests that interleave a build with an install.
    #[cfg(test)]
    pub(crate) fn save_snapshot(&self, stored: &StoredSnapshot) -> io::Result<bool> {
        self.inner.save_snapshot(stored)
    }

    /// Writes the records `touched` named, and the applied id and membership, in one atomic
    /// batch.
    fn persist(&self, applied: &Applied, touched: &Touched) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for id in &touched.nodes {
            match applied.state.nodes.get(id) {
                Some(node) => batch.insert(node_key(id), encode(node)?),
                None => batch.remove(node_key(id)),
            }
        }
        for id in &touched.volumes {
            put_volume(
                &mut batch,
                *id,
                applied.state.volumes.get(id),
                removed_slices(touched, *id),
            )?;
        }
        #[cfg(feature = "bugs")]
        let forget_slices = crate::bugs::enabled(crate::bugs::Bug::RestartLosesSlices);
        #[cfg(not(feature = "bugs"))]
        let forget_slices = false;
        for unit in touched
            .slices
            .iter()
            .filter(|u| !forget_slices && !touched.volumes.contains(&u.volume))
        {
            if let Some(slice) = applied.state.slice(*unit) {
                batch.insert(slice_key(*unit), encode(slice)?);
            }
        }
        for seq in &touched.events_dropped {
            batch.remove(event_key(*seq));
        }
        for seq in &touched.events_written {
            // An entry written and dropped within one batch has nothing to keep.
            if let Some(event) = applied.state.events.get(*seq) {
                batch.insert(event_key(*seq), encode(event)?);
            }
        }
        put_meta(&mut batch, applied)?;
        self.inner.tree.apply_batch(batch).map_err(io::Error::other)
    }
}

impl Inner {
    fn save_snapshot(&self, stored: &StoredSnapshot) -> io::Result<bool> {
        let mut on_file = self.snapshot_file.lock();
        if stored.meta.last_log_id < *on_file {
            tracing::info!(
                built = ?stored.meta.last_log_id,
                kept = ?*on_file,
                "a newer snapshot was installed while this one was built; keeping the newer"
            );
            return Ok(false);
        }
        snapshot::write(&self.snapshot_dir, stored)?;
        *on_file = stored.meta.last_log_id;
        Ok(true)
    }
}

fn put_meta(batch: &mut sled::Batch, applied: &Applied) -> io::Result<()> {
    batch.insert(KEY_FORMAT, encode(&FORMAT)?);
    batch.insert(KEY_APPLIED, encode(&applied.last_applied)?);
    batch.insert(KEY_MEMBERSHIP, encode(&applied.membership)?);
    batch.insert(KEY_NEXT_VOLUME_ID, encode(&applied.state.next_volume_id)?);
    Ok(())
}

/// Reads the whole state from sled.
fn load(tree: &sled::Tree) -> io::Result<Applied> {
    let get = |key: &[u8]| tree.get(key).map_err(io::Error::other);
    let Some(format) = get(KEY_FORMAT)? else {
        return Ok(Applied::default());
    };
    let format: u64 = decode(KEY_FORMAT, &format)?;
    if format != FORMAT {
        return Err(invalid(format!(
            "state format {format} is not supported (expected {FORMAT})"
        )));
    }
    let mut applied = Applied::default();
    if let Some(bytes) = get(KEY_APPLIED)? {
        applied.last_applied = decode(KEY_APPLIED, &bytes)?;
    }
    if let Some(bytes) = get(KEY_MEMBERSHIP)? {
        applied.membership = decode(KEY_MEMBERSHIP, &bytes)?;
    }
    if let Some(bytes) = get(KEY_NEXT_VOLUME_ID)? {
        applied.state.next_volume_id = decode(KEY_NEXT_VOLUME_ID, &bytes)?;
    }
    for item in tree.scan_prefix(NODE_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        let node: crate::state::Node = decode(&key, &value)?;
        applied.state.nodes.insert(node.id.clone(), node);
    }
    for item in tree.scan_prefix(VOLUME_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        let record: VolumeRecord = decode(&key, &value)?;
        let mut slices = Vec::with_capacity(record.slice_count as usize);
        for index in 0..record.slice_count {
            let key = slice_key(UnitId {
                volume: record.id,
                slice: SliceIndex(index),
            });
            let bytes = get(&key)?
                .ok_or_else(|| invalid(format!("volume {} lacks slice {index}", record.id)))?;
            slices.push(decode(&key, &bytes)?);
        }
        let volume = Volume {
            id: record.id,
            name: record.name,
            size_bytes: record.size_bytes,
            slice_bytes: record.slice_bytes,
            replicas: record.replicas,
            slices,
        };
        applied.state.volumes.insert(volume.id, volume);
    }
    let mut events = Vec::new();
    for item in tree.scan_prefix(EVENT_PREFIX) {
        let (key, value) = item.map_err(io::Error::other)?;
        events.push(decode(&key, &value)?);
    }
    applied.state.events = crate::state::EventLog::from_entries(events);
    applied
        .state
        .check_invariants()
        .map_err(|e| invalid(format!("state in sled: {e}")))?;
    Ok(applied)
}

/// Replaces everything in sled with the snapshot's state, in one atomic batch: every old key is
/// removed, so nothing of the previous state survives an install.
fn replace_all(tree: &sled::Tree, stored: &StoredSnapshot) -> io::Result<Applied> {
    let applied = Applied {
        state: stored.state()?,
        last_applied: stored.meta.last_log_id,
        membership: stored.meta.last_membership.clone(),
    };
    let mut batch = sled::Batch::default();
    for key in tree.iter().keys() {
        batch.remove(key.map_err(io::Error::other)?);
    }
    for (id, node) in &applied.state.nodes {
        batch.insert(node_key(id), encode(node)?);
    }
    for (id, volume) in &applied.state.volumes {
        put_volume(&mut batch, *id, Some(volume), 0)?;
    }
    for event in applied.state.events.entries() {
        batch.insert(event_key(event.seq), encode(event)?);
    }
    put_meta(&mut batch, &applied)?;
    tree.apply_batch(batch).map_err(io::Error::other)?;
    Ok(applied)
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Serializes a copy of the state taken under the read lock, so applies can go on while the
    /// file is written.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.inner.shared.read().clone();
        let data = snapshot::encode_state(&applied.state).map_err(sm_read_err)?;
        let built = self.inner.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match applied.last_applied {
            Some(id) => format!("{}-{}-{built}", id.leader_id.term, id.index),
            None => format!("0-0-{built}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let inner = self.inner.clone();
        let to_write = stored.clone();
        tokio::task::spawn_blocking(move || inner.save_snapshot(&to_write))
            .await
            .map_err(|e| sm_write_err(io::Error::other(e)))?
            .map_err(|e| {
                StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
            })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.inner.shared.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut touched = Touched::default();
        let mut outcomes = Vec::new();
        let mut applied = self.inner.shared.write();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let outcome = match &entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Normal(command) => applied.state.apply(command, &mut touched),
                EntryPayload::Membership(membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    Outcome::Done
                }
            };
            if let Outcome::Refused(refusal) = &outcome {
                tracing::debug!(log_id = %entry.log_id, %refusal, "command refused");
            }
            outcomes.push(outcome);
        }
        // Written under the lock so that sled and memory never disagree about the applied id.
        self.persist(&applied, &touched).map_err(sm_write_err)?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Writes the snapshot file first, then replaces the whole state: after a crash in between,
    /// [`StateMachine::open`] finds sled behind the snapshot and loads it.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let signature = meta.signature();
        let read_err = |e: io::Error| -> StorageError {
            StorageIOError::read_snapshot(Some(signature.clone()), &e).into()
        };
        stored.state().map_err(read_err)?;
        let inner = self.inner.clone();
        let applied = tokio::task::spawn_blocking(move || {
            inner.save_snapshot(&stored)?;
            let mut shared = inner.shared.write();
            let applied = replace_all(&inner.tree, &stored)?;
            *shared = applied.clone();
            Ok::<_, io::Error>(applied)
        })
        .await
        .map_err(|e| sm_write_err(io::Error::other(e)))?
        .map_err(sm_write_err)?;
        tracing::info!(last_log_id = ?applied.last_applied, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let dir = self.inner.snapshot_dir.clone();
        let stored = tokio::task::spawn_blocking(move || snapshot::read(&dir))
            .await
            .map_err(|e| sm_read_err(io::Error::other(e)))?
            .map_err(sm_read_err)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

/// Applies commands directly, for tests of the store that need real content.
#[cfg(test)]
pub fn command_entry(term: u64, index: u64, command: crate::state::Command) -> Entry {
    let mut entry = openraft::testing::blank_ent::<TypeConfig>(term, 1, index);
    entry.payload = EntryPayload::Normal(command);
    entry
}
