//! A secondary copy's side of replication, as decisions without IO: events in (a replicated
//! frame, the start of a primary's generation, an engine's answer that a record meets another
//! generation's, a resync pull's answer), actions out (refuse with a reason, apply, wait for a
//! gap and then ask for a resend, drop the tail after a VBA and start a generation there, probe
//! further back, give up and start again empty). `node::replica` and `node::resync` carry the
//! events in and the actions out; the engine is the copy's state, read into a [`View`] when an
//! event arrives.
//!
//! What the copy must keep true (DESIGN.md, "Invariants"): it applies VBAs strictly in order; it
//! acknowledges a record of generation `g` only while it holds `g`'s history up to it; it never
//! drops a record at or below its stable VBA (what every copy was known to hold).

use vbs_wire::api::Role;
use vbs_wire::types::{Generation, Vba};

use crate::engine::meta::{generation_at, GenerationStart};

/// What the copy is and holds when a frame arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The database's assignment of this copy, as its last heartbeat reply said: its role and the
    /// slice's generation. `None` before one named the unit.
    pub assigned: Option<(Role, Generation)>,
    /// The newest generation whose primary told this copy where it starts (its empty first
    /// frame), which the database's answer may not name yet: a copy takes nothing more from
    /// an older generation's primary, as a Raft follower that heard of a newer term.
    pub announced: Generation,
    /// The VBA the copy's next record must have.
    pub next_vba: Vba,
    /// A resync of the copy is running: it joined the write path and may get the primary's
    /// forwarded writes before the records the join sent.
    pub resyncing: bool,
}

/// Why a frame is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The records are not numbered `first, first + 1, ...`.
    NotConsecutive,
    /// A record carries another generation than its frame's.
    MixedGenerations,
    /// No heartbeat reply has named the unit here yet.
    NotAssigned,
    /// This copy is the slice's primary at `generation`, which the frame's does not pass.
    Primary { generation: Generation },
    /// The frame's generation is older than the slice's: its sender was deposed.
    Stale { current: Generation },
}

/// How long a frame that overtook an earlier one waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapWait {
    /// Pipelined frames overtaking each other: the node's reorder wait.
    Reorder,
    /// A copy that just joined the write path, whose join records may still be on their way.
    Join,
}

/// What the copy does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameStep {
    Refuse(Refusal),
    /// An empty frame: the primary of `generation` says its history starts after `start` (what
    /// it sends as committed). Decide
    /// with [`on_generation_start`] under the copy's apply lock.
    StartGeneration {
        generation: Generation,
        start: Vba,
    },
    /// Apply the records in order: the first is the next expected one, or the copy holds it
    /// already (a retransmission, acknowledged again without being written).
    Apply,
    /// Records `after + 1 ..= until` are missing: wait for them, then ask the primary to resend
    /// what is still missing ([`resend_range`]).
    WaitForGap {
        after: Vba,
        until: Vba,
        wait: GapWait,
    },
}

/// Drop every record after `after`, and start `generation` at `after + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncate {
    pub after: Vba,
    pub generation: Generation,
}

/// A frame of `generation` whose records have the VBAs and generations `records`, sent when
/// the primary had `committed` acknowledged.
pub fn on_frame(
    view: &View,
    generation: Generation,
    committed: Vba,
    records: impl IntoIterator<Item = (Vba, Generation)>,
) -> FrameStep {
    let mut first = None;
    let mut previous: Option<Vba> = None;
    for (vba, record_generation) in records {
        if previous.is_some_and(|p| p.next() != vba) {
            return FrameStep::Refuse(Refusal::NotConsecutive);
        }
        if record_generation != generation {
            return FrameStep::Refuse(Refusal::MixedGenerations);
        }
        first = first.or(Some(vba));
        previous = Some(vba);
    }
    let Some((role, assigned)) = view.assigned else {
        return FrameStep::Refuse(Refusal::NotAssigned);
    };
    if role == Role::Primary && generation <= assigned {
        return FrameStep::Refuse(Refusal::Primary {
            generation: assigned,
        });
    }
    // A newer generation is taken: the copy learns it from the primary before the database.
    let current = assigned.max(view.announced);
    if generation < current {
        return FrameStep::Refuse(Refusal::Stale { current });
    }
    let Some(first) = first else {
        return FrameStep::StartGeneration {
            generation,
            start: committed,
        };
    };
    if first > view.next_vba {
        return FrameStep::WaitForGap {
            after: Vba(view.next_vba.0 - 1),
            until: Vba(first.0 - 1),
            wait: if view.resyncing {
                GapWait::Join
            } else {
                GapWait::Reorder
            },
        };
    }
    FrameStep::Apply
}

/// The primary of `generation` says its history starts after `start`; the copy holds records up
/// to `last_vba`, the newest of generation `held`. A tail past `start` of an older generation is
/// not part of that history: it is dropped before any record of `generation` is taken, so that
/// none can be stacked onto it. Records of one generation at one VBA are the same (one primary
/// writes a generation), so a copy already at `generation` has nothing to drop.
pub fn on_generation_start(
    held: Generation,
    last_vba: Vba,
    generation: Generation,
    start: Vba,
) -> Option<Truncate> {
    (held < generation && last_vba > start).then_some(Truncate {
        after: start,
        generation,
    })
}

/// After a gap's wait: the VBAs to ask the primary for, `(after, until]`, if the copy still
/// misses some before `first`.
pub fn resend_range(next_vba: Vba, first: Vba) -> Option<(Vba, Vba)> {
    (next_vba < first).then(|| (Vba(next_vba.0 - 1), Vba(first.0 - 1)))
}

/// The engine refused a record of generation `got` at `vba` because the copy holds one of
/// `held` there. A newer primary's record meets an old primary's unacknowledged tail: the tail
/// goes, as a Raft follower's on a term conflict. An older one is refused (`None`).
pub fn on_conflict(vba: Vba, held: Generation, got: Generation) -> Option<Truncate> {
    (got > held).then(|| Truncate {
        after: Vba(vba.0 - 1),
        generation: got,
    })
}

/// Where a resync pulls next after the primary answered that the histories differ at `after`
/// and agree up to `agreed` at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Pull from `after`, checking the histories agree there.
    At { after: Vba },
    /// They differ below `stable`, which every copy was known to hold: the primary lost what
    /// this copy was told was everywhere, and served on from there. The copy cannot catch up by
    /// dropping a tail; it must start again empty (it is not current, so nothing counts on what
    /// it held).
    Diverged { stable: Vba },
}

/// The primary says the histories differ at `after` and agree up to `agreed` at most; this
/// copy's run of its generation at `after` starts at `run_start`, and it holds up to `stable`
/// what every copy was known to hold. Probe at `agreed`, or before this copy's run if they share
/// none of it; the first probe that agrees says where the copy's tail goes.
pub fn on_histories_differ(after: Vba, agreed: Vba, run_start: Vba, stable: Vba) -> Probe {
    let probe = if agreed >= run_start && agreed > Vba::ZERO {
        agreed.min(after)
    } else {
        Vba(run_start.0.saturating_sub(1))
    };
    if probe < stable {
        Probe::Diverged { stable }
    } else {
        Probe::At { after: probe }
    }
}

/// What the copy does with the first pull that agrees with the primary at `after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agreed {
    /// Take the pulled records: nothing the copy holds past `after` differs.
    Keep,
    /// What the copy holds past `after` is a tail the primary never had.
    Truncate(Truncate),
    /// The histories may part further on, where the copy's next generation starts: probe there.
    ProbeAt { after: Vba },
}

/// The first pull that agrees at `after` came back; the copy holds up to `last_vba`, with
/// generation history `history`, and the pulled records start with one of `replacing` (the
/// slice's generation when none came). What the copy holds past `after` gives way to the
/// primary's history, of the generation of the first record that follows.
pub fn on_agreeing_pull(
    after: Vba,
    last_vba: Vba,
    replacing: Generation,
    history: &[GenerationStart],
) -> Agreed {
    if after >= last_vba {
        return Agreed::Keep;
    }
    let held = generation_at(history, after.next()).unwrap_or(Generation(0));
    if replacing != held {
        return Agreed::Truncate(Truncate {
            after,
            generation: replacing,
        });
    }
    // Records of the generation this copy holds right past `after` are the same primary's, so
    // the same records; the histories may still part where this copy's next generation starts.
    match history
        .iter()
        .find(|s| s.first_vba > after.next() && s.generation != held)
    {
        Some(next) => Agreed::ProbeAt {
            after: Vba(next.first_vba.0 - 1),
        },
        None => Agreed::Keep,
    }
}

#[cfg(test)]
mod tests;
