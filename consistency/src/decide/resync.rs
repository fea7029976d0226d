//! The leader's memory of resync progress (`resync_progress` notifications).
//!
//! Progress reports are not committed through Raft: they change nothing a decision depends on,
//! and a storage node sends one every few seconds per resync. The leader keeps, per copy, the
//! first report of the current resync and the latest one, and derives a rate and the time left.
//! A new leader starts with an empty memory and shows progress again from the next report.
//!
//! A report starts a new resync of its copy (forgetting the previous one) when it goes backwards
//! (fewer bytes done than the last report), when the last report had finished and this one has
//! not, when it switches between incremental and full, or when the copy left `stale`/`syncing`
//! since the last report and is back in it. Otherwise it continues the resync. The last report
//! stays visible after the copy is `current` again, until a new resync of that copy starts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vbs_wire::api::{CopyStatus, ResyncProgress, ResyncStatus};
use vbs_wire::types::{NodeId, UnitId};

use crate::state::{Copy, Refusal};

/// Most copies whose resync the leader remembers; beyond it, reports about copies that no longer
/// exist are forgotten first, then new resyncs are refused until some are.
pub const MAX_TRACKED_RESYNCS: usize = 100_000;

/// One copy's resync as the leader heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tracked {
    /// When the first report of this resync arrived, and the bytes it said were done.
    started: Instant,
    first_bytes_done: u64,
    /// The latest report and when it arrived.
    last_at: Instant,
    last: ResyncProgress,
    /// The copy's status when the latest report arrived.
    copy_status: CopyStatus,
}

/// Copies in a resync: neither holding everything (`current`) nor on a down node.
fn resyncing(status: CopyStatus) -> bool {
    matches!(status, CopyStatus::Stale | CopyStatus::Syncing)
}

impl Tracked {
    fn starts_new_resync(&self, report: &ResyncProgress, copy_status: CopyStatus) -> bool {
        report.bytes_done < self.last.bytes_done
            || (self.last.finished && !report.finished)
            || report.full != self.last.full
            || (!resyncing(self.copy_status) && resyncing(copy_status))
    }

    /// The resync as the status shows it. `copy_status` is the copy's status now: a resync whose
    /// copy is no longer `stale`/`syncing` is over even without a finished report, so its clock
    /// stops and it has no time left.
    fn status(&self, copy_status: CopyStatus, now: Instant) -> ResyncStatus {
        let over = self.last.finished || !resyncing(copy_status);
        let end = if over { self.last_at } else { now };
        let elapsed = end.saturating_duration_since(self.started);
        let span = self.last_at.saturating_duration_since(self.started);
        let bytes = self.last.bytes_done.saturating_sub(self.first_bytes_done);
        let bytes_per_sec = rate(bytes, span);
        let remaining = self.last.bytes_total.saturating_sub(self.last.bytes_done);
        let eta_secs = (!over && bytes_per_sec > 0).then(|| remaining.div_ceil(bytes_per_sec));
        ResyncStatus {
            progress: self.last,
            bytes_per_sec,
            eta_secs,
            elapsed_ms: elapsed.as_millis() as u64,
        }
    }
}

/// Bytes per second; 0 until two reports a measurable time apart.
fn rate(bytes: u64, span: Duration) -> u64 {
    let ms = span.as_millis();
    if ms == 0 {
        return 0;
    }
    (u128::from(bytes) * 1000 / ms).min(u128::from(u64::MAX)) as u64
}

/// Every resync the leader remembers, by unit, then node.
#[derive(Debug, Default)]
pub struct ResyncTracker {
    tracked: BTreeMap<UnitId, BTreeMap<NodeId, Tracked>>,
    len: usize,
}

/// Figures for the metrics: resyncs under way and the bytes they still have to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningResyncs {
    pub count: u64,
    pub bytes_remaining: u64,
}

impl ResyncTracker {
    /// Records a report from `node` about its copy of `unit`, whose status is `copy_status` now.
    /// `exists(unit, node)` says whether a copy still exists, to forget those that do not when
    /// the memory is full.
    pub fn record(
        &mut self,
        unit: UnitId,
        node: &NodeId,
        report: ResyncProgress,
        copy_status: CopyStatus,
        now: Instant,
        exists: impl Fn(UnitId, &NodeId) -> bool,
    ) -> Result<(), Refusal> {
        let known = self
            .tracked
            .get(&unit)
            .is_some_and(|n| n.contains_key(node));
        if !known && self.len >= MAX_TRACKED_RESYNCS {
            self.forget_missing(exists);
            if self.len >= MAX_TRACKED_RESYNCS {
                return Err(Refusal::Unavailable(format!(
                    "the leader already tracks {MAX_TRACKED_RESYNCS} resyncs; progress of this \
                     one is not shown"
                )));
            }
        }
        let fresh = Tracked {
            started: now,
            first_bytes_done: report.bytes_done,
            last_at: now,
            last: report,
            copy_status,
        };
        let copies = self.tracked.entry(unit).or_default();
        match copies.get_mut(node) {
            Some(tracked) if !tracked.starts_new_resync(&report, copy_status) => {
                tracked.last_at = tracked.last_at.max(now);
                tracked.last = report;
                tracked.copy_status = copy_status;
            }
            Some(tracked) => *tracked = fresh,
            None => {
                copies.insert(node.clone(), fresh);
                self.len += 1;
            }
        }
        Ok(())
    }

    fn forget_missing(&mut self, exists: impl Fn(UnitId, &NodeId) -> bool) {
        self.tracked.retain(|unit, copies| {
            copies.retain(|node, _| exists(*unit, node));
            !copies.is_empty()
        });
        self.len = self.tracked.values().map(BTreeMap::len).sum();
    }

    /// The resync of `copy` of `unit` as the status shows it at `now`, if the leader heard of one.
    pub fn status(&self, unit: UnitId, copy: &Copy, now: Instant) -> Option<ResyncStatus> {
        let tracked = self.tracked.get(&unit)?.get(&copy.node)?;
        Some(tracked.status(copy.status, now))
    }

    /// Resyncs not finished whose copy is still `stale` or `syncing` (`status_of` looks it up;
    /// `None`: the copy is gone).
    pub fn running(
        &self,
        status_of: impl Fn(UnitId, &NodeId) -> Option<CopyStatus>,
    ) -> RunningResyncs {
        let mut running = RunningResyncs::default();
        for (unit, copies) in &self.tracked {
            for (node, tracked) in copies {
                let under_way =
                    !tracked.last.finished && status_of(*unit, node).is_some_and(resyncing);
                if under_way {
                    running.count += 1;
                    running.bytes_remaining += tracked
                        .last
                        .bytes_total
                        .saturating_sub(tracked.last.bytes_done);
                }
            }
        }
        running
    }
}

#[cfg(test)]
mod tests {
    use vbs_wire::types::Vba;

    use super::*;
    use crate::state::fixtures::node;

    const MIB: u64 = 1 << 20;

    fn report(bytes_done: u64, bytes_total: u64, finished: bool) -> ResyncProgress {
        ResyncProgress {
            records_done: bytes_done / 4096,
            records_total: bytes_total / 4096,
            bytes_done,
            bytes_total,
            full: false,
            finished,
        }
    }

    fn copy(name: &str, status: CopyStatus) -> Copy {
        Copy {
            node: node(name),
            status,
            last_vba: Vba::ZERO,
            accepted: None,
        }
    }

    fn record(
        tracker: &mut ResyncTracker,
        unit: UnitId,
        progress: ResyncProgress,
        status: CopyStatus,
        at: Instant,
    ) {
        tracker
            .record(unit, &node("n2"), progress, status, at, |_, _| true)
            .expect("recorded");
    }

    #[test]
    fn rate_and_time_left_come_from_the_first_and_latest_reports() {
        let mut tracker = ResyncTracker::default();
        let unit = UnitId::new(1, 0);
        let t0 = Instant::now();
        record(
            &mut tracker,
            unit,
            report(0, 100 * MIB, false),
            CopyStatus::Syncing,
            t0,
        );
        let syncing = copy("n2", CopyStatus::Syncing);
        let first = tracker.status(unit, &syncing, t0).expect("tracked");
        assert_eq!(
            (first.bytes_per_sec, first.eta_secs),
            (0, None),
            "one report, no rate"
        );

        let t2 = t0 + Duration::from_secs(2);
        record(
            &mut tracker,
            unit,
            report(20 * MIB, 100 * MIB, false),
            CopyStatus::Syncing,
            t2,
        );
        let now = t2 + Duration::from_millis(500);
        let status = tracker.status(unit, &syncing, now).expect("tracked");
        assert_eq!(status.bytes_per_sec, 10 * MIB);
        assert_eq!(status.eta_secs, Some(8));
        assert_eq!(status.elapsed_ms, 2500, "a running resync's clock runs");
        assert_eq!(status.progress.bytes_done, 20 * MIB);
        assert_eq!(
            tracker
                .running(|_, _| Some(CopyStatus::Syncing))
                .bytes_remaining,
            80 * MIB
        );
    }

    #[test]
    fn the_finished_report_stays_visible_after_the_copy_is_current() {
        let mut tracker = ResyncTracker::default();
        let unit = UnitId::new(1, 0);
        let t0 = Instant::now();
        record(
            &mut tracker,
            unit,
            report(0, 8 * MIB, false),
            CopyStatus::Syncing,
            t0,
        );
        let t4 = t0 + Duration::from_secs(4);
        // The final report may arrive after the copy was committed current.
        record(
            &mut tracker,
            unit,
            report(8 * MIB, 8 * MIB, true),
            CopyStatus::Current,
            t4,
        );
        let later = t4 + Duration::from_secs(60);
        let status = tracker
            .status(unit, &copy("n2", CopyStatus::Current), later)
            .expect("still shown");
        assert!(status.progress.finished);
        assert_eq!(
            status.elapsed_ms, 4000,
            "the clock stopped at the last report"
        );
        assert_eq!(status.bytes_per_sec, 2 * MIB);
        assert_eq!(status.eta_secs, None);
        assert_eq!(
            tracker.running(|_, _| Some(CopyStatus::Current)),
            RunningResyncs::default()
        );
    }

    #[test]
    fn a_report_going_backwards_or_after_the_copy_was_current_starts_a_new_resync() {
        let mut tracker = ResyncTracker::default();
        let unit = UnitId::new(1, 0);
        let t0 = Instant::now();
        let syncing = copy("n2", CopyStatus::Syncing);
        record(
            &mut tracker,
            unit,
            report(0, 10 * MIB, false),
            CopyStatus::Syncing,
            t0,
        );
        record(
            &mut tracker,
            unit,
            report(6 * MIB, 10 * MIB, false),
            CopyStatus::Syncing,
            t0 + Duration::from_secs(1),
        );
        // The node restarted its resync from scratch.
        let t2 = t0 + Duration::from_secs(2);
        record(
            &mut tracker,
            unit,
            report(MIB, 10 * MIB, false),
            CopyStatus::Stale,
            t2,
        );
        let status = tracker.status(unit, &syncing, t2).expect("tracked");
        assert_eq!(
            (status.elapsed_ms, status.bytes_per_sec),
            (0, 0),
            "a new resync"
        );

        // It completes without a finished report; later the copy falls behind again.
        record(
            &mut tracker,
            unit,
            report(10 * MIB, 10 * MIB, false),
            CopyStatus::Current,
            t0 + Duration::from_secs(3),
        );
        let t9 = t0 + Duration::from_secs(9);
        record(
            &mut tracker,
            unit,
            report(10 * MIB, 12 * MIB, false),
            CopyStatus::Stale,
            t9,
        );
        let status = tracker.status(unit, &syncing, t9).expect("tracked");
        assert_eq!(status.elapsed_ms, 0, "the copy left the resync in between");
        assert_eq!(status.progress.bytes_total, 12 * MIB);

        // A finished resync followed by a running one is a new one too.
        let mut finished = ResyncTracker::default();
        record(
            &mut finished,
            unit,
            report(MIB, MIB, true),
            CopyStatus::Syncing,
            t0,
        );
        record(
            &mut finished,
            unit,
            report(2 * MIB, 4 * MIB, false),
            CopyStatus::Syncing,
            t9,
        );
        let status = finished.status(unit, &syncing, t9).expect("tracked");
        assert_eq!((status.elapsed_ms, status.progress.finished), (0, false));
    }

    #[test]
    fn an_unfinished_resync_whose_copy_is_no_longer_syncing_shows_no_time_left() {
        let mut tracker = ResyncTracker::default();
        let unit = UnitId::new(1, 0);
        let t0 = Instant::now();
        record(
            &mut tracker,
            unit,
            report(0, 10 * MIB, false),
            CopyStatus::Syncing,
            t0,
        );
        let t1 = t0 + Duration::from_secs(1);
        record(
            &mut tracker,
            unit,
            report(MIB, 10 * MIB, false),
            CopyStatus::Syncing,
            t1,
        );
        let status = tracker
            .status(
                unit,
                &copy("n2", CopyStatus::Down),
                t1 + Duration::from_secs(30),
            )
            .expect("tracked");
        assert_eq!((status.eta_secs, status.elapsed_ms), (None, 1000));
    }

    #[test]
    fn the_memory_is_bounded_and_forgets_copies_that_are_gone_first() {
        let mut tracker = ResyncTracker::default();
        let t0 = Instant::now();
        for slice in 0..MAX_TRACKED_RESYNCS as u32 {
            record(
                &mut tracker,
                UnitId::new(1, slice),
                report(0, MIB, false),
                CopyStatus::Stale,
                t0,
            );
        }
        let extra = UnitId::new(2, 0);
        let full = tracker.record(
            extra,
            &node("n2"),
            report(0, MIB, false),
            CopyStatus::Stale,
            t0,
            |_, _| true,
        );
        assert!(matches!(full, Err(Refusal::Unavailable(_))), "{full:?}");
        // Reports about a copy already tracked are still taken.
        record(
            &mut tracker,
            UnitId::new(1, 0),
            report(MIB, MIB, true),
            CopyStatus::Syncing,
            t0,
        );
        // Volume 1 was deleted: its entries make room.
        tracker
            .record(
                extra,
                &node("n2"),
                report(0, MIB, false),
                CopyStatus::Stale,
                t0,
                |u, _| u.volume.0 != 1,
            )
            .expect("room after forgetting");
        assert_eq!(tracker.len, 1);
    }
}
