//! Keeping every slice at its replica count while nodes fail for good or are taken out:
//! re-replication of the copies on a node `down` past the grace period, and drains.
//!
//! The failure detector calls [`plan`] every round on the leader and commits what it returns;
//! each round starts again from the applied state, so a step that was refused or lost with a
//! leader change is simply decided again. Per slice, the copies that count are the *keepers*:
//! those on nodes neither lost (down past the grace period) nor draining.
//!
//! - Fewer keepers than `replicas`: new copies on other nodes (`up`, not draining, holding none
//!   of the slice's copies, roomiest first, as placement does), `stale` with VBA 0. Their nodes
//!   learn of them from their heartbeat reply and resync them in full from the primary.
//! - A lost copy is removed together with the copy that replaces it (in the same update, one
//!   generation bump), or alone when the keepers already suffice. Without a node to take its
//!   place it stays, and the slice is reported as waiting.
//! - A draining copy is removed once `replicas` keepers are `current` on `up` nodes (or, if the
//!   draining copy is not `current` itself, once there are `replicas` keepers): a drain never
//!   lowers the number of current copies below `replicas`.
//! - A draining primary hands the slice over once `replicas` keepers are `current`: its lease is
//!   revoked, and the failure detector fails the slice over to a current keeper when the lease
//!   has run out (`generation + 1`), exactly as for a client's report. The old primary's copy is
//!   then `stale`, and removed like any other draining copy.
//!
//! Every removal names the copy statuses it relied on ([`SliceUpdate::require`]), since status
//! changes do not bump the generation.

use std::collections::{BTreeMap, BTreeSet};

use vbs_wire::api::CopyStatus;
use vbs_wire::types::{Generation, NodeId, UnitId};

use super::placement::free_bytes;
use crate::state::command::{CopyChange, CopyRequirement, SliceUpdate};
use crate::state::{Command, Copy, Refusal, Slice, State};

/// Most slice updates one round commits, so that one Raft entry stays small and the failure
/// detector's round short; the next round carries on.
pub const MAX_REPAIRS_PER_ROUND: usize = 256;

/// What the cluster looks like to a round of repairs.
#[derive(Clone, Copy, Debug)]
pub struct Conditions<'a> {
    /// Nodes `down` for longer than the grace period.
    pub lost: &'a BTreeSet<NodeId>,
    /// Nodes being drained.
    pub draining: &'a BTreeSet<NodeId>,
    /// Free bytes each node last reported in a heartbeat.
    pub reported_free: &'a BTreeMap<NodeId, u64>,
    /// Most slice updates to return.
    pub limit: usize,
}

/// A draining primary whose slice is ready to be handed over: revoke its lease on `unit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    pub unit: UnitId,
    pub generation: Generation,
    pub primary: NodeId,
}

/// A slice that needs a new copy that no node can take now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub unit: UnitId,
    pub reason: String,
}

/// What one round decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// At most one per slice; commit them as one [`Command::UpdateSlices`].
    pub updates: Vec<SliceUpdate>,
    pub handovers: Vec<Handover>,
    pub waiting: Vec<Waiting>,
}

impl Repairs {
    /// The command to commit, if there is anything to change.
    pub fn command(&self) -> Option<Command> {
        (!self.updates.is_empty()).then(|| Command::UpdateSlices {
            updates: self.updates.clone(),
        })
    }
}

/// Nodes that may take a new copy, with the room they have left as copies are planned.
struct Targets {
    nodes: Vec<Target>,
}

struct Target {
    id: NodeId,
    free_bytes: u64,
    units: usize,
}

impl Targets {
    fn new(state: &State, conditions: &Conditions) -> Targets {
        let nodes = state
            .nodes
            .values()
            .filter(|n| state.node_takes_copies(&n.id) && !conditions.draining.contains(&n.id))
            .map(|n| Target {
                id: n.id.clone(),
                free_bytes: free_bytes(state, n, conditions.reported_free.get(&n.id).copied()),
                units: n.units.len(),
            })
            .collect();
        Targets { nodes }
    }

    /// Up to `count` nodes holding no copy of `slice` with room for `unit_bytes`, the roomiest
    /// first; their room is taken.
    fn pick(&mut self, slice: &Slice, unit_bytes: u64, count: usize) -> Vec<NodeId> {
        if count == 0 {
            return Vec::new();
        }
        self.nodes.sort_by(|a, b| {
            b.free_bytes
                .cmp(&a.free_bytes)
                .then(a.units.cmp(&b.units))
                .then(a.id.cmp(&b.id))
        });
        let mut picked = Vec::with_capacity(count);
        for target in &mut self.nodes {
            if picked.len() == count {
                break;
            }
            if slice.copy(&target.id).is_none() && target.free_bytes >= unit_bytes {
                target.free_bytes -= unit_bytes;
                target.units += 1;
                picked.push(target.id.clone());
            }
        }
        picked
    }
}

/// One round of re-replication and drains.
pub fn plan(state: &State, conditions: &Conditions) -> Repairs {
    let affected: BTreeSet<UnitId> = conditions
        .lost
        .iter()
        .chain(conditions.draining)
        .filter_map(|n| state.nodes.get(n))
        .flat_map(|n| n.units.iter().copied())
        .collect();
    let mut targets = Targets::new(state, conditions);
    let mut repairs = Repairs::default();
    for unit in affected {
        if repairs.updates.len() >= conditions.limit {
            break;
        }
        plan_slice(state, conditions, unit, &mut targets, &mut repairs);
    }
    repairs
}

fn plan_slice(
    state: &State,
    conditions: &Conditions,
    unit: UnitId,
    targets: &mut Targets,
    repairs: &mut Repairs,
) {
    let Some(volume) = state.volumes.get(&unit.volume) else {
        return;
    };
    let Some(slice) = volume.slice(unit.slice) else {
        return;
    };
    let replicas = volume.replicas as usize;
    if conditions.lost.contains(&slice.primary) {
        lost_primary(state, unit, slice, repairs);
        return;
    }
    let lost = |c: &&Copy| conditions.lost.contains(&c.node);
    let draining = |c: &&Copy| !lost(c) && conditions.draining.contains(&c.node);
    let keepers: Vec<&Copy> = slice
        .copies
        .iter()
        .filter(|c| !lost(c) && !draining(c))
        .collect();
    let current_keepers: Vec<&Copy> = keepers
        .iter()
        .copied()
        .filter(|c| c.status == CopyStatus::Current && state.node_is_up(&c.node))
        .collect();

    let mut update = SliceUpdate::new(unit, slice.generation);
    let deficit = replicas.saturating_sub(keepers.len());
    update.add = targets.pick(slice, volume.unit_bytes(unit.slice), deficit);
    if update.add.len() < deficit {
        repairs.waiting.push(Waiting {
            unit,
            reason: format!(
                "unit {unit} needs {deficit} new cop{} but {} storage node(s) are up, not \
                 draining, hold none of its copies and have {} free",
                if deficit == 1 { "y" } else { "ies" },
                update.add.len(),
                vbs_wire::size::format_size(volume.unit_bytes(unit.slice)),
            ),
        });
    }

    // Lost copies go as their replacements come, or when the keepers suffice without them.
    let lost_copies: Vec<&Copy> = slice.copies.iter().filter(lost).collect();
    let surplus = (keepers.len() + update.add.len() + lost_copies.len()).saturating_sub(replicas);
    for copy in lost_copies.into_iter().take(surplus) {
        remove(&mut update, copy);
    }

    let enough_current = current_keepers.len() >= replicas;
    let mut relied_on_keepers = false;
    for copy in slice.copies.iter().filter(draining) {
        if copy.node == slice.primary {
            if enough_current {
                repairs.handovers.push(Handover {
                    unit,
                    generation: slice.generation,
                    primary: copy.node.clone(),
                });
            }
            continue;
        }
        if copy.status == CopyStatus::Current {
            if !enough_current {
                continue;
            }
            relied_on_keepers = true;
        } else if keepers.len() < replicas {
            continue;
        }
        remove(&mut update, copy);
    }
    if relied_on_keepers {
        update
            .require
            .extend(current_keepers.iter().map(|c| CopyRequirement {
                node: c.node.clone(),
                status: CopyStatus::Current,
            }));
    }
    if !update.add.is_empty() || !update.remove.is_empty() {
        repairs.updates.push(update);
    }
}

/// Removes `copy`, provided its status is still the one the decision saw.
fn remove(update: &mut SliceUpdate, copy: &Copy) {
    update.remove.push(copy.node.clone());
    update.require.push(CopyRequirement {
        node: copy.node.clone(),
        status: copy.status,
    });
}

/// The primary's node is lost. Its copies fail over when the node goes down, if a current copy is
/// up then; if one is now, fail over to it first. Otherwise the slice waits for the node: nobody
/// else holds every acknowledged write.
fn lost_primary(state: &State, unit: UnitId, slice: &Slice, repairs: &mut Repairs) {
    match state.failover_candidate(slice) {
        Some(candidate) => {
            let old = slice
                .copy(&slice.primary)
                .expect("the primary holds a copy");
            repairs.updates.push(SliceUpdate {
                new_primary: Some(candidate),
                copies: vec![CopyChange {
                    node: old.node.clone(),
                    status: CopyStatus::Down,
                    last_vba: old.last_vba,
                }],
                ..SliceUpdate::new(unit, slice.generation)
            })
        }
        None => repairs.waiting.push(Waiting {
            unit,
            reason: format!(
                "unit {unit}: its primary, node {}, is down past the grace period and no current \
                 copy on an up node can take over; its copies are not re-created",
                slice.primary
            ),
        }),
    }
}

/// Decides a drain request (`POST /v1/nodes/{id}/drain`): `None` when the node already drains
/// (draining twice is fine), the command that starts the drain when every copy on the node can
/// find a new node, or a refusal naming the first slice that cannot, with nothing changed.
pub fn drain(
    state: &State,
    node: &NodeId,
    reported_free: &BTreeMap<NodeId, u64>,
) -> Result<Option<Command>, Refusal> {
    let drained = state
        .nodes
        .get(node)
        .ok_or_else(|| Refusal::NotFound(format!("storage node {node} is not registered")))?;
    if drained.draining {
        return Ok(None);
    }
    let mut draining = state.draining_nodes();
    draining.insert(node.clone());
    let conditions = Conditions {
        lost: &BTreeSet::new(),
        draining: &draining,
        reported_free,
        limit: usize::MAX,
    };
    let repairs = plan(state, &conditions);
    if let Some(waiting) = repairs
        .waiting
        .iter()
        .find(|w| drained.units.contains(&w.unit))
    {
        return Err(Refusal::InsufficientNodes(format!(
            "cannot drain node {node}: {}",
            waiting.reason
        )));
    }
    Ok(Some(Command::SetDraining {
        node: node.clone(),
        draining: true,
    }))
}

#[cfg(test)]
mod tests;
