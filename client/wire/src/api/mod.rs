//! JSON bodies of the manager HTTP API (`vbs-manager`), shared by the manager, storage nodes, the
//! client library and the CLI.
//!
//! Routes (all under the manager's `--listen` address):
//!
//! | route | request | response |
//! | --- | --- | --- |
//! | `GET /v1/status[?volumes=false]` | | [`ClusterStatus`] (without volume maps: counts only) |
//! | `POST /v1/nodes` | [`RegisterNodeRequest`] | [`NodeStatus`] |
//! | `POST /v1/nodes/{id}/heartbeat` | [`HeartbeatRequest`] | [`HeartbeatResponse`] |
//! | `POST /v1/nodes/{id}/drain` | (no body) | [`NodeStatus`] |
//! | `POST /v1/notifications` | [`Notification`] | [`NotificationResponse`] |
//! | `GET /v1/volumes[?limit=N][&after=NAME][&status=FILTER]` | | [`VolumeList`] (a page, in name order; [`VolumeFilter`]) |
//! | `POST /v1/volumes` | [`CreateVolumeRequest`] | [`VolumeMap`] |
//! | `GET /v1/volumes/{name}` | | [`VolumeMap`] |
//! | `DELETE /v1/volumes/{name}` | | [`VolumeMap`] (the deleted volume) |
//! | `POST /v1/managers` | [`AddManagerRequest`] | [`ClusterStatus`] |
//! | `DELETE /v1/managers/{id}` | | [`ClusterStatus`] |
//! | `GET /v1/events[?after=SEQ][&limit=N]` | | [`EventPage`] (the event log after a cursor) |
//! | `GET /v1/io[?volume=NAME]` | | [`IoHistory`] (the leader's last 15 minutes of client IO) |
//! | `GET /metrics` | | Prometheus text |
//! | `GET /health` | | [`Health`] |
//!
//! Every error is a 4xx or 5xx with an [`ApiError`] body. Request types refuse unknown fields, so a
//! misspelt field is an error rather than a silently ignored setting. Reads are linearizable unless
//! the query string says `?local=true` (answer from the member's own, possibly lagging, state).
//!
//! One file, past 600 lines, because it is the API's reference: the route table above and every
//! body it names read as one document; the event log's and IO history's bodies have their own.

mod events;
mod io;

pub use events::{Event, EventKind, EventPage, MAX_EVENTS, MAX_EVENTS_PER_PAGE};
pub use io::{
    DeviceSpace, IoHistory, IoPoint, IoSeries, IoSource, SpaceThresholds, VolumeIo,
    IO_LATENCY_BUCKETS_US,
};

use serde::{Deserialize, Serialize};

use crate::types::{Generation, ManagerId, NodeId, SliceIndex, UnitId, Vba, VolumeId};

/// Default number of copies of each slice when a create request does not say.
pub const DEFAULT_REPLICAS: u32 = 3;
/// Default slice size when a create request does not say: 1 GiB.
pub const DEFAULT_SLICE_BYTES: u64 = 1 << 30;
/// Most slices one volume may have, so a volume map stays a reasonable size.
pub const MAX_SLICES_PER_VOLUME: u64 = 1 << 16;

/// What went wrong, as a code a program can branch on; the `error` text says it to a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or named impossible values (400).
    BadRequest,
    /// The named volume, node, unit or manager does not exist (404).
    NotFound,
    /// A volume with that name, or a manager with that id, already exists (409).
    AlreadyExists,
    /// The request named an older generation than the slice's: refresh the volume map (409).
    StaleGeneration,
    /// The request does not fit the current state, e.g. the source is not the slice's primary (409).
    Conflict,
    /// Too few storage nodes are up, or they lack free capacity, for the request (409).
    InsufficientNodes,
    /// The primary's lease has not run out yet; retry after `retry_after_ms` (503).
    LeaseNotExpired,
    /// No leader, no quorum, or a timeout inside the manager cluster; retry later (503).
    Unavailable,
    /// A bug or a local disk failure in the manager (500).
    Internal,
    /// No bearer token, or a wrong one, where the cluster requires authentication (401).
    Unauthorized,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One sentence for a person: what was wrong and, where it helps, what to do.
    pub error: String,
    pub code: ErrorCode,
    /// For [`ErrorCode::LeaseNotExpired`] and [`ErrorCode::Unavailable`]: when to try again. Also
    /// sent as the `Retry-After` header (in whole seconds, rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Operational status of a storage node, as judged by the leader's failure detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Up,
    Down,
}

/// Update status of one copy of a slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyStatus {
    /// Holds every VBA the primary has acknowledged.
    Current,
    /// Missed writes; must catch up before it is current again.
    Stale,
    /// Catching up while also receiving new writes from the primary.
    Syncing,
    /// Its node is down.
    Down,
}

impl CopyStatus {
    pub const ALL: [CopyStatus; 4] = [
        CopyStatus::Current,
        CopyStatus::Stale,
        CopyStatus::Syncing,
        CopyStatus::Down,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CopyStatus::Current => "current",
            CopyStatus::Stale => "stale",
            CopyStatus::Syncing => "syncing",
            CopyStatus::Down => "down",
        }
    }
}

/// Role of a copy within its slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Secondary,
}

/// `POST /v1/nodes`: a storage node announces itself (again after every restart). Registering an
/// existing id updates its address and capacity and counts as a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterNodeRequest {
    pub id: NodeId,
    /// Data-plane address (`host:port`) that primaries, secondaries and clients connect to.
    pub addr: String,
    pub capacity_bytes: u64,
    /// Free bytes now; defaults to `capacity_bytes`.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// The node's data directories and their identities. A registration that presents a device
    /// the database does not know for the node (wiped, replaced, or another node's) is answered
    /// with it in [`NodeStatus::unknown_devices`] and recorded only once the node says it has
    /// marked the copies on it lost ([`DeviceIdentity::copies_marked_lost`]).
    #[serde(default)]
    pub devices: Vec<DeviceIdentity>,
}

/// `POST /v1/volumes/{name}/slices/{index}/accept-loss`: a slice with no current copy (its only
/// current copy lost records the database had recorded for it, a torn tail) serves again from the
/// copy on `node` (default: the copy on an up node with the highest VBA heard), as it is: its
/// last VBA becomes the slice's, its node the primary, with a new generation. What no copy holds
/// any more is lost for good, so `confirm` must be `true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptLossRequest {
    #[serde(default)]
    pub node: Option<NodeId>,
    #[serde(default)]
    pub confirm: bool,
}

/// A data directory of a storage node, as the node presents it when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    pub dir: String,
    /// The identity the device was given when it was first used (`device.json`).
    pub id: String,
    /// The node has marked every copy on the device lost (they serve nothing until resynced):
    /// the database may take the device as the node's.
    #[serde(default)]
    pub copies_marked_lost: bool,
}

/// The last VBA a storage node holds for one of its units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitReport {
    pub unit: UnitId,
    pub last_vba: Vba,
}

/// `POST /v1/nodes/{id}/heartbeat`, sent about once a second. Kept in the leader's memory only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Free bytes now; omitted when unchanged or unknown.
    #[serde(default)]
    pub free_bytes: Option<u64>,
    /// One entry per unit the node holds.
    #[serde(default)]
    pub units: Vec<UnitReport>,
    /// Client IO totals of the volumes whose totals changed since the last answered heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub io: Vec<VolumeIo>,
    /// Each data directory's space.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpace>,
    /// Scrubs finished as primary since the last answered heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrubs: Vec<UnitScrub>,
}

/// What a slice's last scrub found, run by a node as the slice's primary (`vbs scrub`, or the
/// background scrub): counts over every copy it compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStatus {
    /// When it finished, in milliseconds since the Unix epoch, by the node's clock.
    pub finished_unix_ms: u64,
    pub records: u64,
    pub bytes: u64,
    /// Records that failed their checksum on any copy, and those repaired from a good one.
    pub damaged: u64,
    pub repaired: u64,
    /// VBA ranges where a copy's records still differed from the primary's.
    pub mismatched: u64,
}

impl ScrubStatus {
    /// Whether it found something it could not mend.
    pub fn has_problems(&self) -> bool {
        self.damaged > self.repaired || self.mismatched > 0
    }
}

/// A unit's [`ScrubStatus`], as a heartbeat carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitScrub {
    pub unit: UnitId,
    #[serde(flatten)]
    pub status: ScrubStatus,
}

/// One copy of a slice as the volume map shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    pub node: NodeId,
    /// The node's data-plane address.
    pub addr: String,
    pub role: Role,
    pub status: CopyStatus,
    /// Highest VBA the node reported for this copy when its status last changed (replicated).
    pub last_vba: Vba,
    /// The last VBA the node reported for this copy in a heartbeat, as the leader remembers it;
    /// absent where the answering manager remembers none (a follower's local read, a leader just
    /// elected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_vba: Option<Vba>,
    /// The copy's resync, while one runs and after the last one finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncStatus>,
    /// The last scrub of the slice this copy's node ran as its primary, as the leader heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrub: Option<ScrubStatus>,
}

impl SliceMap {
    /// The newest scrub any of the slice's copies ran as its primary.
    pub fn last_scrub(&self) -> Option<ScrubStatus> {
        self.copies
            .iter()
            .filter_map(|c| c.scrub)
            .max_by_key(|s| s.finished_unix_ms)
    }
}

impl CopyInfo {
    /// The newest last VBA known for this copy: the one its node last reported, or else the one
    /// committed with its last status change.
    pub fn latest_vba(&self) -> Vba {
        self.reported_vba.unwrap_or(self.last_vba)
    }
}

/// What a storage node must serve for one of its units, in a heartbeat reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedUnit {
    pub unit: UnitId,
    pub volume_size_bytes: u64,
    pub slice_bytes: u64,
    /// Bytes of this slice: `slice_bytes`, or less for a volume's last slice.
    pub unit_bytes: u64,
    pub generation: Generation,
    /// This node's role for the unit.
    pub role: Role,
    /// This node's copy status.
    pub status: CopyStatus,
    /// Only meaningful for [`Role::Primary`]: `true` when this reply renews the node's lease as the
    /// unit's primary. `false` after a client reported the primary unresponsive, or while the
    /// slice is handed over from a draining node: the primary keeps serving only until the lease
    /// from earlier replies runs out, after which the database may promote another copy.
    pub lease_renewed: bool,
    /// Every copy of the slice, this node's included, so a primary knows its secondaries.
    pub copies: Vec<CopyInfo>,
    /// An operator accepted the loss of what this node's copy no longer holds, at this
    /// generation, the copy ending at this VBA (`vbs volume accept-loss`): the node serves it
    /// again although it had reported it not current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_accepted_vba: Option<Vba>,
}

/// Reply to a heartbeat; it always comes from the Raft leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The lease. A primary counts it from the moment it *sent* the heartbeat this replies to, and
    /// stops serving when it runs out without a renewing reply.
    pub lease_ms: u64,
    pub node_state: NodeState,
    /// Every unit assigned to the node. A unit the node holds but that is not listed here was
    /// deleted: the node may drop it.
    pub units: Vec<AssignedUnit>,
}

/// A unit as named in a notification, with the generation the sender knows for its slice. A
/// generation older than the slice's makes the database refuse the whole notification (fencing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitGeneration {
    pub unit: UnitId,
    pub generation: Generation,
}

/// Who sent a notification: `{"node": "n1"}` or `{"client": "host-7"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A storage node, by its id.
    Node(NodeId),
    /// A compute node (anything using the client library); the name is for logs only.
    Client(String),
}

/// `POST /v1/notifications`, tagged by `kind`. Applied all or nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notification {
    /// The source node is not current for the listed units (it restarted, found a VBA hole it
    /// cannot fill, or lost data): its copies become `stale`. A primary that says so is replaced
    /// by a current copy when there is one.
    NotCurrent {
        source: NodeId,
        units: Vec<UnitGeneration>,
    },
    /// `target` did not answer `source` for the listed units. From the slice's primary about a
    /// secondary: that copy becomes `stale`. From a client about the primary: the slice fails over
    /// to a current copy with `generation + 1`, once the old primary's lease has run out (until
    /// then the reply is 503 `lease_not_expired` with `retry_after_ms`).
    Unresponsive {
        source: Source,
        target: NodeId,
        units: Vec<UnitGeneration>,
    },
    /// The source node starts catching up its `stale` copies of the listed units: they become
    /// `syncing`. Refused (409 `conflict`) for a copy that is `current` or `down`, for the
    /// slice's primary, and for a node holding no copy; a copy already `syncing` is left as it
    /// is, so a retried report succeeds.
    Syncing {
        source: NodeId,
        units: Vec<UnitGeneration>,
    },
    /// From the slice's primary: `target`'s `syncing` copy holds every VBA the primary has
    /// acknowledged, and the primary has waited for it on every write since, so it becomes
    /// `current`. Refused (409 `conflict`) unless `source` is the slice's primary with a
    /// `current` copy and the target copy is `syncing` (a `stale` target missed writes: start
    /// over); a target already `current` is left as it is, so a retried report succeeds.
    CaughtUp {
        source: NodeId,
        target: NodeId,
        units: Vec<UnitGeneration>,
    },
    /// How far the source's resync of one unit has got. Kept in the leader's memory (not
    /// committed) and shown per copy in the status and volume maps, with a rate and the time
    /// left; the last report stays visible after the copy is `current` again.
    ResyncProgress {
        source: NodeId,
        unit: UnitGeneration,
        progress: ResyncProgress,
    },
}

/// A resync's progress as the copy reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncProgress {
    /// Records received and applied so far.
    pub records_done: u64,
    /// Records the primary had to send when the resync started, plus any found since.
    pub records_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// A full resync (every live block, into an empty copy) rather than an incremental one.
    pub full: bool,
    /// The copy holds everything and has been handed over to the primary.
    pub finished: bool,
}

/// A resync as the status shows it: the last report, with the rate the leader computed from the
/// reports it received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncStatus {
    #[serde(flatten)]
    pub progress: ResyncProgress,
    /// Bytes per second over the resync so far.
    pub bytes_per_sec: u64,
    /// Seconds left at that rate; absent when unknown or finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Milliseconds since the resync started, as the leader saw it.
    pub elapsed_ms: u64,
}

/// Reply to a notification: the slices it named, as they are after it was committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationResponse {
    pub slices: Vec<SliceMap>,
}

/// `POST /v1/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    pub name: String,
    /// A positive multiple of 4096.
    pub size_bytes: u64,
    /// Copies of each slice, on distinct storage nodes; default [`DEFAULT_REPLICAS`].
    #[serde(default)]
    pub replicas: Option<u32>,
    /// A positive multiple of 4096; default [`DEFAULT_SLICE_BYTES`]. The last slice may be shorter.
    #[serde(default)]
    pub slice_bytes: Option<u64>,
}

/// `POST /v1/volumes/{name}/resize`: grow the volume to `size_bytes` (volumes never shrink).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolumeRequest {
    /// A multiple of 4096, at least the volume's size.
    pub size_bytes: u64,
}

/// One slice of a volume: where its copies are and which one is primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceMap {
    pub unit: UnitId,
    pub index: SliceIndex,
    pub generation: Generation,
    pub primary: NodeId,
    /// The primary first, then the secondaries.
    pub copies: Vec<CopyInfo>,
}

/// The volume map a client needs: every slice's generation, primary and copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMap {
    pub id: VolumeId,
    pub name: String,
    pub size_bytes: u64,
    pub block_bytes: u64,
    pub slice_bytes: u64,
    pub replicas: u32,
    pub slices: Vec<SliceMap>,
}

/// `GET /v1/volumes[?limit=N][&after=NAME][&status=FILTER]`: volumes in name order, a page at
/// a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeList {
    pub volumes: Vec<VolumeMap>,
    /// Where the next page starts (`?after=` this), when more volumes match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A storage node as `GET /v1/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub addr: String,
    pub state: NodeState,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Milliseconds since the leader last heard from the node; only the leader knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms_ago: Option<u64>,
    pub units: Vec<UnitId>,
    /// Every copy on the node is being moved to other nodes (`POST /v1/nodes/{id}/drain`); the
    /// drain is over when `units` is empty. A draining node gets no new copies.
    #[serde(default)]
    pub draining: bool,
    /// Each data directory's space as the node last reported it; only the leader knows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpace>,
    /// The identities of the node's data directories, as the database knows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_ids: Vec<String>,
    /// In the answer to a registration: the devices it presented that the database does not know
    /// for the node. The node must not serve the copies on them as current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_devices: Vec<String>,
}

/// A manager replica (Raft member).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub id: ManagerId,
    pub addr: String,
    /// `false` for a learner still catching up before it becomes a voter.
    pub voter: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The member that produced this answer.
    pub answered_by: ManagerId,
    pub leader: Option<ManagerId>,
    pub term: u64,
    /// Index of the last Raft entry applied to the answering member's state.
    pub applied_index: u64,
    pub managers: Vec<ManagerStatus>,
    pub nodes: Vec<NodeStatus>,
    /// Every volume's map; empty when asked with `?volumes=false`, which the counts still cover.
    pub volumes: Vec<VolumeMap>,
    /// The managers' space thresholds for storage nodes' devices.
    #[serde(default)]
    pub space: io::SpaceThresholds,
    /// The cluster in numbers, over every volume and node.
    #[serde(default)]
    pub counts: StatusCounts,
}

/// `GET /v1/status`'s numbers: what an operator reads first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub volumes: u64,
    pub slices: u64,
    /// Slices with fewer `current` copies than their volume's replicas.
    pub slices_degraded: u64,
    pub copies: CopyCounts,
    pub nodes: NodeCounts,
    /// Copies whose resync is under way (reported, not finished).
    pub resyncs_running: u64,
    /// Slices whose last scrub found damage it could not repair or copies that disagree.
    #[serde(default)]
    pub slices_scrub_problems: u64,
}

/// Copies by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyCounts {
    pub current: u64,
    pub stale: u64,
    pub syncing: u64,
    pub down: u64,
}

impl CopyCounts {
    pub fn add(&mut self, status: CopyStatus) {
        *match status {
            CopyStatus::Current => &mut self.current,
            CopyStatus::Stale => &mut self.stale,
            CopyStatus::Syncing => &mut self.syncing,
            CopyStatus::Down => &mut self.down,
        } += 1;
    }

    pub fn not_current(&self) -> u64 {
        self.stale + self.syncing + self.down
    }
}

/// Storage nodes by state; `draining` counts nodes of either state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    pub up: u64,
    pub down: u64,
    pub draining: u64,
}

impl StatusCounts {
    pub fn of(nodes: &[NodeStatus], volumes: &[VolumeMap]) -> StatusCounts {
        let mut counts = StatusCounts {
            volumes: volumes.len() as u64,
            ..StatusCounts::default()
        };
        for node in nodes {
            match node.state {
                NodeState::Up => counts.nodes.up += 1,
                NodeState::Down => counts.nodes.down += 1,
            }
            counts.nodes.draining += u64::from(node.draining);
        }
        for volume in volumes {
            for slice in &volume.slices {
                counts.slices += 1;
                let current = slice
                    .copies
                    .iter()
                    .filter(|c| c.status == CopyStatus::Current)
                    .count();
                counts.slices_degraded += u64::from(current < volume.replicas as usize);
                for copy in &slice.copies {
                    counts.copies.add(copy.status);
                    counts.resyncs_running += u64::from(copy.resync_running());
                }
                counts.slices_scrub_problems +=
                    u64::from(slice.last_scrub().is_some_and(|s| s.has_problems()));
            }
        }
        counts
    }
}

impl CopyInfo {
    /// Whether this copy's resync is under way: reported, not finished, and the copy still
    /// behind.
    pub fn resync_running(&self) -> bool {
        self.resync.is_some_and(|r| !r.progress.finished)
            && matches!(self.status, CopyStatus::Stale | CopyStatus::Syncing)
    }
}

/// Which volumes `GET /v1/volumes?status=` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeFilter {
    /// Every copy of every slice is `current`.
    Current,
    /// Some copy is not `current`: what needs attention.
    NotCurrent,
    /// Some copy has this status.
    Stale,
    Syncing,
    Down,
}

impl VolumeFilter {
    pub fn admits(self, volume: &VolumeMap) -> bool {
        let mut copies = volume.slices.iter().flat_map(|s| &s.copies);
        match self {
            VolumeFilter::Current => copies.all(|c| c.status == CopyStatus::Current),
            VolumeFilter::NotCurrent => copies.any(|c| c.status != CopyStatus::Current),
            VolumeFilter::Stale => copies.any(|c| c.status == CopyStatus::Stale),
            VolumeFilter::Syncing => copies.any(|c| c.status == CopyStatus::Syncing),
            VolumeFilter::Down => copies.any(|c| c.status == CopyStatus::Down),
        }
    }
}

/// Most volumes one page of `GET /v1/volumes` holds, and its default page size.
pub const MAX_VOLUMES_PER_PAGE: usize = 1000;

/// `POST /v1/managers`: add a manager replica; it joins as a learner, catches up, then votes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddManagerRequest {
    pub id: ManagerId,
    /// Address of its HTTP listener (`host:port`).
    pub addr: String,
}

/// `GET /health`: whether this member is running and who it thinks leads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub id: ManagerId,
    pub leader: Option<ManagerId>,
    pub term: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_are_tagged_by_kind() {
        let json = r#"{"kind":"unresponsive","source":{"client":"host-1"},"target":"n2",
            "units":[{"unit":{"volume":1,"slice":0},"generation":3}]}"#;
        let n: Notification = serde_json::from_str(json).expect("valid notification");
        assert_eq!(
            n,
            Notification::Unresponsive {
                source: Source::Client("host-1".into()),
                target: NodeId("n2".into()),
                units: vec![UnitGeneration {
                    unit: UnitId::new(1, 0),
                    generation: Generation(3)
                }],
            }
        );
        let back = serde_json::to_value(&n).expect("serializes");
        assert_eq!(back["kind"], "unresponsive");
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let err = serde_json::from_str::<CreateVolumeRequest>(
            r#"{"name":"v","size_bytes":4096,"replica":2}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("replica"), "{err}");
        let err = serde_json::from_str::<Notification>(
            r#"{"kind":"not_current","source":"n1","units":[],"extra":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        assert!(serde_json::from_str::<Notification>(r#"{"kind":"gossip"}"#).is_err());
    }
}
