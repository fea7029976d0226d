//! The vbs client library: volumes for compute nodes, the NBD gateway, and the `vbs` command.
//!
//! # Layout
//! - [`volume`]: [`volume::Volume`], what compute nodes use: aligned reads, writes, trims and
//!   flushes split across slices, routed to each slice's primary, retried across failovers.
//! - [`nbd`]: an NBD server exporting a volume to standard block tools.
//! - The modules every vbs process shares (types, sizes, the manager API's bodies and client,
//!   the data-plane protocol, connections, security) live in the `vbs-wire` crate
//!   (`client/wire/`) and are re-exported here under the same names.
//!
//! The `vbs` command (`src/main.rs`, `src/cli/`) is built on these; `docs/cli.md` describes both.

pub use vbs_wire::{admission, api, conn, managers, proto, security, size, types, writer};

pub mod nbd;
pub mod volume;
