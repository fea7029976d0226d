//! `vbs-storage`: parses arguments and runs the storage node (`serve`, the default) or one of its
//! offline tools (`bench`, `check`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use storagenode::bench::{self, BenchArgs};
use storagenode::config::ServeArgs;
use storagenode::engine::check::check_device;
use storagenode::engine::FileBackend;
use storagenode::node;

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

#[derive(Subcommand)]
enum Command {
    /// Run the storage node (the default).
    Serve(Box<ServeArgs>),
    /// Measure the storage engine on a data directory, beside raw fdatasync on the same disk.
    Bench(Box<BenchArgs>),
    /// Verify every unit's log in a data directory (checksums, VBA order, index) without changing
    /// it. Exits 0 only if everything is consistent.
    Check {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        Command::Serve(args) => serve(*args).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run_cli(*args).map(|()| ExitCode::SUCCESS),
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
                check.print(&mut std::io::stdout())?;
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
    let (listen, mut config) = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(listen.worker_threads)
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen.data)
            .await
            .with_context(|| format!("listening on {}", listen.data))?;
        if config.advertise.is_empty() {
            config.advertise = listener.local_addr()?.to_string();
        }
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
        let metrics = match &listen.metrics {
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
