//! The failure detector loop on the leader: every tick it asks
//! [`crate::decide::liveness::Liveness::judge`] for verdicts and commits them one at a time.
//!
//! A verdict is awaited until Raft resolves it, with no deadline: a verdict that timed out could
//! still commit later, and until it is resolved the node it judges down gets no lease renewal.
//! Without a quorum nothing can commit anyway, so the loop simply waits.

use std::time::{Duration, Instant};

use client::api::NodeState;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::manager::SharedManager;
use crate::state::{Command, Outcome};

/// How often the detector looks: a tenth of the lease, within bounds.
pub fn tick(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500))
}

/// Runs until `stop` turns true.
pub async fn run(manager: SharedManager, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick(manager.config.lease.lease));
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let now = Instant::now();
        let verdicts = manager.with_liveness(now, |l| manager.read(|a| l.judge(&a.state, now)));
        let Some(verdicts) = verdicts else { continue };
        let mut failed = false;
        for command in verdicts.commands {
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
                    result = manager.commit(command) => result,
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
                        tracing::warn!(error = %e.body.error, verdict = %summary, "verdict not committed");
                        failed = true;
                    }
                }
            }
            if let Some(node) = judged {
                manager.with_liveness(Instant::now(), |l| l.judged(&node));
            }
        }
    }
}
