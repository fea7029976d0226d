//! The failure detector loop on the leader: every tick it asks
//! [`crate::decide::liveness::Liveness::judge`] for verdicts and commits them one at a time.
//!
//! A verdict is awaited until Raft resolves it, with no deadline: a verdict that timed out could
//! still commit later, and until it is resolved the node it judges down gets no lease renewal.
//! Without a quorum nothing can commit anyway, so the loop simply waits.
//!
//! After the verdicts, each round runs the repairs ([`crate::decide::repair`]): re-replication
//! of copies on nodes down past the grace period, and drains. Those are ordinary changes with a
//! commit deadline: one that times out and commits later is fenced off by the slice generation
//! if the next round decided it again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use vbs_wire::api::NodeState;
use vbs_wire::types::{NodeId, UnitId};

use crate::decide::repair::{self, Conditions, MAX_REPAIRS_PER_ROUND};
use crate::manager::SharedManager;
use crate::state::{Command, Outcome};

/// Most slices newly waiting for a node that one round names in the log; a node failure can
/// leave thousands waiting at once.
const MAX_WAITING_LOGGED: usize = 10;

/// How often the detector looks: a tenth of the lease, within bounds.
pub fn tick(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// Runs until `stop` turns true.
pub async fn run(manager: SharedManager, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick(manager.config.lease.lease));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Slices reported as waiting for a node, so that each is logged once, not every round.
    let mut waiting = BTreeSet::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let now = Instant::now();
        let judged = manager.with_liveness(now, |l| {
            let verdicts = manager.read(|a| l.judge(&a.state, now));
            let causes: Vec<String> = verdicts.commands.iter().map(|c| l.cause_of(c)).collect();
            (verdicts, causes)
        });
        let Some((verdicts, causes)) = judged else {
            continue;
        };
        if let Some(gap) = verdicts.paused {
            tracing::warn!(
                ?gap,
                "the failure detector did not run for longer than half a lease: every storage node \
                 gets a full lease before it judges"
            );
        }
        let mut failed = false;
        for (command, cause) in verdicts.commands.into_iter().zip(causes) {
            let judged = match &command {
                Command::SetNodeState {
                    node,
                    state: NodeState::Down,
                    ..
                } => Some(node.clone()),
                _ => None,
            };
            // After a failure the remaining verdicts are not proposed at all, so they are
            // resolved too; a new tick judges afresh.
            if !failed {
                let summary = format!("{command:?}");
                let result = tokio::select! {
                    result = manager.commit(command, &cause) => result,
                    _ = stop.changed() => return,
                };
                match result {
                    Ok(Outcome::Refused(refusal)) => {
                        tracing::info!(%refusal, verdict = %summary, "failure detector verdict overtaken")
                    }
                    Ok(_) => {
                        tracing::warn!(verdict = %summary, "failure detector verdict committed")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, verdict = %summary, "verdict not committed");
                        failed = true;
                    }
                }
            }
            if let Some(node) = judged {
                manager.with_liveness(Instant::now(), |l| l.judged(&node));
            }
        }
        if !failed {
            tokio::select! {
                () = repair_round(&manager, &mut waiting) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// One round of re-replication and drains on the leader.
async fn repair_round(manager: &SharedManager, waiting: &mut BTreeSet<UnitId>) {
    // Lost nodes and free space are judged on the applied state: not on a new leader's lagging
    // view, and not while a placement counts the same free space.
    if manager.caught_up().await.is_err() {
        return;
    }
    let _placing = manager.placement_lock.lock().await;
    let now = Instant::now();
    let grace = manager.config.grace;
    let repairs = manager.with_liveness(now, |l| {
        manager.read(|a| {
            let lost = l.down_past(&a.state, now, grace);
            let draining = a.state.draining_nodes();
            let reported_free = l.reported_free();
            let conditions = Conditions {
                lost: &lost,
                draining: &draining,
                reported_free: &reported_free,
                limit: MAX_REPAIRS_PER_ROUND,
            };
            let repairs = repair::plan(&a.state, &conditions);
            for handover in &repairs.handovers {
                // The failure detector fails the slice over once the lease has run out.
                let cause = format!("drain of node {} hands the slice over", handover.primary);
                l.revoke(
                    handover.unit,
                    handover.generation,
                    &handover.primary,
                    &cause,
                );
            }
            let names = |nodes: &BTreeSet<NodeId>| {
                nodes
                    .iter()
                    .map(|n| n.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let cause = match (lost.is_empty(), draining.is_empty()) {
                (false, true) => format!("re-replication: node {} lost", names(&lost)),
                (true, false) => format!("drain of node {}", names(&draining)),
                _ => format!(
                    "re-replication (node {} lost) and drains (node {})",
                    names(&lost),
                    names(&draining)
                ),
            };
            (repairs, cause)
        })
    });
    let Some((repairs, cause)) = repairs else {
        return;
    };
    let new: Vec<_> = repairs
        .waiting
        .iter()
        .filter(|w| !waiting.contains(&w.unit))
        .collect();
    for w in new.iter().take(MAX_WAITING_LOGGED) {
        tracing::warn!(unit = %w.unit, "{}; retrying every round", w.reason);
    }
    if new.len() > MAX_WAITING_LOGGED {
        tracing::warn!(
            more = new.len() - MAX_WAITING_LOGGED,
            "more slices wait for a node to take a copy"
        );
    }
    *waiting = repairs.waiting.iter().map(|w| w.unit).collect();
    let Some(command) = repairs.command() else {
        return;
    };
    match manager.propose(command, &cause).await {
        Ok(Outcome::Refused(refusal)) => {
            tracing::info!(%refusal, "repair overtaken by another change; deciding again")
        }
        Ok(_) => {
            for update in &repairs.updates {
                tracing::info!(
                    unit = %update.unit,
                    added = ?update.add,
                    removed = ?update.remove,
                    new_primary = ?update.new_primary,
                    "slice copies moved"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "repair not committed"),
    }
}
