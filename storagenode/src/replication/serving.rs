//! Whether a copy may serve, as decisions without IO: each heartbeat reply says what the database
//! holds of the copy (its role and status, every copy's recorded VBA, an accepted loss), and the
//! node knows what its log holds and whether it just restarted. Out come the copy's marks
//! (`lost`, `undecided`; a copy serves only with neither) and the events behind a change, for the
//! node's log. `node::membership` reads the copy into a [`Local`], calls [`on_assignment`], and
//! writes the marks back through `node::unit`.
//!
//! What must hold (DESIGN.md, "Invariants"): a copy is current only while it holds every
//! acknowledged VBA. A copy that may have lost records the database counts on does not serve
//! until the database no longer holds it current (it resyncs), or an operator accepts the loss
//! of exactly what it lacks.

use vbs_wire::api::{AssignedUnit, CopyInfo, CopyStatus, Role};
use vbs_wire::types::{NodeId, Vba};

use crate::engine::meta::Marks;

/// What the node holds of its copy when a heartbeat reply arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Local {
    pub marks: Marks,
    /// Recovery cut a torn tail off the log, and no reply has been applied since.
    pub torn: bool,
    /// The last VBA of the copy's log.
    pub held: Vba,
    /// The copy was on the node's devices when it started, and this is the first reply since.
    pub restarted: bool,
}

/// Why a copy's marks changed, or did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The copy had to be created empty, and the slice was written: its records here are lost.
    EmptiedOverWrites,
    /// The copy was created empty, and whether the slice was written is not known yet: it waits
    /// to hear how far the slice's other current copies are.
    EmptiedUnknown,
    /// A primary whose log lost a torn tail, with another current copy to fail over to, steps
    /// down before serving anything.
    TornTailStepsDown,
    /// An operator accepted this copy's loss at exactly what it holds: it serves again.
    LossAccepted,
    /// A restarted primary's log ends below the VBA the database recorded for its copy, and no
    /// other copy is known to hold the rest: it lost records, some perhaps acknowledged.
    BelowRecorded { held: Vba, recorded: Vba },
}

/// The copy's marks after a heartbeat reply, and why they are what they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub marks: Marks,
    pub events: Vec<Event>,
}

/// What a node that had to create a unit empty can tell of its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emptied {
    /// The database holds the copy current and the slice was written: the copy lost records.
    Lost,
    /// Not current, or current and never written: nothing was lost.
    Unwritten,
    /// Current, no copy known to be written, but another current copy has not reported to the
    /// answering leader yet (one just elected remembers no heartbeat, and the copies' committed
    /// VBAs date from their last status change).
    Unknown,
}

/// The marks of node `me`'s copy of `unit` after this reply.
pub fn on_assignment(unit: &AssignedUnit, me: &NodeId, local: Local) -> Decision {
    let mut marks = local.marks;
    let mut events = Vec::new();
    // A loss found before the node heard the slice's generation is taken as found in this one:
    // an acceptance already made at it came before.
    if marks.lost && marks.lost_in.is_none() {
        marks.lost_in = Some(unit.generation);
    }
    if marks.undecided {
        match emptied_copy(unit, me) {
            Emptied::Lost => {
                events.push(Event::EmptiedOverWrites);
                marks.lose(Some(unit.generation));
                marks.undecided = false;
            }
            Emptied::Unwritten => marks.undecided = false,
            Emptied::Unknown => events.push(Event::EmptiedUnknown),
        }
    }
    let another_current = unit
        .copies
        .iter()
        .any(|c| &c.node != me && c.status == CopyStatus::Current);
    // A primary whose log lost a torn tail may have lost records its current copies hold
    // (acknowledged ones too, if the disk did not keep what it flushed): numbering writes on from
    // its shorter log would give those VBAs to other writes, and its reads would miss them.
    if local.torn && unit.role == Role::Primary && another_current {
        events.push(Event::TornTailStepsDown);
        marks.lose(Some(unit.generation));
    }
    let recorded = unit
        .copies
        .iter()
        .find(|c| &c.node == me)
        .map_or(Vba::ZERO, |c| c.last_vba);
    // An operator accepted the loss of what this copy no longer holds, as it is now: the
    // database's record of it is still the accepted VBA, and no other copy is current (as when
    // the loss was accepted; a copy that lost a tail another current copy holds steps down,
    // above, accepted or not). The acceptance (which started this generation) came after the
    // loss was found: a copy that lost records again since, at this generation (its disk wiped
    // after it served from the acceptance), waits for an operator to accept that loss too.
    if marks.lost
        && marks.lost_in.is_some_and(|found| found < unit.generation)
        && unit.status == CopyStatus::Current
        && unit.loss_accepted_vba == Some(local.held)
        && recorded == local.held
        && !another_current
    {
        events.push(Event::LossAccepted);
        marks.clear_lost();
    }
    // A primary that restarted with a log ending below the VBA the database recorded for its
    // copy lost records it had held (a disk that lost a torn tail, or writes it had synced), some
    // perhaps acknowledged. With no current copy to hand over to, it reports itself not current
    // rather than serve; only an operator can accept the loss (`vbs volume accept-loss`).
    if unit.role == Role::Primary
        && unit.status == CopyStatus::Current
        && recorded > local.held
        && local.restarted
        && !marks.lost
    {
        events.push(Event::BelowRecorded {
            held: local.held,
            recorded,
        });
        marks.lose(Some(unit.generation));
    }
    // A copy reported as having lost records serves again only once the database no longer
    // holds it current (it resyncs first): the report being accepted is not enough, since until
    // this node hears of the change it would still serve as a current copy.
    if unit.status != CopyStatus::Current {
        marks.clear_lost();
    }
    Decision { marks, events }
}

/// Whether a restarted node's copy of `unit` may have missed writes it must report: a secondary
/// that was away may have missed writes the primary did not report (the primary only reports a
/// copy that fails it during a write). A primary missed nothing: every write it acknowledged was
/// durable in its own log first (unless its log lost a torn tail, [`on_assignment`]).
pub fn missed_while_away(unit: &AssignedUnit) -> bool {
    unit.role == Role::Secondary && unit.status == CopyStatus::Current
}

/// What node `me`, which had to create its copy of `unit` empty, can tell of it.
pub fn emptied_copy(unit: &AssignedUnit, me: &NodeId) -> Emptied {
    if unit.status != CopyStatus::Current {
        return Emptied::Unwritten;
    }
    // Written if anything says so: a VBA committed with a status change, or one a node reported.
    // A report of 0 (a node whose heartbeat does not list the unit) does not undo a committed one.
    if unit.copies.iter().any(written) {
        return Emptied::Lost;
    }
    let unheard = unit
        .copies
        .iter()
        .any(|c| &c.node != me && c.status == CopyStatus::Current && c.reported_vba.is_none());
    if unheard {
        Emptied::Unknown
    } else {
        Emptied::Unwritten
    }
}

/// Whether the database knows of records in this copy: committed with a status change, or
/// reported in a heartbeat.
fn written(copy: &CopyInfo) -> bool {
    copy.last_vba > Vba::ZERO || copy.reported_vba.is_some_and(|v| v > Vba::ZERO)
}

#[cfg(test)]
mod tests;
