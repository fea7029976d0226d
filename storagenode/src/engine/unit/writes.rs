//! How a unit takes records: numbered by its own counter on a primary (`append`), at the VBA
//! the primary gave on a secondary (`apply`), or streamed by a resync (`ingest`); each queued
//! in the device's log in VBA order, and a [`Ticket`] to wait until they are durable.

use std::sync::Arc;

use vbs_wire::types::{Generation, Vba};

use super::super::error::{EngineError, Result};
use super::super::log::Pending;
use super::super::meta::{self, GenerationStart};
use super::super::record::{self, Op};
use super::{State, Unit};

/// What [`Unit::apply`] did with a replicated record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The record was the next VBA and is now durable.
    Written,
    /// The unit already held this VBA with the same generation and content.
    Duplicate,
}

impl Unit {
    /// Accepts records of `generation`, which must not be older than the unit's, and starts the
    /// generation at `first_vba` in the unit's history if it is new. The history is persisted
    /// before any record of the new generation is written; on an error nothing has changed.
    pub(super) fn enter_generation(
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
    pub(in crate::engine) fn check_generation(
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
    pub(super) fn push_pending(
        self: &Arc<Self>,
        state: &mut State,
        vba: Vba,
        generation: Generation,
        op: Op,
    ) {
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

    pub(super) fn enqueue_append(
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

    pub(super) fn enqueue_apply(
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

    /// Waits until every record accepted so far is durable (async callers).
    pub async fn drain_async(&self) -> Result<()> {
        let last = Vba(self.state.lock().next_vba.0 - 1);
        self.log.wait_durable_async(self, last, last).await
    }

    /// The content checksum of the record held at `vba`, if it is still live (a record that was
    /// overwritten since is no longer looked up).
    pub(super) fn held_content_crc(&self, vba: Vba) -> Result<Option<u32>> {
        Ok(self
            .read_record(vba)?
            .map(|(header, bytes)| record::content_crc(&header, &bytes)))
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
