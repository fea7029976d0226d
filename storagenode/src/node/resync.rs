//! A copy's side of a resync: a `stale` copy tells the database it is `syncing`, pulls from the
//! primary every live record after its own last VBA (rate-limited, progress reported), joins the
//! write path when nearly caught up, and confirms; the primary then reports it caught up and the
//! database marks it `current` (see `catchup` for the primary's side).
//!
//! The first pull carries the generation the copy holds at its last VBA. If the primary's history
//! differs there (the copy holds an old primary's unacknowledged tail), the copy truncates back to
//! what every copy held, and pulls from there. A copy that holds nothing gets every live block: a
//! full resync, by the same path. A copy whose history differs even below what every copy was
//! known to hold (its primary lost a torn tail that only it had, and wrote on) is dropped, and
//! created again empty for a full resync: it is not current, so nothing counts on what it held.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vbs_wire::api::{CopyStatus, ResyncProgress, Role, UnitGeneration};
use vbs_wire::conn::DataError;
use vbs_wire::managers::ManagerError;
use vbs_wire::proto::{ErrorCode, PeerRequest, Request, Response, WireError, WireRecord};
use vbs_wire::types::{Generation, Vba};

use super::catchup::MAX_JOIN_RECORDS;
use super::errors::from_engine;
use super::replica::{self, Taken};
use super::reports::Report;
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::record::log_bytes;
use crate::engine::Op;
use crate::replication::secondary::{self, Agreed, Probe};

/// Bytes asked for per pull.
const PULL_BYTES: u32 = 1 << 20;
/// How long one pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often progress is reported to the database.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Attempts of one resync before it is left for the next heartbeat to start again.
const ATTEMPTS: u32 = 5;

/// Starts a resync of `runtime` unless one is running. It says `syncing` at once (gathered with
/// the other units' reports into one notification), then waits for a turn to pull: at most
/// [`super::NodeConfig::resync_parallel`] units pull at a time.
pub fn start(node: &Arc<Node>, runtime: &Arc<UnitRuntime>) {
    if !runtime.begin_resync() {
        return;
    }
    let (node, runtime) = (node.clone(), runtime.clone());
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            if !wants_resync(&runtime) {
                break;
            }
            let resynced = async {
                report_syncing(&node, &runtime).await?;
                let turn = node
                    .resync_turns
                    .acquire()
                    .await
                    .map_err(|_| ResyncError::ShuttingDown)?;
                resync(&node, &runtime, turn).await
            };
            match resynced.await {
                Ok(Resynced::CaughtUp) => break,
                Ok(Resynced::Diverged { stable }) => {
                    // Not current in the database (it is syncing), so nothing counts on what it
                    // holds: it is dropped, and the next heartbeat creates it empty for a full
                    // resync.
                    warn!(unit = %runtime.id, %stable,
                        "the history differs from the primary's below the VBA every copy was known to hold: emptying this copy for a full resync");
                    super::membership::drop_unit(&node, &runtime, "its history diverged").await;
                    break;
                }
                Err(e) => {
                    warn!(unit = %runtime.id, attempt, error = %e, "resync interrupted");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        runtime.end_resync();
    });
}

/// A `stale` copy tells the database it starts catching up, which makes it `syncing`.
async fn report_syncing(node: &Node, runtime: &UnitRuntime) -> Result<(), ResyncError> {
    let assignment = runtime.assignment().ok_or(ResyncError::NotAssigned)?;
    if assignment.status != CopyStatus::Stale {
        return Ok(());
    }
    let unit = UnitGeneration {
        unit: runtime.id,
        generation: assignment.generation,
    };
    let slice = node
        .reports
        .report(Report::Syncing, unit)
        .await
        .map_err(ResyncError::Report)?;
    if let Some(slice) = slice {
        runtime.update_slice(&slice);
    }
    Ok(())
}

/// Whether the database wants this copy to catch up.
pub fn wants_resync(runtime: &UnitRuntime) -> bool {
    runtime.assignment().is_some_and(|a| {
        a.role == Role::Secondary && matches!(a.status, CopyStatus::Stale | CopyStatus::Syncing)
    })
}

/// Paces a resync to a byte rate.
struct Pace {
    started: Instant,
    rate_bytes_per_sec: u64,
}

impl Pace {
    async fn after(&self, bytes_done: u64) {
        let due = Duration::from_secs_f64(bytes_done as f64 / self.rate_bytes_per_sec as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Why a resync stopped before the copy caught up; it is tried again after a pause.
#[derive(Debug, thiserror::Error)]
enum ResyncError {
    #[error("the copy is not assigned here")]
    NotAssigned,
    #[error("the slice has no primary")]
    NoPrimary,
    #[error("the copy is {}, not syncing", .0.as_str())]
    NotSyncing(CopyStatus),
    #[error("reporting syncing: {0}")]
    Report(ManagerError),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("pulling from the primary: {0}")]
    Pull(DataError),
    #[error("unexpected answer {0}")]
    Unexpected(String),
    /// This copy's engine could not take the records, or drop a tail.
    #[error("{}", .0.message)]
    Local(#[from] WireError),
}

/// How a resync ended.
enum Resynced {
    CaughtUp,
    /// The copy's history differs from the primary's below `stable`, the VBA every copy was
    /// known to hold: the primary lost what this copy was told was everywhere (a torn tail on
    /// the only current copy), and served on from there. This copy cannot catch up by dropping a
    /// tail; it must start again empty.
    Diverged {
        stable: Vba,
    },
}

/// Pulls until caught up. `turn` is given back once the copy joined: what is left, the
/// confirmation, moves no data, and the confirmations of many units then go to the database
/// together.
async fn resync(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    turn: tokio::sync::SemaphorePermit<'_>,
) -> Result<Resynced, ResyncError> {
    let mut turn = Some(turn);
    let assignment = runtime.assignment().ok_or(ResyncError::NotAssigned)?;
    let generation = assignment.generation;
    let unit = UnitGeneration {
        unit: runtime.id,
        generation,
    };
    let primary = assignment
        .primary()
        .ok_or(ResyncError::NoPrimary)?
        .addr
        .clone();
    if assignment.status != CopyStatus::Syncing {
        return Err(ResyncError::NotSyncing(assignment.status));
    }
    let engine = &runtime.engine;
    let start_vba = engine.last_vba();
    info!(unit = %runtime.id, from = %start_vba, %primary, "resync starting");
    let mut progress = ResyncProgress {
        full: start_vba == Vba::ZERO,
        ..ResyncProgress::default()
    };
    let pace = Pace {
        started: Instant::now(),
        rate_bytes_per_sec: node.config.resync_rate_bytes,
    };
    let mut after = start_vba;
    // The first pull checks the histories agree at `after`; later ones continue from there.
    let mut after_generation = engine.generation_at(after);
    // After a conflict, until a pull agrees with the primary: `after` is then behind this copy's
    // own end, and what lies past it must go.
    let mut probing = false;
    // A copy that missed nothing gets an empty first pull, then joins: no record moves.
    let mut join = false;
    // Progress is reported once a second, from a second in: a resync that ends sooner reports
    // only its end.
    let mut reported = Instant::now();
    loop {
        let request = Request::Peer(PeerRequest::CatchUp {
            unit: runtime.id,
            generation,
            after,
            after_generation,
            max_bytes: PULL_BYTES,
            join,
        });
        let response = match node.peers.call(&primary, request, PULL_TIMEOUT).await {
            Ok(response) => response,
            Err(DataError::Remote { error, .. }) if error.code == ErrorCode::Conflict => {
                // The histories differ at `after`; the primary says up to where this copy's
                // generation there agrees with its own. Probe there, or before this copy's run
                // of that generation if they share none of it; the first probe that agrees
                // says where to drop the tail.
                let agreed = Vba(error.detail);
                let run_start = engine.run_start(after);
                match secondary::on_histories_differ(after, agreed, run_start, engine.stable_vba())
                {
                    Probe::At { after: probe } => after = probe,
                    Probe::Diverged { stable } => return Ok(Resynced::Diverged { stable }),
                }
                after_generation = engine.generation_at(after);
                probing = true;
                continue;
            }
            Err(e) => return Err(ResyncError::Pull(e)),
        };
        let Response::Records {
            through,
            done,
            remaining_records,
            remaining_bytes,
            joined,
            records,
            ..
        } = response
        else {
            return Err(ResyncError::Unexpected(format!("{response:?}")));
        };
        if std::mem::take(&mut probing) {
            // The first pull that agrees with the primary: what this copy holds past `after`
            // may be a tail the primary never had.
            let replacing = records.first().map_or(generation, |r| r.generation);
            let history = engine.generations();
            match secondary::on_agreeing_pull(after, engine.last_vba(), replacing, &history) {
                Agreed::Keep => {}
                Agreed::Truncate(truncate) => {
                    let applying = runtime.secondary.applying.lock().await;
                    let what = "a tail the primary does not have";
                    replica::drop_tail(runtime, &applying, truncate, what).await?;
                }
                Agreed::ProbeAt { after: probe } => {
                    after = probe;
                    after_generation = engine.generation_at(after);
                    probing = true;
                    continue;
                }
            }
        }
        let count = records.len() as u64;
        let bytes: u64 = records.iter().map(|r| log_bytes(&r.body) as u64).sum();
        apply(runtime, records).await?;
        progress.records_done += count;
        progress.bytes_done += bytes;
        progress.records_total = progress.records_done + remaining_records;
        progress.bytes_total = progress.bytes_done + remaining_bytes;
        runtime.set_resync_progress(progress);
        after = after.max(through);
        after_generation = Generation(0);
        if joined && join {
            // Everything up to the join point is durable here: confirm, so the primary reports
            // this copy caught up.
            join = false;
            drop(turn.take());
            continue;
        }
        if joined {
            runtime.mark_current();
            progress.finished = true;
            runtime.set_resync_progress(progress);
            node.reports.progress(unit, progress);
            info!(unit = %runtime.id, records = progress.records_done, bytes = progress.bytes_done,
                full = progress.full, "resync finished");
            return Ok(Resynced::CaughtUp);
        }
        join = done && remaining_records as usize <= MAX_JOIN_RECORDS;
        if reported.elapsed() >= REPORT_EVERY {
            node.reports.progress(unit, progress);
            reported = Instant::now();
        }
        pace.after(progress.bytes_done).await;
    }
}

/// Applies pulled records (skipping any this copy already holds) and waits until durable.
async fn apply(runtime: &Arc<UnitRuntime>, records: Vec<WireRecord>) -> Result<(), ResyncError> {
    #[cfg(feature = "bugs")]
    if crate::bugs::enabled(crate::bugs::Bug::ResyncSkipsRecords) {
        return Ok(());
    }
    replica::apply_records(runtime, records, |engine, record| {
        if record.vba < engine.next_vba() {
            return Ok(Taken::Held);
        }
        engine
            .begin_ingest(record.vba, record.generation, Op::from(record.body))
            .map(Taken::Queued)
            .map_err(from_engine)
    })
    .await
    .map_err(ResyncError::Local)
}
