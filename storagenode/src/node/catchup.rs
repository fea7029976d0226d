//! The primary's side of a resync: streaming the live records a returning copy missed, and
//! joining it to the write path once it is nearly caught up.
//!
//! A copy pulls batches of `records_after(after)` from the primary's log. Overwritten records are
//! not sent (the newer ones are), so what is sent is what was missed, not the whole unit; a copy
//! that holds nothing gets every live block (a full resync). When the copy is close, it asks to
//! *join*: the primary stops numbering writes (its sequencer), waits until everything numbered is
//! durable, sends the rest of the log, and from the next VBA on forwards every write to the copy
//! and waits for it. So once the copy confirms it applied the rest, it holds every VBA the primary
//! acknowledged, and the primary reports it caught up.

use std::sync::Arc;

use tracing::{info, warn};
use vbs_wire::api::UnitGeneration;
use vbs_wire::proto::{ErrorCode, Response, WireError, WireRecord, MAX_RECORDS_PER_FRAME};
use vbs_wire::types::{Generation, NodeId, Vba};

use super::errors::{from_engine, from_join};
use super::repair;
use super::replica::primary_at;
use super::reports::Report;
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::EngineError;

/// The most records a join sends at once; a copy further behind keeps pulling first.
pub const MAX_JOIN_RECORDS: usize = 1024;

/// What a pull asked for.
pub struct Pull {
    pub generation: Generation,
    pub after: Vba,
    pub after_generation: Generation,
    pub max_bytes: u32,
    pub join: bool,
}

pub async fn serve(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    copy: NodeId,
    pull: Pull,
) -> Result<Response, WireError> {
    primary_at(runtime, pull.generation)?;
    let engine = &runtime.engine;
    if pull.after > engine.last_vba() && pull.after < engine.next_vba() {
        // The copy already holds records this primary numbered and has not yet made durable
        // itself: they are this primary's own, not a tail it never had.
        engine.drain_async().await.map_err(from_engine)?;
    }
    // A copy checks the histories agree once, on its first pull (later ones continue from
    // records this primary sent, and carry generation 0).
    let checked = pull.after_generation != Generation(0);
    let history_differs = pull.after > engine.last_vba()
        || (checked && engine.generation_at(pull.after) != pull.after_generation);
    if history_differs {
        // The copy holds a tail this primary never had (an old primary's unacknowledged
        // writes). Its records of `after_generation` agree with this primary's up to where that
        // generation ends here (one primary writes a generation); say where, and the copy drops
        // what follows or steps back to its previous generation.
        let agreed = engine
            .last_of_generation(pull.after_generation)
            .min(pull.after);
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "unit {}: the histories differ at VBA {}; they agree up to VBA {agreed} at most",
                runtime.id, pull.after
            ),
        )
        .with_detail(agreed.0));
    }
    if let Some(joined_at) = runtime.joined_at(&copy) {
        if pull.after.next() >= joined_at {
            // It holds everything up to its join point: the window counts that, or reads of
            // what was written before the join would wait for the next write to the slice.
            runtime.update_window(|window| window.acked(&copy, pull.after));
            return confirm(node, runtime, &copy, pull.generation).await;
        }
    }
    if !pull.join {
        let budget =
            (pull.max_bytes as usize).clamp(64 << 10, vbs_wire::proto::MAX_IO_BYTES as usize);
        return read_batch(
            node,
            runtime,
            pull.generation,
            pull.after,
            budget,
            MAX_RECORDS_PER_FRAME,
        )
        .await;
    }
    // Join: no write is numbered while the rest of the log is read and the copy added.
    let _sequenced = runtime.primary.sequencer.lock().await;
    engine.drain_async().await.map_err(from_engine)?;
    let response = read_batch(
        node,
        runtime,
        pull.generation,
        pull.after,
        usize::MAX,
        MAX_JOIN_RECORDS,
    )
    .await?;
    let Response::Records {
        done: true,
        through,
        remaining_records,
        remaining_bytes,
        records,
        last_vba,
        ..
    } = response
    else {
        return Ok(response);
    };
    let from = engine.next_vba();
    runtime.join(copy.clone(), from);
    info!(unit = %runtime.id, %copy, %from, records = records.len(), "a syncing copy joined");
    Ok(Response::Records {
        through,
        last_vba,
        done: true,
        remaining_records,
        remaining_bytes,
        joined: true,
        records,
    })
}

/// Reads live records after `after`, up to `budget` bytes and `max_records`. A damaged record is
/// repaired from another current copy first (`repair`): it is never sent.
async fn read_batch(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    after: Vba,
    budget: usize,
    max_records: usize,
) -> Result<Response, WireError> {
    let mut repairs = 0;
    loop {
        match read_batch_once(runtime, after, budget, max_records).await? {
            Err(damage) if repairs < MAX_BATCH_REPAIRS => {
                repairs += 1;
                repair::repair(node, runtime, generation, damage).await?;
            }
            Err(damage) => return Err(from_engine(damage)),
            Ok(response) => return Ok(response),
        }
    }
}

/// The most damaged records one batch repairs before it gives up.
const MAX_BATCH_REPAIRS: usize = 16;

async fn read_batch_once(
    runtime: &UnitRuntime,
    after: Vba,
    budget: usize,
    max_records: usize,
) -> Result<Result<Response, EngineError>, WireError> {
    let engine = runtime.engine.clone();
    tokio::task::spawn_blocking(move || {
        let last_vba = engine.last_vba();
        let mut records = Vec::new();
        let mut bytes = 0;
        let mut through = last_vba;
        for record in engine.records_after(after) {
            let record = match record {
                Ok(record) => record,
                Err(damage @ EngineError::Damaged { .. }) => return Ok(Err(damage)),
                Err(error) => return Err(from_engine(error)),
            };
            if record.vba > last_vba {
                break;
            }
            let size = record.op.record_bytes();
            if records.len() == max_records || bytes + size > budget {
                through = records.last().map_or(after, |r: &WireRecord| r.vba);
                break;
            }
            bytes += size;
            records.push(WireRecord::from(record));
        }
        let (remaining_records, remaining_bytes) = engine.live_after(through);
        Ok(Ok(Response::Records {
            through,
            last_vba,
            done: through >= last_vba,
            remaining_records,
            remaining_bytes,
            joined: false,
            records,
        }))
    })
    .await
    .map_err(from_join)?
}

/// The joined copy applied everything up to its join point: it holds every VBA this primary
/// acknowledged (all earlier ones came in the join, all later ones waited for it). Report it.
async fn confirm(
    node: &Node,
    runtime: &UnitRuntime,
    copy: &NodeId,
    generation: Generation,
) -> Result<Response, WireError> {
    let unit = UnitGeneration {
        unit: runtime.id,
        generation,
    };
    let target = Report::CaughtUp {
        target: copy.clone(),
    };
    match node.reports.report(target, unit).await {
        Ok(slice) => {
            if let Some(slice) = slice {
                runtime.update_slice(&slice);
            }
            info!(unit = %runtime.id, %copy, "reported a resynced copy caught up");
            let last_vba = runtime.engine.last_vba();
            Ok(Response::Records {
                through: last_vba,
                last_vba,
                done: true,
                remaining_records: 0,
                remaining_bytes: 0,
                joined: true,
                records: Vec::new(),
            })
        }
        Err(e) => {
            warn!(unit = %runtime.id, %copy, error = %e, "could not report a copy caught up");
            Err(WireError::new(
                ErrorCode::Unavailable,
                format!("reporting {copy} caught up: {e}"),
            ))
        }
    }
}
