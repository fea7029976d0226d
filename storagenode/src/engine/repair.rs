//! Read repair in the engine: a damaged record replaced by a good copy of it, fetched from
//! another copy of the slice (`node::repair`).
//!
//! The good record is written in place of the damaged one, with the same unit, VBA, generation,
//! LBA and length, sealed with its segment's nonce: the index does not change, and the segment
//! reads back whole again, for compaction and for a full read of the log when the device opens.
//! Readers that meet the record while it is being written see a checksum fail and read again
//! once the repair, which holds the log's maintenance lock, is done. A crash in the middle of
//! the write leaves the record damaged, as it was before.

use vbs_wire::types::Vba;

use super::error::{io_err, EngineError, Result};
use super::index::Target;
use super::record::{self, Op, HEADER_BYTES};
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
        // The slot must hold a record of the same kind, so of the same length.
        let fits = {
            let state = self.state.lock();
            match &good.op {
                Op::Write { lba, .. } => state.index.lookup(*lba) == Target::Written(vba, from),
                Op::Trim { .. } => state.index.is_live_trim(vba),
            }
        };
        if !fits {
            return Err(EngineError::Invalid(format!(
                "unit {}: a repair of VBA {vba} brought a {:?} of LBA {}, which is not what this copy holds at that VBA",
                self.id,
                good.op.kind(),
                good.op.lba()
            )));
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

        // The good record goes where the damaged one is, with that segment's nonce: the segment
        // reads back whole again, for compaction and for a full read of the log at open.
        let (file, nonce) = self.segment(from.vsid)?;
        let size = good.op.record_bytes();
        let mut head = [0u8; HEADER_BYTES];
        file.read_exact_at(&mut head, from.offset as u64)
            .map_err(io_err(self.id, format!("reading segment {}", from.vsid)))?;
        // The batch it was written in, when the damage spared that field; else a batch of its own.
        let batch_start = match record::decode_header(&head, nonce) {
            Ok(header) if header.batch_start <= from.offset => header.batch_start,
            _ => from.offset,
        };
        let mut bytes = vec![0u8; size];
        record::encode(
            &mut bytes,
            &good.op,
            self.number,
            good.generation,
            vba,
            nonce,
            batch_start,
        );
        let context = format!("repairing VBA {vba} in segment {}", from.vsid);
        file.write_at(&bytes, from.offset as u64)
            .map_err(io_err(self.id, &context))?;
        file.sync().map_err(io_err(self.id, &context))?;
        // The segment reads whole again: compaction may take it.
        self.log.damaged_segments.lock().remove(&from.vsid);
        Ok(true)
    }

    /// The live record at `vba`, checked: `None` if no live record has it (it was overwritten).
    /// A damaged one is an error ([`EngineError::Damaged`]).
    pub fn record(&self, vba: Vba) -> Result<Option<Record>> {
        Ok(self
            .read_record(vba)?
            .map(|(header, bytes)| Record::from_bytes(&header, &bytes)))
    }
}
