//! A test cluster driven as its users drive it: `vbs` commands that must succeed, blocks written
//! and read through the CLI, a slice's copies as the managers list them, and qemu-io over NBD.
//! The tests share these instead of each writing its own.

use std::path::Path;
use std::process::Command;

use vbs_wire::api::{ClusterStatus, SliceMap};
use vbs_wire::types::NodeId;

use crate::cluster::Cluster;

impl Cluster {
    /// Runs `vbs ARGS` (with `input` on its standard input) and returns what it printed; panics
    /// with its error output when it fails.
    pub fn vbs_ok(&self, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
        let out = self.vbs_with_input(args, input).expect("vbs runs");
        assert!(
            out.status.success(),
            "vbs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `vbs write VOLUME --offset OFFSET` of `data`, which must succeed.
    pub fn write_with_cli(&self, volume: &str, offset: u64, data: &[u8]) {
        let file = self.dir.path().join(format!("write-{volume}-{offset}"));
        std::fs::write(&file, data).expect("the data's file");
        let file = path_arg(&file);
        self.vbs_ok(
            &[
                "write",
                volume,
                "--offset",
                &offset.to_string(),
                "--file",
                &file,
            ],
            None,
        );
    }

    /// `vbs read VOLUME --offset OFFSET --length LENGTH`: the bytes, or what vbs printed when it
    /// failed.
    pub fn read_with_cli(&self, volume: &str, offset: u64, length: u64) -> Result<Vec<u8>, String> {
        let out = self
            .vbs(&[
                "read",
                volume,
                "--offset",
                &offset.to_string(),
                "--length",
                &length.to_string(),
            ])
            .expect("vbs runs");
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits until storage node `name`'s log satisfies `done` (what is awaited is `what`), and
    /// returns the log.
    pub async fn wait_for_storage_log(
        &self,
        name: &str,
        what: &str,
        timeout: std::time::Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let path = self.dir.path().join(format!("{name}.log"));
        crate::wait_until(what, timeout, || async {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            Ok::<_, String>(done(&log).then_some(log))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The primary of slice `index` of `volume`, then its other copies, as the managers list
    /// them now.
    pub async fn copies_of(&self, volume: &str, index: usize) -> (NodeId, Vec<NodeId>) {
        let status = self.status().await.expect("the cluster's status");
        let slice = slice_of(&status, volume, index);
        let others = slice
            .copies
            .iter()
            .filter(|c| c.node != slice.primary)
            .map(|c| c.node.clone())
            .collect();
        (slice.primary, others)
    }
}

/// Slice `index` of `volume` in `status`; panics if there is none.
pub fn slice_of(status: &ClusterStatus, volume: &str, index: usize) -> SliceMap {
    let volume_map = status
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .unwrap_or_else(|| panic!("no volume {volume:?} in the status"));
    volume_map.slices[index].clone()
}

/// qemu-io on the NBD export `url`, running `commands` in turn: whether it exited 0, and
/// everything it printed, on standard output then error.
fn run_qemu_io(url: &str, commands: &[&str]) -> (bool, String) {
    let qemu_io = crate::tools::ensure("qemu-io", "qemu-utils").expect("qemu-io (qemu-utils)");
    let mut command = Command::new(qemu_io);
    command.args(["-f", "raw", url]);
    for c in commands {
        command.args(["-c", c]);
    }
    let out = command.output().expect("qemu-io runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What qemu-io printed running `commands` on `url`, for a caller that checks it itself (a test
/// of a failing read expects errors).
pub fn qemu_io(url: &str, commands: &[&str]) -> String {
    run_qemu_io(url, commands).1
}

/// qemu-io as [`qemu_io`], asserting that it exited 0, no command failed and every pattern
/// read back.
pub fn qemu_io_ok(url: &str, commands: &[&str]) -> String {
    let (success, text) = run_qemu_io(url, commands);
    assert!(
        success && !text.contains("failed") && !text.contains("error"),
        "qemu-io {commands:?}: {text}"
    );
    text
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}
