//! Small metadata files, written atomically as JSON: one per device (`device.json`) and one per
//! unit (`unit.json`). Each carries a format version so that a newer layout is refused, not
//! misread.

use serde::{Deserialize, Serialize};
use vbs_wire::types::{Generation, UnitId, Vba};

pub const DEVICE_META: &str = "device.json";
pub const UNIT_META: &str = "unit.json";
/// Format 2: one log per device, shared by its units. Format 1 had one log per unit.
pub const DEVICE_FORMAT: u32 = 2;
pub const UNIT_FORMAT: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMeta {
    pub format: u32,
    /// Size of every log segment on the device, fixed when the device is first used.
    pub segment_bytes: u64,
    /// The device's identity, random, given when the device is first used (or first opened by a
    /// vbs that gives identities): the managers learn it, and a node that presents one they do
    /// not know for it (a data directory wiped, replaced or taken from another node) does not
    /// serve the copies on it as current.
    #[serde(default)]
    pub id: Option<String>,
}

/// A new device identity: 128 random bits in hex.
pub fn new_device_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The first VBA written under a generation. A unit's history is the list of these: a record
/// belongs to it only if its generation is the one in force at its VBA, which is how the records of
/// a truncated tail are told apart from the new generation's records at the same VBAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationStart {
    pub generation: Generation,
    pub first_vba: Vba,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitMeta {
    pub format: u32,
    #[serde(with = "unit_id_string")]
    pub unit: UnitId,
    /// The unit's number on its device, which its log records carry; never reused on the device.
    pub number: u32,
    pub size_bytes: u64,
    pub generations: Vec<GenerationStart>,
    /// What the node holds against the unit's data; absent when clear, so that a unit without
    /// marks reads the same as before marks existed.
    #[serde(default, skip_serializing_if = "Marks::is_clear")]
    pub marks: Marks,
}

/// Marks a storage node keeps on a unit across restarts, so that a copy it must not serve as
/// current stays unserved after a crash, until the database has been told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marks {
    /// The copy lost records the database counts on (created empty over a written slice, a
    /// primary's torn tail, a history that diverged from its copies').
    #[serde(default)]
    pub lost: bool,
    /// The copy was created empty over a copy the database holds current, and whether the
    /// slice was written is not known yet.
    #[serde(default)]
    pub undecided: bool,
    /// With `lost`: the slice's generation the node knew when it found the loss. An operator's
    /// acceptance of a loss made at a later generation serves the copy again; one made at this
    /// generation or before predates this loss and does not. `None`: found before the node
    /// heard the slice's generation (at registration, or in marks written before this was
    /// kept); the next heartbeat reply's generation is taken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_in: Option<Generation>,
}

impl Marks {
    pub fn is_clear(&self) -> bool {
        !self.lost && !self.undecided
    }

    /// Marks the copy lost, found in `generation`; a copy lost already keeps when it was found.
    pub fn lose(&mut self, generation: Option<Generation>) {
        if !self.lost {
            self.lost = true;
            self.lost_in = generation;
        }
    }

    /// The copy serves again as far as its loss goes.
    pub fn clear_lost(&mut self) {
        self.lost = false;
        self.lost_in = None;
    }
}

impl UnitMeta {
    /// The generation in force at `vba`, if any record can be there.
    pub fn generation_at(&self, vba: Vba) -> Option<Generation> {
        generation_at(&self.generations, vba)
    }
}

pub fn generation_at(generations: &[GenerationStart], vba: Vba) -> Option<Generation> {
    let after = generations.partition_point(|start| start.first_vba <= vba);
    after.checked_sub(1).map(|i| generations[i].generation)
}

/// The first VBA of the run of the generation in force at `vba`: where the history's records of
/// that generation begin, over every start of it in a row (`Vba(0)` before any start).
pub fn run_start(generations: &[GenerationStart], vba: Vba) -> Vba {
    let Some(i) = generations.iter().rposition(|s| s.first_vba <= vba) else {
        return Vba::ZERO;
    };
    let generation = generations[i].generation;
    generations[..=i]
        .iter()
        .rev()
        .take_while(|s| s.generation == generation)
        .last()
        .map_or(Vba::ZERO, |s| s.first_vba)
}

mod unit_id_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use vbs_wire::types::UnitId;

    pub fn serialize<S: Serializer>(unit: &UnitId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(unit)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnitId, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_in_force_at_a_vba() {
        let generations = vec![
            GenerationStart {
                generation: Generation(1),
                first_vba: Vba(1),
            },
            GenerationStart {
                generation: Generation(3),
                first_vba: Vba(10),
            },
            GenerationStart {
                generation: Generation(4),
                first_vba: Vba(10),
            },
            GenerationStart {
                generation: Generation(6),
                first_vba: Vba(25),
            },
        ];
        assert_eq!(generation_at(&generations, Vba(0)), None);
        assert_eq!(generation_at(&generations, Vba(9)), Some(Generation(1)));
        // A generation that started and was replaced before writing anything is skipped.
        assert_eq!(generation_at(&generations, Vba(10)), Some(Generation(4)));
        assert_eq!(generation_at(&generations, Vba(24)), Some(Generation(4)));
        assert_eq!(generation_at(&generations, Vba(1000)), Some(Generation(6)));
    }

    #[test]
    fn unit_meta_is_readable_json() {
        let meta = UnitMeta {
            format: UNIT_FORMAT,
            unit: UnitId::new(3, 1),
            number: 7,
            size_bytes: 1 << 30,
            generations: vec![GenerationStart {
                generation: Generation(2),
                first_vba: Vba(1),
            }],
            marks: Marks::default(),
        };
        let text = serde_json::to_string(&meta).unwrap();
        assert!(text.contains("\"unit\":\"3.1\""), "{text}");
        assert!(!text.contains("marks"), "clear marks are left out: {text}");
        assert_eq!(serde_json::from_str::<UnitMeta>(&text).unwrap(), meta);
        let marked = UnitMeta {
            marks: Marks {
                lost: true,
                undecided: false,
                lost_in: Some(Generation(3)),
            },
            ..meta
        };
        let text = serde_json::to_string(&marked).unwrap();
        assert!(text.contains("\"marks\":{\"lost\":true"), "{text}");
        assert_eq!(serde_json::from_str::<UnitMeta>(&text).unwrap(), marked);
    }
}
