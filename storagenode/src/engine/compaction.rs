//! Compaction: copying the live records out of log segments that are mostly overwritten, then
//! freeing those segments.
//!
//! A segment of the device log holds records of many units; compaction asks each record's unit
//! whether the record is still needed. Records keep their unit, VBA, generation and LBA; only their
//! location changes. A record that is dead is dropped only if what superseded it is *stable* (at
//! or below the unit's stable VBA, held by every copy): a tail above it may still be truncated
//! after a change of primary, and the record it superseded must then be there to read again.
//! Records of removed units and of truncated tails are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{debug, warn};

use super::error::{device_err, Result};
use super::index::Location;
use super::log::{segment_path, Log, Segment, LOG_DIR};
use super::meta;
use super::record::{self, Header, Kind};
use super::segment::{SegmentHeader, Vsid, SEGMENT_HEADER_BYTES};
use super::unit::Unit;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_freed: usize,
    pub records_copied: u64,
    pub bytes_copied: u64,
    /// Log bytes no longer on disk.
    pub bytes_freed: u64,
    /// Damaged records no unit needed any more, dropped with their segments.
    pub damaged_dropped: u64,
}

impl CompactionReport {
    fn add(&mut self, other: CompactionReport) {
        self.segments_freed += other.segments_freed;
        self.records_copied += other.records_copied;
        self.bytes_copied += other.bytes_copied;
        self.bytes_freed += other.bytes_freed;
        self.damaged_dropped += other.damaged_dropped;
    }
}

/// Live record bytes per segment, over every unit.
pub(super) fn live_bytes(units: &HashMap<u32, Arc<Unit>>) -> BTreeMap<Vsid, u64> {
    let mut live = BTreeMap::new();
    for unit in units.values() {
        let state = unit.state.lock();
        for vsid in &state.segments {
            *live.entry(*vsid).or_default() += state.index.live_bytes(*vsid);
        }
    }
    live
}

impl Log {
    /// Compacts the sealed segments whose live bytes are at most `max_live_ratio` of their
    /// written bytes, packing their live records into new segments. `units` are the device's
    /// units by number.
    pub(super) fn compact(
        &self,
        units: &HashMap<u32, Arc<Unit>>,
        max_live_ratio: f64,
    ) -> Result<CompactionReport> {
        let _maintenance = self.maintenance.lock();
        let mut report = CompactionReport::default();
        let room = self.pool.segment_bytes() - SEGMENT_HEADER_BYTES;
        let mut candidates = self.compaction_candidates(units, max_live_ratio);
        while !candidates.is_empty() {
            // Pack as many candidates as fit in one output segment (at least one).
            let mut group = Vec::new();
            let mut live = 0;
            while let Some(&(vsid, bytes)) = candidates.first() {
                if !group.is_empty() && live + bytes > room {
                    break;
                }
                live += bytes;
                group.push(vsid);
                candidates.remove(0);
            }
            report.add(self.compact_group(units, &group)?);
        }
        Ok(report)
    }

    /// Sealed segments worth compacting, emptiest first, with their live bytes.
    fn compaction_candidates(
        &self,
        units: &HashMap<u32, Arc<Unit>>,
        max_live_ratio: f64,
    ) -> Vec<(Vsid, u64)> {
        let live = live_bytes(units);
        let mut candidates: Vec<(Vsid, u64, f64)> = self
            .segment_ends()
            .into_iter()
            .filter(|(vsid, _)| self.sealed(*vsid) && !self.damaged_segments.lock().contains(vsid))
            .filter_map(|(vsid, end)| {
                let written = end - SEGMENT_HEADER_BYTES;
                let live = live.get(&vsid).copied().unwrap_or(0);
                let ratio = if written == 0 {
                    0.0
                } else {
                    live as f64 / written as f64
                };
                (ratio <= max_live_ratio).then_some((vsid, live, ratio))
            })
            .collect();
        candidates.sort_by(|a, b| a.2.total_cmp(&b.2));
        candidates
            .into_iter()
            .map(|(vsid, live, _)| (vsid, live))
            .collect()
    }

    fn compact_group(
        &self,
        units: &HashMap<u32, Arc<Unit>>,
        group: &[Vsid],
    ) -> Result<CompactionReport> {
        let device = self.backend.describe();
        let (vsid, nonce, mut out) = self.new_compacted();
        // (unit, VBA, old segment, new offset, record bytes) of every record copied.
        let mut moves = Vec::new();
        let mut report = CompactionReport::default();
        // Segments with a damaged record that a unit still needs, or whose header does not say
        // whose it is: kept as they are, for a read or a scrub to repair it in place.
        let mut kept = Vec::new();
        for &from in group {
            let (Some((file, nonce_from)), Some(end)) =
                (self.segment(from), self.segment_end(from))
            else {
                continue;
            };
            let context = format!("compacting log segment {from}");
            let mut bytes = vec![0u8; end as usize];
            file.read_exact_at(&mut bytes, 0)
                .map_err(device_err(device.clone(), &context))?;
            // Decode without any lock, then ask each record's unit, briefly.
            let mut offset = SEGMENT_HEADER_BYTES as usize;
            while offset < end as usize {
                let header = match record::decode(&bytes[offset..], nonce_from) {
                    Ok(header) => header,
                    Err(invalid) => {
                        // A damaged record no unit needs any more goes with the segment.
                        if let Some(size) = dead_damage(units, &bytes[offset..], nonce_from) {
                            report.damaged_dropped += 1;
                            offset += size;
                            continue;
                        }
                        // Never copied: a read of a live record there finds it damaged and
                        // repairs it from another copy (`node::repair`).
                        warn!(
                            %device, segment = %from, offset, %invalid,
                            "a damaged record stops the compaction of its segment; the segment is kept"
                        );
                        self.damaged_segments.lock().insert(from);
                        kept.push(from);
                        break;
                    }
                };
                let size = header.record_bytes();
                if let Some(unit) = units.get(&header.unit).filter(|u| needed(u, &header)) {
                    let at = out.len();
                    out.extend_from_slice(&bytes[offset..offset + size]);
                    // One batch for the whole file: it is synced before it is renamed into place.
                    record::reseal(&mut out[at..], nonce, SEGMENT_HEADER_BYTES as u32);
                    moves.push((unit.clone(), header.vba, from, at as u32, size as u64));
                    report.records_copied += 1;
                    report.bytes_copied += size as u64;
                }
                offset += size;
            }
        }

        self.install_compacted(vsid, nonce, &out)?;

        for (unit, vba, from, offset, size) in moves {
            let mut state = unit.state.lock();
            state
                .index
                .relocate(vba, from, Location { vsid, offset }, size);
            state.segments.insert(vsid);
        }
        for &from in group.iter().filter(|from| !kept.contains(from)) {
            if let Some(end) = self.segment_end(from) {
                report.bytes_freed += end - SEGMENT_HEADER_BYTES;
            }
            for unit in units.values() {
                let mut state = unit.state.lock();
                if state.segments.remove(&from) {
                    state.index.forget_segment(from);
                }
            }
            if self.remove_segment(from).is_some() {
                self.pool
                    .give_back(&segment_path(from))
                    .map_err(device_err(
                        device.clone(),
                        format!("freeing segment {from}"),
                    ))?;
                report.segments_freed += 1;
            }
        }
        debug!(%device, %vsid, ?report, "compacted");
        Ok(report)
    }
}

impl Log {
    /// A new compacted segment's VSID and nonce, and its header: records are added after it, then
    /// the segment is written with [`Log::install_compacted`].
    pub(super) fn new_compacted(&self) -> (Vsid, u64, Vec<u8>) {
        let vsid = Vsid(self.next_compacted_vsid.fetch_add(1, Ordering::SeqCst));
        let nonce = rand::random::<u64>();
        (vsid, nonce, SegmentHeader { vsid, nonce }.encode())
    }

    /// Writes a compacted segment whole, syncs it, renames it into place and adds it to the log:
    /// a crash leaves either no segment or all of it.
    pub(super) fn install_compacted(&self, vsid: Vsid, nonce: u64, bytes: &[u8]) -> Result<()> {
        let device = self.backend.describe();
        let temp = format!("{LOG_DIR}/{vsid}.tmp");
        let context = format!("writing compacted segment {vsid}");
        let err = || device_err(device.clone(), &context);
        let file = self.backend.create(&temp).map_err(err())?;
        file.write_at(bytes, 0).map_err(err())?;
        file.sync().map_err(err())?;
        self.backend
            .rename(&temp, &segment_path(vsid))
            .map_err(err())?;
        self.add_segment(
            vsid,
            Segment {
                file,
                nonce,
                end: bytes.len() as u64,
            },
        );
        Ok(())
    }
}

/// The size of the damaged record `bytes` start with, when its header reads and its unit no
/// longer needs it (or is gone).
fn dead_damage(units: &HashMap<u32, Arc<Unit>>, bytes: &[u8], nonce: u64) -> Option<usize> {
    let header = record::decode_header(bytes, nonce).ok()?;
    let dead = units.get(&header.unit).is_none_or(|u| !needed(u, &header));
    (dead && header.record_bytes() <= bytes.len()).then_some(header.record_bytes())
}

/// Whether `unit` still needs the record `header` describes: it belongs to the unit's history,
/// and is live or superseded by a record that may still be truncated.
fn needed(unit: &Unit, header: &Header) -> bool {
    let state = unit.state.lock();
    let stable = state.stable_vba;
    let in_history = meta::generation_at(&state.generations, header.vba) == Some(header.generation);
    in_history
        && match header.kind {
            Kind::Write => {
                let newest = state.index.vba_of(header.lba);
                newest == header.vba || newest > stable
            }
            Kind::Trim => {
                state.index.is_live_trim(header.vba)
                    || state.index.max_vba_in(header.lba, header.blocks()) > stable
            }
        }
}
