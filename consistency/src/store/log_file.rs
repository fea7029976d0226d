//! The on-disk format of the Raft log: one append-only file.
//!
//! ```text
//! header:  magic "vbsrlog\0" (8) | version u32 LE | reserved u32
//! record:  payload length u32 LE | crc32c(payload) u32 LE | payload (JSON of LogRecord)
//! ```
//!
//! A crash can leave the last record torn (short, or with a bad checksum, or followed only by
//! zeros where the file grew before its data landed). Such a tail was never acknowledged, since
//! the append's callback fires only after fdatasync, so [`scan`] cuts it off. A bad record with
//! valid-looking data after it is corruption of acknowledged entries and is refused.

use serde::{Deserialize, Serialize};

use crate::raft_types::{Entry, LogId};

pub const MAGIC: &[u8; 8] = b"vbsrlog\0";
pub const VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 16;
const RECORD_HEADER_BYTES: usize = 8;
/// Largest record accepted; openraft batches entries, but one entry (a volume placement) stays
/// far below this.
pub const MAX_RECORD_BYTES: usize = 64 << 20;

/// One record of the log file, as read.
#[derive(Debug, Deserialize)]
pub enum LogRecord {
    Entry(Entry),
    /// Every entry up to this one was purged; written first when the file is rewritten.
    Purged(LogId),
}

/// One record of the log file, to be written; encodes exactly as [`LogRecord`] decodes.
#[derive(Debug, Serialize)]
pub enum LogRecordRef<'a> {
    Entry(&'a Entry),
    Purged(&'a LogId),
}

#[derive(Debug, thiserror::Error)]
pub enum LogFileError {
    #[error("not a vbs Raft log file (bad magic)")]
    BadMagic,
    #[error("Raft log format version {0} is not supported (expected {VERSION})")]
    BadVersion(u32),
    #[error("Raft log record at byte {offset} is corrupt ({reason}) and is followed by more data")]
    Corrupt { offset: usize, reason: String },
    #[error("encoding a Raft log record: {0}")]
    Encode(#[from] serde_json::Error),
}

pub fn header() -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends the encoding of `record` to `out`.
pub fn encode(out: &mut Vec<u8>, record: &LogRecordRef<'_>) -> Result<(), LogFileError> {
    let payload = serde_json::to_vec(record)?;
    assert!(
        payload.len() <= MAX_RECORD_BYTES,
        "a Raft log record of {} bytes",
        payload.len()
    );
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// The records of a log file, each with its byte offset.
#[derive(Debug)]
pub struct Scanned {
    pub records: Vec<(u64, LogRecord)>,
    /// Where the valid records end; the file is cut here before appending.
    pub valid_end: u64,
    /// Why the tail past `valid_end` was cut, if there was one.
    pub torn_tail: Option<String>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Parses a whole log file (its header included).
pub fn scan(bytes: &[u8]) -> Result<Scanned, LogFileError> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(LogFileError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(LogFileError::BadVersion(version));
    }
    let mut records = Vec::new();
    let mut at = HEADER_BYTES;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = |reason: String| -> Result<Scanned, LogFileError> {
            Ok(Scanned {
                records: Vec::new(),
                valid_end: at as u64,
                torn_tail: Some(reason),
            })
        };
        let only_zeros_follow =
            |from: usize| bytes[from.min(bytes.len())..].iter().all(|b| *b == 0);
        let outcome = if only_zeros_follow(at) {
            // The file grew (its size reached the disk) but the data of the append did not.
            torn(format!("{} zero bytes", rest.len()))
        } else if rest.len() < RECORD_HEADER_BYTES {
            torn(format!("{} bytes of a record header", rest.len()))
        } else {
            let len = u32_at(rest, 0) as usize;
            let crc = u32_at(rest, 4);
            let end = RECORD_HEADER_BYTES + len;
            if len > MAX_RECORD_BYTES {
                Err(LogFileError::Corrupt {
                    offset: at,
                    reason: format!("length {len}"),
                })
            } else if end > rest.len() {
                torn(format!(
                    "record of {len} bytes with {} bytes left",
                    rest.len()
                ))
            } else if crc32c::crc32c(&rest[RECORD_HEADER_BYTES..end]) != crc {
                if at + end == bytes.len() || only_zeros_follow(at + end) {
                    torn("checksum mismatch in the last record".to_string())
                } else {
                    Err(LogFileError::Corrupt {
                        offset: at,
                        reason: "checksum mismatch".into(),
                    })
                }
            } else {
                let record: LogRecord = serde_json::from_slice(&rest[RECORD_HEADER_BYTES..end])
                    .map_err(|e| LogFileError::Corrupt {
                        offset: at,
                        reason: e.to_string(),
                    })?;
                records.push((at as u64, record));
                at += end;
                continue;
            }
        };
        let mut scanned = outcome?;
        scanned.records = records;
        return Ok(scanned);
    }
    Ok(Scanned {
        records,
        valid_end: at as u64,
        torn_tail: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::blank_ent;

    fn file_of(indexes: &[u64]) -> Vec<u8> {
        let mut bytes = header().to_vec();
        for i in indexes {
            encode(&mut bytes, &LogRecordRef::Entry(&blank_ent(1, 1, *i))).expect("encodes");
        }
        bytes
    }

    fn indexes(scanned: &Scanned) -> Vec<u64> {
        scanned
            .records
            .iter()
            .map(|(_, r)| match r {
                LogRecord::Entry(e) => e.log_id.index,
                LogRecord::Purged(id) => id.index,
            })
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let bytes = file_of(&[1, 2, 3]);
        let scanned = scan(&bytes).expect("valid");
        assert_eq!(indexes(&scanned), [1, 2, 3]);
        assert_eq!(scanned.valid_end, bytes.len() as u64);
        assert!(scanned.torn_tail.is_none());
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let whole = file_of(&[1, 2, 3]);
        let two = file_of(&[1, 2]).len();
        for cut in [two + 3, two + 9, whole.len() - 1] {
            let scanned = scan(&whole[..cut]).expect("torn tail is not an error");
            assert_eq!(indexes(&scanned), [1, 2], "cut at {cut}");
            assert_eq!(scanned.valid_end, two as u64);
            assert!(scanned.torn_tail.is_some());
        }
        // The file grew but the last record's bytes never landed.
        let mut zeroed = whole.clone();
        zeroed[two..].fill(0);
        let scanned = scan(&zeroed).expect("zeros are a torn tail");
        assert_eq!(indexes(&scanned), [1, 2]);
        // A flipped bit in the last record.
        let mut flipped = whole.clone();
        *flipped.last_mut().expect("non-empty") ^= 1;
        assert_eq!(indexes(&scan(&flipped).expect("torn")), [1, 2]);
    }

    #[test]
    fn corruption_before_the_tail_is_refused() {
        let mut bytes = file_of(&[1, 2, 3]);
        let one = file_of(&[1]).len();
        bytes[one + RECORD_HEADER_BYTES + 2] ^= 0x40;
        assert!(matches!(scan(&bytes), Err(LogFileError::Corrupt { .. })));
        let mut bad = file_of(&[1]);
        bad[0] = b'x';
        assert!(matches!(scan(&bad), Err(LogFileError::BadMagic)));
    }
}
