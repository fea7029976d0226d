//! The in-memory index of a storage unit: `LBA -> VBA` and `VBA -> (VSID, offset)`.
//!
//! Memory per live block is what bounds a node's capacity, so both maps are dense arrays rather
//! than hash maps:
//! - [`LbaTable`]: the VBA of the newest record covering each LBA (8 bytes per block), in pages
//!   allocated on first write, so an untouched region costs nothing;
//! - [`VbaIndex`]: one 16-byte entry per live record, sorted by VBA because VBAs only grow; a record
//!   overwritten or trimmed is marked dead in place and swept out once dead entries pass a quarter.
//!
//! Steady state is about 8 + 16 x 4/3 = 29 bytes per live block at worst, 24 right after a sweep.
//! A trim is a record too: trimmed blocks point at the trim's VBA (so catch-up can replay it), and
//! the trim stays live while any block still points at it. Trimmed blocks cost their 8 bytes of
//! the LBA table like written ones.
//!
//! One file, past 600 lines, because the two maps keep each other's invariants (a live record
//! is one an LBA points at) and every change (write, trim, relocation, sweep) touches both.

use std::collections::HashMap;

use vbs_wire::proto::Extent;
use vbs_wire::types::{Lba, Vba};

use super::record::{HEADER_BYTES, WRITE_RECORD_BYTES};
use super::segment::Vsid;

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub vsid: Vsid,
    pub offset: u32,
}

const PAGE_ENTRIES: usize = 512;

/// `LBA -> VBA` (0 for a block never written).
pub struct LbaTable {
    pages: Vec<Option<Box<[u64]>>>,
}

impl LbaTable {
    pub fn new(blocks: u64) -> LbaTable {
        let pages = (blocks as usize).div_ceil(PAGE_ENTRIES);
        LbaTable {
            pages: (0..pages).map(|_| None).collect(),
        }
    }

    /// Takes LBAs up to `blocks` (the unit grew).
    pub fn grow(&mut self, blocks: u64) {
        let pages = (blocks as usize).div_ceil(PAGE_ENTRIES);
        if pages > self.pages.len() {
            self.pages.resize_with(pages, || None);
        }
    }

    pub fn get(&self, lba: Lba) -> Vba {
        let (page, slot) = (lba.0 as usize / PAGE_ENTRIES, lba.0 as usize % PAGE_ENTRIES);
        self.pages[page]
            .as_ref()
            .map_or(Vba::ZERO, |entries| Vba(entries[slot]))
    }

    /// Points `lba` at `vba` and returns what it pointed at before.
    pub fn set(&mut self, lba: Lba, vba: Vba) -> Vba {
        let (page, slot) = (lba.0 as usize / PAGE_ENTRIES, lba.0 as usize % PAGE_ENTRIES);
        let entries =
            self.pages[page].get_or_insert_with(|| vec![0u64; PAGE_ENTRIES].into_boxed_slice());
        Vba(std::mem::replace(&mut entries[slot], vba.0))
    }

    /// Points every block of `[first, first + blocks)` at `vba`, calling `replaced` with each VBA
    /// a block pointed at before (blocks never written are skipped).
    pub fn set_range(&mut self, first: Lba, blocks: u64, vba: Vba, mut replaced: impl FnMut(Vba)) {
        let (start, end) = (first.0 as usize, (first.0 + blocks) as usize);
        let mut lba = start;
        while lba < end {
            let page = lba / PAGE_ENTRIES;
            let page_end = ((page + 1) * PAGE_ENTRIES).min(end);
            let entries =
                self.pages[page].get_or_insert_with(|| vec![0u64; PAGE_ENTRIES].into_boxed_slice());
            for entry in &mut entries[(lba % PAGE_ENTRIES)..(lba % PAGE_ENTRIES + (page_end - lba))]
            {
                let old = std::mem::replace(entry, vba.0);
                if old != 0 {
                    replaced(Vba(old));
                }
            }
            lba = page_end;
        }
    }

    /// The highest VBA any block of the range points at.
    pub fn max_in(&self, first: Lba, blocks: u64) -> Vba {
        let mut max = Vba::ZERO;
        let (start, end) = (first.0 as usize, (first.0 + blocks) as usize);
        let mut lba = start;
        while lba < end {
            let page = lba / PAGE_ENTRIES;
            let page_end = ((page + 1) * PAGE_ENTRIES).min(end);
            if let Some(entries) = self.pages[page].as_ref() {
                let slots = (lba % PAGE_ENTRIES)..(lba % PAGE_ENTRIES + (page_end - lba));
                max = max.max(Vba(entries[slots].iter().copied().max().unwrap_or(0)));
            }
            lba = page_end;
        }
        max
    }

    /// Appends to `out` the runs of `[first, first + blocks)` whose blocks hold data or not
    /// (`holds(vba)` for a block pointing at `vba`; a block never written holds none), merging
    /// with `out`'s last run, until `out` has `max_runs` runs. Returns the blocks covered.
    pub fn runs(
        &self,
        first: Lba,
        blocks: u64,
        holds: impl Fn(Vba) -> bool,
        out: &mut Vec<Extent>,
        max_runs: usize,
    ) -> u64 {
        let add = |out: &mut Vec<Extent>, blocks: u64, allocated: bool| -> bool {
            if let Some(last) = out.last_mut().filter(|last| last.allocated == allocated) {
                last.blocks += blocks;
            } else if out.len() == max_runs {
                return false;
            } else {
                out.push(Extent { blocks, allocated });
            }
            true
        };
        let (start, end) = (first.0 as usize, (first.0 + blocks) as usize);
        let mut lba = start;
        while lba < end {
            let page = lba / PAGE_ENTRIES;
            let page_end = ((page + 1) * PAGE_ENTRIES).min(end);
            match self.pages[page].as_ref() {
                None => {
                    if !add(out, (page_end - lba) as u64, false) {
                        break;
                    }
                    lba = page_end;
                }
                Some(entries) => {
                    for entry in &entries[lba % PAGE_ENTRIES..lba % PAGE_ENTRIES + (page_end - lba)]
                    {
                        if !add(out, 1, *entry != 0 && holds(Vba(*entry))) {
                            return (lba - start) as u64;
                        }
                        lba += 1;
                    }
                }
            }
        }
        (lba - start) as u64
    }

    pub fn memory_bytes(&self) -> usize {
        let allocated = self.pages.iter().filter(|page| page.is_some()).count();
        self.pages.capacity() * std::mem::size_of::<Option<Box<[u64]>>>()
            + allocated * PAGE_ENTRIES * std::mem::size_of::<u64>()
    }
}

const CHUNK_ENTRIES: usize = 4096;
const DEAD: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Entry {
    vba: u64,
    vsid: u32,
    offset: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

/// `VBA -> Location` for live records, sorted by VBA, in fixed-size chunks so growth never
/// reallocates (and briefly doubles) the whole array.
#[derive(Default)]
pub struct VbaIndex {
    chunks: Vec<Vec<Entry>>,
    entries: usize,
    dead: usize,
}

impl VbaIndex {
    fn last_vba(&self) -> Vba {
        self.chunks
            .last()
            .and_then(|chunk| chunk.last())
            .map_or(Vba::ZERO, |e| Vba(e.vba))
    }

    /// (chunk, position) of the first entry with a VBA `>= vba`.
    fn seek(&self, vba: Vba) -> (usize, usize) {
        let chunk = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|e| e.vba < vba.0));
        let pos = self
            .chunks
            .get(chunk)
            .map_or(0, |c| c.partition_point(|e| e.vba < vba.0));
        (chunk, pos)
    }

    fn entry_mut(&mut self, vba: Vba) -> Option<&mut Entry> {
        let (chunk, pos) = self.seek(vba);
        self.chunks
            .get_mut(chunk)
            .and_then(|c| c.get_mut(pos))
            .filter(|e| e.vba == vba.0 && e.vsid != DEAD)
    }

    pub fn push(&mut self, vba: Vba, location: Location) {
        assert!(
            vba > self.last_vba(),
            "VBA index entries must be added in VBA order"
        );
        assert!(location.vsid.0 != DEAD, "VSID {DEAD:#x} is reserved");
        if self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() == CHUNK_ENTRIES)
        {
            self.chunks.push(Vec::with_capacity(CHUNK_ENTRIES));
        }
        let entry = Entry {
            vba: vba.0,
            vsid: location.vsid.0,
            offset: location.offset,
        };
        self.chunks
            .last_mut()
            .expect("a chunk was just ensured")
            .push(entry);
        self.entries += 1;
    }

    pub fn get(&self, vba: Vba) -> Option<Location> {
        let (chunk, pos) = self.seek(vba);
        let entry = self.chunks.get(chunk)?.get(pos)?;
        (entry.vba == vba.0 && entry.vsid != DEAD).then_some(Location {
            vsid: Vsid(entry.vsid),
            offset: entry.offset,
        })
    }

    /// Marks the record at `vba` dead and returns where it was.
    pub fn kill(&mut self, vba: Vba) -> Option<Location> {
        let entry = self.entry_mut(vba)?;
        let location = Location {
            vsid: Vsid(entry.vsid),
            offset: entry.offset,
        };
        entry.vsid = DEAD;
        self.dead += 1;
        if self.dead > 1024 && self.dead * 4 > self.entries {
            self.sweep();
        }
        Some(location)
    }

    /// Moves a live record that is still at `from` to `to` (compaction).
    pub fn relocate(&mut self, vba: Vba, from: Vsid, to: Location) -> bool {
        match self.entry_mut(vba) {
            Some(entry) if entry.vsid == from.0 => {
                (entry.vsid, entry.offset) = (to.vsid.0, to.offset);
                true
            }
            _ => false,
        }
    }

    /// The first live record with a VBA above `vba`.
    pub fn next_live_after(&self, vba: Vba) -> Option<(Vba, Location)> {
        let (first_chunk, first_pos) = self.seek(vba.next());
        for (i, chunk) in self.chunks.iter().enumerate().skip(first_chunk) {
            let start = if i == first_chunk { first_pos } else { 0 };
            if let Some(e) = chunk[start..].iter().find(|e| e.vsid != DEAD) {
                return Some((
                    Vba(e.vba),
                    Location {
                        vsid: Vsid(e.vsid),
                        offset: e.offset,
                    },
                ));
            }
        }
        None
    }

    /// How many live records have a VBA above `vba`.
    pub fn live_count_after(&self, vba: Vba) -> usize {
        let (first_chunk, first_pos) = self.seek(vba.next());
        self.chunks
            .iter()
            .enumerate()
            .skip(first_chunk)
            .map(|(i, chunk)| {
                let start = if i == first_chunk { first_pos } else { 0 };
                chunk[start..].iter().filter(|e| e.vsid != DEAD).count()
            })
            .sum()
    }

    /// Every live record of segment `vsid`, in VBA order.
    pub fn live_in(&self, vsid: Vsid) -> Vec<(Vba, Location)> {
        self.chunks
            .iter()
            .flatten()
            .filter(|e| e.vsid == vsid.0)
            .map(|e| {
                (
                    Vba(e.vba),
                    Location {
                        vsid,
                        offset: e.offset,
                    },
                )
            })
            .collect()
    }

    fn sweep(&mut self) {
        let live: Vec<Entry> = self
            .chunks
            .drain(..)
            .flatten()
            .filter(|e| e.vsid != DEAD)
            .collect();
        self.entries = live.len();
        self.dead = 0;
        for part in live.chunks(CHUNK_ENTRIES) {
            let mut chunk = Vec::with_capacity(CHUNK_ENTRIES);
            chunk.extend_from_slice(part);
            self.chunks.push(chunk);
        }
    }

    pub fn live(&self) -> usize {
        self.entries - self.dead
    }

    pub fn memory_bytes(&self) -> usize {
        self.chunks.capacity() * std::mem::size_of::<Vec<Entry>>()
            + self
                .chunks
                .iter()
                .map(|c| c.capacity() * std::mem::size_of::<Entry>())
                .sum::<usize>()
    }
}

/// What a read of one block finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Never written: zeroes.
    Unwritten,
    /// Trimmed by the record with this VBA: zeroes.
    Trimmed(Vba),
    /// Written by the record with this VBA, stored here.
    Written(Vba, Location),
}

/// The whole index of one unit.
pub struct Index {
    lba: LbaTable,
    vba: VbaIndex,
    /// Live trims and how many blocks still point at each.
    trims: HashMap<Vba, u64>,
    /// Live record bytes per segment.
    usage: HashMap<Vsid, u64>,
    written_blocks: u64,
}

impl Index {
    pub fn new(blocks: u64) -> Index {
        Index {
            lba: LbaTable::new(blocks),
            vba: VbaIndex::default(),
            trims: HashMap::new(),
            usage: HashMap::new(),
            written_blocks: 0,
        }
    }

    pub fn lookup(&self, lba: Lba) -> Target {
        let vba = self.lba.get(lba);
        if vba == Vba::ZERO {
            Target::Unwritten
        } else if self.trims.contains_key(&vba) {
            Target::Trimmed(vba)
        } else {
            let location = self
                .vba
                .get(vba)
                .expect("every block's VBA is a live record");
            Target::Written(vba, location)
        }
    }

    /// Which blocks of `[first, first + blocks)` hold written data (not never written, not
    /// trimmed), as runs appended to `out` up to `max_runs`; returns the blocks covered.
    pub fn allocation(
        &self,
        first: Lba,
        blocks: u64,
        out: &mut Vec<Extent>,
        max_runs: usize,
    ) -> u64 {
        self.lba.runs(
            first,
            blocks,
            |vba| !self.trims.contains_key(&vba),
            out,
            max_runs,
        )
    }

    /// Takes LBAs up to `blocks` (the unit grew).
    pub fn grow(&mut self, blocks: u64) {
        self.lba.grow(blocks);
    }

    /// The VBA a block points at (0 if never written).
    pub fn vba_of(&self, lba: Lba) -> Vba {
        self.lba.get(lba)
    }

    /// The highest VBA any block of the range points at.
    pub fn max_vba_in(&self, lba: Lba, blocks: u64) -> Vba {
        self.lba.max_in(lba, blocks)
    }

    pub fn add_write(&mut self, vba: Vba, lba: Lba, location: Location) {
        let old = self.lba.set(lba, vba);
        self.vba.push(vba, location);
        *self.usage.entry(location.vsid).or_default() += WRITE_RECORD_BYTES as u64;
        self.written_blocks += 1;
        if old != Vba::ZERO {
            self.release(old);
        }
    }

    /// A trim points every block of its range at itself, written before or not: it stays live
    /// while any of them is not written again, so that catch-up replays it to a copy that holds
    /// older data there (even once compaction has dropped what the trim replaced here).
    pub fn add_trim(&mut self, vba: Vba, lba: Lba, blocks: u64, location: Location) {
        let mut replaced = Vec::new();
        self.lba
            .set_range(lba, blocks, vba, |old| replaced.push(old));
        self.vba.push(vba, location);
        self.trims.insert(vba, blocks);
        *self.usage.entry(location.vsid).or_default() += HEADER_BYTES as u64;
        for old in replaced {
            self.release(old);
        }
    }

    /// One block stopped pointing at `vba`.
    fn release(&mut self, vba: Vba) {
        let bytes = match self.trims.get_mut(&vba) {
            Some(refs) => {
                *refs -= 1;
                if *refs > 0 {
                    return;
                }
                self.trims.remove(&vba);
                HEADER_BYTES as u64
            }
            None => {
                self.written_blocks -= 1;
                WRITE_RECORD_BYTES as u64
            }
        };
        let location = self.vba.kill(vba).expect("a released VBA is a live record");
        let usage = self
            .usage
            .get_mut(&location.vsid)
            .expect("a live record's segment has usage");
        *usage -= bytes;
    }

    pub fn location(&self, vba: Vba) -> Option<Location> {
        self.vba.get(vba)
    }

    pub fn is_live_trim(&self, vba: Vba) -> bool {
        self.trims.contains_key(&vba)
    }

    pub fn next_live_after(&self, vba: Vba) -> Option<(Vba, Location)> {
        self.vba.next_live_after(vba)
    }

    pub fn live_in(&self, vsid: Vsid) -> Vec<(Vba, Location)> {
        self.vba.live_in(vsid)
    }

    /// Live records above `vba` and the log bytes they take: what a catch-up from `vba` sends.
    pub fn live_after(&self, vba: Vba) -> (u64, u64) {
        let records = self.vba.live_count_after(vba) as u64;
        let trims = self.trims.keys().filter(|t| **t > vba).count() as u64;
        let writes = records - trims;
        (
            records,
            writes * WRITE_RECORD_BYTES as u64 + trims * HEADER_BYTES as u64,
        )
    }

    /// Moves a record that compaction copied, if it is still live where it was.
    pub fn relocate(&mut self, vba: Vba, from: Vsid, to: Location, record_bytes: u64) -> bool {
        if !self.vba.relocate(vba, from, to) {
            return false;
        }
        *self
            .usage
            .get_mut(&from)
            .expect("a live record's segment has usage") -= record_bytes;
        *self.usage.entry(to.vsid).or_default() += record_bytes;
        true
    }

    pub fn live_bytes(&self, vsid: Vsid) -> u64 {
        self.usage.get(&vsid).copied().unwrap_or(0)
    }

    pub fn forget_segment(&mut self, vsid: Vsid) {
        let left = self.usage.remove(&vsid).unwrap_or(0);
        debug_assert_eq!(
            left, 0,
            "a segment is dropped only when nothing live is left in it"
        );
    }

    /// Blocks that hold written data (not trimmed, not never-written).
    pub fn written_blocks(&self) -> u64 {
        self.written_blocks
    }

    /// Live records (writes and trims).
    pub fn live_records(&self) -> usize {
        self.vba.live()
    }

    pub fn memory_bytes(&self) -> usize {
        self.lba.memory_bytes()
            + self.vba.memory_bytes()
            + self.trims.capacity() * (std::mem::size_of::<(Vba, u64)>() + 1)
            + self.usage.capacity() * (std::mem::size_of::<(Vsid, u64)>() + 1)
    }
}

/// Little-endian reading of an encoded index (see [`Index::encode`]); `None` once the bytes run out.
pub struct Decoder<'a> {
    bytes: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes }
    }

    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = rest;
        Some(u64::from_le_bytes(*head))
    }

    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.bytes.split_first_chunk::<4>()?;
        self.bytes = rest;
        Some(u32::from_le_bytes(*head))
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Index {
    /// Appends the whole index to `out`, for a checkpoint; [`Index::decode`] reads it back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let put = |out: &mut Vec<u8>, v: u64| out.extend_from_slice(&v.to_le_bytes());
        let pages = &self.lba.pages;
        put(out, pages.len() as u64);
        put(out, pages.iter().filter(|p| p.is_some()).count() as u64);
        for (i, page) in pages.iter().enumerate() {
            if let Some(entries) = page {
                put(out, i as u64);
                for entry in entries.iter() {
                    put(out, *entry);
                }
            }
        }
        put(out, self.vba.live() as u64);
        for e in self.vba.chunks.iter().flatten().filter(|e| e.vsid != DEAD) {
            put(out, e.vba);
            out.extend_from_slice(&e.vsid.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
        }
        put(out, self.trims.len() as u64);
        for (vba, refs) in &self.trims {
            put(out, vba.0);
            put(out, *refs);
        }
        put(out, self.usage.len() as u64);
        for (vsid, bytes) in &self.usage {
            put(out, u64::from(vsid.0));
            put(out, *bytes);
        }
        put(out, self.written_blocks);
    }

    /// Reads an index [`Index::encode`] wrote; `None` if the bytes do not hold one.
    pub fn decode(input: &mut Decoder<'_>) -> Option<Index> {
        let page_count = usize::try_from(input.u64()?).ok()?;
        let present = input.u64()?;
        let mut lba = LbaTable {
            pages: (0..page_count).map(|_| None).collect(),
        };
        for _ in 0..present {
            let i = usize::try_from(input.u64()?).ok()?;
            let mut entries = vec![0u64; PAGE_ENTRIES].into_boxed_slice();
            for entry in entries.iter_mut() {
                *entry = input.u64()?;
            }
            *lba.pages.get_mut(i)? = Some(entries);
        }
        let mut vba = VbaIndex::default();
        for _ in 0..input.u64()? {
            let (v, vsid, offset) = (Vba(input.u64()?), input.u32()?, input.u32()?);
            if v <= vba.last_vba() || vsid == DEAD {
                return None;
            }
            vba.push(
                v,
                Location {
                    vsid: Vsid(vsid),
                    offset,
                },
            );
        }
        let mut trims = HashMap::new();
        for _ in 0..input.u64()? {
            trims.insert(Vba(input.u64()?), input.u64()?);
        }
        let mut usage = HashMap::new();
        for _ in 0..input.u64()? {
            let vsid = Vsid(u32::try_from(input.u64()?).ok()?);
            usage.insert(vsid, input.u64()?);
        }
        Some(Index {
            lba,
            vba,
            trims,
            usage,
            written_blocks: input.u64()?,
        })
    }

    /// Segments that hold live records, by the index's own count.
    pub fn segments_in_use(&self) -> impl Iterator<Item = Vsid> + '_ {
        self.usage
            .iter()
            .filter(|(_, bytes)| **bytes > 0)
            .map(|(vsid, _)| *vsid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(vsid: u32, offset: u32) -> Location {
        Location {
            vsid: Vsid(vsid),
            offset,
        }
    }

    #[test]
    fn an_encoded_index_decodes_to_the_same_index() {
        let mut index = Index::new(4096);
        for i in 0..3000u64 {
            index.add_write(
                Vba(i + 1),
                Lba((i * 7) % 4096),
                at(1 + (i % 3) as u32, i as u32 * 8),
            );
        }
        index.add_trim(Vba(3001), Lba(10), 20, at(4, 0));
        let mut bytes = Vec::new();
        index.encode(&mut bytes);
        let mut input = Decoder::new(&bytes);
        let back = Index::decode(&mut input).expect("decodes");
        assert!(input.is_empty());
        for lba in 0..4096 {
            assert_eq!(back.lookup(Lba(lba)), index.lookup(Lba(lba)), "LBA {lba}");
        }
        assert_eq!(back.written_blocks(), index.written_blocks());
        assert_eq!(back.live_records(), index.live_records());
        for vsid in 1..5 {
            assert_eq!(back.live_bytes(Vsid(vsid)), index.live_bytes(Vsid(vsid)));
        }
        assert!(Index::decode(&mut Decoder::new(&bytes[..bytes.len() - 1])).is_none());
    }

    #[test]
    fn overwrite_kills_the_older_record() {
        let mut index = Index::new(1024);
        index.add_write(Vba(1), Lba(5), at(1, 4096));
        index.add_write(Vba(2), Lba(5), at(1, 8256));
        assert_eq!(index.lookup(Lba(5)), Target::Written(Vba(2), at(1, 8256)));
        assert_eq!(index.location(Vba(1)), None);
        assert_eq!(index.live_bytes(Vsid(1)), WRITE_RECORD_BYTES as u64);
        assert_eq!(index.written_blocks(), 1);
        assert_eq!(index.lookup(Lba(6)), Target::Unwritten);
    }

    #[test]
    fn trims_stay_live_while_a_block_points_at_them() {
        let mut index = Index::new(4096);
        for lba in 0..4 {
            index.add_write(Vba(lba + 1), Lba(lba), at(1, 4096 + lba as u32 * 4160));
        }
        index.add_trim(Vba(5), Lba(1), 2, at(1, 20736));
        assert_eq!(index.lookup(Lba(1)), Target::Trimmed(Vba(5)));
        assert_eq!(index.lookup(Lba(2)), Target::Trimmed(Vba(5)));
        assert_eq!(index.written_blocks(), 2);
        index.add_write(Vba(6), Lba(1), at(1, 20800));
        assert!(index.is_live_trim(Vba(5)));
        index.add_write(Vba(7), Lba(2), at(1, 24960));
        assert!(
            !index.is_live_trim(Vba(5)),
            "no block points at the trim any more"
        );
        assert_eq!(index.location(Vba(5)), None);
    }

    #[test]
    fn a_trim_of_unwritten_blocks_is_live_until_they_are_written() {
        let mut index = Index::new(4096);
        index.add_trim(Vba(1), Lba(0), 2, at(1, 4096));
        assert_eq!(index.live_records(), 1);
        assert_eq!(index.lookup(Lba(1)), Target::Trimmed(Vba(1)));
        assert_eq!(index.lookup(Lba(2)), Target::Unwritten);
        index.add_write(Vba(2), Lba(0), at(1, 4160));
        index.add_write(Vba(3), Lba(1), at(1, 8320));
        assert!(!index.is_live_trim(Vba(1)));
        assert_eq!(index.live_records(), 2);
    }

    fn runs(index: &Index, first: u64, blocks: u64, max: usize) -> (Vec<(u64, bool)>, u64) {
        let mut out = Vec::new();
        let covered = index.allocation(Lba(first), blocks, &mut out, max);
        (
            out.iter().map(|e| (e.blocks, e.allocated)).collect(),
            covered,
        )
    }

    #[test]
    fn allocation_runs_tell_written_blocks_from_holes_and_trims() {
        let mut index = Index::new(4 * PAGE_ENTRIES as u64);
        // Blocks 10..20 written, 14..16 trimmed again; a whole page further on is untouched,
        // then one block written on the page after it.
        for lba in 10..20 {
            index.add_write(Vba(lba), Lba(lba), at(1, lba as u32 * 4160));
        }
        index.add_trim(Vba(30), Lba(14), 2, at(1, 200_000));
        index.add_write(Vba(31), Lba(2 * PAGE_ENTRIES as u64 + 7), at(1, 300_000));
        let all = 4 * PAGE_ENTRIES as u64;
        let (found, covered) = runs(&index, 0, all, 100);
        assert_eq!(covered, all);
        assert_eq!(
            found,
            vec![
                (10, false),
                (4, true),
                (2, false),
                (4, true),
                (2 * PAGE_ENTRIES as u64 - 13, false),
                (1, true),
                (2 * PAGE_ENTRIES as u64 - 8, false),
            ]
        );
        // A range inside: starts mid-run.
        assert_eq!(
            runs(&index, 12, 6, 100),
            (vec![(2, true), (2, false), (2, true)], 6)
        );
        // Fewer runs wanted than there are: a prefix, and how far it reaches.
        assert_eq!(runs(&index, 0, all, 2), (vec![(10, false), (4, true)], 14));
    }

    #[test]
    fn next_live_after_skips_dead_records_across_chunks() {
        let mut index = Index::new(1 << 20);
        let n = 3 * CHUNK_ENTRIES as u64;
        for i in 0..n {
            index.add_write(Vba(i + 1), Lba(i % 100), at(1, i as u32));
        }
        // Only the last write of each of the 100 blocks is live.
        let mut live = Vec::new();
        let mut cursor = Vba::ZERO;
        while let Some((vba, _)) = index.next_live_after(cursor) {
            live.push(vba.0);
            cursor = vba;
        }
        let expected: Vec<u64> = (n - 99..=n).collect();
        assert_eq!(live, expected);
        assert_eq!(index.live_records(), 100);
    }

    #[test]
    fn memory_stays_under_32_bytes_per_block_while_overwriting() {
        let blocks = 1 << 18;
        let mut index = Index::new(blocks);
        let mut vba = 0;
        // Write every block once, then overwrite a scattered half of them twice.
        for round in 0..3u64 {
            for lba in 0..blocks {
                if round > 0 && lba.wrapping_mul(2654435761) % 2 == 0 {
                    continue;
                }
                vba += 1;
                index.add_write(Vba(vba), Lba(lba), at(1, 0));
            }
        }
        let per_block = index.memory_bytes() as f64 / index.written_blocks() as f64;
        assert!(
            per_block <= 32.0,
            "index costs {per_block:.1} bytes per live block"
        );
    }
}
