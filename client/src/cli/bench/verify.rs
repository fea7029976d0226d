//! `vbs bench --verify`: every 4 KiB block written carries a header that says where it belongs,
//! which write put it there and a checksum; every block read is checked against it, and against
//! the ledger of acknowledged writes, so a lost or misplaced write shows as a mismatch.
//!
//! Block layout (little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `VBSBENCH` |
//! | 8..16 | run id: random per run, so blocks left by an earlier run are told apart |
//! | 16..24 | the block's own byte offset in the volume |
//! | 24..32 | write sequence number (1, 2, ... per run; every block of one write shares it) |
//! | 32..4092 | filler |
//! | 4092..4096 | crc32c of bytes 0..4092 |

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use client::types::BLOCK_BYTES;

const MAGIC: [u8; 8] = *b"VBSBENCH";
const BLOCK: usize = BLOCK_BYTES as usize;
const CRC_AT: usize = BLOCK - 4;
const HEADER_BYTES: usize = 32;

/// Fills `block` (4096 bytes) with the header of a write of sequence `seq` at `offset`, the
/// start of `filler` and the checksum.
pub fn encode_block(block: &mut [u8], run: u64, offset: u64, seq: u64, filler: &[u8]) {
    assert_eq!(block.len(), BLOCK, "one block at a time");
    block[0..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&run.to_le_bytes());
    block[16..24].copy_from_slice(&offset.to_le_bytes());
    block[24..32].copy_from_slice(&seq.to_le_bytes());
    block[HEADER_BYTES..CRC_AT].copy_from_slice(&filler[..CRC_AT - HEADER_BYTES]);
    let crc = crc32c::crc32c(&block[..CRC_AT]);
    block[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes of filler [`encode_block`] takes.
pub const FILLER_BYTES: usize = CRC_AT - HEADER_BYTES;

/// What a block that passed the check holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// All zeroes: never written (fine unless a write was acknowledged).
    Unwritten,
    Written {
        seq: u64,
    },
}

/// A block that is not what the writes acknowledged say it must be.
#[derive(Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Zeroes where write `floor` was acknowledged.
    LostWrite {
        offset: u64,
        floor: u64,
    },
    /// Not a bench block at all (or its magic was damaged).
    Foreign {
        offset: u64,
    },
    Checksum {
        offset: u64,
    },
    /// A valid block that belongs at another offset.
    Misplaced {
        offset: u64,
        found: u64,
    },
    /// An older write than the newest acknowledged one (or one from an earlier run).
    Stale {
        offset: u64,
        found_seq: u64,
        floor: u64,
        same_run: bool,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::LostWrite { offset, floor } => write!(
                f,
                "block at offset {offset} reads as zeroes, but write {floor} to it was acknowledged"
            ),
            Mismatch::Foreign { offset } => {
                write!(f, "block at offset {offset} was not written by vbs bench")
            }
            Mismatch::Checksum { offset } => {
                write!(f, "block at offset {offset} fails its checksum")
            }
            Mismatch::Misplaced { offset, found } => write!(
                f,
                "block at offset {offset} holds the data written for offset {found}"
            ),
            Mismatch::Stale {
                offset,
                found_seq,
                floor,
                same_run,
            } => {
                let which = if *same_run {
                    format!("write {found_seq}")
                } else {
                    "a write of an earlier run".into()
                };
                write!(
                    f,
                    "block at offset {offset} holds {which}, but write {floor} to it was \
                     acknowledged before the read"
                )
            }
        }
    }
}

/// Checks one block read at `offset`. `floor` is the newest write to it that was acknowledged
/// before the read was sent: the block must hold that write or a newer one.
pub fn check_block(
    block: &[u8],
    run: u64,
    offset: u64,
    floor: Option<u64>,
) -> Result<Found, Mismatch> {
    assert_eq!(block.len(), BLOCK, "one block at a time");
    if block.iter().all(|b| *b == 0) {
        return match floor {
            Some(floor) => Err(Mismatch::LostWrite { offset, floor }),
            None => Ok(Found::Unwritten),
        };
    }
    if block[0..8] != MAGIC {
        return Err(Mismatch::Foreign { offset });
    }
    let stored = u32::from_le_bytes(block[CRC_AT..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&block[..CRC_AT]) != stored {
        return Err(Mismatch::Checksum { offset });
    }
    let field = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
    let (found_run, found_offset, seq) = (field(8), field(16), field(24));
    if found_offset != offset {
        return Err(Mismatch::Misplaced {
            offset,
            found: found_offset,
        });
    }
    match floor {
        Some(floor) if found_run != run || seq < floor => Err(Mismatch::Stale {
            offset,
            found_seq: seq,
            floor,
            same_run: found_run == run,
        }),
        _ => Ok(Found::Written { seq }),
    }
}

/// Per slot (one `bs`-sized, `bs`-aligned run of blocks): the newest acknowledged write, and
/// whether a write is in flight. Writes to one slot are kept one at a time, so the newest
/// acknowledged write is exactly what the slot must hold; concurrent overlapping writes would
/// leave either one, and nothing could be checked.
pub struct Ledger {
    shards: Vec<Mutex<HashMap<u64, Slot>>>,
}

#[derive(Default)]
struct Slot {
    acked: Option<u64>,
    writing: bool,
}

const SHARDS: usize = 64;

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, slot: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.shards[(slot % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `slot` for a write; `false` if a write to it is in flight.
    pub fn try_claim(&self, slot: u64) -> bool {
        let mut shard = self.shard(slot);
        let entry = shard.entry(slot).or_default();
        !std::mem::replace(&mut entry.writing, true)
    }

    /// Ends the claim on `slot`; `acked` is the write's sequence when it was acknowledged.
    pub fn release(&self, slot: u64, acked: Option<u64>) {
        let mut shard = self.shard(slot);
        let entry = shard.entry(slot).or_default();
        entry.writing = false;
        if let Some(seq) = acked {
            entry.acked = Some(entry.acked.map_or(seq, |old| old.max(seq)));
        }
    }

    /// The newest acknowledged write to `slot`.
    pub fn floor(&self, slot: u64) -> Option<u64> {
        self.shard(slot).get(&slot).and_then(|s| s.acked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: u64 = 0xfeed;

    fn block(offset: u64, seq: u64) -> Vec<u8> {
        let mut block = vec![0u8; BLOCK];
        let filler: Vec<u8> = (0..FILLER_BYTES).map(|i| (i * 7) as u8).collect();
        encode_block(&mut block, RUN, offset, seq, &filler);
        block
    }

    #[test]
    fn a_block_checks_against_its_own_header() {
        let b = block(8192, 5);
        assert_eq!(
            check_block(&b, RUN, 8192, None),
            Ok(Found::Written { seq: 5 })
        );
        assert_eq!(
            check_block(&b, RUN, 8192, Some(5)),
            Ok(Found::Written { seq: 5 })
        );
        assert_eq!(
            check_block(&b, RUN, 8192, Some(3)),
            Ok(Found::Written { seq: 5 })
        );
    }

    #[test]
    fn zeroes_are_fine_only_where_nothing_was_acknowledged() {
        let zero = vec![0u8; BLOCK];
        assert_eq!(check_block(&zero, RUN, 0, None), Ok(Found::Unwritten));
        assert_eq!(
            check_block(&zero, RUN, 0, Some(2)),
            Err(Mismatch::LostWrite {
                offset: 0,
                floor: 2
            })
        );
    }

    #[test]
    fn damage_is_caught() {
        let mut b = block(4096, 1);
        b[100] ^= 1;
        assert_eq!(
            check_block(&b, RUN, 4096, None),
            Err(Mismatch::Checksum { offset: 4096 })
        );
        assert_eq!(
            check_block(&block(4096, 1), RUN, 8192, None),
            Err(Mismatch::Misplaced {
                offset: 8192,
                found: 4096
            })
        );
        let foreign = vec![1u8; BLOCK];
        assert_eq!(
            check_block(&foreign, RUN, 0, None),
            Err(Mismatch::Foreign { offset: 0 })
        );
    }

    #[test]
    fn older_writes_than_acknowledged_are_caught() {
        let b = block(0, 3);
        let stale = check_block(&b, RUN, 0, Some(4)).unwrap_err();
        assert!(matches!(
            stale,
            Mismatch::Stale {
                found_seq: 3,
                floor: 4,
                same_run: true,
                ..
            }
        ));
        assert!(stale.to_string().contains("write 4"), "{stale}");
        // A block of an earlier run where this run acknowledged a write: that write was lost.
        assert!(matches!(
            check_block(&b, RUN + 1, 0, Some(1)),
            Err(Mismatch::Stale {
                same_run: false,
                ..
            })
        ));
        // Without a write acknowledged in this run, an earlier run's block is fine.
        assert!(check_block(&b, RUN + 1, 0, None).is_ok());
    }

    #[test]
    fn the_ledger_allows_one_write_per_slot_and_keeps_the_newest() {
        let ledger = Ledger::new();
        assert_eq!(ledger.floor(9), None);
        assert!(ledger.try_claim(9));
        assert!(!ledger.try_claim(9));
        assert!(ledger.try_claim(9 + SHARDS as u64));
        ledger.release(9, Some(4));
        assert_eq!(ledger.floor(9), Some(4));
        assert!(ledger.try_claim(9));
        ledger.release(9, None);
        assert_eq!(ledger.floor(9), Some(4));
        ledger.release(9, Some(2));
        assert_eq!(ledger.floor(9), Some(4));
    }
}
