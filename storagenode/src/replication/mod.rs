//! The replication protocol's logic, without IO: what a primary waits for before acknowledging a
//! write, which records it keeps for resending, how a lease is counted, what a secondary does
//! with a replicated frame, the start of a generation, a conflict and a resync's answers, and
//! whether a copy may serve after a heartbeat reply (`serving`). The
//! data-plane server (`crate::node`) is a thin shell that feeds these events in and carries the
//! resulting actions out.

pub mod lease;
pub mod progress;
pub mod secondary;
pub mod serving;
pub mod window;
