//! A cluster of real vbs processes on loopback, each with its own data directory and log.
//!
//! One file, past 600 lines: starting, stopping and waiting on each kind of process share the
//! same directories, ports, logs and credentials, and tests reach all of it through `Cluster`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;
use vbs_wire::api::ClusterStatus;

use crate::binaries::binary;
use crate::credentials::Credentials;
use crate::process::Process;
use crate::wait::wait_until;

/// Timeout of one HTTP request from the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub managers: u64,
    /// Extra `vbs-manager` arguments, e.g. `["--lease", "1s"]`.
    pub manager_args: Vec<String>,
    /// Storage nodes, named `n1`, `n2`, ...
    pub storage_nodes: u64,
    /// Extra `vbs-storage` arguments.
    pub storage_args: Vec<String>,
    /// Where the processes listen (and, since they connect from their listen address, where
    /// their connections come from).
    pub addresses: Addresses,
    /// Extra environment variables of every manager.
    pub manager_env: Vec<(String, String)>,
    /// The `vbs-manager` binary to run instead of the workspace's default build.
    pub manager_binary: Option<PathBuf>,
    /// Extra environment variables of every storage node.
    pub storage_env: Vec<(String, String)>,
    /// The `vbs-storage` binary to run instead of the workspace's default build (e.g. one built
    /// with the `bugs` feature).
    pub storage_binary: Option<PathBuf>,
    /// Every process gets a token file: the cluster requires authentication.
    pub token: bool,
    /// Every process gets a certificate from a CA made for the test: the cluster speaks TLS.
    pub tls: bool,
}

/// The loopback addresses a cluster's processes get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// Every process on 127.0.0.1 (on its own port).
    Shared,
    /// Each process on its own address, so that packet filters can cut them apart: manager `i`
    /// on `127.0.0.{managers + i - 1}`, storage node `nK` on `127.0.0.{storage + K - 1}`.
    Distinct { managers: u8, storage: u8 },
}

impl Addresses {
    fn manager(self, id: u64) -> IpAddr {
        match self {
            Addresses::Shared => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Addresses::Distinct { managers, .. } => loopback(managers, id),
        }
    }

    fn storage(self, name: &str) -> IpAddr {
        let number = name.strip_prefix('n').and_then(|n| n.parse::<u64>().ok());
        match (self, number) {
            (Addresses::Distinct { storage, .. }, Some(number)) => loopback(storage, number),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// `127.0.0.{base + index - 1}`.
fn loopback(base: u8, index: u64) -> IpAddr {
    let last = u64::from(base) + index - 1;
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        u8::try_from(last).expect("loopback address ranges are small"),
    ))
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            managers: 3,
            manager_args: Vec::new(),
            storage_nodes: 0,
            // Small segments: tests write megabytes, not gigabytes.
            storage_args: vec!["--segment-size".into(), "1M".into()],
            addresses: Addresses::Shared,
            manager_env: Vec::new(),
            manager_binary: None,
            storage_env: Vec::new(),
            storage_binary: None,
            token: false,
            tls: false,
        }
    }
}

/// The replicated part of a status's volume maps: without what only the leader remembers (resync
/// progress and the VBAs heard in heartbeats), which the other managers do not show and which
/// moves without any change to the state.
pub fn replicated_volumes(status: &ClusterStatus) -> Vec<vbs_wire::api::VolumeMap> {
    let mut volumes = status.volumes.clone();
    for copy in volumes
        .iter_mut()
        .flat_map(|v| v.slices.iter_mut())
        .flat_map(|s| s.copies.iter_mut())
    {
        copy.resync = None;
        copy.reported_vba = None;
    }
    volumes
}

/// Copies of every slice of every volume in `status` that are not `current`.
pub fn copies_not_current(status: &ClusterStatus) -> usize {
    status
        .volumes
        .iter()
        .flat_map(|v| &v.slices)
        .flat_map(|s| &s.copies)
        .filter(|c| c.status != vbs_wire::api::CopyStatus::Current)
        .count()
}

/// Slices whose primary is `node`.
pub fn primaries_on(status: &ClusterStatus, node: &vbs_wire::types::NodeId) -> usize {
    status
        .volumes
        .iter()
        .flat_map(|v| &v.slices)
        .filter(|s| &s.primary == node)
        .count()
}

/// The names of the volumes with a copy on `node`, in the status's order.
pub fn volumes_with_a_copy_on(
    status: &ClusterStatus,
    node: &vbs_wire::types::NodeId,
) -> Vec<String> {
    status
        .volumes
        .iter()
        .filter(|v| {
            v.slices
                .iter()
                .flat_map(|s| &s.copies)
                .any(|c| &c.node == node)
        })
        .map(|v| v.name.clone())
        .collect()
}

/// A free port on 127.0.0.1 (bound, then released for the process to take).
pub fn free_port() -> anyhow::Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// Where [`free_port_on`] looks: below Linux's default range of ephemeral ports (32768-60999).
/// A port the kernel picked for us is released before the process binds it, and an outgoing
/// connection can take an ephemeral one in that moment (a storage node then failed to start
/// with "Address already in use"); nothing is handed ports from this range unasked.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A free port on `ip` (bound, then released for the process to take), never one this test
/// process handed out before: clusters started at once by concurrent tests do not collide.
pub fn free_port_on(ip: IpAddr) -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<(IpAddr, u16)>> =
        std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1_000 {
        let port = rand::random_range(TEST_PORTS);
        if handed_out.contains(&(ip, port)) || TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        handed_out.insert((ip, port));
        return Ok(port);
    }
    bail!("no free port on {ip} in {TEST_PORTS:?} after 1,000 tries")
}

/// Processes under test. Dropping the cluster kills them all; if the test is panicking, their
/// logs are printed first.
pub struct Cluster {
    pub dir: TempDir,
    pub http: reqwest::Client,
    managers: BTreeMap<u64, Process>,
    manager_addrs: BTreeMap<u64, String>,
    storage: BTreeMap<String, Process>,
    storage_addrs: BTreeMap<String, String>,
    addresses: Addresses,
    storage_env: Vec<(String, String)>,
    storage_binary: Option<PathBuf>,
    credentials: Credentials,
}

impl Cluster {
    /// Starts `options.managers` managers (ids 1..=n) on free ports.
    pub fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("vbs-test-").tempdir()?;
        let credentials = Credentials::create(dir.path(), options.token, options.tls)?;
        let http = credentials
            .security()?
            .http_client(
                reqwest::Client::builder()
                    .no_proxy()
                    .timeout(REQUEST_TIMEOUT),
            )
            .build()?;
        let mut manager_addrs = BTreeMap::new();
        for id in 1..=options.managers {
            let ip = options.addresses.manager(id);
            manager_addrs.insert(id, format!("{ip}:{}", free_port_on(ip)?));
        }
        let peers: Vec<String> = manager_addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        let program = match &options.manager_binary {
            Some(program) => program.clone(),
            None => binary("vbs-manager")?,
        };
        let mut managers = BTreeMap::new();
        for (id, addr) in &manager_addrs {
            let data_dir = dir.path().join(format!("manager-{id}"));
            let mut args = vec![
                "--id".to_string(),
                id.to_string(),
                "--listen".into(),
                addr.clone(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--peers".into(),
                peers.join(","),
            ];
            let name = format!("manager-{id}");
            args.extend(credentials.server_args(&name, options.addresses.manager(*id))?);
            args.extend(options.manager_args.iter().cloned());
            let log = dir.path().join(format!("manager-{id}.log"));
            let name = format!("manager-{id}");
            let env = options.manager_env.clone();
            managers.insert(
                *id,
                Process::start_with_env(&name, &program, args, env, log)?,
            );
        }
        let mut cluster = Cluster {
            dir,
            http,
            managers,
            manager_addrs,
            storage: BTreeMap::new(),
            storage_addrs: BTreeMap::new(),
            addresses: options.addresses,
            storage_env: options.storage_env.clone(),
            storage_binary: options.storage_binary.clone(),
            credentials,
        };
        for n in 1..=options.storage_nodes {
            cluster.add_storage_node(&format!("n{n}"), &options.storage_args)?;
        }
        Ok(cluster)
    }

    /// Starts a storage node `name` on a free port with its own data directory.
    pub fn add_storage_node(&mut self, name: &str, extra_args: &[String]) -> anyhow::Result<()> {
        let ip = self.addresses.storage(name);
        let addr = format!("{ip}:{}", free_port_on(ip)?);
        let mut args = vec![
            "--id".to_string(),
            name.to_string(),
            "--listen".into(),
            addr.clone(),
            "--data-dir".into(),
            self.storage_data_dir(name).display().to_string(),
            "--managers".into(),
            self.managers_arg(),
        ];
        args.extend(self.credentials.server_args(name, ip)?);
        args.extend(extra_args.iter().cloned());
        let log = self.dir.path().join(format!("{name}.log"));
        let program = match &self.storage_binary {
            Some(program) => program.clone(),
            None => binary("vbs-storage")?,
        };
        let process = Process::start_with_env(name, &program, args, self.storage_env.clone(), log)?;
        self.storage.insert(name.to_string(), process);
        self.storage_addrs.insert(name.to_string(), addr);
        Ok(())
    }

    /// Whether storage node `name` is still running (it did not exit by itself).
    pub fn storage_node_running(&self, name: &str) -> bool {
        self.storage.get(name).is_some_and(Process::is_running)
    }

    pub fn storage_names(&self) -> Vec<String> {
        self.storage_addrs.keys().cloned().collect()
    }

    pub fn storage_addr(&self, name: &str) -> &str {
        &self.storage_addrs[name]
    }

    /// The address storage node `name` listens and connects from.
    pub fn storage_ip(&self, name: &str) -> IpAddr {
        self.addresses.storage(name)
    }

    /// The address manager `id` listens and connects from.
    pub fn manager_ip(&self, id: u64) -> IpAddr {
        self.addresses.manager(id)
    }

    pub fn storage_data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("storage-{name}"))
    }

    pub fn storage_node(&mut self, name: &str) -> anyhow::Result<&mut Process> {
        self.storage
            .get_mut(name)
            .with_context(|| format!("no storage node {name}"))
    }

    /// Waits until every storage node is registered and `up` in the managers' view.
    pub async fn wait_for_storage_up(&self, timeout: Duration) -> anyhow::Result<ClusterStatus> {
        let names = self.storage_names();
        wait_until("every storage node up", timeout, || async {
            let status: ClusterStatus = self.status().await?;
            let up = names.iter().all(|name| {
                status
                    .nodes
                    .iter()
                    .any(|n| n.id.0 == *name && n.state == vbs_wire::api::NodeState::Up)
            });
            Ok::<_, anyhow::Error>(up.then_some(status))
        })
        .await
    }

    /// `GET /v1/status` from any manager that answers (linearizable).
    pub async fn status(&self) -> anyhow::Result<ClusterStatus> {
        let mut last = None;
        for id in self.manager_ids() {
            match self.call(id, Method::GET, "/v1/status", None).await {
                Ok(status) => return Ok(status),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no managers")))
    }

    /// `vbs-storage check --json` of storage node `name`'s data directory, which must be
    /// consistent (the node must not be running).
    pub fn storage_check(&self, name: &str) -> anyhow::Result<Value> {
        let out = std::process::Command::new(binary("vbs-storage")?)
            .args(["check", "--json", "--data-dir"])
            .arg(self.storage_data_dir(name))
            .output()
            .context("running vbs-storage check")?;
        if !out.status.success() {
            bail!("check of {name}: {}", String::from_utf8_lossy(&out.stdout));
        }
        serde_json::from_slice(&out.stdout).context("check prints JSON")
    }

    /// The last VBA of every unit in storage node `name`'s data directory, read offline.
    pub fn unit_last_vbas(&self, name: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let report = self.storage_check(name)?;
        let units = report["units"].as_array().context("check lists units")?;
        units
            .iter()
            .map(|u| {
                let unit = u["unit"].as_str().context("unit name")?.to_string();
                let last = u["last_vba"].as_u64().context("last VBA")?;
                Ok((unit, last))
            })
            .collect()
    }

    /// (last VBA, content digest) of `unit` in storage node `name`'s data directory, read offline:
    /// two copies with equal pairs hold the same log end and the same blocks.
    pub fn unit_check(&self, name: &str, unit: &str) -> anyhow::Result<(u64, String)> {
        let report = self.storage_check(name)?;
        let units = report["units"].as_array().context("check lists units")?;
        let found = units
            .iter()
            .find(|u| u["unit"] == unit)
            .with_context(|| format!("{name} holds no unit {unit}"))?;
        let last = found["last_vba"].as_u64().context("last VBA")?;
        let digest = found["digest"].as_str().context("digest")?.to_string();
        Ok((last, digest))
    }

    /// Runs the `vbs` CLI against this cluster's managers and returns its output.
    pub fn vbs(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        self.vbs_with_input(args, None)
    }

    /// `vbs volume create NAME --size SIZE --replicas REPLICAS --slice-size SLICE`; an error with
    /// what vbs printed if it failed.
    pub fn create_volume(
        &self,
        name: &str,
        size: &str,
        replicas: &str,
        slice: &str,
    ) -> anyhow::Result<()> {
        let out = self.vbs(&[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--replicas",
            replicas,
            "--slice-size",
            slice,
        ])?;
        if !out.status.success() {
            anyhow::bail!(
                "vbs volume create {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Creates a volume of one `bytes` slice with 2 copies for each of `names`, through the
    /// leader's API (many volumes quickly, where `vbs volume create` would start a process each).
    pub async fn create_one_slice_volumes(
        &self,
        names: impl IntoIterator<Item = String>,
        bytes: u64,
    ) -> anyhow::Result<()> {
        let leader = self
            .wait_for_leader(&self.manager_ids(), Duration::from_secs(30))
            .await?;
        for name in names {
            let body = serde_json::json!({
                "name": name, "size_bytes": bytes, "slice_bytes": bytes, "replicas": 2
            });
            let _: Value = self
                .call(leader, Method::POST, "/v1/volumes", Some(&body))
                .await?;
        }
        Ok(())
    }

    /// Runs the `vbs` CLI with `input` on its stdin.
    /// `vbs ARGS` with this cluster's managers and credentials, to be spawned by the caller
    /// (for a command that runs beside the test, such as a bench or `vbs events --follow`).
    pub fn vbs_command(&self, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let mut command = std::process::Command::new(binary("vbs")?);
        command
            .args(self.credentials.client_args())
            .arg("--managers")
            .arg(self.managers_arg())
            .args(args);
        Ok(command)
    }

    pub fn vbs_with_input(
        &self,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = self
            .vbs_command(args)?
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting vbs")?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().context("vbs stdin")?;
            stdin.write_all(input).context("writing to vbs")?;
        }
        child.wait_with_output().context("waiting for vbs")
    }

    /// The token and TLS files the cluster's processes were given.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn manager_ids(&self) -> Vec<u64> {
        self.manager_addrs.keys().copied().collect()
    }

    pub fn manager_addr(&self, id: u64) -> &str {
        &self.manager_addrs[&id]
    }

    /// Every manager address, comma separated, as `--managers` takes them.
    pub fn managers_arg(&self) -> String {
        self.manager_addrs
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn manager_data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("manager-{id}"))
    }

    /// Manager `id`'s process (to signal it, say).
    pub fn manager(&mut self, id: u64) -> anyhow::Result<&mut Process> {
        self.managers
            .get_mut(&id)
            .with_context(|| format!("no manager {id}"))
    }

    /// SIGKILL: a crash, not a shutdown.
    pub fn kill_manager(&mut self, id: u64) -> anyhow::Result<()> {
        self.manager(id)?.kill();
        Ok(())
    }

    /// Starts a killed manager again on its data directory.
    pub fn restart_manager(&mut self, id: u64) -> anyhow::Result<()> {
        self.manager(id)?.restart()
    }

    /// Whether storage node `name` is still running (it did not exit by itself).
    pub fn storage_running(&self, name: &str) -> bool {
        self.storage.get(name).is_some_and(Process::is_running)
    }

    /// Whether manager `id` is still running (it did not exit by itself).
    pub fn manager_running(&self, id: u64) -> bool {
        self.managers.get(&id).is_some_and(Process::is_running)
    }

    /// Sends a request to manager `id` and returns the status and the JSON body (`Null` when
    /// the body is not JSON).
    pub async fn request(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!(
            "{}://{}{path}",
            self.credentials.scheme(),
            self.manager_addr(id)
        );
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Like [`Cluster::request`], but any answer other than 2xx is an error, and the body is
    /// decoded as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let (status, value) = self.request(id, method.clone(), path, body).await?;
        if !status.is_success() {
            bail!("{method} {path} on manager {id}: {status} {value}");
        }
        serde_json::from_value(value).with_context(|| format!("decoding {method} {path}"))
    }

    /// Manager `id`'s own view (`?local=true`): answers even without a leader.
    pub async fn local_status(&self, id: u64) -> anyhow::Result<ClusterStatus> {
        self.call(id, Method::GET, "/v1/status?local=true", None)
            .await
    }

    /// Waits until every manager in `ids` is up and names the same leader in the same term, and
    /// that leader is one of `ids`; returns the leader.
    pub async fn wait_for_leader(&self, ids: &[u64], timeout: Duration) -> anyhow::Result<u64> {
        wait_until(
            "a leader every listed manager agrees on",
            timeout,
            || async {
                let mut seen = Vec::new();
                for id in ids {
                    let status = self.local_status(*id).await?;
                    seen.push((status.leader.map(|l| l.0), status.term));
                }
                let first = seen[0];
                let agreed = seen.iter().all(|s| *s == first);
                Ok::<_, anyhow::Error>(match first.0 {
                    Some(leader) if agreed && ids.contains(&leader) => Some(leader),
                    _ => None,
                })
            },
        )
        .await
    }

    /// Waits until manager `id` has applied at least `index`.
    pub async fn wait_for_applied(
        &self,
        id: u64,
        index: u64,
        timeout: Duration,
    ) -> anyhow::Result<ClusterStatus> {
        wait_until(
            &format!("manager {id} to apply index {index}"),
            timeout,
            || async {
                let status = self.local_status(id).await?;
                Ok::<_, anyhow::Error>((status.applied_index >= index).then_some(status))
            },
        )
        .await
    }

    /// The last `lines` lines of manager `id`'s log.
    pub fn manager_log(&self, id: u64, lines: usize) -> String {
        self.managers
            .get(&id)
            .map(|p| p.log_tail(lines))
            .unwrap_or_default()
    }

    /// Keeps the cluster's directory (data and logs) when the cluster is dropped; returns it.
    pub fn keep_dir(&mut self) -> PathBuf {
        self.dir.disable_cleanup(true);
        self.dir.path().to_path_buf()
    }

    /// Prints the tail of every process log to stderr.
    pub fn print_logs(&self) {
        for process in self.managers.values().chain(self.storage.values()) {
            eprintln!(
                "----- {} ({}) -----",
                process.name,
                process.log_path().display()
            );
            eprintln!("{}", process.log_tail(200));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for process in self.managers.values_mut().chain(self.storage.values_mut()) {
            process.kill();
        }
    }
}
