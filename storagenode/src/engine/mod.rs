//! The storage engine: per device, one append-only log of segment files shared by its storage
//! units; per unit, an in-memory `LBA -> VBA -> (VSID, offset)` index. See
//! `docs/storage-engine.md`.
//!
//! - [`record`]: the on-disk record format;
//! - [`segment`]: segment files, their headers and the scan that reads them back;
//! - [`backend`]: where bytes live (`file`, `memory`);
//! - [`pool`]: spare segments written ahead of need;
//! - [`index`]: the in-memory maps;
//! - [`unit`]: append (primary), apply (secondary), read, `records_after`;
//! - [`log`]: the device log and its group commit across units; [`committer`]: the device's thread
//!   that writes batches under load;
//! - [`recovery`]: reading the log back, truncation; [`compaction`]: reclaiming overwritten space;
//!   `repair`: replacing a damaged record with another copy's; [`scrub`]: reading ranges back
//!   with a digest that copies compare;
//! - [`device`]: a data directory of units; [`checkpoint`]: the indexes saved, so that opening a
//!   device reads only the log written since; [`check`]: offline verification.

pub mod backend;
pub mod check;
pub mod checkpoint;
mod committer;
pub mod compaction;
pub mod device;
pub mod error;
pub mod index;
pub mod log;
pub mod meta;
pub mod pool;
pub mod record;
pub mod recovery;
mod repair;
pub mod scrub;
pub mod segment;
pub mod unit;

pub use backend::file::FileBackend;
pub use backend::memory::MemoryBackend;
pub use backend::Backend;
pub use compaction::CompactionReport;
pub use device::{CheckpointReport, Device, DeviceOptions};
pub use error::{EngineError, Result};
pub use log::LogStats;
pub use meta::Marks;
pub use record::Op;
pub use recovery::RecoveryReport;
pub use scrub::ScrubStep;
pub use unit::{Applied, Record, Ticket, Unit, UnitStats};
