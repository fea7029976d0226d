//! `vbs-storage`: the vbs storage node and its offline tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use client::size::parse_size;
use storagenode::bench::{self, BenchOptions, Pattern};
use storagenode::engine::check::check_device;
use storagenode::engine::FileBackend;

#[derive(Parser)]
#[command(name = "vbs-storage", version, about = "vbs storage node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the storage engine on a data directory, beside raw fdatasync on the same disk.
    Bench {
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
    },
    /// Verify every unit's log in a data directory (checksums, VBA order, index) without changing
    /// it. Exits 0 only if everything is consistent.
    Check {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SyncMode {
    Data,
    None,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vbs-storage: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Bench {
            data_dir,
            bs,
            iodepth,
            count,
            size,
            pattern,
            sync,
            segment_size,
            seed,
            json,
        } => {
            let options = BenchOptions {
                data_dir,
                bs,
                iodepth,
                count,
                unit_bytes: size,
                pattern,
                sync: sync == SyncMode::Data,
                segment_bytes: segment_size,
                seed: seed.unwrap_or_else(rand::random),
            };
            if !json {
                println!(
                    "vbs-storage bench: {} writes of {bs} bytes, iodepth {iodepth}, {:?} offsets, seed {}, in {}",
                    count,
                    pattern,
                    options.seed,
                    options.data_dir.display()
                );
            }
            let report = bench::run(&options, |step| {
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { data_dir, json } => {
            if !data_dir.is_dir() {
                anyhow::bail!("{} is not a directory", data_dir.display());
            }
            let backend = FileBackend::open(&data_dir)
                .with_context(|| format!("opening {}", data_dir.display()))?;
            let check = check_device(Arc::new(backend))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&check)?);
            } else {
                println!(
                    "device {} (segments of {} bytes)",
                    check.device, check.segment_bytes
                );
                for problem in &check.problems {
                    println!("  problem: {problem}");
                }
                for unit in &check.units {
                    println!(
                        "unit {}: {} segments, {} records, {} live records, {} live blocks, last VBA {}",
                        unit.unit, unit.segments, unit.records, unit.live_records, unit.live_blocks,
                        unit.last_vba
                    );
                    if let Some(torn) = &unit.torn_tail {
                        println!(
                            "  note: torn tail at {torn} (cut off when the node opens the unit)"
                        );
                    }
                    for problem in &unit.problems {
                        println!("  problem: {problem}");
                    }
                }
                let verdict = if check.consistent() {
                    "consistent"
                } else {
                    "INCONSISTENT"
                };
                println!("{} units: {verdict}", check.units.len());
            }
            Ok(if check.consistent() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
