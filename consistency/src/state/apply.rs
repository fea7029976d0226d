//! The transition function: applying one [`Command`] to the [`State`]. Pure and deterministic, so
//! every replica reaches the same state; a refused command changes nothing.
//!
//! One file, past 600 lines, because the transition is one match over the commands: each arm's
//! checks sit next to the changes they guard, which is what a reviewer of a safety rule reads.

use std::collections::{BTreeMap, BTreeSet};

use vbs_wire::api::{CopyStatus, EventKind, NodeState};
use vbs_wire::types::{Generation, NodeId, SliceIndex, UnitId, Vba, VolumeId};

use super::command::{Command, CopyChange, CopyRequirement, Outcome, Refusal, SliceUpdate};
use super::{slice_count, Copy, Node, Slice, State, Volume, MAX_COPIES_PER_SLICE};

/// The keys a command changed, so the state machine can persist just those.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub nodes: BTreeSet<NodeId>,
    /// Volumes created or deleted (their header and every slice).
    pub volumes: BTreeSet<VolumeId>,
    /// Slices changed in place.
    pub slices: BTreeSet<UnitId>,
    /// Slice counts of deleted volumes, so their slice records can be removed.
    pub removed_slices: BTreeMap<VolumeId, u32>,
    pub next_volume_id: bool,
    /// Event log entries written and dropped.
    pub events_written: Vec<u64>,
    pub events_dropped: Vec<u64>,
    /// What the command being applied changed, for its event log entries.
    changes: Vec<EventKind>,
}

impl State {
    /// Applies `command`, recording in `touched` what changed and in the event log what it
    /// changed for an operator.
    pub fn apply(&mut self, command: &Command, touched: &mut Touched) -> Outcome {
        let (note, command) = match command {
            Command::Noted { note, command } => (Some(note), &**command),
            command => (None, command),
        };
        touched.changes.clear();
        let outcome = self.apply_change(command, touched);
        let changes = std::mem::take(&mut touched.changes);
        if !matches!(outcome, Outcome::Refused(_)) {
            let (written, dropped) = self.events.record(changes, note);
            touched.events_written.extend(written);
            touched.events_dropped.extend(dropped);
        }
        outcome
    }

    fn apply_change(&mut self, command: &Command, touched: &mut Touched) -> Outcome {
        let result = match command {
            // A note on a note: the inner one is the proposer's.
            Command::Noted { command, .. } => return self.apply_change(command, touched),
            Command::RegisterNode {
                id,
                addr,
                capacity_bytes,
                free_bytes,
                devices,
            } => {
                self.register_node(id, addr, *capacity_bytes, *free_bytes, touched);
                if let (Some(devices), Some(node)) = (devices, self.nodes.get_mut(id)) {
                    node.devices = devices.clone();
                }
                Ok(Outcome::Done)
            }
            Command::SetNodeState {
                node,
                state,
                last_vbas,
            } => {
                let vbas = last_vbas.iter().map(|r| (r.unit, r.last_vba)).collect();
                self.set_node_state(node, *state, &vbas, touched)
                    .map(|()| Outcome::Done)
            }
            Command::UpdateSlices { updates } => {
                self.update_slices(updates, touched).map(|()| Outcome::Done)
            }
            Command::CreateVolume {
                name,
                size_bytes,
                slice_bytes,
                replicas,
                placement,
            } => self
                .create_volume(
                    name,
                    *size_bytes,
                    *slice_bytes,
                    *replicas,
                    placement,
                    touched,
                )
                .map(Outcome::VolumeCreated),
            Command::ResizeVolume {
                name,
                size_bytes,
                placement,
            } => self
                .resize_volume(name, *size_bytes, placement, touched)
                .map(Outcome::VolumeResized),
            Command::DeleteVolume { name } => self
                .delete_volume(name, touched)
                .map(Outcome::VolumeDeleted),
            Command::SetDraining { node, draining } => self
                .set_draining(node, *draining, touched)
                .map(|()| Outcome::Done),
            Command::AcceptLoss {
                unit,
                expected_generation,
                node,
                last_vba,
            } => self
                .accept_loss(*unit, *expected_generation, node, *last_vba, touched)
                .map(|()| Outcome::Done),
        };
        result.unwrap_or_else(Outcome::Refused)
    }

    fn register_node(
        &mut self,
        id: &NodeId,
        addr: &str,
        capacity_bytes: u64,
        free_bytes: u64,
        touched: &mut Touched,
    ) {
        if !self.nodes.contains_key(id) {
            touched.changes.push(EventKind::NodeRegistered {
                node: id.clone(),
                addr: addr.to_string(),
            });
        }
        let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            addr: String::new(),
            capacity_bytes: 0,
            free_bytes: 0,
            state: NodeState::Up,
            units: BTreeSet::new(),
            draining: false,
            devices: BTreeSet::new(),
        });
        node.addr = addr.to_string();
        node.capacity_bytes = capacity_bytes;
        node.free_bytes = free_bytes;
        let was_down = node.state == NodeState::Down;
        touched.nodes.insert(id.clone());
        if was_down {
            // A registration is the node speaking, so it is up; same rule as a heartbeat.
            let marked = self.set_node_state(id, NodeState::Up, &BTreeMap::new(), touched);
            debug_assert!(marked.is_ok(), "the node was just looked up");
        }
    }

    fn set_node_state(
        &mut self,
        id: &NodeId,
        state: NodeState,
        last_vbas: &BTreeMap<UnitId, Vba>,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| Refusal::NotFound(format!("storage node {id} is not registered")))?;
        if node.state == state {
            return Ok(());
        }
        node.state = state;
        touched.nodes.insert(id.clone());
        let units: Vec<UnitId> = node.units.iter().copied().collect();
        let mut slice_changes = Vec::new();
        let mut copies_changed = 0;
        for unit in units {
            let Some(slice) = self.slice(unit) else {
                continue;
            };
            let mut slice = slice.clone();
            let is_primary = slice.primary == *id;
            if let Some(copy) = slice.copy_mut(id) {
                if let Some(vba) = last_vbas.get(&unit) {
                    copy.last_vba = *vba;
                }
                let was = copy.status;
                copy.status = match state {
                    // A primary that declared its own copy stale (and found no current copy to
                    // take over) keeps saying so: `down` would turn into `current` on return.
                    NodeState::Down if is_primary && copy.status == CopyStatus::Stale => {
                        CopyStatus::Stale
                    }
                    NodeState::Down => CopyStatus::Down,
                    NodeState::Up if copy.status != CopyStatus::Down => copy.status,
                    // Nothing can be acknowledged without the primary, so a primary that was not
                    // replaced missed nothing.
                    NodeState::Up if is_primary => CopyStatus::Current,
                    NodeState::Up => CopyStatus::Stale,
                };
                let counted = match state {
                    NodeState::Down => CopyStatus::Down,
                    NodeState::Up => CopyStatus::Stale,
                };
                if was != copy.status && copy.status == counted {
                    copies_changed += 1;
                }
            }
            if state == NodeState::Down && slice.primary == *id {
                let volume = self.volume_name(unit);
                if let Some(candidate) = self.failover_candidate(&slice) {
                    slice.primary = candidate;
                    slice.generation = Generation(slice.generation.0 + 1);
                    slice_changes.push(EventKind::Failover {
                        volume,
                        unit,
                        from: id.clone(),
                        to: slice.primary.clone(),
                        generation: slice.generation,
                    });
                } else {
                    slice_changes.push(EventKind::SliceUnavailable {
                        volume,
                        unit,
                        primary: id.clone(),
                    });
                }
            }
            if let Some(stored) = self.slice_mut(unit) {
                *stored = slice;
                touched.slices.insert(unit);
            }
        }
        touched.changes.push(match state {
            NodeState::Down => EventKind::NodeDown {
                node: id.clone(),
                copies_down: copies_changed,
            },
            NodeState::Up => EventKind::NodeUp {
                node: id.clone(),
                copies_stale: copies_changed,
            },
        });
        touched.changes.extend(slice_changes);
        Ok(())
    }

    /// The name of `unit`'s volume, for event log entries.
    fn volume_name(&self, unit: UnitId) -> String {
        self.volumes
            .get(&unit.volume)
            .map_or_else(|| unit.volume.to_string(), |v| v.name.clone())
    }

    /// Checks every update before changing anything, so a batch applies all or nothing.
    fn check_slice_update(&self, update: &SliceUpdate) -> Result<(), Refusal> {
        let unit = update.unit;
        let slice = self
            .slice(unit)
            .ok_or_else(|| Refusal::NotFound(format!("unit {unit} does not exist")))?;
        if update.expected_generation < slice.generation {
            return Err(Refusal::StaleGeneration {
                unit,
                named: update.expected_generation,
                current: slice.generation,
            });
        }
        if update.expected_generation > slice.generation {
            return Err(Refusal::Conflict(format!(
                "unit {unit}: generation {} is newer than the slice's generation {}",
                update.expected_generation, slice.generation
            )));
        }
        let mut named = update
            .copies
            .iter()
            .map(|c| &c.node)
            .chain(update.new_primary.as_ref())
            .chain(update.require.iter().map(|r| &r.node))
            .chain(&update.remove);
        if let Some(node) = named.find(|n| slice.copy(n).is_none()) {
            return Err(Refusal::Conflict(format!(
                "unit {unit} has no copy on node {node}"
            )));
        }
        // Copy-status changes do not bump the generation: what the decision saw may have
        // changed since.
        for CopyRequirement { node, status } in &update.require {
            let now = slice.copy(node).expect("checked above").status;
            if now != *status {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: the copy on node {node} is {} now, no longer {}; retry",
                    now.as_str(),
                    status.as_str()
                )));
            }
        }
        // The failover was decided on an earlier view. Copy-status changes do not bump the
        // generation, so the chosen copy may have been marked stale (by the primary, which may
        // since have acknowledged writes without it) or its node marked down in between;
        // promoting it then would lose acknowledged writes.
        if let Some(new_primary) = update.new_primary.as_ref().filter(|n| **n != slice.primary) {
            let current = slice
                .copy(new_primary)
                .is_some_and(|c| c.status == CopyStatus::Current);
            if !current || !self.node_is_up(new_primary) {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: the copy on node {new_primary} is no longer a current copy on \
                     an up node and cannot become primary; retry"
                )));
            }
        }
        self.check_copy_set_change(slice, update)
    }

    /// The copies an update adds and removes: new ones only on nodes that may take copies and
    /// hold none of this slice, never the primary's removed, and a bounded copy set.
    fn check_copy_set_change(&self, slice: &Slice, update: &SliceUpdate) -> Result<(), Refusal> {
        let unit = update.unit;
        let mut added = BTreeSet::new();
        for node in &update.add {
            if !self.nodes.contains_key(node) {
                return Err(Refusal::NotFound(format!(
                    "storage node {node} is not registered"
                )));
            }
            if slice.copy(node).is_some() || !added.insert(node) {
                return Err(Refusal::Conflict(format!(
                    "unit {unit} already has a copy on node {node}"
                )));
            }
            // Decided on an earlier view: the node may have gone down or started draining.
            if !self.node_takes_copies(node) {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: node {node} is down or draining and cannot take a new copy; \
                     retry"
                )));
            }
        }
        let primary = update.new_primary.as_ref().unwrap_or(&slice.primary);
        let mut removed = BTreeSet::new();
        for node in &update.remove {
            if node == primary {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: the primary's copy on node {node} cannot be removed; fail the \
                     slice over first"
                )));
            }
            if !removed.insert(node) {
                return Err(Refusal::BadRequest(format!(
                    "unit {unit}: the copy on node {node} is removed twice"
                )));
            }
        }
        let copies = slice.copies.len() + added.len() - removed.len();
        if copies > MAX_COPIES_PER_SLICE {
            return Err(Refusal::Conflict(format!(
                "unit {unit} would have {copies} copies, more than {MAX_COPIES_PER_SLICE}"
            )));
        }
        Ok(())
    }

    fn update_slices(
        &mut self,
        updates: &[SliceUpdate],
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        let mut seen = BTreeSet::new();
        for update in updates {
            // Each update is checked against the state before the batch: a second update of the
            // same slice would be checked against a generation the first may have changed.
            if !seen.insert(update.unit) {
                return Err(Refusal::BadRequest(format!(
                    "unit {} is updated twice in one batch",
                    update.unit
                )));
            }
            self.check_slice_update(update)?;
        }
        for update in updates {
            let unit = update.unit;
            let volume = self.volume_name(unit);
            let slice = self.slice_mut(unit).expect("checked above");
            for CopyChange {
                node,
                status,
                last_vba,
            } in &update.copies
            {
                let copy = slice.copy_mut(node).expect("checked above");
                let was = copy.status;
                copy.status = *status;
                copy.last_vba = (*last_vba).max(copy.last_vba);
                if was != copy.status {
                    touched.changes.push(EventKind::CopyStatus {
                        volume: volume.clone(),
                        unit,
                        node: node.clone(),
                        from: was,
                        to: copy.status,
                        last_vba: copy.last_vba,
                    });
                }
            }
            let mut moved = false;
            let old_primary = slice.primary.clone();
            if let Some(primary) = &update.new_primary {
                if *primary != slice.primary {
                    slice.primary = primary.clone();
                    moved = true;
                }
            }
            for node in &update.add {
                slice.copies.push(Copy {
                    node: node.clone(),
                    status: CopyStatus::Stale,
                    last_vba: Vba::ZERO,
                    accepted: None,
                });
            }
            slice.copies.retain(|c| !update.remove.contains(&c.node));
            moved |= !update.add.is_empty() || !update.remove.is_empty();
            if moved {
                slice.generation = Generation(slice.generation.0 + 1);
            }
            let generation = slice.generation;
            if old_primary != slice.primary {
                touched.changes.push(EventKind::Failover {
                    volume: volume.clone(),
                    unit,
                    from: old_primary,
                    to: slice.primary.clone(),
                    generation,
                });
            }
            let added = update.add.iter().map(|node| EventKind::CopyAdded {
                volume: volume.clone(),
                unit,
                node: node.clone(),
                generation,
            });
            let removed = update.remove.iter().map(|node| EventKind::CopyRemoved {
                volume: volume.clone(),
                unit,
                node: node.clone(),
                generation,
            });
            touched.changes.extend(added.chain(removed));
            for (node, assigned) in update
                .add
                .iter()
                .map(|n| (n, true))
                .chain(update.remove.iter().map(|n| (n, false)))
            {
                let units = &mut self.nodes.get_mut(node).expect("checked above").units;
                if assigned {
                    units.insert(unit);
                } else {
                    units.remove(&unit);
                }
                touched.nodes.insert(node.clone());
            }
            touched.slices.insert(unit);
        }
        Ok(())
    }

    fn accept_loss(
        &mut self,
        unit: UnitId,
        expected_generation: Generation,
        node: &NodeId,
        last_vba: Vba,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        let node_up = self.node_is_up(node);
        let volume = self.volume_name(unit);
        let slice = self
            .slice_mut(unit)
            .ok_or_else(|| Refusal::NotFound(format!("unit {unit} does not exist")))?;
        if slice.generation != expected_generation {
            return Err(Refusal::StaleGeneration {
                unit,
                named: expected_generation,
                current: slice.generation,
            });
        }
        slice.check_no_current_copy(unit, &volume)?;
        if !node_up {
            return Err(Refusal::Conflict(format!(
                "node {node} is not up: a copy serves again only on a node that is"
            )));
        }
        let generation = Generation(slice.generation.0 + 1);
        let copy = slice.copy_mut(node).ok_or_else(|| {
            Refusal::NotFound(format!("node {node} holds no copy of slice {unit}"))
        })?;
        let recorded_vba = copy.last_vba;
        copy.status = CopyStatus::Current;
        copy.last_vba = last_vba;
        copy.accepted = Some((generation, last_vba));
        for other in slice.copies.iter_mut().filter(|c| c.node != *node) {
            if other.status == CopyStatus::Syncing {
                other.status = CopyStatus::Stale;
            }
        }
        slice.primary = node.clone();
        slice.generation = generation;
        touched.changes.push(EventKind::LossAccepted {
            volume,
            unit,
            node: node.clone(),
            last_vba,
            recorded_vba,
            generation: slice.generation,
        });
        touched.slices.insert(unit);
        Ok(())
    }

    fn set_draining(
        &mut self,
        id: &NodeId,
        draining: bool,
        touched: &mut Touched,
    ) -> Result<(), Refusal> {
        let node = self
            .nodes
            .get_mut(id)
            .ok_or_else(|| Refusal::NotFound(format!("storage node {id} is not registered")))?;
        if node.draining != draining {
            node.draining = draining;
            touched.nodes.insert(id.clone());
            touched.changes.push(if draining {
                EventKind::DrainStarted { node: id.clone() }
            } else {
                EventKind::DrainStopped { node: id.clone() }
            });
        }
        Ok(())
    }

    fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        slice_bytes: u64,
        replicas: u32,
        placement: &[Vec<NodeId>],
        touched: &mut Touched,
    ) -> Result<VolumeId, Refusal> {
        if self.volume_by_name(name).is_some() {
            return Err(Refusal::AlreadyExists(format!(
                "volume {name:?} already exists"
            )));
        }
        if size_bytes == 0
            || slice_bytes == 0
            || placement.len() as u64 != slice_count(size_bytes, slice_bytes)
        {
            return Err(Refusal::BadRequest(format!(
                "placement has {} slices for a volume of {size_bytes} bytes in slices of \
                 {slice_bytes} bytes",
                placement.len()
            )));
        }
        self.check_placement(placement, replicas)?;
        let id = VolumeId(self.next_volume_id);
        self.next_volume_id += 1;
        touched.next_volume_id = true;
        let slices = self.new_slices(id, 0, placement, touched);
        let volume = Volume {
            id,
            name: name.to_string(),
            size_bytes,
            slice_bytes,
            replicas,
            slices,
        };
        touched.changes.push(EventKind::VolumeCreated {
            volume: name.to_string(),
            size_bytes,
            replicas,
            slices: volume.slices.len() as u32,
        });
        self.volumes.insert(id, volume);
        touched.volumes.insert(id);
        Ok(id)
    }

    /// Checks that every slice's nodes are `replicas` distinct registered nodes that take
    /// copies now.
    fn check_placement(&self, placement: &[Vec<NodeId>], replicas: u32) -> Result<(), Refusal> {
        for nodes in placement {
            let distinct: BTreeSet<&NodeId> = nodes.iter().collect();
            if nodes.is_empty() || distinct.len() != nodes.len() || nodes.len() != replicas as usize
            {
                return Err(Refusal::BadRequest(format!(
                    "placement {nodes:?} is not {replicas} distinct nodes"
                )));
            }
            if let Some(unknown) = nodes.iter().find(|n| !self.nodes.contains_key(*n)) {
                return Err(Refusal::NotFound(format!(
                    "storage node {unknown} is not registered"
                )));
            }
            // Placement was decided on an earlier view: a node judged down since then would get
            // `current` copies (and perhaps a primary) it never received.
            if let Some(down) = nodes.iter().find(|n| !self.node_takes_copies(n)) {
                return Err(Refusal::InsufficientNodes(format!(
                    "storage node {down} went down or started draining while the volume was \
                     being placed; retry"
                )));
            }
        }
        Ok(())
    }

    /// New slices of volume `id` from index `first` on, one per entry of `placement` (checked),
    /// every copy `current` at VBA 0 (nothing was written to them), assigned to their nodes.
    fn new_slices(
        &mut self,
        id: VolumeId,
        first: usize,
        placement: &[Vec<NodeId>],
        touched: &mut Touched,
    ) -> Vec<Slice> {
        let mut slices = Vec::with_capacity(placement.len());
        for (offset, nodes) in placement.iter().enumerate() {
            let unit = UnitId {
                volume: id,
                slice: SliceIndex((first + offset) as u32),
            };
            let copies = nodes
                .iter()
                .map(|n| Copy {
                    node: n.clone(),
                    status: CopyStatus::Current,
                    last_vba: Vba::ZERO,
                    accepted: None,
                })
                .collect();
            slices.push(Slice {
                generation: Generation(1),
                primary: nodes[0].clone(),
                copies,
            });
            for node in nodes {
                self.nodes
                    .get_mut(node)
                    .expect("placement was checked")
                    .units
                    .insert(unit);
                touched.nodes.insert(node.clone());
            }
        }
        slices
    }

    fn resize_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        placement: &[Vec<NodeId>],
        touched: &mut Touched,
    ) -> Result<VolumeId, Refusal> {
        let volume = self
            .volume_by_name(name)
            .ok_or_else(|| Refusal::NotFound(format!("volume {name:?} does not exist")))?;
        let (id, old_count) = (volume.id, volume.slices.len());
        let new_count = slice_count(size_bytes, volume.slice_bytes);
        if size_bytes < volume.size_bytes
            || size_bytes % vbs_wire::types::BLOCK_BYTES != 0
            || new_count - old_count as u64 != placement.len() as u64
        {
            return Err(Refusal::BadRequest(format!(
                "{} new slices placed for volume {name:?} to grow from {} to {size_bytes} bytes",
                placement.len(),
                volume.size_bytes
            )));
        }
        let replicas = volume.replicas;
        self.check_placement(placement, replicas)?;
        let slices = self.new_slices(id, old_count, placement, touched);
        let volume = self.volumes.get_mut(&id).expect("looked up above");
        touched.changes.push(EventKind::VolumeResized {
            volume: name.to_string(),
            from_bytes: volume.size_bytes,
            size_bytes,
        });
        volume.size_bytes = size_bytes;
        volume.slices.extend(slices);
        touched.volumes.insert(id);
        Ok(id)
    }

    fn delete_volume(&mut self, name: &str, touched: &mut Touched) -> Result<VolumeId, Refusal> {
        let id = self
            .volume_by_name(name)
            .map(|v| v.id)
            .ok_or_else(|| Refusal::NotFound(format!("volume {name:?} does not exist")))?;
        let volume = self.volumes.remove(&id).expect("found above");
        for (index, slice) in volume.slices.iter().enumerate() {
            let unit = UnitId {
                volume: id,
                slice: SliceIndex(index as u32),
            };
            for copy in &slice.copies {
                if let Some(node) = self.nodes.get_mut(&copy.node) {
                    node.units.remove(&unit);
                    touched.nodes.insert(copy.node.clone());
                }
            }
        }
        touched.changes.push(EventKind::VolumeDeleted {
            volume: volume.name.clone(),
        });
        touched.volumes.insert(id);
        touched
            .removed_slices
            .insert(id, volume.slices.len() as u32);
        Ok(id)
    }
}

#[cfg(test)]
mod copy_set_tests;
#[cfg(test)]
mod tests;
