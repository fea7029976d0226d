//! Every transition of a copy's marks.

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

const SERVING: Marks = Marks {
    lost: false,
    undecided: false,
};
const LOST: Marks = Marks {
    lost: true,
    undecided: false,
};
const UNDECIDED: Marks = Marks {
    lost: false,
    undecided: true,
};

fn local(marks: Marks, held: u64) -> Local {
    Local {
        marks,
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
    assert_eq!(decided.marks, LOST);
    assert_eq!(decided.events, [Event::EmptiedOverWrites]);

    let unwritten = unit(
        Current,
        vec![
            copy("a", Current, 0, Some(0)),
            copy("b", Current, 0, Some(0)),
        ],
    );
    let decided = on_assignment(&unwritten, &me(), local(UNDECIDED, 0));
    assert_eq!(decided.marks, SERVING);
    assert!(decided.events.is_empty());

    let unheard = unit(
        Current,
        vec![copy("a", Current, 0, None), copy("b", Current, 0, None)],
    );
    let decided = on_assignment(&unheard, &me(), local(UNDECIDED, 0));
    assert_eq!(decided.marks, UNDECIDED);
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
    assert_eq!(decided.marks, LOST);
    assert_eq!(decided.events, [Event::TornTailStepsDown]);

    let alone = unit(
        Current,
        vec![copy("a", Current, 5, None), copy("b", Stale, 5, None)],
    );
    assert_eq!(on_assignment(&alone, &me(), torn).marks, SERVING);

    let secondary = AssignedUnit {
        role: Role::Secondary,
        ..with_other
    };
    assert_eq!(on_assignment(&secondary, &me(), torn).marks, SERVING);
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
    assert_eq!(decided.marks, LOST);
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
        on_assignment(&assigned, &me(), local(SERVING, 7)).marks,
        SERVING
    );
    // Holding all it recorded, it serves.
    let whole = Local {
        restarted: true,
        ..local(SERVING, 9)
    };
    assert_eq!(on_assignment(&assigned, &me(), whole).marks, SERVING);
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
    assert_eq!(decided.marks, SERVING);
    assert_eq!(decided.events, [Event::LossAccepted]);
    // Accepted at another VBA, not yet recorded, or with a current copy to hand over to.
    assert_eq!(
        on_assignment(&accepted(6, 7, Stale), &me(), local(LOST, 7)).marks,
        LOST
    );
    assert_eq!(
        on_assignment(&accepted(7, 9, Stale), &me(), local(LOST, 7)).marks,
        LOST
    );
    assert_eq!(
        on_assignment(&accepted(7, 7, Current), &me(), local(LOST, 7)).marks,
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
            on_assignment(&assigned, &me(), local(LOST, 0)).marks,
            SERVING
        );
    }
    let still_current = unit(
        Current,
        vec![copy("a", Current, 9, None), copy("b", Current, 9, None)],
    );
    assert_eq!(
        on_assignment(&still_current, &me(), local(LOST, 9)).marks,
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
