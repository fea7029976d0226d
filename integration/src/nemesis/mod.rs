//! A nemesis in the spirit of Jepsen: real processes, concurrent clients, faults drawn from a
//! seed, and a checker that judges the history.
//!
//! A run starts 3 managers and 4 storage nodes, each on its own loopback address, creates a
//! volume of several slices, and runs clients that write self-describing blocks and read them
//! back while the [`schedule`] injects faults one at a time ([`faults`]): process kills, hangs,
//! partitions made with packet filters ([`netfilter`]), torn log tails. Before each fault the
//! cluster must be whole again (every copy current) within a bound. At the end, every fault
//! healed, the clients stop, every block is read back, and the storage nodes are stopped so that
//! every copy can be checked offline. The [`checker`] then judges the [`history`], and
//! [`availability`] how long a slice that could serve kept its clients waiting. One client goes
//! through the NBD gateway with libnbd ([`nbd`]), the others through the client library.
//!
//! This file, past 600 lines, is the run itself, its steps in the order they happen; each
//! concern it calls is a module of its own (below).
//!
//! # Layout
//! - [`schedule`]: the fault kinds and the seeded schedule;
//! - [`faults`]: injecting and healing a fault, tearing a log tail;
//! - [`netfilter`]: iptables rules, removed on every exit path;
//! - [`workload`]: the clients;
//! - [`history`]: self-describing blocks and the record of every operation;
//! - [`checker`]: lost writes, stale reads, split brain;
//! - [`availability`]: the longest wait on a slice that could serve;
//! - [`nbd`]: a client through the NBD gateway, with libnbd.

pub mod availability;
pub mod checker;
pub mod faults;
pub mod history;
pub mod nbd;
pub mod netfilter;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vbs_wire::api::{ClusterStatus, CopyStatus, NodeState};
use vbs_wire::types::BLOCK_BYTES;

use crate::binaries::binary_with_features;
use crate::cluster::{replicated_volumes, Addresses, Cluster, ClusterOptions};
use crate::gateway::NbdGateway;
use crate::wait::wait_until;
use availability::{Monitor, Unavailable};
use checker::Verdict;
use faults::slices;
use history::History;
use netfilter::Netfilter;
use schedule::{FaultKind, Schedule};
use workload::{Client, Workload, WorkloadOptions};

/// The volume every run writes.
const VOLUME: &str = "nemesis";
/// Where the processes listen: managers on 127.0.0.11-13, storage nodes on 127.0.0.21-24.
pub const ADDRESSES: Addresses = Addresses::Distinct {
    managers: 11,
    storage: 21,
};
/// Blocks per read of the final read-back.
const FINAL_READ_BLOCKS: u64 = 256;
/// The deliberate bugs of the storage nodes (`storagenode/src/bugs.rs`, feature `bugs`).
pub const STORAGE_BUGS: [&str; 3] = [
    "ack-before-secondary",
    "ignore-lease",
    "resync-skips-records",
];
/// The deliberate bugs of the managers (`consistency/src/bugs.rs`, feature `bugs`).
pub const MANAGER_BUGS: [&str; 3] = [
    "new-leader-forgets-leases",
    "paused-leader-forgets-pause",
    "restart-loses-slices",
];
/// The storage nodes' heartbeat interval, and the managers' clock margin and maximum election
/// timeout: the defaults the nemesis runs them with.
const STORAGE_HEARTBEAT: Duration = Duration::from_secs(1);
const CLOCK_MARGIN: Duration = Duration::from_millis(500);
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// Serializes runs on one machine: they share the loopback addresses and the packet filter.
const LOCK_FILE: &str = "/tmp/vbs-nemesis.lock";

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// How long the schedule's faults and pauses add up to (the run takes longer: it waits for
    /// the cluster to be whole before each fault, and checks at the end).
    pub duration: Duration,
    pub replicas: u32,
    pub slices: u32,
    pub slice_bytes: u64,
    /// The kinds of faults to draw from.
    pub faults: Vec<FaultKind>,
    /// A deliberate bug to switch on (`VBS_BUG`), with the storage nodes built with `bugs`.
    pub bug: Option<String>,
    pub lease: Duration,
    /// How long the cluster may take to be whole again after a fault.
    pub heal_timeout: Duration,
    pub workload: WorkloadOptions,
}

impl Config {
    pub fn new(seed: u64, duration: Duration, replicas: u32) -> Config {
        Config {
            seed,
            duration,
            replicas,
            slices: 4,
            slice_bytes: 1 << 20,
            faults: FaultKind::ALL.to_vec(),
            bug: None,
            lease: Duration::from_secs(2),
            heal_timeout: Duration::from_secs(60),
            workload: WorkloadOptions::default(),
        }
    }

    /// The longest a slice that could serve may keep its clients waiting (`docs/reliability.md`,
    /// "Availability"): one recovery from one fault. A client's request to a primary that
    /// stopped answering times out (`io_timeout`) and the client reports it; the managers
    /// promote another copy once the primary's lease has run out, counted from the last
    /// heartbeat they received (up to a heartbeat interval before the fault), plus their clock
    /// margin; the new primary learns its role from its next heartbeat reply (one interval);
    /// the client retries within its longest backoff. A manager election (up to its maximum
    /// timeout) may stand between the report and the decision. A secondary that stopped
    /// answering holds a write for the storage node's write timeout (2 s) before it is marked
    /// stale, which is shorter than that path.
    pub fn unavailable_bound(&self) -> Duration {
        self.workload.io_timeout
            + 2 * STORAGE_HEARTBEAT
            + self.lease
            + CLOCK_MARGIN
            + ELECTION_TIMEOUT_MAX
            + client::volume::MAX_BACKOFF
    }

    /// The command that runs this configuration again.
    pub fn replay_command(&self) -> String {
        let mut command = format!(
            "cargo run --release -p integration --bin vbs-nemesis -- --seed {} --duration {}s \
             --replicas {}",
            self.seed,
            self.duration.as_secs(),
            self.replicas
        );
        if self.faults != FaultKind::ALL {
            let names: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
            let _ = write!(command, " --faults {}", names.join(","));
        }
        if self.lease != Config::new(0, Duration::ZERO, 0).lease {
            let _ = write!(command, " --lease {}ms", self.lease.as_millis());
        }
        if let Some(bug) = &self.bug {
            let _ = write!(command, " --bug {bug}");
        }
        command
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    pub config: Config,
    pub schedule: Schedule,
    /// Faults injected, by kind.
    pub injected: BTreeMap<FaultKind, u64>,
    /// Faults that could not be injected as drawn (no leader to kill, no secondary), by kind,
    /// with why.
    pub skipped: Vec<(FaultKind, String)>,
    /// The longest wait on a slice that could serve, and the bound it must stay within.
    pub unavailable: Unavailable,
    pub verdict: Verdict,
    /// Whether the cluster was whole again after every fault, and at the end every copy was
    /// current and identical.
    pub converged: bool,
    /// Why it did not converge, or what failed in the harness.
    pub convergence_problems: Vec<String>,
    /// Failovers over the run: how far each slice's generation moved, summed.
    pub failovers: u64,
    /// The data and logs of a failed run, kept.
    pub kept_dir: Option<PathBuf>,
    pub elapsed: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.verdict.safe() && self.converged && self.needless_failovers() == 0 && self.available()
    }

    /// Whether no slice that could serve kept its clients waiting longer than the bound.
    pub fn available(&self) -> bool {
        Duration::from_micros(self.unavailable.longest_us) <= self.config.unavailable_bound()
    }

    /// Whether every fault of the schedule struck a manager alone.
    fn manager_faults_only(&self) -> bool {
        !self.schedule.steps.iter().any(|s| s.kind.strikes_storage())
    }

    /// Failovers that no fault explains: with manager faults alone, every primary stayed
    /// healthy and reachable, so any failover was a wrong verdict of the managers.
    pub fn needless_failovers(&self) -> u64 {
        if self.manager_faults_only() {
            self.failovers
        } else {
            0
        }
    }

    /// `nemesis: ops=N acked=N lost=0 stale_reads=0 split_brain=0 unavailable_max_ms=N
    /// converged=yes`, and `needless_failovers=0` after it when the faults struck managers alone.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "nemesis: ops={} acked={} lost={} stale_reads={} split_brain={} \
             unavailable_max_ms={} converged={}",
            self.verdict.ops,
            self.verdict.acked,
            self.verdict.lost,
            self.verdict.stale_reads,
            self.verdict.split_brain,
            self.unavailable.longest_us / 1000,
            if self.converged { "yes" } else { "no" }
        );
        if self.manager_faults_only() {
            let _ = write!(line, " needless_failovers={}", self.needless_failovers());
        }
        line
    }

    /// Everything to print at the end of a run.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let v = &self.verdict;
        let _ = writeln!(
            out,
            "nemesis: seed {} replicas {} ran {:.0?}",
            self.config.seed, self.config.replicas, self.elapsed
        );
        let injected: Vec<String> = self
            .injected
            .iter()
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "nemesis: faults injected: {} ({})",
            self.injected.values().sum::<u64>(),
            injected.join(" ")
        );
        let _ = writeln!(
            out,
            "nemesis: writes {} (acknowledged {}, failed or unknown {}), reads {} (failed {})",
            v.acked + v.write_errors,
            v.acked,
            v.write_errors,
            v.reads,
            v.read_errors
        );
        for (kind, why) in &self.skipped {
            let _ = writeln!(out, "nemesis: skipped a {kind} fault: {why}");
        }
        let _ = writeln!(out, "nemesis: slices failed over: {}", self.failovers);
        let u = &self.unavailable;
        let _ = writeln!(
            out,
            "nemesis: longest wait on a slice that could serve: {} ms (slice {}, ending at \
             {:.1}s; bound {} ms)",
            u.longest_us / 1000,
            u.slice,
            u.until_us as f64 / 1e6,
            self.config.unavailable_bound().as_millis()
        );
        if !self.available() {
            let _ = writeln!(
                out,
                "nemesis: PROBLEM slice {} kept its clients waiting {} ms, over the bound",
                u.slice,
                u.longest_us / 1000
            );
        }
        for problem in v.problems.iter().chain(&self.convergence_problems) {
            let _ = writeln!(out, "nemesis: PROBLEM {problem}");
        }
        let _ = writeln!(out, "{}", self.summary_line());
        if !self.passed() {
            let _ = writeln!(
                out,
                "nemesis: FAILED; replay with: {}",
                self.config.replay_command()
            );
            if let Some(dir) = &self.kept_dir {
                let _ = writeln!(out, "nemesis: data and logs kept in {}", dir.display());
            }
        }
        out
    }
}

/// Holds the machine-wide lock of nemesis runs (released when the file is closed): also taken by
/// benchmarks that use the same addresses or the packet filter.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire() -> anyhow::Result<RunLock> {
        use std::os::fd::AsRawFd;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .with_context(|| format!("opening {LOCK_FILE}"))?;
        // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the nemesis lock file");
        }
        Ok(RunLock { _file: file })
    }
}

/// Runs `config` and judges it. Prints the schedule and each fault as it goes.
pub async fn run(config: &Config) -> anyhow::Result<Report> {
    let _lock = RunLock::acquire()?;
    let mut net = Netfilter::new()?;
    let started = Instant::now();
    let schedule = Schedule::generate(config.seed, config.duration, &config.faults, config.lease);
    println!(
        "nemesis: seed {} duration {:?} replicas {} bug {}",
        config.seed,
        config.duration,
        config.replicas,
        config.bug.as_deref().unwrap_or("none")
    );
    println!("nemesis: schedule of {} faults:", schedule.steps.len());
    for (i, step) in schedule.steps.iter().enumerate() {
        println!("nemesis:   {:>3}. {step}", i + 1);
    }

    let mut cluster = start_cluster(config)?;
    cluster
        .wait_for_storage_up(Duration::from_secs(60))
        .await
        .context("waiting for the storage nodes")?;
    create_volume(&cluster, config)?;
    let history = Arc::new(History::new(
        started,
        config.slices,
        config.slice_bytes / BLOCK_BYTES,
    ));
    let mut io = Vec::new();
    for client in 1..=config.workload.clients {
        io.push(Client::Volume(
            workload::open(
                &cluster.managers_arg(),
                VOLUME,
                format!("nemesis-client-{client}"),
                &config.workload,
            )
            .await?,
        ));
    }
    // The NBD gateway is a client of the cluster like the others, on the harness's address:
    // the faults do not cut it off.
    let timeouts = [
        "--io-timeout".to_string(),
        format!("{}ms", config.workload.io_timeout.as_millis()),
        "--retry-deadline".to_string(),
        format!("{}ms", config.workload.retry_deadline.as_millis()),
    ];
    let timeouts: Vec<&str> = timeouts.iter().map(String::as_str).collect();
    let gateway = NbdGateway::start_with(&cluster, VOLUME, &timeouts)
        .await
        .context("starting the NBD gateway")?;
    if config.workload.nbd_clients > 0 {
        let script = nbd::prepare(cluster.dir.path())?;
        for _ in 0..config.workload.nbd_clients {
            let client = nbd::NbdClient::connect(&script, &gateway.url).await?;
            io.push(Client::Nbd(Box::new(client)));
        }
    }
    let monitor = Monitor::start(
        vbs_wire::managers::Managers::parse(&cluster.managers_arg(), Duration::from_secs(2))
            .map_err(anyhow::Error::msg)?,
        VOLUME,
        history.clone(),
    );
    let clients = Workload::start(io, history.clone(), config.seed, &config.workload);
    let generations_before = generations(&cluster.status().await.context("reading the status")?)?;

    let mut injected = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut problems = Vec::new();
    // Before each fault the cluster is whole and every slice served a client since the last
    // heal, so that one wait on a slice spans one fault, not the tail of one and the next.
    let mut healed_us = 0;
    for (i, step) in schedule.steps.iter().enumerate() {
        let served = Some((&*history, healed_us));
        if let Err(e) = wait_whole(&cluster, config, config.heal_timeout, served).await {
            problems.push(format!("before fault {}: {e:#}", i + 1));
            break;
        }
        tokio::time::sleep(step.pause).await;
        let at = started.elapsed();
        // A fault that cannot be injected as drawn changed nothing: it is skipped and counted.
        let (what, heal) = match faults::inject(&mut cluster, &mut net, VOLUME, step).await {
            Ok(injected) => injected,
            Err(e) => {
                println!("nemesis: {:>3}. skipped {step}: {e:#}", i + 1);
                skipped.push((step.kind, format!("{e:#}")));
                continue;
            }
        };
        *injected.entry(step.kind).or_insert(0) += 1;
        tokio::time::sleep(step.hold).await;
        let healed = faults::heal(&mut cluster, &mut net, &heal);
        healed_us = history.now_us();
        println!(
            "nemesis: {:>3}. {:>7.1}s {}: {what}; healed after {:?} ({} ops so far)",
            i + 1,
            at.as_secs_f64(),
            step.kind,
            step.hold,
            clients.done.load(Ordering::Relaxed)
        );
        if let Err(e) = healed {
            problems.push(format!("healing fault {} ({heal:?}): {e:#}", i + 1));
            break;
        }
    }
    if !net.is_healed() {
        net.heal().context("healing the network")?;
    }

    // The end: whole again, quiet, every block read back, every copy checked.
    let whole_at = Instant::now();
    match wait_whole(&cluster, config, config.heal_timeout, None).await {
        Ok(()) => println!(
            "nemesis: whole again {:.1?} after the last fault",
            whole_at.elapsed()
        ),
        Err(e) => problems.push(format!("after the last fault: {e:#}")),
    }
    // Clients that were retrying when told to stop may have moved a slice on (a report of a slow
    // primary fails it over): whole again before the final read, and after it.
    let clients_stopped_us = history.now_us();
    clients.stop().await;
    let samples = monitor.stop().await;
    drop(gateway);
    let mut whole = true;
    for stage in ["after the clients stopped", "after the final read"] {
        if stage == "after the final read" {
            final_read(&cluster, config, &history, &mut problems).await?;
        }
        if let Err(e) = wait_whole(&cluster, config, config.heal_timeout, None).await {
            problems.push(format!("{stage}: {e:#}"));
            whole = false;
        }
    }
    if let Err(e) = wait_managers_agree(&cluster).await {
        problems.push(format!("{e:#}"));
    }
    // Damage that no read came to (a bit-rot fault on a secondary) is found and repaired by one
    // scrub pass; the copies compared below must then agree.
    if whole {
        match cluster.vbs(&["scrub", VOLUME]) {
            Ok(out) if out.status.success() => println!(
                "nemesis: final scrub: {}",
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace('\n', "; ")
            ),
            Ok(out) => problems.push(format!(
                "the final scrub failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => problems.push(format!("the final scrub did not run: {e:#}")),
        }
    }
    let status = cluster.status().await.context("reading the status")?;
    if whole {
        if let Some(what) = missing(&cluster, config, &status) {
            problems.push(format!("before the copies were checked: {what}"));
        }
    }
    problems.extend(check_copies(&mut cluster, &status)?);

    let failovers = generations(&status)?
        .iter()
        .map(|(unit, g)| g.saturating_sub(generations_before.get(unit).copied().unwrap_or(*g)))
        .sum();

    let (writes, reads) = (history.writes(), history.reads());
    let verdict = checker::check(&writes, &reads);
    let unavailable = availability::longest_wait(
        &writes,
        &reads,
        &samples,
        config.slice_bytes / BLOCK_BYTES,
        clients_stopped_us,
    );
    let converged = problems.is_empty();
    let mut report = Report {
        config: config.clone(),
        schedule,
        injected,
        skipped,
        unavailable,
        verdict,
        converged,
        failovers,
        convergence_problems: problems,
        kept_dir: None,
        elapsed: started.elapsed(),
    };
    if !report.passed() {
        let dir = cluster.keep_dir();
        history::write_tsv(&writes, &reads, &dir.join("history.tsv"))
            .context("writing the history")?;
        std::fs::write(
            dir.join("availability.tsv"),
            availability::samples_tsv(&samples),
        )
        .context("writing the availability samples")?;
        report.kept_dir = Some(dir);
    }
    Ok(report)
}

fn start_cluster(config: &Config) -> anyhow::Result<Cluster> {
    let mut options = ClusterOptions {
        managers: 3,
        manager_args: vec!["--lease".into(), format!("{}ms", config.lease.as_millis())],
        storage_nodes: 4,
        addresses: ADDRESSES,
        ..ClusterOptions::default()
    };
    if let Some(bug) = &config.bug {
        let env = vec![("VBS_BUG".to_string(), bug.clone())];
        if STORAGE_BUGS.contains(&bug.as_str()) {
            options.storage_binary = Some(binary_with_features("vbs-storage", "bugs")?);
            options.storage_env = env;
        } else if MANAGER_BUGS.contains(&bug.as_str()) {
            options.manager_binary = Some(binary_with_features("vbs-manager", "bugs")?);
            options.manager_env = env;
        } else {
            bail!(
                "no deliberate bug {bug:?}; known: {}, {}",
                STORAGE_BUGS.join(", "),
                MANAGER_BUGS.join(", ")
            );
        }
    }
    Cluster::start(options)
}

fn create_volume(cluster: &Cluster, config: &Config) -> anyhow::Result<()> {
    let size = u64::from(config.slices) * config.slice_bytes;
    let out = cluster.vbs(&[
        "volume",
        "create",
        VOLUME,
        "--size",
        &size.to_string(),
        "--replicas",
        &config.replicas.to_string(),
        "--slice-size",
        &config.slice_bytes.to_string(),
    ])?;
    if !out.status.success() {
        bail!(
            "creating the volume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// What keeps the cluster from being whole, if anything: a process that exited, a storage node
/// not `up`, a slice without `replicas` current copies.
fn missing(cluster: &Cluster, config: &Config, status: &ClusterStatus) -> Option<String> {
    for id in cluster.manager_ids() {
        if !cluster.manager_running(id) {
            return Some(format!("manager-{id} exited"));
        }
    }
    for name in cluster.storage_names() {
        if !cluster.storage_running(&name) {
            return Some(format!("{name} exited"));
        }
        let up = status
            .nodes
            .iter()
            .any(|n| n.id.0 == name && n.state == NodeState::Up);
        if !up {
            return Some(format!("{name} is not up"));
        }
    }
    let slices = match slices(status, VOLUME) {
        Ok(slices) => slices,
        Err(e) => return Some(e.to_string()),
    };
    for slice in slices {
        let current = slice
            .copies
            .iter()
            .filter(|c| c.status == CopyStatus::Current)
            .count();
        if slice.copies.len() != config.replicas as usize || current != slice.copies.len() {
            let copies: Vec<String> = slice
                .copies
                .iter()
                .map(|c| format!("{} {}", c.node, c.status.as_str()))
                .collect();
            return Some(format!("slice {}: {}", slice.unit, copies.join(", ")));
        }
    }
    None
}

/// Waits until every process runs, every storage node is up and every slice has its replicas,
/// all current, and, with `served`, every slice served a client after the time it gives.
async fn wait_whole(
    cluster: &Cluster,
    config: &Config,
    timeout: Duration,
    served: Option<(&History, u64)>,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let result = wait_until("the cluster to be whole", timeout, || async {
        let status = cluster.status().await?;
        let unserved = served
            .filter(|(history, since)| !history.every_slice_served_since(*since))
            .map(|_| "a slice has served no client since the last fault healed".to_string());
        Ok::<_, anyhow::Error>(match missing(cluster, config, &status).or(unserved) {
            None => Some(()),
            Some(what) => {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = what;
                None
            }
        })
    })
    .await;
    result.with_context(|| {
        format!(
            "not whole within {timeout:?}: {}",
            last.lock().unwrap_or_else(|p| p.into_inner())
        )
    })
}

/// Reads every block of the volume with a new client.
async fn final_read(
    cluster: &Cluster,
    config: &Config,
    history: &History,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let volume = Client::Volume(
        workload::open(
            &cluster.managers_arg(),
            VOLUME,
            "nemesis-final-read".into(),
            &config.workload,
        )
        .await?,
    );
    let blocks = volume.size_bytes() / BLOCK_BYTES;
    let mut first = 0;
    while first < blocks {
        let count = FINAL_READ_BLOCKS.min(blocks - first);
        if !workload::read(&volume, history, 0, first, count, true).await {
            problems.push(format!(
                "the final read of blocks {first}..{} failed",
                first + count
            ));
        }
        first += count;
    }
    Ok(())
}

/// Waits until every manager's own state holds the same volume map as the leader's.
async fn wait_managers_agree(cluster: &Cluster) -> anyhow::Result<()> {
    wait_until(
        "every manager to hold the leader's volume map",
        Duration::from_secs(30),
        || async {
            let leader = replicated_volumes(&cluster.status().await?);
            for id in cluster.manager_ids() {
                let local = cluster.local_status(id).await?;
                if replicated_volumes(&local) != leader {
                    return Ok::<_, anyhow::Error>(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .map(drop)
}

/// Each slice's generation, by unit. A generation moves on at every failover and every change
/// of a slice's copies.
fn generations(status: &ClusterStatus) -> anyhow::Result<BTreeMap<String, u64>> {
    Ok(slices(status, VOLUME)?
        .iter()
        .map(|s| (s.unit.to_string(), s.generation.0))
        .collect())
}

/// Stops every storage node and checks every copy offline: consistent logs, and the copies of
/// each slice with the same last VBA and content digest.
fn check_copies(cluster: &mut Cluster, status: &ClusterStatus) -> anyhow::Result<Vec<String>> {
    for name in cluster.storage_names() {
        cluster.storage_node(&name)?.kill();
    }
    let mut problems = Vec::new();
    for slice in slices(status, VOLUME)? {
        let unit = slice.unit.to_string();
        let mut seen: Vec<(String, (u64, String))> = Vec::new();
        for copy in &slice.copies {
            match cluster.unit_check(&copy.node.0, &unit) {
                Ok(check) => seen.push((copy.node.0.clone(), check)),
                Err(e) => problems.push(format!("copy of {unit} on {}: {e:#}", copy.node)),
            }
        }
        if seen.windows(2).any(|w| w[0].1 != w[1].1) {
            let copies: Vec<String> = seen
                .iter()
                .map(|(node, (vba, digest))| format!("{node}: last VBA {vba} digest {digest}"))
                .collect();
            problems.push(format!("copies of {unit} differ: {}", copies.join("; ")));
        }
    }
    Ok(problems)
}
