//! A unit as the node serves it: its engine, what the database assigned (role, generation, copy
//! status, the other copies), the primary's lease and replication window, and the secondary's
//! ordering of incoming records.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use client::api::{AssignedUnit, CopyInfo, CopyStatus, Role, SliceMap};
use client::proto::{ErrorCode, WireError};
use client::types::{Generation, NodeId, UnitId, Vba};
use tokio::sync::watch;

use crate::engine::Unit;
use crate::replication::lease::Lease;
use crate::replication::window::Window;

/// What the database says about this copy of the slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub generation: Generation,
    pub role: Role,
    pub status: CopyStatus,
    /// Every copy of the slice, this one included.
    pub copies: Vec<CopyInfo>,
}

impl Assignment {
    pub fn from_assigned(assigned: &AssignedUnit) -> Assignment {
        Assignment {
            generation: assigned.generation,
            role: assigned.role,
            status: assigned.status,
            copies: assigned.copies.clone(),
        }
    }

    /// The other copies the primary sends records to: `current` ones (which must acknowledge)
    /// and `syncing` ones (which get new writes while they catch up).
    pub fn forward_targets(&self, me: &NodeId) -> Vec<CopyInfo> {
        self.copies
            .iter()
            .filter(|c| &c.node != me)
            .filter(|c| matches!(c.status, CopyStatus::Current | CopyStatus::Syncing))
            .cloned()
            .collect()
    }

    pub fn current_secondaries(&self, me: &NodeId) -> Vec<NodeId> {
        self.copies
            .iter()
            .filter(|c| &c.node != me && c.status == CopyStatus::Current)
            .map(|c| c.node.clone())
            .collect()
    }

    pub fn primary(&self) -> Option<&CopyInfo> {
        self.copies.iter().find(|c| c.role == Role::Primary)
    }
}

pub struct UnitRuntime {
    pub id: UnitId,
    pub engine: Arc<Unit>,
    node: NodeId,
    assignment: Mutex<Option<Assignment>>,
    lease: Mutex<Lease>,
    /// Primary: orders VBA assignment and the sending of records, so that records go out to each
    /// secondary in VBA order.
    pub sequencer: tokio::sync::Mutex<()>,
    pub window: Mutex<Window>,
    /// Primary: one report of an unresponsive secondary at a time.
    pub marking: tokio::sync::Mutex<()>,
    /// Secondary: records are queued to the engine in VBA order under this lock.
    pub applying: tokio::sync::Mutex<()>,
    /// Secondary: the next VBA the engine expects, watched by frames that arrived early.
    pub expected: watch::Sender<Vba>,
    /// The database lists this copy as current, but this node had to create it empty (its data
    /// was lost). It serves nothing until the database has been told it is not current.
    pub lost: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UnitRuntime {
    pub fn new(engine: Arc<Unit>, node: NodeId) -> UnitRuntime {
        let next = engine.next_vba();
        let last = engine.last_vba();
        UnitRuntime {
            id: engine.id(),
            engine,
            node,
            assignment: Mutex::new(None),
            lease: Mutex::new(Lease::default()),
            sequencer: tokio::sync::Mutex::new(()),
            window: Mutex::new(Window::new(last)),
            marking: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            expected: watch::Sender::new(next),
            lost: AtomicBool::new(false),
        }
    }

    pub fn assignment(&self) -> Option<Assignment> {
        lock(&self.assignment).clone()
    }

    /// Takes a new assignment from the database.
    pub fn assign(&self, assignment: Assignment) {
        let current = assignment.current_secondaries(&self.node);
        let was_primary = lock(&self.assignment)
            .as_ref()
            .is_some_and(|a| a.role == Role::Primary);
        if assignment.role == Role::Primary {
            let mut window = lock(&self.window);
            if !was_primary {
                // A new primary starts with nothing in flight, from its own log's end.
                *window = Window::new(self.engine.last_vba());
            }
            window.set_current(&current);
        }
        *lock(&self.assignment) = Some(assignment);
    }

    /// Updates the copies from a slice map the database returned (after a notification).
    pub fn update_slice(&self, slice: &SliceMap) {
        let mut guard = lock(&self.assignment);
        let Some(assignment) = guard.as_mut() else {
            return;
        };
        if slice.generation < assignment.generation {
            return;
        }
        assignment.generation = slice.generation;
        assignment.copies = slice.copies.clone();
        if let Some(me) = slice.copies.iter().find(|c| c.node == self.node) {
            assignment.role = me.role;
            assignment.status = me.status;
        }
        let current = assignment.current_secondaries(&self.node);
        drop(guard);
        lock(&self.window).set_current(&current);
    }

    pub fn renew_lease(&self, sent_at: Instant, lease: std::time::Duration) {
        lock(&self.lease).renew(sent_at, lease);
    }

    /// The assignment, if this copy may serve client IO of `generation` now: it is the primary,
    /// current, at that generation, and holds its lease.
    pub fn serving_primary(&self, generation: Generation) -> Result<Assignment, WireError> {
        let assignment = self.assignment().ok_or_else(|| {
            WireError::new(
                ErrorCode::Unavailable,
                format!("unit {} is not assigned here yet", self.id),
            )
        })?;
        if generation < assignment.generation {
            return Err(WireError::new(
                ErrorCode::StaleGeneration,
                format!(
                    "slice {} is at generation {}, not {generation}",
                    self.id, assignment.generation
                ),
            )
            .with_detail(assignment.generation.0));
        }
        if generation > assignment.generation {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                format!(
                    "generation {generation} of slice {} is not known here yet",
                    self.id
                ),
            ));
        }
        if assignment.role != Role::Primary {
            return Err(WireError::new(
                ErrorCode::NotPrimary,
                format!("this node is not the primary of slice {}", self.id),
            ));
        }
        if assignment.status != CopyStatus::Current || self.lost.load(Ordering::Relaxed) {
            return Err(WireError::new(
                ErrorCode::NotCurrent,
                format!(
                    "this copy of slice {} is {}",
                    self.id,
                    assignment.status.as_str()
                ),
            ));
        }
        if !lock(&self.lease).holds(Instant::now()) {
            return Err(WireError::new(
                ErrorCode::NotPrimary,
                format!("the primary lease of slice {} has run out", self.id),
            ));
        }
        Ok(assignment)
    }

    pub fn generation(&self) -> Generation {
        self.assignment()
            .map_or_else(|| self.engine.generation(), |a| a.generation)
    }
}
