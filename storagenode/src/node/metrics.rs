//! The storage node's `/metrics` (Prometheus text format), on `--metrics-listen`: client IO by
//! volume and operation (counts, bytes, latency histograms), reads by where they found their
//! blocks, each data directory's space, each unit's last VBA, the primary's replication lag per
//! copy, resync progress, and refused connections and requests, written by `vbs_wire::metrics`.
//! With a token it answers only requests that carry it; with TLS on, it serves HTTPS.

use std::collections::BTreeMap;
use std::fmt;
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
use vbs_wire::metrics::{self, Families, Histogram, CONTENT_TYPE};
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

    fn write(&self, out: &mut Families<'_>) -> fmt::Result {
        let map = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let labels = |volume: &VolumeId, kind: &IoKind| {
            [
                ("volume", volume.to_string()),
                ("op", kind.label().to_string()),
            ]
        };
        let each = |field: fn(&Series) -> &AtomicU64| {
            map.iter()
                .map(move |((v, k), s)| (labels(v, k), field(s).load(Ordering::Relaxed)))
        };
        out.counters(
            "vbs_io_requests_total",
            "Client requests served as primary.",
            each(|s| &s.count),
        )?;
        out.counters(
            "vbs_io_errors_total",
            "Client requests that failed.",
            each(|s| &s.errors),
        )?;
        out.counters(
            "vbs_io_bytes_total",
            "Bytes read, written or trimmed for clients.",
            each(|s| &s.bytes),
        )?;
        out.histograms(
            "vbs_io_latency_seconds",
            "Latency of successful client requests.",
            map.iter().map(|((v, k), s)| {
                let histogram = Histogram {
                    buckets: BUCKETS
                        .iter()
                        .zip(&s.buckets)
                        .map(|(bound, n)| (*bound as f64 / 1e6, n.load(Ordering::Relaxed)))
                        .collect(),
                    overflow: s.buckets[BUCKETS.len()].load(Ordering::Relaxed),
                    sum: s.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
                };
                (labels(v, k), histogram)
            }),
        )?;
        out.counters(
            "vbs_reads_total",
            "Client reads by where their blocks were found: the page cache (copied on the async \
             thread) or not (read on a blocking thread).",
            [
                ([("path", "page_cache")], &self.reads_cached),
                ([("path", "blocking")], &self.reads_blocking),
            ]
            .map(|(l, c)| (l, c.load(Ordering::Relaxed))),
        )?;
        out.counters(
            "vbs_damaged_records_total",
            "Records of this node's copies found damaged (their checksum failed) when read, by \
             outcome: repaired from another current copy, or not (no copy could give it).",
            [
                ([("outcome", "repaired")], &self.damaged_repaired),
                ([("outcome", "unrepaired")], &self.damaged_unrepaired),
            ]
            .map(|(l, c)| (l, c.load(Ordering::Relaxed))),
        )
    }
}

fn write(out: &mut Families<'_>, node: &Node) -> fmt::Result {
    node.io_metrics.write(out)?;
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
        out.counter(name, help, counter.load(Ordering::Relaxed))?;
    }
    if let Ok(devices) = node.devices.each_space() {
        out.gauges(
            "vbs_device_bytes",
            "Space of each data directory's filesystem: total and free (to unprivileged users).",
            devices.iter().flat_map(|device| {
                let dir = &device.dir;
                [("total", device.total_bytes), ("free", device.free_bytes)].map(|(kind, bytes)| {
                    ([("dir", dir.clone()), ("kind", kind.to_string())], bytes)
                })
            }),
        )?;
    }
    let units = node.units();
    out.gauges(
        "vbs_unit_last_vba",
        "Highest durable VBA of each unit held here.",
        units.iter().map(|unit| {
            let role = match unit.assignment().map(|a| a.role) {
                Some(Role::Primary) => "primary",
                Some(Role::Secondary) => "secondary",
                None => "unassigned",
            };
            (
                [("unit", unit.id.to_string()), ("role", role.to_string())],
                unit.engine.last_vba().0,
            )
        }),
    )?;
    out.gauges(
        "vbs_replication_lag_vbas",
        "VBAs a copy has not yet acknowledged (on its primary).",
        units.iter().flat_map(|unit| {
            let last = unit.engine.last_vba();
            unit.primary
                .window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .acknowledged()
                .into_iter()
                .map(move |(copy, acked)| {
                    (
                        [("unit", unit.id.to_string()), ("copy", copy.to_string())],
                        last.0.saturating_sub(acked.0),
                    )
                })
        }),
    )?;
    out.gauges(
        "vbs_resync_bytes",
        "Resync of a copy held here: bytes done and in total.",
        units.iter().flat_map(|unit| {
            unit.resync_progress().into_iter().flat_map(|progress| {
                [
                    ("done", progress.bytes_done),
                    ("total", progress.bytes_total),
                ]
                .map(|(part, bytes)| {
                    (
                        [("unit", unit.id.to_string()), ("part", part.to_string())],
                        bytes,
                    )
                })
            })
        }),
    )?;
    node.rejections
        .write_metrics(out, &[Surface::Data, Surface::Metrics, Surface::Tls])
}

async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if let Err(refusal) = authorize(node.config.security.token.as_deref(), &headers) {
        node.rejections.count(Surface::Metrics);
        return unauthorized(refusal);
    }
    let text = metrics::render(move |out| write(out, &node));
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
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
