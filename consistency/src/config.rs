//! Configuration of a manager replica: command-line arguments and the settings derived from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use vbs_wire::security::{Security, ServerArgs};
use vbs_wire::size::parse_duration;

use crate::decide::liveness::LeaseConfig;
use crate::raft_types::RaftId;

/// `vbs-manager`: one replica of the vbs consistency database.
#[derive(Parser, Debug, Clone)]
#[command(name = "vbs-manager", version, about)]
pub struct Args {
    /// This replica's id; it must appear in `--peers`.
    #[arg(long)]
    pub id: RaftId,
    /// Address to listen on for the HTTP API and Raft traffic (e.g. 127.0.0.1:7001).
    #[arg(long)]
    pub listen: String,
    /// Directory for the Raft log, vote, snapshot and state.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every replica of the initial cluster as ID=ADDR, comma separated, this one included.
    #[arg(long, value_parser = parse_peers)]
    pub peers: BTreeMap<RaftId, String>,
    /// Interval of Raft heartbeats; also the timeout of one append RPC.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub raft_heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub election_timeout_max: Duration,
    /// Timeout of one snapshot chunk sent to a follower.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub snapshot_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    #[arg(long, default_value_t = 5000)]
    pub snapshot_every: u64,
    /// Storage node lease: a node silent for longer is marked down.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Added to the lease before acting on it, for clock-rate differences between machines.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub clock_margin: Duration,
    /// How long a state change waits to be committed before the request fails with 503.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub commit_timeout: Duration,
    /// How long a storage node stays down (after its lease ran out) before its copies are
    /// re-created on other nodes.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub grace: Duration,
    /// Percent of a storage device's filesystem in use past which the managers warn.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub nearfull_percent: u8,
    /// Percent of a storage device's filesystem in use past which its node, once all its
    /// devices are past it, takes no new copies (new volumes, re-replication, growth).
    #[arg(long, default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub full_percent: u8,
    #[command(flatten)]
    pub security: ServerArgs,
}

/// Default of `--grace`: long enough to ride out a reboot or a short maintenance without copying
/// whole units, short enough that a dead node does not leave slices short of copies for long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);

/// A setting that is wrong, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("address {0:?} is not HOST:PORT")]
    Addr(String),
    #[error("peer {0:?} is not ID=ADDR")]
    PeerShape(String),
    #[error("peer {0:?}: bad id")]
    PeerId(String),
    #[error("peer {item:?}: {error}")]
    PeerAddr {
        item: String,
        error: Box<ConfigError>,
    },
    #[error("peer id {0} appears twice")]
    PeerTwice(RaftId),
    #[error("--peers names no peer")]
    NoPeers,
    #[error("--listen: {0}")]
    Listen(Box<ConfigError>),
    #[error("{0}")]
    Security(String),
    #[error("--peers must include this replica's own id {0}")]
    NotAPeer(RaftId),
    #[error("the election timeout must be at least three Raft heartbeats")]
    ElectionTimeoutShort,
    #[error("--election-timeout-min must be below --election-timeout-max")]
    ElectionTimeoutRange,
    #[error("--snapshot-every, --lease and --commit-timeout must be positive")]
    NotPositive,
    #[error("--nearfull-percent ({nearfull}) must not be above --full-percent ({full})")]
    Thresholds { nearfull: u8, full: u8 },
}

/// Parses `1=127.0.0.1:7001,2=127.0.0.1:7002`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<RaftId, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| ConfigError::PeerShape(item.to_string()))?;
        let id: RaftId = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::PeerId(item.to_string()))?;
        check_addr(addr.trim()).map_err(|e| ConfigError::PeerAddr {
            item: item.to_string(),
            error: Box::new(e),
        })?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(ConfigError::PeerTwice(id));
        }
    }
    if peers.is_empty() {
        return Err(ConfigError::NoPeers);
    }
    Ok(peers)
}

/// Checks a `host:port` address.
pub fn check_addr(addr: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::Addr(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Settings of a running replica.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: RaftId,
    pub data_dir: PathBuf,
    pub peers: BTreeMap<RaftId, String>,
    pub raft_heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    pub snapshot_timeout: Duration,
    pub snapshot_every: u64,
    pub lease: LeaseConfig,
    pub commit_timeout: Duration,
    /// How long a node stays down before its copies are re-created elsewhere.
    pub grace: Duration,
    pub space: vbs_wire::api::SpaceThresholds,
    /// The cluster token and TLS settings, for the API, Raft traffic and forwarding.
    pub security: Security,
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        check_addr(&self.listen).map_err(|e| ConfigError::Listen(Box::new(e)))?;
        let security = self
            .security
            .load()
            .map_err(|e| ConfigError::Security(e.to_string()))?;
        let config = Config {
            id: self.id,
            data_dir: self.data_dir,
            peers: self.peers,
            raft_heartbeat: self.raft_heartbeat,
            election_timeout_min: self.election_timeout_min,
            election_timeout_max: self.election_timeout_max,
            snapshot_timeout: self.snapshot_timeout,
            snapshot_every: self.snapshot_every,
            lease: LeaseConfig {
                lease: self.lease,
                clock_margin: self.clock_margin,
            },
            commit_timeout: self.commit_timeout,
            grace: self.grace,
            space: vbs_wire::api::SpaceThresholds {
                nearfull_percent: self.nearfull_percent,
                full_percent: self.full_percent,
            },
            security,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// A configuration with the defaults of [`Args`], for tests and embedding.
    pub fn new(id: RaftId, data_dir: PathBuf, peers: BTreeMap<RaftId, String>) -> Config {
        Config {
            id,
            data_dir,
            peers,
            raft_heartbeat: Duration::from_millis(200),
            election_timeout_min: Duration::from_secs(1),
            election_timeout_max: Duration::from_secs(2),
            snapshot_timeout: Duration::from_secs(10),
            snapshot_every: 5000,
            lease: LeaseConfig {
                lease: Duration::from_secs(5),
                clock_margin: Duration::from_millis(500),
            },
            commit_timeout: Duration::from_secs(3),
            grace: DEFAULT_GRACE,
            space: vbs_wire::api::SpaceThresholds::default(),
            security: Security::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.peers.contains_key(&self.id) {
            return Err(ConfigError::NotAPeer(self.id));
        }
        if self.raft_heartbeat * 3 > self.election_timeout_min {
            return Err(ConfigError::ElectionTimeoutShort);
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(ConfigError::ElectionTimeoutRange);
        }
        if self.snapshot_every == 0 || self.lease.lease.is_zero() || self.commit_timeout.is_zero() {
            return Err(ConfigError::NotPositive);
        }
        if self.space.nearfull_percent > self.space.full_percent {
            return Err(ConfigError::Thresholds {
                nearfull: self.space.nearfull_percent,
                full: self.space.full_percent,
            });
        }
        Ok(())
    }

    pub fn raft_config(&self) -> Result<openraft::Config, Box<openraft::ConfigError>> {
        let ms = |d: Duration| d.as_millis() as u64;
        openraft::Config {
            cluster_name: "vbs".into(),
            heartbeat_interval: ms(self.raft_heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            install_snapshot_timeout: ms(self.snapshot_timeout),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.snapshot_every.min(1000),
            // Chunks stay small next to the HTTP body limit of the snapshot route.
            snapshot_max_chunk_size: 1 << 20,
            ..Default::default()
        }
        .validate()
        .map_err(Box::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_bad_ones_are_named() {
        let peers = parse_peers("1=127.0.0.1:7001, 2=localhost:7002").expect("valid");
        assert_eq!(peers[&2], "localhost:7002");
        let error = parse_peers("1=127.0.0.1").unwrap_err();
        assert!(matches!(error, ConfigError::PeerAddr { .. }), "{error:?}");
        assert!(error.to_string().contains("HOST:PORT"), "{error}");
        assert_eq!(
            parse_peers("x=127.0.0.1:1"),
            Err(ConfigError::PeerId("x=127.0.0.1:1".into()))
        );
        assert_eq!(parse_peers("1=a:1,1=b:2"), Err(ConfigError::PeerTwice(1)));
        assert_eq!(parse_peers(" , "), Err(ConfigError::NoPeers));
    }

    #[test]
    fn defaults_make_a_valid_raft_config() {
        let peers = parse_peers("1=127.0.0.1:7001").expect("valid");
        let config = Config::new(1, PathBuf::from("/tmp/x"), peers);
        config.validate().expect("valid");
        config.raft_config().expect("valid raft config");
        let mut missing = config.clone();
        missing.id = 5;
        assert_eq!(missing.validate(), Err(ConfigError::NotAPeer(5)));
    }
}
