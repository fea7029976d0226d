//! The failure detector loop on the leader: every tick it asks
//! [`crate::decide::liveness::Liveness::detect`] for verdicts and commits them one at a time.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::manager::SharedManager;
use crate::state::Outcome;

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
        let verdicts = manager.with_liveness(now, |l| {
            let verdicts = manager.read(|a| l.detect(&a.state, now));
            for unit in &verdicts.cancel {
                l.cancel_revocation(*unit);
            }
            verdicts
        });
        let Some(verdicts) = verdicts else { continue };
        for command in verdicts.commands {
            let summary = format!("{command:?}");
            match manager.propose(command).await {
                Ok(Outcome::Refused(refusal)) => {
                    tracing::info!(%refusal, verdict = %summary, "failure detector verdict overtaken")
                }
                Ok(_) => tracing::warn!(verdict = %summary, "failure detector verdict committed"),
                Err(e) => {
                    tracing::warn!(error = %e.body.error, verdict = %summary, "verdict not committed");
                    break;
                }
            }
        }
    }
}
