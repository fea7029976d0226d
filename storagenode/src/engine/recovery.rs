//! Opening a unit: rebuilding its index from its segments.
//!
//! The index is rebuilt by a full scan of the unit's segments, checking every record's checksum
//! (see `docs/storage-engine.md` for the figures that make this fast enough). The result does not
//! depend on the order in which segments are read: a record belongs to the unit's history if its
//! generation is the one in force at its VBA (`unit.json`), and each block takes the record with the
//! highest VBA that covers it. So a crash in the middle of a compaction, which leaves a record in
//! two segments, or a truncated tail still on disk, recover to the same state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use client::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};
use parking_lot::Mutex;
use tracing::warn;

use super::backend::Backend;
use super::error::{io_err, EngineError, Result};
use super::index::{Index, Location};
use super::meta::{self, GenerationStart, UnitMeta};
use super::pool::SegmentPool;
use super::record::Kind;
use super::segment::{self, Vsid, COMPACTED_VSID_BASE};
use super::unit::{Active, Cursor, Segment, State, Unit};

/// What opening a unit found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub unit: Option<UnitId>,
    pub segments: usize,
    /// Valid records found, live or not.
    pub records: u64,
    /// Records of a tail truncated after a change of primary, ignored.
    pub void_records: u64,
    /// A torn tail found at the end of the newest log segment (cut off when repairing).
    pub torn_tail: Option<TornTail>,
    /// Newest log segments whose header never became durable, dropped.
    pub dropped_segments: Vec<u32>,
    pub last_vba: Vba,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub vsid: u32,
    pub offset: u64,
    pub reason: &'static str,
}

struct Scanned {
    vba: Vba,
    generation: Generation,
    kind: Kind,
    lba: Lba,
    blocks: u64,
    location: Location,
}

pub(super) struct Loaded {
    pub index: Index,
    pub segments: BTreeMap<Vsid, Segment>,
    pub cursor: Cursor,
    pub next_vba: Vba,
    pub next_compacted_vsid: u32,
    pub report: RecoveryReport,
}

/// Reads a unit's segments and rebuilds its state. With `repair`, a torn tail is zeroed and
/// leftovers of interrupted work are removed; without it, nothing on the device changes.
pub(super) fn load(
    backend: &dyn Backend,
    pool: Option<&SegmentPool>,
    dir: &str,
    meta: &UnitMeta,
    repair: bool,
) -> Result<Loaded> {
    let unit = meta.unit;
    let mut report = RecoveryReport {
        unit: Some(unit),
        ..RecoveryReport::default()
    };
    let corrupt = |vsid: Vsid, offset: u64, reason: String| EngineError::Corrupt {
        unit,
        vsid,
        offset,
        reason,
    };

    let mut files = BTreeMap::new();
    for name in backend
        .list(dir)
        .map_err(io_err(unit, "listing the unit directory"))?
    {
        let path = format!("{dir}/{name}");
        if let Some(vsid) = segment::Vsid::from_file_name(&name) {
            files.insert(vsid, path);
        } else if name.ends_with(".tmp") {
            if repair {
                backend
                    .remove(&path)
                    .map_err(io_err(unit, "removing an unfinished file"))?;
            }
        } else if name != meta::UNIT_META {
            warn!(%unit, file = %name, "ignoring an unknown file in the unit directory");
        }
    }

    // Headers first: the newest log segment may have been taken from the pool just before a
    // crash, its header not yet durable; such a segment holds no record and is dropped. Its
    // header is then zeroes, or, for a segment the pool took back from a unit after compaction,
    // the header of what it was before (another segment, perhaps of another unit).
    let mut headers = BTreeMap::new();
    let newest_log = files.keys().filter(|v| v.is_log()).max().copied();
    for (vsid, path) in &files {
        let file = backend
            .open(path)
            .map_err(io_err(unit, format!("opening segment {vsid}")))?;
        let header = segment::read_header(file.as_ref())
            .map_err(io_err(unit, format!("reading segment {vsid}")))?;
        match header {
            Ok(header) if header.vsid == *vsid && header.unit == unit => {
                headers.insert(*vsid, (header, file));
            }
            _ if Some(*vsid) == newest_log => {
                report.dropped_segments.push(vsid.0);
                if repair {
                    let freed = match pool {
                        Some(pool) => pool.give_back(path),
                        None => backend.remove(path),
                    };
                    freed.map_err(io_err(unit, format!("dropping segment {vsid}")))?;
                }
            }
            Ok(header) => {
                return Err(corrupt(
                    *vsid,
                    0,
                    format!("header names {} {}", header.unit, header.vsid),
                ))
            }
            Err(reason) => return Err(corrupt(*vsid, 0, reason.to_string())),
        }
    }

    let last_log = headers.keys().filter(|v| v.is_log()).max().copied();
    let mut scanned = Vec::new();
    let mut segments = BTreeMap::new();
    let mut active = None;
    for (vsid, (header, file)) in headers {
        let is_last = Some(vsid) == last_log;
        let scan = segment::scan(file.as_ref(), header.nonce, is_last)
            .map_err(io_err(unit, format!("reading segment {vsid}")))?
            .map_err(|c| corrupt(vsid, c.offset, c.reason))?;
        if let Some(torn) = scan.torn {
            report.torn_tail = Some(TornTail {
                vsid: vsid.0,
                offset: torn.offset,
                reason: torn.reason,
            });
            if repair {
                warn!(%unit, %vsid, offset = torn.offset, reason = torn.reason, "cutting off a torn log tail");
                segment::zero_torn_tail(file.as_ref(), torn.offset)
                    .map_err(io_err(unit, format!("cutting the tail of segment {vsid}")))?;
            }
        }
        let mut previous = Vba::ZERO;
        for found in &scan.records {
            let h = found.header;
            if vsid.is_log() && h.vba <= previous {
                let reason = format!("VBA {} follows VBA {previous} in a log segment", h.vba);
                return Err(corrupt(vsid, found.offset, reason));
            }
            previous = h.vba;
            scanned.push(Scanned {
                vba: h.vba,
                generation: h.generation,
                kind: h.kind,
                lba: h.lba,
                blocks: h.blocks(),
                location: Location {
                    vsid,
                    offset: found.offset as u32,
                },
            });
        }
        report.records += scan.records.len() as u64;
        if is_last {
            active = Some((
                header.first_vba,
                Active {
                    vsid,
                    file: file.clone(),
                    nonce: header.nonce,
                    offset: scan.end,
                },
            ));
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
    report.segments = segments.len();

    scanned.retain(|r| meta.generation_at(r.vba) == Some(r.generation));
    report.void_records = report.records - scanned.len() as u64;
    scanned.sort_by_key(|r| r.vba);
    scanned.dedup_by_key(|r| r.vba);

    let blocks = meta.size_bytes / BLOCK_BYTES;
    let mut index = Index::new(blocks);
    for r in &scanned {
        if r.lba.0.saturating_add(r.blocks) > blocks {
            let reason = format!("VBA {} covers blocks past the unit's end", r.vba);
            return Err(corrupt(r.location.vsid, r.location.offset as u64, reason));
        }
        match r.kind {
            Kind::Write => index.add_write(r.vba, r.lba, r.location),
            Kind::Trim => index.add_trim(r.vba, r.lba, r.blocks, r.location),
        }
    }

    let after_records = scanned.last().map_or(Vba(1), |r| r.vba.next());
    let generation_start = meta.generations.last().map_or(Vba(1), |g| g.first_vba);
    let segment_start = active.as_ref().map_or(Vba(1), |(first, _)| *first);
    let next_vba = after_records.max(generation_start).max(segment_start);
    report.last_vba = Vba(next_vba.0 - 1);
    let next_log_vsid = last_log.map_or(1, |v| v.0 + 1);
    let next_compacted_vsid = segments
        .keys()
        .filter(|v| !v.is_log())
        .max()
        .map_or(COMPACTED_VSID_BASE, |v| v.0 + 1);
    Ok(Loaded {
        index,
        segments,
        cursor: Cursor {
            active: active.map(|(_, a)| a),
            next_log_vsid,
            buf: Vec::new(),
        },
        next_vba,
        next_compacted_vsid,
        report,
    })
}

impl Unit {
    /// Creates an empty unit in `dir`.
    pub(super) fn create(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        dir: String,
        id: UnitId,
        size_bytes: u64,
        sync: bool,
    ) -> Result<Unit> {
        if size_bytes == 0 || size_bytes % BLOCK_BYTES != 0 {
            return Err(EngineError::Invalid(format!(
                "unit size {size_bytes} is not a positive multiple of {BLOCK_BYTES}"
            )));
        }
        backend
            .create_dir(&dir)
            .map_err(io_err(id, "creating the unit directory"))?;
        let meta = UnitMeta {
            format: meta::UNIT_FORMAT,
            unit: id,
            size_bytes,
            generations: vec![],
        };
        let loaded = Loaded {
            index: Index::new(size_bytes / BLOCK_BYTES),
            segments: BTreeMap::new(),
            cursor: Cursor {
                active: None,
                next_log_vsid: 1,
                buf: Vec::new(),
            },
            next_vba: Vba(1),
            next_compacted_vsid: COMPACTED_VSID_BASE,
            report: RecoveryReport::default(),
        };
        let unit = Unit::assemble(backend, pool, dir, meta, loaded, sync);
        unit.write_meta(&[])?;
        Ok(unit)
    }

    /// Opens the unit in `dir`, recovering its state from disk. With `repair` false nothing on the
    /// device is changed (for `vbs-storage check`), and the unit must not be written to.
    pub(super) fn open(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        dir: String,
        sync: bool,
        repair: bool,
    ) -> Result<(Unit, RecoveryReport)> {
        let meta = read_meta(backend.as_ref(), &dir)?;
        let loaded = load(backend.as_ref(), Some(&pool), &dir, &meta, repair)?;
        let report = loaded.report.clone();
        Ok((
            Unit::assemble(backend, pool, dir, meta, loaded, sync),
            report,
        ))
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        pool: Arc<SegmentPool>,
        dir: String,
        meta: UnitMeta,
        loaded: Loaded,
        sync: bool,
    ) -> Unit {
        Unit {
            id: meta.unit,
            dir,
            backend,
            pool,
            sync,
            size_bytes: AtomicU64::new(meta.size_bytes),
            state: Mutex::new(State {
                index: loaded.index,
                segments: loaded.segments,
                cursor: Some(loaded.cursor),
                next_vba: loaded.next_vba,
                durable_vba: Vba(loaded.next_vba.0 - 1),
                pending: VecDeque::new(),
                failed: None,
                generations: meta.generations,
                stable_vba: Vba::ZERO,
                next_compacted_vsid: loaded.next_compacted_vsid,
                batches: 0,
                last_batch_len: 0,
            }),
            batch_seq: AtomicU32::new(0),
            batch_waiters: AtomicU32::new(0),
            durable_vba: AtomicU64::new(loaded.next_vba.0 - 1),
            durable_watch: tokio::sync::watch::Sender::new(Vba(loaded.next_vba.0 - 1)),
            maintenance: Mutex::new(()),
            committer: std::sync::OnceLock::new(),
        }
    }

    /// Drops every record after `vba` and starts `generation` at `vba + 1`: what a copy does
    /// when a new primary's records (of `generation`) meet an unacknowledged tail it holds from an
    /// old primary. Returns the number of VBAs dropped.
    pub fn truncate_after(&self, vba: Vba, generation: Generation) -> Result<u64> {
        let _maintenance = self.maintenance.lock();
        let mut state = self.state.lock();
        // Let writes in progress finish, so that the log's end is known.
        while state.cursor.is_none() || !state.pending.is_empty() {
            let last = Vba(state.next_vba.0 - 1);
            state = match self.wait_durable(state, last) {
                Ok(()) => self.state.lock(),
                Err(e) => return Err(e),
            };
        }
        self.check_failed(&state)?;
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
        // A new log segment first, whose header says the log goes on at `vba + 1`; then the
        // history. A crash between the two leaves the tail in place, to be truncated again.
        let mut cursor = state.cursor.take().expect("no batch is being written");
        let started = self.start_segment(Vsid(cursor.next_log_vsid), vba.next());
        let active = match started {
            Ok(active) => active,
            Err(e) => {
                state.cursor = Some(cursor);
                return Err(e);
            }
        };
        cursor.next_log_vsid += 1;
        state.segments.insert(
            active.vsid,
            Segment {
                file: active.file.clone(),
                nonce: active.nonce,
                end: active.offset,
            },
        );
        cursor.active = Some(active);
        state.cursor = Some(cursor);

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
            size_bytes: self.size_bytes(),
            generations: state.generations.clone(),
        };
        let loaded = load(self.backend.as_ref(), None, &self.dir, &meta, false)?;
        state.index = loaded.index;
        state.segments = loaded.segments;
        state.next_vba = vba.next();
        state.durable_vba = vba;
        self.durable_vba.store(vba.0, Ordering::Release);
        self.durable_watch.send_replace(vba);
        Ok(dropped)
    }
}

pub(super) fn read_meta(backend: &dyn Backend, dir: &str) -> Result<UnitMeta> {
    let path = format!("{dir}/{}", meta::UNIT_META);
    let bytes = backend
        .read_all(&path)
        .map_err(|source| EngineError::Device {
            device: backend.describe(),
            context: format!("reading {path}"),
            source,
        })?;
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
