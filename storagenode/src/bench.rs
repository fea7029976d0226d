//! `vbs-storage bench`: drives the storage engine directly on a data directory and, on the same
//! directory, the fastest durable 4 KiB write the disk offers (pwrite + fdatasync at depth 1 into
//! preallocated, already-written space), so the two can be compared in one run.
//!
//! The two are measured in alternating rounds, so that a noisy neighbour or a drifting disk
//! affects both alike.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use vbs_wire::size::parse_size;
use vbs_wire::types::{Generation, Lba, SliceIndex, UnitId, VolumeId, BLOCK_BYTES};

use crate::config::SyncMode;
use crate::engine::{Device, DeviceOptions, Op, Unit};

/// The volume whose units the benchmark writes; they are removed when it ends.
const BENCH_VOLUME: VolumeId = VolumeId(u64::MAX);
/// At most this many units (`--units`).
const MAX_UNITS: usize = 4096;
const ROUNDS: u64 = 5;
/// Blocks in the raw test's preallocated file.
const RAW_FILE_BLOCKS: u64 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// Random block-aligned offsets across the unit.
    Rand,
    /// Sequential, wrapping at the end of the unit.
    Seq,
}

/// `vbs-storage bench`'s flags.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    data_dir: PathBuf,
    /// Bytes per write (a multiple of 4k).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Writes in flight at once.
    #[arg(long, default_value_t = 1)]
    iodepth: usize,
    /// Writes in total.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Size of the unit written to.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Units written at once (sharing the device's log), as on a node holding that many
    /// slices; write number n goes to unit n % units. Every unit has --size.
    #[arg(long, default_value_t = 1)]
    units: usize,
    /// How writers wait for the engine: a blocked thread each, or a tokio task each (as in
    /// the storage node).
    #[arg(long, value_enum, default_value = "threads")]
    driver: Driver,
    #[arg(long, value_enum, default_value = "rand")]
    pattern: Pattern,
    /// `data` syncs every batch (the only durable mode); `none` never syncs.
    #[arg(long, value_enum, default_value = "data")]
    sync: SyncMode,
    /// Segment size, for a data directory used for the first time.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    segment_size: u64,
    /// Seed of the random offsets and data.
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `vbs-storage bench`: a line saying what it measures, progress on stderr, then the
/// report (text, or one JSON object with `--json`).
pub fn run_cli(args: BenchArgs) -> Result<()> {
    let json = args.json;
    let options = BenchOptions {
        data_dir: args.data_dir,
        bs: args.bs,
        iodepth: args.iodepth,
        count: args.count,
        unit_bytes: args.size,
        units: args.units,
        driver: args.driver,
        pattern: args.pattern,
        sync: args.sync == SyncMode::Data,
        segment_bytes: args.segment_size,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    if !json {
        println!(
            "vbs-storage bench: {} writes of {} bytes, iodepth {}, {} unit(s), {:?} driver, {:?} offsets, seed {}, in {}",
            options.count,
            options.bs,
            options.iodepth,
            options.units,
            options.driver,
            options.pattern,
            options.seed,
            options.data_dir.display()
        );
    }
    let report = run(&options, |step| {
        if !json {
            eprint!("\r\x1b[2K{step}");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprint!("\r\x1b[2K");
        report.print(&mut std::io::stdout())?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub data_dir: PathBuf,
    pub bs: u64,
    pub iodepth: usize,
    pub count: u64,
    pub unit_bytes: u64,
    /// Units written at once, as a storage node holding that many slices; writer `w` writes to
    /// unit `w % units`, each unit with its own log and group commit.
    pub units: usize,
    pub driver: Driver,
    pub pattern: Pattern,
    pub sync: bool,
    pub segment_bytes: u64,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub bs: u64,
    pub iodepth: usize,
    pub units: usize,
    pub driver: Driver,
    pub count: u64,
    pub seed: u64,
    pub iops: f64,
    pub mbps: f64,
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    pub raw_fdatasync_us_p50: f64,
    pub raw_fdatasync_us_p99: f64,
    /// Engine write latency p50 over raw fdatasync p50.
    pub ratio_p50: f64,
    pub batches: u64,
    pub writes_per_batch: f64,
    pub index_bytes_per_live_block: f64,
    pub live_blocks: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static histogram bounds are valid")
}

fn micros(nanos: u64) -> f64 {
    (nanos as f64 / 1000.0 * 10.0).round() / 10.0
}

pub fn run(options: &BenchOptions, progress: impl Fn(&str)) -> Result<BenchReport> {
    if options.bs == 0 || options.bs % BLOCK_BYTES != 0 {
        bail!(
            "--bs {} is not a positive multiple of {BLOCK_BYTES}",
            options.bs
        );
    }
    if options.iodepth == 0 || options.iodepth > 1024 {
        bail!("--iodepth {} must be between 1 and 1024", options.iodepth);
    }
    if options.unit_bytes < options.bs || options.unit_bytes % BLOCK_BYTES != 0 {
        bail!(
            "--size {} must be a multiple of {BLOCK_BYTES} of at least --bs",
            options.unit_bytes
        );
    }
    if options.units == 0 || options.units > MAX_UNITS {
        bail!(
            "--units {} must be between 1 and {MAX_UNITS}",
            options.units
        );
    }
    let per_round = options.count.div_ceil(ROUNDS).max(options.iodepth as u64);
    let device_options = DeviceOptions {
        segment_bytes: options.segment_bytes,
        spare_segments: 2,
        sync: options.sync,
    };
    let (device, _) = Device::open_dir(&options.data_dir, &device_options)
        .with_context(|| format!("opening {}", options.data_dir.display()))?;
    let ids: Vec<UnitId> = (0..options.units)
        .map(|slice| UnitId {
            volume: BENCH_VOLUME,
            slice: SliceIndex(slice as u32),
        })
        .collect();
    for unit in device.units() {
        if unit.id().volume == BENCH_VOLUME {
            device
                .remove_unit(unit.id())
                .context("removing a previous benchmark's unit")?;
        }
    }
    let units = ids
        .iter()
        .map(|&id| device.create_unit(id, options.unit_bytes))
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("creating the benchmark units")?;
    wait_for_spares(&device)?;

    let raw_path = options.data_dir.join("bench-raw.tmp");
    let raw = RawFile::create(&raw_path)?;
    let mut engine_latency = histogram();
    let mut raw_latency = histogram();
    let mut engine_time = Duration::ZERO;
    let mut done = 0;
    for round in 0..ROUNDS {
        progress(&format!("round {}/{ROUNDS}: raw fdatasync", round + 1));
        raw.run(per_round.min(2000), options.seed + round, &mut raw_latency)?;
        progress(&format!("round {}/{ROUNDS}: engine", round + 1));
        let seed = options.seed + round * 1000;
        let (elapsed, latency) = drive(&units, options, per_round, done, seed)?;
        engine_time += elapsed;
        engine_latency
            .add(latency)
            .expect("histograms share bounds");
        done += per_round;
    }
    drop(raw);
    std::fs::remove_file(&raw_path).with_context(|| format!("removing {}", raw_path.display()))?;

    let stats: Vec<_> = units.iter().map(|unit| unit.stats()).collect();
    let batches = device.log_stats().0.batches;
    let index_bytes: u64 = stats.iter().map(|s| s.index_bytes).sum();
    let live_blocks: u64 = stats.iter().map(|s| s.written_blocks).sum();
    drop(units);
    for id in ids {
        device
            .remove_unit(id)
            .context("removing a benchmark unit")?;
    }
    let ops = done as f64;
    let secs = engine_time.as_secs_f64();
    let p50 = micros(engine_latency.value_at_quantile(0.5));
    let raw_p50 = micros(raw_latency.value_at_quantile(0.5));
    let blocks_per_op = options.bs / BLOCK_BYTES;
    Ok(BenchReport {
        bs: options.bs,
        iodepth: options.iodepth,
        units: options.units,
        driver: options.driver,
        count: done,
        seed: options.seed,
        iops: (ops / secs).round(),
        mbps: (ops * options.bs as f64 / secs / 1e6 * 10.0).round() / 10.0,
        latency_us_p50: p50,
        latency_us_p99: micros(engine_latency.value_at_quantile(0.99)),
        latency_us_max: micros(engine_latency.max()),
        raw_fdatasync_us_p50: raw_p50,
        raw_fdatasync_us_p99: micros(raw_latency.value_at_quantile(0.99)),
        ratio_p50: (p50 / raw_p50 * 100.0).round() / 100.0,
        batches,
        writes_per_batch: ((done * blocks_per_op) as f64 / batches as f64 * 10.0).round() / 10.0,
        index_bytes_per_live_block: (index_bytes as f64 / live_blocks as f64 * 10.0).round() / 10.0,
        live_blocks,
    })
}

/// Waits (bounded) until the device has its spare segments written, so the measurement does not
/// compete with the first ones being made.
fn wait_for_spares(device: &Device) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while device.spare_segments() < 2 {
        if Instant::now() > deadline {
            bail!("spare segments were not ready after 60 s: is the disk full or very slow?");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// How the benchmark's writers wait for the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// One thread per write in flight, each blocking in `Unit::append`.
    Threads,
    /// One task per write in flight on a tokio runtime with a worker per CPU, each awaiting
    /// `Ticket::wait_async`: how the storage node waits.
    Tokio,
}

/// The writes of one writer: random data made once, each write differing in its first 16
/// bytes, so the benchmark spends its CPU on the engine rather than on making data.
struct Writer {
    rng: rand::rngs::StdRng,
    data: Vec<u8>,
    op: u64,
    step: u64,
    count: u64,
    first_op: u64,
    slots: u64,
    blocks_per_op: u64,
    pattern: Pattern,
}

impl Writer {
    fn new(
        options: &BenchOptions,
        slots: u64,
        count: u64,
        first_op: u64,
        seed: u64,
        worker: u64,
    ) -> Writer {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (worker << 40));
        let mut data = vec![0u8; BLOCK_BYTES as usize];
        rng.fill(&mut data[..]);
        Writer {
            rng,
            data,
            op: worker,
            step: options.iodepth as u64,
            count,
            first_op,
            slots,
            blocks_per_op: options.bs / BLOCK_BYTES,
            pattern: options.pattern,
        }
    }

    /// The ops of this writer's next write and the number of the write, if it has one left.
    fn next(&mut self) -> Option<(u64, Vec<Op>)> {
        if self.op >= self.count {
            return None;
        }
        let number = self.op;
        let slot = match self.pattern {
            Pattern::Rand => self.rng.random_range(0..self.slots),
            Pattern::Seq => (self.first_op + self.op) % self.slots,
        };
        self.data[..8].copy_from_slice(&self.op.to_le_bytes());
        self.data[8..16].copy_from_slice(&slot.to_le_bytes());
        self.op += self.step;
        let ops = (0..self.blocks_per_op)
            .map(|i| Op::Write {
                lba: Lba(slot * self.blocks_per_op + i),
                data: Bytes::copy_from_slice(&self.data),
            })
            .collect();
        Some((number, ops))
    }
}

/// Runs `count` writes of `bs` at the given depth, write number `n` to unit `n % units` (so that
/// every unit is written even when there are more units than writers); returns the elapsed time
/// and latencies.
fn drive(
    units: &[Arc<Unit>],
    options: &BenchOptions,
    count: u64,
    first_op: u64,
    seed: u64,
) -> Result<(Duration, Histogram<u64>)> {
    let slots = units[0].blocks() / (options.bs / BLOCK_BYTES);
    let writers = (0..options.iodepth as u64).map(|worker| {
        (
            units.to_vec(),
            Writer::new(options, slots, count, first_op, seed, worker),
        )
    });
    let start = Instant::now();
    let results: Vec<Result<Histogram<u64>>> = match options.driver {
        Driver::Threads => std::thread::scope(|scope| {
            let workers: Vec<_> = writers
                .map(|(units, mut writer)| {
                    scope.spawn(move || -> Result<Histogram<u64>> {
                        let mut latency = histogram();
                        while let Some((n, ops)) = writer.next() {
                            let unit = &units[n as usize % units.len()];
                            let began = Instant::now();
                            unit.append(Generation(1), ops)?;
                            record(&mut latency, began);
                        }
                        Ok(latency)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("benchmark worker panicked"))
                .collect()
        }),
        Driver::Tokio => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async {
                let tasks: Vec<_> = writers
                    .map(|(units, mut writer)| {
                        tokio::spawn(async move {
                            let mut latency = histogram();
                            while let Some((n, ops)) = writer.next() {
                                let unit = &units[n as usize % units.len()];
                                let began = Instant::now();
                                unit.begin_append(Generation(1), ops)?.wait_async().await?;
                                record(&mut latency, began);
                            }
                            Ok(latency)
                        })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.expect("benchmark task panicked"));
                }
                results
            })
        }
    };
    let elapsed = start.elapsed();
    let mut total = histogram();
    for result in results {
        total.add(result?).expect("histograms share bounds");
    }
    Ok((elapsed, total))
}

fn record(latency: &mut Histogram<u64>, began: Instant) {
    latency
        .record(began.elapsed().as_nanos() as u64)
        .expect("within bounds");
}

/// The baseline: 4 KiB pwrite + fdatasync into a small file that is already allocated and
/// written, at depth 1.
struct RawFile {
    file: std::fs::File,
}

impl RawFile {
    fn create(path: &Path) -> Result<RawFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all_at(&vec![0u8; (RAW_FILE_BLOCKS * BLOCK_BYTES) as usize], 0)?;
        file.sync_all()?;
        Ok(RawFile { file })
    }

    fn run(&self, count: u64, seed: u64, latency: &mut Histogram<u64>) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; BLOCK_BYTES as usize];
        for _ in 0..count {
            rng.fill(&mut data[..]);
            let offset = rng.random_range(0..RAW_FILE_BLOCKS) * BLOCK_BYTES;
            let began = Instant::now();
            self.file.write_all_at(&data, offset)?;
            self.file.sync_data()?;
            latency
                .record(began.elapsed().as_nanos() as u64)
                .expect("within bounds");
        }
        Ok(())
    }
}

impl BenchReport {
    pub fn print(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "engine   {:>8} IOPS  {:>7} MB/s  latency p50 {} us  p99 {} us  max {} us",
            self.iops, self.mbps, self.latency_us_p50, self.latency_us_p99, self.latency_us_max
        )?;
        writeln!(
            out,
            "raw      pwrite+fdatasync 4k QD1 into written space: p50 {} us  p99 {} us",
            self.raw_fdatasync_us_p50, self.raw_fdatasync_us_p99
        )?;
        writeln!(out, "ratio    engine p50 / raw p50 = {:.2}", self.ratio_p50)?;
        writeln!(
            out,
            "commit   {} batches, {} blocks per batch",
            self.batches, self.writes_per_batch
        )?;
        writeln!(
            out,
            "index    {} bytes per live block ({} live blocks)",
            self.index_bytes_per_live_block, self.live_blocks
        )
    }
}
