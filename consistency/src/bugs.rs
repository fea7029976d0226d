//! Deliberate bugs, compiled only with the `bugs` cargo feature (never in the default build) and
//! switched on by the environment variable `VBS_BUG=NAME[,NAME]`, so that the fault-injection
//! suite can show it catches them (`docs/reliability.md`).

use std::sync::OnceLock;

/// A deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A newly elected leader takes a storage node it has not heard from yet as having no lease,
    /// instead of waiting a whole lease from its election: it fails primaries over while the
    /// leases its predecessor granted still hold.
    NewLeaderForgetsLeases,
}

impl Bug {
    pub const ALL: [Bug; 1] = [Bug::NewLeaderForgetsLeases];

    pub fn name(self) -> &'static str {
        match self {
            Bug::NewLeaderForgetsLeases => "new-leader-forgets-leases",
        }
    }
}

/// Whether `bug` is switched on by `VBS_BUG`. An unknown name stops the process: a demonstration
/// that silently ran without its bug would prove nothing.
pub fn enabled(bug: Bug) -> bool {
    static ON: OnceLock<Vec<Bug>> = OnceLock::new();
    ON.get_or_init(|| {
        let Ok(names) = std::env::var("VBS_BUG") else {
            return Vec::new();
        };
        let on: Vec<Bug> = names
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|name| {
                Bug::ALL
                    .into_iter()
                    .find(|b| b.name() == name)
                    .unwrap_or_else(|| panic!("VBS_BUG names an unknown bug {name:?}"))
            })
            .collect();
        tracing::warn!(bugs = ?on, "deliberate bugs switched on");
        on
    })
    .contains(&bug)
}
