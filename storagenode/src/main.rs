//! `vbs-storage`: the vbs storage node and its offline tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use client::security::ServerArgs;
use client::size::{parse_duration, parse_size};
use client::types::NodeId;
use storagenode::bench::{self, BenchOptions, Driver, Pattern};
use storagenode::engine::check::check_device;
use storagenode::engine::{DeviceOptions, FileBackend};
use storagenode::node::{self, NodeConfig};

/// Without a subcommand, `vbs-storage` runs the storage node (`serve`).
#[derive(Parser)]
#[command(
    name = "vbs-storage",
    version,
    about = "vbs storage node",
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// This node's name, unique in the cluster (letters, digits, '_', '.', '-').
    #[arg(long, required = true)]
    id: Option<String>,
    /// Data-plane address to listen on (HOST:PORT; port 0 picks a free one).
    #[arg(long, required = true)]
    listen: Option<String>,
    /// Address other nodes and clients connect to, if not the listen address.
    #[arg(long)]
    advertise: Option<String>,
    /// Serve `/metrics` (Prometheus text format) over HTTP on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// A storage device's directory; give it once per device.
    #[arg(long = "data-dir", required = true)]
    data_dirs: Vec<PathBuf>,
    /// Manager addresses, HOST:PORT,HOST:PORT,...
    #[arg(long, env = "VBS_MANAGERS", required = true)]
    managers: Option<String>,
    /// Capacity to announce (default: the devices' size), e.g. 100G.
    #[arg(long, value_parser = parse_size)]
    capacity: Option<u64>,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: std::time::Duration,
    /// How long a primary waits for a secondary before reporting it unresponsive.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    write_timeout: std::time::Duration,
    /// Segment size for data directories used for the first time.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    segment_size: u64,
    /// The most bytes per second one unit's resync pulls, so catching up does not starve
    /// client IO.
    #[arg(long, default_value = "100M", value_parser = parse_size)]
    resync_rate: u64,
    /// The most units that pull a resync at once (the rest wait their turn): a node that
    /// restarts holding thousands of units catches up this many at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    resync_parallel: u32,
    /// How often each slice this node is primary of is scrubbed (every copy read back and
    /// checked, and the copies compared).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    scrub_interval: std::time::Duration,
    /// The most bytes per second all of this node's scrubs read together.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    scrub_rate: u64,
    /// `data` syncs every write batch (the only durable mode); `none` never syncs (tests only).
    #[arg(long, value_enum, default_value = "data")]
    sync: SyncMode,
    /// Threads that run the node's network and replication work. Disk writes and fsyncs run on
    /// threads of their own, so one is enough for one device; see docs/operations.md.
    #[arg(long, env = "VBS_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: u16,
    #[command(flatten)]
    security: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the storage node (the default).
    Serve(Box<ServeArgs>),
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
    let command = cli
        .command
        .unwrap_or_else(|| Command::Serve(Box::new(cli.serve)));
    match command {
        Command::Serve(args) => {
            serve(*args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            data_dir,
            bs,
            iodepth,
            count,
            size,
            units,
            driver,
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
                units,
                driver,
                pattern,
                sync: sync == SyncMode::Data,
                segment_bytes: segment_size,
                seed: seed.unwrap_or_else(rand::random),
            };
            if !json {
                println!(
                    "vbs-storage bench: {} writes of {bs} bytes, iodepth {iodepth}, {units} unit(s), {:?} driver, {:?} offsets, seed {}, in {}",
                    count,
                    options.driver,
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
                    if unit.damaged_records > 0 {
                        println!(
                            "  damaged: {} records whose data fails its checksum (repaired from another copy when read or scrubbed)",
                            unit.damaged_records
                        );
                    }
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

fn serve(args: ServeArgs) -> Result<()> {
    let required = |value: Option<String>, flag: &str| {
        value.ok_or_else(|| anyhow::anyhow!("--{flag} is required to run the storage node"))
    };
    let id = NodeId::parse(&required(args.id, "id")?).map_err(anyhow::Error::msg)?;
    let listen = required(args.listen, "listen")?;
    let managers = required(args.managers, "managers")?;
    let security = args.security.load().context("security settings")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(usize::from(args.worker_threads))
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let advertise = match args.advertise {
            Some(advertise) => advertise,
            None => listener.local_addr()?.to_string(),
        };
        let mut config = NodeConfig::new(id, advertise, args.data_dirs, managers);
        config.capacity_bytes = args.capacity;
        config.heartbeat_interval = args.heartbeat_interval;
        config.write_timeout = args.write_timeout;
        config.resync_rate_bytes = args.resync_rate.max(1);
        config.resync_parallel = args.resync_parallel as usize;
        config.scrub_interval = args.scrub_interval;
        config.scrub_rate_bytes = args.scrub_rate.max(1);
        config.security = security;
        config.device = DeviceOptions {
            segment_bytes: args.segment_size,
            sync: args.sync == SyncMode::Data,
            ..DeviceOptions::default()
        };
        // SIGINT or SIGTERM (what service managers send) stop the node cleanly: it stops
        // serving and checkpoints its devices.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        };
        let metrics = match &args.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening for metrics on {addr}"))?,
            ),
            None => None,
        };
        node::run(listener, metrics, config, shutdown).await
    })
}
