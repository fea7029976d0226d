//! The leader's memory of heartbeats and the lease arithmetic built on it.
//!
//! Heartbeats are not committed through Raft: only the status changes they cause are. The leader
//! records when it *received* each node's last heartbeat; a storage node counts its lease from
//! when it *sent* that heartbeat, which is earlier. So the database may act against a node (mark
//! it down, promote another copy) only once `received + lease + clock_margin` has passed, the
//! margin covering clocks that run at slightly different rates. A newly elected leader has heard
//! nothing yet and cannot know what its predecessor granted, so it counts every node's lease from
//! its own election.
//!
//! A client that reports a primary unresponsive while that primary still heartbeats revokes the
//! primary's lease on those units: later heartbeat replies no longer renew it, and once the last
//! renewal has run out the slice fails over.
//!
//! A leader that itself stops running for a while (stopped, starved of CPU, its VM paused) hears
//! nothing meanwhile: the heartbeats wait unread in its sockets. When the detector finds it did
//! not look for longer than half a lease (it looks ten times a lease), it counts every node's
//! lease afresh from then, as a newly elected leader does, rather than take its own silence for
//! theirs.
//!
//! A verdict takes a while to commit, and a heartbeat may arrive meanwhile. So from the moment the
//! detector judges a node down until that verdict is resolved, replies to the node renew nothing
//! ([`Liveness::judge`], [`Liveness::renews`]); otherwise the node could hold a fresh lease as
//! primary when its slices fail over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use vbs_wire::api::{HeartbeatRequest, NodeState};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::resync::ResyncTracker;
use crate::state::command::{CopyChange, SliceUpdate};
use crate::state::view::CopyMemory;
use crate::state::{Command, Copy, Refusal, State};

/// Most unit reports kept from one heartbeat; a node holding more reports the rest next time.
pub const MAX_UNITS_PER_HEARTBEAT: usize = 100_000;

/// How long leases last and how much slack the database adds before acting on one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub lease: Duration,
    /// Added to the lease before the database acts: covers clock-rate differences between the
    /// storage node's monotonic clock and the leader's.
    pub clock_margin: Duration,
}

impl LeaseConfig {
    /// How long after the last renewal the database waits before acting.
    pub fn wait(&self) -> Duration {
        self.lease + self.clock_margin
    }
}

/// What the leader heard from one node.
#[derive(Clone, Debug)]
struct Heard {
    at: Instant,
    free_bytes: Option<u64>,
    last_vbas: BTreeMap<UnitId, Vba>,
    /// The units the node's last heartbeat listed, when it listed all it holds.
    listed: Option<BTreeSet<UnitId>>,
    /// Each data directory's space, as last reported.
    devices: Vec<vbs_wire::api::DeviceSpace>,
    /// The last scrub of each unit the node ran as primary.
    scrubs: BTreeMap<UnitId, vbs_wire::api::ScrubStatus>,
}

/// A primary lease that heartbeat replies no longer renew.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Revocation {
    generation: Generation,
    /// Why, for the event log of the failover that follows.
    cause: String,
    /// When the last heartbeat that renewed the lease was received.
    last_renewal: Instant,
}

/// The leader's in-memory view of storage node liveness. Lost on a leader change, by design.
#[derive(Debug)]
pub struct Liveness {
    config: LeaseConfig,
    /// Since when every node's lease is counted at the latest: the election, or the end of the
    /// last pause of this leader.
    leader_since: Instant,
    /// When the detector last judged.
    last_look: Instant,
    heard: HashMap<NodeId, Heard>,
    revoked: BTreeMap<UnitId, Revocation>,
    /// Nodes judged down whose verdict is not resolved yet: their heartbeats renew no lease.
    judging: BTreeSet<NodeId>,
    /// Resync progress reports, also the leader's alone.
    pub resyncs: ResyncTracker,
    /// Client IO as nodes report it, for the dashboard's charts.
    pub io: crate::io_history::IoHistory,
    /// A node whose devices are all past the full threshold reports no room for new copies.
    pub space: vbs_wire::api::SpaceThresholds,
}

/// What the failure detector found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Commands to commit: nodes silent past their lease go down; revoked primaries fail over.
    pub commands: Vec<Command>,
    /// Revocations to drop: the slice moved on, or no copy can take over, so the current primary
    /// had better keep its lease.
    pub cancel: Vec<UnitId>,
    /// How long the detector had not looked, when that was longer than half a lease: this leader
    /// was not running, and every node's lease is counted afresh from now.
    pub paused: Option<Duration>,
}

impl Liveness {
    /// A fresh memory for a leader elected at `leader_since`.
    pub fn new(config: LeaseConfig, leader_since: Instant) -> Liveness {
        Liveness {
            config,
            leader_since,
            last_look: leader_since,
            heard: HashMap::new(),
            revoked: BTreeMap::new(),
            judging: BTreeSet::new(),
            resyncs: ResyncTracker::default(),
            io: crate::io_history::IoHistory::default(),
            space: vbs_wire::api::SpaceThresholds::default(),
        }
    }

    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// Records a heartbeat from `node` received at `now`.
    pub fn heard(&mut self, node: &NodeId, now: Instant, request: &HeartbeatRequest) {
        let entry = self.heard_from(node, now, request.free_bytes);
        for report in request.units.iter().take(MAX_UNITS_PER_HEARTBEAT) {
            entry.last_vbas.insert(report.unit, report.last_vba);
        }
        entry.listed = (request.units.len() <= MAX_UNITS_PER_HEARTBEAT)
            .then(|| request.units.iter().map(|r| r.unit).collect());
        if !request.devices.is_empty() {
            entry.devices = request.devices.clone();
        }
        for scrub in &request.scrubs {
            entry.scrubs.insert(scrub.unit, scrub.status);
        }
    }

    /// Each data directory of `node` with its space, as last reported to this leader.
    pub fn devices(&self, node: &NodeId) -> &[vbs_wire::api::DeviceSpace] {
        self.heard.get(node).map_or(&[], |h| &h.devices)
    }

    /// Records a registration from `node` received at `now` (it lists no units).
    pub fn registered(&mut self, node: &NodeId, now: Instant, free_bytes: Option<u64>) {
        self.heard_from(node, now, free_bytes);
    }

    fn heard_from(&mut self, node: &NodeId, now: Instant, free_bytes: Option<u64>) -> &mut Heard {
        let entry = self.heard.entry(node.clone()).or_insert_with(|| Heard {
            at: now,
            free_bytes: None,
            last_vbas: BTreeMap::new(),
            listed: None,
            devices: Vec::new(),
            scrubs: BTreeMap::new(),
        });
        entry.at = entry.at.max(now);
        if free_bytes.is_some() {
            entry.free_bytes = free_bytes;
        }
        entry
    }

    /// When the leader last heard from `node`, if it has since it was elected.
    pub fn last_heard(&self, node: &NodeId) -> Option<Instant> {
        self.heard.get(node).map(|h| h.at)
    }

    /// The free space every node last reported, for placement: none for a node whose devices
    /// are all past the full threshold, which takes no new copies.
    pub fn reported_free(&self) -> BTreeMap<NodeId, u64> {
        self.heard
            .iter()
            .filter_map(|(n, h)| {
                let free = if self.space.node_is_full(&h.devices) {
                    0
                } else {
                    h.free_bytes?
                };
                Some((n.clone(), free))
            })
            .collect()
    }

    pub fn last_vba(&self, node: &NodeId, unit: UnitId) -> Option<Vba> {
        self.heard
            .get(node)
            .and_then(|h| h.last_vbas.get(&unit).copied())
    }

    /// What this leader remembers of `copy` of `unit`, for views at `now`. A node whose last
    /// heartbeat listed all its units but not this one holds none of it: it reported VBA 0.
    pub fn remembered(&self, unit: UnitId, copy: &Copy, now: Instant) -> CopyMemory {
        let unlisted = || {
            let listed = self.heard.get(&copy.node)?.listed.as_ref()?;
            (!listed.contains(&unit)).then_some(Vba::ZERO)
        };
        CopyMemory {
            resync: self.resyncs.status(unit, copy, now),
            reported_vba: self.last_vba(&copy.node, unit).or_else(unlisted),
            scrub: self
                .heard
                .get(&copy.node)
                .and_then(|h| h.scrubs.get(&unit).copied()),
        }
    }

    /// Every VBA the leader heard from `node`, for committing with a status change.
    pub fn last_vbas(&self, node: &NodeId) -> Vec<vbs_wire::api::UnitReport> {
        self.heard
            .get(node)
            .map(|h| {
                h.last_vbas
                    .iter()
                    .map(|(unit, vba)| vbs_wire::api::UnitReport {
                        unit: *unit,
                        last_vba: *vba,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The moment after which `node` can hold no lease granted by this leader or its
    /// predecessors.
    pub fn node_lease_expiry(&self, node: &NodeId) -> Instant {
        #[cfg(feature = "bugs")]
        if self.last_heard(node).is_none()
            && crate::bugs::enabled(crate::bugs::Bug::NewLeaderForgetsLeases)
        {
            return self.leader_since;
        }
        let renewed = self
            .last_heard(node)
            .map_or(self.leader_since, |at| at.max(self.leader_since));
        renewed + self.config.wait()
    }

    /// The `down` nodes whose lease ran out more than `grace` ago: their copies are re-created
    /// elsewhere. A new leader counts from its own election, so a leader change restarts the
    /// grace period rather than shorten it.
    pub fn down_past(&self, state: &State, now: Instant, grace: Duration) -> BTreeSet<NodeId> {
        state
            .nodes
            .values()
            .filter(|n| {
                // An absurd grace period overflows the clock: never lost, rather than a panic.
                let lost_at = self.node_lease_expiry(&n.id).checked_add(grace);
                n.state == NodeState::Down && lost_at.is_some_and(|at| now >= at)
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// The moment after which `node` can no longer act as primary of `unit`: its node lease, or,
    /// once the unit's lease was revoked, the last renewal before the revocation plus the wait.
    pub fn primary_lease_expiry(&self, node: &NodeId, unit: UnitId) -> Instant {
        match self.revoked.get(&unit) {
            Some(r) => self
                .node_lease_expiry(node)
                .min(r.last_renewal + self.config.wait()),
            None => self.node_lease_expiry(node),
        }
    }

    /// Stops renewing the lease of `primary` on `unit` at `generation`. The last renewal is the
    /// last heartbeat received so far: replies computed from now on do not renew. `cause` says
    /// why, for the event log.
    pub fn revoke(&mut self, unit: UnitId, generation: Generation, primary: &NodeId, cause: &str) {
        let last_renewal = self
            .last_heard(primary)
            .map_or(self.leader_since, |at| at.max(self.leader_since));
        match self.revoked.get(&unit) {
            Some(r) if r.generation == generation => {}
            _ => {
                self.revoked.insert(
                    unit,
                    Revocation {
                        generation,
                        cause: cause.to_string(),
                        last_renewal,
                    },
                );
            }
        }
    }

    /// Why the detector proposes `command`, for the event log: the lease that ran out, or the
    /// causes of the revocations behind a batch of failovers.
    pub fn cause_of(&self, command: &Command) -> String {
        match command {
            Command::SetNodeState { node, .. } => format!(
                "failure detector: no heartbeat from node {node} within its lease of {} ms",
                self.config.wait().as_millis()
            ),
            Command::UpdateSlices { updates } => {
                let causes: BTreeSet<&str> = updates
                    .iter()
                    .filter_map(|u| self.revoked.get(&u.unit))
                    .map(|r| r.cause.as_str())
                    .collect();
                let causes: Vec<&str> = causes.into_iter().collect();
                format!(
                    "failure detector: the revoked primary lease ran out ({})",
                    causes.join("; ")
                )
            }
            other => format!("failure detector: {other:?}"),
        }
    }

    pub fn cancel_revocation(&mut self, unit: UnitId) {
        self.revoked.remove(&unit);
    }

    /// Whether a heartbeat reply renews the primary lease of `unit` at `generation`.
    pub fn lease_renewed(&self, unit: UnitId, generation: Generation) -> bool {
        self.revoked
            .get(&unit)
            .is_none_or(|r| r.generation != generation)
    }

    /// Whether a heartbeat reply to `node`, computed from `state`, renews its lease as primary of
    /// `unit` at `generation`. Never for a node that is `down` in the state (the database acts
    /// against a down node without waiting for a lease: it must come back `up` first) or that
    /// is being judged down.
    pub fn renews(
        &self,
        state: &State,
        node: &NodeId,
        unit: UnitId,
        generation: Generation,
    ) -> bool {
        state.node_is_up(node)
            && !self.judging.contains(node)
            && self.lease_renewed(unit, generation)
    }

    /// The failure detector's step at `now`: the verdicts to commit, with the revocations they
    /// make pointless dropped, and every node judged down marked as being judged until
    /// [`Liveness::judged`] is called for it.
    pub fn judge(&mut self, state: &State, now: Instant) -> Verdicts {
        let paused = self.resume(now);
        let mut verdicts = self.detect(state, now);
        verdicts.paused = paused;
        for unit in &verdicts.cancel {
            self.cancel_revocation(*unit);
        }
        for command in &verdicts.commands {
            if let Command::SetNodeState {
                node,
                state: NodeState::Down,
                ..
            } = command
            {
                self.judging.insert(node.clone());
            }
        }
        verdicts
    }

    /// Notes that the detector looks at `now`. After a gap longer than half a lease, every
    /// node's lease is counted from `now` (what this leader last heard is as old as the gap) and
    /// the gap is returned. Half a lease: a node heartbeats several times a lease, so a shorter
    /// gap cannot make one that kept beating look silent for a whole lease and the margin.
    fn resume(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_look);
        self.last_look = self.last_look.max(now);
        if gap <= self.config.lease / 2 {
            return None;
        }
        #[cfg(feature = "bugs")]
        if crate::bugs::enabled(crate::bugs::Bug::PausedLeaderForgetsPause) {
            return None;
        }
        self.leader_since = self.leader_since.max(now);
        Some(gap)
    }

    /// The verdict on `node` is resolved: committed, refused, or abandoned with the leadership.
    pub fn judged(&mut self, node: &NodeId) {
        self.judging.remove(node);
    }

    /// The failure detector: what to commit at `now`.
    pub fn detect(&self, state: &State, now: Instant) -> Verdicts {
        let mut verdicts = Verdicts::default();
        for node in state.nodes.values() {
            if node.state == NodeState::Up && now >= self.node_lease_expiry(&node.id) {
                verdicts.commands.push(Command::SetNodeState {
                    node: node.id.clone(),
                    state: NodeState::Down,
                    last_vbas: self.last_vbas(&node.id),
                });
            }
        }
        let mut failovers = Vec::new();
        for (unit, revocation) in &self.revoked {
            let Some(slice) = state.slice(*unit) else {
                verdicts.cancel.push(*unit);
                continue;
            };
            if slice.generation != revocation.generation {
                verdicts.cancel.push(*unit);
                continue;
            }
            if now < self.primary_lease_expiry(&slice.primary, *unit) {
                continue;
            }
            match state.failover_candidate(slice) {
                Some(candidate) => failovers.push(failover(self, state, *unit, &candidate)),
                None => verdicts.cancel.push(*unit),
            }
        }
        if !failovers.is_empty() {
            verdicts
                .commands
                .push(Command::UpdateSlices { updates: failovers });
        }
        verdicts
    }
}

/// The update that makes `candidate` the primary of `unit` and the deposed primary's copy
/// `stale`: it may hold writes past the last acknowledged one, which the new primary does not.
pub fn failover(
    liveness: &Liveness,
    state: &State,
    unit: UnitId,
    candidate: &NodeId,
) -> SliceUpdate {
    let slice = state.slice(unit).expect("the caller looked the slice up");
    let old = &slice.primary;
    let old_vba = slice.copy(old).map_or(Vba::ZERO, |c| c.last_vba);
    let old_status = if state.node_is_up(old) {
        vbs_wire::api::CopyStatus::Stale
    } else {
        vbs_wire::api::CopyStatus::Down
    };
    SliceUpdate {
        new_primary: Some(candidate.clone()),
        copies: vec![CopyChange {
            node: old.clone(),
            status: old_status,
            last_vba: liveness.last_vba(old, unit).unwrap_or(old_vba),
        }],
        ..SliceUpdate::new(unit, slice.generation)
    }
}

/// What a heartbeat from `node` changes in the database: nothing for a node that is `up`; for a
/// node that was `down`, its return, with the last VBA it holds of each unit (its copies come
/// back as they were, and resync from there). Refused for a node nobody registered.
pub fn on_heartbeat(
    state: &State,
    node: &NodeId,
    request: &HeartbeatRequest,
) -> Result<Option<Command>, Refusal> {
    let known = state.nodes.get(node).ok_or_else(|| {
        Refusal::NotFound(format!(
            "storage node {node} is not registered; POST /v1/nodes first"
        ))
    })?;
    Ok(
        (known.state == NodeState::Down).then(|| Command::SetNodeState {
            node: node.clone(),
            state: NodeState::Up,
            last_vbas: request.units.clone(),
        }),
    )
}

#[cfg(test)]
mod tests;
