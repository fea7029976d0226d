//! Group commit: concurrent appends share syncs, and each returns only once its record is durable.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use storagenode::engine::backend::{BlockFile, Wrapped};
use storagenode::engine::{Device, DeviceOptions, MemoryBackend, Op, Unit};
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

#[test]
fn concurrent_appends_share_one_sync() {
    // A slow sync (2 ms) makes the sharing certain: while one batch syncs, every other writer
    // queues its record for the next one.
    let backend = MemoryBackend::new(1 << 30).with_sync_delay(Duration::from_millis(2));
    let device = open_device(&backend);
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let unit = unit.clone();
            scope.spawn(move || {
                for i in 0..EACH {
                    let lba = w * EACH + i;
                    unit.append(Generation(1), vec![write(lba, (w + 1) as u8)])
                        .unwrap();
                    // Durable when acknowledged: visible to a reader at once.
                    assert_eq!(unit.read(Lba(lba), 1).unwrap()[0], (w + 1) as u8);
                }
            });
        }
    });
    assert_shared_and_durable(unit, device, backend);
}

/// Concurrent writers in the group-commit tests, and writes each.
const WRITERS: u64 = 16;
const EACH: u64 = 25;

/// After `WRITERS * EACH` concurrent writes to unit 1.0: all are in the log, they shared syncs
/// (at least four writes per batch), and every one survives a power loss.
fn assert_shared_and_durable(unit: Arc<Unit>, device: Device, backend: MemoryBackend) {
    let writes = WRITERS * EACH;
    assert_eq!(unit.stats().last_vba, Vba(writes));
    drop(unit);
    assert_durable_sharing(device, backend, &[(UnitId::new(1, 0), Vba(writes))]);
}

/// The device's writes shared syncs (at least four writes per batch), and every unit's last VBA
/// survives a power loss.
fn assert_durable_sharing(device: Device, backend: MemoryBackend, last: &[(UnitId, Vba)]) {
    let writes = WRITERS * EACH;
    let batches = device.log_stats().0.batches;
    assert!(
        batches * 4 <= writes,
        "{writes} concurrent writes took {batches} batches: group commit is not sharing syncs",
    );
    drop(device);
    backend.crash();
    let device = open_device(&backend);
    for (id, vba) in last {
        assert_eq!(device.unit(*id).unwrap().last_vba(), *vba, "unit {id}");
    }
}

#[test]
fn writes_to_different_units_share_one_sync() {
    // One writer per unit: the units of a device share its log, so their writes in flight
    // together share a flush.
    let backend = MemoryBackend::new(1 << 30).with_sync_delay(Duration::from_millis(2));
    let device = open_device(&backend);
    let units: Vec<_> = (0..WRITERS)
        .map(|w| {
            device
                .create_unit(UnitId::new(1, w as u32), 1 << 20)
                .unwrap()
        })
        .collect();
    std::thread::scope(|scope| {
        for (w, unit) in units.iter().enumerate() {
            scope.spawn(move || {
                for i in 0..EACH {
                    unit.append(Generation(1), vec![write(i, w as u8 + 1)])
                        .unwrap();
                    assert_eq!(unit.read(Lba(i), 1).unwrap()[0], w as u8 + 1);
                }
            });
        }
    });
    let last: Vec<_> = units.iter().map(|u| (u.id(), Vba(EACH))).collect();
    drop(units);
    assert_durable_sharing(device, backend, &last);
}

fn options() -> DeviceOptions {
    DeviceOptions {
        segment_bytes: 1 << 20,
        spare_segments: 1,
        sync: true,
    }
}

fn open_device(backend: &MemoryBackend) -> Device {
    Device::open(Arc::new(backend.clone()), &options())
        .unwrap()
        .0
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
    let device = open_device(&backend);
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
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
    assert_shared_and_durable(unit, device, backend);
}

/// A unit holding VBAs 1..=5 durable and 6 accepted, whose ticket for 6 outlives a truncation
/// after VBA 3.
fn truncated_ticket() -> (Device, storagenode::engine::Ticket) {
    let backend = MemoryBackend::new(1 << 30);
    let device = open_device(&backend);
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

#[test]
fn a_refused_catch_up_record_changes_nothing() {
    let backend = MemoryBackend::new(1 << 30);
    let device = open_device(&backend);
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    for lba in 0..3 {
        unit.append(Generation(2), vec![write(lba, 1)]).unwrap();
    }
    let error = unit
        .begin_ingest(Vba(10), Generation(1), write(5, 1))
        .err()
        .expect("a record of an older generation is refused");
    assert!(error.to_string().contains("older than"), "{error}");
    assert_eq!(
        unit.next_vba(),
        Vba(4),
        "the refused record moved the next VBA"
    );
    // Nothing is missing: a drain ends at once, and the next catch-up record is taken.
    let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
    runtime.block_on(unit.drain_async()).unwrap();
    unit.begin_ingest(Vba(10), Generation(2), write(5, 2))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(unit.last_vba(), Vba(10));
}

struct PanickingFile {
    inner: Arc<dyn BlockFile>,
    armed: Option<Arc<AtomicBool>>,
}

impl BlockFile for PanickingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self
            .armed
            .as_ref()
            .is_some_and(|a| a.load(Ordering::SeqCst))
        {
            panic!("a deliberate panic in the middle of a batch");
        }
        self.inner.write_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn set_size(&self, size: u64) -> io::Result<()> {
        self.inner.set_size(size)
    }
}

/// A memory backend whose log segment files panic on write once `armed` is set: a broken
/// invariant in the middle of a batch.
fn panicking_writes(armed: &Arc<AtomicBool>) -> Wrapped {
    let armed = armed.clone();
    Wrapped::new(Arc::new(MemoryBackend::new(1 << 30)), move |path, file| {
        let segment = path.starts_with("log/") && path.ends_with(".seg");
        Arc::new(PanickingFile {
            inner: file,
            armed: segment.then(|| armed.clone()),
        })
    })
}

#[test]
fn a_panic_in_a_batch_fails_the_unit_instead_of_hanging_its_writers() {
    let armed = Arc::new(AtomicBool::new(false));
    let backend = panicking_writes(&armed);
    let (device, _) = Device::open(Arc::new(backend), &options()).unwrap();
    let unit = device.create_unit(UnitId::new(1, 0), 64 << 20).unwrap();
    unit.append(Generation(1), vec![write(0, 1)]).unwrap();
    armed.store(true, Ordering::SeqCst);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .unwrap();
    // Overlapping async writers: some write batches themselves, the rest leave them to the commit
    // thread; every one must end, with an error.
    let outcomes = runtime.block_on(async {
        let tasks: Vec<_> = (1..9)
            .map(|lba| {
                let unit = unit.clone();
                tokio::spawn(async move {
                    let ticket = unit.begin_append(Generation(1), vec![write(lba, 2)])?;
                    ticket.wait_async().await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            let outcome = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a writer hung after a batch panicked");
            outcomes.push(outcome.unwrap());
        }
        outcomes
    });
    for outcome in outcomes {
        let error = outcome.expect_err("no write after the panic is durable");
        assert!(
            error.to_string().contains("stopped after a write error"),
            "{error}"
        );
    }
    // The write acknowledged before the panic still reads back.
    assert_eq!(unit.read(Lba(0), 1).unwrap()[0], 1);
}
