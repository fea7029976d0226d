//! The vbs storage node.
//!
//! # Layout
//! - [`engine`]: the storage engine: per storage unit an append-only VBA log and its index.
//! - [`bench`]: `vbs-storage bench`, which drives the engine directly and measures the disk.
//! - [`config`]: the node's command line and the [`node::NodeConfig`] it makes.
//! - [`node`]: the storage node: the IO shell that serves units over the data plane, applies
//!   the managers' assignments, replicates, resyncs, repairs and scrubs.
//! - [`replication`]: the replication protocol's decisions, without IO.
//! - `bugs` (feature `bugs` only): deliberate bugs for the fault-injection suite to catch.

pub mod bench;
#[cfg(feature = "bugs")]
pub mod bugs;
pub mod config;
pub mod engine;
pub mod node;
pub mod replication;
