//! The replication protocol's logic, without IO: what a primary waits for before acknowledging a
//! write, which records it keeps for resending, how a lease is counted, and how a secondary places
//! an incoming record. The data-plane server (`crate::node`) is a thin shell that feeds these
//! events in and carries the resulting actions out.

pub mod lease;
pub mod order;
pub mod progress;
pub mod window;
