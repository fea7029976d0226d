//! The vbs storage node.
//!
//! # Layout
//! - [`engine`]: the storage engine: per storage unit an append-only VBA log and its index.
//! - [`bench`]: `vbs-storage bench`, which drives the engine directly and measures the disk.
//! - `bugs` (feature `bugs` only): deliberate bugs for the fault-injection suite to catch.

pub mod bench;
#[cfg(feature = "bugs")]
pub mod bugs;
pub mod engine;
pub mod node;
pub mod replication;
