//! Running a checked NBD request against the volume: byte ranges are mapped onto whole 4 KiB
//! blocks (partial blocks are read-modified-written), TRIM and WRITE_ZEROES of any length are
//! split by the volume across its slices, and block status comes from the primaries' indexes.

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt, TryStreamExt};

use super::handshake::Session;
use super::transmission::Refusal;
use super::wire::{self, Command, Descriptor, Request};
use crate::proto::MAX_IO_BYTES;
use crate::types::BLOCK_BYTES;
use crate::volume::{ClientError, Op};

/// What a request that succeeded answers.
pub enum Outcome {
    Done,
    Data(Bytes),
    Extents(Vec<Descriptor>),
}

/// Zeroes that a write of zeroes shares: no buffer is allocated per request.
static ZEROES: [u8; MAX_IO_BYTES as usize] = [0; MAX_IO_BYTES as usize];
/// Blocks of zeroes written at once by a `NBD_CMD_WRITE_ZEROES` that must not leave a hole.
const ZERO_WRITES_IN_FLIGHT: usize = 8;
/// The most descriptors one block status reply carries (the protocol asks for at most 2^20).
const MAX_DESCRIPTORS: usize = 64 << 10;

pub async fn run(
    session: &Session,
    request: &Request,
    data: Option<Bytes>,
) -> Result<Outcome, Refusal> {
    let (offset, end) = (request.offset, request.offset + u64::from(request.length));
    match request.command {
        Command::Read => read(session, offset, end).await.map(Outcome::Data),
        Command::Write => {
            let data = data.expect("a write carries its data");
            write(session, offset, data).await.map(|()| Outcome::Done)
        }
        Command::Flush => session
            .export
            .volume
            .flush()
            .await
            .map(|()| Outcome::Done)
            .map_err(refusal),
        Command::Trim => {
            let (first, last) = whole_blocks(offset, end);
            if last > first {
                trim(session, first, last).await?;
            }
            Ok(Outcome::Done)
        }
        Command::WriteZeroes => {
            let allocate = request.flags & wire::CMD_FLAG_NO_HOLE != 0;
            write_zeroes(session, offset, end, allocate)
                .await
                .map(|()| Outcome::Done)
        }
        Command::BlockStatus => {
            let one = request.flags & wire::CMD_FLAG_REQ_ONE != 0;
            block_status(session, offset, end, one)
                .await
                .map(Outcome::Extents)
        }
        Command::Disconnect | Command::Unknown(_) => {
            unreachable!("checked before it runs: {:?}", request.command)
        }
    }
}

/// The NBD error for a volume's failure: the request's own fault is `EINVAL`, a full device
/// `ENOSPC`, anything else (the cluster could not serve it, the data is damaged) `EIO`; the
/// message says which.
fn refusal(error: ClientError) -> Refusal {
    let errno = if error.is_invalid_request() {
        wire::EINVAL
    } else if matches!(error, ClientError::NoSpace { .. }) {
        wire::ENOSPC
    } else {
        wire::EIO
    };
    Refusal {
        errno,
        message: error.to_string(),
    }
}

/// The whole blocks inside `[offset, end)`.
fn whole_blocks(offset: u64, end: u64) -> (u64, u64) {
    (
        offset.next_multiple_of(BLOCK_BYTES),
        end / BLOCK_BYTES * BLOCK_BYTES,
    )
}

/// The blocks covering `[offset, end)`.
fn covering_blocks(offset: u64, end: u64) -> (u64, u64) {
    (
        offset / BLOCK_BYTES * BLOCK_BYTES,
        end.next_multiple_of(BLOCK_BYTES),
    )
}

async fn read(session: &Session, offset: u64, end: u64) -> Result<Bytes, Refusal> {
    let (first, last) = covering_blocks(offset, end);
    let data = session
        .export
        .volume
        .read(first, last - first)
        .await
        .map_err(refusal)?;
    let start = (offset - first) as usize;
    Ok(data.slice(start..start + (end - offset) as usize))
}

async fn write(session: &Session, offset: u64, data: Bytes) -> Result<(), Refusal> {
    let volume = &session.export.volume;
    let end = offset + data.len() as u64;
    if offset % BLOCK_BYTES == 0 && end % BLOCK_BYTES == 0 {
        return volume.write(offset, data).await.map_err(refusal);
    }
    let _one_at_a_time = session.export.unaligned.lock().await;
    let (first, last) = covering_blocks(offset, end);
    let old = volume.read(first, last - first).await.map_err(refusal)?;
    let mut merged = BytesMut::from(&old[..]);
    let start = (offset - first) as usize;
    merged[start..start + data.len()].copy_from_slice(&data);
    volume.write(first, merged.freeze()).await.map_err(refusal)
}

async fn trim(session: &Session, first: u64, last: u64) -> Result<(), Refusal> {
    session
        .export
        .volume
        .trim(first, last - first)
        .await
        .map_err(refusal)
}

/// Zeroes `[offset, end)`: the whole blocks by trimming them (they read as zeroes), or, when
/// they must stay allocated, by writing zeroes; the partial blocks at either end by
/// read-modify-write.
async fn write_zeroes(
    session: &Session,
    offset: u64,
    end: u64,
    allocate: bool,
) -> Result<(), Refusal> {
    let (first, last) = whole_blocks(offset, end);
    if last <= first {
        return write(session, offset, zeroes(end - offset)).await;
    }
    if allocate {
        let volume = &session.export.volume;
        let chunks = (first..last).step_by(MAX_IO_BYTES as usize).map(|start| {
            let len = (last - start).min(MAX_IO_BYTES);
            async move { volume.write(start, zeroes(len)).await }
        });
        stream::iter(chunks)
            .buffer_unordered(ZERO_WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await
            .map_err(refusal)?;
    } else {
        trim(session, first, last).await?;
    }
    if offset < first {
        write(session, offset, zeroes(first - offset)).await?;
    }
    if end > last {
        write(session, last, zeroes(end - last)).await?;
    }
    Ok(())
}

fn zeroes(len: u64) -> Bytes {
    Bytes::from_static(&ZEROES[..len as usize])
}

/// The `base:allocation` extents of `[offset, end)`: blocks never written or trimmed are holes
/// that read as zeroes, the others data. They start at `offset` and cover the range, or a
/// prefix of it when it has more extents than one reply carries (`one`: a single extent).
async fn block_status(
    session: &Session,
    offset: u64,
    end: u64,
    one: bool,
) -> Result<Vec<Descriptor>, Refusal> {
    let (first, last) = covering_blocks(offset, end);
    let runs = session
        .export
        .volume
        .allocation(first, last - first)
        .await
        .map_err(refusal)?;
    let mut descriptors = Vec::new();
    let mut start = first;
    for run in runs {
        let run_end = (start + run.blocks * BLOCK_BYTES).min(end);
        let from = start.max(offset);
        start += run.blocks * BLOCK_BYTES;
        if run_end <= from {
            continue;
        }
        let flags = if run.allocated {
            0
        } else {
            wire::STATE_HOLE | wire::STATE_ZERO
        };
        descriptors.push(Descriptor {
            length: u32::try_from(run_end - from).expect("inside one request's length"),
            flags,
        });
        if one || descriptors.len() == MAX_DESCRIPTORS || run_end == end {
            break;
        }
    }
    if descriptors.is_empty() {
        return Err(Refusal {
            errno: wire::EIO,
            message: format!("{}: an empty allocation map", Op::Allocation),
        });
    }
    Ok(descriptors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges() {
        assert_eq!(whole_blocks(0, 8192), (0, 8192));
        assert_eq!(whole_blocks(512, 8192), (4096, 8192));
        assert_eq!(whole_blocks(512, 4000), (4096, 0), "no whole block inside");
        assert_eq!(covering_blocks(512, 4000), (0, 4096));
        assert_eq!(covering_blocks(4096, 12289), (4096, 16384));
    }
}
