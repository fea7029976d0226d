//! What a notification changes (`POST /v1/notifications`).
//!
//! Every unit named must carry the slice's current generation: an older one is refused whole with
//! [`Refusal::StaleGeneration`] and nothing changes, which is how a deposed primary is fenced.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use client::api::{CopyStatus, Notification, Source, UnitGeneration};
use client::types::{Generation, NodeId, UnitId, Vba};

use super::liveness::{failover, Liveness};
use crate::state::command::{CopyChange, SliceUpdate};
use crate::state::{Command, Refusal, Slice, State};

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
        Notification::NotCurrent { units, .. } | Notification::Unresponsive { units, .. } => units,
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

fn require_copy<'s>(
    slice: &'s Slice,
    node: &NodeId,
    unit: UnitId,
) -> Result<&'s crate::state::Copy, Refusal> {
    slice
        .copy(node)
        .ok_or_else(|| Refusal::Conflict(format!("unit {unit} has no copy on node {node}")))
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
            unit: *unit,
            expected_generation: slice.generation,
            new_primary,
            copies: vec![CopyChange {
                node: source.clone(),
                status: CopyStatus::Stale,
                last_vba: reported_vba(liveness, slice, source, *unit),
            }],
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
        updates.push(SliceUpdate {
            unit: *unit,
            expected_generation: slice.generation,
            new_primary: None,
            copies: vec![CopyChange {
                node: target.clone(),
                status: CopyStatus::Stale,
                last_vba: reported_vba(liveness, slice, target, *unit),
            }],
        });
    }
    Ok(updates)
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
mod tests;
