//! Scrub: every live record of every copy read back and checked, damage repaired from a good
//! copy (`repair`), and the copies compared without moving their data.
//!
//! A slice's primary runs its scrub, range by range of about [`RANGE_RECORDS`] live records up
//! to the VBA every copy holds (the stable VBA, fixed when the scrub starts). For each range it
//! reads its own records, and asks each current copy for its digest of the same range
//! (`ScrubRange`): the copy reads and checks its own records, repairs what is damaged, and
//! answers with a CRC32C over each record's VBA, generation and content checksum. Only digests
//! cross the network while copies agree: 28 bytes a range, about 7 bytes per MiB scrubbed. A
//! range whose digests differ is compared again after a moment (a write that overwrote a block
//! of the range may have reached one copy first), and counted as a mismatch if it still
//! differs.
//!
//! Scrubs run in the background, each unit this node is primary of once per `--scrub-interval`,
//! and on demand (`vbs scrub NAME`, `ClientRequest::Scrub`); all of a node's scrub reads share one
//! budget of `--scrub-rate` bytes per second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};
use vbs_wire::api::{CopyStatus, ScrubStatus, UnitScrub};
use vbs_wire::conn::DataError;
use vbs_wire::proto::{
    ErrorCode, PeerRequest, Request, Response, ScrubEntry, ScrubReport, WireError,
};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::errors::{from_engine, from_join};
use super::repair;
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::ScrubStep;

/// Live records per compared range: about 4 MiB of data.
pub const RANGE_RECORDS: u64 = 1024;
/// How often a range whose digests differ is compared again before it counts as a mismatch.
const MISMATCH_RETRIES: u32 = 2;
const MISMATCH_WAIT: Duration = Duration::from_millis(300);
/// How long a copy may take to digest one range.
const RANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the background scrub looks for units due.
const TICK: Duration = Duration::from_secs(1);

/// The node's scrubs: their shared read budget, when each unit was last scrubbed, and totals
/// for `/metrics`.
pub struct Scrubs {
    rate_bytes: u64,
    interval: Duration,
    /// When the budget next has room.
    next: tokio::sync::Mutex<Instant>,
    /// When each unit's last scrub (as primary) finished; units not listed count from the node's
    /// start.
    last: Mutex<BTreeMap<UnitId, Instant>>,
    /// What each unit's last whole scrub found, and whether the managers heard of it yet.
    results: Mutex<BTreeMap<UnitId, (ScrubStatus, bool)>>,
    started: Instant,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub mismatches: AtomicU64,
    pub passes: AtomicU64,
}

impl Scrubs {
    pub fn new(rate_bytes: u64, interval: Duration) -> Scrubs {
        let now = Instant::now();
        Scrubs {
            rate_bytes: rate_bytes.max(1),
            interval,
            next: tokio::sync::Mutex::new(now),
            last: Mutex::new(BTreeMap::new()),
            results: Mutex::new(BTreeMap::new()),
            started: now,
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            passes: AtomicU64::new(0),
        }
    }

    /// Waits until `bytes` more scrub reads fit the budget.
    async fn throttle(&self, bytes: u64) {
        let until = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate_bytes as f64);
            start
        };
        tokio::time::sleep_until(until).await;
    }

    fn due(&self, unit: UnitId, now: Instant) -> bool {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let since = last.get(&unit).copied().unwrap_or(self.started);
        now.duration_since(since) >= self.interval
    }

    fn finished(&self, unit: UnitId) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.insert(unit, Instant::now());
    }

    fn found(&self, unit: UnitId, report: &ScrubReport) {
        let status = ScrubStatus {
            finished_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            records: report.records,
            bytes: report.bytes,
            damaged: report.damaged,
            repaired: report.repaired,
            mismatched: report.mismatched,
        };
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results.insert(unit, (status, false));
    }

    /// Scrub results the managers have not heard of yet, for the next heartbeat.
    pub fn unreported(&self) -> Vec<UnitScrub> {
        let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        results
            .iter()
            .filter(|(_, (_, reported))| !reported)
            .map(|(unit, (status, _))| UnitScrub {
                unit: *unit,
                status: *status,
            })
            .collect()
    }

    /// Notes that the managers acknowledged these results.
    pub fn reported(&self, scrubs: &[UnitScrub]) {
        let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
        for scrub in scrubs {
            if let Some((status, reported)) = results.get_mut(&scrub.unit) {
                *reported |= *status == scrub.status;
            }
        }
    }
}

/// Scrubs the units this node is primary of as they fall due, one at a time.
pub async fn run(node: Arc<Node>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        for runtime in node.units() {
            let Some(assignment) = runtime.assignment() else {
                continue;
            };
            if !node.scrubs.due(runtime.id, Instant::now())
                || runtime.serving_primary(assignment.generation).is_err()
            {
                continue;
            }
            match scrub(&node, &runtime, assignment.generation).await {
                Ok(report) => log_report(runtime.id, &report, "background scrub"),
                Err(error) => {
                    warn!(unit = %runtime.id, %error, "a background scrub stopped; it runs again at the next interval");
                    node.scrubs.finished(runtime.id);
                }
            }
        }
    }
}

fn log_report(unit: UnitId, report: &ScrubReport, what: &str) {
    if report.damaged > 0 || report.mismatched > 0 {
        warn!(%unit, ?report, "{what} found damage or copies that disagree");
    } else {
        info!(%unit, records = report.records, bytes = report.bytes, copies = report.copies, "{what} found nothing wrong");
    }
}

/// Scrubs `runtime`'s slice as its primary at `generation`: its own copy and every current one.
pub async fn scrub(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
) -> Result<ScrubReport, WireError> {
    let assignment = runtime.serving_primary(generation)?;
    let copies: Vec<_> = assignment
        .copies
        .into_iter()
        .filter(|c| c.node != node.id && c.status == CopyStatus::Current)
        .collect();
    let through = runtime.engine.stable_vba();
    let mut report = ScrubReport {
        through,
        copies: copies.len() as u32,
        ..ScrubReport::default()
    };
    let mut after = Vba::ZERO;
    while after < through {
        // A primary that lost its role or lease stops: the new one scrubs the slice.
        runtime.serving_primary(generation)?;
        let mut step = check(
            node,
            runtime,
            generation,
            after,
            through,
            RANGE_RECORDS,
            &mut report,
        )
        .await?;
        for copy in &copies {
            let mut tries = 0;
            loop {
                let theirs =
                    digest_of(node, runtime, generation, &copy.addr, after, step.through).await;
                let (digest, damaged, repaired) = match theirs {
                    Ok(Response::ScrubDigest {
                        records,
                        bytes,
                        digest,
                        damaged,
                        repaired,
                    }) => {
                        report.records += records;
                        report.bytes += bytes;
                        (digest, damaged, repaired)
                    }
                    Ok(other) => {
                        warn!(unit = %runtime.id, copy = %copy.node, ?other, "a copy answered a scrub range with nonsense");
                        break;
                    }
                    Err(error) => {
                        warn!(unit = %runtime.id, copy = %copy.node, %error, "a copy could not scrub a range");
                        break;
                    }
                };
                report.damaged += damaged;
                report.repaired += repaired;
                if digest == step.digest {
                    break;
                }
                tries += 1;
                if tries > MISMATCH_RETRIES {
                    let mended = mend(
                        node,
                        runtime,
                        generation,
                        &copy.addr,
                        after,
                        &step,
                        &mut report,
                    )
                    .await;
                    if !mended {
                        report.mismatched += 1;
                        node.scrubs.mismatches.fetch_add(1, Ordering::Relaxed);
                        warn!(
                            unit = %runtime.id, copy = %copy.node, after = %after, through = %step.through,
                            "a copy's records differ from the primary's in this range, and replacing them did not make them agree"
                        );
                    }
                    break;
                }
                tokio::time::sleep(MISMATCH_WAIT).await;
                // Both sides again: the primary's own read may be the one that moved.
                (step, _) = check_all(node, runtime, generation, after, step.through).await?;
            }
        }
        node.scrubs.throttle(step.bytes).await;
        after = step.through;
    }
    node.scrubs.finished(runtime.id);
    node.scrubs.found(runtime.id, &report);
    node.scrubs.passes.fetch_add(1, Ordering::Relaxed);
    Ok(report)
}

/// [`check`] of the whole of `(after, through]`, and what it found there alone.
async fn check_all(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    after: Vba,
    through: Vba,
) -> Result<(ScrubStep, ScrubReport), WireError> {
    let mut report = ScrubReport::default();
    let step = check(
        node,
        runtime,
        generation,
        after,
        through,
        u64::MAX,
        &mut report,
    )
    .await?;
    Ok((step, report))
}

/// Has the copy at `addr` replace its records of `(after, step.through]` that differ from this
/// primary's (`ScrubRepair`); whether the copy's digest of the range then agrees.
async fn mend(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    addr: &str,
    after: Vba,
    step: &ScrubStep,
    report: &mut ScrubReport,
) -> bool {
    let request = Request::Peer(PeerRequest::ScrubRepair {
        unit: runtime.id,
        generation,
        after,
        through: step.through,
        entries: step.entries.clone(),
    });
    match node.peers.call(addr, request, RANGE_TIMEOUT).await {
        Ok(Response::ScrubDigest {
            digest,
            damaged,
            repaired,
            ..
        }) => {
            report.damaged += damaged + repaired;
            report.repaired += repaired;
            digest == step.digest
        }
        Ok(other) => {
            warn!(unit = %runtime.id, %addr, ?other, "a copy answered a scrub repair with nonsense");
            false
        }
        Err(error) => {
            warn!(unit = %runtime.id, %addr, %error, "a copy could not repair a scrub range");
            false
        }
    }
}

/// Reads and checks this copy's live records in `(after, through]` (up to `max_records`),
/// repairs the damaged ones and reads those again; counts into `report`.
async fn check(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    after: Vba,
    through: Vba,
    max_records: u64,
    report: &mut ScrubReport,
) -> Result<ScrubStep, WireError> {
    let read = |through| {
        let engine = runtime.engine.clone();
        async move {
            tokio::task::spawn_blocking(move || engine.scrub(after, through, max_records))
                .await
                .map_err(from_join)?
                .map_err(from_engine)
        }
    };
    let mut step = read(through).await?;
    if !step.damaged.is_empty() {
        report.damaged += step.damaged.len() as u64;
        let mut repaired = 0;
        for damage in std::mem::take(&mut step.damaged) {
            if repair::repair(node, runtime, generation, damage)
                .await
                .is_ok()
            {
                repaired += 1;
            }
        }
        report.repaired += repaired;
        if repaired > 0 {
            // The same range, now with the repaired records in the digest.
            step = read(step.through).await?;
            step.damaged.clear();
        }
    }
    node.scrubs
        .records
        .fetch_add(step.records, Ordering::Relaxed);
    node.scrubs.bytes.fetch_add(step.bytes, Ordering::Relaxed);
    report.records += step.records;
    report.bytes += step.bytes;
    Ok(step)
}

async fn digest_of(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    addr: &str,
    after: Vba,
    through: Vba,
) -> Result<Response, DataError> {
    let request = Request::Peer(PeerRequest::ScrubRange {
        unit: runtime.id,
        generation,
        after,
        through,
    });
    node.peers.call(addr, request, RANGE_TIMEOUT).await
}

/// Serves the primary's [`PeerRequest::ScrubRepair`]: each record of `(after, through]` whose VBA
/// the primary lists with another generation or content is replaced with the primary's, and
/// the range digested again. Records one side holds live and the other not cannot be mended
/// record by record; they count as damaged, not repaired.
pub async fn serve_repair(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    peer: Option<&NodeId>,
    generation: Generation,
    (after, through): (Vba, Vba),
    entries: Vec<ScrubEntry>,
) -> Result<Response, WireError> {
    let primary = current_copy(runtime, peer, generation)?
        .primary()
        .map(|p| p.addr.clone())
        .ok_or_else(|| WireError::new(ErrorCode::Unavailable, "the slice has no primary"))?;
    let (step, _) = check_all(node, runtime, generation, after, through).await?;
    let mine: BTreeMap<Vba, ScrubEntry> = step.entries.iter().map(|e| (e.vba, *e)).collect();
    let theirs: BTreeMap<Vba, ScrubEntry> = entries.iter().map(|e| (e.vba, *e)).collect();
    let (mut replaced, mut unmended) = (0, 0);
    for (vba, entry) in &theirs {
        match mine.get(vba) {
            Some(held) if held == entry => continue,
            Some(_) => {}
            None => {
                unmended += 1;
                continue;
            }
        }
        let good = match repair::fetch(node, runtime, generation, *vba, &primary).await {
            Ok(Some(good)) if good.op.content_crc() == entry.crc => good,
            _ => {
                unmended += 1;
                continue;
            }
        };
        let engine = runtime.engine.clone();
        let put = tokio::task::spawn_blocking(move || engine.replace(&good))
            .await
            .map_err(from_join)?;
        match put {
            Ok(true) => {
                replaced += 1;
                node.io_metrics.damaged(true);
                warn!(unit = %runtime.id, %vba, "replaced a record that differed from the primary's (found by a scrub)");
            }
            Ok(false) => {}
            Err(error) => {
                unmended += 1;
                warn!(unit = %runtime.id, %vba, %error, "could not replace a record that differs from the primary's");
            }
        }
    }
    unmended += mine.keys().filter(|vba| !theirs.contains_key(vba)).count() as u64;
    let (step, _) = check_all(node, runtime, generation, after, through).await?;
    Ok(Response::ScrubDigest {
        records: step.records,
        bytes: step.bytes,
        digest: step.digest,
        damaged: unmended,
        repaired: replaced,
    })
}

/// This copy's assignment, if `peer` is a storage node and this copy is current at
/// `generation`.
fn current_copy(
    runtime: &UnitRuntime,
    peer: Option<&NodeId>,
    generation: Generation,
) -> Result<super::unit::Assignment, WireError> {
    if peer.is_none() {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "scrub ranges are asked by primaries; clients send Scrub",
        ));
    }
    runtime.current_at(generation)
}

/// Serves the primary's [`PeerRequest::ScrubRange`]: this copy's digest of `(after, through]`, its
/// damaged records repaired first.
pub async fn serve_range(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    peer: Option<&NodeId>,
    generation: Generation,
    after: Vba,
    through: Vba,
) -> Result<Response, WireError> {
    current_copy(runtime, peer, generation)?;
    let (step, report) = check_all(node, runtime, generation, after, through).await?;
    node.scrubs.throttle(step.bytes).await;
    Ok(Response::ScrubDigest {
        records: step.records,
        bytes: step.bytes,
        digest: step.digest,
        damaged: report.damaged,
        repaired: report.repaired,
    })
}
