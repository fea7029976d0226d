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

use tracing::{info, warn};
use vbs_wire::api::Role;
use vbs_wire::proto::{ErrorCode, PeerRequest, Request, Response, WireError, WireRecord};
use vbs_wire::types::{Generation, Vba};

use super::errors::{from_engine, from_join};
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::{EngineError, Op, Ticket, Unit};
use crate::replication::secondary::{self, FrameStep, GapWait, Refusal, Truncate};

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
    let applying = runtime.secondary.applying.lock().await;
    let engine = &runtime.engine;
    let held = engine.generation();
    if let Some(truncate) =
        secondary::on_generation_start(held, engine.last_vba(), generation, start)
    {
        let why = "an old generation's tail past where the new primary's generation starts";
        drop_tail(runtime, &applying, truncate, why).await?;
    }
    Ok(())
}

/// Drops what the copy holds after `truncate.after` and starts `truncate.generation` there;
/// `applying` is the unit's apply lock, held. Logs the drop, saying what was dropped (`what`).
pub(super) async fn drop_tail(
    runtime: &Arc<UnitRuntime>,
    _applying: &tokio::sync::MutexGuard<'_, ()>,
    truncate: Truncate,
    what: &str,
) -> Result<(), WireError> {
    let engine = runtime.engine.clone();
    let Truncate { after, generation } = truncate;
    let dropped = tokio::task::spawn_blocking(move || engine.truncate_after(after, generation))
        .await
        .map_err(from_join)?
        .map_err(from_engine)?;
    runtime
        .secondary
        .expected
        .send_replace(runtime.engine.next_vba());
    warn!(unit = %runtime.id, %after, dropped, %generation, "dropped {what}");
    Ok(())
}

/// How a record is taken by the engine, in [`apply_records`].
pub(super) enum Taken {
    /// Queued: durable once its ticket is.
    Queued(Ticket),
    /// The copy holds it already.
    Held,
    /// It meets another generation's record: drop the tail first, then take it again.
    Conflict(Truncate),
}

/// Queues `records` to the engine in VBA order under the unit's apply lock, each through `take`
/// (dropping an old tail first where it says so), then waits until they are durable: how a
/// secondary applies a frame and a resync applies a pull.
pub(super) async fn apply_records(
    runtime: &Arc<UnitRuntime>,
    records: Vec<WireRecord>,
    mut take: impl FnMut(&Arc<Unit>, WireRecord) -> Result<Taken, WireError>,
) -> Result<(), WireError> {
    let applying = runtime.secondary.applying.lock().await;
    let mut last: Option<Ticket> = None;
    for record in records {
        let taken = match take(&runtime.engine, record.clone())? {
            Taken::Conflict(truncate) => {
                let what = "an old generation's tail that a newer record met";
                drop_tail(runtime, &applying, truncate, what).await?;
                take(&runtime.engine, record)?
            }
            taken => taken,
        };
        match taken {
            Taken::Queued(ticket) => last = Some(ticket),
            Taken::Held => {}
            Taken::Conflict(truncate) => {
                return Err(WireError::new(
                    ErrorCode::Conflict,
                    format!(
                        "unit {}: a record still meets another generation's after dropping the tail after VBA {}",
                        runtime.id, truncate.after
                    ),
                ))
            }
        }
    }
    runtime
        .secondary
        .expected
        .send_replace(runtime.engine.next_vba());
    drop(applying);
    if let Some(ticket) = last {
        ticket.wait_async().await.map_err(from_engine)?;
    }
    Ok(())
}

/// Waits until the engine expects `first` (the frames before it arrived), for at most `wait`.
async fn wait_for_turn(runtime: &UnitRuntime, first: Vba, wait: Duration) -> bool {
    let mut expected = runtime.secondary.expected.subscribe();
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
    let request = Request::Peer(PeerRequest::ResendRange {
        unit: runtime.id,
        generation,
        after,
        until,
    });
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

/// Applies a frame's records in VBA order (a newer generation's record drops the old tail it
/// meets) and waits until they are durable.
async fn apply_in_order(
    runtime: &Arc<UnitRuntime>,
    records: Vec<WireRecord>,
) -> Result<(), WireError> {
    apply_records(runtime, records, |engine, record| {
        let (vba, generation) = (record.vba, record.generation);
        match engine.begin_apply(vba, generation, Op::from(record.body)) {
            Ok((_, ticket)) => Ok(Taken::Queued(ticket)),
            Err(conflict @ EngineError::Conflict { held, got, .. }) => {
                secondary::on_conflict(vba, held, got)
                    .map(Taken::Conflict)
                    .ok_or_else(|| from_engine(conflict))
            }
            Err(e) => Err(from_engine(e)),
        }
    })
    .await
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
        .primary
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
