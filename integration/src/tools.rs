//! Programs from Debian packages that tests and benchmarks drive (`qemu-img`, `qemu-io`,
//! `mkfs.ext4`, `e2fsck`, `iptables`, `chromium`, `nbdkit`): found on the `PATH` or in the
//! system directories, and installed with `apt-get` when missing, so that a fresh machine runs
//! the suite as it is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// Where a program is looked for besides the `PATH` (root's `sbin` may be off a user's `PATH`).
const SYSTEM_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// `program`'s path, installing Debian's `package` first when it is missing. Installs are one
/// at a time within a process; apt's own lock (waited for) orders them across processes.
pub fn ensure(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = find(program) {
        return Ok(path);
    }
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(path) = find(program) {
        return Ok(path);
    }
    eprintln!("{program} is missing: installing Debian's {package} with apt-get");
    install_locked(package)?;
    find(program).with_context(|| format!("apt-get installed {package}, but no {program} is there"))
}

/// Installs Debian's `package` (a library or module, which no program on the `PATH` stands
/// for), one install at a time within a process.
pub fn install(package: &str) -> anyhow::Result<()> {
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    eprintln!("installing Debian's {package} with apt-get");
    install_locked(package)
}

static INSTALLING: Mutex<()> = Mutex::new(());

fn install_locked(package: &str) -> anyhow::Result<()> {
    if apt(&["install", "-y", "-q", package]).is_err() {
        // A fresh machine may have no package lists yet.
        apt(&["update", "-q"])?;
        apt(&["install", "-y", "-q", package])?;
    }
    Ok(())
}

/// `program` on the `PATH` or in [`SYSTEM_DIRS`]; a path with a `/` is taken as it is.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn apt(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("apt-get")
        // Wait for another apt run (a parallel test binary) instead of failing on its lock.
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
