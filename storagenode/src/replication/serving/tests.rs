//! Every transition of a copy's marks, and a property: whatever the reply and the copy, a copy
//! left serving (no marks) never lacks records the database counts on, unless an operator
//! accepted exactly that after the loss was found.

use proptest::prelude::*;
use vbs_wire::types::{Generation, UnitId};

use super::*;

fn copy(node: &str, status: CopyStatus, last_vba: u64, reported: Option<u64>) -> CopyInfo {
    CopyInfo {
        node: NodeId::parse(node).unwrap(),
        addr: format!("{node}:1"),
        role: Role::Secondary,
        status,
        last_vba: Vba(last_vba),
        reported_vba: reported.map(Vba),
        resync: None,
        scrub: None,
    }
}

fn unit(status: CopyStatus, copies: Vec<CopyInfo>) -> AssignedUnit {
    AssignedUnit {
        unit: UnitId::new(1, 0),
        volume_size_bytes: 1 << 20,
        slice_bytes: 1 << 20,
        unit_bytes: 1 << 20,
        generation: Generation(1),
        role: Role::Primary,
        status,
        lease_renewed: true,
        copies,
        loss_accepted_vba: None,
    }
}

fn me() -> NodeId {
    NodeId::parse("a").unwrap()
}

/// A copy's marks as (lost, undecided).
type Flags = (bool, bool);
const SERVING: Flags = (false, false);
const LOST: Flags = (true, false);
const UNDECIDED: Flags = (false, true);

fn flags(marks: Marks) -> Flags {
    (marks.lost, marks.undecided)
}

/// A copy with these marks (a loss found before any generation of the tests' slices) and log.
fn local((lost, undecided): Flags, held: u64) -> Local {
    Local {
        marks: Marks {
            lost,
            undecided,
            lost_in: lost.then_some(Generation(0)),
        },
        torn: false,
        held: Vba(held),
        restarted: false,
    }
}

#[test]
fn an_emptied_copy_is_lost_only_where_the_slice_was_written() {
    use CopyStatus::{Current, Down, Stale};
    let me = NodeId::parse("a").unwrap();
    let cases = [
        // The other copy reported records: this one lost them.
        (
            Current,
            vec![
                copy("a", Current, 0, Some(0)),
                copy("b", Current, 0, Some(64)),
            ],
            Emptied::Lost,
        ),
        // A committed VBA says so too, even where the nodes' heartbeats list no such unit.
        (
            Current,
            vec![
                copy("a", Current, 64, Some(0)),
                copy("b", Current, 0, Some(0)),
            ],
            Emptied::Lost,
        ),
        // A committed VBA says so too, with no heartbeat heard.
        (
            Current,
            vec![copy("a", Current, 0, None), copy("b", Current, 64, None)],
            Emptied::Lost,
        ),
        // Heard from the other copy, at 0: never written.
        (
            Current,
            vec![
                copy("a", Current, 0, Some(0)),
                copy("b", Current, 0, Some(0)),
            ],
            Emptied::Unwritten,
        ),
        // A leader just elected has heard from nobody: wait.
        (
            Current,
            vec![copy("a", Current, 0, None), copy("b", Current, 0, None)],
            Emptied::Unknown,
        ),
        // Only this node's own report, which is of the new empty unit: still wait.
        (
            Current,
            vec![copy("a", Current, 0, Some(0)), copy("b", Current, 0, None)],
            Emptied::Unknown,
        ),
        // The other copy is not current: nothing better to learn from it.
        (
            Current,
            vec![copy("a", Current, 0, None), copy("b", Stale, 0, None)],
            Emptied::Unwritten,
        ),
        (
            Current,
            vec![copy("a", Current, 0, None), copy("b", Down, 0, None)],
            Emptied::Unwritten,
        ),
        // A copy that is not current resyncs anyway.
        (
            Stale,
            vec![copy("a", Stale, 0, None), copy("b", Current, 64, Some(64))],
            Emptied::Unwritten,
        ),
        // One copy only.
        (
            Current,
            vec![copy("a", Current, 0, None)],
            Emptied::Unwritten,
        ),
    ];
    for (status, copies, want) in cases {
        let assigned = unit(status, copies);
        assert_eq!(emptied_copy(&assigned, &me), want, "{assigned:?}");
    }
}

#[test]
fn an_undecided_copy_is_lost_over_writes_served_over_none_and_waits_when_unheard() {
    use CopyStatus::Current;
    let written = unit(
        Current,
        vec![
            copy("a", Current, 0, Some(0)),
            copy("b", Current, 0, Some(9)),
        ],
    );
    let decided = on_assignment(&written, &me(), local(UNDECIDED, 0));
    assert_eq!(flags(decided.marks), LOST);
    assert_eq!(decided.events, [Event::EmptiedOverWrites]);

    let unwritten = unit(
        Current,
        vec![
            copy("a", Current, 0, Some(0)),
            copy("b", Current, 0, Some(0)),
        ],
    );
    let decided = on_assignment(&unwritten, &me(), local(UNDECIDED, 0));
    assert_eq!(flags(decided.marks), SERVING);
    assert!(decided.events.is_empty());

    let unheard = unit(
        Current,
        vec![copy("a", Current, 0, None), copy("b", Current, 0, None)],
    );
    let decided = on_assignment(&unheard, &me(), local(UNDECIDED, 0));
    assert_eq!(flags(decided.marks), UNDECIDED);
    assert_eq!(decided.events, [Event::EmptiedUnknown]);
}

#[test]
fn a_torn_primary_steps_down_only_with_another_current_copy() {
    use CopyStatus::{Current, Stale};
    let torn = Local {
        torn: true,
        ..local(SERVING, 5)
    };
    let with_other = unit(
        Current,
        vec![copy("a", Current, 5, None), copy("b", Current, 5, None)],
    );
    let decided = on_assignment(&with_other, &me(), torn);
    assert_eq!(flags(decided.marks), LOST);
    assert_eq!(decided.events, [Event::TornTailStepsDown]);

    let alone = unit(
        Current,
        vec![copy("a", Current, 5, None), copy("b", Stale, 5, None)],
    );
    assert_eq!(flags(on_assignment(&alone, &me(), torn).marks), SERVING);

    let secondary = AssignedUnit {
        role: Role::Secondary,
        ..with_other
    };
    assert_eq!(flags(on_assignment(&secondary, &me(), torn).marks), SERVING);
}

#[test]
fn a_restarted_primary_below_its_recorded_vba_stops_serving() {
    use CopyStatus::{Current, Stale};
    let assigned = unit(
        Current,
        vec![copy("a", Current, 9, None), copy("b", Stale, 3, None)],
    );
    let restarted = Local {
        restarted: true,
        ..local(SERVING, 7)
    };
    let decided = on_assignment(&assigned, &me(), restarted);
    assert_eq!(flags(decided.marks), LOST);
    assert_eq!(
        decided.events,
        [Event::BelowRecorded {
            held: Vba(7),
            recorded: Vba(9)
        }]
    );
    // Not restarted: the recorded VBA may be one it reported before a write failed here; the
    // log is what it is, and the write path reports what it lacks.
    assert_eq!(
        flags(on_assignment(&assigned, &me(), local(SERVING, 7)).marks),
        SERVING
    );
    // Holding all it recorded, it serves.
    let whole = Local {
        restarted: true,
        ..local(SERVING, 9)
    };
    assert_eq!(flags(on_assignment(&assigned, &me(), whole).marks), SERVING);
}

#[test]
fn an_accepted_loss_serves_again_only_at_exactly_what_the_copy_holds() {
    use CopyStatus::{Current, Stale};
    let accepted = |at: u64, recorded: u64, other: CopyStatus| AssignedUnit {
        loss_accepted_vba: Some(Vba(at)),
        ..unit(
            Current,
            vec![
                copy("a", Current, recorded, None),
                copy("b", other, 9, None),
            ],
        )
    };
    let decided = on_assignment(&accepted(7, 7, Stale), &me(), local(LOST, 7));
    assert_eq!(flags(decided.marks), SERVING);
    assert_eq!(decided.events, [Event::LossAccepted]);
    // Accepted at another VBA, not yet recorded, or with a current copy to hand over to.
    assert_eq!(
        flags(on_assignment(&accepted(6, 7, Stale), &me(), local(LOST, 7)).marks),
        LOST
    );
    assert_eq!(
        flags(on_assignment(&accepted(7, 9, Stale), &me(), local(LOST, 7)).marks),
        LOST
    );
    assert_eq!(
        flags(on_assignment(&accepted(7, 7, Current), &me(), local(LOST, 7)).marks),
        LOST
    );
}

#[test]
fn a_lost_copy_serves_again_once_the_database_holds_it_not_current() {
    use CopyStatus::{Current, Stale, Syncing};
    for status in [Stale, Syncing] {
        let assigned = AssignedUnit {
            role: Role::Secondary,
            ..unit(
                status,
                vec![copy("a", status, 0, None), copy("b", Current, 9, None)],
            )
        };
        assert_eq!(
            flags(on_assignment(&assigned, &me(), local(LOST, 0)).marks),
            SERVING
        );
    }
    let still_current = unit(
        Current,
        vec![copy("a", Current, 9, None), copy("b", Current, 9, None)],
    );
    assert_eq!(
        flags(on_assignment(&still_current, &me(), local(LOST, 9)).marks),
        LOST
    );
}

#[test]
fn only_a_current_secondary_reports_what_it_missed_while_away() {
    use CopyStatus::{Current, Stale};
    let primary = unit(Current, vec![copy("a", Current, 0, None)]);
    assert!(!missed_while_away(&primary));
    let secondary = AssignedUnit {
        role: Role::Secondary,
        ..primary.clone()
    };
    assert!(missed_while_away(&secondary));
    let stale = AssignedUnit {
        status: Stale,
        ..secondary
    };
    assert!(!missed_while_away(&stale));
}

#[test]
fn a_loss_found_after_an_accepted_one_waits_for_its_own_acceptance() {
    use CopyStatus::{Current, Stale};
    // The operator accepted this copy's loss at VBA 0 (generation 2); it served and took
    // writes, then its disk was wiped and the unit created again empty.
    let assigned = AssignedUnit {
        generation: Generation(2),
        loss_accepted_vba: Some(Vba(0)),
        ..unit(
            Current,
            vec![copy("a", Current, 0, Some(40)), copy("b", Stale, 3, None)],
        )
    };
    let decided = on_assignment(&assigned, &me(), local(UNDECIDED, 0));
    assert_eq!(flags(decided.marks), LOST);
    assert_eq!(decided.marks.lost_in, Some(Generation(2)));
    assert_eq!(decided.events, [Event::EmptiedOverWrites]);
    // The next reply still carries the old acceptance: the copy stays lost.
    let next = Local {
        marks: decided.marks,
        ..local(SERVING, 0)
    };
    assert_eq!(flags(on_assignment(&assigned, &me(), next).marks), LOST);
    // A new acceptance starts a new generation, which serves it.
    let accepted_again = AssignedUnit {
        generation: Generation(3),
        ..assigned
    };
    let decided = on_assignment(&accepted_again, &me(), next);
    assert_eq!(flags(decided.marks), SERVING);
    assert_eq!(decided.events, [Event::LossAccepted]);
}

#[test]
fn a_loss_found_before_the_first_reply_takes_that_replys_generation() {
    use CopyStatus::{Current, Stale};
    // Marked lost at registration (a data directory the managers did not know), before the
    // node heard the slice's generation; an acceptance at generation 2 is already there.
    let assigned = AssignedUnit {
        generation: Generation(2),
        loss_accepted_vba: Some(Vba(5)),
        ..unit(
            Current,
            vec![copy("a", Current, 5, None), copy("b", Stale, 3, None)],
        )
    };
    let found_early = Local {
        marks: Marks {
            lost: true,
            undecided: false,
            lost_in: None,
        },
        ..local(SERVING, 5)
    };
    let decided = on_assignment(&assigned, &me(), found_early);
    assert_eq!(flags(decided.marks), LOST);
    assert_eq!(decided.marks.lost_in, Some(Generation(2)));
    // An acceptance made after it serves the copy.
    let accepted_later = AssignedUnit {
        generation: Generation(3),
        ..assigned
    };
    let decided = on_assignment(
        &accepted_later,
        &me(),
        Local {
            marks: decided.marks,
            ..found_early
        },
    );
    assert_eq!(flags(decided.marks), SERVING);
}

fn status() -> impl Strategy<Value = CopyStatus> {
    prop_oneof![
        Just(CopyStatus::Current),
        Just(CopyStatus::Stale),
        Just(CopyStatus::Syncing),
        Just(CopyStatus::Down),
    ]
}

/// A reply naming this node's copy and up to two others, each with any status and VBAs, and a
/// copy with any marks and log.
fn case() -> impl Strategy<Value = (AssignedUnit, Local)> {
    let vba = 0u64..4;
    let other = (status(), vba.clone(), proptest::option::of(vba.clone()));
    (
        status(),
        any::<bool>(),
        (vba.clone(), proptest::option::of(vba.clone())),
        proptest::collection::vec(other, 0..3),
        proptest::option::of(vba.clone()),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            vba,
        ),
        (1u64..4, 0u64..4),
    )
        .prop_map(
            |(
                status,
                primary,
                (recorded, reported),
                others,
                accepted,
                (lost, undecided, torn, restarted, held),
                (generation, lost_in),
            )| {
                let mut copies = vec![copy("a", status, recorded, reported)];
                for (i, (s, v, r)) in others.into_iter().enumerate() {
                    copies.push(copy(&format!("o{i}"), s, v, r));
                }
                let assigned = AssignedUnit {
                    generation: Generation(generation),
                    role: if primary {
                        Role::Primary
                    } else {
                        Role::Secondary
                    },
                    loss_accepted_vba: accepted.map(Vba),
                    ..unit(status, copies)
                };
                let local = Local {
                    marks: Marks {
                        lost,
                        undecided,
                        lost_in: (lost && lost_in > 0).then_some(Generation(lost_in)),
                    },
                    torn,
                    held: Vba(held),
                    restarted,
                };
                (assigned, local)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn a_copy_left_serving_lacks_nothing_the_database_counts_on((assigned, local) in case()) {
        let me = me();
        let decided = on_assignment(&assigned, &me, local);
        let current = assigned.status == CopyStatus::Current;
        let recorded = assigned.copies[0].last_vba;
        let another_current = assigned.copies[1..].iter().any(|c| c.status == CopyStatus::Current);
        let accepted_here = assigned.loss_accepted_vba == Some(local.held)
            && recorded == local.held
            && !another_current
            && local.marks.lost_in.unwrap_or(assigned.generation) < assigned.generation;
        // Nothing becomes undecided; a copy the database does not hold current never stays lost.
        prop_assert!(!decided.marks.undecided || local.marks.undecided);
        prop_assert!(current || !decided.marks.lost);
        if !current {
            return Ok(());
        }
        // An emptied copy of a written slice does not serve, unless it was lost already and an
        // operator accepted that loss since.
        let accepted = local.marks.lost && accepted_here;
        if local.marks.undecided && assigned.copies.iter().any(written) && !accepted {
            prop_assert!(decided.marks.lost, "{assigned:?} {local:?} -> {decided:?}");
        }
        // An emptied copy serves only once it is known that the slice was never written.
        if local.marks.undecided && !decided.marks.undecided && !decided.marks.lost && !accepted {
            prop_assert_eq!(emptied_copy(&assigned, &me), Emptied::Unwritten);
        }
        // A restarted primary that lacks records the database recorded does not serve.
        if assigned.role == Role::Primary && local.restarted && recorded > local.held {
            prop_assert!(decided.marks.lost, "{assigned:?} {local:?} -> {decided:?}");
        }
        // A torn primary with a current copy to hand over to does not serve.
        if assigned.role == Role::Primary && local.torn && another_current {
            prop_assert!(decided.marks.lost, "{assigned:?} {local:?} -> {decided:?}");
        }
        // A loss first found in this reply stands: the operator's acceptance came before it.
        let found = decided.events.iter().any(|e| {
            matches!(
                e,
                Event::EmptiedOverWrites | Event::TornTailStepsDown | Event::BelowRecorded { .. }
            )
        });
        if found && !local.marks.lost {
            prop_assert!(decided.marks.lost, "{assigned:?} {local:?} -> {decided:?}");
        }
        // A lost mark is cleared, while current, only by an accepted loss of exactly what the
        // copy holds, made after the loss was found.
        if local.marks.lost && !decided.marks.lost {
            prop_assert!(accepted_here, "{assigned:?} {local:?} -> {decided:?}");
        }
        // Marks change only with an event that says why, or by the database's word alone (a
        // never-written slice, a status that is not current).
        if decided.marks.lost && !local.marks.lost {
            prop_assert!(!decided.events.is_empty());
        }
    }
}
