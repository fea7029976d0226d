use vbs_wire::api::{CopyStatus, EventKind, NodeState, UnitReport};
use vbs_wire::types::{Generation, NodeId, SliceIndex, UnitId, Vba, VolumeId};

use crate::state::command::{Command, CopyChange, Outcome, Refusal, SliceUpdate};
use crate::state::fixtures::{cluster, node, volume_on};
use crate::state::{apply::Touched, Note, State};

fn apply(state: &mut State, command: Command) -> Outcome {
    let outcome = state.apply(&command, &mut Touched::default());
    state
        .check_invariants()
        .expect("invariants hold after every command");
    outcome
}

#[test]
fn create_volume_assigns_units_and_fresh_ids() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    let id = volume_on(&mut state, "vol", &[&["n1", "n2"], &["n2", "n3"]]);
    assert_eq!(id, VolumeId(1));
    assert!(state.nodes[&node("n2")].units.contains(&UnitId::new(1, 0)));
    assert!(state.nodes[&node("n2")].units.contains(&UnitId::new(1, 1)));
    let slice = state.slice(UnitId::new(1, 1)).expect("slice exists");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(1))
    );

    // The same name again is refused; deleted and re-created, it gets a new id.
    let again = Command::CreateVolume {
        name: "vol".into(),
        size_bytes: 8192,
        slice_bytes: 4096,
        replicas: 2,
        placement: vec![vec![node("n1"), node("n2")], vec![node("n2"), node("n3")]],
    };
    assert!(matches!(
        apply(&mut state, again.clone()),
        Outcome::Refused(Refusal::AlreadyExists(_))
    ));
    let deleted = apply(&mut state, Command::DeleteVolume { name: "vol".into() });
    assert_eq!(deleted, Outcome::VolumeDeleted(VolumeId(1)));
    assert!(state.nodes.values().all(|n| n.units.is_empty()));
    assert_eq!(
        apply(&mut state, again),
        Outcome::VolumeCreated(VolumeId(2))
    );
}

#[test]
fn node_down_fails_primaries_over_and_marks_copies_down() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(
        &mut state,
        "vol",
        &[&["n1", "n2", "n3"], &["n2", "n1", "n3"]],
    );
    let report = UnitReport {
        unit: UnitId::new(1, 0),
        last_vba: Vba(42),
    };
    let down = Command::SetNodeState {
        node: node("n1"),
        state: NodeState::Down,
        last_vbas: vec![report],
    };
    assert_eq!(apply(&mut state, down), Outcome::Done);

    let slice0 = state.slice(UnitId::new(1, 0)).expect("slice 0");
    assert_eq!(
        slice0.primary,
        node("n2"),
        "the first current copy on an up node takes over"
    );
    assert_eq!(slice0.generation, Generation(2));
    let copy = slice0.copy(&node("n1")).expect("copy on n1");
    assert_eq!((copy.status, copy.last_vba), (CopyStatus::Down, Vba(42)));

    let slice1 = state.slice(UnitId::new(1, 1)).expect("slice 1");
    assert_eq!(
        (slice1.primary.clone(), slice1.generation),
        (node("n2"), Generation(1))
    );
    assert_eq!(
        slice1.copy(&node("n1")).map(|c| c.status),
        Some(CopyStatus::Down)
    );

    // Back up: a copy that is no longer primary must catch up.
    let up = Command::SetNodeState {
        node: node("n1"),
        state: NodeState::Up,
        last_vbas: vec![],
    };
    apply(&mut state, up);
    let slice0 = state.slice(UnitId::new(1, 0)).expect("slice 0");
    assert_eq!(
        slice0.copy(&node("n1")).map(|c| c.status),
        Some(CopyStatus::Stale)
    );
}

#[test]
fn a_primary_with_no_current_copy_to_replace_it_stays_and_returns_current() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let stale_n2 = SliceUpdate {
        new_primary: None,
        copies: vec![CopyChange {
            node: node("n2"),
            status: CopyStatus::Stale,
            last_vba: Vba(1),
        }],
        ..SliceUpdate::new(UnitId::new(1, 0), Generation(1))
    };
    apply(
        &mut state,
        Command::UpdateSlices {
            updates: vec![stale_n2],
        },
    );
    let down = Command::SetNodeState {
        node: node("n1"),
        state: NodeState::Down,
        last_vbas: vec![],
    };
    apply(&mut state, down);
    let slice = state.slice(UnitId::new(1, 0)).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n1"), Generation(1))
    );

    let up = Command::SetNodeState {
        node: node("n1"),
        state: NodeState::Up,
        last_vbas: vec![],
    };
    apply(&mut state, up);
    let slice = state.slice(UnitId::new(1, 0)).expect("slice");
    assert_eq!(
        slice.copy(&node("n1")).map(|c| c.status),
        Some(CopyStatus::Current)
    );
}

#[test]
fn slice_updates_are_fenced_by_generation_and_all_or_nothing() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"], &["n2", "n3"]]);
    let failover = SliceUpdate {
        new_primary: Some(node("n2")),
        copies: vec![CopyChange {
            node: node("n1"),
            status: CopyStatus::Stale,
            last_vba: Vba(0),
        }],
        ..SliceUpdate::new(UnitId::new(1, 0), Generation(1))
    };
    let stale_old = SliceUpdate {
        expected_generation: Generation(0),
        ..failover.clone()
    };
    let other = SliceUpdate {
        new_primary: None,
        copies: vec![CopyChange {
            node: node("n3"),
            status: CopyStatus::Stale,
            last_vba: Vba(0),
        }],
        ..SliceUpdate::new(UnitId::new(1, 1), Generation(1))
    };
    let before = state.clone();
    let refused = apply(
        &mut state,
        Command::UpdateSlices {
            updates: vec![other, stale_old],
        },
    );
    assert!(
        matches!(refused, Outcome::Refused(Refusal::StaleGeneration { .. })),
        "{refused:?}"
    );
    assert_eq!(state, before, "a refused batch changes nothing");

    assert_eq!(
        apply(
            &mut state,
            Command::UpdateSlices {
                updates: vec![failover.clone()]
            }
        ),
        Outcome::Done
    );
    let slice = state.slice(UnitId::new(1, 0)).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(2))
    );
    // Replaying the same decision (decided against generation 1) is now fenced off.
    let replay = apply(
        &mut state,
        Command::UpdateSlices {
            updates: vec![failover],
        },
    );
    assert!(
        matches!(replay, Outcome::Refused(Refusal::StaleGeneration { .. })),
        "{replay:?}"
    );
}

#[test]
fn registering_a_down_node_brings_it_back_up() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    apply(
        &mut state,
        Command::SetNodeState {
            node: node("n2"),
            state: NodeState::Down,
            last_vbas: vec![],
        },
    );
    let again = Command::RegisterNode {
        id: node("n2"),
        addr: "127.0.0.1:9".into(),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 30,
        devices: None,
    };
    apply(&mut state, again);
    assert_eq!(state.nodes[&NodeId("n2".into())].state, NodeState::Up);
    assert_eq!(state.nodes[&node("n2")].addr, "127.0.0.1:9");
    let slice = state.slice(UnitId::new(1, 0)).expect("slice");
    assert_eq!(
        slice.copy(&node("n2")).map(|c| c.status),
        Some(CopyStatus::Stale)
    );
}

#[test]
fn a_registration_records_the_node_s_devices_only_when_it_names_them() {
    let mut state = cluster(&["n1"]);
    let register = |devices: Option<&[&str]>| Command::RegisterNode {
        id: node("n1"),
        addr: "127.0.0.1:9".into(),
        capacity_bytes: 1 << 30,
        free_bytes: 1 << 30,
        devices: devices.map(|d| d.iter().map(|id| id.to_string()).collect()),
    };
    apply(&mut state, register(Some(&["a", "b"])));
    let devices = |state: &State| state.nodes[&node("n1")].devices.clone();
    assert_eq!(devices(&state), ["a".to_string(), "b".to_string()].into());
    // A registration presenting a device not known yet keeps the recorded ones.
    apply(&mut state, register(None));
    assert_eq!(devices(&state), ["a".to_string(), "b".to_string()].into());
    apply(&mut state, register(Some(&["c"])));
    assert_eq!(devices(&state), ["c".to_string()].into());
}

fn failover_to(unit: UnitId, generation: u64, new_primary: &str, old: &str) -> SliceUpdate {
    SliceUpdate {
        new_primary: Some(node(new_primary)),
        copies: vec![CopyChange {
            node: node(old),
            status: CopyStatus::Stale,
            last_vba: Vba(0),
        }],
        ..SliceUpdate::new(unit, Generation(generation))
    }
}

#[test]
fn a_failover_to_a_copy_marked_stale_meanwhile_is_refused() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    let unit = UnitId::new(1, 0);
    // Decided while n2 was current: fail over from n1 to n2.
    let failover = Command::UpdateSlices {
        updates: vec![failover_to(unit, 1, "n2", "n1")],
    };
    // Committed first: n1, still primary, reports n2 unresponsive; n1 may now acknowledge
    // writes that n2 does not hold. The generation does not change.
    let stale_n2 = Command::UpdateSlices {
        updates: vec![SliceUpdate {
            new_primary: None,
            copies: vec![CopyChange {
                node: node("n2"),
                status: CopyStatus::Stale,
                last_vba: Vba(3),
            }],
            ..SliceUpdate::new(unit, Generation(1))
        }],
    };
    assert_eq!(apply(&mut state, stale_n2), Outcome::Done);
    let before = state.clone();
    let refused = apply(&mut state, failover);
    assert!(
        matches!(refused, Outcome::Refused(Refusal::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(state, before, "nothing changes");
}

#[test]
fn a_failover_to_a_node_marked_down_meanwhile_is_refused() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    let unit = UnitId::new(1, 0);
    let failover = Command::UpdateSlices {
        updates: vec![failover_to(unit, 1, "n2", "n1")],
    };
    apply(
        &mut state,
        Command::SetNodeState {
            node: node("n2"),
            state: NodeState::Down,
            last_vbas: vec![],
        },
    );
    let before = state.clone();
    let refused = apply(&mut state, failover);
    assert!(
        matches!(refused, Outcome::Refused(Refusal::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(state, before);
    // To the other current copy on an up node it goes through.
    let to_n3 = Command::UpdateSlices {
        updates: vec![failover_to(unit, 1, "n3", "n1")],
    };
    assert_eq!(apply(&mut state, to_n3), Outcome::Done);
    assert_eq!(state.slice(unit).map(|s| s.generation), Some(Generation(2)));
}

#[test]
fn a_batch_naming_a_slice_twice_is_refused_whole() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2", "n3"]]);
    let unit = UnitId::new(1, 0);
    let before = state.clone();
    let twice = Command::UpdateSlices {
        updates: vec![
            failover_to(unit, 1, "n2", "n1"),
            failover_to(unit, 1, "n3", "n1"),
        ],
    };
    let refused = apply(&mut state, twice);
    assert!(
        matches!(refused, Outcome::Refused(Refusal::BadRequest(_))),
        "{refused:?}"
    );
    assert_eq!(state, before);
}

#[test]
fn a_placement_on_a_node_that_went_down_meanwhile_is_refused() {
    let mut state = cluster(&["n1", "n2"]);
    apply(
        &mut state,
        Command::SetNodeState {
            node: node("n2"),
            state: NodeState::Down,
            last_vbas: vec![],
        },
    );
    let before = state.clone();
    let create = Command::CreateVolume {
        name: "vol".into(),
        size_bytes: 4096,
        slice_bytes: 4096,
        replicas: 2,
        placement: vec![vec![node("n2"), node("n1")]],
    };
    let refused = apply(&mut state, create);
    assert!(
        matches!(refused, Outcome::Refused(Refusal::InsufficientNodes(_))),
        "{refused:?}"
    );
    assert_eq!(state, before);
    let empty = Command::CreateVolume {
        name: "empty".into(),
        size_bytes: 0,
        slice_bytes: 4096,
        replicas: 1,
        placement: vec![],
    };
    assert!(matches!(
        apply(&mut state, empty),
        Outcome::Refused(Refusal::BadRequest(_))
    ));
}

#[test]
fn a_primary_that_declared_itself_stale_is_not_current_after_a_down_and_up() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    // n2 fell behind; then n1, the primary, reports that it lost data itself. Nobody can take
    // over, so n1 stays primary with a stale copy.
    for stale in ["n2", "n1"] {
        let update = SliceUpdate {
            new_primary: None,
            copies: vec![CopyChange {
                node: node(stale),
                status: CopyStatus::Stale,
                last_vba: Vba(0),
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
    for node_state in [NodeState::Down, NodeState::Up] {
        apply(
            &mut state,
            Command::SetNodeState {
                node: node("n1"),
                state: node_state,
                last_vbas: vec![],
            },
        );
    }
    let slice = state.slice(unit).expect("slice");
    assert_eq!(slice.primary, node("n1"));
    assert_eq!(
        slice.copy(&node("n1")).map(|c| c.status),
        Some(CopyStatus::Stale)
    );
}

/// The kinds of the event log's entries after `after`, with their causes.
fn events_after(state: &State, after: u64) -> Vec<(EventKind, Option<String>)> {
    state
        .events
        .page(after, usize::MAX)
        .events
        .into_iter()
        .map(|e| (e.what, e.cause))
        .collect()
}

#[test]
fn the_event_log_says_what_each_command_changed_and_the_cause_its_proposer_noted() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    let id = volume_on(&mut state, "vol", &[&["n1", "n2"], &["n2", "n3"]]);
    let kinds: Vec<&'static str> = state.events.entries().map(|e| e.what.name()).collect();
    assert_eq!(
        kinds,
        [
            "node_registered",
            "node_registered",
            "node_registered",
            "volume_created"
        ]
    );
    let mark = state.events.last_seq();
    let down = Command::SetNodeState {
        node: node("n1"),
        state: NodeState::Down,
        last_vbas: vec![],
    }
    .noted(Note {
        at_ms: 42,
        cause: Some("no heartbeat".into()),
    });
    apply(&mut state, down);
    let cause = Some("no heartbeat".to_string());
    assert_eq!(
        events_after(&state, mark),
        [
            (
                EventKind::NodeDown {
                    node: node("n1"),
                    copies_down: 1
                },
                cause.clone()
            ),
            (
                EventKind::Failover {
                    volume: "vol".into(),
                    unit: UnitId {
                        volume: id,
                        slice: SliceIndex(0)
                    },
                    from: node("n1"),
                    to: node("n2"),
                    generation: Generation(2),
                },
                cause.clone()
            ),
        ]
    );
    assert_eq!(state.events.get(mark + 1).map(|e| e.at_ms), Some(42));

    // A refused command writes nothing.
    let mark = state.events.last_seq();
    let stale_generation = Command::UpdateSlices {
        updates: vec![failover_to(UnitId::new(id.0, 0), 1, "n1", "n2")],
    };
    assert!(matches!(
        apply(&mut state, stale_generation),
        Outcome::Refused(_)
    ));
    assert_eq!(state.events.last_seq(), mark);

    // Back up: its down copy must catch up; then the copy's status changes one by one.
    apply(
        &mut state,
        Command::SetNodeState {
            node: node("n1"),
            state: NodeState::Up,
            last_vbas: vec![],
        },
    );
    let syncing = SliceUpdate {
        copies: vec![CopyChange {
            node: node("n1"),
            status: CopyStatus::Syncing,
            last_vba: Vba(7),
        }],
        ..SliceUpdate::new(UnitId::new(id.0, 0), Generation(2))
    };
    apply(
        &mut state,
        Command::UpdateSlices {
            updates: vec![syncing],
        },
    );
    assert_eq!(
        events_after(&state, mark),
        [
            (
                EventKind::NodeUp {
                    node: node("n1"),
                    copies_stale: 1
                },
                None
            ),
            (
                EventKind::CopyStatus {
                    volume: "vol".into(),
                    unit: UnitId::new(id.0, 0),
                    node: node("n1"),
                    from: CopyStatus::Stale,
                    to: CopyStatus::Syncing,
                    last_vba: Vba(7),
                },
                None
            ),
        ]
    );
}
