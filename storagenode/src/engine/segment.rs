//! Segment files: the header that names a segment, and the scan that reads its records back.
//!
//! A segment is one file of a device's log, shared by all the units of the device. Log segments
//! are taken from the device's pool of pre-written files, so a write into them never changes the
//! file's size or extents and fdatasync has only data to flush; compaction writes its output as
//! ordinary files. The first [`SEGMENT_HEADER_BYTES`] hold the header, then records follow back to
//! back.
//!
//! Log segments get VSIDs counting up from 1 in the order they are started; compaction output
//! takes VSIDs from [`COMPACTED_VSID_BASE`] up, so it never collides with them.

use std::fmt;
use std::io;

use super::backend::BlockFile;
use super::record::{self, Header, Invalid, HEADER_BYTES};

pub const SEGMENT_HEADER_BYTES: u64 = 4096;
const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"VBSSEGMT");
const SEGMENT_VERSION: u32 = 3;
/// Header fields occupy the first bytes of the header block; the rest is zero.
const SEGMENT_FIELDS_BYTES: usize = 64;
/// The most bytes one group-commit batch writes with a single write call. Recovery relies on it:
/// a batch torn by a crash lies within this many bytes of its start.
pub const MAX_BATCH_BYTES: usize = 2 << 20;
/// How much is read per call while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(MAX_BATCH_BYTES >= record::WRITE_RECORD_BYTES);
const _: () = assert!(SCAN_CHUNK_BYTES >= record::WRITE_RECORD_BYTES);

/// Virtual segment id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vsid(pub u32);

/// VSIDs at and above this belong to compaction output.
pub const COMPACTED_VSID_BASE: u32 = 1 << 31;

impl Vsid {
    pub fn is_log(self) -> bool {
        self.0 < COMPACTED_VSID_BASE
    }

    /// The file name of the segment inside the log directory.
    pub fn file_name(self) -> String {
        format!("{:08x}.seg", self.0)
    }

    pub fn from_file_name(name: &str) -> Option<Vsid> {
        let hex = name.strip_suffix(".seg")?;
        if hex.len() != 8 {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(Vsid)
    }
}

impl fmt::Display for Vsid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// What the header block of a segment says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub vsid: Vsid,
    /// Records of this incarnation of the file carry this nonce.
    pub nonce: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        block[0..8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        block[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        block[16..20].copy_from_slice(&self.vsid.0.to_le_bytes());
        block[24..32].copy_from_slice(&self.nonce.to_le_bytes());
        let crc = crc32c::crc32c(&block[..SEGMENT_FIELDS_BYTES]);
        block[12..16].copy_from_slice(&crc.to_le_bytes());
        block
    }

    pub fn decode(block: &[u8]) -> Result<SegmentHeader, &'static str> {
        if block.len() < SEGMENT_FIELDS_BYTES {
            return Err("segment header is cut short");
        }
        let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
        if u64_at(0) != SEGMENT_MAGIC {
            return Err("no segment header (bad magic)");
        }
        match u32_at(8) {
            SEGMENT_VERSION => {}
            1 => {
                return Err(
                    "a segment of format 1 (one log per unit), which this vbs does not read",
                )
            }
            2 => {
                return Err(
                    "a segment of format 2 (records without a header checksum), which this vbs \
                     does not read",
                )
            }
            _ => return Err("unknown segment format version"),
        }
        let mut fields = [0u8; SEGMENT_FIELDS_BYTES];
        fields.copy_from_slice(&block[..SEGMENT_FIELDS_BYTES]);
        fields[12..16].fill(0);
        if crc32c::crc32c(&fields) != u32_at(12) {
            return Err("segment header checksum mismatch");
        }
        Ok(SegmentHeader {
            vsid: Vsid(u32_at(16)),
            nonce: u64_at(24),
        })
    }
}

pub fn read_header(file: &dyn BlockFile) -> io::Result<Result<SegmentHeader, &'static str>> {
    let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
    let n = file.read_at(&mut block, 0)?;
    Ok(SegmentHeader::decode(&block[..n]))
}

/// A record found by a scan, and where.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    pub header: Header,
    pub offset: u64,
    /// The record's data fails its checksum, but its header reads: it is the unit's record all
    /// the same, to be indexed, and repaired from another copy when read.
    pub damaged: bool,
}

/// The part of a segment after its last valid record that recovery must cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub offset: u64,
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Offset just after the last valid record.
    pub end: u64,
    pub torn: Option<TornTail>,
    /// The units named by the records of a torn tail whose headers still read: the copies that
    /// may have lost records in it.
    pub torn_units: Vec<u32>,
}

/// Damage that is not a torn tail: data that was durable is no longer readable.
#[derive(Debug, PartialEq, Eq)]
pub struct Corruption {
    pub offset: u64,
    pub reason: String,
}

/// Reads sequentially through a file in large chunks, handing out byte ranges by offset.
struct Reader<'a> {
    file: &'a dyn BlockFile,
    len: u64,
    buf: Vec<u8>,
    buf_offset: u64,
    buf_len: usize,
}

impl<'a> Reader<'a> {
    fn new(file: &'a dyn BlockFile, len: u64) -> Reader<'a> {
        Reader {
            file,
            len,
            buf: vec![0u8; SCAN_CHUNK_BYTES],
            buf_offset: 0,
            buf_len: 0,
        }
    }

    /// Up to `want` bytes at `offset` (fewer at the end of the file).
    fn bytes(&mut self, offset: u64, want: usize) -> io::Result<&[u8]> {
        let want = want.min(self.len.saturating_sub(offset) as usize);
        let cached = offset >= self.buf_offset
            && offset + want as u64 <= self.buf_offset + self.buf_len as u64;
        if !cached {
            if want > self.buf.len() {
                self.buf.resize(want, 0);
            }
            let chunk = self.buf.len().min((self.len - offset) as usize);
            self.file.read_exact_at(&mut self.buf[..chunk], offset)?;
            self.buf_offset = offset;
            self.buf_len = chunk;
        }
        let start = (offset - self.buf_offset) as usize;
        Ok(&self.buf[start..start + want])
    }

    /// The record at `offset`, which failed its check, when it is damage to durable data rather
    /// than a tear: its header reads (its own checksum holds), so whose it is and how long is
    /// known, and the log goes on right after it, with a valid record (of a later batch, in the
    /// newest log segment: a record of the same batch means the batch was torn) or, in a sealed
    /// segment, with no record at all.
    fn damaged(&mut self, offset: u64, nonce: u64, last_log: bool) -> io::Result<Option<Header>> {
        let Ok(header) = record::decode_header(self.bytes(offset, HEADER_BYTES)?, nonce) else {
            return Ok(None);
        };
        let next = offset + header.record_bytes() as u64;
        if next > self.len {
            return Ok(None);
        }
        Ok(match self.record(next, nonce)? {
            Ok(following) => {
                let same_batch = u64::from(following.batch_start) <= offset;
                (!(last_log && same_batch)).then_some(header)
            }
            Err(Invalid::NoRecord | Invalid::OtherNonce) if !last_log => Some(header),
            Err(_) => None,
        })
    }

    /// The record at `offset`, fully checked.
    fn record(&mut self, offset: u64, nonce: u64) -> io::Result<Result<Header, Invalid>> {
        let head = self.bytes(offset, HEADER_BYTES)?;
        let header = match record::decode_header(head, nonce) {
            Ok(header) => header,
            Err(invalid) => return Ok(Err(invalid)),
        };
        if header.record_bytes() > MAX_BATCH_BYTES {
            return Ok(Err(Invalid::Corrupt("record larger than any batch")));
        }
        let bytes = self.bytes(offset, header.record_bytes())?;
        Ok(record::decode(bytes, nonce))
    }
}

/// Reads every record of a segment. `last_log` says whether this is the newest log segment, the
/// only one whose end can have been torn by a crash; `end_hint` bounds the search (the file length).
///
/// A record whose data is damaged but whose header reads, followed by where the log goes on, is
/// listed as damaged (see `Reader::damaged`). Otherwise the log ends at the first offset that
/// holds no valid record. What lies after it decides:
/// - nothing valid: the end of the log (zeroes, a recycled file's old records) or a torn tail;
/// - a valid record whose batch started at or before that offset, in the newest log segment: the
///   crash tore one group-commit batch, none of which was acknowledged, so it is a torn tail too;
/// - any other valid record: bytes that were durable were damaged, and whose they were cannot be
///   told, which is corruption.
pub fn scan(
    file: &dyn BlockFile,
    nonce: u64,
    last_log: bool,
) -> io::Result<Result<Scan, Corruption>> {
    scan_from(file, nonce, last_log, SEGMENT_HEADER_BYTES)
}

/// [`scan`] from `from`, the offset of a record (or of the end of the log) known from elsewhere.
pub fn scan_from(
    file: &dyn BlockFile,
    nonce: u64,
    last_log: bool,
    from: u64,
) -> io::Result<Result<Scan, Corruption>> {
    let len = file.size()?;
    let mut reader = Reader::new(file, len);
    let mut records = Vec::new();
    let mut offset = from;
    let stop = loop {
        if offset >= len {
            break None;
        }
        match reader.record(offset, nonce)? {
            Ok(header) => {
                records.push(Found {
                    header,
                    offset,
                    damaged: false,
                });
                offset += header.record_bytes() as u64;
            }
            Err(invalid) => match reader.damaged(offset, nonce, last_log)? {
                Some(header) => {
                    records.push(Found {
                        header,
                        offset,
                        damaged: true,
                    });
                    offset += header.record_bytes() as u64;
                }
                None => break Some(invalid),
            },
        }
    };
    let end = offset;
    let Some(invalid) = stop else {
        return Ok(Ok(Scan {
            records,
            end,
            torn: None,
            torn_units: Vec::new(),
        }));
    };
    let mut torn_units = Vec::new();
    if let Ok(header) = record::decode_header(reader.bytes(end, HEADER_BYTES)?, nonce) {
        torn_units.push(header.unit);
    }
    // Look for any valid record further on. Records are 8-byte aligned, so step by 8.
    let mut torn_batch_follows = false;
    let mut probe = end + 8;
    while probe + HEADER_BYTES as u64 <= len {
        let head = reader.bytes(probe, HEADER_BYTES)?;
        if u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) == record::RECORD_MAGIC {
            if let Ok(header) = reader.record(probe, nonce)? {
                let same_batch = u64::from(header.batch_start) <= end;
                torn_batch_follows = true;
                torn_units.push(header.unit);
                if !(last_log && same_batch) {
                    return Ok(Err(Corruption {
                        offset: end,
                        reason: format!(
                            "{} here, but a valid record (VBA {}) follows at offset {probe}",
                            describe(invalid),
                            header.vba
                        ),
                    }));
                }
            }
        }
        probe += 8;
    }
    let torn = match invalid {
        _ if torn_batch_follows => Some(TornTail {
            offset: end,
            reason: "batch torn by a crash",
        }),
        Invalid::NoRecord | Invalid::OtherNonce => None,
        Invalid::Corrupt(_) | Invalid::Truncated if !last_log => {
            return Ok(Err(Corruption {
                offset: end,
                reason: describe(invalid).to_string(),
            }));
        }
        Invalid::Corrupt(reason) => Some(TornTail {
            offset: end,
            reason,
        }),
        Invalid::Truncated => Some(TornTail {
            offset: end,
            reason: "record cut short",
        }),
    };
    if torn.is_none() {
        torn_units.clear();
    }
    torn_units.sort_unstable();
    torn_units.dedup();
    Ok(Ok(Scan {
        records,
        end,
        torn,
        torn_units,
    }))
}

/// Every record of a segment up to `end`, the published end of its log (a batch may be in flight
/// past it): for rereading a segment that is in use. A record whose header reads is listed, as
/// damaged if its data does not; anything else invalid before `end` is corruption.
pub fn records_until(
    file: &dyn BlockFile,
    nonce: u64,
    end: u64,
) -> io::Result<Result<Vec<Found>, Corruption>> {
    let mut reader = Reader::new(file, end.min(file.size()?));
    let mut records = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < end {
        let (header, damaged) = match reader.record(offset, nonce)? {
            Ok(header) => (header, false),
            Err(invalid) => match record::decode_header(reader.bytes(offset, HEADER_BYTES)?, nonce)
            {
                Ok(header) if offset + header.record_bytes() as u64 <= end => (header, true),
                _ => {
                    return Ok(Err(Corruption {
                        offset,
                        reason: describe(invalid).to_string(),
                    }))
                }
            },
        };
        records.push(Found {
            header,
            offset,
            damaged,
        });
        offset += header.record_bytes() as u64;
    }
    Ok(Ok(records))
}

fn describe(invalid: Invalid) -> &'static str {
    match invalid {
        Invalid::NoRecord => "no record",
        Invalid::OtherNonce => "a record of an earlier use of the file",
        Invalid::Corrupt(reason) => reason,
        Invalid::Truncated => "a record cut short",
    }
}

/// Zeroes the bytes a torn batch may have left after `offset`, so that no part of it can be read
/// as a record once new records are written over its start.
pub fn zero_torn_tail(file: &dyn BlockFile, offset: u64) -> io::Result<()> {
    let len = file.size()?;
    let end = len.min(offset + MAX_BATCH_BYTES as u64);
    if end > offset {
        file.write_at(&vec![0u8; (end - offset) as usize], offset)?;
    }
    file.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_headers_round_trip_and_detect_damage() {
        let header = SegmentHeader {
            vsid: Vsid(3),
            nonce: 0xdead_beef,
        };
        let mut block = header.encode();
        assert_eq!(SegmentHeader::decode(&block), Ok(header));
        block[20] ^= 1;
        assert!(SegmentHeader::decode(&block).is_err());
        assert!(SegmentHeader::decode(&[0u8; 4096]).is_err());
    }

    #[test]
    fn vsid_file_names_round_trip() {
        for vsid in [Vsid(1), Vsid(COMPACTED_VSID_BASE + 5)] {
            assert_eq!(Vsid::from_file_name(&vsid.file_name()), Some(vsid));
        }
        assert!(Vsid(1).is_log());
        assert!(!Vsid(COMPACTED_VSID_BASE).is_log());
        assert_eq!(Vsid::from_file_name("unit.json"), None);
        assert_eq!(Vsid::from_file_name("zz.seg"), None);
    }
}
