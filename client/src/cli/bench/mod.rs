//! `vbs bench`: `iodepth` workers drive one volume through the client library for a fixed time,
//! then the run prints IOPS, throughput and latency percentiles (from an HDR histogram).
//!
//! - `worker`: one worker's loop, and what they share.
//! - `verify`: the self-checking block format of `--verify`.
//! - `report`: the figures, as text or JSON.

mod report;
mod verify;
mod worker;

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::task::JoinSet;
use tokio::time::Instant;

use client::managers::Managers;
use client::size::parse_duration;
use client::types::BLOCK_BYTES;
use client::volume::{Volume, VolumeOptions};

use super::{exit, Exit};
use report::{Report, Setup};
use worker::{Tally, Verify, Workload};

/// The largest block size a run may use: `iodepth` buffers of it are in memory at once.
const MAX_BS: u64 = 64 << 20;

/// The IO pattern, named as fio names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    #[value(name = "randwrite")]
    RandWrite,
    #[value(name = "randread")]
    RandRead,
    #[value(name = "write")]
    Write,
    #[value(name = "read")]
    Read,
    /// Random offsets, half reads and half writes
    #[value(name = "randrw")]
    RandRw,
}

impl Pattern {
    pub fn name(self) -> &'static str {
        match self {
            Pattern::RandWrite => "randwrite",
            Pattern::RandRead => "randread",
            Pattern::Write => "write",
            Pattern::Read => "read",
            Pattern::RandRw => "randrw",
        }
    }

    pub fn is_random(self) -> bool {
        matches!(
            self,
            Pattern::RandWrite | Pattern::RandRead | Pattern::RandRw
        )
    }

    fn writes(self) -> bool {
        !matches!(self, Pattern::RandRead | Pattern::Read)
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Volume name
    #[arg(value_parser = super::volume_name)]
    name: String,
    /// IO pattern
    #[arg(long, value_enum, default_value = "randwrite")]
    rw: Pattern,
    /// Bytes per operation, a multiple of 4k
    #[arg(long, default_value = "4k", value_parser = super::size)]
    bs: u64,
    /// Operations in flight at once (one worker each)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    iodepth: u32,
    /// How long to run (e.g. 10s, 500ms, 2m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    runtime: Duration,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
    /// Write self-checking blocks and check every block read
    #[arg(long)]
    verify: bool,
    /// Seed of the random offsets and data (printed; a random one by default)
    #[arg(long)]
    seed: Option<u64>,
}

pub async fn run(managers: Arc<Managers>, args: BenchArgs) -> anyhow::Result<()> {
    if args.bs == 0 || args.bs % BLOCK_BYTES != 0 || args.bs > MAX_BS {
        bail!(
            "--bs {} must be a multiple of {BLOCK_BYTES} between 4k and {}",
            args.bs,
            super::format::size(MAX_BS)
        );
    }
    let volume = Arc::new(Volume::open(managers, &args.name, VolumeOptions::default()).await?);
    let slots = volume.size_bytes() / args.bs;
    if slots == 0 {
        bail!(
            "--bs {} is larger than volume {} ({} bytes)",
            args.bs,
            args.name,
            volume.size_bytes()
        );
    }
    if args.verify && args.rw.writes() && slots < u64::from(args.iodepth) {
        bail!(
            "--verify keeps one write per {}-byte slot in flight, and volume {} has {slots} slots \
             for --iodepth {}: lower --iodepth or --bs",
            args.bs,
            args.name,
            args.iodepth
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let verify = args.verify.then(|| Verify {
        run: rand::random(),
        ledger: verify::Ledger::new(),
    });
    let started = Instant::now();
    let work = Arc::new(Workload::new(
        volume,
        args.rw,
        args.bs,
        started + args.runtime,
        verify,
    ));
    let mut workers = JoinSet::new();
    for i in 0..args.iodepth {
        workers.spawn(worker::run(work.clone(), worker_seed(seed, i)));
    }
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(work.clone(), started)));
    let mut tally = Tally::new();
    while let Some(done) = workers.join_next().await {
        tally.add(&done?);
    }
    let elapsed = started.elapsed();
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[2K");
    }

    let report = Report::new(
        Setup {
            volume: args.name.clone(),
            rw: args.rw.name(),
            bs: args.bs,
            iodepth: args.iodepth,
            seed,
            verify: args.verify,
        },
        &tally,
        elapsed,
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.render());
    }
    for problem in work.problems() {
        eprintln!("vbs: bench: {problem}");
    }
    if report.verify_mismatches > 0 {
        return Err(Exit {
            code: exit::VERIFY_MISMATCH,
            message: format!(
                "bench: {} of {} blocks read did not match what was written (seed {seed})",
                report.verify_mismatches, report.blocks_checked
            ),
        }
        .into());
    }
    if report.errors > 0 {
        bail!(
            "bench: {} of {} operations failed (seed {seed})",
            report.errors,
            report.errors + report.ops
        );
    }
    Ok(())
}

/// Each worker's own seed, spread so that neighbouring workers do not share a sequence.
fn worker_seed(seed: u64, worker: u32) -> u64 {
    seed ^ u64::from(worker).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// One line on stderr, rewritten every second: elapsed time, operations, IOPS so far and in the
/// last second, errors.
async fn show_progress(work: Arc<Workload>, started: Instant) {
    let mut ticks =
        tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_done = 0;
    loop {
        ticks.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        let done = work.done.load(Ordering::Relaxed);
        let failed = work.failed.load(Ordering::Relaxed);
        eprint!(
            "\r\x1b[2K{elapsed:>6.1}s  {done} ops  {:.0} IOPS (last second {})  {failed} errors",
            done as f64 / elapsed,
            done - last_done
        );
        let _ = std::io::stderr().flush();
        last_done = done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_get_distinct_seeds() {
        let seeds: std::collections::HashSet<u64> = (0..1024).map(|i| worker_seed(7, i)).collect();
        assert_eq!(seeds.len(), 1024);
        assert_eq!(worker_seed(7, 0), 7);
    }

    #[test]
    fn patterns_say_whether_they_write_and_seek() {
        assert!(Pattern::RandRw.writes() && Pattern::RandRw.is_random());
        assert!(!Pattern::Read.writes() && !Pattern::Read.is_random());
        assert_eq!(Pattern::RandRead.name(), "randread");
    }
}
