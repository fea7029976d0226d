//! Durable storage of a manager replica, under its `--data-dir`:
//!
//! ```text
//! raft-log        the Raft log: append-only, crc-checked records, fdatasynced (log_file, log)
//! vote.json       the vote, replaced atomically (log)
//! snapshot        the latest snapshot, replaced atomically (snapshot)
//! state/          sled: the applied state, one record per node and volume (state_machine)
//! ```
//!
//! Why this split: sled 0.34's `flush` is `sync_file_range`, not fdatasync, so it cannot be what
//! makes a vote or an appended entry survive power loss. The log and vote therefore live in plain
//! files that vbs fsyncs itself; sled holds the state machine, which can always be rebuilt from
//! the latest snapshot plus the log. Snapshots are files rather than sled values because sled
//! leaks space for values over ~128 KiB.

pub mod fsutil;
pub mod log;
pub mod log_file;
pub mod snapshot;
pub mod state_machine;

use std::io;
use std::path::Path;

pub use self::log::LogStore;
pub use self::state_machine::{Applied, SharedState, StateMachine};

/// Opens the log store and the state machine in `dir`, creating them if needed.
pub fn open(dir: &Path) -> io::Result<(LogStore, StateMachine)> {
    let log = LogStore::open(dir)?;
    let state_machine = StateMachine::open(dir)?;
    Ok((log, state_machine))
}

#[cfg(test)]
mod tests;
