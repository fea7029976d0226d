//! The IO shell around Raft that every request handler and the failure detector share: where the
//! leader is, proposing a command with a deadline, linearizable reads, and the leader's
//! in-memory liveness table. Errors are [`ManagerError`]s; the HTTP layer (`api::error`) turns
//! them into answers.
//!
//! # Layout
//! - `mod.rs`: [`Manager`], Raft proposals and reads, the leader's memory.
//! - [`events`]: what a notification or a heartbeat does on the leader: the decision of
//!   [`crate::decide`] taken on the applied state, then its effects (leases revoked, resync
//!   progress remembered, commands committed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use parking_lot::Mutex;
use vbs_wire::security::Rejections;
use vbs_wire::types::NodeId;

use crate::config::Config;
use crate::decide::liveness::Liveness;
use crate::raft_types::{Raft, RaftId};
use crate::state::view::{nothing_remembered, Remembered};
use crate::state::{Command, Note, Outcome, Refusal};
use crate::store::{Applied, LogStore, SharedState};

pub mod events;

/// Why the managers could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The database refused it: what was asked is wrong, or the state does not allow it now.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(
        "the change was not committed within {} ms: fewer than a quorum of managers answer; it \
         may still be applied, retry to find out",
        timeout.as_millis()
    )]
    CommitTimedOut { timeout: Duration },
    #[error("leadership moved (new leader: {leader:?}) while the change was proposed; retry")]
    LeadershipMoved { leader: Option<RaftId> },
    #[error("the change was not committed: {0}")]
    NotCommitted(String),
    #[error(
        "a quorum of managers did not confirm this leader within {} ms; retry, or read with \
         ?local=true",
        timeout.as_millis()
    )]
    NotConfirmed { timeout: Duration },
    #[error("linearizable read failed: {0}")]
    ReadFailed(String),
    /// This replica stopped leading while it worked on the request.
    #[error("leadership moved while {0}")]
    NoLongerLeader(&'static str),
}

/// Where a request that needs the leader should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Local,
    Forward { leader: RaftId, addr: String },
    NoLeader,
}

/// The leader's liveness table, tagged with the term it was started in.
struct LeaderMemory {
    term: u64,
    liveness: Liveness,
}

/// One manager replica's running state.
pub struct Manager {
    pub config: Config,
    pub raft: Raft,
    pub log: LogStore,
    pub state: SharedState,
    /// HTTP client for requests forwarded to the leader (Raft traffic has its own).
    pub forward_client: reqwest::Client,
    /// Requests and connections refused for their credentials (`vbs_auth_rejected_total`).
    pub rejections: Arc<Rejections>,
    memory: Mutex<Option<LeaderMemory>>,
    /// Serializes the decisions that place copies (volume creation, drains, re-replication), so
    /// that two of them do not both count the same free space.
    pub placement_lock: tokio::sync::Mutex<()>,
    /// The term in which this replica, leading, last saw its applied state catch up with
    /// everything committed before that term (0: never).
    caught_up_term: AtomicU64,
}

impl Manager {
    pub fn new(
        config: Config,
        raft: Raft,
        log: LogStore,
        state: SharedState,
        forward_client: reqwest::Client,
    ) -> Manager {
        Manager {
            config,
            raft,
            log,
            state,
            forward_client,
            rejections: Arc::default(),
            memory: Mutex::new(None),
            placement_lock: tokio::sync::Mutex::new(()),
            caught_up_term: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> RaftId {
        self.config.id
    }

    /// Whether this replica leads, and in which term.
    pub fn leader_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    pub fn route(&self) -> Route {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            Some(leader) if leader == self.id() && m.state == ServerState::Leader => Route::Local,
            Some(leader) if leader != self.id() => {
                match m.membership_config.membership().get_node(&leader) {
                    Some(node) => Route::Forward {
                        leader,
                        addr: node.addr.clone(),
                    },
                    None => Route::NoLeader,
                }
            }
            _ => Route::NoLeader,
        }
    }

    /// Runs `f` on the leader's liveness table, starting a fresh one (every node gets a full
    /// lease from now) when this replica has become leader since the table was made. `None` when
    /// this replica does not lead.
    pub fn with_liveness<T>(&self, now: Instant, f: impl FnOnce(&mut Liveness) -> T) -> Option<T> {
        let term = self.leader_term()?;
        let mut memory = self.memory.lock();
        if memory.as_ref().is_none_or(|m| m.term != term) {
            tracing::info!(
                term,
                "leading: every storage node gets a full lease before judging"
            );
            let mut liveness = Liveness::new(self.config.lease, now);
            liveness.space = self.config.space;
            *memory = Some(LeaderMemory { term, liveness });
        }
        memory.as_mut().map(|m| f(&mut m.liveness))
    }

    /// Reads the applied state together with what the leader remembers of each copy (its resync,
    /// its last reported VBA; nothing when this replica does not lead), for views at `now`.
    pub fn read_with_memory<T>(
        &self,
        now: Instant,
        f: impl FnOnce(&Applied, Remembered) -> T,
    ) -> T {
        let mut f = Some(f);
        let led = self.with_liveness(now, |l| {
            let f = f.take().expect("with_liveness runs its closure once");
            self.read(|a| f(a, &|unit, copy| l.remembered(unit, copy, now)))
        });
        if let Some(value) = led {
            return value;
        }
        let f = f.expect("with_liveness runs its closure only when it returns a value");
        self.read(|a| f(a, &nothing_remembered))
    }

    /// Reads the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        f(&self.state.read())
    }

    /// Commits `command` through Raft and returns what applying it returned; the event log
    /// records what it changed with `cause` and the time now. Fails with 503 when it is not
    /// committed within the commit timeout: no quorum, or leadership lost. A command that timed
    /// out may still be committed later; every command is safe to retry.
    pub async fn propose(&self, command: Command, cause: &str) -> Result<Outcome, ManagerError> {
        let timeout = self.config.commit_timeout;
        match tokio::time::timeout(timeout, self.commit(command, cause)).await {
            Err(_) => Err(ManagerError::CommitTimedOut { timeout }),
            Ok(result) => result,
        }
    }

    /// [`Manager::propose`], with a refusal as an error.
    pub async fn apply(&self, command: Command, cause: &str) -> Result<Outcome, ManagerError> {
        match self.propose(command, cause).await? {
            Outcome::Refused(refusal) => Err(refusal.into()),
            outcome => Ok(outcome),
        }
    }

    /// Commits `command` (noted with `cause`, as [`Manager::propose`]) through Raft with no
    /// deadline: returns once Raft has resolved it, so that an error means it was not, and will
    /// not be, committed by this leader.
    pub async fn commit(&self, command: Command, cause: &str) -> Result<Outcome, ManagerError> {
        match self
            .raft
            .client_write(command.noted(Note::now(cause)))
            .await
        {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ManagerError::LeadershipMoved {
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(ManagerError::NotCommitted(e.to_string())),
        }
    }

    /// Waits until this leader's applied state reflects everything committed before the call,
    /// confirmed by a quorum: a read after it is linearizable.
    pub async fn linearizable(&self) -> Result<(), ManagerError> {
        let timeout = self.config.commit_timeout;
        match tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await {
            Err(_) => Err(ManagerError::NotConfirmed { timeout }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ManagerError::ReadFailed(e.to_string())),
        }
    }
}

impl Manager {
    /// Waits, once per term, until this leader has applied everything committed before it was
    /// elected. A new leader's applied state may lag what its predecessors committed: a node
    /// brought back `up` (and granted a lease) would still look `down`, and a decision taken on
    /// that view could skip the lease wait. Within its own term, a leader applies its own
    /// changes before it answers for them, so later calls return at once.
    pub async fn caught_up(&self) -> Result<(), ManagerError> {
        let term = self.leader_term();
        if term.is_some_and(|t| t == self.caught_up_term.load(Ordering::Acquire)) {
            return Ok(());
        }
        self.linearizable().await?;
        if let Some(term) = term {
            self.caught_up_term.store(term, Ordering::Release);
        }
        Ok(())
    }

    /// For a decision that counts free space (placing a volume or its growth, a drain's
    /// feasibility): waits until this leader is caught up (a new leader's lagging view would
    /// count space already assigned as free), takes the placement lock (no two such decisions
    /// count the same space), and returns its guard with the free space each node last
    /// reported.
    pub async fn placing(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, BTreeMap<NodeId, u64>), ManagerError> {
        self.caught_up().await?;
        let guard = self.placement_lock.lock().await;
        let free = self
            .with_liveness(Instant::now(), |l| l.reported_free())
            .unwrap_or_default();
        Ok((guard, free))
    }
}

pub type SharedManager = Arc<Manager>;
