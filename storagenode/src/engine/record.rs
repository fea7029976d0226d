//! The on-disk record: one write of one block, or one trim of a range, of one unit, in the
//! device's log.
//!
//! Layout (little-endian, [`HEADER_BYTES`] bytes, then `length` bytes of data for a write):
//!
//! | offset | field | |
//! | --- | --- | --- |
//! | 0 | magic `u32` | [`RECORD_MAGIC`] |
//! | 4 | format version `u8` | [`RECORD_VERSION`] |
//! | 5 | kind `u8` | 1 write, 2 trim |
//! | 6 | flags `u16` | 0 |
//! | 8 | crc32c `u32` | over the header (this field zeroed) and the data |
//! | 12 | batch start `u32` | segment offset where this record's group-commit batch begins |
//! | 16 | segment nonce `u64` | the incarnation of the segment file that holds the record |
//! | 24 | generation `u64` | |
//! | 32 | VBA `u64` | |
//! | 40 | LBA `u64` | first block |
//! | 48 | length `u64` | bytes written (one block) or trimmed |
//! | 56 | unit number `u32` | the device-local number of the unit the record belongs to |
//! | 60 | header crc32c `u32` | over bytes 0..60, the crc32c field zeroed |
//!
//! The nonce ties a record to one life of its segment file, so records left over in a recycled file
//! never read as valid. The batch start lets recovery tell a torn last batch (cut off) from
//! damage to data that was already durable: see `segment::scan`. The header's own checksum says
//! whose a damaged record is (unit, VBA, LBA, length) when only its data is damaged, so that
//! recovery can index it for repair instead of stopping at it.

use bytes::Bytes;
use vbs_wire::proto::RecordBody;
use vbs_wire::types::{Generation, Lba, Vba, BLOCK_BYTES};

pub const RECORD_MAGIC: u32 = 0x5253_4256; // "VBSR" when read as bytes
pub const RECORD_VERSION: u8 = 3;
pub const HEADER_BYTES: usize = 64;
/// The header bytes its own checksum covers; the checksum follows them.
const HEADER_FIELDS_BYTES: usize = 60;
/// A write record always carries exactly one block.
pub const WRITE_RECORD_BYTES: usize = HEADER_BYTES + BLOCK_BYTES as usize;

const _: () = assert!(HEADER_BYTES % 8 == 0 && WRITE_RECORD_BYTES % 8 == 0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Write = 1,
    Trim = 2,
}

/// What a record does, as the engine's callers give it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write one block of [`BLOCK_BYTES`] at `lba`.
    Write { lba: Lba, data: Bytes },
    /// Trim `blocks` blocks from `lba`: they read as zeroes until written again.
    Trim { lba: Lba, blocks: u64 },
}

impl Op {
    pub fn kind(&self) -> Kind {
        match self {
            Op::Write { .. } => Kind::Write,
            Op::Trim { .. } => Kind::Trim,
        }
    }

    pub fn lba(&self) -> Lba {
        match self {
            Op::Write { lba, .. } | Op::Trim { lba, .. } => *lba,
        }
    }

    /// Blocks the op covers.
    pub fn blocks(&self) -> u64 {
        match self {
            Op::Write { .. } => 1,
            Op::Trim { blocks, .. } => *blocks,
        }
    }

    pub fn data(&self) -> &[u8] {
        match self {
            Op::Write { data, .. } => data,
            Op::Trim { .. } => &[],
        }
    }

    /// Bytes the record takes in the log.
    pub fn record_bytes(&self) -> usize {
        HEADER_BYTES + self.data().len()
    }

    /// Checksum of the op's content (kind, LBA, length, data), independent of where and when it is
    /// written: two records with the same VBA and the same content checksum are the same write.
    pub fn content_crc(&self) -> u32 {
        content_crc_of(self.kind(), self.lba(), self.blocks(), self.data())
    }
}

/// A replicated record's body, as the engine takes it.
impl From<RecordBody> for Op {
    fn from(body: RecordBody) -> Op {
        match body {
            RecordBody::Write { lba, data } => Op::Write { lba, data },
            RecordBody::Trim { lba, blocks } => Op::Trim { lba, blocks },
        }
    }
}

/// An op, as it is replicated.
impl From<Op> for RecordBody {
    fn from(op: Op) -> RecordBody {
        match op {
            Op::Write { lba, data } => RecordBody::Write { lba, data },
            Op::Trim { lba, blocks } => RecordBody::Trim { lba, blocks },
        }
    }
}

/// Bytes a replicated record takes in a log once applied: its header and its data.
pub fn log_bytes(body: &RecordBody) -> usize {
    HEADER_BYTES
        + match body {
            RecordBody::Write { data, .. } => data.len(),
            RecordBody::Trim { .. } => 0,
        }
}

/// The header fields of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// The device-local number of the unit (`unit.json`'s `number`).
    pub unit: u32,
    pub crc: u32,
    pub batch_start: u32,
    pub nonce: u64,
    pub generation: Generation,
    pub vba: Vba,
    pub lba: Lba,
    /// Bytes of data that follow (write) or bytes trimmed (trim).
    pub length: u64,
}

impl Header {
    /// Bytes of data stored after the header.
    pub fn data_bytes(&self) -> usize {
        match self.kind {
            Kind::Write => self.length as usize,
            Kind::Trim => 0,
        }
    }

    pub fn record_bytes(&self) -> usize {
        HEADER_BYTES + self.data_bytes()
    }

    /// Blocks the record covers.
    pub fn blocks(&self) -> u64 {
        self.length / BLOCK_BYTES
    }
}

/// Why bytes at some offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Not even the magic: zeroes or bytes of something else (the end of the written log).
    NoRecord,
    /// A record of another incarnation of the segment file.
    OtherNonce,
    /// A header that claims a record but whose fields or checksum are wrong.
    Corrupt(&'static str),
    /// The header says the record runs past the bytes available.
    Truncated,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::NoRecord => f.write_str("no record there"),
            Invalid::OtherNonce => f.write_str("a record of an earlier use of the segment file"),
            Invalid::Corrupt(reason) => f.write_str(reason),
            Invalid::Truncated => f.write_str("the record runs past the bytes written"),
        }
    }
}

/// Writes the record for `op` into `out` (which must be exactly `op.record_bytes()` long).
pub fn encode(
    out: &mut [u8],
    op: &Op,
    unit: u32,
    generation: Generation,
    vba: Vba,
    nonce: u64,
    batch_start: u32,
) {
    assert_eq!(
        out.len(),
        op.record_bytes(),
        "record buffer must fit the record exactly"
    );
    let length = match op {
        Op::Write { data, .. } => {
            assert_eq!(
                data.len() as u64,
                BLOCK_BYTES,
                "a write record carries one block"
            );
            BLOCK_BYTES
        }
        Op::Trim { blocks, .. } => blocks * BLOCK_BYTES,
    };
    let (head, data) = out.split_at_mut(HEADER_BYTES);
    head.fill(0);
    head[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    head[4] = RECORD_VERSION;
    head[5] = op.kind() as u8;
    head[12..16].copy_from_slice(&batch_start.to_le_bytes());
    head[16..24].copy_from_slice(&nonce.to_le_bytes());
    head[24..32].copy_from_slice(&generation.0.to_le_bytes());
    head[32..40].copy_from_slice(&vba.0.to_le_bytes());
    head[40..48].copy_from_slice(&op.lba().0.to_le_bytes());
    head[48..56].copy_from_slice(&length.to_le_bytes());
    head[56..60].copy_from_slice(&unit.to_le_bytes());
    data.copy_from_slice(op.data());
    seal(out);
    debug_assert_eq!(
        decode(out, nonce).map(|h| h.vba),
        Ok(vba),
        "encoded record must decode"
    );
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("slice of 8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("slice of 4 bytes"))
}

/// Moves an encoded record to another segment file: sets its nonce and batch start and seals it
/// with a new checksum. `bytes` holds exactly the record.
pub fn reseal(bytes: &mut [u8], nonce: u64, batch_start: u32) {
    bytes[12..16].copy_from_slice(&batch_start.to_le_bytes());
    bytes[16..24].copy_from_slice(&nonce.to_le_bytes());
    seal(bytes);
    debug_assert!(
        decode(bytes, nonce).is_ok(),
        "a resealed record must decode"
    );
}

/// Sets both checksums of the record that `bytes` holds exactly: the header's, then the whole
/// record's.
pub fn seal(bytes: &mut [u8]) {
    seal_header(bytes);
    bytes[8..12].fill(0);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&bytes[..HEADER_BYTES]),
        &bytes[HEADER_BYTES..],
    );
    bytes[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the header's own checksum of the record at the start of `bytes`.
pub fn seal_header(bytes: &mut [u8]) {
    let crc = header_crc(bytes);
    bytes[HEADER_FIELDS_BYTES..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

fn header_crc(head: &[u8]) -> u32 {
    let mut fields = [0u8; HEADER_FIELDS_BYTES];
    fields.copy_from_slice(&head[..HEADER_FIELDS_BYTES]);
    fields[8..12].fill(0);
    crc32c::crc32c(&fields)
}

/// Parses and checks the header at the start of `bytes` against its own checksum, without
/// looking at the data or the record's checksum: to learn how long a record is before reading all
/// of it, and whose a record is whose data is damaged.
pub fn decode_header(bytes: &[u8], nonce: u64) -> Result<Header, Invalid> {
    if bytes.len() < HEADER_BYTES {
        return Err(if bytes.iter().all(|b| *b == 0) {
            Invalid::NoRecord
        } else {
            Invalid::Truncated
        });
    }
    if u32_at(bytes, 0) != RECORD_MAGIC {
        return Err(Invalid::NoRecord);
    }
    if u64_at(bytes, 16) != nonce {
        return Err(Invalid::OtherNonce);
    }
    match bytes[4] {
        RECORD_VERSION => {}
        2 => {
            return Err(Invalid::Corrupt(
                "a record of format 2 (without a header checksum), which this vbs does not read",
            ))
        }
        _ => return Err(Invalid::Corrupt("unknown record format version")),
    }
    if u32_at(bytes, HEADER_FIELDS_BYTES) != header_crc(bytes) {
        return Err(Invalid::Corrupt("header checksum mismatch"));
    }
    let kind = match bytes[5] {
        1 => Kind::Write,
        2 => Kind::Trim,
        _ => return Err(Invalid::Corrupt("unknown record kind")),
    };
    let length = u64_at(bytes, 48);
    let header = Header {
        kind,
        unit: u32_at(bytes, 56),
        crc: u32_at(bytes, 8),
        batch_start: u32_at(bytes, 12),
        nonce,
        generation: Generation(u64_at(bytes, 24)),
        vba: Vba(u64_at(bytes, 32)),
        lba: Lba(u64_at(bytes, 40)),
        length,
    };
    let shape_ok = match kind {
        Kind::Write => length == BLOCK_BYTES,
        Kind::Trim => length > 0 && length % BLOCK_BYTES == 0,
    };
    if !shape_ok {
        return Err(Invalid::Corrupt("record length does not fit its kind"));
    }
    if header.vba == Vba::ZERO {
        return Err(Invalid::Corrupt("record has VBA 0"));
    }
    Ok(header)
}

/// Parses a whole record (header and data) and verifies its checksum.
pub fn decode(bytes: &[u8], nonce: u64) -> Result<Header, Invalid> {
    let header = decode_header(bytes, nonce)?;
    let end = header.record_bytes();
    if bytes.len() < end {
        return Err(Invalid::Truncated);
    }
    let mut head = [0u8; HEADER_BYTES];
    head.copy_from_slice(&bytes[..HEADER_BYTES]);
    head[8..12].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &bytes[HEADER_BYTES..end]);
    if crc != header.crc {
        return Err(Invalid::Corrupt("checksum mismatch"));
    }
    Ok(header)
}

/// The content checksum (see [`Op::content_crc`]) of a decoded record whose bytes are `bytes`.
pub fn content_crc(header: &Header, bytes: &[u8]) -> u32 {
    let data = &bytes[HEADER_BYTES..header.record_bytes()];
    content_crc_of(header.kind, header.lba, header.blocks(), data)
}

fn content_crc_of(kind: Kind, lba: Lba, blocks: u64, data: &[u8]) -> u32 {
    let mut head = [0u8; 17];
    head[0] = kind as u8;
    head[1..9].copy_from_slice(&lba.0.to_le_bytes());
    head[9..17].copy_from_slice(&blocks.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fill: u8) -> Bytes {
        Bytes::from(vec![fill; BLOCK_BYTES as usize])
    }

    #[test]
    fn records_round_trip() {
        let ops = [
            Op::Write {
                lba: Lba(7),
                data: block(0xab),
            },
            Op::Trim {
                lba: Lba(3),
                blocks: 1000,
            },
        ];
        for op in ops {
            let mut buf = vec![0u8; op.record_bytes()];
            encode(&mut buf, &op, 12, Generation(4), Vba(99), 0xfeed, 4096);
            let header = decode(&buf, 0xfeed).expect("valid record");
            assert_eq!(header.kind, op.kind());
            assert_eq!(
                (header.generation, header.vba, header.lba),
                (Generation(4), Vba(99), op.lba())
            );
            assert_eq!(header.unit, 12);
            assert_eq!(header.blocks(), op.blocks());
            assert_eq!(header.batch_start, 4096);
            assert_eq!(content_crc(&header, &buf), op.content_crc());
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let op = Op::Write {
            lba: Lba(1),
            data: block(0x5a),
        };
        let mut buf = vec![0u8; op.record_bytes()];
        encode(&mut buf, &op, 1, Generation(1), Vba(1), 1, 0);
        for byte in (0..buf.len()).step_by(7) {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode(&bad, 1).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn a_record_damaged_in_its_data_still_says_whose_it_is() {
        let op = Op::Write {
            lba: Lba(4),
            data: block(0x11),
        };
        let mut buf = vec![0u8; op.record_bytes()];
        encode(&mut buf, &op, 3, Generation(2), Vba(40), 9, 4096);
        let mut data_damaged = buf.clone();
        data_damaged[HEADER_BYTES + 100] ^= 1;
        assert_eq!(
            decode(&data_damaged, 9),
            Err(Invalid::Corrupt("checksum mismatch"))
        );
        let header = decode_header(&data_damaged, 9).expect("the header is intact");
        assert_eq!((header.unit, header.vba, header.lba), (3, Vba(40), Lba(4)));
        // Any flip in the header's fields fails the header's own check.
        for byte in (0..HEADER_BYTES).filter(|b| !(8..12).contains(b)) {
            let mut header_damaged = buf.clone();
            header_damaged[byte] ^= 0x08;
            assert!(
                decode_header(&header_damaged, 9).is_err(),
                "a flip in header byte {byte} went unnoticed"
            );
        }
    }

    #[test]
    fn a_resealed_record_decodes_in_its_new_file_only() {
        let op = Op::Write {
            lba: Lba(1),
            data: block(3),
        };
        let mut buf = vec![0u8; op.record_bytes()];
        encode(&mut buf, &op, 1, Generation(1), Vba(9), 111, 4096);
        reseal(&mut buf, 222, 8192);
        let header = decode(&buf, 222).expect("resealed record decodes");
        assert_eq!((header.vba, header.batch_start), (Vba(9), 8192));
        assert_eq!(decode(&buf, 111), Err(Invalid::OtherNonce));
    }

    #[test]
    fn other_nonce_and_zeroes_are_not_records() {
        let op = Op::Trim {
            lba: Lba(0),
            blocks: 1,
        };
        let mut buf = vec![0u8; op.record_bytes()];
        encode(&mut buf, &op, 1, Generation(1), Vba(1), 5, 0);
        assert_eq!(decode(&buf, 6), Err(Invalid::OtherNonce));
        assert_eq!(decode(&[0u8; 64], 5), Err(Invalid::NoRecord));
        assert_eq!(decode(&buf[..30], 5), Err(Invalid::Truncated));
    }

    #[test]
    fn content_checksum_ignores_placement() {
        let op = Op::Write {
            lba: Lba(2),
            data: block(1),
        };
        let other = Op::Write {
            lba: Lba(3),
            data: block(1),
        };
        assert_ne!(op.content_crc(), other.content_crc());
        let mut a = vec![0u8; op.record_bytes()];
        let mut b = vec![0u8; op.record_bytes()];
        encode(&mut a, &op, 1, Generation(1), Vba(5), 10, 0);
        encode(&mut b, &op, 1, Generation(1), Vba(5), 11, 8192);
        let (ha, hb) = (decode(&a, 10).unwrap(), decode(&b, 11).unwrap());
        assert_eq!(content_crc(&ha, &a), content_crc(&hb, &b));
    }
}
