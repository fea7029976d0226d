//! Newtypes for the numbers that mean something in vbs, shared by every crate.
//!
//! Block addresses are in units of [`BLOCK_BYTES`]. An [`Lba`] is relative to its storage unit (one
//! slice of a volume): block 0 of slice 3 is `Lba(0)` in that slice's unit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The one block size of every volume. Reads, writes and trims are aligned to it.
pub const BLOCK_BYTES: u64 = 4096;

macro_rules! number_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

number_newtype!(
    /// Virtual block address: the position of a write in a storage unit's history. The primary
    /// assigns them from a counter starting at 1; `Vba(0)` means "nothing yet".
    Vba(u64)
);
number_newtype!(
    /// Logical block address inside one storage unit, in blocks of [`BLOCK_BYTES`].
    Lba(u64)
);
number_newtype!(
    /// Epoch of a slice's copy set: bumped on every primary change or copy-set change. Records and
    /// requests that carry an older generation than the slice's are refused (fencing).
    Generation(u64)
);
number_newtype!(
    /// Index of a slice inside its volume.
    SliceIndex(u32)
);
number_newtype!(
    /// Identity of a volume, unique for the life of the cluster: a volume deleted and created again
    /// under the same name gets a new id, so no storage node mistakes old data for new.
    VolumeId(u64)
);
number_newtype!(
    /// Identity of a manager replica (a Raft member).
    ManagerId(u64)
);

impl Vba {
    pub const ZERO: Vba = Vba(0);

    pub fn next(self) -> Vba {
        Vba(self.0 + 1)
    }
}

/// Name of a storage node, chosen by the operator (`vbs-storage --id NAME`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl NodeId {
    /// Node names appear in paths, URLs and metrics labels, so they are kept to a safe alphabet.
    pub fn parse(name: &str) -> Result<NodeId, NameError> {
        check_name("node id", name)?;
        Ok(NodeId(name.to_string()))
    }
}

/// A user-chosen name (`what`: "node id", "volume name") outside the safe alphabet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must be 1 to 64 characters, got {len}")]
    Length { what: &'static str, len: usize },
    #[error("{what} {name:?} must not start with '.' or '-'")]
    Start { what: &'static str, name: String },
    #[error("{what} {name:?} has the character {character:?}; use letters, digits, '_', '.', '-'")]
    Character {
        what: &'static str,
        name: String,
        character: char,
    },
}

/// Checks a user-chosen name (node or volume): 1-64 characters of `[A-Za-z0-9_.-]`, not starting
/// with `.` or `-`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length {
            what,
            len: name.len(),
        });
    }
    if name.starts_with(['.', '-']) {
        return Err(NameError::Start {
            what,
            name: name.to_string(),
        });
    }
    if let Some(character) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Err(NameError::Character {
            what,
            name: name.to_string(),
            character,
        });
    }
    Ok(())
}

/// A unit id that is not `VOLUME_ID.SLICE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnitIdError {
    #[error("unit id {0:?} is not VOLUME_ID.SLICE")]
    Shape(String),
    #[error("unit id {0:?}: bad volume id")]
    Volume(String),
    #[error("unit id {0:?}: bad slice index")]
    Slice(String),
}

/// One copy of one slice of a volume, as a storage node holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnitId {
    pub volume: VolumeId,
    pub slice: SliceIndex,
}

impl UnitId {
    pub fn new(volume: u64, slice: u32) -> UnitId {
        UnitId {
            volume: VolumeId(volume),
            slice: SliceIndex(slice),
        }
    }
}

/// `VOLUME_ID.SLICE`, e.g. `7.3`; the same spelling is used for unit directories on disk.
impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.volume, self.slice)
    }
}

impl FromStr for UnitId {
    type Err = UnitIdError;

    fn from_str(s: &str) -> Result<UnitId, UnitIdError> {
        let (volume, slice) = s
            .split_once('.')
            .ok_or_else(|| UnitIdError::Shape(s.to_string()))?;
        let volume = volume
            .parse()
            .map_err(|_| UnitIdError::Volume(s.to_string()))?;
        let slice = slice
            .parse()
            .map_err(|_| UnitIdError::Slice(s.to_string()))?;
        Ok(UnitId::new(volume, slice))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_id_round_trips_through_its_display_form() {
        let unit = UnitId::new(7, 3);
        assert_eq!(unit.to_string(), "7.3");
        assert_eq!("7.3".parse::<UnitId>(), Ok(unit));
        assert_eq!("7".parse::<UnitId>(), Err(UnitIdError::Shape("7".into())));
        assert_eq!(
            "x.3".parse::<UnitId>(),
            Err(UnitIdError::Volume("x.3".into()))
        );
        assert_eq!(
            "7.y".parse::<UnitId>(),
            Err(UnitIdError::Slice("7.y".into()))
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("node id", "node-1").is_ok());
        assert!(check_name("node id", "").is_err());
        assert!(check_name("node id", "-x").is_err());
        assert!(check_name("node id", "a/b").is_err());
        assert!(check_name("node id", &"a".repeat(65)).is_err());
    }
}
