//! How a unit is read: blocks through its index (retrying a record that compaction moved),
//! allocation runs, single records by VBA, and the live records after a VBA that a resync
//! streams. A record whose checksum fails is reported damaged, never returned.

use std::sync::Arc;

use bytes::Bytes;
use vbs_wire::proto::{Extent, WireRecord};
use vbs_wire::types::{Generation, Lba, Vba, BLOCK_BYTES};

use super::super::backend::BlockFile;
use super::super::error::{io_err, EngineError, Result};
use super::super::index::{Location, Target};
use super::super::record::{self, Invalid, Kind, Op, HEADER_BYTES, WRITE_RECORD_BYTES};
use super::super::segment::Vsid;
use super::Unit;

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
    pub(in crate::engine) fn from_bytes(header: &record::Header, bytes: &[u8]) -> Record {
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

impl Unit {
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
    pub(super) fn read_with(
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
    pub(in crate::engine) fn segment(&self, vsid: Vsid) -> Result<(Arc<dyn BlockFile>, u64)> {
        self.log.segment(vsid).ok_or_else(|| EngineError::Corrupt {
            unit: self.id,
            vsid,
            offset: 0,
            reason: "the index points into a segment the log does not have".into(),
        })
    }

    pub(super) fn damaged(
        &self,
        vba: Vba,
        lba: Option<Lba>,
        at: Location,
        reason: String,
    ) -> EngineError {
        EngineError::Damaged {
            unit: self.id,
            vba,
            lba,
            vsid: at.vsid,
            offset: at.offset as u64,
            reason,
        }
    }

    pub(super) fn moved(&self, lba: Lba, vba: Vba, location: Location) -> bool {
        self.state.lock().index.lookup(lba) != Target::Written(vba, location)
    }

    /// Reads the live record at `vba`, checked, with its bytes; `None` if no live record has it.
    pub(in crate::engine) fn read_record(
        &self,
        vba: Vba,
    ) -> Result<Option<(record::Header, Vec<u8>)>> {
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
