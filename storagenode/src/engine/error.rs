use std::io;

use vbs_wire::types::{Generation, Lba, UnitId, Vba};

use super::segment::Vsid;

/// Errors of the storage engine. The replication layer branches on `Hole`, `Conflict` and
/// `StaleGeneration`; the rest are reported.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unit {unit}: {context}: {source}")]
    Io {
        unit: UnitId,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("device {device}: {context}: {source}")]
    Device {
        device: String,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("unit {unit}, segment {vsid}, offset {offset}: corrupt log: {reason}")]
    Corrupt {
        unit: UnitId,
        vsid: Vsid,
        offset: u64,
        reason: String,
    },
    /// A live record that does not read back as written (its checksum fails, or its header names
    /// another VBA or LBA): this copy of it is damaged, and must not be served or copied. Another
    /// copy of the slice may hold it intact (read repair, `node::repair`).
    #[error(
        "unit {unit}: the record of VBA {vba}{} is damaged (segment {vsid}, offset {offset}: {reason})",
        lba.map(|l| format!(" (LBA {l})")).unwrap_or_default()
    )]
    Damaged {
        unit: UnitId,
        vba: Vba,
        /// The block the record was read for, when a block was being read.
        lba: Option<Lba>,
        vsid: Vsid,
        offset: u64,
        reason: String,
    },
    #[error("device {device}, segment {vsid}, offset {offset}: corrupt log: {reason}")]
    CorruptLog {
        device: String,
        vsid: Vsid,
        offset: u64,
        reason: String,
    },
    /// The device's filesystem has no room for the records: nothing was numbered or written.
    #[error(
        "device {device}: {needed} bytes of records do not fit ({free} bytes free on its filesystem)"
    )]
    NoSpace {
        device: String,
        needed: u64,
        free: u64,
    },
    #[error("unit {unit}: blocks {lba}..{end} are outside the unit's {blocks} blocks")]
    OutOfRange {
        unit: UnitId,
        lba: Lba,
        end: u64,
        blocks: u64,
    },
    #[error("unit {unit}: VBA {got} leaves a hole: the next VBA expected is {expected}")]
    Hole {
        unit: UnitId,
        expected: Vba,
        got: Vba,
    },
    #[error("unit {unit}: VBA {vba} is already held with generation {held}, not {got}")]
    Conflict {
        unit: UnitId,
        vba: Vba,
        held: Generation,
        got: Generation,
    },
    #[error("unit {unit}: VBA {vba} is already held with different content")]
    ContentMismatch { unit: UnitId, vba: Vba },
    #[error("unit {unit}: generation {got} is older than the unit's generation {current}")]
    StaleGeneration {
        unit: UnitId,
        got: Generation,
        current: Generation,
    },
    #[error("unit {unit}: cannot truncate after VBA {vba}: VBAs up to {stable} are acknowledged")]
    TruncateStable { unit: UnitId, vba: Vba, stable: Vba },
    #[error("unit {unit}: VBA {vba} was dropped by a truncation before it became durable")]
    Truncated { unit: UnitId, vba: Vba },
    #[error("unit {unit} stopped after a write error of its device's log ({reason}); the device must be reopened")]
    Failed { unit: UnitId, reason: String },
    #[error("unit {0} already exists")]
    UnitExists(UnitId),
    #[error("no unit {0} on this device")]
    NoSuchUnit(UnitId),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Wraps an io::Error with the device and what was being done.
pub(crate) fn device_err(
    device: String,
    context: impl Into<String>,
) -> impl FnOnce(io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Device {
        device,
        context,
        source,
    }
}

/// Wraps an io::Error with the unit and what was being done.
pub(crate) fn io_err(
    unit: UnitId,
    context: impl Into<String>,
) -> impl FnOnce(io::Error) -> EngineError {
    let context = context.into();
    move |source| EngineError::Io {
        unit,
        context,
        source,
    }
}
