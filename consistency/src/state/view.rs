//! The state as the API shows it: volume maps, node status and what a heartbeat reply tells a
//! storage node.

use vbs_wire::api::{
    AssignedUnit, CopyInfo, NodeStatus, ResyncStatus, Role, ScrubStatus, SliceMap, VolumeMap,
};
use vbs_wire::types::{Generation, NodeId, SliceIndex, UnitId, Vba, BLOCK_BYTES};

use super::{Copy, Node, Slice, State, Volume};

/// What the leader heard of a copy of a unit and keeps in memory only
/// ([`crate::decide::liveness::Liveness`]): not replicated state, so views take it from the
/// caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CopyMemory {
    /// The copy's resync, if the leader heard of one.
    pub resync: Option<ResyncStatus>,
    /// The last VBA the copy's node reported in a heartbeat.
    pub reported_vba: Option<Vba>,
    /// The last scrub of the slice the copy's node ran as its primary.
    pub scrub: Option<ScrubStatus>,
}

/// The leader's memory of each copy, for views.
pub type Remembered<'a> = &'a dyn Fn(UnitId, &Copy) -> CopyMemory;

/// For views made where nothing is remembered (a follower's local read).
pub fn nothing_remembered(_: UnitId, _: &Copy) -> CopyMemory {
    CopyMemory::default()
}

impl State {
    fn copy_infos(&self, unit: UnitId, slice: &Slice, remembered: Remembered) -> Vec<CopyInfo> {
        // Primary first: clients and secondaries look for it there.
        let mut copies: Vec<&super::Copy> = slice.copies.iter().collect();
        copies.sort_by_key(|c| c.node != slice.primary);
        copies
            .into_iter()
            .map(|c| {
                let memory = remembered(unit, c);
                CopyInfo {
                    node: c.node.clone(),
                    addr: self
                        .nodes
                        .get(&c.node)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                    role: slice.role_of(&c.node),
                    status: c.status,
                    last_vba: c.last_vba,
                    // A volume written but never failed over has nothing committed past VBA 0:
                    // a node back with its unit lost learns from this that it was written.
                    reported_vba: memory.reported_vba,
                    resync: memory.resync,
                    scrub: memory.scrub,
                }
            })
            .collect()
    }

    pub fn slice_map(&self, unit: UnitId, remembered: Remembered) -> Option<SliceMap> {
        let slice = self.slice(unit)?;
        Some(SliceMap {
            unit,
            index: unit.slice,
            generation: slice.generation,
            primary: slice.primary.clone(),
            copies: self.copy_infos(unit, slice, remembered),
        })
    }

    pub fn volume_map(&self, volume: &Volume, remembered: Remembered) -> VolumeMap {
        let slices = (0..volume.slices.len())
            .filter_map(|i| {
                let unit = UnitId {
                    volume: volume.id,
                    slice: SliceIndex(i as u32),
                };
                self.slice_map(unit, remembered)
            })
            .collect();
        VolumeMap {
            id: volume.id,
            name: volume.name.clone(),
            size_bytes: volume.size_bytes,
            block_bytes: BLOCK_BYTES,
            slice_bytes: volume.slice_bytes,
            replicas: volume.replicas,
            slices,
        }
    }

    pub fn node_status(&self, node: &Node) -> NodeStatus {
        NodeStatus {
            id: node.id.clone(),
            addr: node.addr.clone(),
            state: node.state,
            capacity_bytes: node.capacity_bytes,
            free_bytes: node.free_bytes,
            last_heartbeat_ms_ago: None,
            units: node.units.iter().copied().collect(),
            draining: node.draining,
            devices: Vec::new(),
            device_ids: node.devices.iter().cloned().collect(),
            unknown_devices: Vec::new(),
        }
    }

    /// The units `node` must serve, as its heartbeat reply lists them. `lease_renewed(unit,
    /// generation)` says whether this reply renews its lease as that unit's primary.
    pub fn assigned_units(
        &self,
        node: &NodeId,
        lease_renewed: impl Fn(UnitId, Generation) -> bool,
        remembered: Remembered,
    ) -> Vec<AssignedUnit> {
        let Some(n) = self.nodes.get(node) else {
            return Vec::new();
        };
        n.units
            .iter()
            .filter_map(|unit| {
                let volume = self.volumes.get(&unit.volume)?;
                let slice = volume.slice(unit.slice)?;
                let copy = slice.copy(node)?;
                let role = slice.role_of(node);
                Some(AssignedUnit {
                    unit: *unit,
                    volume_size_bytes: volume.size_bytes,
                    slice_bytes: volume.slice_bytes,
                    unit_bytes: volume.unit_bytes(unit.slice),
                    generation: slice.generation,
                    role,
                    status: copy.status,
                    lease_renewed: role == Role::Primary && lease_renewed(*unit, slice.generation),
                    copies: self.copy_infos(*unit, slice, remembered),
                    loss_accepted_vba: copy
                        .accepted
                        .filter(|(generation, _)| *generation == slice.generation)
                        .map(|(_, vba)| vba),
                })
            })
            .collect()
    }
}
