//! The storage node (`vbs-storage serve`): registers with the managers, heartbeats, serves its
//! units over the data plane, and replicates.
//!
//! - [`devices`]: the node's data directories and where new units go;
//! - [`unit`]: a unit as served: engine, assignment, lease, replication state;
//! - [`membership`]: registration, heartbeats, and applying the database's assignments;
//! - [`maintenance`]: background compaction of the units' logs;
//! - [`metrics`]: `/metrics` in Prometheus text format;
//! - [`server`]: the data-plane listener: TLS, limits, dispatch;
//! - [`handshake`]: the data-plane handshake: versions and authentication;
//! - [`primary`]: client IO on the primary: ordering, replication, acknowledgement;
//! - [`replica`]: the secondary side, and the primary's answer to resend requests;
//! - [`repair`]: read repair: a damaged record replaced by another current copy's;
//! - [`scrub`]: reading every copy back, repairing damage and comparing copies by digests;
//! - [`catchup`]: the primary's side of a resync (streaming missed records, joining a copy);
//! - [`resync`]: the copy's side of a resync (pulling, joining, reporting progress);
//! - [`reports`]: `syncing` and `caught up` reports of many units gathered into few
//!   notifications.

pub mod catchup;
pub mod devices;
mod errors;
pub mod handshake;
pub mod maintenance;
pub mod membership;
pub mod metrics;
pub mod primary;
pub mod repair;
pub mod replica;
pub mod reports;
pub mod resync;
pub mod scrub;
pub mod server;
pub mod unit;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};
use vbs_wire::conn::Pool;
use vbs_wire::managers::Managers;
use vbs_wire::proto::PeerKind;
use vbs_wire::security::{Rejections, Security};
use vbs_wire::types::{NodeId, UnitId};

use crate::engine::DeviceOptions;
use devices::Devices;
use unit::UnitRuntime;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    /// The data-plane address announced to the managers (what others connect to).
    pub advertise: String,
    pub data_dirs: Vec<PathBuf>,
    pub managers: String,
    /// Capacity to announce; default: the devices' total size.
    pub capacity_bytes: Option<u64>,
    pub heartbeat_interval: Duration,
    /// How long a primary waits for a secondary before reporting it unresponsive.
    pub write_timeout: Duration,
    /// How long a secondary waits for records that were overtaken before asking for a resend.
    pub reorder_wait: Duration,
    /// The most bytes per second a resync of one unit pulls.
    pub resync_rate_bytes: u64,
    /// The most units that pull from their primaries at once; the rest wait their turn.
    pub resync_parallel: usize,
    /// How often each unit this node is primary of is scrubbed in the background.
    pub scrub_interval: Duration,
    /// The most bytes per second all of the node's scrubs read together.
    pub scrub_rate_bytes: u64,
    pub device: DeviceOptions,
    /// The cluster token and TLS settings: for the data plane (both ways), the managers and
    /// `/metrics`.
    pub security: Security,
}

impl NodeConfig {
    pub fn new(
        id: NodeId,
        advertise: String,
        data_dirs: Vec<PathBuf>,
        managers: String,
    ) -> NodeConfig {
        NodeConfig {
            id,
            advertise,
            data_dirs,
            managers,
            capacity_bytes: None,
            heartbeat_interval: Duration::from_secs(1),
            write_timeout: Duration::from_secs(2),
            reorder_wait: Duration::from_millis(100),
            resync_rate_bytes: 100 << 20,
            resync_parallel: 16,
            scrub_interval: Duration::from_secs(7 * 24 * 3600),
            scrub_rate_bytes: 16 << 20,
            device: DeviceOptions::default(),
            security: Security::default(),
        }
    }
}

pub struct Node {
    pub id: NodeId,
    pub config: NodeConfig,
    devices: Devices,
    units: RwLock<HashMap<UnitId, Arc<UnitRuntime>>>,
    pub managers: Managers,
    /// Connections to other storage nodes.
    pub peers: Pool,
    /// Wakes the heartbeat loop early, e.g. when a request names a unit not yet known here.
    pub refresh: Notify,
    pub io_metrics: metrics::IoMetrics,
    pub scrubs: scrub::Scrubs,
    /// Connections and requests refused for their credentials.
    pub rejections: Arc<Rejections>,
    /// `syncing` and `caught up` reports on their way to the managers.
    pub reports: reports::Reporter,
    /// Turns to pull a resync ([`NodeConfig::resync_parallel`] of them).
    pub resync_turns: tokio::sync::Semaphore,
    /// Units this node held when it started, until the first heartbeat reply has been applied:
    /// their secondary copies may have missed writes while the node was away.
    restarted_units: std::sync::Mutex<Option<Vec<UnitId>>>,
}

impl Node {
    pub fn unit(&self, id: UnitId) -> Option<Arc<UnitRuntime>> {
        self.units
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn units(&self) -> Vec<Arc<UnitRuntime>> {
        self.units
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Runs a storage node on `listener` (and `/metrics` on `metrics`, if given) until `shutdown`
/// completes.
pub async fn run(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    config: NodeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (devices, reports) = {
        let (dirs, options) = (config.data_dirs.clone(), config.device.clone());
        tokio::task::spawn_blocking(move || Devices::open(&dirs, &options)).await??
    };
    // Connections to managers and peers leave from the listen address (`conn::source_of`).
    let source = vbs_wire::conn::source_of(listener.local_addr()?);
    let security = config.security.clone();
    let managers = Managers::parse_secured(
        &config.managers,
        Duration::from_secs(2),
        source,
        security.clone(),
    )
    .map_err(anyhow::Error::msg)
    .context("--managers")?;
    let peers = Pool::new(PeerKind::Node, &config.id.0, Duration::from_secs(1))
        .with_source(source)
        .with_security(security.clone());
    for warning in security.server_warnings() {
        warn!(node = %config.id, "{warning}");
    }
    let mut units = HashMap::new();
    let restarted_units = devices.units().iter().map(|u| u.id()).collect();
    for engine in devices.units() {
        units.insert(
            engine.id(),
            Arc::new(UnitRuntime::new(engine, config.id.clone())),
        );
    }
    for report in reports.iter().filter(|r| r.torn_tail.is_some()) {
        if let Some(runtime) = report.unit.and_then(|unit| units.get(&unit)) {
            runtime.note_torn();
        }
    }
    for report in reports.iter().filter(|r| r.damaged_records > 0) {
        warn!(unit = ?report.unit, damaged = report.damaged_records,
            "the unit's log holds records whose data is damaged: each is repaired from another copy when read or scrubbed");
    }
    let scrubs = scrub::Scrubs::new(config.scrub_rate_bytes, config.scrub_interval);
    info!(
        node = %config.id,
        listen = %listener.local_addr()?,
        units = units.len(),
        torn_tails = reports.iter().filter(|r| r.torn_tail.is_some()).count(),
        "storage node starting"
    );
    let config_id = config.id.clone();
    let resync_turns = tokio::sync::Semaphore::new(config.resync_parallel.max(1));
    let node = Arc::new(Node {
        id: config.id.clone(),
        config,
        devices,
        units: RwLock::new(units),
        managers,
        peers,
        refresh: Notify::new(),
        io_metrics: metrics::IoMetrics::default(),
        scrubs,
        rejections: Arc::default(),
        restarted_units: std::sync::Mutex::new(Some(restarted_units)),
        reports: reports::Reporter::new(config_id),
        resync_turns,
    });
    let reporter = {
        let node = node.clone();
        tokio::spawn(async move { node.reports.run(&node.managers).await })
    };
    let membership = tokio::spawn(membership::run(node.clone()));
    let maintenance = tokio::spawn(maintenance::run(node.clone()));
    let scrubbing = tokio::spawn(scrub::run(node.clone()));
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics.map(|listener| {
        let stopped = async {
            let _ = metrics_stopped.await;
        };
        tokio::spawn(metrics::serve(node.clone(), listener, stopped))
    });
    let served = server::serve(node.clone(), listener, shutdown).await;
    membership.abort();
    maintenance.abort();
    scrubbing.abort();
    reporter.abort();
    // A checkpoint at a clean stop: the next start reads none of the log.
    let checkpointing = node.clone();
    let checkpoints = tokio::task::spawn_blocking(move || {
        let devices = &checkpointing.devices;
        (0..devices.count())
            .map(|i| devices.device(i).checkpoint())
            .collect::<Vec<_>>()
    });
    for outcome in checkpoints.await.unwrap_or_default() {
        if let Err(e) = outcome {
            warn!(node = %node.id, error = %e, "the checkpoint at stop failed");
        }
    }
    let _ = metrics_stop.send(());
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    info!(node = %node.id, "storage node stopped");
    served
}
