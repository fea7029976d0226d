//! The secondary side of replication, and the primary's answers to resend and catch-up requests.
//!
//! A secondary applies records strictly in VBA order. A frame that overtook an earlier one waits
//! up to `reorder_wait` for it; after that the gap is a hole, and the secondary asks the primary
//! to resend it (from the primary's window of unacknowledged records). A record that meets an
//! older generation's record at the same VBA truncates that unacknowledged tail first, as a Raft
//! follower does on a term conflict.

use std::sync::Arc;
use std::time::Duration;

use client::api::Role;
use client::proto::{ErrorCode, RecordBody, Request, Response, WireError, WireRecord};
use client::types::{Generation, Vba};
use tracing::{info, warn};

use super::errors::{from_engine, from_join};
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::{EngineError, Op, Ticket};
use crate::replication::order::{consecutive, place, Placement};

pub(super) fn to_op(body: RecordBody) -> Op {
    match body {
        RecordBody::Write { lba, data } => Op::Write { lba, data },
        RecordBody::Trim { lba, blocks } => Op::Trim { lba, blocks },
    }
}

/// How long a frame waits for its turn while this copy is resyncing.
const JOIN_TURN_WAIT: Duration = Duration::from_secs(5);

pub async fn replicate(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    committed: Vba,
    records: Vec<WireRecord>,
) -> Result<Response, WireError> {
    if !consecutive(records.iter().map(|r| r.vba)) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "replicated records must be consecutive",
        ));
    }
    if records.iter().any(|r| r.generation != generation) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "replicated records carry the frame's generation",
        ));
    }
    let assignment = runtime.assignment().ok_or_else(|| {
        WireError::new(
            ErrorCode::Unavailable,
            format!("unit {} is not assigned here yet", runtime.id),
        )
    })?;
    if assignment.role == Role::Primary && generation <= assignment.generation {
        return Err(WireError::new(
            ErrorCode::Conflict,
            format!(
                "this node is the primary of slice {} at generation {}",
                runtime.id, assignment.generation
            ),
        ));
    }
    let Some(first) = records.first().map(|r| r.vba) else {
        // No records: the primary says where its generation starts (`committed`).
        generation_starts(runtime, &assignment, generation, committed).await?;
        return Ok(Response::Replicate {
            last_vba: runtime.engine.last_vba(),
        });
    };
    match place(
        assignment.generation,
        runtime.engine.next_vba(),
        generation,
        first,
    ) {
        Placement::Refuse { current } => return Err(runtime.stale_generation(generation, current)),
        Placement::Apply => {}
        Placement::Gap { .. } => {
            // A copy that just joined may get the primary's first forwarded writes before it
            // has applied the records the join sent: give it time to.
            let wait = if runtime.resyncing.load(std::sync::atomic::Ordering::Acquire) {
                JOIN_TURN_WAIT
            } else {
                node.config.reorder_wait
            };
            tracing::debug!(unit = %runtime.id, %first, expected = %runtime.engine.next_vba(), ?wait, "a frame waits for its turn");
            if !wait_for_turn(runtime, first, wait).await {
                fill_gap(node, runtime, generation, first).await?;
            }
        }
    }
    tracing::debug!(unit = %runtime.id, %first, "applying a frame");
    apply_in_order(runtime, records).await?;
    tracing::debug!(unit = %runtime.id, %first, "applied a frame");
    runtime.engine.set_stable_vba(committed);
    Ok(Response::Replicate {
        last_vba: runtime.engine.last_vba(),
    })
}

/// The primary of `generation` says its history for that generation starts after `start`. A
/// tail this copy holds past `start`, of an older generation, is not part of that history: it is
/// dropped before any record of `generation` is taken, so that none can be stacked onto it.
/// Records of the same generation at the same VBA are the same (one primary writes a
/// generation), so a copy already at `generation` has nothing to drop.
async fn generation_starts(
    runtime: &Arc<UnitRuntime>,
    assignment: &super::unit::Assignment,
    generation: Generation,
    start: Vba,
) -> Result<(), WireError> {
    if generation < assignment.generation {
        return Err(runtime.stale_generation(generation, assignment.generation));
    }
    let _applying = runtime.applying.lock().await;
    let engine = runtime.engine.clone();
    if engine.generation() >= generation || engine.last_vba() <= start {
        return Ok(());
    }
    let dropped = tokio::task::spawn_blocking(move || engine.truncate_after(start, generation))
        .await
        .map_err(from_join)?
        .map_err(from_engine)?;
    warn!(unit = %runtime.id, after = %start, dropped, %generation,
        "dropped an old generation's tail past where the new primary's generation starts");
    runtime.expected.send_replace(runtime.engine.next_vba());
    Ok(())
}

/// Waits until the engine expects `first` (the frames before it arrived), for at most `wait`.
async fn wait_for_turn(runtime: &UnitRuntime, first: Vba, wait: Duration) -> bool {
    let mut expected = runtime.expected.subscribe();
    tokio::time::timeout(wait, expected.wait_for(|next| *next >= first))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Asks the primary for the records before `first` this copy does not hold, and applies them.
async fn fill_gap(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    first: Vba,
) -> Result<(), WireError> {
    let after = Vba(runtime.engine.next_vba().0 - 1);
    let hole = |why: String| {
        WireError::new(
            ErrorCode::Hole,
            format!(
                "VBAs {}..{first} of unit {} are missing: {why}",
                after.next(),
                runtime.id
            ),
        )
        .with_detail(after.next().0)
    };
    let primary = runtime
        .assignment()
        .and_then(|a| a.primary().map(|p| p.addr.clone()))
        .ok_or_else(|| hole("the primary is not known".into()))?;
    let request = Request::ResendRange {
        unit: runtime.id,
        generation,
        after,
        until: Vba(first.0 - 1),
    };
    let response = node
        .peers
        .call(&primary, request, node.config.write_timeout)
        .await
        .map_err(|e| hole(e.to_string()))?;
    let Response::Records {
        records, through, ..
    } = response
    else {
        return Err(hole("unexpected answer to a resend".into()));
    };
    info!(unit = %runtime.id, from = %after.next(), %through, "filled a hole from the primary");
    if !records.is_empty() {
        apply_in_order(runtime, records).await?;
    }
    if runtime.engine.next_vba() < first {
        return Err(hole(format!("the primary resent up to VBA {through} only")));
    }
    Ok(())
}

/// Queues the records to the engine in VBA order and waits until they are durable.
async fn apply_in_order(
    runtime: &Arc<UnitRuntime>,
    records: Vec<WireRecord>,
) -> Result<(), WireError> {
    let applying = runtime.applying.lock().await;
    let mut last: Option<Ticket> = None;
    for record in records {
        let (vba, generation, op) = (record.vba, record.generation, to_op(record.body));
        let ticket = match runtime.engine.begin_apply(vba, generation, op.clone()) {
            Ok((_, ticket)) => ticket,
            Err(EngineError::Conflict { held, got, .. }) if got > held => {
                // A new primary's records meet an unacknowledged tail of the old generation.
                let engine = runtime.engine.clone();
                let after = Vba(vba.0 - 1);
                let dropped =
                    tokio::task::spawn_blocking(move || engine.truncate_after(after, got))
                        .await
                        .map_err(from_join)?
                        .map_err(from_engine)?;
                warn!(unit = %runtime.id, %after, dropped, generation = %got, "truncated an old generation's tail");
                runtime
                    .engine
                    .begin_apply(vba, generation, op)
                    .map_err(from_engine)?
                    .1
            }
            Err(e) => return Err(from_engine(e)),
        };
        last = Some(ticket);
    }
    runtime.expected.send_replace(runtime.engine.next_vba());
    drop(applying);
    if let Some(ticket) = last {
        ticket.wait_async().await.map_err(from_engine)?;
    }
    Ok(())
}

/// Primary: every VBA in `(after, until]` a secondary is missing, from the window.
pub fn resend(
    runtime: &UnitRuntime,
    generation: Generation,
    after: Vba,
    until: Vba,
) -> Result<Response, WireError> {
    primary_at(runtime, generation)?;
    let resend = runtime
        .window
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resend(after, until);
    Ok(Response::Records {
        through: resend.through,
        last_vba: runtime.engine.last_vba(),
        done: resend.through >= until,
        remaining_records: 0,
        remaining_bytes: 0,
        joined: false,
        records: resend.records,
    })
}

pub(super) fn primary_at(runtime: &UnitRuntime, generation: Generation) -> Result<(), WireError> {
    let assignment = runtime.assignment();
    match assignment {
        Some(a) if a.role == Role::Primary && a.generation == generation => Ok(()),
        Some(a) if generation < a.generation => Err(WireError::new(
            ErrorCode::StaleGeneration,
            format!("slice {} is at generation {}", runtime.id, a.generation),
        )
        .with_detail(a.generation.0)),
        _ => Err(WireError::new(
            ErrorCode::NotPrimary,
            format!(
                "this node is not the primary of slice {} at generation {generation}",
                runtime.id
            ),
        )),
    }
}
