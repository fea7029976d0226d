//! The storage engine's conformance suite: every case runs against every backend (`file` and
//! `memory`), through the public API only.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use storagenode::engine::backend::Backend;
use storagenode::engine::segment::SEGMENT_HEADER_BYTES;
use storagenode::engine::{
    Applied, Device, DeviceOptions, EngineError, FileBackend, Marks, MemoryBackend, Op, Record,
};
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

const UNIT: UnitId = UnitId {
    volume: vbs_wire::types::VolumeId(1),
    slice: vbs_wire::types::SliceIndex(0),
};
const UNIT_BYTES: u64 = 4 << 20;
/// Small segments, so that a few dozen writes roll over several of them.
const SEGMENT_BYTES: u64 = 64 << 10;
const RECORD: u64 = 4160;
const G1: Generation = Generation(1);

pub trait Fixture {
    fn backend(&self) -> Arc<dyn Backend>;
}

struct Memory(MemoryBackend);

impl Fixture for Memory {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
}

struct Files(tempfile::TempDir);

impl Fixture for Files {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(FileBackend::open(self.0.path()).expect("temp dir opens"))
    }
}

fn memory() -> Memory {
    Memory(MemoryBackend::new(1 << 30))
}

fn files() -> Files {
    Files(tempfile::tempdir().expect("temp dir"))
}

fn options() -> DeviceOptions {
    DeviceOptions {
        segment_bytes: SEGMENT_BYTES,
        spare_segments: 1,
        sync: true,
    }
}

fn open(fixture: &dyn Fixture) -> Device {
    Device::open(fixture.backend(), &options())
        .expect("device opens")
        .0
}

/// A block that starts with `tag` and has no zero byte after it, so a wrong block is
/// recognisable and any torn part of it is detectable.
fn block(tag: u64) -> Bytes {
    let mut data = tag.to_le_bytes().to_vec();
    data.extend((8..BLOCK_BYTES).map(|j| ((tag + j) % 251 + 1) as u8));
    Bytes::from(data)
}

fn tag_of(data: &[u8]) -> u64 {
    u64::from_le_bytes(data[..8].try_into().unwrap())
}

fn write(lba: u64, tag: u64) -> Op {
    Op::Write {
        lba: Lba(lba),
        data: block(tag),
    }
}

/// What every block should read as: the tag of its newest write, 0 for zeroes.
type Model = BTreeMap<u64, u64>;

fn assert_reads(unit: &storagenode::engine::Unit, model: &Model, blocks: u64) {
    let data = unit.read(Lba(0), blocks).expect("read");
    // A read from memory alone gives the same bytes, or declines.
    if let Some(cached) = unit.read_cached(Lba(0), blocks).expect("cached read") {
        assert!(cached == data, "a cached read differs from a read");
    }
    for lba in 0..blocks {
        let chunk = &data[(lba * BLOCK_BYTES) as usize..((lba + 1) * BLOCK_BYTES) as usize];
        let want = model.get(&lba).copied().unwrap_or(0);
        if want == 0 {
            assert!(
                chunk.iter().all(|b| *b == 0),
                "LBA {lba} should read zeroes"
            );
        } else {
            assert_eq!(
                chunk,
                &block(want)[..],
                "LBA {lba} should hold tag {want}, has {}",
                tag_of(chunk)
            );
        }
    }
}

fn segment_path(vsid: u32) -> String {
    format!("log/{vsid:08x}.seg")
}

mod cases {
    use super::*;

    pub fn append_assigns_consecutive_vbas(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        assert_eq!(unit.last_vba(), Vba(0));
        assert_eq!(unit.append(G1, vec![write(3, 1)]).unwrap(), Vba(1));
        assert_eq!(
            unit.append(G1, vec![write(4, 2), write(5, 3), write(6, 4)])
                .unwrap(),
            Vba(2)
        );
        assert_eq!(unit.append(G1, vec![write(3, 5)]).unwrap(), Vba(5));
        assert_eq!(unit.last_vba(), Vba(5));
        let model = Model::from([(3, 5), (4, 2), (5, 3), (6, 4)]);
        assert_reads(&unit, &model, 16);
    }

    pub fn overwrite_then_read_returns_the_newest(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        let mut model = Model::new();
        for tag in 1..=60u64 {
            let lba = tag % 7;
            unit.append(G1, vec![write(lba, tag)]).unwrap();
            model.insert(lba, tag);
        }
        assert_reads(&unit, &model, 8);
        assert_eq!(unit.stats().written_blocks, 7);
    }

    pub fn trims_read_as_zeroes_until_written_again(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        unit.append(G1, (0..8).map(|lba| write(lba, lba + 1)).collect())
            .unwrap();
        unit.append(
            G1,
            vec![Op::Trim {
                lba: Lba(2),
                blocks: 4,
            }],
        )
        .unwrap();
        let mut model: Model = (0..8).map(|lba| (lba, lba + 1)).collect();
        for lba in 2..6 {
            model.remove(&lba);
        }
        assert_reads(&unit, &model, 8);
        unit.append(G1, vec![write(3, 100)]).unwrap();
        model.insert(3, 100);
        assert_reads(&unit, &model, 8);
        drop(unit);
        drop(device);
        let device = open(fixture);
        assert_reads(&device.unit(UNIT).unwrap(), &model, 8);
    }

    pub fn apply_takes_only_the_next_vba(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        assert_eq!(
            unit.apply(Vba(1), G1, write(0, 1)).unwrap(),
            Applied::Written
        );
        assert_eq!(
            unit.apply(Vba(2), G1, write(1, 2)).unwrap(),
            Applied::Written
        );
        match unit.apply(Vba(4), G1, write(2, 4)) {
            Err(EngineError::Hole { expected, got, .. }) => {
                assert_eq!((expected, got), (Vba(3), Vba(4)))
            }
            other => panic!("a VBA beyond the next one must be a hole, got {other:?}"),
        }
        // Idempotent: the same record again is acknowledged and not written twice.
        let batches = device.log_stats().0.batches;
        assert_eq!(
            unit.apply(Vba(2), G1, write(1, 2)).unwrap(),
            Applied::Duplicate
        );
        assert_eq!(device.log_stats().0.batches, batches);
        assert!(matches!(
            unit.apply(Vba(2), G1, write(1, 99)),
            Err(EngineError::ContentMismatch { .. })
        ));
        assert!(matches!(
            unit.apply(Vba(2), Generation(2), write(1, 2)),
            Err(EngineError::Conflict { held: G1, .. })
        ));
        assert_eq!(
            unit.apply(Vba(3), Generation(2), write(2, 3)).unwrap(),
            Applied::Written
        );
        assert!(matches!(
            unit.apply(Vba(4), G1, write(2, 4)),
            Err(EngineError::StaleGeneration { .. })
        ));
        assert_eq!(unit.last_vba(), Vba(3));
        assert_reads(&unit, &Model::from([(0, 1), (1, 2), (2, 3)]), 4);
    }

    pub fn records_after_streams_live_records_in_vba_order(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        unit.append(G1, (0..10).map(|lba| write(lba, lba + 1)).collect())
            .unwrap(); // VBA 1..=10
        unit.append(G1, vec![write(2, 20)]).unwrap(); // VBA 11 kills VBA 3
        unit.append(
            G1,
            vec![Op::Trim {
                lba: Lba(5),
                blocks: 2,
            }],
        )
        .unwrap(); // VBA 12 kills 6, 7
        unit.append(G1, vec![write(0, 30)]).unwrap(); // VBA 13 kills 1
        let all: Vec<Record> = unit.records_after(Vba(0)).map(Result::unwrap).collect();
        let vbas: Vec<u64> = all.iter().map(|r| r.vba.0).collect();
        assert_eq!(vbas, vec![2, 4, 5, 8, 9, 10, 11, 12, 13]);
        assert_eq!(all[6].op, write(2, 20));
        assert_eq!(
            all[7].op,
            Op::Trim {
                lba: Lba(5),
                blocks: 2
            }
        );
        let tail: Vec<u64> = unit
            .records_after(Vba(9))
            .map(|r| r.unwrap().vba.0)
            .collect();
        assert_eq!(tail, vec![10, 11, 12, 13]);
        assert_eq!(unit.records_after(Vba(13)).count(), 0);
    }

    pub fn reopen_recovers_every_durable_write(fixture: &dyn Fixture) {
        let mut model = Model::new();
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            for tag in 1..=100u64 {
                let lba = (tag * 37) % 64;
                unit.append(G1, vec![write(lba, tag)]).unwrap();
                model.insert(lba, tag);
            }
            assert!(
                unit.stats().segments > 3,
                "the writes should span several segments"
            );
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).expect("the unit is found again");
        assert_eq!(unit.last_vba(), Vba(100));
        assert_reads(&unit, &model, 64);
        assert_eq!(unit.append(G1, vec![write(1, 101)]).unwrap(), Vba(101));
    }

    pub fn a_units_marks_survive_a_reopen_and_a_truncation(fixture: &dyn Fixture) {
        let undecided = Marks {
            undecided: true,
            ..Marks::default()
        };
        let lost = Marks {
            lost: true,
            undecided: false,
            lost_in: Some(G1),
        };
        let other = UnitId::new(UNIT.volume.0, UNIT.slice.0 + 1);
        {
            let device = open(fixture);
            let unit = device
                .create_unit_marked(UNIT, UNIT_BYTES, undecided)
                .unwrap();
            assert_eq!(unit.marks(), undecided);
            let plain = device.create_unit(other, UNIT_BYTES).unwrap();
            assert!(plain.marks().is_clear());
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.marks(), undecided, "marked from its creation on");
        for tag in 1..=3 {
            unit.append(G1, vec![write(tag, tag)]).unwrap();
        }
        unit.set_marks(lost).unwrap();
        // A truncation rewrites unit.json: the marks stay.
        unit.truncate_after(Vba(2), Generation(2)).unwrap();
        assert!(device.unit(other).unwrap().marks().is_clear());
        drop(unit);
        drop(device);
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.marks(), lost);
        assert_eq!(unit.last_vba(), Vba(2));
        unit.set_marks(Marks::default()).unwrap();
        drop(unit);
        drop(device);
        assert!(open(fixture).unit(UNIT).unwrap().marks().is_clear());
    }

    pub fn a_torn_last_record_is_cut_at_every_byte_offset(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        // Three records in one segment; the third is torn at each offset in turn, either by the
        // file ending there or by the rest of the record never reaching the disk (zeroes).
        let last = SEGMENT_HEADER_BYTES + 2 * RECORD;
        let template: Vec<u8> = {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            for tag in 1..=3 {
                unit.append(G1, vec![write(tag - 1, tag)]).unwrap();
            }
            backend.read_all(&segment_path(1)).unwrap()
        };
        let file = backend.open(&segment_path(1)).unwrap();
        for cut in 0..RECORD {
            for zeroed in [false, true] {
                file.write_at(&template, 0).unwrap();
                if zeroed {
                    let rest = (RECORD - cut) as usize;
                    file.write_at(&vec![0u8; rest], last + cut).unwrap();
                } else {
                    file.set_size(last + cut).unwrap();
                }
                file.sync().unwrap();
                let (device, reports) = Device::open(backend.clone(), &options()).unwrap();
                let unit = device.unit(UNIT).unwrap();
                assert_eq!(
                    unit.last_vba(),
                    Vba(2),
                    "cut at byte {cut} (zeroed: {zeroed})"
                );
                assert_reads(&unit, &Model::from([(0, 1), (1, 2)]), 4);
                // A record zeroed before its nonce (byte 24) is not recognisable as one.
                let recognisable = if zeroed { cut >= 24 } else { cut > 0 };
                let torn = reports[0].torn_tail.is_some();
                assert_eq!(
                    torn, recognisable,
                    "torn tail reported for cut {cut}, zeroed {zeroed}"
                );
                // The log goes on from the cut, and the old bytes never come back.
                assert_eq!(unit.append(G1, vec![write(2, 33)]).unwrap(), Vba(3));
                drop(unit);
                drop(device);
                let device = open(fixture);
                assert_reads(
                    &device.unit(UNIT).unwrap(),
                    &Model::from([(0, 1), (1, 2), (2, 33)]),
                    4,
                );
                drop(device);
                file.set_size(SEGMENT_BYTES).unwrap();
            }
        }
    }

    /// A record whose data is damaged but whose header reads is the unit's all the same: the
    /// device opens, the record is indexed, and a read of it says it is damaged (for a repair from
    /// another copy). A record whose header is damaged cannot be attributed to a unit: it stops
    /// the open, naming its segment and offset.
    pub fn damage_inside_the_log_is_indexed_or_named(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            // 20 records: segment 1 is sealed with 14, segment 2 is the newest with 6.
            for tag in 1..=20 {
                unit.append(G1, vec![write(tag, tag)]).unwrap();
            }
        }
        // Flipping the same bit twice restores the byte.
        let flip = |vsid: u32, offset: u64| {
            let file = backend.open(&segment_path(vsid)).unwrap();
            let mut byte = [0u8; 1];
            file.read_at(&mut byte, offset).unwrap();
            file.write_at(&[byte[0] ^ 0x40], offset).unwrap();
            file.sync().unwrap();
        };
        let record_at = |index: u64| SEGMENT_HEADER_BYTES + index * RECORD;
        // Data: VBA 6 inside sealed segment 1, VBA 14 at its end, VBA 16 inside the newest.
        let data_damage = [(1u32, 5u64, 6u64), (1, 13, 14), (2, 1, 16)];
        for &(vsid, index, _) in &data_damage {
            flip(vsid, record_at(index) + 100);
        }
        {
            let (device, reports) = Device::open(backend.clone(), &options()).unwrap();
            assert_eq!(reports[0].damaged_records, 3, "{reports:?}");
            assert_eq!(reports[0].torn_tail, None);
            let unit = device.unit(UNIT).unwrap();
            assert_eq!(unit.last_vba(), Vba(20));
            for tag in 1..=20u64 {
                match unit.read(Lba(tag), 1) {
                    Ok(data) => assert_eq!(tag_of(&data), tag, "LBA {tag}"),
                    Err(EngineError::Damaged {
                        vba, vsid, offset, ..
                    }) => {
                        let (at, index, _) = data_damage
                            .iter()
                            .find(|d| d.2 == tag)
                            .unwrap_or_else(|| panic!("LBA {tag} is not damaged"));
                        assert_eq!((vba, vsid.0, offset), (Vba(tag), *at, record_at(*index)));
                    }
                    Err(other) => panic!("LBA {tag}: {other}"),
                }
            }
        }
        for &(vsid, index, _) in &data_damage {
            flip(vsid, record_at(index) + 100);
        }

        // A header's LBA field: whose record it is cannot be told.
        for (vsid, index) in [(1u32, 5u64), (2, 1)] {
            flip(vsid, record_at(index) + 40);
            match Device::open(backend.clone(), &options()) {
                Err(EngineError::CorruptLog {
                    vsid: at,
                    offset: found,
                    ..
                }) => {
                    assert_eq!((at.0, found), (vsid, record_at(index)));
                }
                Err(other) => panic!("expected a corruption error, got {other}"),
                Ok(_) => panic!("a damaged header inside segment {vsid} went unnoticed"),
            }
            flip(vsid, record_at(index) + 40);
        }
        let (device, reports) = Device::open(backend.clone(), &options()).unwrap();
        assert_eq!(reports[0].damaged_records, 0);
        assert_eq!(device.unit(UNIT).unwrap().last_vba(), Vba(20));
    }

    pub fn a_damaged_record_is_refused_until_a_good_copy_replaces_it(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        // 20 records: segment 1 is sealed with the first 14.
        for tag in 1..=20 {
            unit.append(G1, vec![write(tag, tag)]).unwrap();
        }
        let file = backend.open(&segment_path(1)).unwrap();
        let flip = |at: u64| {
            let mut byte = [0u8; 1];
            file.read_at(&mut byte, at).unwrap();
            file.write_at(&[byte[0] ^ 0x10], at).unwrap();
        };
        // VBA 6 (LBA 6): a byte of its data; VBA 8 (LBA 8): a byte of its header's LBA field.
        flip(SEGMENT_HEADER_BYTES + 5 * RECORD + 64 + 1000);
        flip(SEGMENT_HEADER_BYTES + 7 * RECORD + 40);
        for (lba, vba) in [(6, 6), (8, 8)] {
            match unit.read(Lba(lba), 1) {
                Err(EngineError::Damaged {
                    vba: found,
                    lba: Some(at),
                    ..
                }) => assert_eq!((found, at), (Vba(vba), Lba(lba))),
                other => panic!("read of damaged LBA {lba}: {other:?}"),
            }
            assert!(matches!(
                unit.record(Vba(vba)),
                Err(EngineError::Damaged { .. })
            ));
        }
        // Nothing damaged is streamed to a copy: the stream stops at it.
        let streamed: Vec<_> = unit.records_after(Vba(0)).take(6).collect();
        assert!(streamed[..5].iter().all(Result::is_ok));
        assert!(matches!(
            streamed[5],
            Err(EngineError::Damaged { vba: Vba(6), .. })
        ));

        let good = |vba: u64, generation| Record {
            vba: Vba(vba),
            generation,
            op: write(vba, vba),
        };
        // A copy that cannot be the same record is refused.
        assert!(matches!(
            unit.repair(&good(6, Generation(2))),
            Err(EngineError::Invalid(_))
        ));
        let mut other_block = good(6, G1);
        other_block.op = write(7, 6);
        assert!(matches!(
            unit.repair(&other_block),
            Err(EngineError::Invalid(_))
        ));
        assert!(unit.repair(&good(6, G1)).unwrap(), "VBA 6 is repaired");
        assert!(
            !unit.repair(&good(6, G1)).unwrap(),
            "nothing left to repair"
        );
        assert!(unit.repair(&good(8, G1)).unwrap(), "VBA 8 is repaired");
        let mut model = Model::new();
        for tag in 1..=20 {
            model.insert(tag, tag);
        }
        assert_reads(&unit, &model, 24);
        assert_eq!(unit.records_after(Vba(0)).filter(Result::is_ok).count(), 20);

        // Repaired in place: the segment reads back whole, so the device opens with a full read
        // of its log.
        drop(unit);
        drop(device);
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_reads(&unit, &model, 24);

        // A damaged record that is dead (overwritten since) is never repaired: compaction drops
        // it with its segment. A record whose header does not read keeps its segment, since
        // whose it is cannot be told.
        flip(SEGMENT_HEADER_BYTES + 2 * RECORD + 64 + 10);
        let segment_2 = backend.open(&segment_path(2)).unwrap();
        let mut byte = [0u8; 1];
        segment_2
            .read_at(&mut byte, SEGMENT_HEADER_BYTES + 40)
            .unwrap();
        segment_2
            .write_at(&[byte[0] ^ 0x10], SEGMENT_HEADER_BYTES + 40)
            .unwrap();
        for tag in 1..=20 {
            unit.append(G1, vec![write(tag, tag + 100)]).unwrap();
            model.insert(tag, tag + 100);
        }
        unit.set_stable_vba(unit.last_vba());
        let report = device.compact(1.0).unwrap();
        assert_eq!(report.damaged_dropped, 1, "{report:?}");
        assert_reads(&unit, &model, 24);
        assert!(
            !backend.exists(&segment_path(1)).unwrap(),
            "the segment of the dead damaged record is compacted away"
        );
        assert!(
            backend.exists(&segment_path(2)).unwrap(),
            "the segment with a damaged header is kept"
        );
    }

    pub fn compaction_keeps_every_live_block(fixture: &dyn Fixture) {
        let mut model = Model::new();
        let before;
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            let mut tag = 0;
            for round in 0..6u64 {
                for lba in 0..24u64 {
                    if round > 0 && lba % 4 == 0 {
                        continue; // these stay live in the first segments
                    }
                    tag += 1;
                    unit.append(G1, vec![write(lba, tag)]).unwrap();
                    model.insert(lba, tag);
                }
            }
            unit.append(
                G1,
                vec![Op::Trim {
                    lba: Lba(1),
                    blocks: 2,
                }],
            )
            .unwrap();
            model.remove(&1);
            model.remove(&2);
            before = unit
                .records_after(Vba(0))
                .map(Result::unwrap)
                .collect::<Vec<_>>();
            let segments = unit.stats().segments;
            unit.set_stable_vba(unit.last_vba());
            let report = device.compact(0.5).unwrap();
            assert!(report.segments_freed >= 2, "{report:?}");
            assert!(unit.stats().segments < segments);
            assert_reads(&unit, &model, 32);
            let after: Vec<Record> = unit.records_after(Vba(0)).map(Result::unwrap).collect();
            assert_eq!(after, before, "live records keep their VBA, LBA and data");
            // Writing goes on normally after compaction.
            tag += 1;
            unit.append(G1, vec![write(0, tag)]).unwrap();
            model.insert(0, tag);
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_reads(&unit, &model, 32);
        assert_eq!(unit.records_after(Vba(0)).count(), before.len());
    }

    pub fn truncation_restores_what_the_tail_overwrote(fixture: &dyn Fixture) {
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            for tag in 1..=30u64 {
                unit.apply(Vba(tag), G1, write(tag % 5, tag)).unwrap();
            }
            // Everything up to 20 is acknowledged; 21..=30 overwrote blocks of it.
            unit.set_stable_vba(Vba(20));
            device.compact(1.0).unwrap();
            assert!(matches!(
                unit.truncate_after(Vba(19), Generation(2)),
                Err(EngineError::TruncateStable { .. })
            ));
            assert_eq!(unit.truncate_after(Vba(22), Generation(2)).unwrap(), 8);
            assert_eq!(unit.last_vba(), Vba(22));
            let model: Model = (18..=22).map(|tag| (tag % 5, tag)).collect();
            assert_reads(&unit, &model, 5);
            let vbas: Vec<u64> = unit
                .records_after(Vba(0))
                .map(|r| r.unwrap().vba.0)
                .collect();
            assert_eq!(vbas, vec![18, 19, 20, 21, 22]);
            // The new primary's records follow on.
            assert_eq!(
                unit.apply(Vba(23), Generation(2), write(0, 99)).unwrap(),
                Applied::Written
            );
            assert!(matches!(
                unit.apply(Vba(24), G1, write(0, 98)),
                Err(EngineError::StaleGeneration { .. })
            ));
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.last_vba(), Vba(23));
        assert_eq!(unit.generation(), Generation(2));
        let mut model: Model = (18..=22).map(|tag| (tag % 5, tag)).collect();
        model.insert(0, 99);
        assert_reads(&unit, &model, 5);
    }

    pub fn a_tail_of_a_later_generation_gives_way_to_an_earlier_one(fixture: &dyn Fixture) {
        // This copy was primary at generation 3 and wrote 11..=15 that nobody acknowledged; the
        // history that won has generation 2 from VBA 11 on.
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            for tag in 1..=10u64 {
                unit.apply(Vba(tag), G1, write(tag % 4, tag)).unwrap();
            }
            assert!(
                matches!(
                    unit.truncate_after(Vba(8), G1),
                    Err(EngineError::Invalid(_))
                ),
                "records of the generation in force past the cut would stay in its history"
            );
            assert_eq!(
                unit.last_vba(),
                Vba(10),
                "a refused truncation changes nothing"
            );
            for tag in 11..=15u64 {
                unit.apply(Vba(tag), Generation(3), write(tag % 4, tag))
                    .unwrap();
            }
            assert!(
                matches!(
                    unit.truncate_after(Vba(10), Generation(3)),
                    Err(EngineError::Invalid(_))
                ),
                "the dropped records' own generation cannot replace them"
            );
            assert_eq!(unit.truncate_after(Vba(10), Generation(2)).unwrap(), 5);
            assert_eq!(unit.generation(), Generation(2));
            unit.begin_ingest(Vba(12), Generation(2), write(1, 112))
                .unwrap()
                .wait()
                .unwrap();
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.last_vba(), Vba(12));
        let model = Model::from([(0, 8), (1, 112), (2, 10), (3, 7)]);
        assert_reads(&unit, &model, 4);
    }

    pub fn a_truncation_never_takes_in_records_stacked_past_the_tail(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        for tag in 1..=10u64 {
            unit.apply(Vba(tag), G1, write(tag % 4, tag)).unwrap();
        }
        // A record of generation 2 landed right after generation 1's tail 6..=10, which
        // generation 2's history (starting after 5) does not have.
        unit.apply(Vba(11), Generation(2), write(0, 11)).unwrap();
        assert!(
            matches!(
                unit.truncate_after(Vba(5), Generation(2)),
                Err(EngineError::Invalid(_))
            ),
            "dropping 6..=10 under generation 2 would take VBA 11 into its history"
        );
        assert_eq!(
            unit.last_vba(),
            Vba(11),
            "a refused truncation changes nothing"
        );
        // A newer generation drops both, and writing goes on in order.
        assert_eq!(unit.truncate_after(Vba(5), Generation(3)).unwrap(), 6);
        assert_eq!(unit.last_vba(), Vba(5));
        unit.apply(Vba(6), Generation(3), write(1, 66)).unwrap();
        unit.apply(Vba(7), Generation(3), write(2, 67)).unwrap();
        let model = Model::from([(0, 4), (1, 66), (2, 67), (3, 3)]);
        assert_reads(&unit, &model, 4);
        let vbas: Vec<u64> = unit
            .records_after(Vba(0))
            .map(|r| r.unwrap().vba.0)
            .collect();
        assert_eq!(vbas, vec![3, 4, 6, 7]);
    }

    pub fn catch_up_streams_what_a_copy_missed(fixture: &dyn Fixture) {
        let device = open(fixture);
        let primary = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        let copy = device.create_unit(UnitId::new(2, 0), UNIT_BYTES).unwrap();
        let mut sent = 0;
        // Both hold VBAs 1..=10; then the copy misses 11..=40, with overwrites, a trim and a new
        // generation among them.
        for tag in 1..=40u64 {
            let generation = if tag > 30 { Generation(2) } else { G1 };
            let op = if tag == 38 {
                Op::Trim {
                    lba: Lba(2),
                    blocks: 3,
                }
            } else {
                write(tag % 9, tag)
            };
            primary.append(generation, vec![op.clone()]).unwrap();
            if tag <= 10 {
                copy.apply(Vba(tag), generation, op).unwrap();
            }
        }
        let (records, bytes) = primary.live_after(Vba(10));
        for record in primary.records_after(Vba(10)) {
            let record = record.unwrap();
            copy.begin_ingest(record.vba, record.generation, record.op)
                .unwrap()
                .wait()
                .unwrap();
            sent += 1;
        }
        assert_eq!(
            sent, records,
            "live_after counts what records_after streams"
        );
        assert!(records < 30, "overwritten records are not sent");
        assert_eq!(
            bytes,
            (records - 1) * RECORD + 64,
            "one trim and the rest writes"
        );
        assert_eq!(copy.last_vba(), Vba(40));
        assert_eq!(copy.generation(), Generation(2));
        let data = primary.read(Lba(0), 9).unwrap();
        assert_eq!(copy.read(Lba(0), 9).unwrap(), data);
        // Replication goes on strictly after a catch-up.
        assert!(matches!(
            copy.apply(Vba(42), Generation(2), write(1, 99)),
            Err(EngineError::Hole { .. })
        ));
        assert_eq!(
            copy.apply(Vba(41), Generation(2), write(1, 99)).unwrap(),
            Applied::Written
        );
        assert!(copy
            .begin_ingest(Vba(41), Generation(2), write(1, 99))
            .is_err());
        drop((primary, copy));
        drop(device);
        let device = open(fixture);
        let copy = device.unit(UnitId::new(2, 0)).unwrap();
        assert_eq!(copy.last_vba(), Vba(41));
        let mut expected = data;
        expected[4096..8192].copy_from_slice(&block(99));
        assert_eq!(copy.read(Lba(0), 9).unwrap(), expected);
    }

    pub fn bad_requests_are_refused_whole(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        let blocks = UNIT_BYTES / BLOCK_BYTES;
        assert!(matches!(
            unit.read(Lba(blocks), 1),
            Err(EngineError::OutOfRange { .. })
        ));
        assert!(matches!(
            unit.append(G1, vec![write(0, 1), write(blocks, 2)]),
            Err(EngineError::OutOfRange { .. })
        ));
        assert_eq!(
            unit.last_vba(),
            Vba(0),
            "nothing of a refused append is written"
        );
        let short = Op::Write {
            lba: Lba(0),
            data: Bytes::from(vec![1u8; 512]),
        };
        assert!(matches!(
            unit.append(G1, vec![short]),
            Err(EngineError::Invalid(_))
        ));
        assert!(matches!(
            device.create_unit(UNIT, UNIT_BYTES),
            Err(EngineError::UnitExists(_))
        ));
        assert!(matches!(
            device.create_unit(UnitId::new(2, 0), 1000),
            Err(EngineError::Invalid(_))
        ));
    }

    /// Units of a device share its log: their records interleave in its segments, and each unit
    /// gets its own back on reopen and after a compaction that drops a removed unit's records.
    pub fn units_sharing_the_log_keep_their_own_records(fixture: &dyn Fixture) {
        let other = UnitId::new(2, 3);
        let mut models = [Model::new(), Model::new()];
        {
            let device = open(fixture);
            let units = [
                device.create_unit(UNIT, UNIT_BYTES).unwrap(),
                device.create_unit(other, UNIT_BYTES).unwrap(),
            ];
            let doomed = device.create_unit(UnitId::new(9, 0), UNIT_BYTES).unwrap();
            for tag in 1..=60u64 {
                let i = (tag % 2) as usize;
                let lba = (tag * 7) % 16;
                units[i].append(G1, vec![write(lba, tag)]).unwrap();
                models[i].insert(lba, tag);
                doomed.append(G1, vec![write(lba, tag + 1000)]).unwrap();
            }
            for (unit, model) in units.iter().zip(&models) {
                assert_reads(unit, model, 16);
                assert_eq!(unit.last_vba(), Vba(30));
            }
            drop(doomed);
            device.remove_unit(UnitId::new(9, 0)).unwrap();
            for unit in &units {
                unit.set_stable_vba(unit.last_vba());
            }
            let report = device.compact(0.9).unwrap();
            assert!(report.segments_freed > 0, "{report:?}");
            for (unit, model) in units.iter().zip(&models) {
                assert_reads(unit, model, 16);
            }
        }
        let device = open(fixture);
        assert_eq!(device.units().len(), 2);
        for (id, model) in [UNIT, other].into_iter().zip(&models) {
            let unit = device.unit(id).unwrap();
            assert_eq!(unit.last_vba(), Vba(30), "unit {id}");
            assert_reads(&unit, model, 16);
        }
        // A unit created again under a removed unit's id does not inherit its records.
        let again = device.create_unit(UnitId::new(9, 0), UNIT_BYTES).unwrap();
        assert_eq!(again.last_vba(), Vba(0));
        assert_reads(&again, &Model::new(), 16);
    }

    /// A checkpoint holds every unit's index; opening replays only the log written after it,
    /// follows records that compaction moved since, and passes over a checkpoint that a
    /// truncation made stale or that does not read back.
    pub fn a_checkpoint_and_the_log_after_it_give_every_unit_back(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        let other = UnitId::new(2, 0);
        let mut models = [Model::new(), Model::new()];
        let mut tag = 0;
        let mut write_both = |units: &[std::sync::Arc<storagenode::engine::Unit>; 2],
                              models: &mut [Model; 2],
                              rounds: u64| {
            for _ in 0..rounds {
                for (i, unit) in units.iter().enumerate() {
                    tag += 1;
                    let lba = (tag * 5) % 24;
                    unit.append(G1, vec![write(lba, tag)]).unwrap();
                    models[i].insert(lba, tag);
                }
            }
        };
        {
            let device = open(fixture);
            let units = [
                device.create_unit(UNIT, UNIT_BYTES).unwrap(),
                device.create_unit(other, UNIT_BYTES).unwrap(),
            ];
            write_both(&units, &mut models, 40);
            let report = device.checkpoint().unwrap();
            assert_eq!(report.units, 2);
            // After the checkpoint: more writes, a compaction that frees segments the
            // checkpoint's indexes point into, and a unit created and written.
            write_both(&units, &mut models, 40);
            for unit in &units {
                unit.set_stable_vba(unit.last_vba());
            }
            assert!(device.compact(0.9).unwrap().segments_freed > 0);
            write_both(&units, &mut models, 5);
            let late = device.create_unit(UnitId::new(3, 0), UNIT_BYTES).unwrap();
            late.append(G1, vec![write(1, 999)]).unwrap();
        }
        let reopen = |models: &[Model; 2]| {
            let device = open(fixture);
            for (id, model) in [UNIT, other].into_iter().zip(models) {
                let unit = device.unit(id).unwrap();
                assert_eq!(unit.last_vba(), Vba(85), "unit {id}");
                assert_reads(&unit, model, 24);
            }
            assert_reads(
                &device.unit(UnitId::new(3, 0)).unwrap(),
                &Model::from([(1, 999)]),
                4,
            );
            device
        };
        drop(reopen(&models));
        // A truncation after the checkpoint: its indexes no longer fit that unit's history.
        {
            let device = reopen(&models);
            device.checkpoint().unwrap();
            let unit = device.unit(UNIT).unwrap();
            unit.set_stable_vba(Vba(80));
            unit.truncate_after(Vba(80), Generation(2)).unwrap();
            unit.append(Generation(2), vec![write(0, 5000)]).unwrap();
        }
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.last_vba(), Vba(81));
        assert_eq!(unit.read(Lba(0), 1).unwrap(), block(5000).to_vec());
        drop(unit);
        drop(device);
        // A checkpoint that does not read back is passed over.
        let mut bytes = backend.read_all("checkpoint").unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        backend.write_atomic("checkpoint", &bytes).unwrap();
        let device = open(fixture);
        assert_eq!(device.unit(UNIT).unwrap().last_vba(), Vba(81));
        assert_reads(&device.unit(other).unwrap(), &models[1], 24);
    }

    /// A data directory of format 1 (one log per unit) is refused before anything changes, with a
    /// message that says what to do.
    pub fn a_format_1_device_is_refused_untouched(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        let old = br#"{"format": 1, "segment_bytes": 65536}"#;
        backend.write_atomic("device.json", old).unwrap();
        backend.create_dir("units/1.0").unwrap();
        let error = Device::open(backend.clone(), &options())
            .unwrap_err()
            .to_string();
        assert!(error.contains("format 1"), "{error}");
        assert!(error.contains("vbs node drain"), "{error}");
        assert_eq!(backend.read_all("device.json").unwrap(), old.to_vec());
        assert!(!backend.exists("log").unwrap(), "nothing was created");
    }

    pub fn removed_units_are_gone_and_their_ids_start_afresh(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        for tag in 1..=40 {
            unit.append(G1, vec![write(tag, tag)]).unwrap();
        }
        drop(unit);
        device.remove_unit(UNIT).unwrap();
        assert!(device.unit(UNIT).is_none());
        assert!(matches!(
            device.remove_unit(UNIT),
            Err(EngineError::NoSuchUnit(_))
        ));
        let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
        assert_eq!(unit.last_vba(), Vba(0));
        assert_reads(&unit, &Model::new(), 48);
        drop(unit);
        drop(device);
        let device = open(fixture);
        assert_eq!(device.unit(UNIT).unwrap().last_vba(), Vba(0));
    }

    /// A segment the pool took back after compaction keeps its old header until it is taken
    /// again and its new header is written: a crash in between leaves the unit's newest log
    /// segment naming another segment. It holds no record of this one, and is dropped.
    pub fn a_recycled_segment_whose_new_header_never_landed_is_dropped(fixture: &dyn Fixture) {
        let backend = fixture.backend();
        {
            let device = open(fixture);
            let unit = device.create_unit(UNIT, UNIT_BYTES).unwrap();
            for tag in 1..=3 {
                unit.append(G1, vec![write(tag - 1, tag)]).unwrap();
            }
        }
        // Segment 1's bytes under the name of segment 2: a recycled file, header not rewritten.
        let old = backend.read_all(&segment_path(1)).unwrap();
        let recycled = backend.create(&segment_path(2)).unwrap();
        recycled.write_at(&old, 0).unwrap();
        recycled.sync().unwrap();
        drop(recycled);
        let (device, _) = Device::open(backend.clone(), &options()).unwrap();
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.last_vba(), Vba(3));
        let model = Model::from([(0, 1), (1, 2), (2, 3)]);
        assert_reads(&unit, &model, 4);
        // The log goes on.
        assert_eq!(unit.append(G1, vec![write(3, 4)]).unwrap(), Vba(4));
    }

    pub fn a_grown_unit_takes_its_new_blocks_and_keeps_its_size_on_reopen(fixture: &dyn Fixture) {
        let device = open(fixture);
        let unit = device.create_unit(UNIT, 8 * BLOCK_BYTES).unwrap();
        unit.append(G1, vec![write(7, 1)]).unwrap();
        assert!(matches!(
            unit.append(G1, vec![write(8, 2)]),
            Err(EngineError::OutOfRange { .. })
        ));
        unit.grow(4 * BLOCK_BYTES).unwrap();
        assert_eq!(unit.size_bytes(), 8 * BLOCK_BYTES, "never shrinks");
        unit.grow(1000 * BLOCK_BYTES).unwrap();
        assert_eq!(unit.blocks(), 1000);
        unit.append(G1, vec![write(999, 3)]).unwrap();
        let model = Model::from([(7, 1), (999, 3)]);
        assert_reads(&unit, &model, 1000);
        drop(unit);
        drop(device);
        let device = open(fixture);
        let unit = device.unit(UNIT).unwrap();
        assert_eq!(unit.blocks(), 1000);
        assert_reads(&unit, &model, 1000);
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod memory_backend {
            $( #[test] fn $case() { super::cases::$case(&super::memory()) } )*
        }
        mod file_backend {
            $( #[test] fn $case() { super::cases::$case(&super::files()) } )*
        }
    };
}

conformance!(
    append_assigns_consecutive_vbas,
    overwrite_then_read_returns_the_newest,
    trims_read_as_zeroes_until_written_again,
    apply_takes_only_the_next_vba,
    records_after_streams_live_records_in_vba_order,
    reopen_recovers_every_durable_write,
    a_units_marks_survive_a_reopen_and_a_truncation,
    a_torn_last_record_is_cut_at_every_byte_offset,
    damage_inside_the_log_is_indexed_or_named,
    a_damaged_record_is_refused_until_a_good_copy_replaces_it,
    units_sharing_the_log_keep_their_own_records,
    a_checkpoint_and_the_log_after_it_give_every_unit_back,
    a_format_1_device_is_refused_untouched,
    compaction_keeps_every_live_block,
    truncation_restores_what_the_tail_overwrote,
    catch_up_streams_what_a_copy_missed,
    a_tail_of_a_later_generation_gives_way_to_an_earlier_one,
    a_truncation_never_takes_in_records_stacked_past_the_tail,
    bad_requests_are_refused_whole,
    removed_units_are_gone_and_their_ids_start_afresh,
    a_grown_unit_takes_its_new_blocks_and_keeps_its_size_on_reopen,
    a_recycled_segment_whose_new_header_never_landed_is_dropped,
);
