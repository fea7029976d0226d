//! A storage unit: one copy of one slice, its VBA log and its index.
//!
//! The durability contract: [`Unit::append`] and [`Unit::apply`] return only once their records
//! are durable (synced) and indexed; reads and [`Unit::records_after`] see only durable records.
//! A record that was accepted but not yet synced is invisible to readers, so nothing a reader saw
//! can be lost in a crash.
//!
//! This file holds the unit's state, its generation history, marks and size; `writes` how it
//! takes records (numbering, applying, ingesting, and the tickets that wait for durability);
//! `reads` how it is read (blocks, allocation, records by VBA, the records after a VBA).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

use super::backend::Backend;
use super::error::{io_err, EngineError, Result};
use super::index::{Index, Location};
use super::log::{Log, Pending};
use super::meta::{self, GenerationStart, Marks, UnitMeta};
use super::record::Op;
use super::segment::Vsid;

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

mod reads;
mod writes;

pub use reads::{Record, RecordsAfter};
pub use writes::{Applied, Ticket};
