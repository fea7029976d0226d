//! One child process of a test, with its output in a log file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;

/// A running (or stopped) child process. Dropping it kills it with SIGKILL.
pub struct Process {
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    /// Extra environment variables, e.g. `VBS_BUG` for a storage node built with `bugs`.
    env: Vec<(String, String)>,
    log_path: PathBuf,
    /// Behind a lock so that [`Process::is_running`] can poll through a shared reference.
    child: Mutex<Option<Child>>,
}

impl Process {
    /// Starts `program args...`, appending stdout and stderr to `log_path`.
    pub fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        log_path: PathBuf,
    ) -> anyhow::Result<Process> {
        Process::start_with_env(name, program, args, Vec::new(), log_path)
    }

    /// Like [`Process::start`], with extra environment variables (kept for restarts).
    pub fn start_with_env(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_path: PathBuf,
    ) -> anyhow::Result<Process> {
        let mut process = Process {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            env,
            log_path,
            child: Mutex::new(None),
        };
        process.restart()?;
        Ok(process)
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the Option intact; keep using it.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the process again with the same arguments (after [`Process::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let level = std::env::var("VBS_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into());
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", level)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        *self.child() = Some(child);
        Ok(())
    }

    /// SIGTERM, and waits up to `patience` for the process to exit (a clean stop: a storage node
    /// checkpoints its devices), then SIGKILL; reaps it. Does nothing when not running.
    pub fn stop(&mut self, patience: std::time::Duration) {
        if self.signal(libc::SIGTERM).is_ok() {
            let deadline = std::time::Instant::now() + patience;
            while self.is_running() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// SIGKILL, then reap. Does nothing when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child().take() {
            // Errors mean it already exited; either way it is reaped below.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// Whether the process is still running (it has not exited by itself).
    pub fn is_running(&self) -> bool {
        self.child()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the process.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        let pid = self.pid().context("process is not running")?;
        let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child.
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill(2)");
        }
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
