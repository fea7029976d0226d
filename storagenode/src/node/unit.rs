//! A unit as the node serves it: its engine, what the database assigned (role, generation, copy
//! status, the other copies), the primary's lease and replication window, and the secondary's
//! ordering of incoming records.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;
use vbs_wire::api::{AssignedUnit, CopyInfo, CopyStatus, Role, SliceMap};
use vbs_wire::proto::{ErrorCode, WireError};
use vbs_wire::types::{Generation, Lba, NodeId, UnitId, Vba};

use crate::engine::{Marks, Unit};
use crate::replication::lease::Lease;
use crate::replication::secondary::View;
use crate::replication::window::Window;

/// What the database says about this copy of the slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The bytes of the slice inside the volume (its last slice may be shorter than the span
    /// the unit takes, and grows with the volume).
    pub unit_bytes: u64,
    pub generation: Generation,
    pub role: Role,
    pub status: CopyStatus,
    /// Every copy of the slice, this one included.
    pub copies: Vec<CopyInfo>,
}

impl Assignment {
    pub fn from_assigned(assigned: &AssignedUnit) -> Assignment {
        Assignment {
            unit_bytes: assigned.unit_bytes,
            generation: assigned.generation,
            role: assigned.role,
            status: assigned.status,
            copies: assigned.copies.clone(),
        }
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
    /// What the copy holds while it is the slice's primary.
    pub primary: PrimarySide,
    /// What the copy holds while it is a secondary.
    pub secondary: SecondarySide,
    /// When the slice was last learned from a notification reply (see [`UnitRuntime::assign`]).
    slice_updated: Mutex<Option<Instant>>,
    /// This copy lost records the database counts on: the node had to create it empty (its
    /// data was lost), or as primary it lost records a current copy holds (a torn tail). It
    /// serves nothing until the database has been told it is not current. Kept in `unit.json`
    /// ([`UnitRuntime::mark_lost`]), so a crash before the report does not undo it.
    lost: AtomicBool,
    /// The node created this unit empty although the database holds the copy current, and does
    /// not know yet whether the slice was written (see `replication::serving::emptied_copy`): it serves
    /// nothing until it does. Kept in `unit.json` like `lost`.
    undecided: AtomicBool,
    /// The marks as `unit.json` keeps them (the two above, and the generation a loss was found
    /// in); held while they change and are written.
    marks: Mutex<Marks>,
    /// Recovery cut a torn tail off this unit's log when the node started, and the first
    /// assignment since has not been applied yet ([`UnitRuntime::note_torn`],
    /// [`UnitRuntime::take_torn`]).
    torn: AtomicBool,
}

/// A primary's state of its unit.
pub struct PrimarySide {
    /// Orders VBA assignment and the sending of records, so that records go out to each
    /// secondary in VBA order.
    pub sequencer: tokio::sync::Mutex<()>,
    pub window: Mutex<Window>,
    /// One report of an unresponsive secondary at a time.
    pub marking: tokio::sync::Mutex<()>,
    /// One round of asking copies how far they are at a time (`primary::ask_copies`).
    pub asking: tokio::sync::Mutex<()>,
    /// `syncing` copies that joined (see `replica::catch_up`): they get every write from the VBA
    /// given here on, and the primary waits for them as for current copies, until the database
    /// lists them current (or stale).
    joined: Mutex<std::collections::BTreeMap<NodeId, Vba>>,
    /// The copies told where this primary's generation starts (`primary::announce`), and the
    /// generation they were told for.
    announced: Mutex<(Generation, BTreeSet<NodeId>)>,
    /// Woken whenever the window's committed VBA may have moved.
    committed_changed: tokio::sync::Notify,
}

/// A secondary's state of its unit.
pub struct SecondarySide {
    /// Records are queued to the engine in VBA order under this lock.
    pub applying: tokio::sync::Mutex<()>,
    /// The next VBA the engine expects, watched by frames that arrived early.
    pub expected: watch::Sender<Vba>,
    /// A resync of this copy is running ([`UnitRuntime::begin_resync`]).
    resyncing: AtomicBool,
    /// The newest generation whose primary told this copy where it starts
    /// (`replica::replicate`). Memory only: after a restart, frames wait for the database's
    /// answer, which names that generation.
    heard_generation: AtomicU64,
    /// The last resync of this copy, for metrics.
    resync: Mutex<Option<vbs_wire::api::ResyncProgress>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl UnitRuntime {
    pub fn new(engine: Arc<Unit>, node: NodeId) -> UnitRuntime {
        let marks = engine.marks();
        let next = engine.next_vba();
        let last = engine.last_vba();
        UnitRuntime {
            id: engine.id(),
            engine,
            node,
            assignment: Mutex::new(None),
            lease: Mutex::new(Lease::default()),
            primary: PrimarySide {
                sequencer: tokio::sync::Mutex::new(()),
                window: Mutex::new(Window::new(last)),
                marking: tokio::sync::Mutex::new(()),
                asking: tokio::sync::Mutex::new(()),
                joined: Mutex::new(std::collections::BTreeMap::new()),
                announced: Mutex::new((Generation(0), BTreeSet::new())),
                committed_changed: tokio::sync::Notify::new(),
            },
            secondary: SecondarySide {
                applying: tokio::sync::Mutex::new(()),
                expected: watch::Sender::new(next),
                resyncing: AtomicBool::new(false),
                heard_generation: AtomicU64::new(0),
                resync: Mutex::new(None),
            },
            slice_updated: Mutex::new(None),
            lost: AtomicBool::new(marks.lost),
            undecided: AtomicBool::new(marks.undecided),
            marks: Mutex::new(marks),
            torn: AtomicBool::new(false),
        }
    }

    /// Recovery cut a torn tail off this unit's log as the node started.
    pub fn note_torn(&self) {
        self.torn.store(true, Ordering::Relaxed);
    }

    /// Whether recovery cut a torn tail that no assignment has been applied to since; the
    /// first call after it answers yes.
    pub fn take_torn(&self) -> bool {
        self.torn.swap(false, Ordering::Relaxed)
    }

    /// Starts a resync of this copy unless one is running: `false` if one is.
    pub fn begin_resync(&self) -> bool {
        !self.secondary.resyncing.swap(true, Ordering::AcqRel)
    }

    pub fn end_resync(&self) {
        self.secondary.resyncing.store(false, Ordering::Release);
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    pub fn is_undecided(&self) -> bool {
        self.undecided.load(Ordering::Relaxed)
    }

    pub fn marks(&self) -> Marks {
        *lock(&self.marks)
    }

    /// Marks this copy as having lost records the database counts on, found in the generation
    /// of its assignment (none before the first heartbeat reply: the reply's is taken then).
    pub fn mark_lost(&self) {
        let generation = self.assignment().map(|a| a.generation);
        self.change_marks(|m| m.lose(generation));
    }

    /// Decides the marks from what they are, under the lock that orders every change of them,
    /// so that a mark set meanwhile (a primary finding its history diverged) is not written
    /// over; `decide` returns the new marks and what else the caller wants back.
    pub fn decide_marks<T>(&self, decide: impl FnOnce(Marks) -> (Marks, T)) -> T {
        self.change_marks(|m| {
            let (marks, other) = decide(*m);
            *m = marks;
            other
        })
    }

    /// Changes the marks: at once in memory, so the copy stops (or resumes) serving now, then
    /// in `unit.json`. The write blocks the calling thread; marks change only when a copy
    /// turns out lost or wiped, or is resolved, and what they guard must hold across a crash
    /// from then on.
    fn change_marks<T>(&self, change: impl FnOnce(&mut Marks) -> T) -> T {
        let mut kept = lock(&self.marks);
        let before = *kept;
        let mut marks = before;
        let result = change(&mut marks);
        if marks == before {
            return result;
        }
        *kept = marks;
        self.lost.store(marks.lost, Ordering::Relaxed);
        self.undecided.store(marks.undecided, Ordering::Relaxed);
        if let Err(e) = self.engine.set_marks(marks) {
            tracing::error!(unit = %self.id, error = %e, lost = marks.lost, undecided = marks.undecided,
                "cannot keep this copy's marks on disk; they hold in memory until the node restarts");
        }
        result
    }

    pub fn assignment(&self) -> Option<Assignment> {
        lock(&self.assignment).clone()
    }

    /// What the secondary's decisions (`replication::secondary`) see of this copy.
    pub fn secondary_view(&self) -> View {
        View {
            assigned: lock(&self.assignment)
                .as_ref()
                .map(|a| (a.role, a.generation)),
            announced: Generation(self.secondary.heard_generation.load(Ordering::Acquire)),
            next_vba: self.engine.next_vba(),
            resyncing: self.secondary.resyncing.load(Ordering::Acquire),
        }
    }

    /// The primary of `generation` told this copy where its generation starts: frames of older
    /// generations are refused from now on.
    pub fn note_announced(&self, generation: Generation) {
        self.secondary
            .heard_generation
            .fetch_max(generation.0, Ordering::AcqRel);
    }

    /// The copies a primary sends records to and waits for: the current secondaries and the
    /// joined syncing copies.
    pub fn replicas(&self, assignment: &Assignment) -> Vec<CopyInfo> {
        let joined = lock(&self.primary.joined);
        assignment
            .copies
            .iter()
            .filter(|c| c.node != self.node)
            .filter(|c| c.status == CopyStatus::Current || joined.contains_key(&c.node))
            .cloned()
            .collect()
    }

    /// Forgets joined copies that the database no longer lists as syncing: they are current now,
    /// or stale again.
    fn settle_joined(&self, assignment: &Assignment) {
        let mut joined = lock(&self.primary.joined);
        joined.retain(|node, _| {
            assignment
                .copies
                .iter()
                .any(|c| &c.node == node && c.status == CopyStatus::Syncing)
        });
    }

    /// Takes a new assignment from the database, from a heartbeat sent at `sent`. A reply to a
    /// heartbeat sent before this node last learned the slice from a notification reply may
    /// predate what that notification committed, so it is ignored: the next beat brings the
    /// slice as it is now.
    pub fn assign(&self, assignment: Assignment, sent: Instant) {
        if lock(&self.slice_updated).is_some_and(|updated| sent < updated) {
            return;
        }
        self.settle_joined(&assignment);
        let was_primary = self.assignment().is_some_and(|a| a.role == Role::Primary);
        if assignment.role == Role::Primary && !was_primary {
            // A new primary starts with nothing in flight, from its own log's end.
            self.update_window(|window| *window = Window::new(self.engine.last_vba()));
        }
        let is_primary = assignment.role == Role::Primary;
        *lock(&self.assignment) = Some(assignment);
        if is_primary {
            self.refresh_window();
        }
    }

    /// The window waits for the copies the primary waits for.
    pub fn refresh_window(&self) {
        let Some(assignment) = self.assignment() else {
            return;
        };
        let replicas: Vec<NodeId> = self
            .replicas(&assignment)
            .into_iter()
            .map(|c| c.node)
            .collect();
        self.update_window(|window| window.set_current(&replicas));
    }

    /// A syncing copy joined at `from`: it gets and acknowledges every write from there on.
    pub fn join(&self, node: NodeId, from: Vba) {
        lock(&self.primary.joined).insert(node, from);
        self.refresh_window();
    }

    /// Where `node` joined, if it did.
    pub fn joined_at(&self, node: &NodeId) -> Option<Vba> {
        lock(&self.primary.joined).get(node).copied()
    }

    /// Updates the copies from a slice map the database returned (after a notification).
    pub fn update_slice(&self, slice: &SliceMap) {
        *lock(&self.slice_updated) = Some(Instant::now());
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
        let settled = assignment.clone();
        drop(guard);
        self.settle_joined(&settled);
        self.refresh_window();
    }

    /// This copy's resync was reported caught up (the primary answers only once that is
    /// committed): take `current` now rather than at the next beat.
    pub fn mark_current(&self) {
        *lock(&self.slice_updated) = Some(Instant::now());
        if let Some(assignment) = lock(&self.assignment).as_mut() {
            assignment.status = CopyStatus::Current;
            if let Some(me) = assignment.copies.iter_mut().find(|c| c.node == self.node) {
                me.status = CopyStatus::Current;
            }
        }
    }

    pub fn set_resync_progress(&self, progress: vbs_wire::api::ResyncProgress) {
        *lock(&self.secondary.resync) = Some(progress);
    }

    pub fn resync_progress(&self) -> Option<vbs_wire::api::ResyncProgress> {
        *lock(&self.secondary.resync)
    }

    pub fn renew_lease(&self, sent_at: Instant, lease: std::time::Duration) {
        lock(&self.lease).renew(sent_at, lease);
    }

    /// The assignment, if this copy is current at `generation` and not marked lost or undecided:
    /// what a copy must be to hand its records to another (read repair, scrub).
    pub fn current_at(&self, generation: Generation) -> Result<Assignment, WireError> {
        match self.assignment() {
            Some(a)
                if a.generation == generation
                    && a.status == CopyStatus::Current
                    && !self.is_lost()
                    && !self.is_undecided() =>
            {
                Ok(a)
            }
            _ => Err(WireError::new(
                ErrorCode::NotCurrent,
                format!(
                    "this copy of slice {} is not current at generation {generation}",
                    self.id
                ),
            )),
        }
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
            return Err(self.stale_generation(generation, assignment.generation));
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
        if assignment.status != CopyStatus::Current || self.is_lost() || self.is_undecided() {
            return Err(WireError::new(
                ErrorCode::NotCurrent,
                format!(
                    "this copy of slice {} is {}",
                    self.id,
                    assignment.status.as_str()
                ),
            ));
        }
        #[cfg(feature = "bugs")]
        if crate::bugs::enabled(crate::bugs::Bug::IgnoreLease) {
            return Ok(assignment);
        }
        if !lock(&self.lease).holds(Instant::now()) {
            return Err(WireError::new(
                ErrorCode::NotPrimary,
                format!("the primary lease of slice {} has run out", self.id),
            ));
        }
        Ok(assignment)
    }

    /// Refuses client IO past the slice's end as this node knows it: the volume grew and the
    /// client heard before this node did (it hears at its next heartbeat), so the client retries.
    pub fn in_slice(
        &self,
        assignment: &Assignment,
        lba: Lba,
        blocks: u64,
    ) -> Result<(), WireError> {
        let end = lba
            .0
            .saturating_add(blocks)
            .saturating_mul(vbs_wire::types::BLOCK_BYTES);
        if end <= assignment.unit_bytes {
            return Ok(());
        }
        Err(WireError::new(
            ErrorCode::Unavailable,
            format!(
                "blocks {}..{} are past the {} bytes of slice {} known here; if the volume grew, \
                 this node learns it at its next heartbeat",
                lba.0,
                lba.0.saturating_add(blocks),
                assignment.unit_bytes,
                self.id
            ),
        ))
    }

    pub fn generation(&self) -> Generation {
        self.assignment()
            .map_or_else(|| self.engine.generation(), |a| a.generation)
    }

    /// Changes the replication window, then wakes the reads waiting for its committed VBA
    /// ([`UnitRuntime::wait_window`]), which the change may have moved.
    pub fn update_window<T>(&self, change: impl FnOnce(&mut Window) -> T) -> T {
        let changed = change(&mut lock(&self.primary.window));
        self.primary.committed_changed.notify_waiters();
        changed
    }

    /// The refusal of a request of `generation`, older than this slice's `current` one.
    pub fn stale_generation(&self, generation: Generation, current: Generation) -> WireError {
        WireError::new(
            ErrorCode::StaleGeneration,
            format!(
                "slice {} is at generation {current}, not {generation}",
                self.id
            ),
        )
        .with_detail(current.0)
    }

    /// Waits until `look` finds what it looks for in the replication window, looking again
    /// each time the window changes; `None` if it did not by `deadline`.
    pub async fn wait_window<T>(
        &self,
        deadline: tokio::time::Instant,
        mut look: impl FnMut(&Window) -> Option<T>,
    ) -> Option<T> {
        loop {
            let changed = self.primary.committed_changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so that a change right after the look is not missed.
            changed.as_mut().enable();
            if let Some(found) = look(&lock(&self.primary.window)) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Where this primary's history for `generation` starts: the VBA before its first record
    /// of that generation, or its last VBA when it has none yet.
    pub fn generation_start(&self, generation: Generation) -> Vba {
        match self.engine.generations().last() {
            Some(last) if last.generation == generation => Vba(last.first_vba.0 - 1),
            _ => self.engine.last_vba(),
        }
    }

    /// Whether `copy` was told where `generation` starts.
    pub fn announced(&self, generation: Generation, copy: &NodeId) -> bool {
        let announced = lock(&self.primary.announced);
        announced.0 == generation && announced.1.contains(copy)
    }

    /// Notes that `copy` was told where `generation` starts (forgetting older generations).
    pub fn set_announced(&self, generation: Generation, copy: &NodeId) {
        let mut announced = lock(&self.primary.announced);
        if announced.0 != generation {
            *announced = (generation, BTreeSet::new());
        }
        announced.1.insert(copy.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Device, DeviceOptions, MemoryBackend};

    fn open(backend: &MemoryBackend) -> Device {
        let options = DeviceOptions {
            segment_bytes: 64 << 10,
            spare_segments: 1,
            sync: true,
        };
        Device::open(Arc::new(backend.clone()), &options)
            .expect("device opens")
            .0
    }

    #[test]
    fn a_copys_marks_hold_across_a_restart_until_cleared() {
        let backend = MemoryBackend::new(1 << 30);
        let unit = UnitId::new(1, 0);
        let node = NodeId("n1".into());
        {
            let device = open(&backend);
            let undecided = Marks {
                undecided: true,
                ..Marks::default()
            };
            let engine = device
                .create_unit_marked(unit, 1 << 20, undecided)
                .expect("created");
            let runtime = UnitRuntime::new(engine, node.clone());
            assert!(runtime.is_undecided());
            let lost = Marks {
                lost: true,
                undecided: false,
                lost_in: Some(Generation(1)),
            };
            runtime.decide_marks(|_| (lost, ()));
        }
        // After a crash: the copy still knows it lost records, and serves nothing.
        let device = open(&backend);
        let runtime = UnitRuntime::new(device.unit(unit).expect("found"), node.clone());
        assert!(runtime.is_lost() && !runtime.is_undecided());
        assert_eq!(runtime.marks().lost_in, Some(Generation(1)));
        runtime.decide_marks(|_| (Marks::default(), ()));
        drop(runtime);
        drop(device);
        let device = open(&backend);
        let runtime = UnitRuntime::new(device.unit(unit).expect("found"), node);
        assert!(!runtime.is_lost() && !runtime.is_undecided());
    }
}
