//! What every vbs process shares: the client, the storage nodes and the managers all speak
//! through these types, frames and connections. Kept apart from the `client` crate so that the
//! servers do not build on the CLI or the NBD gateway, nor pull in their dependencies.
//!
//! # Layout
//! - [`admission`]: at most so many connections per client address on a listener.
//! - `bugs` (feature `bugs` only): the switch for deliberate bugs of the fault-injection suite.
//! - [`api`]: JSON bodies of the manager HTTP API (volumes, nodes, heartbeats, notifications, status).
//! - [`proto`]: the data-plane protocol: binary frames, their encoding and decoding.
//! - [`conn`]: pipelined data-plane connections to storage nodes, pooled by address.
//! - [`managers`]: an HTTP client for the manager quorum, trying each member in turn.
//! - [`metrics`]: the `/metrics` text every process serves, written by `prometheus-client`.
//! - [`security`]: the cluster token, TLS settings, and the HTTP side of both.
//! - [`types`]: newtypes for VBAs, LBAs, generations, ids (`Vba`, `Lba`, `Generation`, `UnitId`, ...).
//! - [`size`]: parsing and printing of human sizes (`4k`, `64M`, `1G`) and durations.
//! - [`writer`]: frames queued for one socket, written in order by the caller or a task.

pub mod admission;
pub mod api;
#[cfg(feature = "bugs")]
pub mod bugs;
pub mod conn;
pub mod managers;
pub mod metrics;
pub mod proto;
pub mod security;
pub mod size;
pub mod types;
pub mod writer;
