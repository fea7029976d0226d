//! The managers' event log as `GET /v1/events` serves it: what changed in the consistency
//! database and why, one entry per change, numbered in commit order.
//!
//! The log is part of the replicated state (every manager holds the same entries under the same
//! numbers) and bounded: the oldest entries are dropped past [`MAX_EVENTS`]. A reader follows it
//! with a cursor: ask for the entries after the last number seen, as `vbs events --follow` does.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::CopyStatus;
use crate::types::{Generation, NodeId, UnitId, Vba};

/// Most entries the managers keep; older ones are dropped.
pub const MAX_EVENTS: usize = 10_000;
/// Most entries one page of `GET /v1/events` holds, and its default page size.
pub const MAX_EVENTS_PER_PAGE: usize = 1000;

/// One entry of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1, without gaps: the cursor of `GET /v1/events?after=`.
    pub seq: u64,
    /// When the leader proposed the change, in milliseconds since the Unix epoch; 0 for changes
    /// written by a manager that did not record the time.
    pub at_ms: u64,
    #[serde(flatten)]
    pub what: EventKind,
    /// Why the change was made: the notification, verdict or request behind it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What changed, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// A storage node registered for the first time.
    NodeRegistered {
        node: NodeId,
        addr: String,
    },
    /// A node judged down came back; `copies_stale` of its copies must catch up.
    NodeUp {
        node: NodeId,
        copies_stale: u32,
    },
    /// The failure detector judged a node down; `copies_down` of its copies went down with it.
    NodeDown {
        node: NodeId,
        copies_down: u32,
    },
    /// A slice got a new primary.
    Failover {
        volume: String,
        unit: UnitId,
        from: NodeId,
        to: NodeId,
        generation: Generation,
    },
    /// A slice's primary went down and no current copy on an up node could take over: the slice
    /// serves no IO until one comes back.
    SliceUnavailable {
        volume: String,
        unit: UnitId,
        primary: NodeId,
    },
    /// One copy's status changed (other than with its node going down or up).
    CopyStatus {
        volume: String,
        unit: UnitId,
        node: NodeId,
        from: CopyStatus,
        to: CopyStatus,
        last_vba: Vba,
    },
    /// A new copy was placed (re-replication or a drain step); it starts `stale`.
    CopyAdded {
        volume: String,
        unit: UnitId,
        node: NodeId,
        generation: Generation,
    },
    /// A copy was removed (it was replaced, or its node drained).
    CopyRemoved {
        volume: String,
        unit: UnitId,
        node: NodeId,
        generation: Generation,
    },
    VolumeCreated {
        volume: String,
        size_bytes: u64,
        replicas: u32,
        slices: u32,
    },
    VolumeResized {
        volume: String,
        from_bytes: u64,
        size_bytes: u64,
    },
    VolumeDeleted {
        volume: String,
    },
    DrainStarted {
        node: NodeId,
    },
    DrainStopped {
        node: NodeId,
    },
    /// An operator accepted the loss of what a slice's copies no longer hold
    /// (`vbs volume accept-loss`): the copy on `node` serves again as it is, ending at
    /// `last_vba`, although the database had recorded `recorded_vba` for it.
    LossAccepted {
        volume: String,
        unit: UnitId,
        node: NodeId,
        last_vba: Vba,
        recorded_vba: Vba,
        generation: Generation,
    },
}

impl EventKind {
    /// The `kind` tag, as JSON carries it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::NodeRegistered { .. } => "node_registered",
            EventKind::NodeUp { .. } => "node_up",
            EventKind::NodeDown { .. } => "node_down",
            EventKind::Failover { .. } => "failover",
            EventKind::SliceUnavailable { .. } => "slice_unavailable",
            EventKind::CopyStatus { .. } => "copy_status",
            EventKind::CopyAdded { .. } => "copy_added",
            EventKind::CopyRemoved { .. } => "copy_removed",
            EventKind::VolumeCreated { .. } => "volume_created",
            EventKind::VolumeResized { .. } => "volume_resized",
            EventKind::VolumeDeleted { .. } => "volume_deleted",
            EventKind::DrainStarted { .. } => "drain_started",
            EventKind::DrainStopped { .. } => "drain_stopped",
            EventKind::LossAccepted { .. } => "loss_accepted",
        }
    }

    /// Whether an operator should look: a node down, a slice without a serving primary.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            EventKind::NodeDown { .. }
                | EventKind::SliceUnavailable { .. }
                | EventKind::LossAccepted { .. }
        )
    }
}

/// One line for a person, as `vbs events` prints it after the time.
impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::NodeRegistered { node, addr } => {
                write!(f, "node {node} registered at {addr}")
            }
            EventKind::NodeUp { node, copies_stale } => {
                write!(
                    f,
                    "node {node} up; {copies_stale} of its copies to catch up"
                )
            }
            EventKind::NodeDown { node, copies_down } => {
                write!(
                    f,
                    "node {node} down; {copies_down} of its copies down with it"
                )
            }
            EventKind::Failover {
                volume,
                unit,
                from,
                to,
                generation,
            } => write!(
                f,
                "failover of slice {unit} of {volume}: primary {from} -> {to}, generation {}",
                generation
            ),
            EventKind::SliceUnavailable {
                volume,
                unit,
                primary,
            } => write!(
                f,
                "slice {unit} of {volume} unavailable: primary {primary} down and no current copy \
                 to take over"
            ),
            EventKind::CopyStatus {
                volume,
                unit,
                node,
                from,
                to,
                last_vba,
            } => write!(
                f,
                "copy of slice {unit} of {volume} on {node}: {} -> {} at VBA {}",
                from.as_str(),
                to.as_str(),
                last_vba
            ),
            EventKind::CopyAdded {
                volume,
                unit,
                node,
                generation,
            } => write!(
                f,
                "new copy of slice {unit} of {volume} on {node}, generation {}",
                generation
            ),
            EventKind::CopyRemoved {
                volume,
                unit,
                node,
                generation,
            } => write!(
                f,
                "copy of slice {unit} of {volume} on {node} removed, generation {}",
                generation
            ),
            EventKind::VolumeCreated {
                volume,
                size_bytes,
                replicas,
                slices,
            } => write!(
                f,
                "volume {volume} created: {}, {replicas} copies of {slices} slices",
                crate::size::format_size(*size_bytes)
            ),
            EventKind::VolumeResized {
                volume,
                from_bytes,
                size_bytes,
            } => write!(
                f,
                "volume {volume} grown from {} to {}",
                crate::size::format_size(*from_bytes),
                crate::size::format_size(*size_bytes)
            ),
            EventKind::VolumeDeleted { volume } => write!(f, "volume {volume} deleted"),
            EventKind::DrainStarted { node } => write!(f, "drain of node {node} started"),
            EventKind::DrainStopped { node } => write!(f, "drain of node {node} stopped"),
            EventKind::LossAccepted {
                volume,
                unit,
                node,
                last_vba,
                recorded_vba,
                generation,
            } => write!(
                f,
                "loss accepted for slice {unit} of {volume}: the copy on {node} serves as it is, \
                 ending at VBA {last_vba} (the database had VBA {recorded_vba}), generation {}",
                generation
            ),
        }
    }
}

/// `GET /v1/events[?after=SEQ][&limit=N]`: the entries after `after`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The cursor for the next request: the last entry's number, or `after` when none came.
    pub next: u64,
    /// The oldest entry still kept (0 when the log is empty). A cursor below `oldest - 1` missed
    /// entries that were dropped; `missed` says how many.
    pub oldest: u64,
    /// The newest entry (0 when the log is empty).
    #[serde(default)]
    pub newest: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_flat_json_tagged_by_kind() {
        let event = Event {
            seq: 7,
            at_ms: 1_700_000_000_000,
            what: EventKind::Failover {
                volume: "db".into(),
                unit: UnitId::new(3, 1),
                from: NodeId("n1".into()),
                to: NodeId("n2".into()),
                generation: Generation(4),
            },
            cause: Some("node n1 down".into()),
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["kind"], "failover");
        assert_eq!(json["kind"], event.what.name());
        assert_eq!(json["from"], "n1");
        assert_eq!(json["seq"], 7);
        let back: Event = serde_json::from_value(json).expect("parses");
        assert_eq!(back, event);
        assert_eq!(
            event.what.to_string(),
            "failover of slice 3.1 of db: primary n1 -> n2, generation 4"
        );
    }
}
