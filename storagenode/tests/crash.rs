//! Crash test: a real process writes through the engine (file backend, fdatasync) and is killed
//! with SIGKILL at a random moment; the data directory is reopened and every write the process had
//! reported durable must read back intact. Several rounds run on the same directory, so recovery
//! after recovery is covered too. Compaction and checkpoints run in the writer as well, so kills
//! land inside them, and each reopen after the first starts from a checkpoint.
//!
//! The writer is this same test binary, started again with `VBS_CRASH_CHILD_DIR` set.
//! Replay a run with `VBS_CRASH_SEED=<seed> cargo test -p storagenode --test crash`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use storagenode::engine::{Device, DeviceOptions, Op};
use vbs_wire::types::{Generation, Lba, UnitId, Vba, BLOCK_BYTES};

const UNIT: UnitId = UnitId {
    volume: vbs_wire::types::VolumeId(5),
    slice: vbs_wire::types::SliceIndex(0),
};
const BLOCKS: u64 = 2048;
const WRITERS: usize = 8;
const ROUNDS: u64 = 4;

fn options() -> DeviceOptions {
    DeviceOptions {
        segment_bytes: 1 << 20,
        spare_segments: 2,
        sync: true,
    }
}

/// A block that says which LBA and which write it is, and whose every byte depends on both.
fn payload(lba: u64, seq: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(BLOCK_BYTES as usize);
    data.extend_from_slice(&lba.to_le_bytes());
    data.extend_from_slice(&seq.to_le_bytes());
    let mut x = lba.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq ^ 0x5555;
    while data.len() < BLOCK_BYTES as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data
}

/// (lba, seq) of a block that is a whole payload, or `None` for zeroes; panics on anything else.
fn decode(lba: u64, data: &[u8]) -> Option<u64> {
    if data.iter().all(|b| *b == 0) {
        return None;
    }
    let seq = u64::from_le_bytes(data[8..16].try_into().unwrap());
    assert_eq!(
        data,
        &payload(lba, seq)[..],
        "LBA {lba} holds a damaged or misplaced block"
    );
    Some(seq)
}

fn child(dir: &str, seed: u64, first_seq: u64) {
    let (device, _) = Device::open_dir(dir.as_ref(), &options()).expect("device opens");
    let device = Arc::new(device);
    let unit = match device.unit(UNIT) {
        Some(unit) => unit,
        None => device
            .create_unit(UNIT, BLOCKS * BLOCK_BYTES)
            .expect("unit is created"),
    };
    let seq = Arc::new(AtomicU64::new(first_seq));
    let compactor = {
        let unit = unit.clone();
        let device = device.clone();
        std::thread::spawn(move || loop {
            unit.set_stable_vba(unit.last_vba());
            device.compact(0.5).expect("compaction");
            device.checkpoint().expect("checkpoint");
            std::thread::yield_now();
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let unit = unit.clone();
            let seq = seq.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (w as u64) << 32);
                loop {
                    let lba = rng.random_range(0..BLOCKS);
                    let s = seq.fetch_add(1, Ordering::SeqCst);
                    let op = Op::Write {
                        lba: Lba(lba),
                        data: Bytes::from(payload(lba, s)),
                    };
                    let vba = unit.append(Generation(1), vec![op]).expect("append");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {lba} {s} {vba}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    compactor.join().expect("compactor");
}

#[test]
fn sigkill_loses_no_write_reported_durable() {
    if let Ok(dir) = std::env::var("VBS_CRASH_CHILD_DIR") {
        let var = |name: &str| std::env::var(name).unwrap().parse().unwrap();
        return child(
            &dir,
            var("VBS_CRASH_CHILD_SEED"),
            var("VBS_CRASH_CHILD_FIRST_SEQ"),
        );
    }
    let seed: u64 = match std::env::var("VBS_CRASH_SEED") {
        Ok(seed) => seed.parse().expect("VBS_CRASH_SEED is a number"),
        Err(_) => rand::random(),
    };
    println!("crash test seed {seed} (replay: VBS_CRASH_SEED={seed} cargo test -p storagenode --test crash)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    // Per LBA, the acknowledged write with the highest VBA: (vba, seq).
    let mut acked: HashMap<u64, (u64, u64)> = HashMap::new();
    for round in 0..ROUNDS {
        let kill_after = rng.random_range(200..3000);
        let mut writer = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_loses_no_write_reported_durable",
                "--nocapture",
            ])
            .env("VBS_CRASH_CHILD_DIR", dir.path())
            .env("VBS_CRASH_CHILD_SEED", (seed + round).to_string())
            // Each round's sequence numbers are above every earlier round's.
            .env("VBS_CRASH_CHILD_FIRST_SEQ", ((round + 1) << 40).to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let record = |line: &str, acked: &mut HashMap<u64, (u64, u64)>| {
            let Some(rest) = line.strip_prefix("ack ") else {
                return false;
            };
            let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap()).collect();
            let (lba, seq, vba) = (fields[0], fields[1], fields[2]);
            let newest = acked.entry(lba).or_default();
            if vba > newest.0 {
                *newest = (vba, seq);
            }
            true
        };
        for line in lines.by_ref() {
            if record(&line.unwrap(), &mut acked) {
                seen += 1;
                if seen == kill_after {
                    break;
                }
            }
        }
        assert_eq!(seen, kill_after, "the writer stopped before it was killed");
        writer.kill().unwrap(); // SIGKILL
        for line in lines {
            let Ok(line) = line else { break };
            record(&line, &mut acked);
        }
        writer.wait().unwrap();

        let (device, reports) =
            Device::open_dir(dir.path(), &options()).expect("reopens after SIGKILL");
        let unit = device.unit(UNIT).expect("unit survives");
        let data = unit.read(Lba(0), BLOCKS).unwrap();
        // The live record of each block, with its VBA.
        let mut live = HashMap::new();
        for record in unit.records_after(Vba(0)) {
            let record = record.unwrap();
            if let Op::Write { lba, data } = record.op {
                live.insert(lba.0, (record.vba.0, data));
            }
        }
        for lba in 0..BLOCKS {
            let block = &data[(lba * BLOCK_BYTES) as usize..((lba + 1) * BLOCK_BYTES) as usize];
            let held = decode(lba, block);
            let Some(&(want_vba, want_seq)) = acked.get(&lba) else {
                continue;
            };
            let held = held
                .unwrap_or_else(|| panic!("LBA {lba}: write {want_seq} was lost (seed {seed})"));
            let (vba, ref stored) = live[&lba];
            assert_eq!(
                &stored[..],
                block,
                "LBA {lba}: read and records_after disagree"
            );
            // A newer write that was in flight when the process died may have landed too.
            assert!(
                vba >= want_vba,
                "LBA {lba}: acknowledged VBA {want_vba} lost, VBA {vba} read (seed {seed})"
            );
            if vba == want_vba {
                assert_eq!(
                    held, want_seq,
                    "LBA {lba}: VBA {vba} holds the wrong write (seed {seed})"
                );
            }
            acked.insert(lba, (vba, held));
        }
        assert!(unit.last_vba() >= Vba(seen as u64));
        println!("round {round}: killed after {kill_after} acks, recovered {reports:?}");
    }
}
