//! Read repair in the engine: a damaged record replaced by a good copy of it, fetched from
//! another copy of the slice (`node::repair`).
//!
//! The record keeps its unit, VBA, generation and LBA; as with compaction, only its location
//! changes. The good copy is written to a compacted segment of its own and the index pointed at
//! it; the damaged bytes stay where they were, dead. A crash before the index moved leaves the
//! new segment, which recovery reads like any compaction output (the same VBA in two places).

use client::types::Vba;

use super::error::{EngineError, Result};
use super::index::Location;
use super::record::{self, Op};
use super::segment::SEGMENT_HEADER_BYTES;
use super::unit::{Record, Unit};

impl Unit {
    /// Replaces the damaged record at `good.vba` with `good`, another copy's record of that VBA.
    /// Returns `false` when there is nothing to repair: no live record has the VBA any more, or
    /// it reads back well (another repair came first). Refuses a `good` that cannot be the same
    /// record: another generation than this copy's history has at the VBA, or a write of a block
    /// whose newest record here is another VBA.
    pub fn repair(&self, good: &Record) -> Result<bool> {
        self.put_back(good, false)
    }

    /// As [`Unit::repair`], but replaces a record that reads back well too, when its content or
    /// generation differ from `good`'s: a scrub found this copy's record of the VBA differs from
    /// the primary's although it passes its checksum (a misdirected write).
    pub fn replace(&self, good: &Record) -> Result<bool> {
        self.put_back(good, true)
    }

    fn put_back(&self, good: &Record, even_if_readable: bool) -> Result<bool> {
        let vba = good.vba;
        let held = self.generation_at(vba);
        if held != good.generation {
            return Err(EngineError::Invalid(format!(
                "unit {}: a repair of VBA {vba} brought generation {}, this copy's history has {held} there",
                self.id, good.generation
            )));
        }
        // No compaction, truncation or checkpoint moves records meanwhile.
        let _maintenance = self.log.maintenance.lock();
        let Some(from) = self.state.lock().index.location(vba) else {
            return Ok(false);
        };
        if let Op::Write { lba, .. } = &good.op {
            let newest = self.state.lock().index.vba_of(*lba);
            if newest != vba {
                return Err(EngineError::Invalid(format!(
                    "unit {}: a repair of VBA {vba} writes LBA {lba}, whose newest record here is VBA {newest}",
                    self.id
                )));
            }
        }
        match self.read_record(vba) {
            Err(EngineError::Damaged { .. }) => {}
            Ok(Some((header, bytes))) if even_if_readable => {
                let held = Record::from_bytes(&header, &bytes);
                if held.generation == good.generation
                    && held.op.content_crc() == good.op.content_crc()
                {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(false),
            Err(other) => return Err(other),
        }

        let (vsid, nonce, mut out) = self.log.new_compacted();
        let at = out.len();
        let size = good.op.record_bytes();
        out.resize(at + size, 0);
        record::encode(
            &mut out[at..],
            &good.op,
            self.number,
            good.generation,
            vba,
            nonce,
            SEGMENT_HEADER_BYTES as u32,
        );
        self.log.install_compacted(vsid, nonce, &out)?;
        let to = Location {
            vsid,
            offset: at as u32,
        };
        let mut state = self.state.lock();
        let moved = state.index.relocate(vba, from.vsid, to, size as u64);
        state.segments.insert(vsid);
        // Nothing else moves records under the maintenance lock, so `moved` holds; were it not,
        // the new segment holds nothing live and compaction frees it.
        debug_assert!(moved, "a record moved during its repair");
        Ok(moved)
    }

    /// The live record at `vba`, checked: `None` if no live record has it (it was overwritten).
    /// A damaged one is an error ([`EngineError::Damaged`]).
    pub fn record(&self, vba: Vba) -> Result<Option<Record>> {
        Ok(self
            .read_record(vba)?
            .map(|(header, bytes)| Record::from_bytes(&header, &bytes)))
    }
}
