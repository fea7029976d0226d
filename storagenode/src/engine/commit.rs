//! Writing a batch of records to the log: placement in segments, one write call and one sync per
//! segment touched, and publishing the result to the index.

use client::types::Vba;

use super::error::{io_err, Result};
use super::index::Location;
use super::record::{self, Op};
use super::segment::{SegmentHeader, Vsid, SEGMENT_HEADER_BYTES};
use super::unit::{Active, Cursor, Pending, Segment, State, Unit};

/// What a written batch produced: where each record landed, and any segments started for it.
pub(super) struct Written {
    locations: Vec<Location>,
    started: Vec<(Vsid, Segment)>,
}

impl Unit {
    /// Writes `batch` at the end of the log and syncs it. Runs without the state lock; the caller
    /// owns the cursor meanwhile.
    pub(super) fn write_batch(&self, cursor: &mut Cursor, batch: &[Pending]) -> Result<Written> {
        let segment_bytes = self.pool.segment_bytes();
        let mut written = Written {
            locations: Vec::with_capacity(batch.len()),
            started: Vec::new(),
        };
        // The batch buffer is kept from batch to batch, so the hot path allocates nothing.
        let mut buf = std::mem::take(&mut cursor.buf);
        buf.clear();
        for pending in batch {
            let size = pending.op.record_bytes();
            let fits = cursor
                .active
                .as_ref()
                .is_some_and(|a| a.offset + (buf.len() + size) as u64 <= segment_bytes);
            if !fits {
                if let Some(active) = cursor.active.as_mut() {
                    self.flush(active, &mut buf)?;
                }
                let vsid = Vsid(cursor.next_log_vsid);
                let active = self.start_segment(vsid, pending.vba)?;
                written.started.push((
                    vsid,
                    Segment {
                        file: active.file.clone(),
                        nonce: active.nonce,
                        end: active.offset,
                    },
                ));
                cursor.next_log_vsid += 1;
                cursor.active = Some(active);
            }
            let active = cursor.active.as_ref().expect("a segment was just ensured");
            let batch_start = active.offset;
            let at = buf.len();
            buf.resize(at + size, 0);
            record::encode(
                &mut buf[at..],
                &pending.op,
                pending.generation,
                pending.vba,
                active.nonce,
                batch_start as u32,
            );
            let offset = batch_start + at as u64;
            written.locations.push(Location {
                vsid: active.vsid,
                offset: offset as u32,
            });
        }
        if let Some(active) = cursor.active.as_mut() {
            self.flush(active, &mut buf)?;
        }
        cursor.buf = buf;
        Ok(written)
    }

    fn flush(&self, active: &mut Active, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let context = || format!("writing segment {}", active.vsid);
        active
            .file
            .write_at(buf, active.offset)
            .map_err(io_err(self.id, context()))?;
        if self.sync {
            active.file.sync().map_err(io_err(self.id, context()))?;
        }
        active.offset += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Takes a spare segment from the pool and makes it the unit's segment `vsid`, its first
    /// record to be `first_vba`. The header is durable before any record goes in.
    pub(super) fn start_segment(&self, vsid: Vsid, first_vba: Vba) -> Result<Active> {
        let context = || format!("starting segment {vsid}");
        let spare = self.pool.take().map_err(io_err(self.id, context()))?;
        let path = format!("{}/{}", self.dir, vsid.file_name());
        self.backend
            .rename(&spare, &path)
            .map_err(io_err(self.id, context()))?;
        let file = self
            .backend
            .open(&path)
            .map_err(io_err(self.id, context()))?;
        let nonce = rand::random::<u64>();
        let header = SegmentHeader {
            vsid,
            unit: self.id,
            nonce,
            first_vba,
        };
        file.write_at(&header.encode(), 0)
            .map_err(io_err(self.id, context()))?;
        file.sync().map_err(io_err(self.id, context()))?;
        Ok(Active {
            vsid,
            file,
            nonce,
            offset: SEGMENT_HEADER_BYTES,
        })
    }

    /// Makes a written batch visible: segments, index, durable VBA.
    pub(super) fn publish(&self, state: &mut State, batch: Vec<Pending>, written: Written) {
        for (vsid, segment) in written.started {
            state.segments.insert(vsid, segment);
        }
        let mut last = state.durable_vba;
        for (pending, location) in batch.into_iter().zip(written.locations) {
            let end = location.offset as u64 + pending.op.record_bytes() as u64;
            let segment = state
                .segments
                .get_mut(&location.vsid)
                .expect("records land in known segments");
            segment.end = segment.end.max(end);
            match pending.op {
                Op::Write { lba, .. } => state.index.add_write(pending.vba, lba, location),
                Op::Trim { lba, blocks } => {
                    state.index.add_trim(pending.vba, lba, blocks, location)
                }
            }
            assert!(pending.vba > last, "records are published in VBA order");
            last = pending.vba;
        }
        state.durable_vba = last;
        self.durable_vba
            .store(last.0, std::sync::atomic::Ordering::Release);
    }
}
