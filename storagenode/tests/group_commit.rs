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

fn slow_device(backend: &MemoryBackend) -> (Device, DeviceOptions) {
    let options = DeviceOptions {
        segment_bytes: 1 << 20,
        spare_segments: 1,
        sync: true,
    };
    let (device, _) = Device::open(Arc::new(backend.clone()), &options).unwrap();
    (device, options)
}

fn write(lba: u64, tag: u8) -> Op {
    Op::Write {
        lba: Lba(lba),
        data: Bytes::from(vec![tag; BLOCK_BYTES as usize]),
    }
}

#[test]
fn async_writers_share_syncs_and_are_durable_when_acknowledged() {
    // Tasks on a runtime, as in the storage node: once writes overlap, the unit's commit thread
    // writes the batches while the tasks wait.
    let backend = MemoryBackend::new(1 << 30).with_sync_delay(Duration::from_millis(2));
    let (device, options) = slow_device(&backend);
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    const WRITERS: u64 = 16;
    const EACH: u64 = 25;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let unit = unit.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let lba = w * EACH + i;
                        let ticket = unit
                            .begin_append(Generation(1), vec![write(lba, (w + 1) as u8)])
                            .unwrap();
                        ticket.wait_async().await.unwrap();
                        assert_eq!(unit.read(Lba(lba), 1).unwrap()[0], (w + 1) as u8);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
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
    drop(unit);
    drop(device);
    backend.crash();
    let (device, _) = Device::open(Arc::new(backend), &options).unwrap();
    assert_eq!(
        device.unit(UnitId::new(1, 0)).unwrap().last_vba(),
        Vba(writes)
    );
}

/// A unit holding VBAs 1..=5 durable and 6 accepted, whose ticket for 6 outlives a truncation
/// after VBA 3.
fn truncated_ticket() -> (Device, storagenode::engine::Ticket) {
    let backend = MemoryBackend::new(1 << 30);
    let (device, _) = slow_device(&backend);
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    for lba in 0..5 {
        unit.append(Generation(1), vec![write(lba, 1)]).unwrap();
    }
    let ticket = unit.begin_append(Generation(1), vec![write(5, 1)]).unwrap();
    assert_eq!(ticket.last_vba(), Vba(6));
    assert_eq!(unit.truncate_after(Vba(3), Generation(2)).unwrap(), 3);
    (device, ticket)
}

#[test]
fn a_wait_for_a_truncated_record_fails_rather_than_spinning() {
    let (_device, ticket) = truncated_ticket();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(ticket.wait()));
    let result = outcome
        .recv_timeout(Duration::from_secs(10))
        .expect("the wait for a truncated record never ended");
    let error = result.expect_err("a truncated record cannot be durable");
    assert!(
        error.to_string().contains("dropped by a truncation"),
        "{error}"
    );
}

#[test]
fn an_async_wait_for_a_truncated_record_fails_rather_than_hanging() {
    let (_device, ticket) = truncated_ticket();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), ticket.wait_async()).await
    });
    let error = result
        .expect("the wait for a truncated record never ended")
        .expect_err("a truncated record cannot be durable");
    assert!(
        error.to_string().contains("dropped by a truncation"),
        "{error}"
    );
}
