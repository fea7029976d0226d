//! The leader's IO history: client IO per storage node and per volume over the last
//! [`WINDOW_STEPS`] steps of [`STEP_MS`], built from the running totals nodes send in heartbeats
//! ([`VolumeIo`]). It lives in the leader's memory only and starts empty with each new leader,
//! like the rest of what the leader remembers of nodes; it costs nothing for a node or volume
//! without IO, and at most [`WINDOW_STEPS`] points for one with IO all the time.

use std::collections::{BTreeMap, VecDeque};

use vbs_wire::api::{IoPoint, IoSeries, IoSource, VolumeIo, IO_LATENCY_BUCKETS_US};
use vbs_wire::types::{NodeId, VolumeId};

/// Length of one step of the history.
pub const STEP_MS: u64 = 5_000;
/// Steps kept: 15 minutes.
pub const WINDOW_STEPS: u64 = 180;
const BUCKETS: usize = IO_LATENCY_BUCKETS_US.len() + 1;

/// This machine's clock, in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// IO summed over one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Sums {
    reads: u64,
    writes: u64,
    read_bytes: u64,
    write_bytes: u64,
    latency: [u64; BUCKETS],
}

impl Sums {
    fn add(&mut self, delta: &Sums) {
        self.reads += delta.reads;
        self.writes += delta.writes;
        self.read_bytes += delta.read_bytes;
        self.write_bytes += delta.write_bytes;
        for (sum, d) in self.latency.iter_mut().zip(delta.latency) {
            *sum += d;
        }
    }

    fn is_empty(&self) -> bool {
        self.reads == 0 && self.writes == 0
    }

    /// The point of step `step`.
    fn point(&self, step: u64) -> IoPoint {
        let per_sec = |n: u64| n as f64 * 1000.0 / STEP_MS as f64;
        IoPoint {
            t_ms: step * STEP_MS,
            read_iops: per_sec(self.reads),
            write_iops: per_sec(self.writes),
            read_bytes_per_sec: per_sec(self.read_bytes),
            write_bytes_per_sec: per_sec(self.write_bytes),
            p99_us: quantile(&self.latency, 0.99),
        }
    }
}

/// The `q` quantile of a bucketed histogram, interpolated linearly within its bucket (as
/// Prometheus's `histogram_quantile`); in the overflow bucket, its lower bound.
fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if *count > 0 && (below + count) as f64 >= rank {
            let Some(upper) = IO_LATENCY_BUCKETS_US.get(i) else {
                return IO_LATENCY_BUCKETS_US.last().copied();
            };
            let lower = if i == 0 {
                0
            } else {
                IO_LATENCY_BUCKETS_US[i - 1]
            };
            let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
            return Some(lower + ((upper - lower) as f64 * within).round() as u64);
        }
        below += count;
    }
    IO_LATENCY_BUCKETS_US.last().copied()
}

/// What a report adds to the totals last seen from the same node for the same volume. Totals
/// that went down mean the node restarted and counts from zero again.
fn delta(last: Option<&VolumeIo>, now: &VolumeIo) -> Sums {
    let reset = last.is_some_and(|l| {
        now.reads < l.reads
            || now.writes < l.writes
            || now.read_bytes < l.read_bytes
            || now.write_bytes < l.write_bytes
    });
    let zero = VolumeIo::default();
    let base = match last {
        Some(last) if !reset => last,
        _ => &zero,
    };
    let mut latency = [0; BUCKETS];
    for (i, slot) in latency.iter_mut().enumerate() {
        let now = now.latency.get(i).copied().unwrap_or(0);
        let before = base.latency.get(i).copied().unwrap_or(0);
        *slot = now.saturating_sub(before);
    }
    Sums {
        reads: now.reads - base.reads,
        writes: now.writes - base.writes,
        read_bytes: now.read_bytes - base.read_bytes,
        write_bytes: now.write_bytes - base.write_bytes,
        latency,
    }
}

#[derive(Debug, Default)]
pub struct IoHistory {
    /// The totals last reported, per node and volume.
    totals: BTreeMap<(NodeId, VolumeId), VolumeIo>,
    /// The step being filled and its sums.
    open_step: u64,
    open: BTreeMap<IoSource, Sums>,
    /// Closed steps with IO, oldest first, per source.
    points: BTreeMap<IoSource, VecDeque<IoPoint>>,
}

impl IoHistory {
    /// Adds what `node` reported at `now_ms` (milliseconds since the Unix epoch). The first
    /// report of a volume from a node sets the baseline only: what came before it is not known
    /// to have happened within the window.
    pub fn record(&mut self, node: &NodeId, reports: &[VolumeIo], now_ms: u64) {
        self.advance(now_ms);
        for report in reports {
            let key = (node.clone(), report.volume);
            let Some(last) = self.totals.get(&key) else {
                self.totals.insert(key, report.clone());
                continue;
            };
            let delta = delta(Some(last), report);
            self.totals.insert(key, report.clone());
            if delta.is_empty() {
                continue;
            }
            for source in [
                IoSource::Node(node.clone()),
                IoSource::Volume(report.volume),
            ] {
                self.open.entry(source).or_default().add(&delta);
            }
        }
    }

    /// Closes the open step once `now_ms` is past it, and drops points older than the window.
    fn advance(&mut self, now_ms: u64) {
        let step = now_ms / STEP_MS;
        if step <= self.open_step {
            return;
        }
        for (source, sums) in std::mem::take(&mut self.open) {
            self.points
                .entry(source)
                .or_default()
                .push_back(sums.point(self.open_step));
        }
        self.open_step = step;
        let oldest = step.saturating_sub(WINDOW_STEPS) * STEP_MS;
        self.points.retain(|_, points| {
            while points.front().is_some_and(|p| p.t_ms < oldest) {
                points.pop_front();
            }
            !points.is_empty()
        });
    }

    /// The closed steps of every node and volume with IO in the window as of `now_ms`, volumes
    /// by the names `name` gives them. Volumes it names `None` no longer exist: their history
    /// is dropped.
    pub fn series(
        &mut self,
        now_ms: u64,
        name: impl Fn(VolumeId) -> Option<String>,
    ) -> (Vec<IoSeries>, Vec<IoSeries>) {
        self.advance(now_ms);
        let names: BTreeMap<VolumeId, Option<String>> = self
            .totals
            .keys()
            .map(|(_, v)| *v)
            .chain(self.points.keys().filter_map(|s| match s {
                IoSource::Volume(v) => Some(*v),
                IoSource::Node(_) => None,
            }))
            .map(|v| (v, name(v)))
            .collect();
        let exists = |v: &VolumeId| names.get(v).is_some_and(Option::is_some);
        self.totals.retain(|(_, volume), _| exists(volume));
        self.points.retain(|source, _| match source {
            IoSource::Volume(volume) => exists(volume),
            IoSource::Node(_) => true,
        });
        let mut nodes = Vec::new();
        let mut volumes = Vec::new();
        for (source, points) in &self.points {
            let points = points.iter().copied().collect();
            match source {
                IoSource::Node(node) => nodes.push(IoSeries {
                    name: node.0.clone(),
                    points,
                }),
                IoSource::Volume(volume) => {
                    if let Some(Some(name)) = names.get(volume) {
                        volumes.push(IoSeries {
                            name: name.clone(),
                            points,
                        });
                    }
                }
            }
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        (nodes, volumes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(volume: u64, reads: u64, writes: u64, fast: u64, slow: u64) -> VolumeIo {
        let mut latency = vec![0; BUCKETS];
        latency[0] = fast;
        latency[5] = slow;
        VolumeIo {
            volume: VolumeId(volume),
            reads,
            writes,
            read_bytes: reads * 4096,
            write_bytes: writes * 4096,
            latency,
        }
    }

    fn n(name: &str) -> NodeId {
        NodeId(name.into())
    }

    #[test]
    fn rates_are_summed_per_node_and_per_volume_over_closed_steps() {
        let mut history = IoHistory::default();
        let t0 = 1_000 * STEP_MS;
        // Baselines: what came before is not counted.
        history.record(&n("n1"), &[report(1, 100, 100, 200, 0)], t0);
        history.record(&n("n2"), &[report(1, 0, 0, 0, 0)], t0 + 10);
        // Within the step: n1 serves 50 reads and 25 writes, n2 another 25 writes.
        history.record(&n("n1"), &[report(1, 150, 125, 275, 0)], t0 + 1_000);
        history.record(&n("n2"), &[report(1, 0, 25, 24, 1)], t0 + 2_000);
        let (nodes, volumes) = history.series(t0 + STEP_MS, |v| Some(format!("vol{v}")));
        assert_eq!(nodes.len(), 2);
        assert_eq!(volumes.len(), 1);
        let point = volumes[0].points[0];
        assert_eq!(point.t_ms, t0);
        assert_eq!(point.read_iops, 10.0, "50 reads in 5 s");
        assert_eq!(point.write_iops, 10.0, "50 writes in 5 s");
        assert_eq!(point.write_bytes_per_sec, 10.0 * 4096.0);
        // 99 of 100 requests under 100 us, one in the 2-5 ms bucket: p99 is still fast.
        assert!(point.p99_us.is_some_and(|p| p <= 100), "{point:?}");
        let n2 = nodes.iter().find(|s| s.name == "n2").expect("n2 listed");
        assert_eq!(n2.points[0].write_iops, 5.0);
        assert_eq!(n2.points[0].p99_us, Some(4_250), "interpolated in 2-5 ms");
    }

    #[test]
    fn a_restarted_node_counts_from_zero_and_old_steps_leave_the_window() {
        let mut history = IoHistory::default();
        let t0 = 1_000 * STEP_MS;
        history.record(&n("n1"), &[report(1, 500, 0, 500, 0)], t0);
        history.record(&n("n1"), &[report(1, 10, 0, 10, 0)], t0 + 1_000);
        let (_, volumes) = history.series(t0 + STEP_MS, |v| Some(v.to_string()));
        assert_eq!(
            volumes[0].points[0].read_iops, 2.0,
            "10 reads since the restart"
        );
        let (nodes, volumes) = history.series(t0 + (WINDOW_STEPS + 2) * STEP_MS, |_| None);
        assert!(nodes.is_empty() && volumes.is_empty(), "{nodes:?}");
    }

    #[test]
    fn an_idle_volume_has_no_series() {
        let mut history = IoHistory::default();
        let t0 = 1_000 * STEP_MS;
        history.record(
            &n("n1"),
            &[report(1, 5, 5, 10, 0), report(2, 0, 0, 0, 0)],
            t0,
        );
        history.record(
            &n("n1"),
            &[report(1, 9, 5, 14, 0), report(2, 0, 0, 0, 0)],
            t0 + 1,
        );
        let (_, volumes) = history.series(t0 + STEP_MS, |v| Some(v.to_string()));
        let names: Vec<&str> = volumes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["1"]);
    }
}
