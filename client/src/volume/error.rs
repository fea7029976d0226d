//! What can go wrong with volume IO, as values a caller can branch on.

use std::fmt;
use std::time::Duration;

use crate::managers::ManagerError;
use crate::proto::WireError;
use crate::types::{UnitId, BLOCK_BYTES};

/// The kind of a volume operation, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Trim,
    /// Which blocks hold data (`Volume::allocation`).
    Allocation,
    /// Reading every copy of a slice back (`Volume::scrub`).
    Scrub,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Trim => "trim",
            Op::Allocation => "allocation map",
            Op::Scrub => "scrub",
        })
    }
}

/// Errors of [`crate::volume::Volume`].
///
/// The caller's mistakes ([`UnalignedOffset`](ClientError::UnalignedOffset),
/// [`UnalignedLength`](ClientError::UnalignedLength), [`OutOfRange`](ClientError::OutOfRange)) are
/// found before anything is sent. Everything that retrying could fix is retried until the volume's
/// retry deadline; what is left then is [`GaveUp`](ClientError::GaveUp).
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("offset {offset} is not a multiple of the {BLOCK_BYTES}-byte block size")]
    UnalignedOffset { offset: u64 },
    #[error("length {len} is not a multiple of the {BLOCK_BYTES}-byte block size")]
    UnalignedLength { len: u64 },
    #[error(
        "{len} bytes at offset {offset} go beyond the end of volume {volume:?} ({size_bytes} bytes)"
    )]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size_bytes: u64,
    },
    #[error("volume {name:?} does not exist")]
    VolumeNotFound { name: String },
    /// The volume was deleted while open, perhaps created again under the same name (a new id).
    #[error("volume {name:?} (id {id}) was deleted while in use")]
    VolumeDeleted { name: String, id: u64 },
    /// The managers refused a request, or none could be reached.
    #[error("managers: {0}")]
    Managers(#[source] ManagerError),
    /// The managers' volume map contradicts itself; retrying would not help.
    #[error("volume map of {volume:?} is inconsistent: {reason}")]
    InvalidMap {
        volume: String,
        reason: super::map::MapError,
    },
    /// A storage node refused the request for a reason that retrying cannot fix.
    #[error("{op} on unit {unit}: storage node {addr} refused it: {error}")]
    Refused {
        op: Op,
        unit: UnitId,
        addr: String,
        error: WireError,
    },
    /// The data of a block fails its checksum on every copy the primary could ask: it cannot be
    /// read. `detail` is the node's account (the VBA, where the damage is, the copies tried).
    #[error(
        "{op} of volume {volume:?} at byte offset {offset} (block {}): the data is damaged on every copy tried: {detail}",
        offset / BLOCK_BYTES
    )]
    Damaged {
        op: Op,
        volume: String,
        offset: u64,
        detail: String,
    },
    /// The primary's device has no room for the write: nothing was written, and the same write
    /// succeeds once space comes back.
    #[error(
        "{op} of volume {volume:?} (slice {slice}): no space left on storage node {node} ({detail})"
    )]
    NoSpace {
        op: Op,
        volume: String,
        slice: u32,
        node: String,
        detail: String,
    },
    /// A storage node answered with something that does not fit the request.
    #[error("{op} on unit {unit}: storage node {addr} answered nonsense: {what}")]
    BadResponse {
        op: Op,
        unit: UnitId,
        addr: String,
        what: String,
    },
    /// Retries did not succeed before the retry deadline; `last` says what failed last.
    #[error("gave up on {op} on unit {unit} after {attempts} attempts in {elapsed:.1?}: {last}")]
    GaveUp {
        op: Op,
        unit: UnitId,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
}

impl ClientError {
    /// The request itself was wrong (alignment, range): fix the request, not the cluster.
    pub fn is_invalid_request(&self) -> bool {
        matches!(
            self,
            ClientError::UnalignedOffset { .. }
                | ClientError::UnalignedLength { .. }
                | ClientError::OutOfRange { .. }
        )
    }

    /// The cluster could not serve for now (no manager reachable, or retries ran out): the same
    /// request may succeed later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::GaveUp { .. } => true,
            ClientError::Managers(error) => error.code().is_none(),
            _ => false,
        }
    }
}
