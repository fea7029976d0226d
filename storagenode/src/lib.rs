//! The vbs storage node.
//!
//! # Layout
//! - [`engine`]: the storage engine: per storage unit an append-only VBA log and its index.
//! - [`bench`]: `vbs-storage bench`, which drives the engine directly and measures the disk.

pub mod bench;
pub mod engine;
pub mod node;
pub mod replication;
