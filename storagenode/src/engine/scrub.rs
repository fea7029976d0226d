//! Scrub in the engine: reading a range of a unit's live records back, checking each, and
//! folding them into a digest that two copies holding the same records agree on.

use vbs_wire::proto::ScrubEntry;
use vbs_wire::types::Vba;

use super::error::{EngineError, Result};
use super::unit::{Record, Unit};

/// What [`Unit::scrub`] read.
#[derive(Debug, Default)]
pub struct ScrubStep {
    /// The last VBA the step covers: `through`, or less when it stopped at `max_records`.
    pub through: Vba,
    /// Live records read, and their bytes in the log.
    pub records: u64,
    pub bytes: u64,
    /// CRC32C over each record's VBA, generation and content checksum, in VBA order: where it
    /// is written and when do not count, so copies holding the same live records agree.
    pub digest: u32,
    /// The records that failed their check ([`EngineError::Damaged`]), left out of the digest.
    pub damaged: Vec<EngineError>,
    /// Each record read, in VBA order: what copies compare record by record when their
    /// digests differ.
    pub entries: Vec<ScrubEntry>,
}

impl Unit {
    /// Reads the live records with VBAs in `(after, through]`, up to `max_records`, checking
    /// each against its checksum; damaged ones are listed, for the caller to repair.
    pub fn scrub(&self, after: Vba, through: Vba, max_records: u64) -> Result<ScrubStep> {
        let mut step = ScrubStep {
            through,
            ..ScrubStep::default()
        };
        let mut cursor = after;
        let mut seen = 0;
        loop {
            let next = self.state.lock().index.next_live_after(cursor);
            let Some((vba, _)) = next.filter(|(vba, _)| *vba <= through) else {
                break;
            };
            if seen == max_records {
                step.through = cursor;
                break;
            }
            cursor = vba;
            seen += 1;
            match self.read_record(vba) {
                // Overwritten meanwhile.
                Ok(None) => {}
                Ok(Some((header, bytes))) => {
                    let record = Record::from_bytes(&header, &bytes);
                    step.records += 1;
                    step.bytes += bytes.len() as u64;
                    let entry = ScrubEntry {
                        vba: record.vba,
                        generation: record.generation,
                        crc: record.op.content_crc(),
                    };
                    step.digest = fold(step.digest, &entry);
                    step.entries.push(entry);
                }
                Err(damage @ EngineError::Damaged { .. }) => step.damaged.push(damage),
                Err(other) => return Err(other),
            }
        }
        Ok(step)
    }
}

fn fold(digest: u32, entry: &ScrubEntry) -> u32 {
    let mut fields = [0u8; 20];
    fields[..8].copy_from_slice(&entry.vba.0.to_le_bytes());
    fields[8..16].copy_from_slice(&entry.generation.0.to_le_bytes());
    fields[16..].copy_from_slice(&entry.crc.to_le_bytes());
    crc32c::crc32c_append(digest, &fields)
}
