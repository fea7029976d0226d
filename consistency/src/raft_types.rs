//! The openraft type configuration of the manager cluster: what a log entry carries, what applying
//! it returns, and how a manager replica is addressed.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::command::{Command, Outcome};

/// A manager replica as Raft membership records it: the address of its HTTP listener, which
/// serves both the public API and the Raft RPCs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    pub addr: String,
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// Raft types of the consistency database. Snapshots travel as in-memory buffers: the state is
    /// metadata (nodes, volumes, slices), small enough to hold whole, and each is stored on disk as
    /// a file by [`crate::store::snapshot`].
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = ManagerNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftId = u64;
pub type LogId = openraft::LogId<RaftId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<RaftId>;
pub type StorageError = openraft::StorageError<RaftId>;
pub type StoredMembership = openraft::StoredMembership<RaftId, ManagerNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftId, ManagerNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
