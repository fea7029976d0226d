//! Checkpoints: every unit's index written to one file with the log position it reflects, so that
//! opening a device reads the checkpoint and replays only the log written after it, instead of
//! the whole log.
//!
//! ```text
//! DATA_DIR/checkpoint   magic, version, crc32c, log position, segments, next unit number, units
//! ```
//!
//! A checkpoint is taken under the log's maintenance lock (no compaction or truncation meanwhile):
//! first the log position before which every record is published to its unit, then each unit's
//! index under that unit's lock, one unit at a time, while writes go on. A unit's index may then
//! hold records past the position; replaying them again changes nothing, because the replay skips
//! a unit's records at or below the last VBA its checkpoint holds (except to follow a record that
//! compaction moved out of a segment freed since). The file is replaced atomically, so a crash at
//! any moment leaves the old checkpoint or the new one, and the log the old one needs is still
//! there: log segments are only freed by compaction, whose output is replayed in full.

use std::collections::{BTreeMap, BTreeSet};

use vbs_wire::types::{Generation, Vba};

use super::backend::Backend;
use super::error::{device_err, Result};
use super::index::{Decoder, Index};
use super::meta::GenerationStart;
use super::segment::Vsid;

pub const CHECKPOINT: &str = "checkpoint";
const MAGIC: u64 = u64::from_le_bytes(*b"VBSCKPT1");
const VERSION: u32 = 1;
/// Magic, version, crc32c of everything after them.
const PREAMBLE_BYTES: usize = 16;

/// One unit's part of a checkpoint.
pub(super) struct UnitCheckpoint {
    /// The unit's history when its index was taken: a checkpoint is used only for a history that
    /// went on from it without a truncation.
    pub generations: Vec<GenerationStart>,
    /// Every record up to this VBA is in `index`; records after it come from the log.
    pub last_vba: Vba,
    /// The segments that held records of the unit.
    pub segments: BTreeSet<Vsid>,
    pub index: Index,
}

pub(super) struct Checkpoint {
    /// Every record before this place in the log (this log segment, this offset) is in the
    /// checkpoint's indexes.
    pub position: (Vsid, u64),
    /// Every segment of the log then, with its published end.
    pub segments: BTreeMap<Vsid, u64>,
    pub next_number: u32,
    pub units: BTreeMap<u32, UnitCheckpoint>,
}

impl Checkpoint {
    /// Whether `generations`, a unit's history now, went on from `unit`'s without a truncation
    /// of what the checkpoint holds.
    pub fn continues(unit: &UnitCheckpoint, generations: &[GenerationStart]) -> bool {
        generations.len() >= unit.generations.len()
            && generations[..unit.generations.len()] == unit.generations[..]
            && generations[unit.generations.len()..]
                .iter()
                .all(|g| g.first_vba > unit.last_vba)
    }
}

fn put(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Encodes the parts of a checkpoint; `units` are encoded by the caller, one at a time under each
/// unit's lock, with [`encode_unit`].
pub(super) fn encode_head(
    position: (Vsid, u64),
    segments: &BTreeMap<Vsid, u64>,
    next_number: u32,
) -> Vec<u8> {
    let mut out = vec![0u8; PREAMBLE_BYTES];
    put(&mut out, u64::from(position.0 .0));
    put(&mut out, position.1);
    put(&mut out, segments.len() as u64);
    for (vsid, end) in segments {
        put(&mut out, u64::from(vsid.0));
        put(&mut out, *end);
    }
    put(&mut out, u64::from(next_number));
    out
}

pub(super) fn encode_unit(
    out: &mut Vec<u8>,
    number: u32,
    generations: &[GenerationStart],
    last_vba: Vba,
    segments: &BTreeSet<Vsid>,
    index: &Index,
) {
    put(out, u64::from(number));
    put(out, generations.len() as u64);
    for g in generations {
        put(out, g.generation.0);
        put(out, g.first_vba.0);
    }
    put(out, last_vba.0);
    put(out, segments.len() as u64);
    for vsid in segments {
        put(out, u64::from(vsid.0));
    }
    index.encode(out);
}

/// Seals a checkpoint (the head, then `units` encoded units) and writes it in place of the last.
pub(super) fn write(backend: &dyn Backend, mut bytes: Vec<u8>, units: u64) -> Result<u64> {
    // The unit count goes last, so that the units could be encoded one by one before it.
    put(&mut bytes, units);
    bytes[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[PREAMBLE_BYTES..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    backend
        .write_atomic(CHECKPOINT, &bytes)
        .map_err(device_err(backend.describe(), "writing the checkpoint"))?;
    Ok(bytes.len() as u64)
}

/// Why a checkpoint is not used (the whole log is read instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("the checkpoint is cut short")]
    CutShort,
    #[error("not a checkpoint of this version")]
    Version,
    #[error("checkpoint checksum mismatch")]
    Checksum,
    #[error("the checkpoint's contents do not parse")]
    Contents,
}

/// Reads the device's checkpoint. `Ok(None)` when there is none; a checkpoint that does not read
/// back whole is reported as the reason it is not used.
pub(super) fn read(backend: &dyn Backend) -> Result<Result<Option<Checkpoint>, Unusable>> {
    let exists = backend
        .exists(CHECKPOINT)
        .map_err(device_err(backend.describe(), "reading the checkpoint"))?;
    if !exists {
        return Ok(Ok(None));
    }
    let bytes = backend
        .read_all(CHECKPOINT)
        .map_err(device_err(backend.describe(), "reading the checkpoint"))?;
    Ok(decode(&bytes).map(Some))
}

fn decode(bytes: &[u8]) -> Result<Checkpoint, Unusable> {
    if bytes.len() < PREAMBLE_BYTES + 8 {
        return Err(Unusable::CutShort);
    }
    let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if bytes[0..8] != MAGIC.to_le_bytes() || field(8) != VERSION {
        return Err(Unusable::Version);
    }
    if crc32c::crc32c(&bytes[PREAMBLE_BYTES..]) != field(12) {
        return Err(Unusable::Checksum);
    }
    // The unit count is the last field.
    let (body, count) = bytes[PREAMBLE_BYTES..].split_at(bytes.len() - PREAMBLE_BYTES - 8);
    let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
    let mut input = Decoder::new(body);
    decode_body(&mut input, count)
        .filter(|_| input.is_empty())
        .ok_or(Unusable::Contents)
}

fn decode_body(input: &mut Decoder<'_>, count: u64) -> Option<Checkpoint> {
    let vsid = |v: u64| u32::try_from(v).ok().map(Vsid);
    let position = (vsid(input.u64()?)?, input.u64()?);
    let mut segments = BTreeMap::new();
    for _ in 0..input.u64()? {
        segments.insert(vsid(input.u64()?)?, input.u64()?);
    }
    let next_number = u32::try_from(input.u64()?).ok()?;
    let mut units = BTreeMap::new();
    for _ in 0..count {
        let number = u32::try_from(input.u64()?).ok()?;
        let mut generations = Vec::new();
        for _ in 0..input.u64()? {
            generations.push(GenerationStart {
                generation: Generation(input.u64()?),
                first_vba: Vba(input.u64()?),
            });
        }
        let last_vba = Vba(input.u64()?);
        let mut held = BTreeSet::new();
        for _ in 0..input.u64()? {
            held.insert(vsid(input.u64()?)?);
        }
        let index = Index::decode(input)?;
        units.insert(
            number,
            UnitCheckpoint {
                generations,
                last_vba,
                segments: held,
                index,
            },
        );
    }
    Some(Checkpoint {
        position,
        segments,
        next_number,
        units,
    })
}
