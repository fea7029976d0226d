//! `vbs up`: a whole cluster on this machine, in the foreground.
//!
//! Starts `vbs-manager` and `vbs-storage` processes (found next to `vbs`) on loopback, each with
//! its own directory and log under `--dir`, waits until the cluster is healthy, creates the demo
//! volume and serves it over NBD from this process. Ctrl-C (or SIGTERM) stops everything; started
//! again on the same directory, the cluster resumes with its data: the layout (ids and ports) is
//! kept in `DIR/cluster.json`.
//!
//! If a process it started exits while the cluster starts, `vbs up` prints that process's last
//! error line and where its log is, stops the others and exits with an error; once the cluster is
//! up, it says the same and the cluster goes on without the process. The processes it starts are its own: each is
//! sent SIGTERM by the kernel when `vbs up` dies, even by SIGKILL, so none outlives it.
//!
//! The cluster requires authentication: on first start `vbs up` writes a random token to
//! `DIR/token` (mode 600), unless `vbs --token-file PATH up` names one, and gives it to every
//! process it starts. Everything listens on loopback, the NBD export included.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use client::api::{CreateVolumeRequest, ErrorCode, NodeState};
use client::managers::Managers;
use client::nbd::Exports;
use client::security::{Security, Token};
use client::size::{format_size, parse_size, SizeError};
use client::types::NameError;
use client::volume::VolumeOptions;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data and logs.
    #[arg(long, default_value = "./vbs-data")]
    pub dir: PathBuf,
    /// Manager replicas (an odd number: 1, 3 or 5).
    #[arg(long = "managers", default_value_t = 3)]
    pub manager_count: u32,
    /// Storage nodes.
    #[arg(long = "nodes", default_value_t = 3)]
    pub nodes: u32,
    /// The volume to create and export: NAME:SIZE:REPLICAS. Default: demo:1G:2 on the first
    /// start; on a resume, the volume of the first start, with its data.
    #[arg(long, value_parser = parse_volume)]
    pub volume: Option<VolumeSpec>,
    /// First port: managers listen on BASE+1.., storage nodes on BASE+101.. (their metrics on
    /// BASE+201..), NBD on BASE+809.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub size_bytes: u64,
    pub replicas: u32,
}

/// A `--volume` that is not `NAME:SIZE:REPLICAS`.
#[derive(Debug, thiserror::Error)]
pub enum VolumeSpecError {
    #[error("volume {0:?} is not NAME:SIZE:REPLICAS (e.g. demo:1G:2)")]
    Shape(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error("volume {text:?}: replicas {replicas:?} is not a number")]
    Replicas { text: String, replicas: String },
}

fn parse_volume(text: &str) -> Result<VolumeSpec, VolumeSpecError> {
    let parts: Vec<&str> = text.split(':').collect();
    let [name, size, replicas] = parts[..] else {
        return Err(VolumeSpecError::Shape(text.to_string()));
    };
    let name = super::volume_name(name)?;
    let size_bytes = parse_size(size)?;
    let replicas = replicas.parse().map_err(|_| VolumeSpecError::Replicas {
        text: text.to_string(),
        replicas: replicas.to_string(),
    })?;
    Ok(VolumeSpec {
        name,
        size_bytes,
        replicas,
    })
}

/// The volume `vbs up` creates when none is named on the first start.
const DEFAULT_VOLUME: &str = "demo:1G:2";

fn default_volume() -> VolumeSpec {
    parse_volume(DEFAULT_VOLUME).expect("the default volume parses")
}

/// The volume a start creates (or finds there from an earlier start) and exports by default:
/// `--volume` (`named`), else the one the first start recorded, else the default. Layouts
/// written before the volume was recorded get the default, as they did.
fn volume_to_serve(named: Option<&VolumeSpec>, recorded: Option<&VolumeSpec>) -> VolumeSpec {
    named.or(recorded).cloned().unwrap_or_else(default_volume)
}

/// What `vbs up` started, kept so a restart on the same directory resumes the same cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Layout {
    managers: Vec<String>,
    nodes: Vec<String>,
    /// Where each storage node serves `/metrics`.
    node_metrics: Vec<String>,
    nbd: String,
    /// The volume of the first start, created (if it is not there) and exported on a resume
    /// without `--volume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume: Option<VolumeSpec>,
}

impl Layout {
    fn new(args: &UpArgs, volume: &VolumeSpec) -> anyhow::Result<Layout> {
        let port = |offset: u32| -> anyhow::Result<String> {
            let port = u16::try_from(u32::from(args.base_port) + offset)
                .context("--base-port leaves no room for the cluster's ports")?;
            Ok(format!("127.0.0.1:{port}"))
        };
        Ok(Layout {
            managers: (1..=args.manager_count)
                .map(port)
                .collect::<anyhow::Result<_>>()?,
            nodes: (1..=args.nodes)
                .map(|n| port(100 + n))
                .collect::<anyhow::Result<_>>()?,
            node_metrics: (1..=args.nodes)
                .map(|n| port(200 + n))
                .collect::<anyhow::Result<_>>()?,
            nbd: port(809)?,
            volume: Some(volume.clone()),
        })
    }

    fn managers_arg(&self) -> String {
        self.managers.join(",")
    }
}

/// A child process, stopped (SIGINT, then SIGKILL after a while) when dropped.
struct Managed {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where this run's part of the log starts.
    log_start: u64,
    /// Its exit was told already.
    told: bool,
}

impl Managed {
    /// Says how the process ended, if it did and that was not told yet: its exit status, the
    /// last error line of its log, and where the log is.
    fn ended(&mut self) -> Option<String> {
        if self.told {
            return None;
        }
        let status = self.child.try_wait().ok().flatten()?;
        self.told = true;
        let text = std::fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(self.log_start as usize..).unwrap_or(&[]));
        let why = last_error(&text).map_or_else(String::new, |why| format!(": {why}"));
        Some(format!(
            "{} exited ({status}){why}; its log is {}",
            self.name,
            self.log.display()
        ))
    }

    fn stop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill(2) with our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a process's log says about why it stopped: the last `Error:` report (what a binary
/// prints when `main` fails) with its causes on one line, else the last line logged at ERROR
/// (without its colours). `None` when the log tells neither, as after a SIGKILL: the last line
/// of such a log is whatever the process was doing, not why it stopped.
fn last_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let Some(at) = lines.iter().rposition(|l| l.starts_with("Error:")) else {
        return lines
            .iter()
            .rfind(|l| l.contains("ERROR"))
            .map(|l| without_colours(l.trim()));
    };
    let mut text = lines[at].trim_start_matches("Error:").trim().to_string();
    // anyhow's report: a blank line, `Caused by:`, then one indented cause per line (numbered
    // when there are several), then a blank line before any backtrace.
    let mut rest = lines[at + 1..].iter().skip_while(|l| l.trim().is_empty());
    if rest.next().is_some_and(|l| l.trim() == "Caused by:") {
        for line in rest.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()) {
            let cause = line.trim();
            let cause = cause
                .split_once(": ")
                .filter(|(n, _)| n.parse::<u32>().is_ok())
                .map_or(cause, |(_, c)| c);
            text.push_str(": ");
            text.push_str(cause);
        }
    }
    Some(text)
}

/// `line` without the terminal colour sequences (`ESC [ ... m`) a log may hold.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// The processes `vbs up` started.
#[derive(Default)]
struct Children {
    started: Mutex<Vec<Managed>>,
    /// The cluster is up: from then on a process that exits is told of, and the others go on
    /// without it, as a cluster does when it loses a node.
    up: AtomicBool,
}

impl Children {
    fn add(&self, child: Managed) {
        self.lock().push(child);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Managed>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches them: returns, saying how, once one exits while the cluster is starting; tells of
    /// each that exits once it is up.
    async fn watch(&self) -> String {
        loop {
            let ended: Vec<String> = self.lock().iter_mut().filter_map(Managed::ended).collect();
            for ended in ended {
                if !self.up.load(Ordering::SeqCst) {
                    return ended;
                }
                eprintln!("vbs: {ended}; the rest of the cluster goes on without it");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops them, storage nodes first (they talk to the managers), then the managers.
    fn stop_all(&self) {
        for child in self.lock().iter_mut().rev() {
            child.stop();
            eprintln!("vbs: stopped {}", child.name);
        }
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating vbs")?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{name} is not next to {}: build every binary first (cargo build --release --bins)",
            exe.display()
        );
    }
    Ok(path)
}

fn spawn(name: &str, program: &Path, args: &[String], logs: &Path) -> anyhow::Result<Managed> {
    let path = logs.join(format!("{name}.log"));
    let log = File::options()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening the log of {name}"))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    // SAFETY: getpid(2) has no preconditions.
    let parent = unsafe { libc::getpid() };
    let mut child = Command::new(program);
    child
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal reaches `vbs up` alone, which then
        // stops the children in order.
        .process_group(0);
    // SAFETY: between fork and exec the closure calls only async-signal-safe functions
    // (prctl(2), getppid(2)) and allocates nothing.
    let child = unsafe {
        child.pre_exec(move || {
            // SIGTERM when `vbs up` dies, however it dies (a clean stop; the kernel sends it when
            // the parent thread that started the process exits). If it died before this call,
            // the process has been handed to another parent already: stop at once.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 || libc::getppid() != parent
            {
                return Err(std::io::Error::other("vbs up is gone"));
            }
            Ok(())
        })
    }
    .spawn()
    .with_context(|| format!("starting {name}"))?;
    Ok(Managed {
        name: name.to_string(),
        child,
        log: path,
        log_start,
        told: false,
    })
}

/// Polls `probe` every 100 ms until it returns `Some`, for at most `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; see the logs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates the volume `spec`, or finds it there from an earlier start.
async fn create_volume(managers: &Managers, spec: &VolumeSpec) -> anyhow::Result<()> {
    let request = CreateVolumeRequest {
        name: spec.name.clone(),
        size_bytes: spec.size_bytes,
        replicas: Some(spec.replicas),
        slice_bytes: None,
    };
    match managers.create_volume(&request).await {
        Ok(_) => eprintln!(
            "vbs: created volume {} ({}, {} replicas)",
            spec.name,
            format_size(spec.size_bytes),
            spec.replicas
        ),
        Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
            eprintln!("vbs: volume {} exists; resuming with its data", spec.name)
        }
        Err(e) => return Err(e).context("creating the volume"),
    }
    Ok(())
}

/// The layout an earlier start left in `dir`, if any.
fn read_layout(dir: &Path) -> anyhow::Result<Option<Layout>> {
    let path = dir.join("cluster.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not a vbs up layout", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The layout to start: the earlier one, as it was, or a new one (written to `dir`).
fn settle_layout(
    dir: &Path,
    args: &UpArgs,
    earlier: Option<Layout>,
    volume: &VolumeSpec,
) -> anyhow::Result<Layout> {
    if let Some(layout) = earlier {
        if layout.managers.len() != args.manager_count as usize
            || layout.nodes.len() != args.nodes as usize
        {
            eprintln!(
                "vbs: {} holds a cluster of {} managers and {} nodes; resuming it as it was",
                dir.display(),
                layout.managers.len(),
                layout.nodes.len()
            );
        }
        return Ok(layout);
    }
    let layout = Layout::new(args, volume)?;
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&layout)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(layout)
}

/// The cluster's token: the file given, else `DIR/token`, created on first start.
fn token(dir: &Path, given: Option<PathBuf>) -> anyhow::Result<(PathBuf, Token)> {
    if let Some(path) = given {
        let token = Token::load(&path)?;
        return Ok((path, token));
    }
    let path = dir.join("token");
    let token = if path.exists() {
        Token::load(&path)?
    } else {
        Token::create_file(&path)?
    };
    Ok((path, token))
}

pub async fn run(args: UpArgs, token_file: Option<PathBuf>) -> anyhow::Result<()> {
    let children = Children::default();
    let served = tokio::select! {
        served = start_and_serve(args, token_file, &children) => served,
        ended = children.watch() => Err(anyhow::anyhow!("{ended}")),
    };
    if served.is_err() {
        eprintln!("vbs: stopping the cluster ...");
    }
    children.stop_all();
    served
}

/// Starts the cluster (into `children`) and serves NBD until Ctrl-C or SIGTERM.
async fn start_and_serve(
    args: UpArgs,
    token_file: Option<PathBuf>,
    children: &Children,
) -> anyhow::Result<()> {
    if args.manager_count == 0 || args.manager_count % 2 == 0 {
        bail!(
            "--managers {} must be odd (1, 3 or 5) for a majority to exist",
            args.manager_count
        );
    }
    let dir = args.dir.clone();
    let earlier = read_layout(&dir)?;
    let volume = volume_to_serve(
        args.volume.as_ref(),
        earlier.as_ref().and_then(|l| l.volume.as_ref()),
    );
    let nodes = earlier
        .as_ref()
        .map_or(args.nodes as usize, |l| l.nodes.len());
    if nodes < volume.replicas as usize {
        bail!(
            "{nodes} storage nodes (--nodes) are fewer than volume {}'s {} replicas",
            volume.name,
            volume.replicas
        );
    }
    let manager_bin = sibling("vbs-manager")?;
    let storage_bin = sibling("vbs-storage")?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let layout = settle_layout(&dir, &args, earlier, &volume)?;
    let (token_path, token) = token(&dir, token_file)?;
    let token_arg = ["--token-file".to_string(), token_path.display().to_string()];

    let peers: Vec<String> = layout
        .managers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect();
    for (i, addr) in layout.managers.iter().enumerate() {
        let id = i + 1;
        let data = dir.join(format!("manager-{id}"));
        let args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--peers".into(),
            peers.join(","),
        ];
        let args = [args.as_slice(), &token_arg].concat();
        children.add(spawn(&format!("manager-{id}"), &manager_bin, &args, &logs)?);
    }
    let security = Security {
        token: Some(Arc::new(token)),
        tls: None,
    };
    let managers = Arc::new(
        Managers::parse_secured(
            &layout.managers_arg(),
            Duration::from_secs(2),
            None,
            security,
        )
        .map_err(anyhow::Error::msg)?,
    );
    eprintln!("vbs: starting {} managers ...", layout.managers.len());
    wait_for("a manager leader", Duration::from_secs(60), || async {
        managers.status().await.ok().filter(|s| s.leader.is_some())
    })
    .await?;

    for (i, addr) in layout.nodes.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let data = dir.join(format!("node-{}", i + 1));
        let args = vec![
            "--id".to_string(),
            name.clone(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--managers".into(),
            layout.managers_arg(),
            "--metrics-listen".into(),
            layout.node_metrics[i].clone(),
        ];
        let args = [args.as_slice(), &token_arg].concat();
        children.add(spawn(&name, &storage_bin, &args, &logs)?);
    }
    eprintln!("vbs: starting {} storage nodes ...", layout.nodes.len());
    let wanted = layout.nodes.len();
    wait_for("every storage node up", Duration::from_secs(60), || async {
        let status = managers.status().await.ok()?;
        let up = status
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .count();
        (up >= wanted).then_some(())
    })
    .await?;

    create_volume(&managers, &volume).await?;
    let name = volume.name;
    let exports = Arc::new(Exports::new(
        managers.clone(),
        VolumeOptions::default(),
        Some(name.clone()),
    ));
    exports
        .open(&name)
        .await
        .with_context(|| format!("exporting volume {name}"))?;
    let listener = tokio::net::TcpListener::bind(&layout.nbd)
        .await
        .with_context(|| format!("listening for NBD on {}", layout.nbd))?;

    let env = format!(
        "VBS_MANAGERS={} VBS_TOKEN_FILE={}",
        layout.managers_arg(),
        token_path.display()
    );
    let url = format!("nbd://{}/{}", layout.nbd, name);
    children.up.store(true, Ordering::SeqCst);
    println!(
        "vbs is up: {} managers, {} storage nodes, data in {}",
        layout.managers.len(),
        layout.nodes.len(),
        dir.display()
    );
    println!(
        "  dashboard  http://{}/#token=TOKEN (TOKEN: the contents of {})",
        layout.managers[0],
        token_path.display()
    );
    println!(
        "  token      {} (every request to the cluster needs it)",
        token_path.display()
    );
    println!("  NBD        {url}");
    println!(
        "  exports    every volume as nbd://{}/NAME (nbdinfo --list nbd://{})",
        layout.nbd, layout.nbd
    );
    println!("  metrics    http://{}/metrics (managers), http://{}/metrics (storage nodes: ports {}..), with the header \"Authorization: Bearer TOKEN\"",
        layout.managers[0], layout.node_metrics[0], layout.node_metrics[0].rsplit(':').next().unwrap_or(""));
    println!("  logs       {}", logs.display());
    println!("try:");
    println!("  qemu-io -f raw {url} -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'");
    println!("  {env} vbs status");
    println!("  {env} vbs bench {name} --rw randwrite --iodepth 32 --runtime 10s");
    println!(
        "Ctrl-C stops the cluster; vbs up --dir {} resumes it.",
        dir.display()
    );

    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let served = client::nbd::serve(listener, exports, stop).await;
    eprintln!("vbs: stopping ...");
    served.context("serving NBD")
}

#[cfg(test)]
mod tests {
    use super::{default_volume, last_error, parse_volume, volume_to_serve};

    #[test]
    fn a_resume_without_a_volume_serves_the_first_starts() {
        let big = parse_volume("big:2G:2").expect("parses");
        let demo = default_volume();
        assert_eq!(volume_to_serve(None, None), demo);
        assert_eq!(volume_to_serve(Some(&big), None), big);
        assert_eq!(volume_to_serve(None, Some(&big)), big);
        assert_eq!(volume_to_serve(Some(&demo), Some(&big)), demo);
    }

    #[test]
    fn the_last_error_report_is_read_with_its_causes() {
        let log = "INFO starting\nError: listening on 127.0.0.1:7001\n\nCaused by:\n    \
                   Address already in use (os error 98)\n\nStack backtrace:\n   0: main\n";
        assert_eq!(
            last_error(log).as_deref(),
            Some("listening on 127.0.0.1:7001: Address already in use (os error 98)")
        );
        let log = "Error: a\n\nCaused by:\n    0: b\n    1: c\n";
        assert_eq!(last_error(log).as_deref(), Some("a: b: c"));
        assert_eq!(
            last_error("x\n \x1b[31mERROR\x1b[0m raft stopped\nINFO bye\n").as_deref(),
            Some("ERROR raft stopped")
        );
        // A log cut short by SIGKILL says nothing of why.
        assert_eq!(last_error("INFO resync finished\n"), None);
        assert_eq!(last_error(""), None);
    }
}
