//! Opening a device: reading its log back and rebuilding each unit's index; and truncation, which
//! rebuilds one unit's index from its records.
//!
//! The log is read by a full scan of its segments, checking every record's checksum. Each record
//! names its unit by the unit's device-local number. The result does not depend on the order in
//! which segments are read: a record belongs to its unit's history if its generation is the one in
//! force at its VBA (`unit.json`), and each block takes the record with the highest VBA that covers
//! it. So a crash in the middle of a compaction, which leaves a record in two segments, or a
//! truncated tail still on disk, recover to the same state.
//!
//! One file, past 600 lines, because opening and truncating rebuild an index by the same rules
//! (which records belong to the history, which one a block takes), and the rules must not drift
//! apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::warn;
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

use super::backend::Backend;
use super::checkpoint::UnitCheckpoint;
use super::error::{device_err, io_err, EngineError, Result};
use super::index::{Index, Location};
use super::log::{Active, Cursor, Log, Segment, LOG_DIR};
use super::meta::{self, GenerationStart, Marks, UnitMeta};
use super::pool::SegmentPool;
use super::record::Kind;
use super::record::{HEADER_BYTES, WRITE_RECORD_BYTES};
use super::segment::{self, Found, Vsid, COMPACTED_VSID_BASE, SEGMENT_HEADER_BYTES};
use super::unit::{State, Unit};

/// What opening a unit found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub unit: Option<UnitId>,
    /// Segments of the device log holding live records of the unit.
    pub segments: usize,
    /// Valid records of the unit found, live or not.
    pub records: u64,
    /// Records of a tail truncated after a change of primary, ignored.
    pub void_records: u64,
    /// Records of the unit's history whose data failed its checksum (their headers read): indexed
    /// all the same, so that a read of one repairs it from another copy, and a dead one goes with
    /// compaction.
    pub damaged_records: u64,
    /// A torn tail at the end of the device log that named this unit (cut off when repairing):
    /// the copy may have lost records of a batch that was being written.
    pub torn_tail: Option<TornTail>,
    pub last_vba: Vba,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub vsid: u32,
    pub offset: u64,
    pub reason: &'static str,
}

/// A record found in the log.
pub(super) struct Scanned {
    vba: Vba,
    generation: Generation,
    kind: Kind,
    lba: Lba,
    blocks: u64,
    location: Location,
    damaged: bool,
}

impl Scanned {
    fn from(found: &Found, vsid: Vsid) -> Scanned {
        let h = found.header;
        Scanned {
            vba: h.vba,
            generation: h.generation,
            kind: h.kind,
            lba: h.lba,
            blocks: h.blocks(),
            location: Location {
                vsid,
                offset: found.offset as u32,
            },
            damaged: found.damaged,
        }
    }
}

/// The device log as a scan found it.
pub(super) struct ScannedLog {
    pub segments: BTreeMap<Vsid, Segment>,
    pub cursor: Cursor,
    pub next_compacted_vsid: u32,
    /// Records by unit number.
    pub records: HashMap<u32, Vec<Scanned>>,
    /// A torn tail cut off the newest log segment, and the units its records named.
    pub torn: Option<(TornTail, Vec<u32>)>,
    /// Newest log segments whose header never became durable, dropped.
    pub dropped_segments: Vec<u32>,
    /// The highest unit number any record carries.
    pub max_number: u32,
    /// Bytes of records read.
    pub scanned_bytes: u64,
}

/// Where a scan of the log may start: the segments a checkpoint knew (with their ends) and the
/// position before which it holds every record.
pub(super) struct ScanFrom<'a> {
    pub segments: &'a BTreeMap<Vsid, u64>,
    pub position: (Vsid, u64),
}

/// Reads every segment of the device log. With `repair`, a torn tail is zeroed and leftovers of
/// interrupted work are removed; without it, nothing on the device changes.
pub(super) fn scan_log(
    backend: &dyn Backend,
    pool: Option<&SegmentPool>,
    names: &BTreeMap<u32, UnitId>,
    from: Option<ScanFrom<'_>>,
    repair: bool,
) -> Result<ScannedLog> {
    let device = backend.describe();
    let err = |context: String| device_err(device.clone(), context);
    let corrupt = |vsid: Vsid, offset: u64, reason: String| EngineError::CorruptLog {
        device: device.clone(),
        vsid,
        offset,
        reason,
    };

    let mut files = BTreeMap::new();
    for name in backend
        .list(LOG_DIR)
        .map_err(err("listing the log".into()))?
    {
        let path = format!("{LOG_DIR}/{name}");
        if let Some(vsid) = segment::Vsid::from_file_name(&name) {
            files.insert(vsid, path);
        } else if name.ends_with(".tmp") {
            if repair {
                backend
                    .remove(&path)
                    .map_err(err("removing an unfinished file".into()))?;
            }
        } else {
            warn!(%device, file = %name, "ignoring an unknown file in the log directory");
        }
    }

    // Headers first: the newest log segment may have been taken from the pool just before a
    // crash, its header not yet durable; such a segment holds no record and is dropped. Its
    // header is then zeroes, or, for a segment the pool took back after compaction, the header
    // of what it was before.
    let mut headers = BTreeMap::new();
    let mut dropped_segments = Vec::new();
    let newest_log = files.keys().filter(|v| v.is_log()).max().copied();
    for (vsid, path) in &files {
        let file = backend
            .open(path)
            .map_err(err(format!("opening log segment {vsid}")))?;
        let header = segment::read_header(file.as_ref())
            .map_err(err(format!("reading log segment {vsid}")))?;
        match header {
            Ok(header) if header.vsid == *vsid => {
                headers.insert(*vsid, (header, file));
            }
            _ if Some(*vsid) == newest_log => {
                dropped_segments.push(vsid.0);
                if repair {
                    let freed = match pool {
                        Some(pool) => pool.give_back(path),
                        None => backend.remove(path),
                    };
                    freed.map_err(err(format!("dropping log segment {vsid}")))?;
                }
            }
            Ok(header) => {
                return Err(corrupt(
                    *vsid,
                    0,
                    format!("header names segment {}", header.vsid),
                ))
            }
            Err(reason) => return Err(corrupt(*vsid, 0, reason.to_string())),
        }
    }

    let last_log = headers.keys().filter(|v| v.is_log()).max().copied();
    let mut records: HashMap<u32, Vec<Scanned>> = HashMap::new();
    let mut segments = BTreeMap::new();
    let mut active = None;
    let mut torn = None;
    let mut max_number = 0;
    let mut scanned_bytes = 0;
    for (vsid, (header, file)) in headers {
        let is_last = Some(vsid) == last_log;
        // With a checkpoint, only what was written after it is read: the log from its position
        // on, and compaction output it did not know.
        let start = match &from {
            None => SEGMENT_HEADER_BYTES,
            Some(from) if vsid.is_log() && vsid == from.position.0 => from.position.1,
            Some(from) if vsid.is_log() && vsid > from.position.0 => SEGMENT_HEADER_BYTES,
            Some(from) => match from.segments.get(&vsid) {
                Some(&end) => {
                    if is_last {
                        active = Some(Active {
                            vsid,
                            file: file.clone(),
                            nonce: header.nonce,
                            offset: end,
                        });
                    }
                    let segment = Segment {
                        file,
                        nonce: header.nonce,
                        end,
                    };
                    segments.insert(vsid, segment);
                    continue;
                }
                None => SEGMENT_HEADER_BYTES,
            },
        };
        let scan = segment::scan_from(file.as_ref(), header.nonce, is_last, start)
            .map_err(err(format!("reading log segment {vsid}")))?
            .map_err(|c| {
                let whose = whose_record(file.as_ref(), header.nonce, c.offset, names);
                corrupt(vsid, c.offset, format!("{whose}{}", c.reason))
            })?;
        if let Some(cut) = scan.torn {
            if repair {
                warn!(%device, %vsid, offset = cut.offset, reason = cut.reason, units = ?scan.torn_units, "cutting off a torn log tail");
                segment::zero_torn_tail(file.as_ref(), cut.offset)
                    .map_err(err(format!("cutting the tail of log segment {vsid}")))?;
            }
            let tail = TornTail {
                vsid: vsid.0,
                offset: cut.offset,
                reason: cut.reason,
            };
            // The units that may have lost a record: those a torn record's header names (a
            // header torn in its middle may name a wrong one), and those of the last batch before
            // the cut, which the torn records may have belonged to.
            let last_batch = scan.records.last().map(|f| f.header.batch_start);
            let mut named: Vec<u32> = scan
                .torn_units
                .iter()
                .copied()
                .filter(|n| names.contains_key(n))
                .chain(
                    scan.records
                        .iter()
                        .filter(|f| Some(f.header.batch_start) == last_batch)
                        .map(|f| f.header.unit),
                )
                .collect();
            named.sort_unstable();
            named.dedup();
            torn = Some((tail, named));
        }
        // Each unit's records follow one another in VBA order within a log segment, except where
        // a truncation started another generation.
        let mut previous: HashMap<u32, (Vba, Generation)> = HashMap::new();
        for found in &scan.records {
            let h = found.header;
            let last = previous.entry(h.unit).or_insert((Vba::ZERO, h.generation));
            if vsid.is_log() && h.vba <= last.0 && h.generation == last.1 {
                let reason = format!(
                    "VBA {} of unit number {} follows its VBA {} of the same generation in a log \
                     segment",
                    h.vba, h.unit, last.0
                );
                return Err(corrupt(vsid, found.offset, reason));
            }
            *last = (h.vba, h.generation);
            max_number = max_number.max(h.unit);
            records
                .entry(h.unit)
                .or_default()
                .push(Scanned::from(found, vsid));
        }
        scanned_bytes += scan.end - start;
        if is_last {
            active = Some(Active {
                vsid,
                file: file.clone(),
                nonce: header.nonce,
                offset: scan.end,
            });
        }
        segments.insert(
            vsid,
            Segment {
                file,
                nonce: header.nonce,
                end: scan.end,
            },
        );
    }
    let next_log_vsid = last_log.map_or(1, |v| v.0 + 1);
    let next_compacted_vsid = segments
        .keys()
        .filter(|v| !v.is_log())
        .max()
        .map_or(COMPACTED_VSID_BASE, |v| v.0 + 1);
    Ok(ScannedLog {
        segments,
        cursor: Cursor {
            active,
            next_log_vsid,
            buf: Vec::new(),
        },
        next_compacted_vsid,
        records,
        torn,
        dropped_segments,
        max_number,
        scanned_bytes,
    })
}

/// "a record of unit V.S (VBA n): " when the header at `offset` still reads, to name the copy a
/// damaged record belongs to; empty otherwise.
fn whose_record(
    file: &dyn super::backend::BlockFile,
    nonce: u64,
    offset: u64,
    names: &BTreeMap<u32, UnitId>,
) -> String {
    let mut head = [0u8; super::record::HEADER_BYTES];
    if file.read_exact_at(&mut head, offset).is_err() {
        return String::new();
    }
    match super::record::decode_header(&head, nonce) {
        Ok(h) => match names.get(&h.unit) {
            Some(unit) => format!("a record of unit {unit} (VBA {}): ", h.vba),
            None => format!(
                "a record of removed unit number {} (VBA {}): ",
                h.unit, h.vba
            ),
        },
        Err(_) => String::new(),
    }
}

/// A unit's state rebuilt from its records.
pub(super) struct Built {
    index: Index,
    next_vba: Vba,
    segments: BTreeSet<Vsid>,
    report: RecoveryReport,
}

/// Builds a unit's index from all the records the log holds for it: on top of an empty
/// checkpoint, from which every record is new.
fn build(meta: &UnitMeta, scanned: Vec<Scanned>, present: &BTreeSet<Vsid>) -> Result<Built> {
    let empty = UnitCheckpoint {
        generations: Vec::new(),
        last_vba: Vba::ZERO,
        segments: BTreeSet::new(),
        index: Index::new(meta.size_bytes / BLOCK_BYTES),
    };
    build_from(meta, empty, scanned, present)
}

/// Builds a unit's index from its checkpoint and the records of the log written after it.
/// Records at or below the checkpoint's last VBA are already in it; one that compaction moved out
/// of a segment freed since is followed to where it is now. A record found twice (copied by a
/// compaction interrupted before it freed the original) is taken once. `present`: the segments
/// the log has.
fn build_from(
    meta: &UnitMeta,
    checkpoint: UnitCheckpoint,
    mut scanned: Vec<Scanned>,
    present: &BTreeSet<Vsid>,
) -> Result<Built> {
    let mut report = RecoveryReport {
        unit: Some(meta.unit),
        records: scanned.len() as u64,
        ..RecoveryReport::default()
    };
    scanned.retain(|r| meta.generation_at(r.vba) == Some(r.generation));
    report.void_records = report.records - scanned.len() as u64;
    report.damaged_records = scanned.iter().filter(|r| r.damaged).count() as u64;
    scanned.sort_by_key(|r| r.vba);
    let UnitCheckpoint {
        last_vba,
        mut segments,
        mut index,
        ..
    } = checkpoint;
    segments.retain(|v| present.contains(v));
    let blocks = meta.size_bytes / BLOCK_BYTES;
    let mut last = last_vba;
    for r in &scanned {
        segments.insert(r.location.vsid);
        if r.vba <= last {
            let moved = index
                .location(r.vba)
                .filter(|at| !present.contains(&at.vsid) && *at != r.location);
            if let Some(at) = moved {
                let bytes = match r.kind {
                    Kind::Write => WRITE_RECORD_BYTES,
                    Kind::Trim => HEADER_BYTES,
                };
                index.relocate(r.vba, at.vsid, r.location, bytes as u64);
            }
            continue;
        }
        if r.lba.0.saturating_add(r.blocks) > blocks {
            return Err(EngineError::Corrupt {
                unit: meta.unit,
                vsid: r.location.vsid,
                offset: r.location.offset as u64,
                reason: format!("VBA {} covers blocks past the unit's end", r.vba),
            });
        }
        match r.kind {
            Kind::Write => index.add_write(r.vba, r.lba, r.location),
            Kind::Trim => index.add_trim(r.vba, r.lba, r.blocks, r.location),
        }
        last = r.vba;
    }
    if let Some(missing) = index.segments_in_use().find(|v| !present.contains(v)) {
        return Err(EngineError::Corrupt {
            unit: meta.unit,
            vsid: missing,
            offset: 0,
            reason: "the checkpoint's index points into a segment the log no longer has".into(),
        });
    }
    report.segments = segments
        .iter()
        .filter(|v| index.live_bytes(**v) > 0)
        .count();
    let generation_start = meta.generations.last().map_or(Vba(1), |g| g.first_vba);
    let next_vba = last.next().max(generation_start);
    report.last_vba = Vba(next_vba.0 - 1);
    Ok(Built {
        index,
        next_vba,
        segments,
        report,
    })
}

impl Unit {
    /// Creates an empty unit numbered `number` on the device of `log`, with `marks` in its
    /// first `unit.json`.
    pub(super) fn create(
        log: Arc<Log>,
        dir: String,
        id: UnitId,
        number: u32,
        size_bytes: u64,
        marks: Marks,
    ) -> Result<Unit> {
        if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
            return Err(EngineError::Invalid(format!(
                "unit size {size_bytes} is not a positive multiple of {BLOCK_BYTES}"
            )));
        }
        let backend = log.backend.clone();
        backend
            .create_dir(&dir)
            .map_err(io_err(id, "creating the unit directory"))?;
        let meta = UnitMeta {
            format: meta::UNIT_FORMAT,
            unit: id,
            number,
            size_bytes,
            generations: vec![],
            marks,
        };
        let built = Built {
            index: Index::new(size_bytes / BLOCK_BYTES),
            next_vba: Vba(1),
            segments: BTreeSet::new(),
            report: RecoveryReport::default(),
        };
        let unit = Unit::assemble(log, dir, meta, built);
        unit.write_meta(&[])?;
        Ok(unit)
    }

    /// The unit described by `meta`, its index built from `records` (what the log holds of it),
    /// on top of its part of a checkpoint if there is one (then `records` are those written
    /// after the checkpoint, and `present` the segments the log has).
    pub(super) fn open(
        log: Arc<Log>,
        dir: String,
        meta: UnitMeta,
        checkpoint: Option<UnitCheckpoint>,
        records: Vec<Scanned>,
        present: &BTreeSet<Vsid>,
    ) -> Result<(Unit, RecoveryReport)> {
        let built = match checkpoint {
            Some(checkpoint) => build_from(&meta, checkpoint, records, present)?,
            None => build(&meta, records, present)?,
        };
        let report = built.report.clone();
        Ok((Unit::assemble(log, dir, meta, built), report))
    }

    fn assemble(log: Arc<Log>, dir: String, meta: UnitMeta, built: Built) -> Unit {
        let last = Vba(built.next_vba.0 - 1);
        Unit {
            id: meta.unit,
            number: meta.number,
            dir,
            backend: log.backend.clone(),
            log,
            size_bytes: AtomicU64::new(meta.size_bytes),
            state: Mutex::new(State {
                index: built.index,
                next_vba: built.next_vba,
                durable_vba: last,
                queued: 0,
                generations: meta.generations,
                stable_vba: Vba::ZERO,
                segments: built.segments,
            }),
            durable_vba: AtomicU64::new(last.0),
            durable_watch: tokio::sync::watch::Sender::new(last),
            marks: Mutex::new(meta.marks),
        }
    }

    /// Every record of the unit the log holds now, read back from the segments that hold any.
    fn reread(&self, segments: &BTreeSet<Vsid>) -> Result<Vec<Scanned>> {
        let mut records = Vec::new();
        for (vsid, end) in self.log.segment_ends() {
            if !segments.contains(&vsid) {
                continue;
            }
            let Some((file, nonce)) = self.log.segment(vsid) else {
                continue;
            };
            let found = segment::records_until(file.as_ref(), nonce, end)
                .map_err(io_err(self.id, format!("reading log segment {vsid}")))?
                .map_err(|c| EngineError::Corrupt {
                    unit: self.id,
                    vsid,
                    offset: c.offset,
                    reason: c.reason,
                })?;
            records.extend(
                found
                    .iter()
                    .filter(|f| f.header.unit == self.number)
                    .map(|f| Scanned::from(f, vsid)),
            );
        }
        Ok(records)
    }

    /// Drops every record after `vba` and starts `generation` at `vba + 1`: what a copy does
    /// when a new primary's records (of `generation`) meet an unacknowledged tail it holds from an
    /// old primary. Returns the number of VBAs dropped.
    pub fn truncate_after(self: &Arc<Self>, vba: Vba, generation: Generation) -> Result<u64> {
        let _maintenance = self.log.maintenance.lock();
        // Let the unit's writes in progress finish, so that its log's end is known.
        let mut state = loop {
            let state = self.state.lock();
            if state.queued == 0 {
                break state;
            }
            let last = Vba(state.next_vba.0 - 1);
            drop(state);
            match self.log.wait_durable(self, last) {
                Ok(()) | Err(EngineError::Truncated { .. }) => {}
                Err(e) => return Err(e),
            }
        };
        self.check_failed()?;
        if vba < state.stable_vba {
            return Err(EngineError::TruncateStable {
                unit: self.id,
                vba,
                stable: state.stable_vba,
            });
        }
        // The history after `vba` becomes `generation`'s. It may be older than the unit's newest
        // (the tail being dropped can be of a later generation than what replaces it), but not
        // older than the history kept, and it must differ from the generation of the records
        // dropped at `vba + 1`, or they would still belong to the history.
        let kept = meta::generation_at(&state.generations, vba).unwrap_or(Generation(0));
        if generation < kept {
            return Err(EngineError::StaleGeneration {
                unit: self.id,
                got: generation,
                current: kept,
            });
        }
        let dropped = state.durable_vba.0.saturating_sub(vba.0);
        // Records of `generation` past `vba` would count as the new history's once the index is
        // rebuilt below, whatever lies between them: dropping them needs another generation.
        // They are the ones in force right after `vba`, or under a start further on.
        let in_force_after = meta::generation_at(&state.generations, vba.next());
        let resurrected = if in_force_after == Some(generation) {
            Some(vba.next())
        } else {
            state
                .generations
                .iter()
                .find(|s| s.generation == generation && s.first_vba > vba)
                .map(|s| s.first_vba)
        };
        if let (true, Some(first)) = (dropped > 0, resurrected) {
            return Err(EngineError::Invalid(format!(
                "unit {}: the records from VBA {first} on are already of generation \
                 {generation}; truncating after VBA {vba} needs another generation",
                self.id
            )));
        }
        // The history first: once it is durable, the dropped records no longer belong to the
        // unit, wherever they are in the log. Then the index, rebuilt from the records.
        let mut generations = state.generations.clone();
        generations.retain(|g| g.first_vba <= vba);
        generations.push(GenerationStart {
            generation,
            first_vba: vba.next(),
        });
        self.write_meta(&generations)?;
        state.generations = generations;

        let meta = UnitMeta {
            format: meta::UNIT_FORMAT,
            unit: self.id,
            number: self.number,
            size_bytes: self.size_bytes(),
            generations: state.generations.clone(),
            marks: *self.marks.lock(),
        };
        let present = self
            .log
            .segment_ends()
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        let built = build(&meta, self.reread(&state.segments)?, &present)?;
        state.index = built.index;
        state.segments = built.segments;
        state.next_vba = vba.next();
        state.durable_vba = vba;
        self.durable_vba.store(vba.0, Ordering::Release);
        drop(state);
        self.durable_watch.send_replace(vba);
        Ok(dropped)
    }
}

/// Reads a unit's `unit.json`.
pub(super) fn read_meta(backend: &dyn Backend, dir: &str) -> Result<UnitMeta> {
    let path = format!("{dir}/{}", meta::UNIT_META);
    let bytes = backend
        .read_all(&path)
        .map_err(device_err(backend.describe(), format!("reading {path}")))?;
    let meta: UnitMeta = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Invalid(format!("{path} in {}: {e}", backend.describe())))?;
    if meta.format != meta::UNIT_FORMAT {
        return Err(EngineError::Invalid(format!(
            "{path} has format {}, this vbs reads format {}",
            meta.format,
            meta::UNIT_FORMAT
        )));
    }
    Ok(meta)
}
