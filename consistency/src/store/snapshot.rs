//! Snapshot files: the whole state at one log index, replaced atomically (temp file, fsync,
//! rename, fsync the directory). Only the latest is kept.
//!
//! ```text
//! magic "vbssnap\0" (8) | version u32 LE | meta length u32 LE | meta (JSON of SnapshotMeta)
//! | data length u64 LE | data (JSON of State) | crc32c of everything before it, u32 LE
//! ```

use std::io;
use std::path::Path;

use super::fsutil::{atomic_write, read_if_exists};
use crate::raft_types::SnapshotMeta;
use crate::state::State;

const FILE: &str = "snapshot";
const MAGIC: &[u8; 8] = b"vbssnap\0";
const VERSION: u32 = 1;

/// A snapshot as stored: its metadata and the encoded state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    /// JSON of [`State`], exactly the bytes sent to followers.
    pub data: Vec<u8>,
}

impl StoredSnapshot {
    pub fn state(&self) -> io::Result<State> {
        decode_state(&self.data)
    }
}

pub fn encode_state(state: &State) -> io::Result<Vec<u8>> {
    serde_json::to_vec(state).map_err(io::Error::other)
}

pub fn decode_state(data: &[u8]) -> io::Result<State> {
    let state: State = serde_json::from_slice(data)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot data: {e}")))?;
    state
        .check_invariants()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot state: {e}")))?;
    Ok(state)
}

/// Writes `snapshot` durably, replacing the previous one.
pub fn write(dir: &Path, snapshot: &StoredSnapshot) -> io::Result<()> {
    let meta = serde_json::to_vec(&snapshot.meta).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(32 + meta.len() + snapshot.data.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&meta);
    bytes.extend_from_slice(&(snapshot.data.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&snapshot.data);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    atomic_write(dir, FILE, &bytes)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file: {what}"))
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> io::Result<&'a [u8]> {
    if bytes.len() < n {
        return Err(invalid("truncated"));
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

/// Reads the latest snapshot, if one was written. A damaged file is an error, not "no snapshot":
/// the log before it may have been purged.
pub fn read(dir: &Path) -> io::Result<Option<StoredSnapshot>> {
    let Some(bytes) = read_if_exists(dir, FILE)? else {
        return Ok(None);
    };
    if bytes.len() < 4 {
        return Err(invalid("truncated"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| invalid("truncated"))?);
    if crc32c::crc32c(body) != crc {
        return Err(invalid("checksum mismatch"));
    }
    let mut rest = body;
    if take(&mut rest, 8)? != MAGIC {
        return Err(invalid("bad magic"));
    }
    let version = u32::from_le_bytes(
        take(&mut rest, 4)?
            .try_into()
            .map_err(|_| invalid("version"))?,
    );
    if version != VERSION {
        return Err(invalid(&format!(
            "version {version} is not supported (expected {VERSION})"
        )));
    }
    let meta_len = u32::from_le_bytes(
        take(&mut rest, 4)?
            .try_into()
            .map_err(|_| invalid("meta"))?,
    );
    let meta = serde_json::from_slice(take(&mut rest, meta_len as usize)?)
        .map_err(|e| invalid(&format!("metadata: {e}")))?;
    let data_len = u64::from_le_bytes(
        take(&mut rest, 8)?
            .try_into()
            .map_err(|_| invalid("data"))?,
    );
    let data = take(
        &mut rest,
        usize::try_from(data_len).map_err(|_| invalid("data length"))?,
    )?;
    if !rest.is_empty() {
        return Err(invalid("trailing bytes"));
    }
    Ok(Some(StoredSnapshot {
        meta,
        data: data.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::fixtures::{cluster, volume_on};
    use openraft::testing::log_id;

    fn sample() -> StoredSnapshot {
        let mut state = cluster(&["n1", "n2"]);
        volume_on(&mut state, "vol", &[&["n1", "n2"]]);
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 1, 10)),
            last_membership: Default::default(),
            snapshot_id: "2-10-1".into(),
        };
        StoredSnapshot {
            meta,
            data: encode_state(&state).expect("encodes"),
        }
    }

    #[test]
    fn a_snapshot_file_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()).expect("no file is fine"), None);
        let snapshot = sample();
        write(dir.path(), &snapshot).expect("written");
        let back = read(dir.path()).expect("readable").expect("present");
        assert_eq!(back, snapshot);
        assert_eq!(
            back.state().expect("decodes"),
            decode_state(&snapshot.data).expect("decodes")
        );

        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let err = read(dir.path()).expect_err("damage is an error");
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
