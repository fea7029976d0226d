//! The replicated state of the consistency database: storage nodes, volumes, and per slice the
//! generation, the primary and every copy's status. It changes only by applying [`Command`]s from
//! the Raft log ([`State::apply`]), so every manager replica holds the same state at the same log
//! index.
//!
//! - [`command`]: the commands (Raft log payloads) and what applying one returns.
//! - [`apply`]: the transition function `State x Command -> State`, pure and deterministic.
//! - [`view`]: the API's view of the state (volume maps, node status, heartbeat replies).
//! - [`events`]: the event log the transitions write, bounded, with the time and cause noted by
//!   each command's proposer.

pub mod apply;
pub mod command;
pub mod events;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use vbs_wire::api::{CopyStatus, NodeState, Role};
use vbs_wire::types::{Generation, NodeId, SliceIndex, UnitId, Vba, VolumeId};

pub use command::{Command, Outcome, Refusal};
pub use events::{EventLog, Note};

/// Most copies one slice may have: the most replicas a volume may ask for, plus as many again
/// being moved in (drains, re-replication) while the copies they replace are still there.
pub const MAX_COPIES_PER_SLICE: usize = 10;

/// A storage node as the database records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    /// Data-plane address.
    pub addr: String,
    pub capacity_bytes: u64,
    /// Free bytes as of registration; the leader keeps fresher figures from heartbeats in memory.
    pub free_bytes: u64,
    pub state: NodeState,
    /// Every storage unit assigned to the node.
    pub units: BTreeSet<UnitId>,
    /// Its copies are being moved to other nodes, and placement gives it no new ones. Absent in
    /// records written before drains existed, hence the default.
    #[serde(default)]
    pub draining: bool,
    /// The identities of the node's data directories, as it last presented them when every one
    /// was known or its copies marked lost. Empty for a node that never presented any.
    #[serde(default)]
    pub devices: BTreeSet<String>,
}

/// One copy of a slice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    pub node: NodeId,
    pub status: CopyStatus,
    /// Highest VBA the node reported when this copy's status last changed.
    pub last_vba: Vba,
    /// An operator accepted this copy's loss at this generation, ending at this VBA
    /// ([`Command::AcceptLoss`]): its node, which reported it not current, serves it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<(Generation, Vba)>,
}

/// One slice of a volume and its copy set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub generation: Generation,
    pub primary: NodeId,
    /// In placement order; the primary is one of them.
    pub copies: Vec<Copy>,
}

impl Slice {
    pub fn copy(&self, node: &NodeId) -> Option<&Copy> {
        self.copies.iter().find(|c| &c.node == node)
    }

    pub fn copy_mut(&mut self, node: &NodeId) -> Option<&mut Copy> {
        self.copies.iter_mut().find(|c| &c.node == node)
    }

    /// Refuses to accept the loss of slice `unit` of `volume` while a copy of it is current:
    /// that copy holds what the others lost, and nothing is to be accepted.
    pub fn check_no_current_copy(&self, unit: UnitId, volume: &str) -> Result<(), Refusal> {
        match self.copies.iter().find(|c| c.status == CopyStatus::Current) {
            Some(current) => Err(Refusal::Conflict(format!(
                "slice {unit} of {volume} has a current copy on node {}: nothing to accept",
                current.node
            ))),
            None => Ok(()),
        }
    }

    pub fn role_of(&self, node: &NodeId) -> Role {
        if &self.primary == node {
            Role::Primary
        } else {
            Role::Secondary
        }
    }
}

/// A volume: a virtual disk cut into slices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub id: VolumeId,
    pub name: String,
    pub size_bytes: u64,
    pub slice_bytes: u64,
    pub replicas: u32,
    pub slices: Vec<Slice>,
}

impl Volume {
    /// Bytes of slice `index`: `slice_bytes`, except a shorter last slice.
    pub fn unit_bytes(&self, index: SliceIndex) -> u64 {
        let start = u64::from(index.0) * self.slice_bytes;
        self.size_bytes.saturating_sub(start).min(self.slice_bytes)
    }

    pub fn slice(&self, index: SliceIndex) -> Option<&Slice> {
        self.slices.get(index.0 as usize)
    }
}

/// Number of slices a volume of `size_bytes` has with slices of `slice_bytes` (both non-zero).
pub fn slice_count(size_bytes: u64, slice_bytes: u64) -> u64 {
    size_bytes.div_ceil(slice_bytes)
}

/// The whole replicated state. Serialized as a snapshot's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub nodes: BTreeMap<NodeId, Node>,
    pub volumes: BTreeMap<VolumeId, Volume>,
    /// Volume ids are never reused: a volume deleted and created again gets a new one.
    pub next_volume_id: u64,
    /// What the commands changed and why. Absent in snapshots written before it existed.
    #[serde(default)]
    pub events: EventLog,
}

impl Default for State {
    fn default() -> State {
        // Volume id 0 is never handed out, so a zeroed id in a request is always unknown.
        State {
            nodes: BTreeMap::new(),
            volumes: BTreeMap::new(),
            next_volume_id: 1,
            events: EventLog::default(),
        }
    }
}

impl State {
    pub fn volume_by_name(&self, name: &str) -> Option<&Volume> {
        self.volumes.values().find(|v| v.name == name)
    }

    pub fn slice(&self, unit: UnitId) -> Option<&Slice> {
        self.volumes.get(&unit.volume)?.slice(unit.slice)
    }

    pub fn slice_mut(&mut self, unit: UnitId) -> Option<&mut Slice> {
        self.volumes
            .get_mut(&unit.volume)?
            .slices
            .get_mut(unit.slice.0 as usize)
    }

    pub fn node_is_up(&self, node: &NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.state == NodeState::Up)
    }

    pub fn node_is_draining(&self, node: &NodeId) -> bool {
        self.nodes.get(node).is_some_and(|n| n.draining)
    }

    /// Every node being drained.
    pub fn draining_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.draining)
            .map(|n| n.id.clone())
            .collect()
    }

    /// Whether `node` may receive new copies: registered, `up` and not draining.
    pub fn node_takes_copies(&self, node: &NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.state == NodeState::Up && !n.draining)
    }

    /// Bytes of every unit assigned to `node` (thick accounting: a unit may not be written yet).
    pub fn assigned_bytes(&self, node: &Node) -> u64 {
        node.units
            .iter()
            .filter_map(|u| self.volumes.get(&u.volume).map(|v| v.unit_bytes(u.slice)))
            .sum()
    }

    /// Slices whose primary is `node`.
    pub fn primaries_on(&self, node: &Node) -> usize {
        node.units
            .iter()
            .filter(|u| self.slice(**u).is_some_and(|s| s.primary == node.id))
            .count()
    }

    /// The copy that should become primary if `slice`'s primary is replaced: a `current` copy on an
    /// `up` node other than the primary; one on a node that is not draining first (a draining
    /// node would have to hand the slice on again), then the highest reported VBA, ties broken by
    /// placement order. Deterministic, since [`State::apply`] calls it too.
    pub fn failover_candidate(&self, slice: &Slice) -> Option<NodeId> {
        let rank = |c: &Copy| (!self.node_is_draining(&c.node), c.last_vba);
        let mut best: Option<&Copy> = None;
        for copy in &slice.copies {
            let eligible = copy.node != slice.primary
                && copy.status == CopyStatus::Current
                && self.node_is_up(&copy.node);
            if eligible && best.is_none_or(|b| rank(copy) > rank(b)) {
                best = Some(copy);
            }
        }
        best.map(|c| c.node.clone())
    }

    /// Checks the invariants that tie nodes and volumes together; used by tests and after loading
    /// state from disk.
    pub fn check_invariants(&self) -> Result<(), Inconsistency> {
        for volume in self.volumes.values() {
            if volume.id.0 >= self.next_volume_id {
                return Err(Inconsistency::VolumeId(volume.id));
            }
            for (i, slice) in volume.slices.iter().enumerate() {
                let unit = UnitId {
                    volume: volume.id,
                    slice: SliceIndex(i as u32),
                };
                if slice.copy(&slice.primary).is_none() {
                    return Err(Inconsistency::PrimaryWithoutCopy {
                        unit,
                        primary: slice.primary.clone(),
                    });
                }
                let distinct: BTreeSet<&NodeId> = slice.copies.iter().map(|c| &c.node).collect();
                if distinct.len() != slice.copies.len() {
                    return Err(Inconsistency::TwoCopiesOnOneNode(unit));
                }
                for copy in &slice.copies {
                    let node =
                        self.nodes
                            .get(&copy.node)
                            .ok_or_else(|| Inconsistency::UnknownNode {
                                unit,
                                node: copy.node.clone(),
                            })?;
                    if !node.units.contains(&unit) {
                        return Err(Inconsistency::Unlisted {
                            unit,
                            node: node.id.clone(),
                        });
                    }
                }
            }
        }
        for node in self.nodes.values() {
            for unit in &node.units {
                if self.slice(*unit).and_then(|s| s.copy(&node.id)).is_none() {
                    return Err(Inconsistency::ListedWithoutCopy {
                        node: node.id.clone(),
                        unit: *unit,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A broken tie between nodes and volumes ([`State::check_invariants`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("volume {0} has an id at or past next_volume_id")]
    VolumeId(VolumeId),
    #[error("unit {unit}: primary {primary} holds no copy")]
    PrimaryWithoutCopy { unit: UnitId, primary: NodeId },
    #[error("unit {0}: two copies on one node")]
    TwoCopiesOnOneNode(UnitId),
    #[error("unit {unit}: copy on unknown node {node}")]
    UnknownNode { unit: UnitId, node: NodeId },
    #[error("unit {unit}: node {node} does not list it")]
    Unlisted { unit: UnitId, node: NodeId },
    #[error("node {node} lists unit {unit} that has no copy there")]
    ListedWithoutCopy { node: NodeId, unit: UnitId },
}

/// Small states for the unit tests of [`apply`] and [`crate::decide`].
#[cfg(test)]
pub mod fixtures {
    use super::*;

    pub fn node(name: &str) -> NodeId {
        NodeId(name.to_string())
    }

    /// Nodes with 1 GiB each, all up, no volumes.
    pub fn cluster(names: &[&str]) -> State {
        let mut state = State::default();
        for name in names {
            let command = Command::RegisterNode {
                id: node(name),
                addr: format!("{name}:7000"),
                capacity_bytes: 1 << 30,
                free_bytes: 1 << 30,
                devices: None,
            };
            state.apply(&command, &mut apply::Touched::default());
        }
        state
    }

    /// Creates a volume with one 4 KiB slice per entry of `placement` (primary first).
    pub fn volume_on(state: &mut State, name: &str, placement: &[&[&str]]) -> VolumeId {
        let replicas = placement[0].len() as u32;
        let command = Command::CreateVolume {
            name: name.to_string(),
            size_bytes: 4096 * placement.len() as u64,
            slice_bytes: 4096,
            replicas,
            placement: placement
                .iter()
                .map(|s| s.iter().map(|n| node(n)).collect())
                .collect(),
        };
        match state.apply(&command, &mut apply::Touched::default()) {
            Outcome::VolumeCreated(id) => id,
            other => panic!("volume {name} not created: {other:?}"),
        }
    }
}
