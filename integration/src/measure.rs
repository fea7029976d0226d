//! Measurements the benchmarks share: a process's CPU, memory and threads read from `/proc`, and
//! the managers' notification commit rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::json;
use vbs_wire::api::{Notification, UnitGeneration, VolumeMap};

use crate::{Cluster, ClusterOptions};

/// What `/proc` says of one process at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSample {
    /// User plus system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub threads: u64,
    pub at: Instant,
}

impl ProcessSample {
    pub fn read(pid: u32) -> anyhow::Result<ProcessSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name is in parentheses and may hold spaces: fields count from its end.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("/proc/PID/stat without a command name")?
            .1
            .split_whitespace()
            .collect();
        let field = |n: usize| -> anyhow::Result<u64> {
            // Field 3 (state) is the first after the name; `n` counts as proc(5) does.
            fields
                .get(n - 3)
                .context("short /proc/PID/stat")?
                .parse()
                .context("a field of /proc/PID/stat")
        };
        let cpu_ticks = field(14)? + field(15)?;
        let threads = field(20)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS in /proc/PID/status")?;
        Ok(ProcessSample {
            cpu_ticks,
            rss_bytes: rss_kib * 1024,
            threads,
            at: Instant::now(),
        })
    }

    /// CPU used between `earlier` and this sample, as a share of one core (1.0 = a whole core).
    pub fn cpu_share_since(&self, earlier: &ProcessSample) -> f64 {
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let cpu = self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / ticks_per_sec;
        cpu / self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// One run of notifications: how many commits, at how many concurrent clients, and what it took.
pub struct NotificationRun {
    pub clients: usize,
    pub commits: usize,
    pub elapsed: Duration,
    pub latencies: hdrhistogram::Histogram<u64>,
}

impl NotificationRun {
    pub fn per_second(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }
}

/// Notifications to a fresh 3-manager cluster on loopback, each marking one copy `stale` (so
/// each is one Raft commit), for each `(clients, count)` of `runs`.
pub async fn notification_commits(runs: &[(usize, usize)]) -> anyhow::Result<Vec<NotificationRun>> {
    const NODES: [&str; 3] = ["n1", "n2", "n3"];
    // A long lease: the storage nodes here are names only and never heartbeat.
    let options = ClusterOptions {
        managers: 3,
        manager_args: vec!["--lease".into(), "10m".into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(options).context("starting managers")?;
    let ids = cluster.manager_ids();
    let leader = cluster
        .wait_for_leader(&ids, Duration::from_secs(20))
        .await?;
    for node in NODES {
        let body = json!({"id": node, "addr": "127.0.0.1:9000", "capacity_bytes": 1u64 << 40});
        let _: serde_json::Value = cluster
            .call(leader, Method::POST, "/v1/nodes", Some(&body))
            .await?;
    }
    let total: usize = runs.iter().map(|(_, n)| n).sum();
    let volume = json!({
        "name": "bench", "size_bytes": total as u64 * 4096, "slice_bytes": 4096, "replicas": 2
    });
    let map: VolumeMap = cluster
        .call(leader, Method::POST, "/v1/volumes", Some(&volume))
        .await?;
    // Each notification needs a unit of its own: a copy already stale commits nothing.
    let mut work = secondaries_not_current(&map);
    let url = format!("http://{}/v1/notifications", cluster.manager_addr(leader));
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(32)
        .build()?;
    let mut results = Vec::new();
    for &(clients, count) in runs {
        let batch: Vec<Notification> = work.drain(..count).collect();
        results.push(send(&http, &url, clients, batch).await?);
    }
    Ok(results)
}

/// For each slice, its secondary saying it is not current.
fn secondaries_not_current(map: &VolumeMap) -> Vec<Notification> {
    map.slices
        .iter()
        .map(|slice| {
            let secondary = slice
                .copies
                .iter()
                .find(|c| c.node != slice.primary)
                .expect("2 copies");
            Notification::NotCurrent {
                source: secondary.node.clone(),
                units: vec![UnitGeneration {
                    unit: slice.unit,
                    generation: slice.generation,
                }],
            }
        })
        .collect()
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    clients: usize,
    work: Vec<Notification>,
) -> anyhow::Result<NotificationRun> {
    let commits = work.len();
    let queue = Arc::new(Mutex::new(work));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let Some(notification) = next else { break };
                let sent = Instant::now();
                let response = http.post(&url).json(&notification).send().await?;
                let status = response.status();
                if !status.is_success() {
                    bail!("notification refused: {status} {}", response.text().await?);
                }
                latencies.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok(latencies)
        }));
    }
    let mut latencies = hdrhistogram::Histogram::<u64>::new(3)?;
    for task in tasks {
        latencies.add(task.await??)?;
    }
    Ok(NotificationRun {
        clients,
        commits,
        elapsed: started.elapsed(),
        latencies,
    })
}
