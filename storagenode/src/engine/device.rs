//! A device: one data directory (or other backend) holding many units and a pool of spare
//! segments.
//!
//! ```text
//! DATA_DIR/device.json        format and segment size
//! DATA_DIR/spare/N.seg        zero-filled segments ready for use
//! DATA_DIR/units/V.S/unit.json   the unit's size and generation history
//! DATA_DIR/units/V.S/VSID.seg    its segments
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use client::types::{UnitId, BLOCK_BYTES};
use parking_lot::Mutex;
use tracing::info;

use super::backend::file::FileBackend;
use super::backend::{Backend, Space};
use super::compaction::CompactionReport;
use super::error::{EngineError, Result};
use super::meta::{self, DeviceMeta};
use super::pool::SegmentPool;
use super::recovery::RecoveryReport;
use super::unit::Unit;

pub const UNITS_DIR: &str = "units";
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Record offsets are 32-bit.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Segment size for a device used for the first time; an existing device keeps its own.
    pub segment_bytes: u64,
    /// Spare segments to keep written ahead.
    pub spare_segments: usize,
    /// Sync every batch (fdatasync). Off only in tests that do not care about power loss.
    pub sync: bool,
}

impl Default for DeviceOptions {
    fn default() -> DeviceOptions {
        DeviceOptions {
            segment_bytes: 64 << 20,
            spare_segments: 2,
            sync: true,
        }
    }
}

pub struct Device {
    backend: Arc<dyn Backend>,
    pool: Arc<SegmentPool>,
    sync: bool,
    units: Mutex<BTreeMap<UnitId, Arc<Unit>>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.backend.describe())
    }
}

fn device_err(backend: &dyn Backend, context: &str) -> impl FnOnce(std::io::Error) -> EngineError {
    let device = backend.describe();
    let context = context.to_string();
    move |source| EngineError::Device {
        device,
        context,
        source,
    }
}

/// Reads `device.json`, or writes it for a device used for the first time.
pub(super) fn device_meta(
    backend: &dyn Backend,
    segment_bytes: u64,
    create: bool,
) -> Result<DeviceMeta> {
    if backend
        .exists(meta::DEVICE_META)
        .map_err(device_err(backend, "reading device.json"))?
    {
        let bytes = backend
            .read_all(meta::DEVICE_META)
            .map_err(device_err(backend, "reading device.json"))?;
        let meta: DeviceMeta = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Invalid(format!("{}/device.json: {e}", backend.describe()))
        })?;
        if meta.format != meta::DEVICE_FORMAT {
            return Err(EngineError::Invalid(format!(
                "{} has device format {}, this vbs reads format {}",
                backend.describe(),
                meta.format,
                meta::DEVICE_FORMAT
            )));
        }
        check_segment_bytes(meta.segment_bytes)?;
        return Ok(meta);
    }
    if !create {
        return Err(EngineError::Invalid(format!(
            "{} is not a vbs data directory (no device.json)",
            backend.describe()
        )));
    }
    check_segment_bytes(segment_bytes)?;
    let meta = DeviceMeta {
        format: meta::DEVICE_FORMAT,
        segment_bytes,
    };
    let json = serde_json::to_vec_pretty(&meta).expect("device metadata serializes");
    backend
        .write_atomic(meta::DEVICE_META, &json)
        .map_err(device_err(backend, "writing device.json"))?;
    Ok(meta)
}

fn check_segment_bytes(bytes: u64) -> Result<()> {
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&bytes) || bytes % BLOCK_BYTES != 0 {
        return Err(EngineError::Invalid(format!(
            "segment size {bytes} must be a multiple of {BLOCK_BYTES} between {MIN_SEGMENT_BYTES} \
             and {MAX_SEGMENT_BYTES}"
        )));
    }
    Ok(())
}

pub(super) fn unit_dir(unit: UnitId) -> String {
    format!("{UNITS_DIR}/{unit}")
}

/// The units a device holds, by their directories.
pub(super) fn list_units(backend: &dyn Backend) -> Result<Vec<UnitId>> {
    if !backend
        .exists(UNITS_DIR)
        .map_err(device_err(backend, "listing units"))?
    {
        return Ok(Vec::new());
    }
    let names = backend
        .list(UNITS_DIR)
        .map_err(device_err(backend, "listing units"))?;
    names
        .iter()
        .filter(|name| !name.ends_with(".deleting"))
        .map(|name| {
            name.parse().map_err(|e| {
                EngineError::Invalid(format!("{}/{UNITS_DIR}/{name}: {e}", backend.describe()))
            })
        })
        .collect()
}

impl Device {
    /// Opens the directory `path` as a device with the file backend.
    pub fn open_dir(path: &Path, options: &DeviceOptions) -> Result<(Device, Vec<RecoveryReport>)> {
        let backend = FileBackend::open(path).map_err(|source| EngineError::Device {
            device: path.display().to_string(),
            context: "opening the data directory".into(),
            source,
        })?;
        Device::open(Arc::new(backend), options)
    }

    /// Opens a device, recovering every unit on it.
    pub fn open(
        backend: Arc<dyn Backend>,
        options: &DeviceOptions,
    ) -> Result<(Device, Vec<RecoveryReport>)> {
        let meta = device_meta(backend.as_ref(), options.segment_bytes, true)?;
        backend
            .create_dir(UNITS_DIR)
            .map_err(device_err(backend.as_ref(), "creating units/"))?;
        // A unit whose removal was interrupted is finished off.
        for name in backend
            .list(UNITS_DIR)
            .map_err(device_err(backend.as_ref(), "listing units"))?
        {
            if name.ends_with(".deleting") {
                let path = format!("{UNITS_DIR}/{name}");
                backend
                    .remove_dir_all(&path)
                    .map_err(device_err(backend.as_ref(), "removing a unit"))?;
            }
        }
        let pool = SegmentPool::open(backend.clone(), meta.segment_bytes, options.spare_segments)
            .map_err(device_err(
            backend.as_ref(),
            "opening the spare segment pool",
        ))?;
        let device = Device {
            backend,
            pool: Arc::new(pool),
            sync: options.sync,
            units: Mutex::new(BTreeMap::new()),
        };
        let mut reports = Vec::new();
        for id in list_units(device.backend.as_ref())? {
            let (unit, report) = Unit::open(
                device.backend.clone(),
                device.pool.clone(),
                unit_dir(id),
                device.sync,
                true,
            )?;
            if report.torn_tail.is_some() || !report.dropped_segments.is_empty() {
                info!(unit = %id, ?report, "recovered");
            }
            let unit = device.start(unit)?;
            device.units.lock().insert(id, unit);
            reports.push(report);
        }
        Ok((device, reports))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn segment_bytes(&self) -> u64 {
        self.pool.segment_bytes()
    }

    /// Creates an empty unit of `size_bytes`.
    pub fn create_unit(&self, id: UnitId, size_bytes: u64) -> Result<Arc<Unit>> {
        let mut units = self.units.lock();
        if units.contains_key(&id) {
            return Err(EngineError::UnitExists(id));
        }
        let unit = self.start(Unit::create(
            self.backend.clone(),
            self.pool.clone(),
            unit_dir(id),
            id,
            size_bytes,
            self.sync,
        )?)?;
        units.insert(id, unit.clone());
        Ok(unit)
    }

    /// A unit opened or created to be written, with its commit thread started.
    fn start(&self, unit: Unit) -> Result<Arc<Unit>> {
        let unit = Arc::new(unit);
        unit.start_committer().map_err(device_err(
            self.backend.as_ref(),
            "starting a commit thread",
        ))?;
        Ok(unit)
    }

    pub fn unit(&self, id: UnitId) -> Option<Arc<Unit>> {
        self.units.lock().get(&id).cloned()
    }

    pub fn units(&self) -> Vec<Arc<Unit>> {
        self.units.lock().values().cloned().collect()
    }

    /// Removes a unit and all its data. Its log segments go back to the spare pool.
    pub fn remove_unit(&self, id: UnitId) -> Result<()> {
        let unit = self
            .units
            .lock()
            .remove(&id)
            .ok_or(EngineError::NoSuchUnit(id))?;
        let dir = unit_dir(id);
        // Renamed first, so a crash part-way through never leaves a half-removed unit that would
        // be opened again.
        let doomed = format!("{dir}.deleting");
        let backend = self.backend.as_ref();
        backend
            .rename(&dir, &doomed)
            .map_err(device_err(backend, "removing a unit"))?;
        for name in backend
            .list(&doomed)
            .map_err(device_err(backend, "removing a unit"))?
        {
            if name.ends_with(".seg") {
                let path = format!("{doomed}/{name}");
                self.pool
                    .give_back(&path)
                    .map_err(device_err(backend, "freeing a segment"))?;
            }
        }
        backend
            .remove_dir_all(&doomed)
            .map_err(device_err(backend, "removing a unit"))?;
        drop(unit);
        Ok(())
    }

    pub fn space(&self) -> Result<Space> {
        self.backend
            .space()
            .map_err(device_err(self.backend.as_ref(), "reading free space"))
    }

    /// Compacts every unit's segments whose live share is at most `max_live_ratio`.
    pub fn compact(&self, max_live_ratio: f64) -> Result<CompactionReport> {
        let mut total = CompactionReport::default();
        for unit in self.units() {
            let report = unit.compact(max_live_ratio)?;
            total.segments_freed += report.segments_freed;
            total.records_copied += report.records_copied;
            total.bytes_copied += report.bytes_copied;
            total.bytes_freed += report.bytes_freed;
        }
        Ok(total)
    }

    /// Spare segments ready now.
    pub fn spare_segments(&self) -> usize {
        self.pool.ready()
    }
}
