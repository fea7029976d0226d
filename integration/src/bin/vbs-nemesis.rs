//! `vbs-nemesis`: runs a seeded fault schedule against a local vbs cluster and judges the
//! clients' history. Exits 0 when nothing was lost, no read was stale, no split brain was seen
//! and the cluster converged; 1 otherwise (with the command that replays the run).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use integration::nemesis::schedule::FaultKind;
use integration::nemesis::{self, netfilter, Config};
use vbs_wire::size::parse_duration;

#[derive(Parser)]
#[command(
    name = "vbs-nemesis",
    about = "fault injection against a local vbs cluster"
)]
struct Args {
    /// Seed of the schedule and the clients' operations (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the faults and pauses of the schedule add up to, e.g. 90s, 30m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Copies of each slice: 2 or 3.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Fault kinds to draw from, comma separated (default: all).
    #[arg(long, value_delimiter = ',', value_parser = FaultKind::parse)]
    faults: Vec<FaultKind>,
    /// Switch on a deliberate bug in the storage nodes (built with the `bugs` feature), e.g.
    /// ack-before-secondary.
    #[arg(long)]
    bug: Option<String>,
    /// The managers' `--lease`; hangs outlast it, kills and partitions straddle it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    lease: Duration,
    /// Concurrent clients through the client library.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Concurrent clients through the NBD gateway, with libnbd.
    #[arg(long, default_value_t = 1)]
    nbd_clients: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut config = Config::new(seed, args.duration, args.replicas);
    if !args.faults.is_empty() {
        config.faults = args.faults;
    }
    config.bug = args.bug;
    config.lease = args.lease;
    config.workload.clients = args.clients;
    config.workload.nbd_clients = args.nbd_clients;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vbs-nemesis: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            report = nemesis::run(&config) => Some(report),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the run (on ctrl-c) dropped its packet filter, which removed its rules; this
    // removes any a failure left.
    if let Err(e) = netfilter::remove_leftovers() {
        eprintln!("vbs-nemesis: removing packet filter rules: {e:#}");
    }
    match outcome {
        Some(Ok(report)) => {
            print!("{}", report.describe());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some(Err(e)) => {
            eprintln!("vbs-nemesis: {e:#}");
            eprintln!("vbs-nemesis: replay with: {}", config.replay_command());
            ExitCode::FAILURE
        }
        None => {
            eprintln!("vbs-nemesis: interrupted (seed {seed})");
            ExitCode::FAILURE
        }
    }
}
