//! A device: one data directory (or other backend) holding many units, their shared log and a
//! pool of spare segments.
//!
//! ```text
//! DATA_DIR/device.json          format and segment size
//! DATA_DIR/spare/N.seg          zero-filled segments ready for use
//! DATA_DIR/log/VSID.seg         the device log, shared by every unit of the device
//! DATA_DIR/units/V.S/unit.json  a unit's number, size and generation history
//! DATA_DIR/checkpoint           every unit's index as of a place in the log
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::{info, warn};
use vbs_wire::types::{UnitId, BLOCK_BYTES};

use super::backend::file::FileBackend;
use super::backend::{Backend, Space};
use super::checkpoint::{self, Checkpoint};
use super::compaction::{self, CompactionReport};
use super::error::{EngineError, Result};
use super::log::{Log, LogStats, LOG_DIR};
use super::meta::{self, DeviceMeta, Marks};
use super::pool::SegmentPool;
use super::recovery::{self, RecoveryReport};
use super::segment::Vsid;
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
    /// The identity in `device.json` (empty for a device opened read-only that has none).
    id: String,
    log: Arc<Log>,
    units: Mutex<BTreeMap<UnitId, Arc<Unit>>>,
    /// The number the next unit created gets; numbers are never reused on a device while records
    /// carrying them may remain in its log.
    next_number: AtomicU32,
    /// `log.appended()` when the last checkpoint was taken.
    checkpointed: AtomicU64,
}

/// What [`Device::checkpoint`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointReport {
    pub units: usize,
    pub bytes: u64,
    pub millis: u64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.backend.describe())
    }
}

fn device_err(
    backend: &dyn Backend,
    context: &str,
) -> impl FnOnce(std::io::Error) -> EngineError + use<> {
    super::error::device_err(backend.describe(), context.to_string())
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
        if meta.format == 1 {
            return Err(EngineError::Invalid(format!(
                "{} holds vbs data of format 1 (one log per storage unit); this vbs reads only \
                 format {} (one log per device). Nothing was changed. Move the node's copies \
                 elsewhere first (`vbs node drain`, with the previous vbs), then start this vbs on \
                 an empty data directory",
                backend.describe(),
                meta::DEVICE_FORMAT
            )));
        }
        if meta.format != meta::DEVICE_FORMAT {
            return Err(EngineError::Invalid(format!(
                "{} has device format {}, this vbs reads format {}",
                backend.describe(),
                meta.format,
                meta::DEVICE_FORMAT
            )));
        }
        check_segment_bytes(meta.segment_bytes)?;
        if meta.id.is_some() || !create {
            return Ok(meta);
        }
        // A device first used by a vbs that gave no identities gets one now.
        let meta = DeviceMeta {
            id: Some(meta::new_device_id()),
            ..meta
        };
        write_device_meta(backend, &meta)?;
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
        id: Some(meta::new_device_id()),
    };
    write_device_meta(backend, &meta)?;
    Ok(meta)
}

fn write_device_meta(backend: &dyn Backend, meta: &DeviceMeta) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta).expect("device metadata serializes");
    backend
        .write_atomic(meta::DEVICE_META, &json)
        .map_err(device_err(backend, "writing device.json"))
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

/// Reads the `unit.json` of every unit of the device, by unit number.
fn read_metas(backend: &dyn Backend) -> Result<BTreeMap<u32, meta::UnitMeta>> {
    let mut metas = BTreeMap::new();
    for id in list_units(backend)? {
        let meta = recovery::read_meta(backend, &unit_dir(id))?;
        if meta.unit != id {
            return Err(EngineError::Invalid(format!(
                "{}/{}/unit.json names unit {}",
                backend.describe(),
                unit_dir(id),
                meta.unit
            )));
        }
        if let Some(other) = metas.insert(meta.number, meta) {
            return Err(EngineError::Invalid(format!(
                "{}: units {} and {id} have the same number {}",
                backend.describe(),
                other.unit,
                other.number
            )));
        }
    }
    Ok(metas)
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
        for dir in [UNITS_DIR, LOG_DIR] {
            backend
                .create_dir(dir)
                .map_err(device_err(backend.as_ref(), &format!("creating {dir}/")))?;
        }
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
        let (mut device, reports) = Device::load(backend, Arc::new(pool), options.sync, true)?;
        device.id = meta.id.unwrap_or_default();
        device.log.start_committer().map_err(device_err(
            device.backend.as_ref(),
            "starting the commit thread",
        ))?;
        Ok((device, reports))
    }

    /// Opens a device without changing anything on it (a torn tail is reported, not cut), for
    /// checks: its units must not be written to.
    pub fn open_read_only(backend: Arc<dyn Backend>) -> Result<(Device, Vec<RecoveryReport>)> {
        let meta = device_meta(backend.as_ref(), 0, false)?;
        let pool = SegmentPool::inert(backend.clone(), meta.segment_bytes);
        if !backend
            .exists(LOG_DIR)
            .map_err(device_err(backend.as_ref(), "reading the log"))?
        {
            return Err(EngineError::Invalid(format!(
                "{} has no log directory",
                backend.describe()
            )));
        }
        let (mut device, reports) = Device::load(backend, Arc::new(pool), false, false)?;
        device.id = meta.id.unwrap_or_default();
        Ok((device, reports))
    }

    /// Reads the log and the units' metadata and builds every unit.
    /// Reads the units' metadata, the checkpoint if there is one that fits them, and the log (all
    /// of it, or what was written after the checkpoint), and builds every unit. A checkpoint that
    /// does not read back or does not fit is passed over for a full read of the log.
    fn load(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        sync: bool,
        repair: bool,
    ) -> Result<(Device, Vec<RecoveryReport>)> {
        let device = backend.describe();
        let metas = read_metas(backend.as_ref())?;
        let found = match checkpoint::read(backend.as_ref())? {
            Ok(found) => found,
            Err(reason) => {
                warn!(%device, %reason, "not using the checkpoint: reading the whole log");
                None
            }
        };
        // A truncation since the checkpoint rewrote a unit's history after what it holds.
        let usable = found.filter(|checkpoint| {
            let fits = metas.values().all(|meta| {
                checkpoint
                    .units
                    .get(&meta.number)
                    .is_none_or(|unit| Checkpoint::continues(unit, &meta.generations))
            });
            if !fits {
                info!(%device, "a unit's history changed since the checkpoint: reading the whole log");
            }
            fits
        });
        if let Some(checkpoint) = usable {
            let loaded = Device::load_with(
                backend.clone(),
                pool.clone(),
                sync,
                repair,
                metas.clone(),
                Some(checkpoint),
            );
            match loaded {
                Ok(loaded) => return Ok(loaded),
                Err(e) => {
                    warn!(%device, error = %e, "the checkpoint does not fit the log: reading the whole log")
                }
            }
        }
        Device::load_with(backend, pool, sync, repair, metas, None)
    }

    fn load_with(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        sync: bool,
        repair: bool,
        metas: BTreeMap<u32, meta::UnitMeta>,
        mut checkpoint: Option<Checkpoint>,
    ) -> Result<(Device, Vec<RecoveryReport>)> {
        let names = metas.iter().map(|(n, m)| (*n, m.unit)).collect();
        let from = checkpoint.as_ref().map(|c| recovery::ScanFrom {
            segments: &c.segments,
            position: c.position,
        });
        let recovery::ScannedLog {
            segments,
            cursor,
            next_compacted_vsid,
            mut records,
            torn,
            dropped_segments,
            max_number,
            scanned_bytes,
        } = recovery::scan_log(backend.as_ref(), Some(&pool), &names, from, repair)?;
        if !dropped_segments.is_empty() {
            info!(device = %backend.describe(), dropped = ?dropped_segments, "dropped log segments whose header was never written");
        }
        let present: BTreeSet<Vsid> = segments.keys().copied().collect();
        let next_number = metas
            .keys()
            .copied()
            .chain([max_number])
            .chain(checkpoint.as_ref().map(|c| c.next_number.saturating_sub(1)))
            .max()
            .unwrap_or(0)
            + 1;
        let log = Arc::new(Log::new(
            backend.clone(),
            pool,
            sync,
            segments,
            cursor,
            next_compacted_vsid,
            scanned_bytes,
        ));
        let mut units = BTreeMap::new();
        let mut reports = Vec::new();
        for (number, meta) in metas {
            let id = meta.unit;
            let found = records.remove(&number).unwrap_or_default();
            let part = checkpoint.as_mut().and_then(|c| c.units.remove(&number));
            let (unit, mut report) =
                Unit::open(log.clone(), unit_dir(id), meta, part, found, &present)?;
            if let Some((tail, named)) = &torn {
                if named.contains(&number) {
                    report.torn_tail = Some(tail.clone());
                    info!(unit = %id, ?report, "recovered a unit named in a torn log tail");
                }
            }
            units.insert(id, Arc::new(unit));
            reports.push(report);
        }
        let orphans: usize = records.values().map(Vec::len).sum();
        if orphans > 0 {
            info!(device = %backend.describe(), records = orphans, "log records of removed units, left for compaction");
        }
        if let Some((tail, named)) = &torn {
            if named.is_empty() {
                warn!(device = %backend.describe(), ?tail, "a torn log tail named no unit");
            }
        }
        let device = Device {
            backend,
            id: String::new(),
            log,
            units: Mutex::new(units),
            next_number: AtomicU32::new(next_number),
            checkpointed: AtomicU64::new(0),
        };
        Ok((device, reports))
    }

    /// Writes a checkpoint of every unit's index, so that the next open reads only the log
    /// written after it (see `checkpoint.rs`).
    pub fn checkpoint(&self) -> Result<CheckpointReport> {
        let started = std::time::Instant::now();
        let _maintenance = self.log.maintenance.lock();
        let appended = self.log.appended();
        let position = self.log.published_end();
        let segments: BTreeMap<Vsid, u64> = self.log.segment_ends().into_iter().collect();
        let mut bytes =
            checkpoint::encode_head(position, &segments, self.next_number.load(Ordering::SeqCst));
        let units = self.units();
        for unit in &units {
            let state = unit.state.lock();
            checkpoint::encode_unit(
                &mut bytes,
                unit.number(),
                &state.generations,
                state.durable_vba,
                &state.segments,
                &state.index,
            );
        }
        let written = checkpoint::write(self.backend.as_ref(), bytes, units.len() as u64)?;
        self.checkpointed.store(appended, Ordering::Relaxed);
        Ok(CheckpointReport {
            units: units.len(),
            bytes: written,
            millis: started.elapsed().as_millis() as u64,
        })
    }

    /// Whether the log written since the last checkpoint (or replayed when the device was opened)
    /// is at least `bytes`.
    pub fn wants_checkpoint(&self, bytes: u64) -> bool {
        self.log.appended() - self.checkpointed.load(Ordering::Relaxed) >= bytes
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn segment_bytes(&self) -> u64 {
        self.log.pool.segment_bytes()
    }

    /// Creates an empty unit of `size_bytes`.
    pub fn create_unit(&self, id: UnitId, size_bytes: u64) -> Result<Arc<Unit>> {
        self.create_unit_marked(id, size_bytes, Marks::default())
    }

    /// Creates a unit whose first `unit.json` holds `marks`, so no crash can leave it without
    /// them.
    pub fn create_unit_marked(
        &self,
        id: UnitId,
        size_bytes: u64,
        marks: Marks,
    ) -> Result<Arc<Unit>> {
        let mut units = self.units.lock();
        if units.contains_key(&id) {
            return Err(EngineError::UnitExists(id));
        }
        let number = self.next_number.fetch_add(1, Ordering::SeqCst);
        let unit = Arc::new(Unit::create(
            self.log.clone(),
            unit_dir(id),
            id,
            number,
            size_bytes,
            marks,
        )?);
        units.insert(id, unit.clone());
        Ok(unit)
    }

    pub fn unit(&self, id: UnitId) -> Option<Arc<Unit>> {
        self.units.lock().get(&id).cloned()
    }

    pub fn units(&self) -> Vec<Arc<Unit>> {
        self.units.lock().values().cloned().collect()
    }

    /// Removes a unit. Its records stay in the log, belonging to no unit, until compaction
    /// drops them.
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
        backend
            .remove_dir_all(&doomed)
            .map_err(device_err(backend, "removing a unit"))?;
        drop(unit);
        Ok(())
    }

    /// Where the device is, for people: its data directory.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The device's identity (`device.json`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn space(&self) -> Result<Space> {
        self.backend
            .space()
            .map_err(device_err(self.backend.as_ref(), "reading free space"))
    }

    /// The units by number, as the log's records name them.
    fn units_by_number(&self) -> HashMap<u32, Arc<Unit>> {
        self.units
            .lock()
            .values()
            .map(|u| (u.number(), u.clone()))
            .collect()
    }

    /// Compacts the log segments whose live share is at most `max_live_ratio`.
    pub fn compact(&self, max_live_ratio: f64) -> Result<CompactionReport> {
        self.log.compact(&self.units_by_number(), max_live_ratio)
    }

    /// The log's counters, and the bytes of its records that are live.
    pub fn log_stats(&self) -> (LogStats, u64) {
        let live = compaction::live_bytes(&self.units_by_number())
            .values()
            .sum();
        (self.log.stats(), live)
    }

    /// Spare segments ready now.
    pub fn spare_segments(&self) -> usize {
        self.log.pool.ready()
    }
}
