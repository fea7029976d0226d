//! Responses, and the errors a request is answered with.

use bytes::Bytes;

use crate::types::Vba;

use super::request::{ScrubReport, WireRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Read {
        data: Bytes,
    },
    /// The VBA given to the write's first block.
    Write {
        first_vba: Vba,
    },
    Flush,
    Trim {
        vba: Vba,
    },
    /// The highest VBA the secondary holds after applying the frame.
    Replicate {
        last_vba: Vba,
    },
    /// Records answering a resend or catch-up: every live record in `(after, through]`.
    /// `last_vba` is the sender's highest durable VBA; `done` says `through` reached it.
    /// `remaining_*` count the live records after `through` (catch-up only). `joined`: the copy
    /// was joined (see [`PeerRequest::CatchUp`]).
    Records {
        through: Vba,
        last_vba: Vba,
        done: bool,
        remaining_records: u64,
        remaining_bytes: u64,
        joined: bool,
        records: Vec<WireRecord>,
    },
    /// Runs of blocks from the request's LBA on, each all holding data or all not (never
    /// written, or trimmed: they read as zeroes). They cover the request's blocks, or a prefix
    /// of them when there were more than [`MAX_EXTENTS_PER_FRAME`] runs.
    Allocation {
        extents: Vec<Extent>,
    },
    Scrubbed(ScrubReport),
    /// A copy's digest of a range (see [`PeerRequest::ScrubRange`]); `damaged`: its records that
    /// failed their checksum, of which it `repaired` some from another copy first.
    ScrubDigest {
        records: u64,
        bytes: u64,
        digest: u32,
        damaged: u64,
        repaired: u64,
    },
    Error(WireError),
}

/// A run of blocks of one allocation status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub blocks: u64,
    /// The blocks hold written data; `false`: they read as zeroes without a record to read.
    pub allocated: bool,
}

/// What went wrong, as the client must tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request's generation is older than the slice's; `detail` is the current generation.
    /// Refresh the volume map.
    StaleGeneration = 1,
    /// This node is not the slice's primary (or its lease ran out). Refresh the volume map.
    NotPrimary = 2,
    /// This copy is not current, so it must not serve.
    NotCurrent = 3,
    /// The blocks are outside the unit.
    OutOfRange = 4,
    /// The request is larger than the protocol allows.
    TooLarge = 5,
    /// Temporarily unable to serve (starting, unit not yet assigned here, manager unreachable).
    /// Retry after a short wait.
    Unavailable = 6,
    /// A replicated VBA is beyond the next one expected; `detail` is the expected VBA.
    Hole = 7,
    /// A replicated VBA is already held with another generation or content.
    Conflict = 8,
    /// Malformed or impossible request.
    BadRequest = 9,
    /// This node does not hold the unit.
    UnknownUnit = 10,
    /// A failure inside the node (disk error).
    Internal = 11,
    /// The handshake did not authenticate (no proof, or a wrong one). The connection is closed.
    Unauthorized = 12,
    /// The data fails its checksum on this copy and on every other copy the node tried: it
    /// cannot be served. The message names the block, the VBA and the copies tried.
    Damaged = 13,
    /// The storage node's device has no room for the write: nothing was written, and the copy
    /// stays current. The same write succeeds once space comes back.
    NoSpace = 14,
}

impl ErrorCode {
    pub(super) fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => StaleGeneration,
            2 => NotPrimary,
            3 => NotCurrent,
            4 => OutOfRange,
            5 => TooLarge,
            6 => Unavailable,
            7 => Hole,
            8 => Conflict,
            9 => BadRequest,
            10 => UnknownUnit,
            11 => Internal,
            12 => Unauthorized,
            13 => Damaged,
            14 => NoSpace,
            _ => return None,
        })
    }
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// Extra number the code defines (the current generation, the expected VBA), else 0.
    pub detail: u64,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            detail: 0,
            message: message.into(),
        }
    }

    pub fn with_detail(mut self, detail: u64) -> WireError {
        self.detail = detail;
        self
    }
}
