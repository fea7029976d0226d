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
    /// A leader that was stopped for a while (a VM pause, SIGSTOP) judges the storage nodes by
    /// the heartbeats it read before the pause, so the nodes that kept beating look silent for
    /// the whole gap.
    PausedLeaderForgetsPause,
    /// The state machine records the applied log id but not the slices a command changed: a
    /// manager restarted from its own disk holds an old volume map and never applies the
    /// commands again.
    RestartLosesSlices,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::NewLeaderForgetsLeases,
        Bug::PausedLeaderForgetsPause,
        Bug::RestartLosesSlices,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::NewLeaderForgetsLeases => "new-leader-forgets-leases",
            Bug::PausedLeaderForgetsPause => "paused-leader-forgets-pause",
            Bug::RestartLosesSlices => "restart-loses-slices",
        }
    }
}

/// Whether `bug` is switched on by `VBS_BUG` (an unknown name there stops the process).
pub fn enabled(bug: Bug) -> bool {
    vbs_wire::bugs::enabled(&Bug::ALL.map(Bug::name), bug.name())
}
