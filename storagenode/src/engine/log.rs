//! The device log: one append-only log of segments that every unit of a device writes its records
//! to, with group commit across units.
//!
//! `append` and `apply` of any unit put their records in the log's pending queue and wait. The
//! first thread to find the writer free becomes the writer: it takes everything pending (up to
//! [`MAX_BATCH_BYTES`]), encodes it into one buffer, writes it with one `pwrite` and syncs once,
//! publishes each record to its unit's index, and wakes every waiter at once. Records that arrive
//! during a sync form the next batch. Writes to different units of one device that are in flight
//! together therefore share one flush (`docs/storage-engine.md`).
//!
//! Async waiters ([`Log::wait_durable_async`]) are served by the device's one commit thread
//! (`committer.rs`) under load, and write a lone batch themselves otherwise.
//!
//! One file, past 600 lines, because the group commit is one protocol: who becomes the writer,
//! what a batch takes, how durability is published and how a failure reaches every waiter share
//! one lock and one set of invariants, and read apart they would hide the hand-offs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard, RwLock};
use vbs_wire::types::{Generation, Vba};

use super::backend::{Backend, BlockFile};
use super::committer::Committer;
use super::error::{device_err, EngineError, Result};
use super::index::Location;
use super::pool::SegmentPool;
use super::record::{self, Op, WRITE_RECORD_BYTES};
use super::segment::{SegmentHeader, Vsid, MAX_BATCH_BYTES, SEGMENT_HEADER_BYTES};
use super::unit::Unit;

/// The directory of the device's log segments.
pub const LOG_DIR: &str = "log";
/// How long a new batch writer waits for the writers released by the last batch to queue their
/// next records. Small beside a sync (~100 us), and only spent when the last batch was bigger
/// than what is pending.
const GATHER_WAIT: Duration = Duration::from_micros(30);

/// A segment of the log.
pub(super) struct Segment {
    pub file: Arc<dyn BlockFile>,
    pub nonce: u64,
    /// Offset just past the last record published in it.
    pub end: u64,
}

/// The segment being appended to, owned by whichever thread is writing a batch.
pub(super) struct Active {
    pub vsid: Vsid,
    pub file: Arc<dyn BlockFile>,
    pub nonce: u64,
    pub offset: u64,
}

/// The writer's position; taken out of the state by the thread that writes a batch, so only one
/// thread writes at a time and the others keep queueing meanwhile.
pub(super) struct Cursor {
    pub active: Option<Active>,
    pub next_log_vsid: u32,
    /// Scratch space for encoding a batch, kept from batch to batch.
    pub buf: Vec<u8>,
}

/// A record accepted by a unit, waiting to be written.
pub(super) struct Pending {
    pub unit: Arc<Unit>,
    pub vba: Vba,
    pub generation: Generation,
    pub op: Op,
}

struct State {
    /// Accepted records not yet written; each unit's in VBA order.
    pending: VecDeque<Pending>,
    /// `None` while a batch is being written.
    cursor: Option<Cursor>,
    batches: u64,
    last_batch_len: usize,
}

/// Counters of the log, for benchmarks and maintenance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub segments: usize,
    /// Bytes of records in the log's segments, live or not.
    pub log_bytes: u64,
    /// Group-commit batches written since the device was opened (each one write call and one
    /// sync per segment it touched).
    pub batches: u64,
}

pub struct Log {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) pool: Arc<SegmentPool>,
    sync: bool,
    state: Mutex<State>,
    /// Every segment of the log, for readers.
    segments: RwLock<BTreeMap<Vsid, Segment>>,
    /// Set when a write failed: the log's end is unknown until the device is reopened.
    failed: OnceLock<String>,
    /// Bumped (and waited on) whenever a batch completes or fails.
    batch_seq: AtomicU32,
    /// Threads waiting on `batch_seq`: a batch wakes them only when there are any, which spares
    /// the async writers' batches a system call.
    batch_waiters: AtomicU32,
    committer: OnceLock<Committer>,
    pub(super) next_compacted_vsid: AtomicU32,
    /// Every record of the log segments below this VSID is published to its unit: compaction
    /// looks at no segment from here on.
    published_below: AtomicU32,
    /// Held by compaction, truncation, checkpoints and repairs, which must not run at the same
    /// time.
    pub(super) maintenance: Mutex<()>,
    /// Segments where compaction found a damaged record: it leaves them alone (what follows the
    /// damage cannot be found by reading on).
    pub(super) damaged_segments: Mutex<BTreeSet<Vsid>>,
    /// Bytes of records written to the log since it was opened, plus those recovery replayed.
    appended: AtomicU64,
    /// Bytes of records queued or being written: room the log still owes them.
    unwritten: AtomicU64,
    /// Bytes left in the segment being appended to, as of the last batch.
    active_room: AtomicU64,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Log({})", self.backend.describe())
    }
}

/// The path of a log segment.
pub(super) fn segment_path(vsid: Vsid) -> String {
    format!("{LOG_DIR}/{}", vsid.file_name())
}

impl Log {
    pub(super) fn new(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        sync: bool,
        segments: BTreeMap<Vsid, Segment>,
        cursor: Cursor,
        next_compacted_vsid: u32,
        replayed_bytes: u64,
    ) -> Log {
        let published_below = cursor
            .active
            .as_ref()
            .map_or(cursor.next_log_vsid, |a| a.vsid.0);
        let active_room = room_left(&cursor, pool.segment_bytes());
        Log {
            backend,
            pool,
            sync,
            state: Mutex::new(State {
                pending: VecDeque::new(),
                cursor: Some(cursor),
                batches: 0,
                last_batch_len: 0,
            }),
            segments: RwLock::new(segments),
            failed: OnceLock::new(),
            batch_seq: AtomicU32::new(0),
            batch_waiters: AtomicU32::new(0),
            committer: OnceLock::new(),
            next_compacted_vsid: AtomicU32::new(next_compacted_vsid),
            published_below: AtomicU32::new(published_below),
            maintenance: Mutex::new(()),
            damaged_segments: Mutex::new(BTreeSet::new()),
            appended: AtomicU64::new(replayed_bytes),
            unwritten: AtomicU64::new(0),
            active_room: AtomicU64::new(active_room),
        }
    }

    /// Bytes of records written since the log was opened, plus those its opening replayed.
    pub(super) fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// The end of the log at a moment when no batch is being written, so that every record before
    /// it is published to its unit.
    pub(super) fn published_end(&self) -> (Vsid, u64) {
        loop {
            let state = self.state.lock();
            if let Some(cursor) = &state.cursor {
                return match &cursor.active {
                    Some(active) => (active.vsid, active.offset),
                    None => (Vsid(cursor.next_log_vsid), SEGMENT_HEADER_BYTES),
                };
            }
            self.batch_waiters.fetch_add(1, Ordering::SeqCst);
            let seen = self.batch_seq.load(Ordering::SeqCst);
            drop(state);
            atomic_wait::wait(&self.batch_seq, seen);
            self.batch_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Starts the commit thread, which writes batches for async writers under load
    /// ([`Log::wait_durable_async`]).
    pub(super) fn start_committer(self: &Arc<Self>) -> std::io::Result<()> {
        if self.committer.get().is_none() {
            let _ = self
                .committer
                .set(Committer::start(self, &self.describe())?);
        }
        Ok(())
    }

    /// Why the log stopped taking writes, if it did.
    pub(super) fn failed(&self) -> Option<&String> {
        self.failed.get()
    }

    /// Queues records a unit numbered. Called under the unit's lock, so that each unit's records
    /// are queued in VBA order.
    pub(super) fn enqueue(&self, records: impl IntoIterator<Item = Pending>) {
        let mut state = self.state.lock();
        let before = state.pending.len();
        state.pending.extend(records);
        let bytes = bytes_of(state.pending.range(before..));
        self.unwritten.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Refuses `bytes` of new records when the log has no room left for them after the records
    /// queued before: room is what is left of the active segment, the spare segments ready, and
    /// the segments the filesystem's free space can still make. Units check before they number
    /// records, so a refusal leaves nothing numbered, sent or half-written; once space comes back
    /// (a file deleted, compaction) the same write succeeds.
    pub(super) fn check_room(&self, bytes: u64) -> Result<()> {
        let segment = self.pool.segment_bytes();
        let usable = segment.saturating_sub(SEGMENT_HEADER_BYTES + WRITE_RECORD_BYTES as u64);
        let need = self.unwritten.load(Ordering::SeqCst) + bytes + ROOM_MARGIN_BYTES;
        let mut room = self.active_room.load(Ordering::SeqCst);
        if room >= need {
            return Ok(());
        }
        room += self.pool.ready() as u64 * usable;
        if room >= need {
            return Ok(());
        }
        let free = self.backend.space().map_or(0, |space| space.free_bytes);
        room += free / segment * usable;
        if room >= need {
            return Ok(());
        }
        Err(EngineError::NoSpace {
            device: self.describe(),
            needed: bytes,
            free,
        })
    }

    /// The content checksum of `unit`'s record `vba` if it is still queued.
    pub(super) fn queued_content_crc(&self, unit: &Unit, vba: Vba) -> Option<u32> {
        self.state
            .lock()
            .pending
            .iter()
            .find(|p| std::ptr::eq(Arc::as_ptr(&p.unit), unit) && p.vba == vba)
            .map(|p| p.op.content_crc())
    }

    /// The file and nonce of segment `vsid`.
    pub(super) fn segment(&self, vsid: Vsid) -> Option<(Arc<dyn BlockFile>, u64)> {
        self.segments
            .read()
            .get(&vsid)
            .map(|s| (s.file.clone(), s.nonce))
    }

    /// The published end of segment `vsid`.
    pub(super) fn segment_end(&self, vsid: Vsid) -> Option<u64> {
        self.segments.read().get(&vsid).map(|s| s.end)
    }

    /// `(VSID, published end)` of every segment.
    pub(super) fn segment_ends(&self) -> Vec<(Vsid, u64)> {
        self.segments
            .read()
            .iter()
            .map(|(vsid, s)| (*vsid, s.end))
            .collect()
    }

    /// Whether every record of segment `vsid` is written and published: a compacted segment, or
    /// a log segment older than the one being appended to.
    pub(super) fn sealed(&self, vsid: Vsid) -> bool {
        !vsid.is_log() || vsid.0 < self.published_below.load(Ordering::Acquire)
    }

    pub(super) fn add_segment(&self, vsid: Vsid, segment: Segment) {
        self.segments.write().insert(vsid, segment);
    }

    pub(super) fn remove_segment(&self, vsid: Vsid) -> Option<Segment> {
        self.segments.write().remove(&vsid)
    }

    pub fn stats(&self) -> LogStats {
        let segments = self.segments.read();
        LogStats {
            segments: segments.len(),
            log_bytes: segments
                .values()
                .map(|s| s.end - SEGMENT_HEADER_BYTES)
                .sum(),
            batches: self.state.lock().batches,
        }
    }

    /// Writes every record queued so far (the commit thread's work).
    pub(super) fn commit_pending(&self) -> Result<()> {
        let last = {
            let state = self.state.lock();
            match state.pending.back() {
                Some(p) => (p.unit.clone(), p.vba),
                None => return Ok(()),
            }
        };
        match self.wait_durable(&last.0, last.1) {
            // A truncation dropped them meanwhile: nothing is left to write.
            Err(EngineError::Truncated { .. }) => Ok(()),
            done => done,
        }
    }

    /// Whether `vba` of `unit` is durable; an error if the log failed or if it never will be.
    fn check(&self, unit: &Unit, vba: Vba) -> Result<bool> {
        if let Some(reason) = self.failed.get() {
            return Err(EngineError::Failed {
                unit: unit.id(),
                reason: reason.clone(),
            });
        }
        unit.durable_or_dropped(vba)
    }

    /// Waits until `vba` of `unit` is durable, writing batches itself whenever no other thread is:
    /// the first thread to find the writer free writes everything pending as one batch with one
    /// sync, and the records that arrive meanwhile go in the next batch together (group commit
    /// without a hand-off to another thread).
    pub(super) fn wait_durable(&self, unit: &Unit, vba: Vba) -> Result<()> {
        loop {
            if self.check(unit, vba)? {
                return Ok(());
            }
            let mut state = self.state.lock();
            let Some(cursor) = state.cursor.take() else {
                // Wait for the batch being written. Waiters sleep on a counter that the writer
                // bumps under the state lock once it has published, and wakes all at once; a
                // waiter reads the counter under the same lock before it looks at its unit, so a
                // batch that completes in between changes the counter and the wait returns.
                self.batch_waiters.fetch_add(1, Ordering::SeqCst);
                let seen = self.batch_seq.load(Ordering::SeqCst);
                drop(state);
                if !unit.is_durable(vba) && self.failed.get().is_none() {
                    atomic_wait::wait(&self.batch_seq, seen);
                }
                self.batch_waiters.fetch_sub(1, Ordering::SeqCst);
                continue;
            };
            if state.pending.is_empty() {
                // Published by the writer that just finished: look again.
                state.cursor = Some(cursor);
                continue;
            }
            // The writers the last batch released are coming back with their next records; give
            // them a moment to queue, so batches stay large instead of alternating big and small.
            let expected = state.last_batch_len;
            let gather_until = Instant::now() + GATHER_WAIT;
            while state.pending.len() < expected && Instant::now() < gather_until {
                MutexGuard::unlocked(&mut state, std::thread::yield_now);
            }
            let batch = take_batch(&mut state.pending);
            self.write_and_publish(state, cursor, batch);
        }
    }

    /// [`Log::wait_durable`] for async callers: waiting does not hold a thread. A caller that
    /// finds the log idle and only its own records `first..=vba` pending writes the batch on its
    /// own thread (in `block_in_place`), so at queue depth 1 there is no hand-off. A caller that
    /// finds a batch being written, other records pending, or the commit thread at work, leaves its
    /// records to the commit thread and waits as a task: under load the thread writes batch after
    /// batch, and no runtime thread is handed off per batch.
    pub(super) async fn wait_durable_async(&self, unit: &Unit, first: Vba, vba: Vba) -> Result<()> {
        enum Next {
            Done,
            Gather,
            Wait,
        }
        let mut durable = unit.subscribe();
        let mut gathered = false;
        loop {
            // Decide under the lock; await only once it is released.
            let next = if self.check(unit, vba)? {
                Next::Done
            } else {
                let mut state = self.state.lock();
                let committer = self.committer.get();
                let mine = |p: &Pending| {
                    std::ptr::eq(Arc::as_ptr(&p.unit), unit) && p.vba >= first && p.vba <= vba
                };
                let alone = state.pending.len() as u64 <= vba.0 - first.0 + 1
                    && state.pending.front().is_some_and(mine)
                    && state.pending.back().is_some_and(mine);
                if state.cursor.is_none() || committer.is_some_and(|c| c.busy() || !alone) {
                    // Without a commit thread, one of the waiters writes the next batch.
                    if let Some(committer) = committer {
                        committer.want();
                    }
                    Next::Wait
                } else if state.pending.is_empty() {
                    continue;
                } else if !gathered && state.pending.len() < state.last_batch_len {
                    Next::Gather
                } else {
                    let cursor = state.cursor.take().expect("checked just above");
                    let batch = take_batch(&mut state.pending);
                    tokio::task::block_in_place(|| self.write_and_publish(state, cursor, batch));
                    continue;
                }
            };
            match next {
                Next::Done => return Ok(()),
                // Let the other tasks that are ready queue their records first.
                Next::Gather => {
                    gathered = true;
                    tokio::task::yield_now().await;
                }
                Next::Wait => {
                    durable
                        .changed()
                        .await
                        .expect("the unit, which owns the sender, outlives its waiters");
                }
            }
        }
    }

    /// Writes one batch (without the state lock: the caller took the cursor, so no one else
    /// writes meanwhile), publishes it to its units, and wakes every waiter.
    fn write_and_publish(
        &self,
        mut state: MutexGuard<'_, State>,
        mut cursor: Cursor,
        batch: Vec<Pending>,
    ) {
        state.last_batch_len = batch.len();
        drop(state);
        // A panic while writing or publishing (a broken invariant) fails the log like a write
        // error, so that its writers get an error rather than waiting for ever on a lost cursor.
        let written = catch_unwind(AssertUnwindSafe(|| self.write_batch(&mut cursor, &batch)));
        let published = match written {
            Ok(Ok(locations)) => {
                catch_unwind(AssertUnwindSafe(|| publish(&batch, &locations))).map_err(panic_reason)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(panic_reason(panic)),
        };
        if let Some(active) = &cursor.active {
            self.published_below.store(active.vsid.0, Ordering::Release);
        }
        let mut state = self.state.lock();
        self.active_room.store(
            room_left(&cursor, self.pool.segment_bytes()),
            Ordering::SeqCst,
        );
        self.unwritten
            .fetch_sub(bytes_of(batch.iter()), Ordering::SeqCst);
        state.cursor = Some(cursor);
        state.batches += 1;
        let mut stranded = Vec::new();
        if let Err(reason) = published {
            let _ = self.failed.set(reason);
            self.unwritten
                .fetch_sub(bytes_of(state.pending.iter()), Ordering::SeqCst);
            stranded.extend(batch.into_iter().map(|p| p.unit));
            stranded.extend(state.pending.drain(..).map(|p| p.unit));
        }
        self.batch_seq.fetch_add(1, Ordering::SeqCst);
        if self.batch_waiters.load(Ordering::SeqCst) > 0 {
            atomic_wait::wake_all(&self.batch_seq);
        }
        drop(state);
        // The async waiters of a failed batch learn of it from their unit.
        for unit in stranded {
            unit.wake();
        }
    }

    /// Writes `batch` at the end of the log and syncs it; returns where each record landed.
    /// Runs without the state lock; the caller owns the cursor meanwhile.
    fn write_batch(&self, cursor: &mut Cursor, batch: &[Pending]) -> Result<Vec<Location>> {
        let segment_bytes = self.pool.segment_bytes();
        let mut locations = Vec::with_capacity(batch.len());
        let mut buf = std::mem::take(&mut cursor.buf);
        buf.clear();
        for pending in batch {
            let size = pending.op.record_bytes();
            let fits = cursor
                .active
                .as_ref()
                .is_some_and(|a| a.offset + (buf.len() + size) as u64 <= segment_bytes);
            if !fits {
                if let Some(active) = cursor.active.as_mut() {
                    self.flush(active, &mut buf)?;
                }
                let vsid = Vsid(cursor.next_log_vsid);
                let active = self.start_segment(vsid)?;
                cursor.next_log_vsid += 1;
                cursor.active = Some(active);
            }
            let active = cursor.active.as_ref().expect("a segment was just ensured");
            let batch_start = active.offset;
            let at = buf.len();
            buf.resize(at + size, 0);
            record::encode(
                &mut buf[at..],
                &pending.op,
                pending.unit.number(),
                pending.generation,
                pending.vba,
                active.nonce,
                batch_start as u32,
            );
            locations.push(Location {
                vsid: active.vsid,
                offset: (batch_start + at as u64) as u32,
            });
        }
        if let Some(active) = cursor.active.as_mut() {
            self.flush(active, &mut buf)?;
        }
        cursor.buf = buf;
        Ok(locations)
    }

    /// Writes and syncs the encoded records in `buf` at the active segment's end, and publishes
    /// the new end to readers.
    fn flush(&self, active: &mut Active, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let context = format!("writing log segment {}", active.vsid);
        active
            .file
            .write_at(buf, active.offset)
            .map_err(device_err(self.describe(), &context))?;
        if self.sync {
            active
                .file
                .sync()
                .map_err(device_err(self.describe(), &context))?;
        }
        active.offset += buf.len() as u64;
        self.appended.fetch_add(buf.len() as u64, Ordering::Relaxed);
        buf.clear();
        if let Some(segment) = self.segments.write().get_mut(&active.vsid) {
            segment.end = active.offset;
        }
        Ok(())
    }

    /// Takes a spare segment from the pool and makes it log segment `vsid`. The header is durable
    /// before any record goes in.
    pub(super) fn start_segment(&self, vsid: Vsid) -> Result<Active> {
        let context = format!("starting log segment {vsid}");
        let err = || device_err(self.describe(), &context);
        let spare = self.pool.take().map_err(err())?;
        let path = segment_path(vsid);
        self.backend.rename(&spare, &path).map_err(err())?;
        let file = self.backend.open(&path).map_err(err())?;
        let nonce = rand::random::<u64>();
        let header = SegmentHeader { vsid, nonce };
        file.write_at(&header.encode(), 0).map_err(err())?;
        file.sync().map_err(err())?;
        self.add_segment(
            vsid,
            Segment {
                file: file.clone(),
                nonce,
                end: SEGMENT_HEADER_BYTES,
            },
        );
        Ok(Active {
            vsid,
            file,
            nonce,
            offset: SEGMENT_HEADER_BYTES,
        })
    }
}

/// Bytes the records take in the log.
fn bytes_of<'a>(records: impl Iterator<Item = &'a Pending>) -> u64 {
    records.map(|p| p.op.record_bytes() as u64).sum()
}

/// Bytes left in the cursor's active segment.
fn room_left(cursor: &Cursor, segment_bytes: u64) -> u64 {
    cursor
        .active
        .as_ref()
        .map_or(0, |active| segment_bytes.saturating_sub(active.offset))
}

/// Room the log keeps beyond what it promised, for records numbered at the same moment by
/// other units (each checks, then queues).
const ROOM_MARGIN_BYTES: u64 = MAX_BATCH_BYTES as u64;

/// Makes a written batch visible: each run of one unit's records is published to that unit under
/// its lock once.
fn publish(batch: &[Pending], locations: &[Location]) {
    let mut start = 0;
    while start < batch.len() {
        let unit = &batch[start].unit;
        let end = start
            + batch[start..]
                .iter()
                .take_while(|p| Arc::ptr_eq(&p.unit, unit))
                .count();
        unit.publish(&batch[start..end], &locations[start..end]);
        start = end;
    }
}

/// Why a batch's writer panicked, as a failed log reports it.
fn panic_reason(panic: Box<dyn std::any::Any + Send>) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|m| m.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("writing a batch panicked: {message}")
}

/// Takes pending records up to the batch size limit (at least one).
fn take_batch(pending: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut bytes = 0;
    let mut count = 0;
    for p in pending.iter() {
        bytes += p.op.record_bytes();
        if count > 0 && bytes > MAX_BATCH_BYTES {
            break;
        }
        count += 1;
    }
    pending.drain(..count).collect()
}
