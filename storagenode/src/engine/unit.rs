//! A storage unit: one copy of one slice, its VBA log and its index.
//!
//! The durability contract: [`Unit::append`] and [`Unit::apply`] return only once their records
//! are durable (synced) and indexed; reads and [`Unit::records_after`] see only durable records.
//! A record that was accepted but not yet synced is invisible to readers, so nothing a reader saw
//! can be lost in a crash.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use client::proto::Extent;
use client::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};
use parking_lot::{Mutex, MutexGuard};

use super::backend::{Backend, BlockFile};
use super::committer::Committer;
use super::error::{io_err, EngineError, Result};
use super::index::{Index, Location, Target};
use super::meta::{self, GenerationStart, UnitMeta};
use super::pool::SegmentPool;
use super::record::{self, Kind, Op, HEADER_BYTES, WRITE_RECORD_BYTES};
use super::segment::Vsid;

/// How many times a read retries a record that moved under it (compaction) before calling it
/// corrupt.
const READ_ATTEMPTS: usize = 3;
/// How long a new batch writer waits for the writers released by the last batch to queue their
/// next records. Small beside a sync (~100 us), and only spent when the last batch was bigger
/// than what is pending.
const GATHER_WAIT: Duration = Duration::from_micros(30);

/// A record as [`Unit::records_after`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub vba: Vba,
    pub generation: Generation,
    pub op: Op,
}

/// What [`Unit::apply`] did with a replicated record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record was the next VBA and is now durable.
    Written,
    /// The unit already held this VBA with the same generation and content.
    Duplicate,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnitStats {
    /// Every VBA up to this one is durable (or was compacted away as dead).
    pub last_vba: Vba,
    pub generation: Generation,
    /// Blocks holding written data.
    pub written_blocks: u64,
    pub live_records: u64,
    pub segments: usize,
    /// Bytes of records in the log, live or not.
    pub log_bytes: u64,
    pub live_bytes: u64,
    pub index_bytes: u64,
    /// Group-commit batches written since the unit was opened (each one write call and one sync
    /// per segment it touched).
    pub batches: u64,
}

pub(super) struct Pending {
    pub vba: Vba,
    pub generation: Generation,
    pub op: Op,
}

/// A segment the unit holds.
pub(super) struct Segment {
    pub file: Arc<dyn BlockFile>,
    pub nonce: u64,
    /// Offset just past the last record written to it.
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
/// thread writes at a time and the others keep using the state meanwhile.
pub(super) struct Cursor {
    pub active: Option<Active>,
    pub next_log_vsid: u32,
    /// Scratch space for encoding a batch.
    pub buf: Vec<u8>,
}

pub(super) struct State {
    pub index: Index,
    pub segments: BTreeMap<Vsid, Segment>,
    /// `None` while a batch is being written.
    pub cursor: Option<Cursor>,
    /// The VBA the next accepted record gets.
    pub next_vba: Vba,
    /// Every record up to this VBA is durable and indexed.
    pub durable_vba: Vba,
    /// Accepted records not yet written, in VBA order.
    pub pending: VecDeque<Pending>,
    /// Set when a write failed: the log's end is unknown until the unit is reopened.
    pub failed: Option<String>,
    pub generations: Vec<GenerationStart>,
    /// No VBA up to this one will ever be truncated (every copy holds it).
    pub stable_vba: Vba,
    pub next_compacted_vsid: u32,
    pub batches: u64,
    pub last_batch_len: usize,
}

impl State {
    pub fn generation(&self) -> Generation {
        self.generations
            .last()
            .map_or(Generation(0), |start| start.generation)
    }
}

pub struct Unit {
    pub(super) id: UnitId,
    pub(super) dir: String,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) pool: Arc<SegmentPool>,
    pub(super) sync: bool,
    /// The bytes of LBAs the unit takes: it may grow (`Unit::grow`), never shrink.
    pub(super) size_bytes: AtomicU64,
    pub(super) state: Mutex<State>,
    /// Bumped (and waited on) whenever a batch completes or fails.
    pub(super) batch_seq: AtomicU32,
    /// Threads waiting on `batch_seq`: a batch wakes them only when there are any, which spares
    /// the async writers' batches a system call.
    pub(super) batch_waiters: AtomicU32,
    /// `state.durable_vba`, readable without the lock.
    pub(super) durable_vba: AtomicU64,
    /// `state.durable_vba` again, for async waiters; also sent when the unit fails.
    pub(super) durable_watch: tokio::sync::watch::Sender<Vba>,
    /// Held by compaction and truncation, which must not run at the same time.
    pub(super) maintenance: Mutex<()>,
    /// The commit thread, for units that are written (see [`Unit::start_committer`]).
    pub(super) committer: OnceLock<Committer>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unit({})", self.id)
    }
}

impl Unit {
    pub fn id(&self) -> UnitId {
        self.id
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn blocks(&self) -> u64 {
        self.size_bytes() / BLOCK_BYTES
    }

    fn check_range(&self, lba: Lba, blocks: u64) -> Result<()> {
        let end = lba.0.checked_add(blocks);
        match end {
            Some(end) if blocks > 0 && end <= self.blocks() => Ok(()),
            _ => Err(EngineError::OutOfRange {
                unit: self.id,
                lba,
                end: end.unwrap_or(u64::MAX),
                blocks: self.blocks(),
            }),
        }
    }

    fn check_op(&self, op: &Op) -> Result<()> {
        if let Op::Write { data, .. } = op {
            if data.len() as u64 != BLOCK_BYTES {
                return Err(EngineError::Invalid(format!(
                    "a write record carries one block of {BLOCK_BYTES} bytes, not {}",
                    data.len()
                )));
            }
        }
        self.check_range(op.lba(), op.blocks())
    }

    pub(super) fn check_failed(&self, state: &State) -> Result<()> {
        match &state.failed {
            Some(reason) => Err(EngineError::Failed {
                unit: self.id,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Accepts records of `generation`, which must not be older than the unit's, and starts the
    /// generation at `first_vba` in the unit's history if it is new. The history is persisted
    /// before any record of the new generation is written; on an error nothing has changed.
    fn enter_generation(
        &self,
        state: &mut State,
        generation: Generation,
        first_vba: Vba,
    ) -> Result<()> {
        let current = self.check_generation(state, generation)?;
        if generation > current || state.generations.is_empty() {
            let mut generations = state.generations.clone();
            generations.push(GenerationStart {
                generation,
                first_vba,
            });
            self.write_meta(&generations)?;
            state.generations = generations;
        }
        Ok(())
    }

    /// The unit's generation, if `generation` is not older than it.
    pub(super) fn check_generation(
        &self,
        state: &State,
        generation: Generation,
    ) -> Result<Generation> {
        let current = state.generation();
        if generation < current {
            return Err(EngineError::StaleGeneration {
                unit: self.id,
                got: generation,
                current,
            });
        }
        Ok(current)
    }

    /// Queues a record with the next VBA, which must be `vba`.
    fn push_pending(state: &mut State, vba: Vba, generation: Generation, op: Op) {
        debug_assert_eq!(vba, state.next_vba, "records are queued in VBA order");
        state.pending.push_back(Pending {
            vba,
            generation,
            op,
        });
        state.next_vba = vba.next();
    }

    pub(super) fn write_meta(&self, generations: &[GenerationStart]) -> Result<()> {
        self.write_meta_sized(self.size_bytes(), generations)
    }

    fn write_meta_sized(&self, size_bytes: u64, generations: &[GenerationStart]) -> Result<()> {
        let meta = UnitMeta {
            format: meta::UNIT_FORMAT,
            unit: self.id,
            size_bytes,
            generations: generations.to_vec(),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("unit metadata serializes");
        let path = format!("{}/{}", self.dir, meta::UNIT_META);
        self.backend
            .write_atomic(&path, &json)
            .map_err(io_err(self.id, "writing unit.json"))
    }

    /// Lets the unit take LBAs up to `size_bytes` (its slice grew); the new size is durable in
    /// the unit's metadata before it is taken. A smaller size changes nothing.
    pub fn grow(&self, size_bytes: u64) -> Result<()> {
        if size_bytes % BLOCK_BYTES != 0 {
            return Err(EngineError::Invalid(format!(
                "unit size {size_bytes} is not a multiple of {BLOCK_BYTES}"
            )));
        }
        let mut state = self.state.lock();
        if size_bytes <= self.size_bytes() {
            return Ok(());
        }
        self.write_meta_sized(size_bytes, &state.generations)?;
        state.index.grow(size_bytes / BLOCK_BYTES);
        self.size_bytes.store(size_bytes, Ordering::Release);
        Ok(())
    }

    /// Primary: gives each op the next VBA, writes them, and returns the first VBA once all are
    /// durable. Ops of one call get consecutive VBAs and share a group commit.
    pub fn append(&self, generation: Generation, ops: Vec<Op>) -> Result<Vba> {
        let (first, last) = self.enqueue_append(generation, ops)?;
        self.wait_durable(self.state.lock(), last)?;
        Ok(first)
    }

    /// [`Unit::append`] in two steps: the VBAs are assigned now, in the order of calls, and
    /// [`Ticket::wait`] waits for durability. Between the two the caller can send the records to
    /// the secondaries, so the local write and the replication run in parallel.
    pub fn begin_append(self: &Arc<Self>, generation: Generation, ops: Vec<Op>) -> Result<Ticket> {
        let (first, last) = self.enqueue_append(generation, ops)?;
        Ok(Ticket {
            unit: self.clone(),
            first,
            last,
        })
    }

    fn enqueue_append(&self, generation: Generation, ops: Vec<Op>) -> Result<(Vba, Vba)> {
        if ops.is_empty() {
            return Err(EngineError::Invalid(
                "an append needs at least one op".into(),
            ));
        }
        for op in &ops {
            self.check_op(op)?;
        }
        let mut state = self.state.lock();
        self.check_failed(&state)?;
        let first = state.next_vba;
        self.enter_generation(&mut state, generation, first)?;
        for op in ops {
            let vba = state.next_vba;
            Self::push_pending(&mut state, vba, generation, op);
        }
        Ok((first, Vba(state.next_vba.0 - 1)))
    }

    /// Secondary: takes a record the primary numbered. Exactly the next VBA is written; a VBA the
    /// unit already holds with the same generation and content is acknowledged again without
    /// being written; a VBA further on is a [`EngineError::Hole`].
    pub fn apply(&self, vba: Vba, generation: Generation, op: Op) -> Result<Applied> {
        let applied = self.enqueue_apply(vba, generation, op)?;
        self.wait_durable(self.state.lock(), vba)?;
        Ok(applied)
    }

    /// [`Unit::apply`] in two steps: the record is checked and queued now (so calls must come in
    /// VBA order), [`Ticket::wait`] waits until it is durable.
    pub fn begin_apply(
        self: &Arc<Self>,
        vba: Vba,
        generation: Generation,
        op: Op,
    ) -> Result<(Applied, Ticket)> {
        let applied = self.enqueue_apply(vba, generation, op)?;
        Ok((
            applied,
            Ticket {
                unit: self.clone(),
                first: vba,
                last: vba,
            },
        ))
    }

    fn enqueue_apply(&self, vba: Vba, generation: Generation, op: Op) -> Result<Applied> {
        self.check_op(&op)?;
        let mut state = self.state.lock();
        self.check_failed(&state)?;
        if vba > state.next_vba {
            return Err(EngineError::Hole {
                unit: self.id,
                expected: state.next_vba,
                got: vba,
            });
        }
        if vba == state.next_vba {
            self.enter_generation(&mut state, generation, vba)?;
            Self::push_pending(&mut state, vba, generation, op);
            return Ok(Applied::Written);
        }
        let held = meta::generation_at(&state.generations, vba).unwrap_or(Generation(0));
        if held != generation {
            return Err(EngineError::Conflict {
                unit: self.id,
                vba,
                held,
                got: generation,
            });
        }
        let same = match state.pending.iter().find(|p| p.vba == vba) {
            Some(pending) => pending.op.content_crc() == op.content_crc(),
            None => {
                drop(state);
                self.held_content_crc(vba)?
                    .is_none_or(|crc| crc == op.content_crc())
            }
        };
        if !same {
            return Err(EngineError::ContentMismatch { unit: self.id, vba });
        }
        Ok(Applied::Duplicate)
    }

    /// The highest VBA any block of `blocks` blocks from `lba` points at: the newest record a
    /// read of them would return (`Vba(0)` when none was ever written). Any write to one of
    /// them raises it, since VBAs only grow.
    pub fn newest_vba_in(&self, lba: Lba, blocks: u64) -> Vba {
        self.state.lock().index.max_vba_in(lba, blocks)
    }

    /// Which blocks of `[lba, lba + blocks)` hold written data, from the index alone, as runs
    /// of one status: all of them, or the runs of a prefix when there are more than
    /// `max_runs`. The index is looked at a bounded number of blocks at a time, so a large
    /// range does not hold up writes.
    pub fn allocation(&self, lba: Lba, blocks: u64, max_runs: usize) -> Result<Vec<Extent>> {
        const BLOCKS_PER_LOOK: u64 = 32 << 10;
        self.check_range(lba, blocks)?;
        let mut runs = Vec::new();
        let mut done = 0;
        while done < blocks {
            let want = (blocks - done).min(BLOCKS_PER_LOOK);
            let covered =
                self.state
                    .lock()
                    .index
                    .allocation(Lba(lba.0 + done), want, &mut runs, max_runs);
            done += covered;
            if covered < want {
                break;
            }
        }
        Ok(runs)
    }

    /// The VBA the next record will get (primary) or must have (secondary).
    pub fn next_vba(&self) -> Vba {
        self.state.lock().next_vba
    }

    /// Catch-up: takes a record the primary streams from its log. Unlike [`Unit::apply`], VBAs may
    /// skip (the records in between are dead at the primary: overwritten by later records the
    /// stream also carries), and a record keeps the generation it was written with. The VBA must
    /// be beyond every VBA the unit holds.
    pub fn begin_ingest(
        self: &Arc<Self>,
        vba: Vba,
        generation: Generation,
        op: Op,
    ) -> Result<Ticket> {
        self.check_op(&op)?;
        let mut state = self.state.lock();
        self.check_failed(&state)?;
        if vba < state.next_vba {
            return Err(EngineError::Invalid(format!(
                "unit {}: catch-up record VBA {vba} is not beyond the unit's next VBA {}",
                self.id, state.next_vba
            )));
        }
        self.enter_generation(&mut state, generation, vba)?;
        state.next_vba = vba;
        Self::push_pending(&mut state, vba, generation, op);
        Ok(Ticket {
            unit: self.clone(),
            first: vba,
            last: vba,
        })
    }

    /// Live records above `vba` and the log bytes they take: the size of a catch-up from `vba`.
    pub fn live_after(&self, vba: Vba) -> (u64, u64) {
        self.state.lock().index.live_after(vba)
    }

    /// The unit's generation history: the first VBA written under each generation.
    pub fn generations(&self) -> Vec<GenerationStart> {
        self.state.lock().generations.clone()
    }

    /// The generation the unit's history has at `vba` (`Generation(0)` before any record).
    pub fn generation_at(&self, vba: Vba) -> Generation {
        meta::generation_at(&self.state.lock().generations, vba).unwrap_or(Generation(0))
    }

    /// The last VBA of the unit's history written under `generation`: where another copy that
    /// holds records of `generation` stops agreeing with this one (one primary writes a
    /// generation, so records of the same generation at the same VBA are the same). `Vba(0)`
    /// when the history has no record of it.
    pub fn last_of_generation(&self, generation: Generation) -> Vba {
        let state = self.state.lock();
        let starts = &state.generations;
        let Some(i) = starts.iter().rposition(|s| s.generation == generation) else {
            return Vba::ZERO;
        };
        match starts.get(i + 1) {
            Some(next) => Vba(next.first_vba.0 - 1).min(state.durable_vba),
            None => state.durable_vba,
        }
    }

    /// The first VBA of the run of the history's generation at `vba`.
    pub fn run_start(&self, vba: Vba) -> Vba {
        let state = self.state.lock();
        let starts = &state.generations;
        let Some(i) = starts.iter().rposition(|s| s.first_vba <= vba) else {
            return Vba::ZERO;
        };
        let generation = starts[i].generation;
        let first = starts[..=i]
            .iter()
            .rev()
            .take_while(|s| s.generation == generation)
            .last();
        first.map_or(Vba::ZERO, |s| s.first_vba)
    }

    /// Waits until every record accepted so far is durable (async callers).
    pub async fn drain_async(&self) -> Result<()> {
        let last = Vba(self.state.lock().next_vba.0 - 1);
        self.wait_durable_async(last, last).await
    }

    /// The content checksum of the record held at `vba`, if it is still live (a record that was
    /// overwritten since is no longer looked up).
    fn held_content_crc(&self, vba: Vba) -> Result<Option<u32>> {
        Ok(self
            .read_record(vba)?
            .map(|(header, bytes)| record::content_crc(&header, &bytes)))
    }

    /// Reads `blocks` blocks from `lba`: the newest durable data, zeroes where never written or
    /// trimmed.
    pub fn read(&self, lba: Lba, blocks: u64) -> Result<Vec<u8>> {
        let read = self.read_with(lba, blocks, |file, buf, offset| {
            file.read_exact_at(buf, offset).map(|()| true)
        })?;
        Ok(read.expect("a blocking read always reads"))
    }

    /// As [`Unit::read`], but only if every block is in memory, so that an async task can read
    /// without blocking its thread: `None` if any would wait for the device.
    pub fn read_cached(&self, lba: Lba, blocks: u64) -> Result<Option<Vec<u8>>> {
        self.read_with(lba, blocks, |file, buf, offset| {
            file.read_exact_at_once(buf, offset)
        })
    }

    /// Reads with `fetch`, which fills a record's bytes from a segment file or answers `false`
    /// to give up (then `None`).
    fn read_with(
        &self,
        lba: Lba,
        blocks: u64,
        fetch: impl Fn(&dyn BlockFile, &mut [u8], u64) -> std::io::Result<bool>,
    ) -> Result<Option<Vec<u8>>> {
        self.check_range(lba, blocks)?;
        let mut out = vec![0u8; (blocks * BLOCK_BYTES) as usize];
        let mut buf = vec![0u8; WRITE_RECORD_BYTES];
        for (i, block) in out.chunks_mut(BLOCK_BYTES as usize).enumerate() {
            let lba = Lba(lba.0 + i as u64);
            for attempt in 1..=READ_ATTEMPTS {
                let (vba, location, file, nonce) = {
                    let state = self.state.lock();
                    match state.index.lookup(lba) {
                        Target::Unwritten | Target::Trimmed(_) => break,
                        Target::Written(vba, location) => {
                            let segment = &state.segments[&location.vsid];
                            (vba, location, segment.file.clone(), segment.nonce)
                        }
                    }
                };
                let read = match fetch(file.as_ref(), &mut buf, location.offset as u64) {
                    Ok(false) => return Ok(None),
                    Ok(true) => Ok(record::decode(&buf, nonce)),
                    Err(e) => Err(io_err(
                        self.id,
                        format!("reading segment {}", location.vsid),
                    )(e)),
                };
                match read {
                    Ok(Ok(header)) if header.vba == vba && header.lba == lba => {
                        block.copy_from_slice(&buf[HEADER_BYTES..]);
                        break;
                    }
                    // The record may have moved (compaction) between the lookup and the read.
                    _ if attempt < READ_ATTEMPTS && self.moved(lba, vba, location) => continue,
                    Err(e) => return Err(e),
                    Ok(found) => {
                        return Err(EngineError::Corrupt {
                            unit: self.id,
                            vsid: location.vsid,
                            offset: location.offset as u64,
                            reason: format!("expected VBA {vba} for LBA {lba}, found {found:?}"),
                        })
                    }
                }
            }
        }
        Ok(Some(out))
    }

    fn moved(&self, lba: Lba, vba: Vba, location: Location) -> bool {
        self.state.lock().index.lookup(lba) != Target::Written(vba, location)
    }

    /// Reads the live record at `vba`, checked, with its bytes; `None` if no live record has it.
    fn read_record(&self, vba: Vba) -> Result<Option<(record::Header, Vec<u8>)>> {
        for attempt in 1..=READ_ATTEMPTS {
            let (location, file, nonce) = {
                let state = self.state.lock();
                let Some(location) = state.index.location(vba) else {
                    return Ok(None);
                };
                let segment = &state.segments[&location.vsid];
                (location, segment.file.clone(), segment.nonce)
            };
            let context = || format!("reading segment {}", location.vsid);
            let mut head = [0u8; HEADER_BYTES];
            file.read_exact_at(&mut head, location.offset as u64)
                .map_err(io_err(self.id, context()))?;
            let length = record::decode_header(&head, nonce)
                .ok()
                .filter(|h| h.vba == vba)
                .map(|h| h.record_bytes());
            if let Some(length) = length {
                let mut bytes = vec![0u8; length];
                file.read_exact_at(&mut bytes, location.offset as u64)
                    .map_err(io_err(self.id, context()))?;
                if let Ok(header) = record::decode(&bytes, nonce) {
                    return Ok(Some((header, bytes)));
                }
            }
            let still_there = self.state.lock().index.location(vba) == Some(location);
            if still_there || attempt == READ_ATTEMPTS {
                return Err(EngineError::Corrupt {
                    unit: self.id,
                    vsid: location.vsid,
                    offset: location.offset as u64,
                    reason: format!("the record for VBA {vba} does not read back"),
                });
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Every live record with a VBA above `after`, in VBA order: what a copy that holds everything
    /// up to `after` needs to catch up. Records written while iterating are included.
    pub fn records_after(&self, after: Vba) -> RecordsAfter<'_> {
        RecordsAfter {
            unit: self,
            cursor: after,
        }
    }

    /// Records that no VBA up to `vba` will be truncated: every copy holds them. Compaction may
    /// then drop records superseded at or below it.
    pub fn set_stable_vba(&self, vba: Vba) {
        let mut state = self.state.lock();
        state.stable_vba = state.stable_vba.max(vba.min(state.durable_vba));
    }

    pub fn last_vba(&self) -> Vba {
        self.state.lock().durable_vba
    }

    /// The VBA up to which every copy holds the log (see [`Unit::set_stable_vba`]).
    pub fn stable_vba(&self) -> Vba {
        self.state.lock().stable_vba
    }

    pub fn generation(&self) -> Generation {
        self.state.lock().generation()
    }

    pub fn stats(&self) -> UnitStats {
        let state = self.state.lock();
        let log_bytes = state
            .segments
            .values()
            .map(|s| s.end - super::segment::SEGMENT_HEADER_BYTES);
        UnitStats {
            last_vba: state.durable_vba,
            generation: state.generation(),
            written_blocks: state.index.written_blocks(),
            live_records: state.index.live_records() as u64,
            segments: state.segments.len(),
            log_bytes: log_bytes.sum(),
            live_bytes: state
                .segments
                .keys()
                .map(|v| state.index.live_bytes(*v))
                .sum(),
            index_bytes: state.index.memory_bytes() as u64,
            batches: state.batches,
        }
    }

    /// Starts the unit's commit thread, which writes batches for async writers under load
    /// ([`Ticket::wait_async`]). Without it every batch is written by one of its writers.
    pub fn start_committer(self: &Arc<Self>) -> std::io::Result<()> {
        if self.committer.get().is_none() {
            let _ = self.committer.set(Committer::start(self)?);
        }
        Ok(())
    }

    /// Writes every record accepted so far (the commit thread's work).
    pub(super) fn commit_pending(&self) -> Result<()> {
        let state = self.state.lock();
        let Some(last) = state.pending.back().map(|p| p.vba) else {
            return Ok(());
        };
        match self.wait_durable(state, last) {
            // A truncation dropped them meanwhile: nothing is left to write.
            Err(EngineError::Truncated { .. }) => Ok(()),
            done => done,
        }
    }

    /// Fails a wait for `vba` that can never end: with no batch being written and none pending,
    /// every accepted record is durable, so a `vba` beyond them was dropped by a truncation.
    fn check_dropped(&self, state: &State, vba: Vba) -> Result<()> {
        if state.durable_vba < vba && state.cursor.is_some() && state.pending.is_empty() {
            return Err(EngineError::Truncated { unit: self.id, vba });
        }
        Ok(())
    }

    /// Waits until `vba` is durable, writing batches itself whenever no other thread is: the first
    /// thread to find the writer free writes everything pending as one batch with one sync, and the
    /// records that arrive meanwhile go in the next batch together (group commit without a
    /// hand-off to another thread).
    pub(super) fn wait_durable<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        vba: Vba,
    ) -> Result<()> {
        loop {
            self.check_failed(&state)?;
            if state.durable_vba >= vba {
                return Ok(());
            }
            self.check_dropped(&state, vba)?;
            let Some(cursor) = state.cursor.take() else {
                // Wait for the batch being written. Waiters sleep on a counter that the writer
                // bumps and wakes all at once, and return without the state lock when their
                // record is durable, so a batch's writers resume in parallel. A waiter counts
                // itself under the state lock, under which the writer bumps the counter and reads
                // the count: a writer that saw no waiter bumped the counter before `seen`.
                self.batch_waiters.fetch_add(1, Ordering::SeqCst);
                let seen = self.batch_seq.load(Ordering::SeqCst);
                drop(state);
                atomic_wait::wait(&self.batch_seq, seen);
                self.batch_waiters.fetch_sub(1, Ordering::SeqCst);
                if self.durable_vba.load(Ordering::Acquire) >= vba.0 {
                    return Ok(());
                }
                state = self.state.lock();
                continue;
            };
            // The writers the last batch released are coming back with their next records; give
            // them a moment to queue, so batches stay large instead of alternating big and small.
            let expected = state.last_batch_len;
            let gather_until = Instant::now() + GATHER_WAIT;
            while state.pending.len() < expected && Instant::now() < gather_until {
                MutexGuard::unlocked(&mut state, std::thread::yield_now);
            }
            let batch = take_batch(&mut state.pending);
            state = self.write_and_publish(state, cursor, batch);
        }
    }

    /// Writes one batch (without the state lock: the caller took the cursor, so no one else
    /// writes meanwhile), publishes it, and wakes every waiter, blocking and async.
    fn write_and_publish<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        mut cursor: Cursor,
        batch: Vec<Pending>,
    ) -> MutexGuard<'a, State> {
        state.last_batch_len = batch.len();
        // A panic while writing or publishing (a broken invariant) fails the unit like a write
        // error, so that its writers get an error rather than waiting for ever on a lost cursor.
        let written = MutexGuard::unlocked(&mut state, || {
            catch_unwind(AssertUnwindSafe(|| self.write_batch(&mut cursor, &batch)))
        });
        state.cursor = Some(cursor);
        state.batches += 1;
        let published = match written {
            Ok(Ok(written)) => catch_unwind(AssertUnwindSafe(|| {
                self.publish(&mut state, batch, written)
            }))
            .map_err(panic_reason),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(panic_reason(panic)),
        };
        if let Err(reason) = published {
            state.failed = Some(reason);
        }
        self.batch_seq.fetch_add(1, Ordering::SeqCst);
        if self.batch_waiters.load(Ordering::SeqCst) > 0 {
            atomic_wait::wake_all(&self.batch_seq);
        }
        self.durable_watch.send_replace(state.durable_vba);
        state
    }

    /// [`Unit::wait_durable`] for async callers: waiting does not hold a thread. A caller that
    /// finds the unit idle writes the next batch on its own thread (in `block_in_place`), so at
    /// queue depth 1 there is no hand-off. A caller that finds a batch being written, or the
    /// commit thread at work, leaves its records to the commit thread and waits as a task: under
    /// load the thread writes batch after batch, and no runtime thread is handed off per batch.
    async fn wait_durable_async(&self, first: Vba, vba: Vba) -> Result<()> {
        enum Next {
            Done,
            Gather,
            Wait,
        }
        let mut durable = self.durable_watch.subscribe();
        let mut gathered = false;
        loop {
            // Decide under the lock; await only once it is released.
            let next = {
                let mut state = self.state.lock();
                self.check_failed(&state)?;
                self.check_dropped(&state, vba)?;
                let committer = self.committer.get();
                // Only this caller's records `first..=vba` wait to be written.
                let alone = state.pending.front().is_some_and(|p| p.vba >= first)
                    && state.pending.back().is_some_and(|p| p.vba <= vba);
                if state.durable_vba >= vba {
                    Next::Done
                } else if state.cursor.is_none() || committer.is_some_and(|c| c.busy() || !alone) {
                    // Without a commit thread, one of the waiters writes the next batch.
                    if let Some(committer) = committer {
                        committer.want();
                    }
                    Next::Wait
                } else if !gathered && state.pending.len() < state.last_batch_len {
                    Next::Gather
                } else {
                    let cursor = state.cursor.take().expect("checked just above");
                    let batch = take_batch(&mut state.pending);
                    tokio::task::block_in_place(|| {
                        drop(self.write_and_publish(state, cursor, batch))
                    });
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
                        .expect("the unit, which owns the sender, outlives its tickets");
                }
            }
        }
    }
}

/// Why a batch's writer panicked, as a failed unit reports it.
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
        if count > 0 && bytes > super::segment::MAX_BATCH_BYTES {
            break;
        }
        count += 1;
    }
    pending.drain(..count).collect()
}

/// Records accepted by [`Unit::begin_append`] or [`Unit::begin_apply`], not yet known durable.
#[must_use = "a record is acknowledged only once its ticket's wait returns"]
pub struct Ticket {
    unit: Arc<Unit>,
    first: Vba,
    last: Vba,
}

impl Ticket {
    pub fn first_vba(&self) -> Vba {
        self.first
    }

    pub fn last_vba(&self) -> Vba {
        self.last
    }

    /// Blocks until every record of the ticket is durable (or the unit failed). It may write a
    /// batch itself (group commit), so call it from a thread that may block.
    pub fn wait(self) -> Result<()> {
        self.unit.wait_durable(self.unit.state.lock(), self.last)
    }

    /// Waits until every record of the ticket is durable, from a multi-threaded tokio runtime.
    pub async fn wait_async(self) -> Result<()> {
        self.unit.wait_durable_async(self.first, self.last).await
    }
}

/// Iterator over [`Unit::records_after`].
pub struct RecordsAfter<'a> {
    unit: &'a Unit,
    cursor: Vba,
}

impl Iterator for RecordsAfter<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        loop {
            let next = self.unit.state.lock().index.next_live_after(self.cursor);
            let (vba, _) = next?;
            match self.unit.read_record(vba) {
                // Overwritten between the lookup and the read: go on to the next one.
                Ok(None) => self.cursor = vba,
                Ok(Some((header, bytes))) => {
                    self.cursor = vba;
                    let op = match header.kind {
                        Kind::Write => Op::Write {
                            lba: header.lba,
                            data: Bytes::copy_from_slice(&bytes[HEADER_BYTES..]),
                        },
                        Kind::Trim => Op::Trim {
                            lba: header.lba,
                            blocks: header.blocks(),
                        },
                    };
                    return Some(Ok(Record {
                        vba,
                        generation: header.generation,
                        op,
                    }));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
