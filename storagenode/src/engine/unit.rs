//! A storage unit: one copy of one slice, its VBA log and its index.
//!
//! The durability contract: [`Unit::append`] and [`Unit::apply`] return only once their records
//! are durable (synced) and indexed; reads and [`Unit::records_after`] see only durable records.
//! A record that was accepted but not yet synced is invisible to readers, so nothing a reader saw
//! can be lost in a crash.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use client::proto::{Extent, WireRecord};
use client::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};
use parking_lot::Mutex;

use super::backend::{Backend, BlockFile};
use super::error::{io_err, EngineError, Result};
use super::index::{Index, Location, Target};
use super::log::{Log, Pending};
use super::meta::{self, GenerationStart, Marks, UnitMeta};
use super::record::{self, Invalid, Kind, Op, HEADER_BYTES, WRITE_RECORD_BYTES};
use super::segment::Vsid;

/// How many times a read retries a record that moved under it (compaction) before calling it
/// corrupt.
const READ_ATTEMPTS: usize = 3;

/// A record as [`Unit::records_after`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub vba: Vba,
    pub generation: Generation,
    pub op: Op,
}

/// A record, as it is replicated.
impl From<Record> for WireRecord {
    fn from(record: Record) -> WireRecord {
        WireRecord {
            vba: record.vba,
            generation: record.generation,
            body: record.op.into(),
        }
    }
}

impl Record {
    /// The record whose checked bytes (header and data) are `bytes`.
    pub(super) fn from_bytes(header: &record::Header, bytes: &[u8]) -> Record {
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
        Record {
            vba: header.vba,
            generation: header.generation,
            op,
        }
    }
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
    /// Segments of the device's log that hold live records of the unit.
    pub segments: usize,
    /// Bytes of the unit's live records in the log.
    pub live_bytes: u64,
    pub index_bytes: u64,
}

pub(super) struct State {
    pub index: Index,
    /// The VBA the next accepted record gets.
    pub next_vba: Vba,
    /// Every record up to this VBA is durable and indexed.
    pub durable_vba: Vba,
    /// Records of the unit queued in the device log or in the batch being written.
    pub queued: usize,
    pub generations: Vec<GenerationStart>,
    /// No VBA up to this one will ever be truncated (every copy holds it).
    pub stable_vba: Vba,
    /// The log segments that hold records of the unit, live or not (what a truncation rereads).
    pub segments: BTreeSet<Vsid>,
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
    /// The unit's number on its device, carried by its records.
    pub(super) number: u32,
    pub(super) dir: String,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) log: Arc<Log>,
    /// The bytes of LBAs the unit takes: it may grow (`Unit::grow`), never shrink.
    pub(super) size_bytes: AtomicU64,
    pub(super) state: Mutex<State>,
    /// `state.durable_vba`, readable without the lock.
    pub(super) durable_vba: AtomicU64,
    /// `state.durable_vba` again, for async waiters; also sent when the log fails.
    pub(super) durable_watch: tokio::sync::watch::Sender<Vba>,
    /// As in `unit.json`; changed under `state`'s lock, like every write of `unit.json`.
    pub(super) marks: Mutex<Marks>,
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

    pub(super) fn check_failed(&self) -> Result<()> {
        match self.log.failed() {
            Some(reason) => Err(EngineError::Failed {
                unit: self.id,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub(super) fn number(&self) -> u32 {
        self.number
    }

    /// Whether `vba` is durable; [`EngineError::Truncated`] if it is not and never will be: with
    /// none of the unit's records queued, every record accepted is durable, so a `vba` beyond them
    /// was dropped by a truncation.
    pub(super) fn durable_or_dropped(&self, vba: Vba) -> Result<bool> {
        let state = self.state.lock();
        if state.durable_vba >= vba {
            return Ok(true);
        }
        if state.queued == 0 {
            return Err(EngineError::Truncated { unit: self.id, vba });
        }
        Ok(false)
    }

    pub(super) fn is_durable(&self, vba: Vba) -> bool {
        self.durable_vba.load(Ordering::Acquire) >= vba.0
    }

    pub(super) fn subscribe(&self) -> tokio::sync::watch::Receiver<Vba> {
        self.durable_watch.subscribe()
    }

    /// Wakes the unit's async waiters, to look again.
    pub(super) fn wake(&self) {
        self.durable_watch.send_modify(|_| {});
    }

    /// Makes records of the unit that the log wrote visible: index, durable VBA.
    pub(super) fn publish(&self, records: &[Pending], locations: &[Location]) {
        let mut state = self.state.lock();
        let mut last = state.durable_vba;
        for (pending, location) in records.iter().zip(locations) {
            match &pending.op {
                Op::Write { lba, .. } => state.index.add_write(pending.vba, *lba, *location),
                Op::Trim { lba, blocks } => {
                    state.index.add_trim(pending.vba, *lba, *blocks, *location)
                }
            }
            state.segments.insert(location.vsid);
            assert!(pending.vba > last, "records are published in VBA order");
            last = pending.vba;
        }
        state.queued -= records.len();
        state.durable_vba = last;
        self.durable_vba.store(last.0, Ordering::Release);
        drop(state);
        self.durable_watch.send_replace(last);
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

    /// Queues a record with the next VBA, which must be `vba`, in the device log. Called under
    /// the unit's lock.
    fn push_pending(self: &Arc<Self>, state: &mut State, vba: Vba, generation: Generation, op: Op) {
        debug_assert_eq!(vba, state.next_vba, "records are queued in VBA order");
        self.log.enqueue([Pending {
            unit: self.clone(),
            vba,
            generation,
            op,
        }]);
        state.queued += 1;
        state.next_vba = vba.next();
    }

    pub(super) fn write_meta(&self, generations: &[GenerationStart]) -> Result<()> {
        self.write_meta_sized(self.size_bytes(), generations)
    }

    fn write_meta_sized(&self, size_bytes: u64, generations: &[GenerationStart]) -> Result<()> {
        let meta = UnitMeta {
            format: meta::UNIT_FORMAT,
            unit: self.id,
            number: self.number,
            size_bytes,
            generations: generations.to_vec(),
            marks: *self.marks.lock(),
        };
        let json = serde_json::to_vec_pretty(&meta).expect("unit metadata serializes");
        let path = format!("{}/{}", self.dir, meta::UNIT_META);
        self.backend
            .write_atomic(&path, &json)
            .map_err(io_err(self.id, "writing unit.json"))
    }

    /// The marks the node keeps on this unit (`unit.json`).
    pub fn marks(&self) -> Marks {
        *self.marks.lock()
    }

    /// Changes the unit's marks, durably: they are in `unit.json` when this returns. On an
    /// error they are as they were.
    pub fn set_marks(&self, marks: Marks) -> Result<()> {
        let state = self.state.lock();
        let previous = std::mem::replace(&mut *self.marks.lock(), marks);
        if previous == marks {
            return Ok(());
        }
        let written = self.write_meta_sized(self.size_bytes(), &state.generations);
        if written.is_err() {
            *self.marks.lock() = previous;
        }
        written
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
    pub fn append(self: &Arc<Self>, generation: Generation, ops: Vec<Op>) -> Result<Vba> {
        let (first, last) = self.enqueue_append(generation, ops)?;
        self.log.wait_durable(self, last)?;
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

    fn enqueue_append(
        self: &Arc<Self>,
        generation: Generation,
        ops: Vec<Op>,
    ) -> Result<(Vba, Vba)> {
        if ops.is_empty() {
            return Err(EngineError::Invalid(
                "an append needs at least one op".into(),
            ));
        }
        for op in &ops {
            self.check_op(op)?;
        }
        let bytes = ops.iter().map(|op| op.record_bytes() as u64).sum();
        let mut state = self.state.lock();
        self.check_failed()?;
        self.log.check_room(bytes)?;
        let first = state.next_vba;
        self.enter_generation(&mut state, generation, first)?;
        let records: Vec<Pending> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Pending {
                unit: self.clone(),
                vba: Vba(first.0 + i as u64),
                generation,
                op,
            })
            .collect();
        state.queued += records.len();
        state.next_vba = Vba(first.0 + records.len() as u64);
        self.log.enqueue(records);
        Ok((first, Vba(state.next_vba.0 - 1)))
    }

    /// Secondary: takes a record the primary numbered. Exactly the next VBA is written; a VBA the
    /// unit already holds with the same generation and content is acknowledged again without
    /// being written; a VBA further on is a [`EngineError::Hole`].
    pub fn apply(self: &Arc<Self>, vba: Vba, generation: Generation, op: Op) -> Result<Applied> {
        let applied = self.enqueue_apply(vba, generation, op)?;
        self.log.wait_durable(self, vba)?;
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

    fn enqueue_apply(
        self: &Arc<Self>,
        vba: Vba,
        generation: Generation,
        op: Op,
    ) -> Result<Applied> {
        self.check_op(&op)?;
        let mut state = self.state.lock();
        self.check_failed()?;
        if vba > state.next_vba {
            return Err(EngineError::Hole {
                unit: self.id,
                expected: state.next_vba,
                got: vba,
            });
        }
        if vba == state.next_vba {
            self.log.check_room(op.record_bytes() as u64)?;
            self.enter_generation(&mut state, generation, vba)?;
            self.push_pending(&mut state, vba, generation, op);
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
        let queued = self.log.queued_content_crc(self, vba);
        drop(state);
        let held = match queued {
            Some(crc) => Some(crc),
            None => self.held_content_crc(vba)?,
        };
        // A record in the batch being written is in neither place, and is taken as the same.
        let same = held.is_none_or(|crc| crc == op.content_crc());
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
        self.check_failed()?;
        if vba < state.next_vba {
            return Err(EngineError::Invalid(format!(
                "unit {}: catch-up record VBA {vba} is not beyond the unit's next VBA {}",
                self.id, state.next_vba
            )));
        }
        self.log.check_room(op.record_bytes() as u64)?;
        self.enter_generation(&mut state, generation, vba)?;
        state.next_vba = vba;
        self.push_pending(&mut state, vba, generation, op);
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
        meta::run_start(&self.state.lock().generations, vba)
    }

    /// Waits until every record accepted so far is durable (async callers).
    pub async fn drain_async(&self) -> Result<()> {
        let last = Vba(self.state.lock().next_vba.0 - 1);
        self.log.wait_durable_async(self, last, last).await
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
                            let (file, nonce) = self.segment(location.vsid)?;
                            (vba, location, file, nonce)
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
                    // The record may have moved (compaction, repair) between the lookup and the
                    // read.
                    _ if attempt < READ_ATTEMPTS && self.moved(lba, vba, location) => continue,
                    Err(e) => return Err(e),
                    Ok(found) => {
                        let reason = match found {
                            Ok(header) => {
                                format!("it reads back as VBA {} of LBA {}", header.vba, header.lba)
                            }
                            Err(invalid) => invalid.to_string(),
                        };
                        return Err(self.damaged(vba, Some(lba), location, reason));
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// The file and nonce of a segment the index points into.
    pub(super) fn segment(&self, vsid: Vsid) -> Result<(Arc<dyn BlockFile>, u64)> {
        self.log.segment(vsid).ok_or_else(|| EngineError::Corrupt {
            unit: self.id,
            vsid,
            offset: 0,
            reason: "the index points into a segment the log does not have".into(),
        })
    }

    fn damaged(&self, vba: Vba, lba: Option<Lba>, at: Location, reason: String) -> EngineError {
        EngineError::Damaged {
            unit: self.id,
            vba,
            lba,
            vsid: at.vsid,
            offset: at.offset as u64,
            reason,
        }
    }

    fn moved(&self, lba: Lba, vba: Vba, location: Location) -> bool {
        self.state.lock().index.lookup(lba) != Target::Written(vba, location)
    }

    /// Reads the live record at `vba`, checked, with its bytes; `None` if no live record has it.
    pub(super) fn read_record(&self, vba: Vba) -> Result<Option<(record::Header, Vec<u8>)>> {
        for attempt in 1..=READ_ATTEMPTS {
            let (location, file, nonce) = {
                let state = self.state.lock();
                let Some(location) = state.index.location(vba) else {
                    return Ok(None);
                };
                let (file, nonce) = self.segment(location.vsid)?;
                (location, file, nonce)
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
                let reason = match record::decode_header(&head, nonce) {
                    Ok(header) if header.vba != vba => {
                        format!("it reads back as VBA {}", header.vba)
                    }
                    Ok(_) => Invalid::Corrupt("checksum mismatch").to_string(),
                    Err(invalid) => invalid.to_string(),
                };
                return Err(self.damaged(vba, None, location, reason));
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
        let live: Vec<u64> = state
            .segments
            .iter()
            .map(|v| state.index.live_bytes(*v))
            .filter(|bytes| *bytes > 0)
            .collect();
        UnitStats {
            last_vba: state.durable_vba,
            generation: state.generation(),
            written_blocks: state.index.written_blocks(),
            live_records: state.index.live_records() as u64,
            segments: live.len(),
            live_bytes: live.iter().sum(),
            index_bytes: state.index.memory_bytes() as u64,
        }
    }
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
        self.unit.log.wait_durable(&self.unit, self.last)
    }

    /// Waits until every record of the ticket is durable, from a multi-threaded tokio runtime.
    pub async fn wait_async(self) -> Result<()> {
        self.unit
            .log
            .wait_durable_async(&self.unit, self.first, self.last)
            .await
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
                    return Some(Ok(Record::from_bytes(&header, &bytes)));
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
