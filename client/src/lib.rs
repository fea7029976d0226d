//! The vbs client library and the wire types every vbs crate shares.
//!
//! # Layout
//! - [`api`]: JSON bodies of the manager HTTP API (volumes, nodes, heartbeats, notifications, status).
//! - [`types`]: newtypes for VBAs, LBAs, generations, ids (`Vba`, `Lba`, `Generation`, `UnitId`, ...).
//! - [`size`]: parsing and printing of human sizes (`4k`, `64M`, `1G`) and durations.

pub mod api;
pub mod size;
pub mod types;
