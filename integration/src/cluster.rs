//! A cluster of real vbs processes on loopback, each with its own data directory and log.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use client::api::ClusterStatus;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries::binary;
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
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            managers: 3,
            manager_args: Vec::new(),
        }
    }
}

/// A free port on 127.0.0.1 (bound, then released for the process to take).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Processes under test. Dropping the cluster kills them all; if the test is panicking, their
/// logs are printed first.
pub struct Cluster {
    pub dir: TempDir,
    pub http: reqwest::Client,
    managers: BTreeMap<u64, Process>,
    manager_addrs: BTreeMap<u64, String>,
}

impl Cluster {
    /// Starts `options.managers` managers (ids 1..=n) on free ports.
    pub fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("vbs-test-").tempdir()?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let mut manager_addrs = BTreeMap::new();
        for id in 1..=options.managers {
            manager_addrs.insert(id, format!("127.0.0.1:{}", free_port()?));
        }
        let peers: Vec<String> = manager_addrs
            .iter()
            .map(|(id, a)| format!("{id}={a}"))
            .collect();
        let program = binary("vbs-manager")?;
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
            args.extend(options.manager_args.iter().cloned());
            let log = dir.path().join(format!("manager-{id}.log"));
            managers.insert(
                *id,
                Process::start(&format!("manager-{id}"), &program, args, log)?,
            );
        }
        Ok(Cluster {
            dir,
            http,
            managers,
            manager_addrs,
        })
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

    fn manager(&mut self, id: u64) -> anyhow::Result<&mut Process> {
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
        let url = format!("http://{}{path}", self.manager_addr(id));
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

    /// Prints the tail of every process log to stderr.
    pub fn print_logs(&self) {
        for process in self.managers.values() {
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
        for process in self.managers.values_mut() {
            process.kill();
        }
    }
}
