//! The vbs consistency database: a Raft-replicated quorum of managers that knows, for every
//! storage node, whether it is up, which storage units it holds, and whether each copy is current.
//!
//! # Layout
//! - [`state`]: the replicated state (nodes, volumes, slices, copies) and the pure transition
//!   function that applies a committed command to it.
//! - [`decide`]: the decisions as pure functions of (state, event, now): placement, notifications,
//!   the failure detector and lease arithmetic.
//! - [`store`]: durable storage: the Raft log and vote in fsynced files, the state machine in
//!   sled, snapshots as files.
//! - [`raft_types`]: the openraft type configuration.
//! - [`network`]: Raft RPCs over HTTP between replicas.
//! - [`manager`]: the IO shell shared by the API and the failure detector (leader routing,
//!   proposals with deadlines, linearizable reads, the leader's liveness memory), and what a
//!   notification or a heartbeat does on the leader (`manager::events`).
//! - [`api`]: the axum routes: public API, forwarding to the leader, Raft RPC endpoints.
//! - [`detector`]: the failure detector loop on the leader.
//! - [`io_history`]: the leader's last 15 minutes of client IO per node and volume, from the
//!   totals nodes send in heartbeats.
//! - [`bootstrap`]: how a replica starts (resume, initialize, wait, or refuse).
//! - [`config`]: command-line arguments and settings.
//! - [`server`]: [`run`], which wires it all to a listener.
//! - `bugs` (feature `bugs` only): deliberate bugs for the fault-injection suite to catch.

pub mod api;
pub mod bootstrap;
#[cfg(feature = "bugs")]
pub mod bugs;
pub mod config;
pub mod decide;
pub mod detector;
pub mod io_history;
pub mod manager;
pub mod network;
pub mod raft_types;
pub mod server;
pub mod state;
pub mod store;

pub use server::run;
