//! Copy-set changes (re-replication, drains), the draining mark, and the copy status life cycle
//! across node state changes.

use vbs_wire::api::{CopyStatus, NodeState};
use vbs_wire::types::{Generation, UnitId, Vba, VolumeId};

use crate::state::command::{Command, CopyChange, CopyRequirement, Outcome, Refusal, SliceUpdate};
use crate::state::fixtures::{cluster, node, volume_on};
use crate::state::{apply::Touched, State, MAX_COPIES_PER_SLICE};

fn apply(state: &mut State, command: Command) -> Outcome {
    let outcome = state.apply(&command, &mut Touched::default());
    state
        .check_invariants()
        .expect("invariants hold after every command");
    outcome
}

fn copy_set_change(unit: UnitId, generation: u64, add: &[&str], remove: &[&str]) -> SliceUpdate {
    SliceUpdate {
        add: add.iter().map(|n| node(n)).collect(),
        remove: remove.iter().map(|n| node(n)).collect(),
        ..SliceUpdate::new(unit, Generation(generation))
    }
}

#[test]
fn a_copy_set_change_bumps_the_generation_once_and_moves_the_unit_between_nodes() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    let replace = Command::UpdateSlices {
        updates: vec![copy_set_change(unit, 1, &["n3"], &["n2"])],
    };
    assert_eq!(apply(&mut state, replace.clone()), Outcome::Done);
    let slice = state.slice(unit).expect("slice");
    assert_eq!(slice.generation, Generation(2));
    assert_eq!(slice.primary, node("n1"));
    let new = slice.copy(&node("n3")).expect("new copy");
    assert_eq!((new.status, new.last_vba), (CopyStatus::Stale, Vba::ZERO));
    assert!(slice.copy(&node("n2")).is_none());
    assert!(!state.nodes[&node("n2")].units.contains(&unit));
    assert!(state.nodes[&node("n3")].units.contains(&unit));
    // Replayed, it names generation 1: fenced.
    assert!(matches!(
        apply(&mut state, replace),
        Outcome::Refused(Refusal::StaleGeneration { .. })
    ));
}

#[test]
fn a_copy_set_change_that_does_not_fit_the_state_is_refused_whole() {
    let mut state = cluster(&["n1", "n2", "n3", "n4", "n5", "n6"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"], &["n2", "n1"]]);
    apply(
        &mut state,
        Command::SetNodeState {
            node: node("n3"),
            state: NodeState::Down,
            last_vbas: vec![],
        },
    );
    apply(
        &mut state,
        Command::SetDraining {
            node: node("n4"),
            draining: true,
        },
    );
    let unit = UnitId::new(1, 0);
    let fine = copy_set_change(UnitId::new(1, 1), 1, &["n5"], &[]);
    let wrong_status = SliceUpdate {
        require: vec![CopyRequirement {
            node: node("n2"),
            status: CopyStatus::Syncing,
        }],
        ..copy_set_change(unit, 1, &[], &["n2"])
    };
    let cases = [
        (
            "a down node",
            copy_set_change(unit, 1, &["n3"], &[]),
            "down or draining",
        ),
        (
            "a draining node",
            copy_set_change(unit, 1, &["n4"], &[]),
            "down or draining",
        ),
        (
            "a node holding a copy",
            copy_set_change(unit, 1, &["n2"], &[]),
            "already has",
        ),
        (
            "an unknown node",
            copy_set_change(unit, 1, &["zz"], &[]),
            "not registered",
        ),
        (
            "the primary's copy",
            copy_set_change(unit, 1, &[], &["n1"]),
            "primary",
        ),
        (
            "a copy that is not there",
            copy_set_change(unit, 1, &[], &["n5"]),
            "no copy",
        ),
        (
            "a requirement that fails",
            wrong_status,
            "no longer syncing",
        ),
        (
            "the new primary's copy",
            SliceUpdate {
                new_primary: Some(node("n2")),
                ..copy_set_change(unit, 1, &[], &["n2"])
            },
            "primary",
        ),
    ];
    for (what, update, words) in cases {
        let before = state.clone();
        let outcome = apply(
            &mut state,
            Command::UpdateSlices {
                updates: vec![fine.clone(), update],
            },
        );
        match outcome {
            Outcome::Refused(refusal) => {
                assert!(refusal.to_string().contains(words), "{what}: {refusal}")
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        assert_eq!(state, before, "{what}: nothing changes");
    }
}

#[test]
fn a_slice_has_a_bounded_number_of_copies() {
    let names: Vec<String> = (0..=MAX_COPIES_PER_SLICE)
        .map(|i| format!("n{i}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut state = cluster(&refs);
    volume_on(&mut state, "vol", &[&refs[..2]]);
    let too_many = copy_set_change(UnitId::new(1, 0), 1, &refs[2..], &[]);
    let outcome = apply(
        &mut state,
        Command::UpdateSlices {
            updates: vec![too_many],
        },
    );
    assert!(
        matches!(&outcome, Outcome::Refused(Refusal::Conflict(e)) if e.contains("more than")),
        "{outcome:?}"
    );
}

#[test]
fn draining_is_a_mark_on_a_registered_node_that_placement_respects() {
    let mut state = cluster(&["n1", "n2"]);
    let drain = |draining| Command::SetDraining {
        node: node("n2"),
        draining,
    };
    assert_eq!(apply(&mut state, drain(true)), Outcome::Done);
    assert_eq!(
        apply(&mut state, drain(true)),
        Outcome::Done,
        "twice is fine"
    );
    assert!(state.nodes[&node("n2")].draining);
    let unknown = Command::SetDraining {
        node: node("zz"),
        draining: true,
    };
    assert!(matches!(
        apply(&mut state, unknown),
        Outcome::Refused(Refusal::NotFound(_))
    ));
    // A placement decided before the drain started is refused.
    let create = Command::CreateVolume {
        name: "vol".into(),
        size_bytes: 4096,
        slice_bytes: 4096,
        replicas: 2,
        placement: vec![vec![node("n1"), node("n2")]],
    };
    let outcome = apply(&mut state, create.clone());
    assert!(
        matches!(outcome, Outcome::Refused(Refusal::InsufficientNodes(_))),
        "{outcome:?}"
    );
    assert_eq!(apply(&mut state, drain(false)), Outcome::Done);
    assert_eq!(
        apply(&mut state, create),
        Outcome::VolumeCreated(VolumeId(1))
    );
}

#[test]
fn a_syncing_copy_goes_down_with_its_node_and_comes_back_stale() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    for status in [CopyStatus::Stale, CopyStatus::Syncing] {
        let update = SliceUpdate {
            copies: vec![CopyChange {
                node: node("n2"),
                status,
                last_vba: Vba(5),
            }],
            ..SliceUpdate::new(unit, Generation(1))
        };
        apply(
            &mut state,
            Command::UpdateSlices {
                updates: vec![update],
            },
        );
    }
    let status = |state: &State| {
        state
            .slice(unit)
            .and_then(|s| s.copy(&node("n2")))
            .map(|c| c.status)
    };
    assert_eq!(status(&state), Some(CopyStatus::Syncing));
    for (node_state, expected) in [
        (NodeState::Down, CopyStatus::Down),
        (NodeState::Up, CopyStatus::Stale),
    ] {
        apply(
            &mut state,
            Command::SetNodeState {
                node: node("n2"),
                state: node_state,
                last_vbas: vec![],
            },
        );
        assert_eq!(status(&state), Some(expected), "after {node_state:?}");
    }
}

#[test]
fn records_and_log_entries_written_before_drains_existed_still_decode() {
    let node_record = r#"{"id":"n1","addr":"n1:7000","capacity_bytes":4096,"free_bytes":4096,
        "state":"up","units":[]}"#;
    let decoded: crate::state::Node = serde_json::from_str(node_record).expect("decodes");
    assert!(!decoded.draining);
    let entry = r#"{"UpdateSlices":{"updates":[{"unit":{"volume":1,"slice":0},
        "expected_generation":1,"new_primary":null,"copies":[]}]}}"#;
    let decoded: Command = serde_json::from_str(entry).expect("decodes");
    assert_eq!(
        decoded,
        Command::UpdateSlices {
            updates: vec![SliceUpdate::new(UnitId::new(1, 0), Generation(1))]
        }
    );
    // And new entries without copy-set changes are written as before.
    let written = serde_json::to_string(&decoded).expect("encodes");
    assert!(
        !written.contains("require") && !written.contains("add"),
        "{written}"
    );
}
