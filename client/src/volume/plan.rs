//! How a volume operation is cut into requests: checked against the volume's size and the block
//! size, split at slice boundaries and at the protocol's request size limit. Pure arithmetic.

use crate::types::{Lba, SliceIndex, BLOCK_BYTES};

use super::error::ClientError;

/// The fixed shape of a volume: its size and how it is cut into slices (every slice
/// `slice_bytes` long except perhaps the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    pub slice_bytes: u64,
}

/// One request's worth of a volume operation: a run of blocks inside one slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub slice: SliceIndex,
    /// First block, relative to the slice's storage unit.
    pub lba: Lba,
    pub len_bytes: u64,
    /// Where the part starts in the caller's buffer.
    pub buf_offset: u64,
}

impl Part {
    pub fn blocks(&self) -> u64 {
        self.len_bytes / BLOCK_BYTES
    }
}

impl Geometry {
    pub fn slice_count(&self) -> u64 {
        self.size_bytes.div_ceil(self.slice_bytes)
    }

    /// Checks that `len` bytes at `offset` are whole blocks inside the volume `volume`.
    pub fn check(&self, volume: &str, offset: u64, len: u64) -> Result<(), ClientError> {
        if offset % BLOCK_BYTES != 0 {
            return Err(ClientError::UnalignedOffset { offset });
        }
        if len % BLOCK_BYTES != 0 {
            return Err(ClientError::UnalignedLength { len });
        }
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.size_bytes);
        if len > 0 && !fits {
            return Err(ClientError::OutOfRange {
                volume: volume.to_string(),
                offset,
                len,
                size_bytes: self.size_bytes,
            });
        }
        Ok(())
    }

    /// Cuts `len` bytes at `offset` (already [`check`](Geometry::check)ed) into parts that each
    /// stay inside one slice and carry at most `max_part_bytes` (a multiple of the block size).
    pub fn split(&self, offset: u64, len: u64, max_part_bytes: u64) -> Vec<Part> {
        debug_assert!(max_part_bytes >= BLOCK_BYTES && max_part_bytes % BLOCK_BYTES == 0);
        debug_assert!(offset % BLOCK_BYTES == 0 && len % BLOCK_BYTES == 0);
        let end = offset + len;
        let mut parts = Vec::with_capacity(1);
        let mut pos = offset;
        while pos < end {
            let slice = pos / self.slice_bytes;
            let slice_start = slice * self.slice_bytes;
            let slice_end = (slice_start + self.slice_bytes).min(self.size_bytes);
            let part_end = end.min(slice_end).min(pos.saturating_add(max_part_bytes));
            parts.push(Part {
                slice: SliceIndex(
                    u32::try_from(slice).expect("slice counts are bounded by the volume map"),
                ),
                lba: Lba((pos - slice_start) / BLOCK_BYTES),
                len_bytes: part_end - pos,
                buf_offset: pos - offset,
            });
            pos = part_end;
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MAX_IO_BYTES;

    const K4: u64 = BLOCK_BYTES;
    const M1: u64 = 1 << 20;

    /// 10 MiB in slices of 4 MiB: the last slice is 2 MiB.
    fn geometry() -> Geometry {
        Geometry {
            size_bytes: 10 * M1,
            slice_bytes: 4 * M1,
        }
    }

    fn part(slice: u32, lba: u64, len_bytes: u64, buf_offset: u64) -> Part {
        Part {
            slice: SliceIndex(slice),
            lba: Lba(lba),
            len_bytes,
            buf_offset,
        }
    }

    #[test]
    fn one_block_maps_to_its_slice_and_lba() {
        let g = geometry();
        assert_eq!(g.slice_count(), 3);
        assert_eq!(g.split(0, K4, MAX_IO_BYTES), vec![part(0, 0, K4, 0)]);
        assert_eq!(
            g.split(4 * M1 + 3 * K4, K4, MAX_IO_BYTES),
            vec![part(1, 3, K4, 0)]
        );
        assert_eq!(
            g.split(10 * M1 - K4, K4, MAX_IO_BYTES),
            vec![part(2, (2 * M1 - K4) / K4, K4, 0)]
        );
    }

    #[test]
    fn io_is_split_at_slice_boundaries() {
        let g = geometry();
        let parts = g.split(4 * M1 - 2 * K4, 4 * K4, MAX_IO_BYTES);
        assert_eq!(
            parts,
            vec![
                part(0, 4 * M1 / K4 - 2, 2 * K4, 0),
                part(1, 0, 2 * K4, 2 * K4)
            ]
        );
    }

    #[test]
    fn io_is_split_at_the_request_size_limit() {
        let g = geometry();
        let parts = g.split(K4, 3 * M1, MAX_IO_BYTES);
        assert_eq!(
            parts,
            vec![
                part(0, 1, M1, 0),
                part(0, 1 + M1 / K4, M1, M1),
                part(0, 1 + 2 * M1 / K4, M1, 2 * M1),
            ]
        );
        assert!(parts.iter().all(|p| p.len_bytes <= MAX_IO_BYTES));
    }

    #[test]
    fn the_whole_volume_covers_every_byte_once() {
        let g = geometry();
        let parts = g.split(0, g.size_bytes, MAX_IO_BYTES);
        assert_eq!(parts.len(), 10);
        let mut next = 0;
        for p in &parts {
            assert_eq!(p.buf_offset, next);
            assert!(p.len_bytes <= MAX_IO_BYTES);
            let volume_offset = p.slice.0 as u64 * g.slice_bytes + p.lba.0 * K4;
            assert_eq!(volume_offset, p.buf_offset);
            next += p.len_bytes;
        }
        assert_eq!(next, g.size_bytes);
    }

    #[test]
    fn trims_take_one_part_per_slice() {
        let g = geometry();
        let parts = g.split(0, g.size_bytes, u64::MAX - u64::MAX % K4);
        assert_eq!(
            parts,
            vec![
                part(0, 0, 4 * M1, 0),
                part(1, 0, 4 * M1, 4 * M1),
                part(2, 0, 2 * M1, 8 * M1),
            ]
        );
    }

    #[test]
    fn misaligned_and_out_of_range_requests_are_refused_by_name() {
        let g = geometry();
        assert!(matches!(
            g.check("v", 100, K4),
            Err(ClientError::UnalignedOffset { offset: 100 })
        ));
        assert!(matches!(
            g.check("v", 0, 5000),
            Err(ClientError::UnalignedLength { len: 5000 })
        ));
        assert!(matches!(
            g.check("v", 10 * M1, K4),
            Err(ClientError::OutOfRange { offset, .. }) if offset == 10 * M1
        ));
        assert!(matches!(
            g.check("v", u64::MAX - K4 + 1, K4),
            Err(ClientError::OutOfRange { .. })
        ));
        let message = g.check("v", 100, K4).unwrap_err().to_string();
        assert!(message.contains("offset 100"), "{message}");
        assert!(g.check("v", 10 * M1 - K4, K4).is_ok());
        assert!(g.check("v", 0, g.size_bytes).is_ok());
    }

    #[test]
    fn zero_length_is_fine_anywhere_aligned() {
        let g = geometry();
        assert!(g.check("v", 20 * M1, 0).is_ok());
        assert!(g.split(20 * M1, 0, MAX_IO_BYTES).is_empty());
        assert!(g.check("v", 1, 0).is_err());
    }
}
