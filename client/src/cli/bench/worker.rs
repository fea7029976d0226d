//! One bench worker: issues one operation at a time, as fast as the volume answers, until the
//! run's end; `iodepth` of them run at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::time::Instant;

use client::types::BLOCK_BYTES;
use client::volume::Volume;

use super::verify::{check_block, encode_block, Ledger, FILLER_BYTES};
use super::Pattern;

/// Problems (errors, mismatches) kept for the report; the rest are only counted.
const MAX_PROBLEMS_KEPT: usize = 10;
/// Latencies above this (in microseconds) are recorded as this: an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What every worker shares.
pub struct Workload {
    pub volume: Arc<Volume>,
    pub rw: Pattern,
    pub bs: u64,
    /// `bs`-aligned positions in the volume: offsets are `slot * bs`.
    pub slots: u64,
    pub end: Instant,
    pub verify: Option<Verify>,
    /// Operations finished (for the progress line).
    pub done: AtomicU64,
    pub failed: AtomicU64,
    /// The next slot of a sequential run.
    cursor: AtomicU64,
    /// The next write's sequence number.
    next_seq: AtomicU64,
    problems: Mutex<Vec<String>>,
}

pub struct Verify {
    /// Random per run, written into every block.
    pub run: u64,
    pub ledger: Ledger,
}

/// What one worker did.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub errors: u64,
    pub blocks_checked: u64,
    pub mismatches: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            latency_us: new_histogram(),
            reads: 0,
            writes: 0,
            errors: 0,
            blocks_checked: 0,
            mismatches: 0,
        }
    }

    pub fn add(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("every histogram has the same bounds");
        self.reads += other.reads;
        self.writes += other.writes;
        self.errors += other.errors;
        self.blocks_checked += other.blocks_checked;
        self.mismatches += other.mismatches;
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

impl Workload {
    pub fn new(
        volume: Arc<Volume>,
        rw: Pattern,
        bs: u64,
        end: Instant,
        verify: Option<Verify>,
    ) -> Workload {
        let slots = volume.size_bytes() / bs;
        Workload {
            volume,
            rw,
            bs,
            slots,
            end,
            verify,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// The first problems seen, in order.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn problem(&self, text: String) {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if problems.len() < MAX_PROBLEMS_KEPT {
            problems.push(text);
        }
    }

    fn pick_slot(&self, rng: &mut StdRng) -> u64 {
        if self.rw.is_random() {
            rng.random_range(0..self.slots)
        } else {
            self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots
        }
    }

    /// A slot no other write is using. There always is one: the run checked that there are at
    /// least as many slots as workers.
    fn claim_slot(&self, ledger: &Ledger, rng: &mut StdRng) -> u64 {
        let start = self.pick_slot(rng);
        (0..self.slots)
            .map(|i| (start + i) % self.slots)
            .find(|slot| ledger.try_claim(*slot))
            .expect("fewer writers than slots")
    }
}

/// Runs operations until the workload's end.
pub async fn run(work: Arc<Workload>, seed: u64) -> Tally {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    let mut data = vec![0u8; work.bs as usize];
    rng.fill_bytes(&mut data);
    let data = Bytes::from(data);
    while Instant::now() < work.end {
        let write = match work.rw {
            Pattern::RandWrite | Pattern::Write => true,
            Pattern::RandRead | Pattern::Read => false,
            Pattern::RandRw => rng.random_bool(0.5),
        };
        let ok = if write {
            write_once(&work, &mut rng, &data, &mut tally).await
        } else {
            read_once(&work, &mut rng, &mut tally).await
        };
        work.done.fetch_add(1, Ordering::Relaxed);
        if !ok {
            work.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    tally
}

fn record(tally: &mut Tally, started: Instant) {
    let us = started.elapsed().as_micros().max(1);
    tally
        .latency_us
        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
}

async fn write_once(work: &Workload, rng: &mut StdRng, filler: &Bytes, tally: &mut Tally) -> bool {
    let (slot, payload, seq) = match &work.verify {
        None => (work.pick_slot(rng), filler.clone(), None),
        Some(verify) => {
            let slot = work.claim_slot(&verify.ledger, rng);
            let seq = work.next_seq.fetch_add(1, Ordering::Relaxed);
            let offset = slot * work.bs;
            let mut buf = BytesMut::zeroed(work.bs as usize);
            for (i, block) in buf.chunks_exact_mut(BLOCK_BYTES as usize).enumerate() {
                let at = offset + i as u64 * BLOCK_BYTES;
                encode_block(block, verify.run, at, seq, &filler[..FILLER_BYTES]);
            }
            (slot, buf.freeze(), Some(seq))
        }
    };
    let offset = slot * work.bs;
    let started = Instant::now();
    let result = work.volume.write(offset, payload).await;
    let ok = result.is_ok();
    if let Some(verify) = &work.verify {
        verify.ledger.release(slot, seq.filter(|_| ok));
    }
    match result {
        Ok(()) => {
            record(tally, started);
            tally.writes += 1;
        }
        Err(error) => {
            tally.errors += 1;
            work.problem(format!("write at offset {offset}: {error}"));
        }
    }
    ok
}

async fn read_once(work: &Workload, rng: &mut StdRng, tally: &mut Tally) -> bool {
    let slot = work.pick_slot(rng);
    let offset = slot * work.bs;
    // The newest write acknowledged before the read is sent: the read must see it or a newer one.
    let floor = work.verify.as_ref().and_then(|v| v.ledger.floor(slot));
    let started = Instant::now();
    let data = match work.volume.read(offset, work.bs).await {
        Ok(data) => data,
        Err(error) => {
            tally.errors += 1;
            work.problem(format!("read at offset {offset}: {error}"));
            return false;
        }
    };
    record(tally, started);
    tally.reads += 1;
    if let Some(verify) = &work.verify {
        for (i, block) in data.chunks_exact(BLOCK_BYTES as usize).enumerate() {
            let at = offset + i as u64 * BLOCK_BYTES;
            tally.blocks_checked += 1;
            if let Err(mismatch) = check_block(block, verify.run, at, floor) {
                tally.mismatches += 1;
                work.problem(format!("verify: {mismatch}"));
            }
        }
    }
    true
}
