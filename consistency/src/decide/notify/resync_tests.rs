//! `syncing`, `caught_up` and `resync_progress`: the resync half of a copy's life cycle.

use std::time::{Duration, Instant};

use vbs_wire::api::{
    CopyStatus, HeartbeatRequest, NodeState, Notification, ResyncProgress, Source, UnitGeneration,
    UnitReport,
};
use vbs_wire::types::{Generation, UnitId, Vba};

use super::*;
use crate::decide::liveness::{LeaseConfig, Liveness};
use crate::state::apply::Touched;
use crate::state::fixtures::{cluster, node, volume_on};
use crate::state::Outcome;

fn unit() -> UnitId {
    UnitId::new(1, 0)
}

/// Slice 1.0 on n1 (primary), n2, n3; n3's copy is stale.
fn setup() -> (State, Liveness, Instant) {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    let t0 = Instant::now();
    let memory = Liveness::new(
        LeaseConfig {
            lease: Duration::from_secs(5),
            clock_margin: Duration::from_millis(500),
        },
        t0,
    );
    let stale = Notification::NotCurrent {
        source: node("n3"),
        units: vec![at(1)],
    };
    accept(&mut state, &memory, &stale, t0);
    (state, memory, t0)
}

fn at(generation: u64) -> UnitGeneration {
    UnitGeneration {
        unit: unit(),
        generation: Generation(generation),
    }
}

/// Decides `notification` and commits what it decided.
fn accept(state: &mut State, memory: &Liveness, notification: &Notification, now: Instant) {
    let decision = decide(state, memory, notification, now);
    commit(state, decision);
}

fn commit(state: &mut State, decision: Result<Decision, Refusal>) {
    match decision {
        Ok(Decision::Propose(command)) => {
            assert_eq!(
                state.apply(&command, &mut Touched::default()),
                Outcome::Done
            )
        }
        other => panic!("expected a command, got {other:?}"),
    }
}

fn status(state: &State, name: &str) -> CopyStatus {
    state
        .slice(unit())
        .and_then(|s| s.copy(&node(name)))
        .map(|c| c.status)
        .expect("copy")
}

fn syncing(name: &str, generation: u64) -> Notification {
    Notification::Syncing {
        source: node(name),
        units: vec![at(generation)],
    }
}

fn caught_up(source: &str, target: &str, generation: u64) -> Notification {
    Notification::CaughtUp {
        source: node(source),
        target: node(target),
        units: vec![at(generation)],
    }
}

fn conflict(decision: Result<Decision, Refusal>, words: &str) {
    match decision {
        Err(Refusal::Conflict(e)) => assert!(e.contains(words), "{words:?} not in {e:?}"),
        other => panic!("expected a conflict about {words:?}, got {other:?}"),
    }
}

#[test]
fn a_stale_copy_goes_syncing_then_current_when_the_primary_says_so() {
    let (mut state, mut memory, t0) = setup();
    accept(&mut state, &memory, &syncing("n3", 1), t0);
    assert_eq!(status(&state, "n3"), CopyStatus::Syncing);
    assert_eq!(
        decide(&state, &memory, &syncing("n3", 1), t0),
        Ok(Decision::Nothing),
        "a retried report changes nothing"
    );

    memory.heard(
        &node("n3"),
        t0,
        &HeartbeatRequest {
            free_bytes: None,
            units: vec![UnitReport {
                unit: unit(),
                last_vba: Vba(40),
            }],
            ..Default::default()
        },
    );
    accept(&mut state, &memory, &caught_up("n1", "n3", 1), t0);
    assert_eq!(status(&state, "n3"), CopyStatus::Current);
    let copy = state
        .slice(unit())
        .and_then(|s| s.copy(&node("n3")))
        .expect("copy");
    assert_eq!(copy.last_vba, Vba(40), "the VBA the node last reported");
    assert_eq!(
        state.slice(unit()).map(|s| s.generation),
        Some(Generation(1))
    );
    assert_eq!(
        decide(&state, &memory, &caught_up("n1", "n3", 1), t0),
        Ok(Decision::Nothing),
        "a retried report changes nothing"
    );
}

#[test]
fn only_a_stale_copy_of_the_source_starts_syncing() {
    let (mut state, memory, t0) = setup();
    conflict(
        decide(&state, &memory, &syncing("n2", 1), t0),
        "is current, not stale",
    );
    conflict(decide(&state, &memory, &syncing("n1", 1), t0), "primary");
    state.nodes.get_mut(&node("n3")).expect("n3").state = NodeState::Down;
    conflict(decide(&state, &memory, &syncing("n3", 1), t0), "is down");

    // A node holding no copy of the unit, or not registered at all.
    let (mut state, memory, t0) = setup();
    let four = crate::state::fixtures::cluster(&["n4"]);
    state.nodes.extend(four.nodes);
    conflict(
        decide(&state, &memory, &syncing("n4", 1), t0),
        "no copy on node n4",
    );
    assert!(matches!(
        decide(&state, &memory, &syncing("zz", 1), t0),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn resync_notifications_naming_an_older_generation_are_fenced() {
    let (mut state, memory, t0) = setup();
    accept(&mut state, &memory, &syncing("n3", 1), t0);
    // n1 hands the slice to n2 (generation 2).
    let handover = Notification::NotCurrent {
        source: node("n1"),
        units: vec![at(1)],
    };
    accept(&mut state, &memory, &handover, t0);
    let before = state.clone();
    let fenced = [
        syncing("n1", 1),
        caught_up("n1", "n3", 1),
        Notification::ResyncProgress {
            source: node("n3"),
            unit: at(1),
            progress: ResyncProgress::default(),
        },
    ];
    for notification in fenced {
        let refused = decide(&state, &memory, &notification, t0);
        assert!(
            matches!(refused, Err(Refusal::StaleGeneration { .. })),
            "{notification:?}: {refused:?}"
        );
    }
    assert_eq!(state, before);
    // The deposed primary cannot vouch for n3 at the new generation either.
    conflict(
        decide(&state, &memory, &caught_up("n1", "n3", 2), t0),
        "not the primary",
    );
}

#[test]
fn caught_up_needs_the_primary_a_current_primary_copy_and_a_syncing_target() {
    let (mut state, memory, t0) = setup();
    conflict(
        decide(&state, &memory, &caught_up("n2", "n3", 1), t0),
        "not the primary",
    );
    conflict(
        decide(&state, &memory, &caught_up("n1", "n3", 1), t0),
        "is stale, not syncing",
    );
    assert!(matches!(
        decide(&state, &memory, &caught_up("n1", "n1", 1), t0),
        Err(Refusal::BadRequest(_))
    ));
    accept(&mut state, &memory, &syncing("n3", 1), t0);
    // The primary lost data itself (and nobody could take over: pretend n2 is stale too).
    for name in ["n2", "n1"] {
        let slice = state.slice_mut(unit()).expect("slice");
        slice.copy_mut(&node(name)).expect("copy").status = CopyStatus::Stale;
    }
    conflict(
        decide(&state, &memory, &caught_up("n1", "n3", 1), t0),
        "primary's own copy",
    );
}

#[test]
fn a_caught_up_decided_before_the_copy_was_marked_stale_is_refused_when_applied() {
    let (mut state, memory, t0) = setup();
    accept(&mut state, &memory, &syncing("n3", 1), t0);
    let Ok(Decision::Propose(caught_up)) = decide(&state, &memory, &caught_up("n1", "n3", 1), t0)
    else {
        panic!("a command expected");
    };
    // Committed first: n3 stopped answering the primary, which then acknowledged writes
    // without it.
    let unresponsive = Notification::Unresponsive {
        source: Source::Node(node("n1")),
        target: node("n3"),
        units: vec![at(1)],
    };
    accept(&mut state, &memory, &unresponsive, t0);
    assert_eq!(status(&state, "n3"), CopyStatus::Stale, "syncing -> stale");
    let before = state.clone();
    let outcome = state.apply(&caught_up, &mut Touched::default());
    assert!(
        matches!(outcome, Outcome::Refused(Refusal::Conflict(_))),
        "{outcome:?}"
    );
    assert_eq!(state, before, "n3 stays stale");
}

#[test]
fn a_syncing_copy_whose_node_reports_not_current_is_stale_again() {
    let (mut state, memory, t0) = setup();
    accept(&mut state, &memory, &syncing("n3", 1), t0);
    let again = Notification::NotCurrent {
        source: node("n3"),
        units: vec![at(1)],
    };
    accept(&mut state, &memory, &again, t0);
    assert_eq!(status(&state, "n3"), CopyStatus::Stale);
}

#[test]
fn progress_is_remembered_not_committed_and_only_from_a_copy_holder() {
    let (state, memory, t0) = setup();
    let progress = ResyncProgress {
        records_done: 3,
        records_total: 10,
        bytes_done: 3 * 4096,
        bytes_total: 10 * 4096,
        full: false,
        finished: false,
    };
    let report = |source: &str| Notification::ResyncProgress {
        source: node(source),
        unit: at(1),
        progress,
    };
    assert_eq!(
        decide(&state, &memory, &report("n3"), t0),
        Ok(Decision::Remember {
            unit: unit(),
            node: node("n3"),
            progress,
            status: CopyStatus::Stale,
        })
    );
    assert_eq!(units_of(&report("n3")), [at(1)]);
    assert!(matches!(
        decide(&state, &memory, &report("zz"), t0),
        Err(Refusal::NotFound(_))
    ));
    let mut four = state.clone();
    four.nodes.extend(cluster(&["n4"]).nodes);
    conflict(
        decide(&four, &memory, &report("n4"), t0),
        "no copy on node n4",
    );
}
