//! The client library against a fake manager and fake storage nodes, in process: routing across
//! slices, map refresh on fencing errors, reporting a silent primary, back-off, giving up, and
//! queue depth.

mod fake;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::volume::{ClientError, Op, Volume, VolumeOptions};
use fake::{slice, volume_map, FakeManager, FakeNode, NotifyReply};
use vbs_wire::api::{Notification, Source, UnitGeneration};
use vbs_wire::conn::Pool;
use vbs_wire::managers::Managers;
use vbs_wire::proto::{ClientRequest, ErrorCode, PeerKind, Request, Response, MAX_IO_BYTES};
use vbs_wire::types::{Generation, Lba, UnitId};

const MIB: u64 = 1 << 20;
/// Volume 7 "v": 10 MiB in slices of 4 MiB (the last one 2 MiB).
const SIZE: u64 = 10 * MIB;
const SLICE: u64 = 4 * MIB;

/// A generous timeout: only the test of a silent primary should ever see one fire.
fn options() -> VolumeOptions {
    VolumeOptions {
        io_timeout: Duration::from_secs(3),
        retry_deadline: Duration::from_secs(5),
        client_name: "test-client".into(),
        pool: None,
    }
}

async fn open(manager: &FakeManager, options: VolumeOptions) -> Volume {
    let managers = Managers::parse(&manager.addr, Duration::from_secs(2)).expect("address");
    Volume::open(Arc::new(managers), "v", options)
        .await
        .expect("the volume opens")
}

fn unit_blocks(index: u32) -> u64 {
    (SLICE.min(SIZE - u64::from(index) * SLICE)) / 4096
}

/// Nodes a and b; slices 0 and 2 have their primary on a, slice 1 on b; all at generation 1.
async fn cluster() -> (FakeManager, FakeNode, FakeNode) {
    let a = FakeNode::start("a").await;
    let b = FakeNode::start("b").await;
    for index in 0..3 {
        let unit = UnitId::new(7, index);
        let on_a = index != 1;
        a.set_unit(unit, 1, on_a, unit_blocks(index));
        b.set_unit(unit, 1, !on_a, unit_blocks(index));
    }
    let map = volume_map(
        "v",
        SIZE,
        SLICE,
        vec![
            slice(7, 0, 1, &a, &b),
            slice(7, 1, 1, &b, &a),
            slice(7, 2, 1, &a, &b),
        ],
    );
    let manager = FakeManager::start(Some(map)).await;
    (manager, a, b)
}

fn pattern(len: u64, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn io_is_split_across_slices_and_reads_back() {
    let (manager, a, b) = cluster().await;
    let volume = open(&manager, options()).await;
    assert_eq!(volume.size_bytes(), SIZE);

    // 8 MiB from 1 MiB + 8 KiB: the end of slice 0, all of slice 1, the start of slice 2.
    let offset = MIB + 8192;
    let data = pattern(8 * MIB, 1);
    volume.write(offset, data.clone()).await.expect("write");
    assert_eq!(volume.read(offset, 8 * MIB).await.expect("read"), data);
    volume.flush().await.expect("flush");

    // Never-written blocks read as zeroes.
    let zeroes = volume.read(0, 8192).await.expect("read");
    assert!(zeroes.iter().all(|b| *b == 0));

    // Each slice went to its own primary, in requests of at most 1 MiB.
    for seen in a.seen() {
        assert_ne!(seen.unit.slice.0, 1, "slice 1 is b's: {seen:?}");
        assert!(seen.bytes <= MAX_IO_BYTES, "{seen:?}");
    }
    let b_writes: u64 = b
        .seen()
        .iter()
        .filter(|s| s.kind == "write")
        .inspect(|s| assert_eq!(s.unit, UnitId::new(7, 1)))
        .map(|s| s.bytes)
        .sum();
    assert_eq!(b_writes, SLICE);
    // The flush went to the slices written, each once.
    let flushes = a.seen().iter().filter(|s| s.kind == "flush").count()
        + b.seen().iter().filter(|s| s.kind == "flush").count();
    assert_eq!(flushes, 3);

    volume.trim(offset, 8 * MIB).await.expect("trim");
    let trimmed = volume.read(offset, 8 * MIB).await.expect("read");
    assert!(trimmed.iter().all(|b| *b == 0));
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_sent() {
    let (manager, a, b) = cluster().await;
    let volume = open(&manager, options()).await;
    assert!(matches!(
        volume.read(100, 4096).await,
        Err(ClientError::UnalignedOffset { offset: 100 })
    ));
    assert!(matches!(
        volume.write(0, Bytes::from(vec![0u8; 100])).await,
        Err(ClientError::UnalignedLength { len: 100 })
    ));
    let beyond = volume.read(SIZE - 4096, 8192).await.unwrap_err();
    assert!(beyond.is_invalid_request());
    assert!(beyond.to_string().contains("beyond the end"), "{beyond}");
    assert_eq!(volume.read(SIZE, 0).await.expect("no-op").len(), 0);
    volume.write(0, Bytes::new()).await.expect("no-op");
    assert!(a.seen().is_empty() && b.seen().is_empty());

    let managers = Managers::parse(&manager.addr, Duration::from_secs(2)).expect("address");
    let missing = Volume::open(Arc::new(managers), "nope", options()).await;
    assert!(matches!(missing, Err(ClientError::VolumeNotFound { .. })));
}

/// After a failover the client's map is out of date: the old primary refuses with
/// `StaleGeneration`, and 32 writes that all fail that way cost one refresh of the map.
#[tokio::test]
async fn fencing_errors_refresh_the_map_once_and_retry() {
    let (manager, a, b) = cluster().await;
    let volume = open(&manager, options()).await;
    assert_eq!(manager.gets(), 1);

    // Slice 0 fails over from a to b at generation 2; the client still has generation 1.
    a.set_unit(UnitId::new(7, 0), 2, false, unit_blocks(0));
    b.set_unit(UnitId::new(7, 0), 2, true, unit_blocks(0));
    let mut map = (*volume.map()).clone();
    map.slices[0] = slice(7, 0, 2, &b, &a);
    manager.set_map(map);

    let volume = Arc::new(volume);
    let writes: Vec<_> = (0..32u64)
        .map(|i| {
            let volume = volume.clone();
            tokio::spawn(async move { volume.write(i * 4096, pattern(4096, i as u8)).await })
        })
        .collect();
    for write in writes {
        write.await.expect("task").expect("write");
    }
    assert_eq!(manager.gets(), 2, "one refresh for 32 failures");
    let refused = a.seen().iter().filter(|s| s.kind == "write").count();
    assert_eq!(refused, 32);
    let on_b: Vec<_> = b.seen().into_iter().filter(|s| s.kind == "write").collect();
    assert_eq!(on_b.len(), 32);
    assert!(on_b.iter().all(|s| s.generation == Generation(2)));
    assert_eq!(volume.map().slices[0].primary, b.id);
    for i in 0..32u64 {
        let block = volume.read(i * 4096, 4096).await.expect("read");
        assert_eq!(block, pattern(4096, i as u8));
    }
}

/// A primary that does not answer is reported; the managers first say its lease still holds,
/// then fail the slice over; the write lands on the new primary.
#[tokio::test]
async fn a_silent_primary_is_reported_and_the_write_retried_on_the_new_one() {
    let (manager, a, b) = cluster().await;
    let options = VolumeOptions {
        io_timeout: Duration::from_millis(300),
        ..options()
    };
    let volume = open(&manager, options).await;
    a.state.silent.store(true, Ordering::SeqCst);
    b.set_unit(UnitId::new(7, 0), 2, true, unit_blocks(0));
    {
        let mut replies = manager.state.notify_replies.lock().expect("lock");
        replies.push_back(NotifyReply::LeaseNotExpired {
            retry_after_ms: 100,
        });
        replies.push_back(NotifyReply::FailOver(slice(7, 0, 2, &b, &a)));
    }

    let started = std::time::Instant::now();
    volume.write(0, pattern(8192, 9)).await.expect("write");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "timeout + lease wait"
    );

    let expected = Notification::Unresponsive {
        source: Source::Client("test-client".into()),
        target: a.id.clone(),
        units: vec![UnitGeneration {
            unit: UnitId::new(7, 0),
            generation: Generation(1),
        }],
    };
    assert_eq!(manager.notifications(), vec![expected.clone(), expected]);
    assert_eq!(volume.read(0, 8192).await.expect("read"), pattern(8192, 9));
    assert_eq!(volume.map().slices[0].generation, Generation(2));
}

#[tokio::test]
async fn unavailable_nodes_are_retried_after_a_backoff() {
    let (manager, a, _b) = cluster().await;
    let volume = open(&manager, options()).await;
    a.state
        .script
        .lock()
        .expect("lock")
        .extend([ErrorCode::Unavailable, ErrorCode::Unavailable]);
    let started = std::time::Instant::now();
    volume.write(0, pattern(4096, 3)).await.expect("write");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "50 + 100 ms of backoff"
    );
    assert_eq!(a.seen().len(), 3);
}

#[tokio::test]
async fn refusals_that_retrying_cannot_fix_fail_at_once() {
    let (manager, a, _b) = cluster().await;
    let volume = open(&manager, options()).await;
    for code in [
        ErrorCode::OutOfRange,
        ErrorCode::TooLarge,
        ErrorCode::BadRequest,
        ErrorCode::Conflict,
        ErrorCode::Internal,
    ] {
        a.state.script.lock().expect("lock").push_back(code);
        let before = a.seen().len();
        match volume.read(0, 4096).await {
            Err(ClientError::Refused { op, error, .. }) => {
                assert_eq!(op, Op::Read);
                assert_eq!(error.code, code);
            }
            other => panic!("{code:?}: {other:?}"),
        }
        assert_eq!(a.seen().len(), before + 1, "{code:?} was not retried");
    }
}

#[tokio::test]
async fn retries_stop_at_the_deadline_with_what_failed_last() {
    let (manager, a, _b) = cluster().await;
    let options = VolumeOptions {
        retry_deadline: Duration::from_millis(400),
        ..options()
    };
    let volume = open(&manager, options).await;
    a.state
        .script
        .lock()
        .expect("lock")
        .extend([ErrorCode::Unavailable; 100]);
    let started = std::time::Instant::now();
    let error = volume.read(0, 4096).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(error.is_unavailable());
    match &error {
        ClientError::GaveUp {
            op, attempts, last, ..
        } => {
            assert_eq!(*op, Op::Read);
            assert!(*attempts >= 3, "{error}");
            assert!(last.contains("Unavailable"), "{error}");
            assert!(last.contains("primary a"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_deleted_volume_is_reported_as_such() {
    let (manager, a, _b) = cluster().await;
    let volume = open(&manager, options()).await;
    *manager.state.map.lock().expect("lock") = None;
    a.state
        .script
        .lock()
        .expect("lock")
        .push_back(ErrorCode::UnknownUnit);
    let error = volume.read(0, 4096).await.unwrap_err();
    assert!(
        matches!(error, ClientError::VolumeDeleted { id: 7, .. }),
        "{error:?}"
    );
}

/// 32 concurrent reads are all in flight at once on the one pipelined connection: the node holds
/// every read until it has 32, so the test only finishes if the client keeps 32 outstanding.
#[tokio::test]
async fn thirty_two_concurrent_calls_keep_thirty_two_requests_in_flight() {
    let (manager, a, _b) = cluster().await;
    let volume = Arc::new(open(&manager, options()).await);
    a.state.gate.store(32, Ordering::SeqCst);
    let reads: Vec<_> = (0..32u64)
        .map(|i| {
            let volume = volume.clone();
            tokio::spawn(async move { volume.read(i * 4096, 4096).await })
        })
        .collect();
    for read in reads {
        read.await.expect("task").expect("read");
    }
    assert!(a.state.max_in_flight.load(Ordering::SeqCst) >= 32);
    // The 32 first calls shared one connection rather than racing to open 32.
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 1);
}

/// Calls abandoned midway (a caller's timeout, a dropped future) must not leave half a frame on
/// the connection that the next call would follow.
#[tokio::test]
async fn abandoned_calls_leave_the_connection_usable() {
    let (_manager, a, _b) = cluster().await;
    let pool = Pool::new(PeerKind::Client, "test-client", Duration::from_secs(2));
    pool.get(&a.addr).await.expect("connects");
    let write = |lba: u64| {
        Request::Client(ClientRequest::Write {
            unit: UnitId::new(7, 0),
            generation: Generation(1),
            lba: Lba(lba),
            data: Bytes::from(vec![5u8; MAX_IO_BYTES as usize]),
        })
    };
    // With the node not reading (after the frame it may be reading now), the socket buffers
    // fill and these calls are given up while their frames are still on the way out.
    a.pause_reading();
    for i in 0..16 {
        let _ = pool
            .call(&a.addr, write(i * 256), Duration::from_millis(100))
            .await;
    }
    a.resume_reading();
    let answer = pool
        .call(&a.addr, write(0), Duration::from_secs(2))
        .await
        .expect("the connection still works");
    assert!(matches!(answer, Response::Write { .. }));
    assert_eq!(a.state.connections.load(Ordering::SeqCst), 1);
}
