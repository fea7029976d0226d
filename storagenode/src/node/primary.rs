//! Client IO on the primary. A write goes through the five steps of the design:
//!
//! 1. check generation, role, status and lease (`UnitRuntime::serving_primary`);
//! 2. number the records: `Unit::begin_append` assigns the next VBAs;
//! 3. the engine appends them to the log (group commit) ...
//! 4. ... while, in the same VBA order, they are sent to every current and syncing secondary;
//! 5. acknowledge once the local append is durable and every current secondary has acknowledged
//!    or been marked stale by a committed notification (`replication::progress`).
//!
//! One file, past 600 lines, because it reads as the five steps above, in order, with the
//! read path that waits on the same window; the decisions themselves are in `replication`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tracing::{error, info, warn};
use vbs_wire::api::{CopyInfo, CopyStatus, Notification, Source, UnitGeneration};
use vbs_wire::conn::{Connection, DataError, Reply as Pending};
use vbs_wire::managers::ManagerError;
use vbs_wire::proto::{
    ErrorCode, PeerRequest, RecordBody, Request, Response, WireError, WireRecord,
    MAX_EXTENTS_PER_FRAME, MAX_IO_BYTES,
};
use vbs_wire::types::{Generation, Lba, NodeId, Vba, BLOCK_BYTES};

use super::errors::{from_engine, from_join};
use super::metrics::ReadPath;
use super::repair;
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::{EngineError, Op};
use crate::replication::progress::{Failure, Marked, Reply, Step, WriteProgress};

/// Reads `blocks` blocks from `lba`. A read returns only what every current copy holds: a block
/// whose newest record this primary numbered is not yet acknowledged by every copy waits for
/// that (up to `wait`), so that no read returns a write that a failover could still lose, nor
/// one a later read would not see.
pub async fn read(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    lba: Lba,
    blocks: u32,
    wait: Duration,
) -> Result<Response, WireError> {
    let assignment = runtime.serving_primary(generation)?;
    runtime.in_slice(&assignment, lba, u64::from(blocks))?;
    if u64::from(blocks) * BLOCK_BYTES > MAX_IO_BYTES {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("a read of {blocks} blocks"),
        ));
    }
    let deadline = tokio::time::Instant::now() + wait;
    // Each damaged block is repaired once (`repair`), then read again.
    let mut repairs = 0;
    loop {
        let newest =
            newest_held_by_every_copy(node, runtime, generation, lba, blocks.into(), deadline)
                .await?;
        // Blocks in the page cache are copied here; only a read that would wait for the disk
        // takes a blocking thread.
        let read = match runtime.engine.read_cached(lba, u64::from(blocks)) {
            Ok(Some(data)) => {
                node.io_metrics.read_path(ReadPath::PageCache);
                Ok(data)
            }
            Ok(None) => {
                node.io_metrics.read_path(ReadPath::Blocking);
                let engine = runtime.engine.clone();
                tokio::task::spawn_blocking(move || engine.read(lba, u64::from(blocks)))
                    .await
                    .map_err(from_join)?
            }
            Err(error) => Err(error),
        };
        let data = match read {
            Ok(data) => data,
            Err(damage @ EngineError::Damaged { .. }) if repairs <= blocks => {
                repairs += 1;
                repair::repair(node, runtime, generation, damage).await?;
                continue;
            }
            Err(error) => return Err(from_engine(error)),
        };
        // No block was written meanwhile (that would have raised the newest VBA): what was read
        // is what was waited for.
        if runtime.engine.newest_vba_in(lba, u64::from(blocks)) == newest {
            return Ok(Response::Read {
                data: Bytes::from(data),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "these blocks of slice {} were written again during every read",
                    runtime.id
                ),
            ));
        }
    }
}

/// Which of `blocks` blocks from `lba` hold data, from the index alone (no data is read). Like
/// a read, it answers only with what every current copy holds.
pub async fn allocation(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    lba: Lba,
    blocks: u64,
    wait: Duration,
) -> Result<Response, WireError> {
    let assignment = runtime.serving_primary(generation)?;
    runtime.in_slice(&assignment, lba, blocks)?;
    let deadline = tokio::time::Instant::now() + wait;
    newest_held_by_every_copy(node, runtime, generation, lba, blocks, deadline).await?;
    let extents = runtime
        .engine
        .allocation(lba, blocks, MAX_EXTENTS_PER_FRAME)
        .map_err(from_engine)?;
    Ok(Response::Allocation { extents })
}

/// The newest VBA of `blocks` blocks from `lba` (inside the slice), once every current copy
/// holds it when this primary numbered it (`held_by_every_copy`), and the primary still serves.
async fn newest_held_by_every_copy(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    lba: Lba,
    blocks: u64,
    deadline: tokio::time::Instant,
) -> Result<Vba, WireError> {
    let newest = runtime.engine.newest_vba_in(lba, blocks);
    if newest > runtime.generation_start(generation) {
        held_by_every_copy(node, runtime, generation, newest, deadline).await?;
        // The lease may have run out while it waited.
        runtime.serving_primary(generation)?;
    }
    Ok(newest)
}

/// What a read waiting for every copy to hold a VBA does next.
enum Held {
    Yes,
    /// Ask the unconfirmed copies how far they are: nothing in flight will tell.
    Ask,
}

/// Waits until every copy this primary waits for holds `vba` (the window's committed VBA
/// reached it), or `deadline` passes. A copy whose acknowledgement no write in flight can bring
/// (`Window::unconfirmed`: this primary numbered `vba` before it restarted, took the role, or
/// the copy joined) is asked how far it is; without that, a read would wait for the next write
/// to the slice, however long that takes.
async fn held_by_every_copy(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    vba: Vba,
    deadline: tokio::time::Instant,
) -> Result<(), WireError> {
    loop {
        let held = runtime
            .wait_window(deadline, |window| {
                if window.committed() >= vba {
                    return Some(Held::Yes);
                }
                (!window.unconfirmed(vba).is_empty()).then_some(Held::Ask)
            })
            .await;
        match held {
            Some(Held::Yes) => return Ok(()),
            Some(Held::Ask) => ask_copies(node, runtime, generation, vba).await?,
            None => {
                return Err(WireError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "a write to these blocks of slice {} is not yet held by every copy",
                        runtime.id
                    ),
                ))
            }
        }
    }
}

/// Asks the copies the window has unconfirmed at `vba` for their last VBA, with the frame that
/// tells a copy where this generation starts (`announce`), and counts their answers in the
/// window. A copy still short of `vba` lacks records this primary holds but never acknowledged
/// (it numbered them just before it stopped); nothing can send them from the window, so the
/// copy is marked stale and resyncs, as a write it could not take would have it. One round at a
/// time per unit, the copies looked up under its lock: reads that waited meanwhile find the
/// window answered.
async fn ask_copies(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    vba: Vba,
) -> Result<(), WireError> {
    let _one_round = runtime.primary.asking.lock().await;
    let assignment = runtime.serving_primary(generation)?;
    let unconfirmed = runtime
        .primary
        .window
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unconfirmed(vba);
    let targets: Vec<CopyInfo> = runtime
        .replicas(&assignment)
        .into_iter()
        .filter(|c| unconfirmed.contains(&c.node))
        .collect();
    let deadline = Instant::now() + node.config.write_timeout;
    let replies: Vec<(NodeId, Reply)> = targets
        .iter()
        .map(|target| async move {
            let request = replicate_request(
                runtime,
                generation,
                runtime.generation_start(generation),
                &[],
            );
            let pending = match node.peers.get(&target.addr).await {
                Ok(connection) => connection.send(request.clone()).await,
                Err(e) => Err(e),
            };
            let reply = replicate_to(node, runtime, target, pending, request, deadline).await;
            if reply == Reply::Acked {
                runtime.set_announced(generation, &target.node);
            }
            (target.node.clone(), reply)
        })
        .collect::<FuturesUnordered<_>>()
        .collect()
        .await;
    for (target, reply) in replies {
        let short = || {
            runtime
                .primary
                .window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unconfirmed(vba)
                .contains(&target)
        };
        match reply {
            Reply::Acked if !short() => continue,
            Reply::Acked => {
                info!(unit = %runtime.id, %target, %vba,
                    "a current copy lacks records this primary numbered before it restarted; marking it stale")
            }
            Reply::Failed(_) => {}
            Reply::Deposed(generation) => {
                return Err(refusal(runtime, Failure::Deposed(generation)))
            }
            Reply::Diverged(reason) => return Err(refusal(runtime, Failure::Diverged(reason))),
        }
        match mark_stale(node, runtime, &target, generation).await {
            Marked::Stale => {}
            Marked::Deposed(generation) => {
                return Err(refusal(runtime, Failure::Deposed(generation)))
            }
            Marked::Failed(reason) => return Err(refusal(runtime, Failure::Unavailable(reason))),
        }
    }
    Ok(())
}

pub async fn write(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    lba: Lba,
    data: Bytes,
) -> Result<Response, WireError> {
    if data.is_empty() || data.len() as u64 % BLOCK_BYTES != 0 {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "a write carries whole blocks",
        ));
    }
    let assignment = runtime.serving_primary(generation)?;
    runtime.in_slice(&assignment, lba, data.len() as u64 / BLOCK_BYTES)?;
    let ops = (0..data.len() as u64 / BLOCK_BYTES)
        .map(|i| {
            let block = data.slice((i * BLOCK_BYTES) as usize..((i + 1) * BLOCK_BYTES) as usize);
            Op::Write {
                lba: Lba(lba.0 + i),
                data: block,
            }
        })
        .collect();
    let first = replicated_append(node, runtime, generation, ops).await?;
    Ok(Response::Write { first_vba: first })
}

pub async fn trim(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    lba: Lba,
    blocks: u64,
) -> Result<Response, WireError> {
    let assignment = runtime.serving_primary(generation)?;
    runtime.in_slice(&assignment, lba, blocks)?;
    let vba = replicated_append(node, runtime, generation, vec![Op::Trim { lba, blocks }]).await?;
    Ok(Response::Trim { vba })
}

/// Appends `ops` on this primary and on its secondaries; returns the first VBA once the write may
/// be acknowledged.
async fn replicated_append(
    node: &Arc<Node>,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    ops: Vec<Op>,
) -> Result<Vba, WireError> {
    let assignment = runtime.serving_primary(generation)?;
    let deadline = Instant::now() + node.config.write_timeout;

    // Connections first, outside the sequencer: a secondary that cannot be reached must not hold
    // up the others' writes while its connection attempt times out. Each copy also learns where
    // this generation starts, once, before it takes any of its records; a copy that cannot be
    // told is reported like one that does not answer.
    let mut connections = BTreeMap::new();
    let mut unannounced = BTreeMap::new();
    for target in runtime.replicas(&assignment) {
        let connection = node.peers.get(&target.addr).await;
        if let Err(reason) =
            announce(node, runtime, &target, generation, &connection, deadline).await
        {
            unannounced.insert(target.node.clone(), reason);
        }
        connections.insert(target.node.clone(), connection);
    }

    let sequenced = runtime.primary.sequencer.lock().await;
    if runtime
        .primary
        .window
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_full()
    {
        return Err(WireError::new(
            ErrorCode::Unavailable,
            "too many writes wait for slow secondaries; retry shortly",
        ));
    }
    // The copies to wait for are decided under the sequencer, with the VBAs: a copy that joined
    // while this write waited for the sequencer gets it (its join covered every earlier VBA).
    let targets = runtime.replicas(&runtime.assignment().unwrap_or(assignment));
    for target in &targets {
        if !connections.contains_key(&target.node) {
            connections.insert(target.node.clone(), node.peers.get(&target.addr).await);
        }
    }
    let bodies: Vec<RecordBody> = ops.iter().cloned().map(RecordBody::from).collect();
    let ticket = runtime
        .engine
        .begin_append(generation, ops)
        .map_err(from_engine)?;
    // The engine numbered the records, from its counter.
    let records: Vec<WireRecord> = (ticket.first_vba().0..)
        .zip(bodies)
        .map(|(vba, body)| WireRecord {
            vba: Vba(vba),
            generation,
            body,
        })
        .collect();
    let committed = runtime.update_window(|window| {
        window.push(&records);
        window.committed()
    });
    let mut sent = Vec::with_capacity(targets.len());
    for target in targets
        .iter()
        .filter(|t| !unannounced.contains_key(&t.node))
    {
        let connection = connections.remove(&target.node).expect("fetched above");
        let request = replicate_request(runtime, generation, committed, &records);
        let pending = match connection {
            Ok(connection) => connection.send(request).await,
            Err(e) => Err(e),
        };
        sent.push((target.clone(), pending));
    }
    drop(sequenced);

    let first = ticket.first_vba();
    let last = ticket.last_vba();
    // The local append (at queue depth 1 this task writes and syncs the batch itself, with no
    // hand-off). Meanwhile the secondaries' answers arrive on their connections and wait.
    let local = ticket.wait_async().await.map_err(|e| e.to_string());
    if local.is_ok() {
        runtime.update_window(|window| window.local_durable(last));
    }
    #[cfg(feature = "bugs")]
    if local.is_ok() && crate::bugs::enabled(crate::bugs::Bug::AckBeforeSecondary) {
        let (node, runtime) = (node.clone(), runtime.clone());
        tokio::spawn(async move {
            for (target, pending) in sent {
                let request = replicate_request(&runtime, generation, committed, &records);
                replicate_to(&node, &runtime, &target, pending, request, deadline).await;
            }
        });
        return Ok(first);
    }
    let mut progress = WriteProgress::new(targets.iter().map(|t| t.node.clone()));
    let mut marks = FuturesUnordered::new();
    for target in &targets {
        let Some(reason) = unannounced.remove(&target.node) else {
            continue;
        };
        if let Step::MarkStale(target) = progress.replied(&target.node, Reply::Failed(reason)) {
            marks.push(mark(node, runtime, target, generation));
        }
    }
    let mut step = progress.local_done(local);
    let mut replies: FuturesUnordered<_> = sent
        .into_iter()
        .map(|(target, pending)| {
            let request = replicate_request(runtime, generation, committed, &records);
            async move {
                let reply = replicate_to(node, runtime, &target, pending, request, deadline).await;
                (target.node, reply)
            }
        })
        .collect();
    loop {
        match step {
            Step::Wait => {}
            Step::MarkStale(target) => marks.push(mark(node, runtime, target, generation)),
            Step::Acknowledge => {
                // Every current copy holds the log up to the committed VBA: compaction may drop
                // what is superseded below it.
                let committed = runtime
                    .primary
                    .window
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .committed();
                runtime.engine.set_stable_vba(committed);
                return Ok(first);
            }
            Step::Fail(failure) => return Err(refusal(runtime, failure)),
        }
        step = tokio::select! {
            Some((target, reply)) = replies.next() => progress.replied(&target, reply),
            Some((target, marked)) = marks.next() => progress.marked(&target, marked),
            else => unreachable!("a progress that waits has a reply or a marking outstanding"),
        };
    }
}

/// Reports `target` unresponsive and waits for the outcome ([`mark_stale`]), with the target.
async fn mark(
    node: &Node,
    runtime: &UnitRuntime,
    target: NodeId,
    generation: Generation,
) -> (NodeId, Marked) {
    let marked = mark_stale(node, runtime, &target, generation).await;
    (target, marked)
}

/// Tells `target`, once per generation, where this primary's generation starts: after the VBA
/// its history had when it took its first record of the generation (or has now, before that),
/// with a `Replicate` frame without records. A copy that holds a tail of an older generation
/// past that point drops it before it takes any record of this generation. Without this, a
/// record of the new generation that happens to land right after such a tail (a copy serves
/// frames in any order) would be stacked onto it, and the tail's later truncation could not
/// tell the two apart.
async fn announce(
    node: &Node,
    runtime: &UnitRuntime,
    target: &CopyInfo,
    generation: Generation,
    connection: &Result<Arc<Connection>, DataError>,
    deadline: Instant,
) -> Result<(), String> {
    if runtime.announced(generation, &target.node) {
        return Ok(());
    }
    let request = replicate_request(
        runtime,
        generation,
        runtime.generation_start(generation),
        &[],
    );
    let pending = match connection {
        Ok(connection) => connection.send(request.clone()).await,
        Err(e) => Err(e.clone()),
    };
    match replicate_attempts(node, target, pending, request, deadline).await {
        Ok(_) => {
            runtime.set_announced(generation, &target.node);
            Ok(())
        }
        Err(refused) => {
            let reason = format!("telling where generation {generation} starts: {refused:?}");
            warn!(unit = %runtime.id, target = %target.node, %reason, "a secondary did not take a write");
            Err(reason)
        }
    }
}

fn refusal(runtime: &UnitRuntime, failure: Failure) -> WireError {
    match failure {
        Failure::Deposed(generation) => WireError::new(
            ErrorCode::StaleGeneration,
            format!("slice {} moved on to generation {generation}", runtime.id),
        )
        .with_detail(generation.0),
        Failure::Unavailable(reason) => WireError::new(ErrorCode::Unavailable, reason),
        Failure::Local(reason) => WireError::new(ErrorCode::Internal, reason),
        Failure::Diverged(reason) => {
            // Serve nothing more; the membership loop reports the copy not current at the next
            // beat, and the database fails the slice over to a copy that holds what this lost.
            runtime.mark_lost();
            WireError::new(
                ErrorCode::NotCurrent,
                format!(
                    "the primary of slice {} lost records a copy holds ({reason}); it steps down",
                    runtime.id
                ),
            )
        }
    }
}

fn replicate_request(
    runtime: &UnitRuntime,
    generation: Generation,
    committed: Vba,
    records: &[WireRecord],
) -> Request {
    Request::Peer(PeerRequest::Replicate {
        unit: runtime.id,
        generation,
        committed,
        records: records.to_vec(),
    })
}

/// Waits for one secondary's answer to the records, sending them again (they are idempotent)
/// when the connection broke or the secondary was not ready, until `deadline`.
async fn replicate_to(
    node: &Node,
    runtime: &UnitRuntime,
    target: &CopyInfo,
    pending: Result<Pending, DataError>,
    request: Request,
    deadline: Instant,
) -> Reply {
    let reply = match replicate_attempts(node, target, pending, request, deadline).await {
        Ok(last_vba) => {
            runtime.update_window(|window| window.acked(&target.node, last_vba));
            Reply::Acked
        }
        Err(reply) => reply,
    };
    match &reply {
        Reply::Failed(reason) => {
            warn!(unit = %runtime.id, target = %target.node, %reason, "a secondary did not take a write")
        }
        Reply::Diverged(reason) => {
            error!(unit = %runtime.id, target = %target.node, %reason,
                "a current copy holds records this primary lost; stepping down")
        }
        Reply::Acked | Reply::Deposed(_) => {}
    }
    reply
}

/// Waits for `target`'s answer to `request` (a Replicate), sending it again when the connection
/// broke or the copy was not ready (it does not know the unit yet, or is busy), until
/// `deadline`. The copy's last VBA once it took the request, or how it refused.
async fn replicate_attempts(
    node: &Node,
    target: &CopyInfo,
    mut pending: Result<Pending, DataError>,
    request: Request,
    deadline: Instant,
) -> Result<Vba, Reply> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result = match pending {
            Ok(pending) => pending.wait(remaining).await,
            Err(e) => Err(e),
        };
        let retry = match result {
            Ok(Response::Replicate { last_vba }) => return Ok(last_vba),
            Ok(other) => return Err(Reply::Failed(format!("unexpected answer {other:?}"))),
            Err(DataError::Remote { error, .. }) => match error.code {
                ErrorCode::StaleGeneration => return Err(Reply::Deposed(Generation(error.detail))),
                // A current copy's history differs from this primary's at VBAs of its own
                // generation: this log lost records the copy holds (a syncing copy is still
                // being brought in line, and is marked stale as usual).
                ErrorCode::Conflict if target.status == CopyStatus::Current => {
                    return Err(Reply::Diverged(error.message))
                }
                ErrorCode::UnknownUnit | ErrorCode::Unavailable => error.message,
                _ => return Err(Reply::Failed(error.message)),
            },
            Err(e @ DataError::Timeout { .. }) => {
                // The connection may be one a partition left in TCP's retransmission backoff,
                // where frames sent after the heal wait seconds for the next retry: the next
                // write to this copy (once it resyncs and rejoins) opens a new one.
                node.peers.forget(&target.addr).await;
                return Err(Reply::Failed(e.to_string()));
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() + backoff >= deadline {
            return Err(Reply::Failed(retry));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
        pending = match node.peers.get(&target.addr).await {
            Ok(connection) => connection.send(request.clone()).await,
            Err(e) => Err(e),
        };
    }
}

/// Reports `target` unresponsive for this slice and waits for the database to commit it stale.
async fn mark_stale(
    node: &Node,
    runtime: &UnitRuntime,
    target: &NodeId,
    generation: Generation,
) -> Marked {
    let _one_at_a_time = runtime.primary.marking.lock().await;
    let still_waited_for = runtime
        .assignment()
        .is_some_and(|a| runtime.replicas(&a).iter().any(|c| &c.node == target));
    if !still_waited_for {
        return Marked::Stale;
    }
    let notification = Notification::Unresponsive {
        source: Source::Node(node.id.clone()),
        target: target.clone(),
        units: vec![UnitGeneration {
            unit: runtime.id,
            generation,
        }],
    };
    match node.managers.notify(&notification).await {
        Ok(reply) => {
            for slice in &reply.slices {
                if slice.unit == runtime.id {
                    runtime.update_slice(slice);
                }
            }
            let still_waited_for = runtime
                .assignment()
                .is_some_and(|a| runtime.replicas(&a).iter().any(|c| &c.node == target));
            if still_waited_for {
                Marked::Failed(format!("the database still lists {target} as current"))
            } else {
                info!(unit = %runtime.id, %target, "marked an unresponsive secondary stale");
                Marked::Stale
            }
        }
        Err(ManagerError::Api { error, .. })
            if error.code == vbs_wire::api::ErrorCode::StaleGeneration =>
        {
            node.refresh.notify_one();
            Marked::Deposed(Generation(generation.0 + 1))
        }
        Err(e) => {
            warn!(unit = %runtime.id, %target, error = %e, "could not report an unresponsive secondary");
            Marked::Failed(e.to_string())
        }
    }
}
