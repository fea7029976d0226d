//! The vbs client library and the wire types every vbs crate shares.
//!
//! # Layout
//! - [`admission`]: at most so many connections per client address on a listener.
//! - `bugs` (feature `bugs` only): the switch for deliberate bugs of the fault-injection suite.
//! - [`api`]: JSON bodies of the manager HTTP API (volumes, nodes, heartbeats, notifications, status).
//! - [`proto`]: the data-plane protocol: binary frames, their encoding and decoding.
//! - [`conn`]: pipelined data-plane connections to storage nodes, pooled by address.
//! - [`managers`]: an HTTP client for the manager quorum, trying each member in turn.
//! - [`nbd`]: an NBD server exporting a volume to standard block tools.
//! - [`security`]: the cluster token, TLS settings, and the HTTP side of both.
//! - [`types`]: newtypes for VBAs, LBAs, generations, ids (`Vba`, `Lba`, `Generation`, `UnitId`, ...).
//! - [`size`]: parsing and printing of human sizes (`4k`, `64M`, `1G`) and durations.
//! - [`writer`]: frames queued for one socket, written in order by the caller or a task.
//! - [`volume`]: [`volume::Volume`], what compute nodes use: aligned reads, writes, trims and
//!   flushes split across slices, routed to each slice's primary, retried across failovers.
//!
//! The `vbs` command (`src/main.rs`, `src/cli/`) is built on these; `docs/cli.md` describes both.

pub mod admission;
pub mod api;
#[cfg(feature = "bugs")]
pub mod bugs;
pub mod conn;
pub mod managers;
pub mod nbd;
pub mod proto;
pub mod security;
pub mod size;
pub mod types;
pub mod volume;
pub mod writer;
