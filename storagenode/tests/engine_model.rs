//! Property test: random sequences of writes, trims, reopens, power losses, compactions and
//! checkpoints against a model of what every block should hold and which records should be live.
//! A second unit takes the same writes, so the two units' records interleave in the device log and
//! both must match the model. proptest prints the failing
//! case (and its seed is kept in `proptest-regressions/`) when a property fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use storagenode::engine::{Device, DeviceOptions, MemoryBackend, Op};
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

const UNIT: UnitId = UnitId {
    volume: vbs_wire::types::VolumeId(9),
    slice: vbs_wire::types::SliceIndex(1),
};
/// Takes the same operations as `UNIT`, interleaved with them in the device log.
const NEIGHBOUR: UnitId = UnitId {
    volume: vbs_wire::types::VolumeId(9),
    slice: vbs_wire::types::SliceIndex(2),
};
const BLOCKS: u64 = 64;

#[derive(Clone, Debug)]
enum Step {
    Write { lba: u64, blocks: u64 },
    Trim { lba: u64, blocks: u64 },
    Reopen,
    Compact,
    Checkpoint,
    PowerLoss,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..BLOCKS, 1..4u64).prop_map(|(lba, n)| Step::Write { lba, blocks: n.min(BLOCKS - lba) }),
        2 => (0..BLOCKS, 1..16u64).prop_map(|(lba, n)| Step::Trim { lba, blocks: n.min(BLOCKS - lba) }),
        1 => Just(Step::Reopen),
        1 => Just(Step::Compact),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::PowerLoss),
    ]
}

fn block(tag: u64) -> Bytes {
    Bytes::from(tag.to_le_bytes().repeat((BLOCK_BYTES / 8) as usize))
}

/// Per block: the VBA of the newest record covering it and the tag it reads as (0: zeroes).
type Model = BTreeMap<u64, (Vba, u64)>;

fn open(backend: &MemoryBackend) -> Device {
    let options = DeviceOptions {
        segment_bytes: 64 << 10,
        spare_segments: 1,
        sync: true,
    };
    Device::open(Arc::new(backend.clone()), &options)
        .expect("device opens")
        .0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_matches_its_model(steps in prop::collection::vec(step(), 1..120)) {
        let backend = MemoryBackend::new(1 << 30);
        let mut device = open(&backend);
        let mut unit = device.create_unit(UNIT, BLOCKS * BLOCK_BYTES).unwrap();
        let mut neighbour = device.create_unit(NEIGHBOUR, BLOCKS * BLOCK_BYTES).unwrap();
        let mut model = Model::new();
        let mut tag = 0;
        for step in steps {
            match step {
                Step::Write { lba, blocks } => {
                    let ops = (lba..lba + blocks).map(|l| {
                        tag += 1;
                        Op::Write { lba: Lba(l), data: block(tag) }
                    });
                    let ops: Vec<Op> = ops.collect();
                    let first = unit.append(Generation(1), ops.clone()).unwrap();
                    prop_assert_eq!(neighbour.append(Generation(1), ops).unwrap(), first);
                    for (i, l) in (lba..lba + blocks).enumerate() {
                        model.insert(l, (Vba(first.0 + i as u64), tag - blocks + 1 + i as u64));
                    }
                }
                Step::Trim { lba, blocks } => {
                    let trim = vec![Op::Trim { lba: Lba(lba), blocks }];
                    let vba = unit.append(Generation(1), trim.clone()).unwrap();
                    prop_assert_eq!(neighbour.append(Generation(1), trim).unwrap(), vba);
                    for l in lba..lba + blocks {
                        model.insert(l, (vba, 0));
                    }
                }
                Step::Reopen | Step::PowerLoss => {
                    drop(unit);
                    drop(neighbour);
                    drop(device);
                    if matches!(step, Step::PowerLoss) {
                        // Every append returned after its sync, so nothing acknowledged is lost.
                        backend.crash();
                    }
                    device = open(&backend);
                    unit = device.unit(UNIT).unwrap();
                    neighbour = device.unit(NEIGHBOUR).unwrap();
                }
                Step::Compact => {
                    unit.set_stable_vba(unit.last_vba());
                    neighbour.set_stable_vba(neighbour.last_vba());
                    device.compact(0.75).unwrap();
                }
                Step::Checkpoint => {
                    device.checkpoint().unwrap();
                }
            }
            prop_assert_eq!(neighbour.read(Lba(0), BLOCKS).unwrap(), unit.read(Lba(0), BLOCKS).unwrap());
            let data = unit.read(Lba(0), BLOCKS).unwrap();
            for l in 0..BLOCKS {
                let want = model.get(&l).map_or(0, |(_, tag)| *tag);
                let got = &data[(l * BLOCK_BYTES) as usize..((l + 1) * BLOCK_BYTES) as usize];
                let expected = if want == 0 { vec![0u8; BLOCK_BYTES as usize] } else { block(want).to_vec() };
                prop_assert!(got == &expected[..], "LBA {} should read tag {}", l, want);
            }
        }
        // records_after(0) is exactly the records some block points at, in VBA order.
        let mut live: Vec<Vba> = model.values().map(|(vba, _)| *vba).collect();
        live.sort();
        live.dedup();
        let streamed: Vec<Vba> = unit.records_after(Vba(0)).map(|r| r.unwrap().vba).collect();
        prop_assert_eq!(&streamed, &live);
        // And from any point, the suffix.
        if let Some(mid) = live.get(live.len() / 2) {
            let suffix: Vec<Vba> = unit.records_after(*mid).map(|r| r.unwrap().vba).collect();
            let expected: Vec<Vba> = live.iter().copied().filter(|v| v > mid).collect();
            prop_assert_eq!(suffix, expected);
        }
    }
}
