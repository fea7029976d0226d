//! Commands: the payload of every Raft log entry, and what applying one returns.
//!
//! Commands are concrete changes decided on the leader by [`crate::decide`]; applying them is
//! deterministic. A change to a slice names the generation it was decided against and is refused
//! if the slice has moved on since, so a decision taken on a state that changed meanwhile cannot
//! undo a newer one.

use client::api::{CopyStatus, NodeState, UnitReport};
use client::types::{Generation, NodeId, UnitId, Vba, VolumeId};
use serde::{Deserialize, Serialize};

/// One Raft log entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add a storage node, or update the address and capacity of a known one. A node that was
    /// `down` comes back `up` (see [`Command::SetNodeState`]).
    RegisterNode {
        id: NodeId,
        addr: String,
        capacity_bytes: u64,
        free_bytes: u64,
    },
    /// The failure detector's verdict. `Down`: every copy on the node becomes `down` (except a
    /// primary's copy it had itself reported stale, which stays `stale`) and every slice it was
    /// primary of fails over to a current copy on an up node, `generation + 1`. `Up`: its `down`
    /// copies become `stale`, except where it is still the primary (no write can have been
    /// acknowledged without it, so that copy is `current`).
    SetNodeState {
        node: NodeId,
        state: NodeState,
        last_vbas: Vec<UnitReport>,
    },
    /// Copy-status changes and primary changes, all or nothing.
    UpdateSlices {
        updates: Vec<SliceUpdate>,
    },
    /// Create a volume with the given placement: one list of nodes per slice, primary first.
    CreateVolume {
        name: String,
        size_bytes: u64,
        slice_bytes: u64,
        replicas: u32,
        placement: Vec<Vec<NodeId>>,
    },
    DeleteVolume {
        name: String,
    },
}

/// A change to one slice, decided against `expected_generation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceUpdate {
    pub unit: UnitId,
    pub expected_generation: Generation,
    /// Make this copy the primary, with `generation + 1`.
    pub new_primary: Option<NodeId>,
    pub copies: Vec<CopyChange>,
}

/// A new status for one copy, with the VBA its node last reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyChange {
    pub node: NodeId,
    pub status: CopyStatus,
    pub last_vba: Vba,
}

/// Why a command (or a request, before it became one) was refused. The state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error(
        "unit {unit}: generation {named} is older than the slice's generation {current}; \
         refresh the volume map"
    )]
    StaleGeneration {
        unit: UnitId,
        named: Generation,
        current: Generation,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InsufficientNodes(String),
    #[error(
        "the primary's lease has not run out yet; the slice fails over in {retry_after_ms} ms, retry then"
    )]
    LeaseNotExpired { retry_after_ms: u64 },
    #[error("{0}")]
    Unavailable(String),
}

/// What applying a command returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (possibly changing nothing, when the state already was as asked).
    Done,
    VolumeCreated(VolumeId),
    VolumeDeleted(VolumeId),
    /// Refused; nothing changed.
    Refused(Refusal),
}
