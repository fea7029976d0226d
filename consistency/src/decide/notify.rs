//! What a notification changes (`POST /v1/notifications`).
//!
//! Every unit named must carry the slice's current generation: an older one is refused whole with
//! [`Refusal::StaleGeneration`] and nothing changes, which is how a deposed primary is fenced.
//!
//! A copy's status moves `current -> stale` (`not_current` from its node, `unresponsive` from the
//! primary) or `-> down` (its node is down), `down -> stale` (the node is back), `stale ->
//! syncing` (`syncing` from its node), `syncing -> current` (`caught_up` from the primary), and
//! `syncing -> stale` on the same reports as a current copy. `syncing` and `caught_up` name the
//! statuses they start from ([`SliceUpdate::require`]): status changes do not bump the
//! generation, so without that a `caught_up` decided before the primary marked the copy `stale`
//! would make current a copy that missed acknowledged writes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vbs_wire::api::{CopyStatus, Notification, ResyncProgress, Source, UnitGeneration};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::liveness::{failover, Liveness};
use crate::state::command::{CopyChange, CopyRequirement, SliceUpdate};
use crate::state::{Command, Refusal, Slice, State};

/// One line saying who reported what, as the event log records the cause of a change.
pub fn describe(notification: &Notification) -> String {
    let units = |n: usize| {
        if n == 1 {
            "1 unit".to_string()
        } else {
            format!("{n} units")
        }
    };
    match notification {
        Notification::NotCurrent { source, units: u } => {
            format!(
                "node {source} reported itself not current for {}",
                units(u.len())
            )
        }
        Notification::Unresponsive {
            source,
            target,
            units: u,
        } => {
            let source = match source {
                Source::Node(node) => format!("node {node}"),
                Source::Client(name) => format!("client {name}"),
            };
            format!(
                "{source} reported node {target} unresponsive for {}",
                units(u.len())
            )
        }
        Notification::Syncing { source, units: u } => {
            format!("node {source} started catching up {}", units(u.len()))
        }
        Notification::CaughtUp {
            source,
            target,
            units: u,
        } => format!(
            "primary {source} reported node {target} caught up on {}",
            units(u.len())
        ),
        Notification::ResyncProgress { source, unit, .. } => {
            format!("node {source} reported resync progress on {}", unit.unit)
        }
    }
}

/// Most units one notification may name.
pub const MAX_UNITS_PER_NOTIFICATION: usize = 4096;

/// What to do about a notification that was not refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Commit this command, then answer with the slices as they are.
    Propose(Command),
    /// The state already says what the notification asks: answer with the slices as they are.
    Nothing,
    /// A client reported a primary whose lease has run out: stop renewing that lease for these
    /// units, then commit the failover. Without the revocation a heartbeat answered while the
    /// failover commits would hand the old primary a fresh lease on a slice that is no longer
    /// its own.
    Failover {
        units: Vec<(UnitId, Generation)>,
        command: Command,
    },
    /// A client reported a primary whose lease may still hold: stop renewing that lease for these
    /// units and tell the client to retry after `retry_after`, when the slice can fail over.
    Revoke {
        units: Vec<(UnitId, Generation)>,
        retry_after: Duration,
    },
    /// A resync progress report: remember it in the leader's memory (not committed), then answer
    /// with the slice. `status` is the copy's status the report was checked against.
    Remember {
        unit: UnitId,
        node: NodeId,
        progress: ResyncProgress,
        status: CopyStatus,
    },
}

/// Decides what `notification`, received at `now`, changes.
pub fn decide(
    state: &State,
    liveness: &Liveness,
    notification: &Notification,
    now: Instant,
) -> Result<Decision, Refusal> {
    let slices = check_units(state, units_of(notification))?;
    let updates = match notification {
        Notification::NotCurrent { source, .. } => not_current(state, liveness, source, &slices)?,
        Notification::Unresponsive {
            source: Source::Node(source),
            target,
            ..
        } => secondary_unresponsive(liveness, source, target, &slices)?,
        Notification::Unresponsive {
            source: Source::Client(_),
            target,
            ..
        } => {
            return primary_unresponsive(state, liveness, target, &slices, now);
        }
        Notification::Syncing { source, .. } => syncing(state, liveness, source, &slices)?,
        Notification::CaughtUp { source, target, .. } => {
            caught_up(liveness, source, target, &slices)?
        }
        Notification::ResyncProgress {
            source, progress, ..
        } => return resync_progress(state, source, &slices, *progress),
    };
    Ok(if updates.is_empty() {
        Decision::Nothing
    } else {
        Decision::Propose(Command::UpdateSlices { updates })
    })
}

/// The units a notification names.
pub fn units_of(notification: &Notification) -> &[UnitGeneration] {
    match notification {
        Notification::NotCurrent { units, .. }
        | Notification::Unresponsive { units, .. }
        | Notification::Syncing { units, .. }
        | Notification::CaughtUp { units, .. } => units,
        Notification::ResyncProgress { unit, .. } => std::slice::from_ref(unit),
    }
}

/// Looks every unit up and checks its generation, before anything is decided.
fn check_units<'s>(
    state: &'s State,
    units: &[UnitGeneration],
) -> Result<Vec<(UnitId, &'s Slice)>, Refusal> {
    if units.is_empty() || units.len() > MAX_UNITS_PER_NOTIFICATION {
        return Err(Refusal::BadRequest(format!(
            "a notification names 1 to {MAX_UNITS_PER_NOTIFICATION} units, this one {}",
            units.len()
        )));
    }
    let mut slices = Vec::with_capacity(units.len());
    let mut seen = BTreeSet::new();
    for UnitGeneration { unit, generation } in units {
        if !seen.insert(*unit) {
            return Err(Refusal::BadRequest(format!(
                "unit {unit} is named twice in one notification"
            )));
        }
        let slice = state
            .slice(*unit)
            .ok_or_else(|| Refusal::NotFound(format!("unit {unit} does not exist")))?;
        if *generation < slice.generation {
            return Err(Refusal::StaleGeneration {
                unit: *unit,
                named: *generation,
                current: slice.generation,
            });
        }
        if *generation > slice.generation {
            return Err(Refusal::BadRequest(format!(
                "unit {unit}: generation {generation} is newer than the slice's {}",
                slice.generation
            )));
        }
        slices.push((*unit, slice));
    }
    Ok(slices)
}

fn reported_vba(liveness: &Liveness, slice: &Slice, node: &NodeId, unit: UnitId) -> Vba {
    let committed = slice.copy(node).map_or(Vba::ZERO, |c| c.last_vba);
    liveness.last_vba(node, unit).unwrap_or(committed)
}

/// The update that marks `node`'s copy of `unit` stale, with the last VBA it is known to hold.
fn mark_stale(liveness: &Liveness, slice: &Slice, node: &NodeId, unit: UnitId) -> SliceUpdate {
    SliceUpdate {
        copies: vec![CopyChange {
            node: node.clone(),
            status: CopyStatus::Stale,
            last_vba: reported_vba(liveness, slice, node, unit),
        }],
        ..SliceUpdate::new(unit, slice.generation)
    }
}

fn require_copy<'s>(
    slice: &'s Slice,
    node: &NodeId,
    unit: UnitId,
) -> Result<&'s crate::state::Copy, Refusal> {
    slice
        .copy(node)
        .ok_or_else(|| Refusal::Conflict(format!("unit {unit} has no copy on node {node}")))
}

/// A report about the source's own copies needs a registered source that is `up`: a node the
/// database holds down must come back (heartbeat) first, which also turns its copies `stale`.
fn require_up_source(state: &State, source: &NodeId) -> Result<(), Refusal> {
    if !state.nodes.contains_key(source) {
        return Err(Refusal::NotFound(format!(
            "storage node {source} is not registered"
        )));
    }
    if !state.node_is_up(source) {
        return Err(Refusal::Conflict(format!(
            "storage node {source} is down; register or heartbeat before reporting"
        )));
    }
    Ok(())
}

/// The source says it is not current for its own units: its copies become `stale`; where it is
/// the primary, a current copy on an up node takes over when there is one. No lease wait: the
/// source itself has stopped serving.
fn not_current(
    state: &State,
    liveness: &Liveness,
    source: &NodeId,
    slices: &[(UnitId, &Slice)],
) -> Result<Vec<SliceUpdate>, Refusal> {
    require_up_source(state, source)?;
    let mut updates = Vec::new();
    for (unit, slice) in slices {
        let copy = require_copy(slice, source, *unit)?;
        let is_primary = &slice.primary == source;
        let new_primary = if is_primary {
            state.failover_candidate(slice)
        } else {
            None
        };
        if copy.status == CopyStatus::Stale && new_primary.is_none() {
            continue;
        }
        updates.push(SliceUpdate {
            new_primary,
            ..mark_stale(liveness, slice, source, *unit)
        });
    }
    Ok(updates)
}

/// A primary reports a secondary that did not answer: that copy becomes `stale`, so the primary
/// may acknowledge writes without it once this is committed.
fn secondary_unresponsive(
    liveness: &Liveness,
    source: &NodeId,
    target: &NodeId,
    slices: &[(UnitId, &Slice)],
) -> Result<Vec<SliceUpdate>, Refusal> {
    if source == target {
        return Err(Refusal::BadRequest(format!(
            "node {source} reports itself unresponsive"
        )));
    }
    let mut updates = Vec::new();
    for (unit, slice) in slices {
        if &slice.primary != source {
            return Err(Refusal::Conflict(format!(
                "node {source} is not the primary of unit {unit} (node {} is); only the primary \
                 reports its secondaries",
                slice.primary
            )));
        }
        let copy = require_copy(slice, target, *unit)?;
        if matches!(copy.status, CopyStatus::Stale | CopyStatus::Down) {
            continue;
        }
        updates.push(mark_stale(liveness, slice, target, *unit));
    }
    Ok(updates)
}

/// The source starts catching up its `stale` copies: they become `syncing`, so the primary
/// forwards new writes to them from now on. A copy already `syncing` is left as it is (a retried
/// report); a `current` or `down` one is refused.
fn syncing(
    state: &State,
    liveness: &Liveness,
    source: &NodeId,
    slices: &[(UnitId, &Slice)],
) -> Result<Vec<SliceUpdate>, Refusal> {
    require_up_source(state, source)?;
    let mut updates = Vec::new();
    for (unit, slice) in slices {
        let copy = require_copy(slice, source, *unit)?;
        if &slice.primary == source {
            return Err(Refusal::Conflict(format!(
                "node {source} is the primary of unit {unit}; a primary cannot catch up from \
                 itself"
            )));
        }
        match copy.status {
            CopyStatus::Stale => {}
            CopyStatus::Syncing => continue,
            other => {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: the copy on node {source} is {}, not stale; only a stale copy \
                     starts catching up",
                    other.as_str()
                )))
            }
        }
        updates.push(SliceUpdate {
            copies: vec![CopyChange {
                node: source.clone(),
                status: CopyStatus::Syncing,
                last_vba: reported_vba(liveness, slice, source, *unit),
            }],
            require: vec![CopyRequirement {
                node: source.clone(),
                status: CopyStatus::Stale,
            }],
            ..SliceUpdate::new(*unit, slice.generation)
        });
    }
    Ok(updates)
}

/// The primary says `target`'s `syncing` copy holds every VBA it has acknowledged: the copy
/// becomes `current`. Only the primary of the generation named may say so, only while its own
/// copy is current, and only about a copy still `syncing`: a copy marked `stale` since missed
/// writes the primary acknowledged without it, so it must start over. A copy already `current` is
/// left as it is (a retried report).
fn caught_up(
    liveness: &Liveness,
    source: &NodeId,
    target: &NodeId,
    slices: &[(UnitId, &Slice)],
) -> Result<Vec<SliceUpdate>, Refusal> {
    if source == target {
        return Err(Refusal::BadRequest(format!(
            "node {source} reports its own copy caught up; the primary reports its secondaries"
        )));
    }
    let mut updates = Vec::new();
    for (unit, slice) in slices {
        if &slice.primary != source {
            return Err(Refusal::Conflict(format!(
                "node {source} is not the primary of unit {unit} at generation {} (node {} is); \
                 only the primary reports a copy caught up",
                slice.generation, slice.primary
            )));
        }
        let primary_status = require_copy(slice, source, *unit)?.status;
        if primary_status != CopyStatus::Current {
            return Err(Refusal::Conflict(format!(
                "unit {unit}: the primary's own copy on node {source} is {}; a copy caught up \
                 with it would not hold every acknowledged write",
                primary_status.as_str()
            )));
        }
        match require_copy(slice, target, *unit)?.status {
            CopyStatus::Syncing => {}
            CopyStatus::Current => continue,
            other => {
                return Err(Refusal::Conflict(format!(
                    "unit {unit}: the copy on node {target} is {}, not syncing: it missed writes \
                     since it started catching up and must start over",
                    other.as_str()
                )))
            }
        }
        updates.push(SliceUpdate {
            copies: vec![CopyChange {
                node: target.clone(),
                status: CopyStatus::Current,
                last_vba: reported_vba(liveness, slice, target, *unit),
            }],
            require: vec![
                CopyRequirement {
                    node: source.clone(),
                    status: CopyStatus::Current,
                },
                CopyRequirement {
                    node: target.clone(),
                    status: CopyStatus::Syncing,
                },
            ],
            ..SliceUpdate::new(*unit, slice.generation)
        });
    }
    Ok(updates)
}

/// A resync progress report from the node holding the copy. Any status is accepted: the last
/// report may arrive after the copy was committed `current`.
fn resync_progress(
    state: &State,
    source: &NodeId,
    slices: &[(UnitId, &Slice)],
    progress: ResyncProgress,
) -> Result<Decision, Refusal> {
    if !state.nodes.contains_key(source) {
        return Err(Refusal::NotFound(format!(
            "storage node {source} is not registered"
        )));
    }
    let (unit, slice) = slices.first().expect("check_units refuses an empty list");
    let copy = require_copy(slice, source, *unit)?;
    Ok(Decision::Remember {
        unit: *unit,
        node: source.clone(),
        progress,
        status: copy.status,
    })
}

/// A client reports the primary did not answer: fail over to a current copy on an up node, but
/// only once the primary's lease has run out, so that two primaries never serve at once.
fn primary_unresponsive(
    state: &State,
    liveness: &Liveness,
    target: &NodeId,
    slices: &[(UnitId, &Slice)],
    now: Instant,
) -> Result<Decision, Refusal> {
    let mut updates = Vec::new();
    let mut latest_expiry = now;
    for (unit, slice) in slices {
        if &slice.primary != target {
            return Err(Refusal::Conflict(format!(
                "node {target} is not the primary of unit {unit} at generation {} (node {} is); \
                 refresh the volume map",
                slice.generation, slice.primary
            )));
        }
        let candidate = state.failover_candidate(slice).ok_or_else(|| {
            Refusal::Unavailable(format!(
                "unit {unit}: no current copy on an up node can take over from primary {target}"
            ))
        })?;
        if state.node_is_up(target) {
            latest_expiry = latest_expiry.max(liveness.primary_lease_expiry(target, *unit));
        }
        updates.push(failover(liveness, state, *unit, &candidate));
    }
    let units = slices
        .iter()
        .map(|(unit, slice)| (*unit, slice.generation))
        .collect();
    if latest_expiry > now {
        return Ok(Decision::Revoke {
            units,
            retry_after: latest_expiry - now,
        });
    }
    Ok(Decision::Failover {
        units,
        command: Command::UpdateSlices { updates },
    })
}

#[cfg(test)]
mod resync_tests;
#[cfg(test)]
mod tests;
