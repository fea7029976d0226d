//! Requests, and the records of a unit's log that replication, resend and catch-up carry.

use bytes::Bytes;

use crate::types::{Generation, Lba, UnitId, Vba};

/// One record of a unit's log, as replication, resend and catch-up carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRecord {
    pub vba: Vba,
    pub generation: Generation,
    pub body: RecordBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    /// One block.
    Write {
        lba: Lba,
        data: Bytes,
    },
    Trim {
        lba: Lba,
        blocks: u64,
    },
}

/// Requests. Every one names the unit and the generation of its slice the sender knows; a
/// storage node refuses a generation older than its own (fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// From a client to a slice's primary.
    Client(ClientRequest),
    /// Between storage nodes.
    Peer(PeerRequest),
}

/// A client's requests, to a slice's primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientRequest {
    /// Read `blocks` blocks from `lba` (client -> primary).
    Read {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u32,
    },
    /// Write whole blocks at `lba` (client -> primary). Acknowledged once durable on the primary
    /// and on every current secondary.
    Write {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        data: Bytes,
    },
    /// A barrier: answered once every write acknowledged before it is durable on every current
    /// copy (which acknowledgement already implies) and the primary still holds its lease.
    Flush {
        unit: UnitId,
        generation: Generation,
    },
    /// Trim `blocks` blocks from `lba` (client -> primary).
    Trim {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u64,
    },
    /// Which of `blocks` blocks from `lba` hold data, from the index alone (client -> primary).
    Allocation {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u64,
    },
    /// Scrub one slice (client -> primary): every current copy reads its live records up to the
    /// VBA every copy holds back and checks them, damage is repaired from a good copy, and the
    /// copies are compared by digests over VBA ranges. Answered with `Scrubbed` when done.
    Scrub {
        unit: UnitId,
        generation: Generation,
    },
}

/// Requests between storage nodes: replication, resync, repair and scrub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerRequest {
    /// Records the primary numbered, in VBA order (primary -> secondary). `committed` is the VBA up
    /// to which every copy holds the log (what the secondary may compact under).
    Replicate {
        unit: UnitId,
        generation: Generation,
        committed: Vba,
        records: Vec<WireRecord>,
    },
    /// Every VBA in `(after, until]` (secondary -> primary, to fill a hole).
    ResendRange {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        until: Vba,
    },
    /// The live records after `after`, up to about `max_bytes` (a returning copy -> primary).
    /// `after_generation` is the generation the copy holds at `after` (0 when `after` is 0): a
    /// primary whose history differs there answers `Conflict` with its committed VBA as `detail`.
    /// With `join`, a copy that is nearly caught up asks for the rest at once: the primary stops
    /// numbering writes, sends everything up to its last VBA, and from then on forwards every new
    /// write to the copy and waits for it (`Records::joined`).
    CatchUp {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        after_generation: Generation,
        max_bytes: u32,
        join: bool,
    },
    /// The live record at `vba`, checked against its checksum (a copy that found its own record
    /// damaged -> another current copy, for read repair). Answered with `Records` holding that
    /// record, or none when it is no longer live there.
    FetchRecord {
        unit: UnitId,
        generation: Generation,
        vba: Vba,
    },
    /// This copy's digest of its live records in `(after, through]`, each checked (and a
    /// damaged one repaired) first (primary -> current copy, during a scrub).
    ScrubRange {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        through: Vba,
    },
    /// The primary's live records in `(after, through]`, for a copy whose digest of the range
    /// differs (primary -> current copy): the copy replaces each record of the same VBA that
    /// differs with the primary's (fetched with `FetchRecord`) and answers with its new digest.
    ScrubRepair {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        through: Vba,
        entries: Vec<ScrubEntry>,
    },
}

/// One live record as a scrub compares it: VBA, generation and content checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubEntry {
    pub vba: Vba,
    pub generation: Generation,
    pub crc: u32,
}

/// The most entries a `ScrubRepair` carries.
pub const MAX_SCRUB_ENTRIES: usize = 65_536;

/// What a scrub of one slice found (see [`Request::Scrub`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// The scrub covered VBAs up to this one (what every copy held when it started).
    pub through: Vba,
    /// Live records and bytes read back, over every copy.
    pub records: u64,
    pub bytes: u64,
    /// Records found damaged on any copy; of them, those repaired from a good copy.
    pub damaged: u64,
    pub repaired: u64,
    /// VBA ranges where a copy's digest differed from the primary's (after retries).
    pub mismatched: u64,
    /// Copies compared with the primary's.
    pub copies: u32,
}

impl From<ClientRequest> for Request {
    fn from(request: ClientRequest) -> Request {
        Request::Client(request)
    }
}

impl From<PeerRequest> for Request {
    fn from(request: PeerRequest) -> Request {
        Request::Peer(request)
    }
}

impl Request {
    pub fn unit(&self) -> UnitId {
        match self {
            Request::Client(request) => request.unit(),
            Request::Peer(request) => request.unit(),
        }
    }

    pub fn generation(&self) -> Generation {
        match self {
            Request::Client(request) => request.generation(),
            Request::Peer(request) => request.generation(),
        }
    }
}

impl ClientRequest {
    pub fn unit(&self) -> UnitId {
        match self {
            ClientRequest::Read { unit, .. }
            | ClientRequest::Write { unit, .. }
            | ClientRequest::Flush { unit, .. }
            | ClientRequest::Trim { unit, .. }
            | ClientRequest::Allocation { unit, .. }
            | ClientRequest::Scrub { unit, .. } => *unit,
        }
    }

    pub fn generation(&self) -> Generation {
        match self {
            ClientRequest::Read { generation, .. }
            | ClientRequest::Write { generation, .. }
            | ClientRequest::Flush { generation, .. }
            | ClientRequest::Trim { generation, .. }
            | ClientRequest::Allocation { generation, .. }
            | ClientRequest::Scrub { generation, .. } => *generation,
        }
    }
}

impl PeerRequest {
    pub fn unit(&self) -> UnitId {
        match self {
            PeerRequest::Replicate { unit, .. }
            | PeerRequest::ResendRange { unit, .. }
            | PeerRequest::CatchUp { unit, .. }
            | PeerRequest::FetchRecord { unit, .. }
            | PeerRequest::ScrubRange { unit, .. }
            | PeerRequest::ScrubRepair { unit, .. } => *unit,
        }
    }

    pub fn generation(&self) -> Generation {
        match self {
            PeerRequest::Replicate { generation, .. }
            | PeerRequest::ResendRange { generation, .. }
            | PeerRequest::CatchUp { generation, .. }
            | PeerRequest::FetchRecord { generation, .. }
            | PeerRequest::ScrubRange { generation, .. }
            | PeerRequest::ScrubRepair { generation, .. } => *generation,
        }
    }
}
