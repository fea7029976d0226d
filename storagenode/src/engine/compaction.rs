//! Compaction: copying the live records out of segments that are mostly overwritten, then freeing
//! those segments.
//!
//! Records keep their VBA, generation and LBA; only their location changes. A record that is dead
//! is dropped only if what superseded it is *stable* (at or below the unit's stable VBA, held by
//! every copy): a tail above it may still be truncated after a change of primary, and the record
//! it superseded must then be there to read again.

use client::types::Vba;
use tracing::debug;

use super::error::{io_err, EngineError, Result};
use super::index::Location;
use super::meta;
use super::record::{self, Kind};
use super::segment::{SegmentHeader, Vsid, SEGMENT_HEADER_BYTES};
use super::unit::{Segment, Unit};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub segments_freed: usize,
    pub records_copied: u64,
    pub bytes_copied: u64,
    /// Log bytes no longer on disk.
    pub bytes_freed: u64,
}

impl Unit {
    /// Compacts the sealed segments whose live bytes are at most `max_live_ratio` of their
    /// written bytes, packing their live records into new segments.
    pub fn compact(&self, max_live_ratio: f64) -> Result<CompactionReport> {
        let _maintenance = self.maintenance.lock();
        let mut report = CompactionReport::default();
        let room = self.pool.segment_bytes() - SEGMENT_HEADER_BYTES;
        let mut candidates = self.compaction_candidates(max_live_ratio);
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
            let done = self.compact_group(&group)?;
            report.segments_freed += done.segments_freed;
            report.records_copied += done.records_copied;
            report.bytes_copied += done.bytes_copied;
            report.bytes_freed += done.bytes_freed;
        }
        Ok(report)
    }

    /// Sealed segments worth compacting, emptiest first, with their live bytes.
    fn compaction_candidates(&self, max_live_ratio: f64) -> Vec<(Vsid, u64)> {
        let state = self.state.lock();
        let newest_log = state.segments.keys().filter(|v| v.is_log()).max().copied();
        let mut candidates: Vec<(Vsid, u64, f64)> = state
            .segments
            .iter()
            .filter(|(vsid, _)| Some(**vsid) != newest_log)
            .filter_map(|(vsid, segment)| {
                let written = segment.end - SEGMENT_HEADER_BYTES;
                let live = state.index.live_bytes(*vsid);
                let ratio = if written == 0 {
                    0.0
                } else {
                    live as f64 / written as f64
                };
                (ratio <= max_live_ratio).then_some((*vsid, live, ratio))
            })
            .collect();
        candidates.sort_by(|a, b| a.2.total_cmp(&b.2));
        candidates
            .into_iter()
            .map(|(vsid, live, _)| (vsid, live))
            .collect()
    }

    fn compact_group(&self, group: &[Vsid]) -> Result<CompactionReport> {
        let (vsid, stable) = {
            let mut state = self.state.lock();
            state.next_compacted_vsid += 1;
            (Vsid(state.next_compacted_vsid - 1), state.stable_vba)
        };
        let nonce = rand::random::<u64>();
        let header = SegmentHeader {
            vsid,
            unit: self.id,
            nonce,
            first_vba: Vba::ZERO,
        };
        let mut out = header.encode();
        // (VBA, old segment, new offset, record bytes) of every record copied.
        let mut moves = Vec::new();
        let mut report = CompactionReport::default();
        for &from in group {
            let (file, nonce_from, end) = {
                let state = self.state.lock();
                let segment = &state.segments[&from];
                (segment.file.clone(), segment.nonce, segment.end)
            };
            report.bytes_freed += end - SEGMENT_HEADER_BYTES;
            let context = || format!("compacting segment {from}");
            let mut bytes = vec![0u8; end as usize];
            file.read_exact_at(&mut bytes, 0)
                .map_err(io_err(self.id, context()))?;
            // Decode without the lock, then decide what to keep under it, briefly.
            let mut records = Vec::new();
            let mut offset = SEGMENT_HEADER_BYTES as usize;
            while offset < end as usize {
                let header = record::decode(&bytes[offset..], nonce_from).map_err(|invalid| {
                    EngineError::Corrupt {
                        unit: self.id,
                        vsid: from,
                        offset: offset as u64,
                        reason: format!("{invalid:?} while compacting"),
                    }
                })?;
                records.push((offset, header));
                offset += header.record_bytes();
            }
            let keep: Vec<bool> = {
                let state = self.state.lock();
                records
                    .iter()
                    .map(|(_, header)| {
                        let in_history = meta::generation_at(&state.generations, header.vba)
                            == Some(header.generation);
                        in_history
                            && match header.kind {
                                Kind::Write => {
                                    let newest = state.index.vba_of(header.lba);
                                    newest == header.vba || newest > stable
                                }
                                Kind::Trim => {
                                    state.index.is_live_trim(header.vba)
                                        || state.index.max_vba_in(header.lba, header.blocks())
                                            > stable
                                }
                            }
                    })
                    .collect()
            };
            for ((offset, header), keep) in records.into_iter().zip(keep) {
                if !keep {
                    continue;
                }
                let size = header.record_bytes();
                let at = out.len();
                out.extend_from_slice(&bytes[offset..offset + size]);
                // One batch for the whole file: it is synced before it is renamed into place.
                record::reseal(&mut out[at..], nonce, SEGMENT_HEADER_BYTES as u32);
                moves.push((header.vba, from, at as u32, size as u64));
                report.records_copied += 1;
                report.bytes_copied += size as u64;
            }
        }

        let temp = format!("{}/{}.tmp", self.dir, vsid);
        let path = format!("{}/{}", self.dir, vsid.file_name());
        let context = || format!("writing compacted segment {vsid}");
        let file = self
            .backend
            .create(&temp)
            .map_err(io_err(self.id, context()))?;
        file.write_at(&out, 0).map_err(io_err(self.id, context()))?;
        file.sync().map_err(io_err(self.id, context()))?;
        self.backend
            .rename(&temp, &path)
            .map_err(io_err(self.id, context()))?;

        let freed: Vec<(Vsid, Segment)> = {
            let mut state = self.state.lock();
            state.segments.insert(
                vsid,
                Segment {
                    file,
                    nonce,
                    end: out.len() as u64,
                },
            );
            for (vba, from, offset, size) in moves {
                state
                    .index
                    .relocate(vba, from, Location { vsid, offset }, size);
            }
            group
                .iter()
                .map(|from| {
                    state.index.forget_segment(*from);
                    (
                        *from,
                        state
                            .segments
                            .remove(from)
                            .expect("candidates are segments"),
                    )
                })
                .collect()
        };
        for (from, _) in freed {
            let path = format!("{}/{}", self.dir, from.file_name());
            self.pool
                .give_back(&path)
                .map_err(io_err(self.id, format!("freeing segment {from}")))?;
            report.segments_freed += 1;
        }
        debug!(unit = %self.id, %vsid, ?report, "compacted");
        Ok(report)
    }
}
