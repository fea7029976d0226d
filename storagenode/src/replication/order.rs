//! Where a secondary places replicated records: it applies VBAs strictly in order, so a frame
//! whose first VBA is beyond the next expected one waits (pipelined frames may overtake each
//! other) for a bounded time, and then asks the primary to resend the gap.

use client::types::{Generation, Vba};

/// What a secondary does with a frame of records `first..=last` of `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The frame's generation is older than the copy's: the sender was deposed.
    Refuse { current: Generation },
    /// Apply now: the first record is the next expected one, or the unit holds it already
    /// (a retransmission, acknowledged again without being written).
    Apply,
    /// Records `(expected - 1, first)` are missing: wait for them, then ask for a resend.
    Gap { after: Vba, until: Vba },
}

pub fn place(known: Generation, expected: Vba, generation: Generation, first: Vba) -> Placement {
    if generation < known {
        return Placement::Refuse { current: known };
    }
    if first > expected {
        return Placement::Gap {
            after: Vba(expected.0 - 1),
            until: Vba(first.0 - 1),
        };
    }
    Placement::Apply
}

/// Whether records are numbered `first, first + 1, ...` with no gap, as a frame must be.
pub fn consecutive(vbas: impl IntoIterator<Item = Vba>) -> bool {
    let mut previous: Option<Vba> = None;
    for vba in vbas {
        if previous.is_some_and(|p| p.next() != vba) {
            return false;
        }
        previous = Some(vba);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_placed_by_their_first_vba() {
        let g = Generation(3);
        assert_eq!(place(g, Vba(10), g, Vba(10)), Placement::Apply);
        assert_eq!(
            place(g, Vba(10), g, Vba(7)),
            Placement::Apply,
            "a retransmission"
        );
        assert_eq!(
            place(g, Vba(10), g, Vba(13)),
            Placement::Gap {
                after: Vba(9),
                until: Vba(12)
            }
        );
        assert_eq!(
            place(g, Vba(10), Generation(2), Vba(10)),
            Placement::Refuse { current: g }
        );
        // A newer generation is accepted: the copy learns it from the primary before the database.
        assert_eq!(place(g, Vba(10), Generation(4), Vba(10)), Placement::Apply);
    }

    #[test]
    fn frames_must_be_consecutive() {
        assert!(consecutive([Vba(4), Vba(5), Vba(6)]));
        assert!(consecutive([Vba(4)]));
        assert!(!consecutive([Vba(4), Vba(6)]));
        assert!(!consecutive([Vba(4), Vba(4)]));
    }
}
