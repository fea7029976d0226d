//! The storage devices of a node (`--data-dir`, once per device): where units live, and the
//! capacity the node reports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use vbs_wire::api::{DeviceIdentity, DeviceSpace};
use vbs_wire::types::UnitId;

use crate::engine::{Device, DeviceOptions, EngineError, Marks, RecoveryReport, Unit};

pub struct Devices {
    devices: Vec<Device>,
}

impl Devices {
    /// Opens every data directory, recovering the units on each. A unit found on two devices is an
    /// error: the node would not know which copy to serve.
    pub fn open(
        dirs: &[PathBuf],
        options: &DeviceOptions,
    ) -> anyhow::Result<(Devices, Vec<RecoveryReport>)> {
        if dirs.is_empty() {
            bail!("at least one --data-dir is needed");
        }
        let mut devices = Vec::new();
        let mut reports = Vec::new();
        for dir in dirs {
            let (device, found) = Device::open_dir(dir, options)
                .with_context(|| format!("opening data directory {}", dir.display()))?;
            devices.push(device);
            reports.extend(found);
        }
        let mut seen = std::collections::BTreeMap::new();
        for (i, device) in devices.iter().enumerate() {
            for unit in device.units() {
                if let Some(other) = seen.insert(unit.id(), i) {
                    bail!(
                        "unit {} is on both {} and {}",
                        unit.id(),
                        dirs[other].display(),
                        dirs[i].display()
                    );
                }
            }
        }
        Ok((Devices { devices }, reports))
    }

    pub fn count(&self) -> usize {
        self.devices.len()
    }

    pub fn device(&self, i: usize) -> &Device {
        &self.devices[i]
    }

    pub fn units(&self) -> Vec<Arc<Unit>> {
        self.devices.iter().flat_map(Device::units).collect()
    }

    /// Creates a unit, with `marks`, on the device with the most free space.
    pub fn create_unit(
        &self,
        id: UnitId,
        size_bytes: u64,
        marks: Marks,
    ) -> Result<Arc<Unit>, EngineError> {
        let mut best: Option<(u64, &Device)> = None;
        for device in &self.devices {
            let free = device.space()?.free_bytes;
            if best.is_none_or(|(most, _)| free > most) {
                best = Some((free, device));
            }
        }
        let (_, device) = best.expect("a node has at least one device");
        device.create_unit_marked(id, size_bytes, marks)
    }

    pub fn remove_unit(&self, id: UnitId) -> Result<(), EngineError> {
        for device in &self.devices {
            if device.unit(id).is_some() {
                return device.remove_unit(id);
            }
        }
        Err(EngineError::NoSuchUnit(id))
    }

    /// Each device's directory and identity, for registering: `marked_lost` names the devices
    /// whose copies this node has marked lost.
    pub fn identities(&self, marked_lost: &BTreeSet<String>) -> Vec<DeviceIdentity> {
        self.devices
            .iter()
            .map(|device| DeviceIdentity {
                dir: device.describe(),
                id: device.id().to_string(),
                copies_marked_lost: marked_lost.contains(device.id()),
            })
            .collect()
    }

    /// The units on the device with identity `id`.
    pub fn units_on(&self, id: &str) -> Vec<UnitId> {
        self.devices
            .iter()
            .filter(|device| device.id() == id)
            .flat_map(|device| device.units().into_iter().map(|u| u.id()))
            .collect()
    }

    /// Each device's directory and space.
    pub fn each_space(&self) -> Result<Vec<DeviceSpace>, EngineError> {
        self.devices
            .iter()
            .map(|device| {
                let space = device.space()?;
                Ok(DeviceSpace {
                    dir: device.describe(),
                    total_bytes: space.total_bytes,
                    free_bytes: space.free_bytes,
                })
            })
            .collect()
    }

    /// Total and free bytes over all devices.
    pub fn space(&self) -> Result<(u64, u64), EngineError> {
        let mut total = 0;
        let mut free = 0;
        for device in &self.devices {
            let space = device.space()?;
            total += space.total_bytes;
            free += space.free_bytes;
        }
        Ok((total, free))
    }
}
