//! The `vbs` command: argument parsing, dispatch, and turning every failure into one line on
//! stderr and a non-zero exit code.
//!
//! # Layout
//! - `status`: `vbs status`.
//! - `events`: `vbs events`, the managers' event log.
//! - `volume`: `vbs volume create|list|show|delete`.
//! - `node`: `vbs node list|drain`.
//! - `io`: `vbs write` and `vbs read`.
//! - `bench`: `vbs bench`.
//! - `nbd`: `vbs nbd`, an NBD server for a volume.
//! - `up`: `vbs up`, a whole cluster on this machine.
//! - `table`, `format`: aligned text tables and human figures.

mod bench;
mod events;
mod format;
mod io;
mod nbd;
mod node;
mod scrub;
mod status;
mod table;
mod up;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use client::managers::{Managers, DEFAULT_REQUEST_TIMEOUT};
use client::security::Security;
use client::size::SizeError;
use client::types::{check_name, NameError};

/// Exit codes besides 0 (success).
pub mod exit {
    /// The command failed: bad input, a cluster error, an IO error.
    pub const FAILURE: u8 = 1;
    /// The command line itself could not be parsed.
    pub const USAGE: u8 = 2;
    /// `vbs bench --verify` read data that does not match what was written.
    pub const VERIFY_MISMATCH: u8 = 3;
}

/// A failure with its own exit code (anything else exits with [`exit::FAILURE`]).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

#[derive(Debug, Parser)]
#[command(
    name = "vbs",
    version,
    about = "Command line of the vbs replicated block store",
    after_help = "Sizes accept binary suffixes: 4k, 64M, 1G. Exit status: 0 success, 1 failure, \
                  2 bad command line, 3 bench verification mismatch."
)]
struct Cli {
    /// Manager addresses, HOST:PORT[,HOST:PORT...]; any one of them will do.
    #[arg(long, env = "VBS_MANAGERS", value_name = "ADDR,...")]
    managers: Option<String>,
    /// File holding the cluster token (mode 600), for a cluster that requires authentication.
    #[arg(long, global = true, env = "VBS_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// PEM file of the cluster's CA: speak TLS to managers and storage nodes, checking them
    /// against it.
    #[arg(long, global = true, env = "VBS_TLS_CA", value_name = "PATH")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Managers (and the leader), storage nodes, volumes and the status of every copy
    Status(status::StatusArgs),
    /// What changed in the cluster and why (node up/down, failovers, copy status); --follow
    /// waits for more
    Events(events::EventsArgs),
    /// Create, list, show and delete volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// List storage nodes, drain one
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Write a file (or stdin) to a volume
    Write(io::WriteArgs),
    /// Read from a volume to a file (or stdout)
    Read(io::ReadArgs),
    /// Read every copy of a volume back, repair damaged records and compare the copies
    Scrub(scrub::ScrubArgs),
    /// Measure IOPS, throughput and latency of a volume
    Bench(bench::BenchArgs),
    /// Serve a volume over NBD (for qemu, nbd-client and other block tools)
    Nbd(nbd::NbdArgs),
    /// Run a whole cluster on this machine (managers, storage nodes, an NBD export)
    Up(up::UpArgs),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(exit::FAILURE, &format!("starting the runtime: {error}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<Exit>() {
            Some(exit) => fail(exit.code, &exit.message),
            None => fail(exit::FAILURE, &format!("{error:#}")),
        },
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let security = || {
        Security::load(cli.token_file.as_deref(), cli.tls_ca.as_deref(), None, None)
            .context("security settings")
    };
    let managers = || connect(cli.managers.as_deref(), security()?);
    match cli.command {
        Command::Status(args) => status::run(&*managers()?, args).await,
        Command::Events(args) => events::run(&*managers()?, args).await,
        Command::Volume(command) => volume::run(&*managers()?, command).await,
        Command::Node(command) => node::run(&*managers()?, command).await,
        Command::Write(args) => io::write(managers()?, args).await,
        Command::Read(args) => io::read(managers()?, args).await,
        Command::Scrub(args) => scrub::run(managers()?, args).await,
        Command::Bench(args) => bench::run(managers()?, args).await,
        Command::Nbd(args) => nbd::run(managers()?, args).await,
        Command::Up(args) => {
            if cli.tls_ca.is_some() {
                anyhow::bail!(
                    "vbs up runs its cluster on loopback without TLS; --tls-ca is for talking to a \
                     cluster started with TLS"
                );
            }
            up::run(args, cli.token_file).await
        }
    }
}

fn connect(list: Option<&str>, security: Security) -> anyhow::Result<Arc<Managers>> {
    let list = list.context(
        "no managers given: pass --managers HOST:PORT[,HOST:PORT...] or set VBS_MANAGERS",
    )?;
    let managers = Managers::parse_secured(list, DEFAULT_REQUEST_TIMEOUT, None, security)?;
    Ok(Arc::new(managers))
}

/// Clap value parser for volume names, so a bad name is refused before any request.
pub fn volume_name(name: &str) -> Result<String, NameError> {
    check_name("volume name", name)?;
    Ok(name.to_string())
}

/// Clap value parser for sizes (`4k`, `1M`).
pub fn size(text: &str) -> Result<u64, SizeError> {
    client::size::parse_size(text)
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("vbs: {}", one_line(message));
    ExitCode::from(code)
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout as clap prints them; every other parse error becomes one line.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let code = error.exit_code();
            let _ = error.print();
            ExitCode::from(u8::try_from(code).unwrap_or(exit::USAGE))
        }
        _ => fail(exit::USAGE, &usage_line(&error)),
    }
}

/// Clap's multi-line message as one line: the error, its tip and its possible values, without
/// the usage and "for more information" lines.
fn usage_line(error: &clap::Error) -> String {
    error
        .render()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .map(|line| line.strip_prefix("error: ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(args: &[&str]) -> String {
        let error = Cli::try_parse_from(args).expect_err("a bad command line");
        usage_line(&error)
    }

    #[test]
    fn parse_errors_become_one_line() {
        let line = parse_error(&["vbs", "bench", "v", "--rw", "randomwrite"]);
        assert!(!line.contains('\n'));
        assert!(line.contains("invalid value 'randomwrite'"), "{line}");
        assert!(line.contains("randwrite"), "{line}");
        assert!(!line.contains("Usage"), "{line}");

        let line = parse_error(&["vbs", "read", "v", "--offset", "4kk", "--length", "4k"]);
        assert!(line.contains("unknown suffix"), "{line}");

        let line = parse_error(&["vbs", "volume", "create", "a/b", "--size", "1G"]);
        assert!(line.contains("volume name"), "{line}");

        let line = parse_error(&["vbs", "stauts"]);
        assert!(line.contains("stauts"), "{line}");

        let line = parse_error(&["vbs", "node", "drain", "a/b"]);
        assert!(line.contains("node id"), "{line}");
    }

    #[test]
    fn sizes_and_defaults_parse() {
        let cli = Cli::try_parse_from([
            "vbs",
            "--managers",
            "m:1",
            "read",
            "v",
            "--offset",
            "1M",
            "--length",
            "8k",
        ])
        .expect("valid");
        match cli.command {
            Command::Read(args) => {
                assert_eq!(args.offset, 1 << 20);
                assert_eq!(args.length, 8192);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn security_flags_go_before_or_after_the_command() {
        let cli = Cli::try_parse_from(["vbs", "--token-file", "/etc/vbs/token", "status"])
            .expect("valid");
        assert_eq!(cli.token_file, Some(PathBuf::from("/etc/vbs/token")));
        let cli = Cli::try_parse_from(["vbs", "volume", "list", "--tls-ca", "/etc/vbs/ca.pem"])
            .expect("valid");
        assert_eq!(cli.tls_ca, Some(PathBuf::from("/etc/vbs/ca.pem")));
    }

    #[test]
    fn messages_are_flattened() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
