//! Group commit: concurrent appends share syncs, and each returns only once its record is durable.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};
use storagenode::engine::{Device, DeviceOptions, MemoryBackend, Op};

#[test]
fn concurrent_appends_share_one_sync() {
    // A slow sync (2 ms) makes the sharing certain: while one batch syncs, every other writer
    // queues its record for the next one.
    let backend = MemoryBackend::new(1 << 30).with_sync_delay(Duration::from_millis(2));
    let options = DeviceOptions {
        segment_bytes: 1 << 20,
        spare_segments: 1,
        sync: true,
    };
    let (device, _) = Device::open(Arc::new(backend.clone()), &options).unwrap();
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    const WRITERS: u64 = 16;
    const EACH: u64 = 25;
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let unit = unit.clone();
            scope.spawn(move || {
                for i in 0..EACH {
                    let lba = Lba(w * EACH + i);
                    let data = Bytes::from(vec![(w + 1) as u8; BLOCK_BYTES as usize]);
                    unit.append(Generation(1), vec![Op::Write { lba, data }])
                        .unwrap();
                    // Durable when acknowledged: visible to a reader at once.
                    assert_eq!(unit.read(lba, 1).unwrap()[0], (w + 1) as u8);
                }
            });
        }
    });
    let stats = unit.stats();
    let writes = WRITERS * EACH;
    assert_eq!(stats.last_vba, Vba(writes));
    assert!(
        stats.batches * 4 <= writes,
        "{writes} concurrent writes took {} batches: group commit is not sharing syncs",
        stats.batches
    );
    // And every acknowledged write survives a power loss.
    drop(unit);
    drop(device);
    backend.crash();
    let (device, _) = Device::open(Arc::new(backend), &options).unwrap();
    let unit = device.unit(UnitId::new(1, 0)).unwrap();
    assert_eq!(unit.last_vba(), Vba(writes));
}
