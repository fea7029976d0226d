//! The storage node's command line (`vbs-storage [serve]`) and what it makes of it: the node's
//! [`NodeConfig`], as `consistency::config` does for the managers.

use std::path::PathBuf;

use anyhow::{Context, Result};
use vbs_wire::security::ServerArgs;
use vbs_wire::size::{parse_duration, parse_size};
use vbs_wire::types::NodeId;

use crate::engine::DeviceOptions;
use crate::node::NodeConfig;

/// Where the node listens, and how many threads serve it.
pub struct Listen {
    /// The data-plane address (HOST:PORT; port 0 picks a free one).
    pub data: String,
    /// `/metrics`, if served.
    pub metrics: Option<String>,
    /// Threads of the node's runtime.
    pub worker_threads: usize,
}

/// The storage node's flags.
#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// This node's name, unique in the cluster (letters, digits, '_', '.', '-').
    #[arg(long, required = true)]
    pub id: Option<String>,
    /// Data-plane address to listen on (HOST:PORT; port 0 picks a free one).
    #[arg(long, required = true)]
    pub listen: Option<String>,
    /// Address other nodes and clients connect to, if not the listen address.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve `/metrics` (Prometheus text format) over HTTP on this address.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// A storage device's directory; give it once per device.
    #[arg(long = "data-dir", required = true)]
    pub data_dirs: Vec<PathBuf>,
    /// Manager addresses, HOST:PORT,HOST:PORT,...
    #[arg(long, env = "VBS_MANAGERS", required = true)]
    pub managers: Option<String>,
    /// Capacity to announce (default: the devices' size), e.g. 100G.
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_interval: std::time::Duration,
    /// How long a primary waits for a secondary before reporting it unresponsive.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub write_timeout: std::time::Duration,
    /// Segment size for data directories used for the first time.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub segment_size: u64,
    /// The most bytes per second one unit's resync pulls, so catching up does not starve
    /// client IO.
    #[arg(long, default_value = "100M", value_parser = parse_size)]
    pub resync_rate: u64,
    /// The most units that pull a resync at once (the rest wait their turn): a node that
    /// restarts holding thousands of units catches up this many at a time.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub resync_parallel: u32,
    /// How often each slice this node is primary of is scrubbed (every copy read back and
    /// checked, and the copies compared).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub scrub_interval: std::time::Duration,
    /// The most bytes per second all of this node's scrubs read together.
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub scrub_rate: u64,
    /// `data` syncs every write batch (the only durable mode); `none` never syncs (tests only).
    #[arg(long, value_enum, default_value = "data")]
    pub sync: SyncMode,
    /// Threads that run the node's network and replication work. Disk writes and fsyncs run on
    /// threads of their own, so one is enough for one device; see docs/operations.md.
    #[arg(long, env = "VBS_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    #[command(flatten)]
    pub security: ServerArgs,
}

/// When the engine syncs its log.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncMode {
    Data,
    None,
}

impl ServeArgs {
    /// The node's configuration and where it listens. Its advertised address is the one given,
    /// or empty: the caller sets the listener's once it is bound.
    pub fn into_config(self) -> Result<(Listen, NodeConfig)> {
        let required = |value: Option<String>, flag: &str| {
            value.ok_or_else(|| anyhow::anyhow!("--{flag} is required to run the storage node"))
        };
        let id = NodeId::parse(&required(self.id, "id")?).map_err(anyhow::Error::msg)?;
        let listen = Listen {
            data: required(self.listen, "listen")?,
            metrics: self.metrics_listen,
            worker_threads: usize::from(self.worker_threads),
        };
        let managers = required(self.managers, "managers")?;
        let security = self.security.load().context("security settings")?;
        let advertise = self.advertise.unwrap_or_default();
        let mut config = NodeConfig::new(id, advertise, self.data_dirs, managers);
        config.capacity_bytes = self.capacity;
        config.heartbeat_interval = self.heartbeat_interval;
        config.write_timeout = self.write_timeout;
        config.resync_rate_bytes = self.resync_rate.max(1);
        config.resync_parallel = self.resync_parallel as usize;
        config.scrub_interval = self.scrub_interval;
        config.scrub_rate_bytes = self.scrub_rate.max(1);
        config.security = security;
        config.device = DeviceOptions {
            segment_bytes: self.segment_size,
            sync: self.sync == SyncMode::Data,
            ..DeviceOptions::default()
        };
        Ok((listen, config))
    }
}
