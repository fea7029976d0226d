//! Deliberate bugs, compiled only with the `bugs` cargo feature (never in the default build) and
//! switched on by the environment variable `VBS_BUG=NAME[,NAME]`, so that the fault-injection
//! suite can show it catches them (`docs/reliability.md`).

/// A deliberate bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The primary acknowledges a write once its own append is durable, without waiting for the
    /// secondaries (their answers are collected in the background and their failures ignored).
    AckBeforeSecondary,
    /// The primary serves reads and writes without checking that its lease holds.
    IgnoreLease,
    /// A resyncing copy takes the records it pulls as applied without writing them, so it is
    /// reported caught up while missing them.
    ResyncSkipsRecords,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::AckBeforeSecondary,
        Bug::IgnoreLease,
        Bug::ResyncSkipsRecords,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeSecondary => "ack-before-secondary",
            Bug::IgnoreLease => "ignore-lease",
            Bug::ResyncSkipsRecords => "resync-skips-records",
        }
    }
}

/// Whether `bug` is switched on by `VBS_BUG` (an unknown name there stops the process).
pub fn enabled(bug: Bug) -> bool {
    vbs_wire::bugs::enabled(&Bug::ALL.map(Bug::name), bug.name())
}
