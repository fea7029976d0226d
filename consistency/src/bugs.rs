//! Deliberate bugs, compiled only with the `bugs` cargo feature (never in the default build) and
//! switched on by the environment variable `VBS_BUG=NAME[,NAME]`, so that the fault-injection
//! suite can show it catches them (`docs/reliability.md`).

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

/// Whether `bug` is switched on by `VBS_BUG` (an unknown name there stops the process).
pub fn enabled(bug: Bug) -> bool {
    client::bugs::enabled(&Bug::ALL.map(Bug::name), bug.name())
}
