//! Background upkeep of the node's devices: checkpointing their indexes, so that a restart reads
//! little of the log, and compacting device logs that are mostly overwritten, so that space is
//! reclaimed and freed segments return to the spare pool (where new log segments then come from
//! without being written with zeroes first).

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

use super::Node;

/// How often devices are looked at.
const INTERVAL: Duration = Duration::from_secs(5);
/// A log is compacted once it holds more than this many times its live bytes ...
const GARBAGE_FACTOR: u64 = 2;
/// ... and at least this many bytes of records (small logs are not worth the IO).
const MIN_LOG_BYTES: u64 = 128 << 20;
/// Segments whose live share is at most this are compacted.
const MAX_LIVE_RATIO: f64 = 0.5;
/// A device's indexes are checkpointed once this much log was written (or replayed) since the
/// last checkpoint, which bounds what a restart reads (`docs/storage-engine.md`).
pub const CHECKPOINT_EVERY_BYTES: u64 = 1 << 30;

pub async fn run(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for i in 0..node.devices.count() {
            let device = node.devices.device(i);
            if device.wants_checkpoint(CHECKPOINT_EVERY_BYTES) {
                let name = device.backend().describe();
                let node = node.clone();
                let checkpoint = move || node.devices.device(i).checkpoint();
                match tokio::task::spawn_blocking(checkpoint).await {
                    Ok(Ok(report)) => debug!(device = %name, ?report, "checkpointed"),
                    Ok(Err(e)) => warn!(device = %name, error = %e, "checkpoint failed"),
                    Err(e) => warn!(device = %name, error = %e, "checkpoint task failed"),
                }
            }
            let device = node.devices.device(i);
            let (stats, live_bytes) = device.log_stats();
            if stats.log_bytes < MIN_LOG_BYTES || stats.log_bytes < GARBAGE_FACTOR * live_bytes {
                continue;
            }
            let name = device.backend().describe();
            let node = node.clone();
            let compact = move || node.devices.device(i).compact(MAX_LIVE_RATIO);
            match tokio::task::spawn_blocking(compact).await {
                Ok(Ok(report)) => debug!(device = %name, ?report, "compacted"),
                Ok(Err(e)) => warn!(device = %name, error = %e, "compaction failed"),
                Err(e) => warn!(device = %name, error = %e, "compaction task failed"),
            }
        }
    }
}
