//! Finding the workspace binaries (`vbs-manager`, later `vbs-storage`, `vbs`).
//!
//! Tests run from `target/<profile>/deps/`; the binaries live in `target/<profile>/`. `cargo test
//! -p integration` does not build other packages' binaries, so the first test that needs one
//! runs `cargo build -p PACKAGE --bin NAME` (with `--release` under the release profile) when the
//! binary is missing or older than any source file of the workspace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::{bail, Context};

/// The workspace root: the parent of this package's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the workspace")
        .to_path_buf()
}

/// `target/<profile>`, from the path of the running test executable.
pub fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe.parent().context("test executable has no directory")?;
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent()
    } else {
        Some(deps)
    };
    Ok(dir
        .context("test executable has no profile directory")?
        .to_path_buf())
}

fn newest_source(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == ".git")
            {
                continue;
            }
            newest_source(&path, newest);
        } else if path
            .extension()
            // Assets compiled in with include_str! (the dashboard) count as sources too.
            .is_some_and(|e| {
                matches!(
                    e.to_str(),
                    Some("rs" | "toml" | "lock" | "html" | "css" | "js")
                )
            })
        {
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(modified);
            }
        }
    }
}

fn stale(binary: &Path, sources: SystemTime) -> bool {
    match binary.metadata().and_then(|m| m.modified()) {
        Ok(built) => built < sources,
        Err(_) => true,
    }
}

/// The package that owns each binary, so that a test builds only what it runs (and does not
/// depend on other packages compiling at that moment).
fn package_of(binary: &str) -> anyhow::Result<&'static str> {
    Ok(match binary {
        "vbs-manager" => "consistency",
        "vbs-storage" => "storagenode",
        "vbs" => "client",
        other => bail!("no workspace binary named {other}"),
    })
}

/// Builds `name` into `profile_dir` if it is missing or stale; `features` (with `target_dir`)
/// builds a variant of the binary in a target directory of its own, so that the default build
/// never has them.
fn build_once(
    profile_dir: &Path,
    name: &str,
    features: Option<(&str, &Path)>,
) -> anyhow::Result<()> {
    static BUILT: Mutex<BTreeMap<String, Result<(), String>>> = Mutex::new(BTreeMap::new());
    let package = package_of(name)?;
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let key = format!("{}/{name}", profile_dir.display());
    let result = built.entry(key).or_insert_with(|| {
        let root = workspace_root();
        let mut sources = SystemTime::UNIX_EPOCH;
        for dir in ["consistency", "storagenode", "client"] {
            newest_source(&root.join(dir), &mut sources);
        }
        newest_source(&root.join("Cargo.toml"), &mut sources);
        if !stale(&profile_dir.join(name), sources) {
            return Ok(());
        }
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo
            .current_dir(&root)
            .args(["build", "-p", package, "--bin", name]);
        if let Some((features, target_dir)) = features {
            cargo
                .args(["--features", features, "--target-dir"])
                .arg(target_dir);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        eprintln!("building {name}: {cargo:?}");
        match cargo.status() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(format!("{cargo:?} failed: {status}")),
            Err(e) => Err(format!("running {cargo:?}: {e}")),
        }
    });
    result.clone().map_err(anyhow::Error::msg)
}

/// The path of workspace binary `name`, built if needed.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = profile_dir()?;
    build_once(&dir, name, None)?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} does not exist after building the workspace binaries",
            path.display()
        );
    }
    Ok(path)
}

/// The path of workspace binary `name` built with cargo features `features` (comma separated),
/// built if needed in `target/features-FEATURES/<profile>/`, apart from the default build.
pub fn binary_with_features(name: &str, features: &str) -> anyhow::Result<PathBuf> {
    let profile = profile_dir()?;
    let profile_name = profile
        .file_name()
        .context("the profile directory has a name")?
        .to_owned();
    let target_dir = workspace_root()
        .join("target")
        .join(format!("features-{}", features.replace(',', "-")));
    let dir = target_dir.join(profile_name);
    build_once(&dir, name, Some((features, &target_dir)))?;
    let path = dir.join(name);
    if !path.exists() {
        bail!("{} does not exist after building it", path.display());
    }
    Ok(path)
}
