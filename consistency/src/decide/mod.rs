//! The database's decisions, as pure functions of (state, event, now) returning commands to
//! commit. No Raft, sockets or clocks here: the IO shell ([`crate::manager`]) reads the clock,
//! calls these, and proposes what they return; the unit tests call them directly.
//!
//! - [`placement`]: where the copies of a new volume's slices go.
//! - [`liveness`]: the leader's memory of heartbeats, the lease arithmetic and the failure
//!   detector's verdicts.
//! - [`notify`]: what a notification changes (`not_current`, `unresponsive`, `syncing`,
//!   `caught_up`; `resync_progress` is only remembered).
//! - [`resync`]: the leader's memory of resync progress, with rates and time left.
//! - [`repair`]: re-replication of copies on nodes down past the grace period, and drains.
//! - [`loss`]: which copy serves again when an operator accepts a slice's loss.

pub mod liveness;
pub mod loss;
pub mod notify;
pub mod placement;
pub mod repair;
pub mod resync;
