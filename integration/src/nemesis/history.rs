//! What the clients did and saw: every write (its payload, start, end and outcome, and which
//! primary acknowledged it) and every read (start, end, and which write each block held).
//!
//! Blocks are self-describing: a written block carries its volume block number, the writing
//! client and that client's sequence number, and the rest of it is a pattern derived from them,
//! so a read tells exactly which write it returned, or that it returned something no write
//! produced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use client::volume::WriteAck;
use vbs_wire::types::BLOCK_BYTES;

const BLOCK: usize = BLOCK_BYTES as usize;
const MAGIC: &[u8; 8] = b"VBSNEMS1";
/// magic, block number u64, client u32, sequence u64.
const HEADER_BYTES: usize = 28;

/// One write operation of one client: its sequence number is unique per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId {
    pub client: u32,
    pub seq: u64,
}

impl std::fmt::Display for WriteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}#{}", self.client, self.seq)
    }
}

/// What a read found in one block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockValue {
    /// Never written (or every write to it was lost): zeroes.
    Zero,
    Written(WriteId),
    /// Bytes no write produced, or the block of another offset.
    Corrupt(String),
}

/// The content of volume block `block` as write `id` writes it.
pub fn encode_block(block: u64, id: WriteId) -> [u8; BLOCK] {
    let mut data = [0u8; BLOCK];
    data[..8].copy_from_slice(MAGIC);
    data[8..16].copy_from_slice(&block.to_le_bytes());
    data[16..20].copy_from_slice(&id.client.to_le_bytes());
    data[20..28].copy_from_slice(&id.seq.to_le_bytes());
    fill(&mut data[HEADER_BYTES..], block, id);
    data
}

/// A pattern that differs for every (block, write): a torn or misplaced block does not match.
fn fill(out: &mut [u8], block: u64, id: WriteId) {
    let mut x = block
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(id.client) << 40)
        .wrapping_add(id.seq)
        | 1;
    for chunk in out.chunks_mut(8) {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// `blocks` consecutive blocks from volume block `first`, all written by `id`.
pub fn payload(first: u64, blocks: u64, id: WriteId) -> Bytes {
    let mut data = Vec::with_capacity(blocks as usize * BLOCK);
    for block in first..first + blocks {
        data.extend_from_slice(&encode_block(block, id));
    }
    Bytes::from(data)
}

/// Which write the data of volume block `block` is.
pub fn decode_block(block: u64, data: &[u8]) -> BlockValue {
    if data.iter().all(|b| *b == 0) {
        return BlockValue::Zero;
    }
    if data.len() != BLOCK || &data[..8] != MAGIC {
        return BlockValue::Corrupt("no block header".into());
    }
    let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
    let id = WriteId {
        client: u32::from_le_bytes(data[16..20].try_into().expect("4 bytes")),
        seq: u64_at(20),
    };
    let written_for = u64_at(8);
    if written_for != block {
        return BlockValue::Corrupt(format!("holds block {written_for} of write {id}"));
    }
    if data[..] != encode_block(block, id)[..] {
        return BlockValue::Corrupt(format!("the content of write {id} is damaged"));
    }
    BlockValue::Written(id)
}

/// How an operation ended.
#[derive(Clone, Debug)]
pub enum Outcome<T> {
    Ok(T),
    /// Refused for a reason that means it was not applied (a malformed request).
    Failed(String),
    /// An error after which it may or may not have been applied (a timeout, a retry deadline).
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct WriteEvent {
    pub id: WriteId,
    pub first_block: u64,
    pub blocks: u64,
    /// Microseconds since the run started.
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome<Vec<WriteAck>>,
}

#[derive(Clone, Debug)]
pub struct ReadEvent {
    pub client: u32,
    pub first_block: u64,
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome<Vec<BlockValue>>,
    /// The read of every block after the faults were healed.
    pub is_final: bool,
}

/// The history of a run, appended to by every client.
pub struct History {
    epoch: Instant,
    writes: Mutex<Vec<WriteEvent>>,
    reads: Mutex<Vec<ReadEvent>>,
    blocks_per_slice: u64,
    /// Per slice, when an operation on it last succeeded (microseconds since the epoch).
    served: Vec<AtomicU64>,
}

impl History {
    /// The history of clients of a volume of `slices` slices of `blocks_per_slice` blocks.
    pub fn new(epoch: Instant, slices: u32, blocks_per_slice: u64) -> History {
        History {
            epoch,
            writes: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
            blocks_per_slice,
            served: (0..slices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Notes that an operation on `blocks` blocks from `first` succeeded at `at_us`.
    fn served(&self, first: u64, blocks: u64, at_us: u64) {
        let last = (first + blocks.max(1) - 1) / self.blocks_per_slice;
        for slice in first / self.blocks_per_slice..=last {
            if let Some(served) = self.served.get(slice as usize) {
                served.fetch_max(at_us, Ordering::Relaxed);
            }
        }
    }

    /// Whether an operation on every slice succeeded after `since_us`.
    pub fn every_slice_served_since(&self, since_us: u64) -> bool {
        self.served
            .iter()
            .all(|served| served.load(Ordering::Relaxed) > since_us)
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn record_write(&self, event: WriteEvent) {
        if matches!(event.outcome, Outcome::Ok(_)) {
            self.served(event.first_block, event.blocks, event.end_us);
        }
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    pub fn record_read(&self, event: ReadEvent) {
        if let Outcome::Ok(values) = &event.outcome {
            self.served(event.first_block, values.len() as u64, event.end_us);
        }
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    pub fn writes(&self) -> Vec<WriteEvent> {
        self.writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn reads(&self) -> Vec<ReadEvent> {
        self.reads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Every operation of `writes` and `reads` as a line of tab-separated fields (kind, client,
/// first block, blocks, start and end in microseconds, outcome), in order of start, for reading
/// a failed run.
pub fn write_tsv(
    writes: &[WriteEvent],
    reads: &[ReadEvent],
    path: &std::path::Path,
) -> std::io::Result<()> {
    fn describe<T>(outcome: &Outcome<T>) -> String {
        match outcome {
            Outcome::Ok(_) => "ok".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::Unknown(e) => format!("unknown: {e}"),
        }
    }
    let mut lines: Vec<(u64, String)> = writes
        .iter()
        .map(|w| {
            let line = format!(
                "write\t{}\t{}\t{}\t{}\t{}\t{}",
                w.id,
                w.first_block,
                w.blocks,
                w.start_us,
                w.end_us,
                describe(&w.outcome)
            );
            (w.start_us, line)
        })
        .collect();
    lines.extend(reads.iter().map(|r| {
        let blocks = match &r.outcome {
            Outcome::Ok(values) => values.len().to_string(),
            _ => "?".into(),
        };
        let kind = if r.is_final { "final-read" } else { "read" };
        let line = format!(
            "{kind}\tc{}\t{}\t{blocks}\t{}\t{}\t{}",
            r.client,
            r.first_block,
            r.start_us,
            r.end_us,
            describe(&r.outcome)
        );
        (r.start_us, line)
    }));
    lines.sort_by_key(|(start, _)| *start);
    let mut text = String::from("kind\tclient\tfirst_block\tblocks\tstart_us\tend_us\toutcome\n");
    for (_, line) in lines {
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_say_which_write_they_are() {
        let id = WriteId { client: 3, seq: 77 };
        let data = payload(10, 2, id);
        assert_eq!(decode_block(10, &data[..BLOCK]), BlockValue::Written(id));
        assert_eq!(decode_block(11, &data[BLOCK..]), BlockValue::Written(id));
        assert!(matches!(
            decode_block(12, &data[..BLOCK]),
            BlockValue::Corrupt(_)
        ));
        let mut torn = data[..BLOCK].to_vec();
        torn[BLOCK - 1] ^= 1;
        assert!(matches!(decode_block(10, &torn), BlockValue::Corrupt(_)));
        assert_eq!(decode_block(10, &[0u8; BLOCK]), BlockValue::Zero);
    }
}
