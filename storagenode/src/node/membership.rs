//! The node's side of the consistency database: registration, heartbeats (about once a second,
//! with each unit's last VBA), the lease they renew, and applying the assignments each reply
//! carries: units to create, roles and generations to take, units to drop, and the marks that
//! keep a copy from serving, as `replication::serving` decides them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};
use vbs_wire::api::{
    AssignedUnit, ErrorCode, HeartbeatRequest, HeartbeatResponse, Notification,
    RegisterNodeRequest, Role, UnitGeneration, UnitReport,
};
use vbs_wire::managers::{Hedge, ManagerError};

use super::unit::{Assignment, UnitRuntime};
use super::Node;
use crate::engine::Marks;
use crate::replication::serving;

/// Runs for the life of the node: registers, then heartbeats.
pub async fn run(node: Arc<Node>) {
    register(&node).await;
    let mut ticks = tokio::time::interval(node.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = node.refresh.notified() => {}
        }
        match heartbeat(&node).await {
            Ok(()) => {
                if let Some(since) = failing_since.take() {
                    info!(after = ?since.elapsed(), "heartbeats answered again");
                }
            }
            Err(ManagerError::Api { error, .. }) if error.code == ErrorCode::NotFound => {
                warn!("the managers do not know this node; registering again");
                register(&node).await;
            }
            Err(e) => {
                // Logged once per outage, not once per beat.
                if failing_since.is_none() {
                    warn!(error = %e, "heartbeat not answered; primaries stop serving when their lease runs out");
                    failing_since = Some(Instant::now());
                }
            }
        }
    }
}

fn capacity(node: &Node) -> (u64, u64) {
    let (total, free) = node.devices.space().unwrap_or_else(|e| {
        error!(error = %e, "cannot read the devices' free space");
        (0, 0)
    });
    let capacity = node.config.capacity_bytes.unwrap_or(total).max(1);
    let assigned: u64 = node
        .units()
        .iter()
        .map(|u| {
            u.assignment()
                .map_or(u.engine.size_bytes(), |a| a.unit_bytes)
        })
        .sum();
    (capacity, free.min(capacity.saturating_sub(assigned)))
}

/// Registers until the managers answer. A data directory they do not know as this node's (wiped,
/// replaced, or another node's) has every copy on it marked lost before the node says so and
/// registers again: those copies serve nothing until resynced, across a crash too.
async fn register(node: &Node) {
    let mut backoff = Duration::from_millis(100);
    let mut marked_lost = BTreeSet::new();
    loop {
        let (capacity_bytes, free_bytes) = capacity(node);
        let request = RegisterNodeRequest {
            id: node.id.clone(),
            addr: node.config.advertise.clone(),
            capacity_bytes,
            free_bytes: Some(free_bytes),
            devices: node.devices.identities(&marked_lost),
        };
        match node.managers.register_node(&request).await {
            Ok(status) if !status.unknown_devices.is_empty() => {
                for device in status.unknown_devices {
                    let units = node.devices.units_on(&device);
                    warn!(%device, units = units.len(),
                        "the managers do not know this data directory as this node's (wiped, replaced, or another node's): its copies are marked lost and will be resynced");
                    for unit in units {
                        if let Some(runtime) = node.unit(unit) {
                            runtime.mark_lost();
                        }
                    }
                    marked_lost.insert(device);
                }
            }
            Ok(_) => {
                info!(node = %node.id, addr = %request.addr, capacity_bytes, "registered with the managers");
                return;
            }
            Err(e) => {
                warn!(error = %e, "registration not answered; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn heartbeat(node: &Arc<Node>) -> Result<(), ManagerError> {
    let units = node
        .units()
        .iter()
        .map(|u| UnitReport {
            unit: u.id,
            last_vba: u.engine.last_vba(),
        })
        .collect();
    let (_, free_bytes) = capacity(node);
    let devices = node.devices.each_space().unwrap_or_else(|e| {
        error!(error = %e, "cannot read the devices' free space");
        Vec::new()
    });
    let request = HeartbeatRequest {
        free_bytes: Some(free_bytes),
        units,
        io: node.io_metrics.unreported(),
        devices,
        scrubs: node.scrubs.unreported(),
    };
    let sent = Instant::now();
    let interval = node.config.heartbeat_interval;
    let timing = Hedge {
        hedge: interval / 4,
        patience: interval,
        deadline: sent + interval * 3,
    };
    let reply = node.managers.heartbeat(&node.id, &request, timing).await?;
    node.io_metrics.reported(&request.io);
    node.scrubs.reported(&request.scrubs);
    apply(node, sent, reply).await;
    Ok(())
}

/// Brings the node's units in line with the database's assignments.
async fn apply(node: &Arc<Node>, sent: Instant, reply: HeartbeatResponse) {
    let lease = Duration::from_millis(reply.lease_ms);
    let mut assigned = BTreeSet::new();
    for unit in &reply.units {
        assigned.insert(unit.unit);
        let runtime = match node.unit(unit.unit) {
            Some(runtime) => runtime,
            // A unit takes its slice's whole span, so that the volume can grow without it.
            // A copy the database believes current but which this node has to create empty may
            // have been lost (a wiped or replaced disk): it is created `undecided`, and serves
            // nothing until it is known whether the slice was ever written.
            None => match create(node, unit.unit, unit.slice_bytes.max(unit.unit_bytes)).await {
                Some(runtime) => runtime,
                None => continue,
            },
        };
        if runtime.engine.size_bytes() < unit.unit_bytes {
            // The volume grew past this unit's end: a last slice grew, or a unit made before
            // units took their slice's whole span.
            let span = unit.slice_bytes.max(unit.unit_bytes);
            let engine = runtime.engine.clone();
            match tokio::task::spawn_blocking(move || engine.grow(span)).await {
                Ok(Ok(())) => {
                    info!(unit = %unit.unit, bytes = span, "the unit grew with its slice")
                }
                failed => {
                    let error = failed.map_or_else(|e| e.to_string(), |r| format!("{r:?}"));
                    error!(unit = %unit.unit, local = runtime.engine.size_bytes(), assigned = unit.unit_bytes,
                        %error, "the unit cannot grow to its slice's size; not serving it");
                    continue;
                }
            }
        }
        // Decided once the unit can serve its whole slice (a unit that cannot grow keeps its
        // marks), and under the marks' lock, so that a mark set meanwhile is not written over.
        let (torn, held) = (runtime.take_torn(), runtime.engine.last_vba());
        let just_restarted = restarted(node, unit.unit);
        let events = runtime.decide_marks(|marks| {
            let local = serving::Local {
                marks,
                torn,
                held,
                restarted: just_restarted,
            };
            let decided = serving::on_assignment(unit, &node.id, local);
            (decided.marks, decided.events)
        });
        for event in &events {
            log_serving(unit, event);
        }
        let before = runtime.assignment();
        let assignment = Assignment::from_assigned(unit);
        if before.as_ref() != Some(&assignment) {
            debug!(unit = %unit.unit, role = ?unit.role, status = ?unit.status, generation = %unit.generation, "assignment");
            if before.as_ref().is_some_and(|b| b.role != Role::Primary)
                && unit.role == Role::Primary
            {
                info!(unit = %unit.unit, generation = %unit.generation, last_vba = %runtime.engine.last_vba(),
                    "became the primary");
            }
        }
        runtime.assign(assignment, sent);
        if unit.role == Role::Primary && unit.lease_renewed {
            runtime.renew_lease(sent, lease);
        }
    }
    for runtime in node.units() {
        if !assigned.contains(&runtime.id) {
            drop_unit(node, &runtime, "no longer assigned here").await;
        }
    }
    // A restarted secondary may have missed writes (`serving::missed_while_away`).
    let restarted = node
        .restarted_units
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(restarted) = restarted {
        let missed: Vec<UnitGeneration> = reply
            .units
            .iter()
            .filter(|u| restarted.contains(&u.unit))
            .filter(|u| serving::missed_while_away(u))
            .map(|u| UnitGeneration {
                unit: u.unit,
                generation: u.generation,
            })
            .collect();
        if !missed.is_empty() {
            let notification = Notification::NotCurrent {
                source: node.id.clone(),
                units: missed,
            };
            match node.managers.notify(&notification).await {
                Ok(_) => info!("reported secondary copies not current after a restart"),
                Err(e) => {
                    warn!(error = %e, "could not report copies not current after a restart; retrying");
                    *node
                        .restarted_units
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(restarted);
                }
            }
        }
    }
    for runtime in node.units() {
        if super::resync::wants_resync(&runtime) {
            super::resync::start(node, &runtime);
        }
    }
    let lost: Vec<UnitGeneration> = reply
        .units
        .iter()
        .filter(|u| node.unit(u.unit).is_some_and(|r| r.is_lost()))
        .map(|u| UnitGeneration {
            unit: u.unit,
            generation: u.generation,
        })
        .collect();
    if !lost.is_empty() {
        report_not_current(node, lost).await;
    }
}

/// The node's log line for why a copy's marks changed, or did not.
fn log_serving(unit: &AssignedUnit, event: &serving::Event) {
    use serving::Event;
    match event {
        Event::EmptiedOverWrites => warn!(unit = %unit.unit,
            "this unit had to be created empty, but the slice was written: its data here was lost; reporting it not current"),
        Event::EmptiedUnknown => debug!(unit = %unit.unit,
            "created empty; waiting to hear how far the slice's other current copies are"),
        Event::TornTailStepsDown => warn!(unit = %unit.unit,
            "this primary's log lost a torn tail; stepping down"),
        Event::LossAccepted => warn!(unit = %unit.unit, generation = %unit.generation,
            "an operator accepted this copy's loss: serving it again as it is"),
        Event::BelowRecorded { held, recorded } => error!(unit = %unit.unit, %held, %recorded,
            "this primary's log ends below the VBA the database recorded for its copy: it lost records, some perhaps acknowledged; reporting itself not current instead of serving (an operator may accept the loss: vbs volume accept-loss)"),
    }
}

async fn create(
    node: &Arc<Node>,
    unit: vbs_wire::types::UnitId,
    bytes: u64,
) -> Option<Arc<UnitRuntime>> {
    let created = {
        let node = node.clone();
        let marks = Marks {
            undecided: true,
            ..Marks::default()
        };
        tokio::task::spawn_blocking(move || node.devices.create_unit(unit, bytes, marks)).await
    };
    match created {
        Ok(Ok(engine)) => {
            info!(%unit, bytes, "created unit");
            let runtime = Arc::new(UnitRuntime::new(engine, node.id.clone()));
            node.units
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(unit, runtime.clone());
            Some(runtime)
        }
        Ok(Err(e)) => {
            error!(%unit, error = %e, "cannot create an assigned unit");
            None
        }
        Err(e) => {
            error!(%unit, error = %e, "creating an assigned unit failed");
            None
        }
    }
}

/// Whether `unit` was on the node's devices when it started, and its first heartbeat reply is
/// still being applied.
fn restarted(node: &Node, unit: vbs_wire::types::UnitId) -> bool {
    node.restarted_units
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|units| units.contains(&unit))
}

/// Removes a unit from the node and its device, for the reason `why`.
pub(super) async fn drop_unit(node: &Arc<Node>, runtime: &UnitRuntime, why: &str) {
    let unit = runtime.id;
    node.units
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&unit);
    let removed = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.devices.remove_unit(unit)).await
    };
    match removed {
        Ok(Ok(())) => info!(%unit, why, "dropped a unit"),
        Ok(Err(e)) => error!(%unit, error = %e, "cannot drop a unit"),
        Err(e) => error!(%unit, error = %e, "dropping a unit failed"),
    }
}

/// Reports units that lost records (created empty, or a primary that lost a tail a copy holds)
/// as not current. They do not serve until a heartbeat reply shows them no longer current, and
/// are reported again at every beat until then.
async fn report_not_current(node: &Node, units: Vec<UnitGeneration>) {
    let count = units.len();
    let notification = Notification::NotCurrent {
        source: node.id.clone(),
        units,
    };
    match node.managers.notify(&notification).await {
        Ok(_) => info!(
            units = count,
            "reported units that lost records as not current"
        ),
        Err(e) => {
            warn!(error = %e, "could not report lost units as not current; retrying at the next beat")
        }
    }
}
