//! `vbs-storage check`: verifies every unit of a device without changing anything on it.

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use vbs_wire::types::Vba;

use super::backend::Backend;
use super::device::{device_meta, Device};
use super::error::Result;
use super::record::Op;
use super::recovery::{RecoveryReport, TornTail};
use super::unit::Unit;

#[derive(Clone, Debug, Default, Serialize)]
pub struct UnitCheck {
    pub unit: String,
    pub segments: usize,
    /// Valid records on disk, live or not.
    pub records: u64,
    /// Records whose data fails its checksum (their headers read): the node repairs each from
    /// another copy when it is read or scrubbed.
    pub damaged_records: u64,
    pub live_records: u64,
    pub live_blocks: u64,
    pub last_vba: u64,
    /// crc32c of the unit's whole content as reads return it (zeroes where never written or
    /// trimmed), in hex: copies of one slice that agree hold the same blocks.
    pub digest: String,
    /// A torn tail left by a crash: not damage, it is cut off when the node opens the unit.
    pub torn_tail: Option<String>,
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceCheck {
    pub device: String,
    pub segment_bytes: u64,
    pub units: Vec<UnitCheck>,
    pub problems: Vec<String>,
}

impl DeviceCheck {
    pub fn consistent(&self) -> bool {
        self.problems.is_empty() && self.units.iter().all(|u| u.problems.is_empty())
    }

    /// The report `vbs-storage check` prints: the device, each unit, and the verdict.
    pub fn print(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "device {} (segments of {} bytes)",
            self.device, self.segment_bytes
        )?;
        for problem in &self.problems {
            writeln!(out, "  problem: {problem}")?;
        }
        for unit in &self.units {
            writeln!(
                out,
                "unit {}: {} segments, {} records, {} live records, {} live blocks, last VBA {}",
                unit.unit,
                unit.segments,
                unit.records,
                unit.live_records,
                unit.live_blocks,
                unit.last_vba
            )?;
            if unit.damaged_records > 0 {
                writeln!(
                    out,
                    "  damaged: {} records whose data fails its checksum (repaired from another copy when read or scrubbed)",
                    unit.damaged_records
                )?;
            }
            if let Some(torn) = &unit.torn_tail {
                writeln!(
                    out,
                    "  note: torn tail at {torn} (cut off when the node opens the unit)"
                )?;
            }
            for problem in &unit.problems {
                writeln!(out, "  problem: {problem}")?;
            }
        }
        let verdict = if self.consistent() {
            "consistent"
        } else {
            "INCONSISTENT"
        };
        writeln!(out, "{} units: {verdict}", self.units.len())
    }
}

/// Checks every unit of the device: every record's checksum and the VBA order of each log segment
/// (while reading the log back, as recovery does), then that every live record reads back and is
/// the one the index points at.
pub fn check_device(backend: Arc<dyn Backend>) -> Result<DeviceCheck> {
    let meta = device_meta(backend.as_ref(), 0, false)?;
    let mut check = DeviceCheck {
        device: backend.describe(),
        segment_bytes: meta.segment_bytes,
        ..DeviceCheck::default()
    };
    let (device, reports) = match Device::open_read_only(backend) {
        Ok(opened) => opened,
        Err(e) => {
            check.problems.push(e.to_string());
            return Ok(check);
        }
    };
    let mut reports: std::collections::HashMap<_, _> =
        reports.into_iter().map(|r| (r.unit, r)).collect();
    for unit in device.units() {
        let report = reports.remove(&Some(unit.id())).unwrap_or_default();
        check.units.push(check_unit(&unit, report));
    }
    Ok(check)
}

/// Reads the whole unit, as a client would, and checksums it.
fn content_digest(unit: &Unit) -> super::error::Result<u32> {
    const CHUNK_BLOCKS: u64 = 256;
    let mut crc = 0;
    let mut lba = 0;
    while lba < unit.blocks() {
        let blocks = CHUNK_BLOCKS.min(unit.blocks() - lba);
        let data = unit.read(vbs_wire::types::Lba(lba), blocks)?;
        crc = crc32c::crc32c_append(crc, &data);
        lba += blocks;
    }
    Ok(crc)
}

fn check_unit(unit: &Unit, report: RecoveryReport) -> UnitCheck {
    let mut check = UnitCheck {
        unit: unit.id().to_string(),
        ..UnitCheck::default()
    };
    check.segments = report.segments;
    check.records = report.records;
    check.damaged_records = report.damaged_records;
    check.last_vba = report.last_vba.0;
    check.torn_tail = report.torn_tail.map(
        |TornTail {
             vsid,
             offset,
             reason,
         }| { format!("segment {vsid:08x} offset {offset}: {reason}") },
    );
    let mut previous = Vba::ZERO;
    let mut live_blocks = 0;
    for record in unit.records_after(Vba::ZERO) {
        match record {
            Ok(record) => {
                if record.vba <= previous {
                    check
                        .problems
                        .push(format!("VBA {} follows VBA {previous}", record.vba));
                }
                previous = record.vba;
                check.live_records += 1;
                if let Op::Write { lba, .. } = record.op {
                    live_blocks += 1;
                    let indexed = unit.state.lock().index.vba_of(lba);
                    if indexed != record.vba {
                        check.problems.push(format!(
                            "LBA {lba} is indexed at VBA {indexed} but VBA {} is live for it",
                            record.vba
                        ));
                    }
                }
            }
            Err(e) => {
                check.problems.push(e.to_string());
                break;
            }
        }
    }
    check.live_blocks = live_blocks;
    match content_digest(unit) {
        Ok(digest) => check.digest = format!("{digest:08x}"),
        Err(e) => check.problems.push(e.to_string()),
    }
    let stats = unit.stats();
    if stats.written_blocks != live_blocks {
        check.problems.push(format!(
            "the index counts {} written blocks but {live_blocks} live write records were read",
            stats.written_blocks
        ));
    }
    check
}
