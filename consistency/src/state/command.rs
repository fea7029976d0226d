//! Commands: the payload of every Raft log entry, and what applying one returns.
//!
//! Commands are concrete changes decided on the leader by [`crate::decide`]; applying them is
//! deterministic. A change to a slice names the generation it was decided against and is refused
//! if the slice has moved on since, so a decision taken on a state that changed meanwhile cannot
//! undo a newer one.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use vbs_wire::api::{CopyStatus, NodeState, UnitReport};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba, VolumeId};

use super::events::Note;

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
        /// The identities of the node's devices, to record as its own; `None` keeps the ones
        /// recorded (a registration presenting a device the database does not know yet).
        #[serde(default)]
        devices: Option<BTreeSet<String>>,
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
    /// Grow a volume to `size_bytes`: its last slice grows to its full size where it is, and
    /// the new slices go where `placement` says (one list of nodes per new slice, primary
    /// first). Refused unless the placement fits the growth from the volume's size when it is
    /// applied, so a decision taken on an older size changes nothing.
    ResizeVolume {
        name: String,
        size_bytes: u64,
        placement: Vec<Vec<NodeId>>,
    },
    /// Start (or stop) moving every copy off a node; a draining node gets no new copies. The
    /// moves themselves are [`Command::UpdateSlices`] decided by the leader afterwards.
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// An operator accepts the loss of what a slice's copies no longer hold: the slice has no
    /// current copy, and `node`'s copy serves again as it is, its last VBA exactly `last_vba`
    /// (not the higher one recorded), its node the primary, `generation + 1`. The other copies
    /// are left to resync from it (`syncing` ones start again, as `stale`).
    AcceptLoss {
        unit: UnitId,
        expected_generation: Generation,
        node: NodeId,
        last_vba: Vba,
    },
    /// `command` with what its proposer notes for the event log (time and cause). Proposals
    /// carry one; log entries written before the event log existed do not.
    Noted {
        note: Note,
        command: Box<Command>,
    },
}

impl Command {
    /// This command with `note` for the event log.
    pub fn noted(self, note: Note) -> Command {
        Command::Noted {
            note,
            command: Box::new(self),
        }
    }
}

/// A change to one slice, decided against `expected_generation`. A change of primary or of the
/// copy set bumps the generation once, however much it changes.
///
/// Applied in this order, after every check passed: `require`, `copies`, `new_primary`, `add`,
/// `remove`. The fields after `copies` are absent from log entries written before they existed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceUpdate {
    pub unit: UnitId,
    pub expected_generation: Generation,
    /// Make this copy the primary, with `generation + 1`.
    pub new_primary: Option<NodeId>,
    pub copies: Vec<CopyChange>,
    /// Copy statuses the decision relied on. Status changes do not bump the generation, so the
    /// update is refused if any of these no longer holds when it is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<CopyRequirement>,
    /// New copies, `stale` with VBA 0, on nodes that are `up`, not draining and hold no copy of
    /// the slice yet. Their nodes learn of them from their next heartbeat reply and resync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<NodeId>,
    /// Copies to drop; never the primary's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<NodeId>,
}

impl SliceUpdate {
    /// An update that changes nothing yet.
    pub fn new(unit: UnitId, expected_generation: Generation) -> SliceUpdate {
        SliceUpdate {
            unit,
            expected_generation,
            new_primary: None,
            copies: Vec::new(),
            require: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        }
    }
}

/// A copy status a decision relied on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRequirement {
    pub node: NodeId,
    pub status: CopyStatus,
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
    VolumeResized(VolumeId),
    /// Refused; nothing changed.
    Refused(Refusal),
}
