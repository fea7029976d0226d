//! The secondary side of replication, and the primary's answers to resend and catch-up requests.
//! What a secondary does with a frame is decided in `replication::secondary`, without IO; this
//! module carries the frame in and the decision out.
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
use crate::replication::secondary::{self, FrameStep, GapWait, Refusal};

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
    let view = runtime.secondary_view();
    let frame = records.iter().map(|r| (r.vba, r.generation));
    match secondary::on_frame(&view, generation, committed, frame) {
        FrameStep::Refuse(refusal) => return Err(refused(runtime, generation, refusal)),
        FrameStep::StartGeneration { generation, start } => {
            runtime.note_announced(generation);
            generation_starts(runtime, generation, start).await?;
            return Ok(Response::Replicate {
                last_vba: runtime.engine.last_vba(),
            });
        }
        FrameStep::Apply => {}
        FrameStep::WaitForGap { after, until, wait } => {
            let wait = match wait {
                GapWait::Join => JOIN_TURN_WAIT,
                GapWait::Reorder => node.config.reorder_wait,
            };
            let first = until.next();
            tracing::debug!(unit = %runtime.id, %first, %after, ?wait, "a frame waits for its turn");
            if !wait_for_turn(runtime, first, wait).await {
                fill_gap(node, runtime, generation, first).await?;
            }
        }
    }
    apply_in_order(runtime, records).await?;
    runtime.engine.set_stable_vba(committed);
    Ok(Response::Replicate {
        last_vba: runtime.engine.last_vba(),
    })
}

/// The error a refused frame is answered with.
fn refused(runtime: &UnitRuntime, generation: Generation, refusal: Refusal) -> WireError {
    match refusal {
        Refusal::NotConsecutive => WireError::new(
            ErrorCode::BadRequest,
            "replicated records must be consecutive",
        ),
        Refusal::MixedGenerations => WireError::new(
            ErrorCode::BadRequest,
            "replicated records carry the frame's generation",
        ),
        Refusal::NotAssigned => WireError::new(
            ErrorCode::Unavailable,
            format!("unit {} is not assigned here yet", runtime.id),
        ),
        Refusal::Primary { generation } => WireError::new(
            ErrorCode::Conflict,
            format!(
                "this node is the primary of slice {} at generation {generation}",
                runtime.id
            ),
        ),
        Refusal::Stale { current } => runtime.stale_generation(generation, current),
    }
}

/// The primary of `generation` says its history for that generation starts after `start`. A
/// tail this copy holds past `start`, of an older generation, is not part of that history: it is
/// dropped before any record of `generation` is taken, so that none can be stacked onto it.
/// Records of the same generation at the same VBA are the same (one primary writes a
/// generation), so a copy already at `generation` has nothing to drop.
async fn generation_starts(
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    start: Vba,
) -> Result<(), WireError> {
    let _applying = runtime.applying.lock().await;
    let engine = runtime.engine.clone();
    let Some(truncate) =
        secondary::on_generation_start(engine.generation(), engine.last_vba(), generation, start)
    else {
        return Ok(());
    };
    let dropped = tokio::task::spawn_blocking(move || {
        engine.truncate_after(truncate.after, truncate.generation)
    })
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
    let Some((after, until)) = secondary::resend_range(runtime.engine.next_vba(), first) else {
        // The frames before it came meanwhile.
        return Ok(());
    };
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
        until,
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
            Err(conflict @ EngineError::Conflict { held, got, .. }) => {
                // A new primary's records meet an unacknowledged tail of the old generation.
                let Some(truncate) = secondary::on_conflict(vba, held, got) else {
                    return Err(from_engine(conflict));
                };
                let engine = runtime.engine.clone();
                let dropped = tokio::task::spawn_blocking(move || {
                    engine.truncate_after(truncate.after, truncate.generation)
                })
                .await
                .map_err(from_join)?
                .map_err(from_engine)?;
                warn!(unit = %runtime.id, after = %truncate.after, dropped, generation = %got, "truncated an old generation's tail");
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
