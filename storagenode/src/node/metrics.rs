//! The storage node's `/metrics` (Prometheus text format), on `--metrics-listen`: client IO by
//! volume and operation (counts, bytes, latency histograms), reads by where they found their
//! blocks, each data directory's space, each unit's last VBA, the primary's replication lag per
//! copy, resync progress, and refused connections and requests. With a token it answers only requests that carry it; with
//! TLS on, it serves HTTPS.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use vbs_wire::api::{Role, VolumeIo, IO_LATENCY_BUCKETS_US};
use vbs_wire::security::http::{authorize, unauthorized, PlainListener, TlsListener};
use vbs_wire::security::Surface;
use vbs_wire::types::VolumeId;

use super::Node;

/// Upper bounds of the latency histogram's buckets, in microseconds (shared with the IO reports
/// of heartbeats).
const BUCKETS: [u64; 12] = IO_LATENCY_BUCKETS_US;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IoKind {
    Read,
    Write,
    Trim,
    Flush,
}

impl IoKind {
    fn label(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Trim => "trim",
            IoKind::Flush => "flush",
        }
    }
}

#[derive(Default)]
struct Series {
    count: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    /// Per bucket of [`BUCKETS`], then the overflow bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// Where a client read found its blocks.
#[derive(Clone, Copy, Debug)]
pub enum ReadPath {
    /// Every block in the page cache, copied on the async thread.
    PageCache,
    /// At least one block would have waited for the device: read on a blocking thread.
    Blocking,
}

/// Counters of client IO served as primary.
#[derive(Default)]
pub struct IoMetrics {
    series: Mutex<BTreeMap<(VolumeId, IoKind), Arc<Series>>>,
    reads_cached: AtomicU64,
    reads_blocking: AtomicU64,
    /// Damaged records found by reads, by what became of them (`node::repair`).
    damaged_repaired: AtomicU64,
    damaged_unrepaired: AtomicU64,
    /// The totals the managers' leader last acknowledged, per volume.
    reported: Mutex<BTreeMap<VolumeId, VolumeIo>>,
}

impl IoMetrics {
    /// Each volume's read and write totals that changed since the last [`IoMetrics::reported`].
    pub fn unreported(&self) -> Vec<VolumeIo> {
        let map = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut totals: BTreeMap<VolumeId, VolumeIo> = BTreeMap::new();
        for ((volume, kind), s) in &map {
            let total = totals.entry(*volume).or_insert_with(|| VolumeIo {
                volume: *volume,
                latency: vec![0; BUCKETS.len() + 1],
                ..VolumeIo::default()
            });
            let (count, bytes) = match kind {
                IoKind::Read => (&mut total.reads, &mut total.read_bytes),
                IoKind::Write => (&mut total.writes, &mut total.write_bytes),
                IoKind::Trim | IoKind::Flush => continue,
            };
            *count += s.count.load(Ordering::Relaxed);
            *bytes += s.bytes.load(Ordering::Relaxed);
            for (sum, bucket) in total.latency.iter_mut().zip(&s.buckets) {
                *sum += bucket.load(Ordering::Relaxed);
            }
        }
        let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        totals
            .into_values()
            .filter(|t| reported.get(&t.volume) != Some(t))
            .collect()
    }

    /// Notes that the leader acknowledged these totals.
    pub fn reported(&self, totals: &[VolumeIo]) {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        for total in totals {
            reported.insert(total.volume, total.clone());
        }
    }

    pub fn read_path(&self, path: ReadPath) {
        let counter = match path {
            ReadPath::PageCache => &self.reads_cached,
            ReadPath::Blocking => &self.reads_blocking,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A damaged record was found; `repaired`: a good copy replaced it.
    pub fn damaged(&self, repaired: bool) {
        let counter = if repaired {
            &self.damaged_repaired
        } else {
            &self.damaged_unrepaired
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, volume: VolumeId, kind: IoKind, bytes: u64, latency: Duration, ok: bool) {
        let series = {
            let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
            map.entry((volume, kind)).or_default().clone()
        };
        series.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            series.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        series.bytes.fetch_add(bytes, Ordering::Relaxed);
        let micros = latency.as_micros() as u64;
        let bucket = BUCKETS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS.len());
        series.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        series
            .sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let map = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            out,
            "vbs_io_requests_total",
            "counter",
            "Client requests served as primary.",
        );
        for ((volume, kind), s) in &map {
            let _ = writeln!(
                out,
                "vbs_io_requests_total{{volume=\"{volume}\",op=\"{}\"}} {}",
                kind.label(),
                s.count.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "vbs_io_errors_total",
            "counter",
            "Client requests that failed.",
        );
        for ((volume, kind), s) in &map {
            let _ = writeln!(
                out,
                "vbs_io_errors_total{{volume=\"{volume}\",op=\"{}\"}} {}",
                kind.label(),
                s.errors.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "vbs_io_bytes_total",
            "counter",
            "Bytes read, written or trimmed for clients.",
        );
        for ((volume, kind), s) in &map {
            let _ = writeln!(
                out,
                "vbs_io_bytes_total{{volume=\"{volume}\",op=\"{}\"}} {}",
                kind.label(),
                s.bytes.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "vbs_io_latency_seconds",
            "histogram",
            "Latency of successful client requests.",
        );
        for ((volume, kind), s) in &map {
            let labels = format!("volume=\"{volume}\",op=\"{}\"", kind.label());
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let bound = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "vbs_io_latency_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += s.buckets[BUCKETS.len()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "vbs_io_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let sum = s.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "vbs_io_latency_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "vbs_io_latency_seconds_count{{{labels}}} {cumulative}");
        }
        header(
            out,
            "vbs_reads_total",
            "counter",
            "Client reads by where their blocks were found: the page cache (copied on the async \
             thread) or not (read on a blocking thread).",
        );
        for (path, counter) in [
            ("page_cache", &self.reads_cached),
            ("blocking", &self.reads_blocking),
        ] {
            let _ = writeln!(
                out,
                "vbs_reads_total{{path=\"{path}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "vbs_damaged_records_total",
            "counter",
            "Records of this node's copies found damaged (their checksum failed) when read, by \
             outcome: repaired from another current copy, or not (no copy could give it).",
        );
        for (outcome, counter) in [
            ("repaired", &self.damaged_repaired),
            ("unrepaired", &self.damaged_unrepaired),
        ] {
            let _ = writeln!(
                out,
                "vbs_damaged_records_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

fn render(node: &Node) -> String {
    let mut out = String::new();
    node.io_metrics.render(&mut out);
    let scrubs = &node.scrubs;
    for (name, help, counter) in [
        (
            "vbs_scrub_records_total",
            "Live records this node's scrubs read back and checked.",
            &scrubs.records,
        ),
        (
            "vbs_scrub_bytes_total",
            "Bytes of records this node's scrubs read back and checked.",
            &scrubs.bytes,
        ),
        (
            "vbs_scrub_passes_total",
            "Scrubs of a whole slice this node finished as its primary.",
            &scrubs.passes,
        ),
        (
            "vbs_scrub_mismatches_total",
            "VBA ranges where a copy's digest still differed from this primary's after retries.",
            &scrubs.mismatches,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            counter.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if let Ok(devices) = node.devices.each_space() {
        let _ = writeln!(
            out,
            "# HELP vbs_device_bytes Space of each data directory's filesystem: total and free \
             (to unprivileged users).\n# TYPE vbs_device_bytes gauge"
        );
        for device in &devices {
            // Debug quoting escapes `\`, `"` and newlines as the text format wants.
            let dir = format!("{:?}", device.dir);
            for (kind, bytes) in [("total", device.total_bytes), ("free", device.free_bytes)] {
                let _ = writeln!(out, "vbs_device_bytes{{dir={dir},kind=\"{kind}\"}} {bytes}");
            }
        }
    }
    let units = node.units();
    let _ = writeln!(
        out,
        "# HELP vbs_unit_last_vba Highest durable VBA of each unit held here."
    );
    let _ = writeln!(out, "# TYPE vbs_unit_last_vba gauge");
    for unit in &units {
        let role = match unit.assignment().map(|a| a.role) {
            Some(Role::Primary) => "primary",
            Some(Role::Secondary) => "secondary",
            None => "unassigned",
        };
        let _ = writeln!(
            out,
            "vbs_unit_last_vba{{unit=\"{}\",role=\"{role}\"}} {}",
            unit.id,
            unit.engine.last_vba()
        );
    }
    let _ = writeln!(
        out,
        "# HELP vbs_replication_lag_vbas VBAs a copy has not yet acknowledged (on its primary).\n\
         # TYPE vbs_replication_lag_vbas gauge"
    );
    for unit in &units {
        let last = unit.engine.last_vba();
        for (copy, acked) in unit
            .primary
            .window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledged()
        {
            let lag = last.0.saturating_sub(acked.0);
            let _ = writeln!(
                out,
                "vbs_replication_lag_vbas{{unit=\"{}\",copy=\"{copy}\"}} {lag}",
                unit.id
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP vbs_resync_bytes Resync of a copy held here: bytes done and in total.\n\
         # TYPE vbs_resync_bytes gauge"
    );
    for unit in &units {
        if let Some(progress) = unit.resync_progress() {
            let _ = writeln!(
                out,
                "vbs_resync_bytes{{unit=\"{}\",part=\"done\"}} {}",
                unit.id, progress.bytes_done
            );
            let _ = writeln!(
                out,
                "vbs_resync_bytes{{unit=\"{}\",part=\"total\"}} {}",
                unit.id, progress.bytes_total
            );
        }
    }
    node.rejections
        .render(&mut out, &[Surface::Data, Surface::Metrics, Surface::Tls]);
    out
}

async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorize(node.config.security.token.as_deref(), &headers) {
        node.rejections.count(Surface::Metrics);
        return unauthorized(refusal);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&node),
    )
        .into_response()
}

/// Serves `/metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = node.config.security.tls.clone();
    let rejections = node.rejections.clone();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(node);
    match tls {
        None => {
            axum::serve(PlainListener::new(listener), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let listener = TlsListener::new(listener, tls, rejections)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
