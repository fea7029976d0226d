//! The Raft log and vote: [`RaftLogStorage`] over one append-only file ([`super::log_file`]) and
//! one small vote file.
//!
//! Durability contract:
//! - `append` writes the entries to the file (and to the in-memory index, so they are readable at
//!   once) and returns; a dedicated flusher thread fdatasyncs and only then fires the callback.
//!   Appends queued while an fdatasync runs share the next one (group commit).
//! - `save_vote` returns once the vote file is replaced and fsynced, directory included.
//! - `truncate` and `purge` wait for pending flushes, then change the file durably before
//!   returning. A purge rewrites the file without the purged entries (temp, fsync, rename, fsync
//!   the directory); it runs once per snapshot, on a log of a few thousand entries.
//! - `save_committed` is kept in memory only, for metrics: after a restart the committed index is
//!   learnt again from the leader.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::fsutil::{atomic_write, read_if_exists};
use super::log_file::{self, LogRecord, LogRecordRef};
use crate::raft_types::{Entry, LogId, StorageError, TypeConfig, Vote};

const LOG_FILE: &str = "raft-log";
const VOTE_FILE: &str = "vote.json";
const VOTE_FORMAT: u32 = 1;
/// Appends that may wait for the flusher before `append` itself blocks: back-pressure.
const MAX_PENDING_FLUSHES: usize = 4096;

/// The vote file's content.
#[derive(Serialize, Deserialize)]
struct VoteFile {
    format: u32,
    vote: Vote,
}

enum FlushJob {
    /// Fire the callback once every write before it is durable.
    Flush(LogFlushed<TypeConfig>),
    /// Answer once every write before it is durable.
    Barrier(SyncSender<io::Result<()>>),
}

/// The in-memory index of the log file.
struct Mem {
    /// Entries by index, with the file offset of their record.
    entries: BTreeMap<u64, (u64, Entry)>,
    last_purged: Option<LogId>,
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
}

struct Inner {
    dir: PathBuf,
    mem: Mutex<Mem>,
    /// The file the flusher syncs; swapped when a purge rewrites the log.
    current_file: Arc<Mutex<Arc<File>>>,
    flusher: SyncSender<FlushJob>,
    vote: Mutex<Option<Vote>>,
    /// Committed index + 1 (0: none), for metrics.
    committed: AtomicU64,
}

/// The Raft log store. Clones share the same log; openraft uses one as its log reader.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

fn io_err(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, cutting off a torn tail left by a crash.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        let end = match read_if_exists(dir, LOG_FILE)? {
            None => {
                atomic_write(dir, LOG_FILE, &log_file::header())?;
                log_file::HEADER_BYTES as u64
            }
            Some(bytes) => {
                let scanned = log_file::scan(&bytes).map_err(io_err)?;
                if let Some(reason) = &scanned.torn_tail {
                    tracing::warn!(%reason, at = scanned.valid_end, "cutting a torn tail off the Raft log");
                }
                for (offset, record) in scanned.records {
                    match record {
                        LogRecord::Entry(entry) => {
                            entries.insert(entry.log_id.index, (offset, entry));
                        }
                        LogRecord::Purged(id) => last_purged = Some(id),
                    }
                }
                scanned.valid_end
            }
        };
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if file.metadata()?.len() != end {
            file.set_len(end)?;
            file.sync_all()?;
        }
        let vote = match read_if_exists(dir, VOTE_FILE)? {
            None => None,
            Some(bytes) => {
                let stored: VoteFile = serde_json::from_slice(&bytes).map_err(io_err)?;
                if stored.format != VOTE_FORMAT {
                    return Err(io::Error::other(format!(
                        "vote file format {} is not supported (expected {VOTE_FORMAT})",
                        stored.format
                    )));
                }
                Some(stored.vote)
            }
        };
        let file = Arc::new(file);
        let current_file = Arc::new(Mutex::new(file.clone()));
        let (flusher, jobs) = sync_channel(MAX_PENDING_FLUSHES);
        let flusher_file = current_file.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(jobs, flusher_file))?;
        let mem = Mem {
            entries,
            last_purged,
            file,
            end,
        };
        Ok(LogStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                mem: Mutex::new(mem),
                current_file,
                flusher,
                vote: Mutex::new(vote),
                committed: AtomicU64::new(0),
            }),
        })
    }

    /// The committed index openraft last reported, for metrics.
    pub fn committed_index(&self) -> Option<u64> {
        self.inner.committed.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Runs blocking file work off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| io::Error::other(format!("log task failed: {e}")))?
    }
}

/// The flusher thread: one fdatasync for every batch of queued jobs. After a failed fdatasync the
/// page cache may have dropped the unwritten pages, so every later job fails too.
fn run_flusher(jobs: Receiver<FlushJob>, file: Arc<Mutex<Arc<File>>>) {
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        batch.extend(jobs.try_iter().take(MAX_PENDING_FLUSHES));
        if failed.is_none() {
            let current = file.lock().clone();
            if let Err(e) = current.sync_data() {
                tracing::error!(error = %e, "fdatasync of the Raft log failed");
                failed = Some((e.kind(), e.to_string()));
            }
        }
        for job in batch {
            let result = match &failed {
                None => Ok(()),
                Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            };
            match job {
                FlushJob::Flush(callback) => callback.log_io_completed(result),
                // The waiter may have given up; nothing to do then.
                FlushJob::Barrier(reply) => drop(reply.send(result)),
            }
        }
    }
}

impl Inner {
    /// Waits until every write made so far is durable.
    fn wait_for_flushes(&self) -> io::Result<()> {
        let (reply, done) = sync_channel(1);
        self.flusher
            .send(FlushJob::Barrier(reply))
            .map_err(|_| io::Error::other("the Raft log flusher stopped"))?;
        done.recv()
            .map_err(|_| io::Error::other("the Raft log flusher stopped"))?
    }

    fn truncate(&self, index: u64) -> io::Result<()> {
        self.wait_for_flushes()?;
        let mut mem = self.mem.lock();
        let Some((&first, &(offset, _))) = mem.entries.range(index..).next() else {
            return Ok(());
        };
        mem.entries.split_off(&first);
        mem.file.set_len(offset)?;
        mem.file.sync_data()?;
        mem.end = offset;
        Ok(())
    }

    /// Drops entries up to `upto` and rewrites the file without them.
    fn purge(&self, upto: LogId) -> io::Result<()> {
        self.wait_for_flushes()?;
        let mut mem = self.mem.lock();
        let kept = mem.entries.split_off(&(upto.index + 1));
        let mut bytes = log_file::header().to_vec();
        log_file::encode(&mut bytes, &LogRecordRef::Purged(&upto)).map_err(io_err)?;
        let mut entries = BTreeMap::new();
        for (index, (_, entry)) in kept {
            let offset = bytes.len() as u64;
            log_file::encode(&mut bytes, &LogRecordRef::Entry(&entry)).map_err(io_err)?;
            entries.insert(index, (offset, entry));
        }
        atomic_write(&self.dir, LOG_FILE, &bytes)?;
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.dir.join(LOG_FILE))?,
        );
        *self.current_file.lock() = file.clone();
        *mem = Mem {
            entries,
            last_purged: Some(upto),
            file,
            end: bytes.len() as u64,
        };
        Ok(())
    }

    fn save_vote(&self, vote: &Vote) -> io::Result<()> {
        let bytes = serde_json::to_vec(&VoteFile {
            format: VOTE_FORMAT,
            vote: *vote,
        })
        .map_err(io_err)?;
        atomic_write(&self.dir, VOTE_FILE, &bytes)?;
        *self.vote.lock() = Some(*vote);
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let mem = self.inner.mem.lock();
        Ok(mem
            .entries
            .range(range)
            .map(|(_, (_, e))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.inner.mem.lock();
        let last = mem
            .entries
            .values()
            .next_back()
            .map(|(_, e)| *e.get_log_id());
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: last.or(mem.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |inner| inner.save_vote(&vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(*self.inner.vote.lock())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let encoded = committed.map_or(0, |id| id.index + 1);
        self.inner.committed.store(encoded, Ordering::Relaxed);
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut mem = self.inner.mem.lock();
        let mut bytes = Vec::new();
        let mut next_index = mem.entries.keys().next_back().map(|i| i + 1);
        let mut added = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            if next_index.is_some_and(|next| next != index) {
                let e = io::Error::other(format!("append of entry {index} would leave a gap"));
                return Err(StorageIOError::write_logs(&e).into());
            }
            next_index = Some(index + 1);
            let offset = mem.end + bytes.len() as u64;
            log_file::encode(&mut bytes, &LogRecordRef::Entry(&entry))
                .map_err(|e| StorageIOError::write_logs(&e))?;
            added.push((index, (offset, entry)));
        }
        // A buffered write of a few KiB: it lands in the page cache without waiting for the disk,
        // so it is done inline; the fdatasync is the flusher's.
        mem.file
            .write_all_at(&bytes, mem.end)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        mem.end += bytes.len() as u64;
        mem.entries.extend(added);
        drop(mem);
        self.inner
            .flusher
            .send(FlushJob::Flush(callback))
            .map_err(|_| {
                let e = io::Error::other("the Raft log flusher stopped");
                StorageError::from(StorageIOError::write_logs(&e))
            })?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| inner.truncate(log_id.index))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |inner| inner.purge(log_id))
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
