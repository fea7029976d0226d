//! The switch for deliberate bugs (feature `bugs` only, never in the default build): a crate with
//! bugs for the fault-injection suite to catch (`storagenode/src/bugs.rs`,
//! `consistency/src/bugs.rs`) asks here whether one is switched on by the environment variable
//! `VBS_BUG=NAME[,NAME]` (`docs/reliability.md`).

use std::sync::OnceLock;

/// Whether the bug `name` is switched on. `known` is every bug of the calling process: a name in
/// `VBS_BUG` outside it stops the process, since a demonstration that silently ran without its
/// bug would prove nothing. The variable is read once per process.
pub fn enabled(known: &[&str], name: &str) -> bool {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    ON.get_or_init(|| {
        let Ok(names) = std::env::var("VBS_BUG") else {
            return Vec::new();
        };
        let on: Vec<String> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                assert!(
                    known.contains(&n),
                    "VBS_BUG names an unknown bug {n:?}; known here: {}",
                    known.join(", ")
                );
                n.to_string()
            })
            .collect();
        tracing::warn!(bugs = ?on, "deliberate bugs switched on");
        on
    })
    .iter()
    .any(|n| n == name)
}
