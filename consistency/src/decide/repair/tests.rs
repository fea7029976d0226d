use std::collections::{BTreeMap, BTreeSet};

use vbs_wire::api::{CopyStatus, NodeState};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::*;

fn unit() -> UnitId {
    UnitId::new(1, 0)
}
use crate::state::apply::Touched;
use crate::state::command::CopyChange;
use crate::state::fixtures::{cluster, node, volume_on};
use crate::state::Outcome;

fn apply(state: &mut State, command: &Command) -> Outcome {
    let outcome = state.apply(command, &mut Touched::default());
    state.check_invariants().expect("invariants hold");
    outcome
}

fn set_node(state: &mut State, name: &str, node_state: NodeState) {
    let command = Command::SetNodeState {
        node: node(name),
        state: node_state,
        last_vbas: vec![],
    };
    assert_eq!(apply(state, &command), Outcome::Done);
}

fn set_copy(state: &mut State, name: &str, status: CopyStatus) {
    let generation = state.slice(unit()).expect("slice").generation;
    let update = SliceUpdate {
        copies: vec![CopyChange {
            node: node(name),
            status,
            last_vba: Vba::ZERO,
        }],
        ..SliceUpdate::new(unit(), generation)
    };
    let command = Command::UpdateSlices {
        updates: vec![update],
    };
    assert_eq!(apply(state, &command), Outcome::Done);
}

fn drain_node(state: &mut State, name: &str) {
    let command = drain(state, &node(name), &BTreeMap::new())
        .expect("drain accepted")
        .expect("not draining yet");
    assert_eq!(apply(state, &command), Outcome::Done);
}

fn names(nodes: &[&str]) -> BTreeSet<NodeId> {
    nodes.iter().map(|n| node(n)).collect()
}

/// One round with `lost` nodes, the state's draining nodes, and no reported free space.
fn round(state: &State, lost: &[&str]) -> Repairs {
    let lost = names(lost);
    let draining = state.draining_nodes();
    let free = BTreeMap::new();
    plan(
        state,
        &Conditions {
            lost: &lost,
            draining: &draining,
            reported_free: &free,
            limit: MAX_REPAIRS_PER_ROUND,
        },
    )
}

fn copies(state: &State) -> Vec<(String, CopyStatus)> {
    let slice = state.slice(unit()).expect("slice");
    slice
        .copies
        .iter()
        .map(|c| (c.node.0.clone(), c.status))
        .collect()
}

fn generation(state: &State) -> Generation {
    state.slice(unit()).expect("slice").generation
}

#[test]
fn a_copy_on_a_lost_node_is_replaced_on_the_roomiest_other_node() {
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    // n3 holds more already, so n4 has more room.
    volume_on(&mut state, "other", &[&["n3"]]);
    set_node(&mut state, "n2", NodeState::Down);

    assert_eq!(
        round(&state, &[]),
        Repairs::default(),
        "within the grace period"
    );
    let repairs = round(&state, &["n2"]);
    assert_eq!(repairs.updates.len(), 1, "{repairs:?}");
    let update = &repairs.updates[0];
    assert_eq!(
        (update.add.clone(), update.remove.clone()),
        (vec![node("n4")], vec![node("n2")])
    );

    assert_eq!(
        apply(&mut state, &repairs.command().expect("a change")),
        Outcome::Done
    );
    assert_eq!(
        copies(&state),
        [
            ("n1".into(), CopyStatus::Current),
            ("n4".into(), CopyStatus::Stale)
        ]
    );
    assert_eq!(
        generation(&state),
        Generation(2),
        "a copy-set change bumps the generation"
    );
    let new_copy = state
        .slice(unit())
        .and_then(|s| s.copy(&node("n4")))
        .expect("copy");
    assert_eq!(new_copy.last_vba, Vba::ZERO);
    assert!(!state.nodes[&node("n2")].units.contains(&unit()));
    assert!(state.nodes[&node("n4")].units.contains(&unit()));
    assert_eq!(
        round(&state, &["n2"]),
        Repairs::default(),
        "nothing left to do"
    );
}

#[test]
fn a_replacement_decided_before_the_node_came_back_is_refused() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    set_node(&mut state, "n2", NodeState::Down);
    let command = round(&state, &["n2"]).command().expect("a replacement");
    // n2 heartbeats again before the replacement commits: its copy is stale, not lost.
    set_node(&mut state, "n2", NodeState::Up);
    let before = state.clone();
    assert!(matches!(
        apply(&mut state, &command),
        Outcome::Refused(Refusal::Conflict(_))
    ));
    assert_eq!(state, before);
}

#[test]
fn without_a_node_to_take_the_copy_the_slice_waits_and_keeps_the_lost_copy() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    set_node(&mut state, "n2", NodeState::Down);
    let repairs = round(&state, &["n2"]);
    assert!(repairs.updates.is_empty(), "{repairs:?}");
    assert_eq!(repairs.waiting.len(), 1);
    assert!(
        repairs.waiting[0].reason.contains("needs 1 new copy"),
        "{repairs:?}"
    );

    // A node too full for the unit does not count either.
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    set_node(&mut state, "n2", NodeState::Down);
    let lost = names(&["n2"]);
    let full = BTreeMap::from([(node("n3"), 100)]);
    let repairs = plan(
        &state,
        &Conditions {
            lost: &lost,
            draining: &BTreeSet::new(),
            reported_free: &full,
            limit: MAX_REPAIRS_PER_ROUND,
        },
    );
    assert!(
        repairs.updates.is_empty() && repairs.waiting.len() == 1,
        "{repairs:?}"
    );
}

#[test]
fn a_lost_primary_with_no_current_copy_elsewhere_waits() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    set_copy(&mut state, "n2", CopyStatus::Stale);
    set_node(&mut state, "n1", NodeState::Down);
    assert_eq!(
        state.slice(unit()).map(|s| s.primary.clone()),
        Some(node("n1"))
    );
    let repairs = round(&state, &["n1"]);
    assert!(repairs.updates.is_empty(), "{repairs:?}");
    assert!(repairs.waiting[0].reason.contains("primary"), "{repairs:?}");
}

#[test]
fn a_round_commits_a_bounded_number_of_updates() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    let slices: Vec<&[&str]> = vec![&["n1", "n2"]; 5];
    volume_on(&mut state, "vol", &slices);
    set_node(&mut state, "n2", NodeState::Down);
    let lost = names(&["n2"]);
    let repairs = plan(
        &state,
        &Conditions {
            lost: &lost,
            draining: &BTreeSet::new(),
            reported_free: &BTreeMap::new(),
            limit: 2,
        },
    );
    assert_eq!(repairs.updates.len(), 2);
    apply(&mut state, &repairs.command().expect("changes"));
    assert_eq!(
        round(&state, &["n2"]).updates.len(),
        3,
        "the next round carries on"
    );
}

#[test]
fn draining_a_secondary_adds_a_copy_and_removes_the_old_one_once_the_new_is_current() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    drain_node(&mut state, "n2");
    assert!(state.nodes[&node("n2")].draining);

    let step = round(&state, &[]);
    assert_eq!(step.updates[0].add, [node("n3")]);
    assert!(
        step.updates[0].remove.is_empty(),
        "n2 stays until n3 is current"
    );
    apply(&mut state, &step.command().expect("a change"));
    assert_eq!(generation(&state), Generation(2));
    assert_eq!(
        round(&state, &[]),
        Repairs::default(),
        "waits for the resync"
    );

    set_copy(&mut state, "n3", CopyStatus::Syncing);
    assert_eq!(round(&state, &[]), Repairs::default());
    set_copy(&mut state, "n3", CopyStatus::Current);
    let step = round(&state, &[]);
    assert_eq!(step.updates[0].remove, [node("n2")]);
    assert!(step.updates[0].add.is_empty());
    apply(&mut state, &step.command().expect("a change"));
    assert_eq!(
        copies(&state),
        [
            ("n1".into(), CopyStatus::Current),
            ("n3".into(), CopyStatus::Current)
        ]
    );
    assert_eq!(generation(&state), Generation(3));
    assert!(state.nodes[&node("n2")].units.is_empty(), "drained");
}

#[test]
fn a_drain_removal_is_refused_if_the_new_copy_fell_behind_meanwhile() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    drain_node(&mut state, "n2");
    let add = round(&state, &[]).command().expect("add");
    apply(&mut state, &add);
    set_copy(&mut state, "n3", CopyStatus::Current);
    let removal = round(&state, &[]).command().expect("removal");
    // The primary reports n3 unresponsive before the removal commits.
    set_copy(&mut state, "n3", CopyStatus::Stale);
    let before = state.clone();
    assert!(matches!(
        apply(&mut state, &removal),
        Outcome::Refused(Refusal::Conflict(_))
    ));
    assert_eq!(state, before, "n2's current copy stays");
}

#[test]
fn a_draining_primary_hands_over_only_once_enough_copies_elsewhere_are_current() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    drain_node(&mut state, "n1");
    let step = round(&state, &[]);
    assert_eq!(step.updates[0].add, [node("n3")]);
    assert!(
        step.handovers.is_empty(),
        "only n2 is current besides the primary"
    );
    apply(&mut state, &step.command().expect("add"));

    set_copy(&mut state, "n3", CopyStatus::Current);
    let step = round(&state, &[]);
    assert!(
        step.updates.is_empty(),
        "the primary's copy is not removed: {step:?}"
    );
    assert_eq!(
        step.handovers,
        [Handover {
            unit: unit(),
            generation: Generation(2),
            primary: node("n1"),
        }]
    );
    // What the failure detector commits once n1's lease has run out.
    let slice = state.slice(unit()).expect("slice");
    let candidate = state.failover_candidate(slice).expect("a current copy");
    let failover = SliceUpdate {
        new_primary: Some(candidate),
        copies: vec![CopyChange {
            node: node("n1"),
            status: CopyStatus::Stale,
            last_vba: Vba::ZERO,
        }],
        ..SliceUpdate::new(unit(), Generation(2))
    };
    let failover = Command::UpdateSlices {
        updates: vec![failover],
    };
    assert_eq!(apply(&mut state, &failover), Outcome::Done);
    assert_eq!(generation(&state), Generation(3));

    let step = round(&state, &[]);
    assert_eq!(step.updates[0].remove, [node("n1")]);
    apply(&mut state, &step.command().expect("removal"));
    assert_eq!(
        copies(&state),
        [
            ("n2".into(), CopyStatus::Current),
            ("n3".into(), CopyStatus::Current)
        ]
    );
    assert_eq!(generation(&state), Generation(4));
}

#[test]
fn a_failover_prefers_a_copy_on_a_node_that_is_not_draining() {
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    drain_node(&mut state, "n2");
    let slice = state.slice(unit()).expect("slice");
    assert_eq!(state.failover_candidate(slice), Some(node("n3")));
}

#[test]
fn a_drain_that_some_copy_cannot_leave_is_refused_and_changes_nothing() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    let before = state.clone();
    let refused = drain(&state, &node("n3"), &BTreeMap::new());
    match refused {
        Err(Refusal::InsufficientNodes(reason)) => {
            assert!(reason.contains("cannot drain node n3"), "{reason}");
            assert!(reason.contains("unit 1.0"), "{reason}");
        }
        other => panic!("expected insufficient_nodes, got {other:?}"),
    }
    assert_eq!(state, before);
    assert!(matches!(
        drain(&state, &node("zz"), &BTreeMap::new()),
        Err(Refusal::NotFound(_))
    ));

    // With a fourth node it goes; draining again is fine and changes nothing.
    let mut state = cluster(&["n1", "n2", "n3", "n4"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    drain_node(&mut state, "n3");
    assert_eq!(drain(&state, &node("n3"), &BTreeMap::new()), Ok(None));
    // A second drain would leave unit 1.0 with nowhere to go: n4 is its only spare node.
    let refused = drain(&state, &node("n2"), &BTreeMap::new());
    assert!(
        matches!(refused, Err(Refusal::InsufficientNodes(_))),
        "{refused:?}"
    );
}

#[test]
fn a_draining_node_that_is_down_loses_its_copies_once_replaced() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    drain_node(&mut state, "n2");
    set_node(&mut state, "n2", NodeState::Down);
    let step = round(&state, &[]);
    assert_eq!(step.updates[0].add, [node("n3")]);
    assert!(step.updates[0].remove.is_empty(), "n3 must exist first");
    apply(&mut state, &step.command().expect("add"));
    // n2's copy is down: it counts for nothing, so it goes as soon as n3 holds a copy.
    let step = round(&state, &[]);
    assert_eq!(step.updates[0].remove, [node("n2")]);
}

#[test]
fn lost_and_draining_copies_of_one_slice_are_handled_in_one_update() {
    let mut state = cluster(&["n1", "n2", "n3", "n4", "n5"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    drain_node(&mut state, "n3");
    set_node(&mut state, "n2", NodeState::Down);
    let step = round(&state, &["n2"]);
    assert_eq!(step.updates.len(), 1, "{step:?}");
    let update = &step.updates[0];
    assert_eq!(update.add.len(), 2, "one for n2, one for n3: {update:?}");
    assert_eq!(
        update.remove,
        [node("n2")],
        "n3 stays until its replacement is current"
    );
    assert_eq!(
        apply(&mut state, &step.command().expect("changes")),
        Outcome::Done
    );
    assert_eq!(
        generation(&state),
        Generation(2),
        "one bump for the whole update"
    );
}
