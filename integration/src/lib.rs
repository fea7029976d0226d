//! A harness for tests that start real vbs processes on loopback and break them.
//!
//! # Layout
//! - [`binaries`]: finds the workspace's binaries next to the test executable, building them
//!   first when they are missing or older than the sources.
//! - [`process`]: one child process with its log file, killed (SIGKILL) when dropped.
//! - [`cluster`]: a set of processes (managers now, storage nodes later) with their own temp
//!   dirs and free loopback ports, and HTTP helpers for the manager API.
//! - [`credentials`]: a cluster's token file and TLS certificates (from a CA the test makes).
//! - [`fuzzing`]: the fuzz targets (data-plane frames, log records, recovery, NBD requests),
//!   shared by `tests/fuzz.rs` and the cargo-fuzz targets of `integration/fuzz/`.
//! - [`gateway`]: a `vbs nbd` gateway process; `tagged_block`, data that says which write it is.
//! - [`tools`]: programs from Debian packages the tests drive, installed with apt when missing.
//! - [`user`]: a cluster driven as its users drive it: `vbs` commands that must succeed, blocks
//!   written and read through the CLI, a slice's copies, qemu-io over NBD.
//! - [`measure`]: what the benchmarks read off processes (CPU, memory, threads) and the
//!   managers' notification commit rate.
//! - [`wait`]: waiting on observable state with a deadline, never a fixed sleep.
//! - [`nemesis`]: the fault-injection runner (`vbs-nemesis`, `tests/nemesis.rs`): seeded faults
//!   against a cluster on distinct loopback addresses, and a checker of the clients' history.
//!
//! When a test panics, dropping its [`cluster::Cluster`] prints every process's log.

pub mod binaries;
pub mod cluster;
pub mod credentials;
pub mod fuzzing;
pub mod gateway;
pub mod measure;
pub mod nemesis;
pub mod process;
pub mod tools;
pub mod user;
pub mod wait;

pub use cluster::{
    copies_not_current, primaries_on, volumes_with_a_copy_on, Addresses, Cluster, ClusterOptions,
};
pub use wait::wait_until;
