//! Read repair: a record of this copy that fails its checksum when read is fetched from another
//! current copy of the slice, checked there and here, and written in place of the damaged one
//! (`Unit::repair`). The read that found it then reads again, so a client is answered with the
//! right data and never sees the damage. With no copy able to give the record, the read fails
//! with `Damaged`, naming the block, the VBA and the copies tried: vbs never serves or copies a
//! record it cannot check.
//!
//! The copies asked are those the database lists current at the same generation: they hold every
//! VBA this copy served. A copy's own check of the record when it answers (`Unit::record`) keeps
//! damage on both sides from travelling.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;
use vbs_wire::api::CopyStatus;
use vbs_wire::proto::{ErrorCode, PeerRequest, Request, Response, WireError, WireRecord};
use vbs_wire::types::{Generation, NodeId, Vba};

use super::errors::{from_engine, from_join};
use super::unit::UnitRuntime;
use super::Node;
use crate::engine::{EngineError, Op, Record};

/// How long a copy asked for a record may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Repairs the damaged record `damage` names (an [`EngineError::Damaged`] of `runtime`'s unit)
/// from another current copy of the slice at `generation`. Any other error is returned as the
/// data plane reports it.
pub async fn repair(
    node: &Node,
    runtime: &Arc<UnitRuntime>,
    generation: Generation,
    damage: EngineError,
) -> Result<(), WireError> {
    let EngineError::Damaged { vba, lba, .. } = &damage else {
        return Err(from_engine(damage));
    };
    let (vba, lba) = (*vba, *lba);
    let copies: Vec<_> = runtime
        .assignment()
        .filter(|a| a.generation == generation)
        .map(|a| a.copies)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.node != node.id && c.status == CopyStatus::Current)
        .collect();
    let mut tried = Vec::new();
    for copy in &copies {
        let good = match fetch(node, runtime, generation, vba, &copy.addr).await {
            Ok(Some(good)) => good,
            Ok(None) => {
                tried.push(format!("{} no longer holds it", copy.node));
                continue;
            }
            Err(error) => {
                tried.push(format!("{}: {error}", copy.node));
                continue;
            }
        };
        let engine = runtime.engine.clone();
        let repaired = tokio::task::spawn_blocking(move || engine.repair(&good))
            .await
            .map_err(from_join)?;
        match repaired {
            Ok(true) => {
                node.io_metrics.damaged(true);
                warn!(
                    unit = %runtime.id, %vba, lba = ?lba, from = %copy.node, %damage,
                    "repaired a damaged record from another copy"
                );
                return Ok(());
            }
            // Moved, overwritten or repaired by another read meanwhile: read again.
            Ok(false) => return Ok(()),
            Err(error) => tried.push(format!("{}'s copy did not fit: {error}", copy.node)),
        }
    }
    node.io_metrics.damaged(false);
    let others = if copies.is_empty() {
        "no other copy of the slice is current".to_string()
    } else {
        format!("no other copy could give it ({})", tried.join("; "))
    };
    warn!(unit = %runtime.id, %vba, lba = ?lba, %damage, %others, "a damaged record could not be repaired");
    Err(WireError::new(
        ErrorCode::Damaged,
        format!("{}: {damage}, and {others}", node.id),
    )
    .with_detail(lba.map_or(0, |l| l.0)))
}

/// Asks the copy at `addr` for its record of `vba`: `None` if it holds none live.
pub(super) async fn fetch(
    node: &Node,
    runtime: &UnitRuntime,
    generation: Generation,
    vba: Vba,
    addr: &str,
) -> Result<Option<Record>, String> {
    let request = Request::Peer(PeerRequest::FetchRecord {
        unit: runtime.id,
        generation,
        vba,
    });
    let response = node
        .peers
        .call(addr, request, FETCH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let Response::Records { records, .. } = response else {
        return Err(format!("{response:?} for a record"));
    };
    match records.into_iter().next() {
        None => Ok(None),
        Some(record) if record.vba == vba => Ok(Some(Record {
            vba,
            generation: record.generation,
            op: Op::from(record.body),
        })),
        Some(record) => Err(format!("it sent VBA {} for VBA {vba}", record.vba)),
    }
}

/// Serves another copy's [`PeerRequest::FetchRecord`]: this copy's record of `vba`, checked, if this
/// copy is current at `generation`.
pub async fn serve_fetch(
    runtime: &Arc<UnitRuntime>,
    peer: Option<&NodeId>,
    generation: Generation,
    vba: Vba,
) -> Result<Response, WireError> {
    if peer.is_none() {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            "records are fetched by storage nodes; clients read from the primary",
        ));
    }
    runtime.current_at(generation)?;
    let engine = runtime.engine.clone();
    let record = tokio::task::spawn_blocking(move || engine.record(vba))
        .await
        .map_err(from_join)?
        .map_err(from_engine)?;
    let last_vba = runtime.engine.last_vba();
    Ok(Response::Records {
        through: vba,
        last_vba,
        done: true,
        remaining_records: 0,
        remaining_bytes: 0,
        joined: false,
        records: record.into_iter().map(WireRecord::from).collect(),
    })
}
