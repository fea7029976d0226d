use std::time::{Duration, Instant};

use vbs_wire::api::{
    CopyStatus, HeartbeatRequest, Notification, Source, UnitGeneration, UnitReport,
};
use vbs_wire::types::{Generation, NodeId, UnitId, Vba};

use super::*;
use crate::decide::liveness::{LeaseConfig, Liveness};
use crate::state::apply::Touched;
use crate::state::fixtures::{cluster, node, volume_on};
use crate::state::Outcome;

const LEASE: Duration = Duration::from_secs(5);
const MARGIN: Duration = Duration::from_millis(500);

fn setup() -> (State, Liveness, Instant) {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(
        &mut state,
        "vol",
        &[&["n1", "n2", "n3"], &["n2", "n3", "n1"]],
    );
    let t0 = Instant::now();
    (
        state,
        Liveness::new(
            LeaseConfig {
                lease: LEASE,
                clock_margin: MARGIN,
            },
            t0,
        ),
        t0,
    )
}

fn at(unit: UnitId, generation: u64) -> UnitGeneration {
    UnitGeneration {
        unit,
        generation: Generation(generation),
    }
}

fn commit(state: &mut State, decision: Decision) {
    match decision {
        Decision::Propose(command) | Decision::Failover { command, .. } => {
            assert_eq!(
                state.apply(&command, &mut Touched::default()),
                Outcome::Done
            )
        }
        other => panic!("expected a command, got {other:?}"),
    }
}

fn status(state: &State, unit: UnitId, node_name: &str) -> CopyStatus {
    state
        .slice(unit)
        .and_then(|s| s.copy(&node(node_name)))
        .map(|c| c.status)
        .expect("copy")
}

#[test]
fn not_current_marks_the_sources_own_copies_stale() {
    let (mut state, mut memory, t0) = setup();
    let unit = UnitId::new(1, 1);
    memory.heard(
        &node("n3"),
        t0,
        &HeartbeatRequest {
            free_bytes: None,
            units: vec![UnitReport {
                unit,
                last_vba: Vba(9),
            }],
            ..Default::default()
        },
    );
    let n = Notification::NotCurrent {
        source: node("n3"),
        units: vec![at(unit, 1)],
    };
    let decision = decide(&state, &memory, &n, t0).expect("accepted");
    commit(&mut state, decision);
    assert_eq!(status(&state, unit, "n3"), CopyStatus::Stale);
    assert_eq!(
        state
            .slice(unit)
            .and_then(|s| s.copy(&node("n3")))
            .map(|c| c.last_vba),
        Some(Vba(9))
    );
    assert_eq!(
        state.slice(unit).map(|s| s.generation),
        Some(Generation(1)),
        "no primary change"
    );
    // Saying it again changes nothing.
    assert_eq!(decide(&state, &memory, &n, t0), Ok(Decision::Nothing));
}

#[test]
fn not_current_from_a_primary_hands_the_slice_to_a_current_copy() {
    let (mut state, memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    let n = Notification::NotCurrent {
        source: node("n1"),
        units: vec![at(unit, 1)],
    };
    let decision = decide(&state, &memory, &n, t0).expect("accepted");
    commit(&mut state, decision);
    let slice = state.slice(unit).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(2))
    );
    assert_eq!(status(&state, unit, "n1"), CopyStatus::Stale);
}

#[test]
fn a_primary_reporting_a_secondary_makes_that_copy_stale() {
    let (mut state, memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    let n = Notification::Unresponsive {
        source: Source::Node(node("n1")),
        target: node("n3"),
        units: vec![at(unit, 1)],
    };
    let decision = decide(&state, &memory, &n, t0).expect("accepted");
    commit(&mut state, decision);
    assert_eq!(status(&state, unit, "n3"), CopyStatus::Stale);
    assert_eq!(status(&state, unit, "n2"), CopyStatus::Current);
    assert_eq!(state.slice(unit).map(|s| s.generation), Some(Generation(1)));
}

#[test]
fn only_the_primary_may_report_a_secondary() {
    let (state, memory, t0) = setup();
    let n = Notification::Unresponsive {
        source: Source::Node(node("n2")),
        target: node("n3"),
        units: vec![at(UnitId::new(1, 0), 1)],
    };
    let err = decide(&state, &memory, &n, t0).expect_err("n2 is a secondary");
    assert!(matches!(err, Refusal::Conflict(_)), "{err:?}");
}

#[test]
fn an_older_generation_is_refused_and_changes_nothing() {
    let (mut state, memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    // The slice fails over (generation 2); the deposed primary n1 still believes in generation 1.
    let down = Notification::NotCurrent {
        source: node("n1"),
        units: vec![at(unit, 1)],
    };
    let decision = decide(&state, &memory, &down, t0).expect("accepted");
    commit(&mut state, decision);
    let before = state.clone();
    let fenced = Notification::Unresponsive {
        source: Source::Node(node("n1")),
        target: node("n2"),
        units: vec![at(UnitId::new(1, 1), 1), at(unit, 1)],
    };
    let err = decide(&state, &memory, &fenced, t0).expect_err("generation 1 is old");
    assert_eq!(
        err,
        Refusal::StaleGeneration {
            unit,
            named: Generation(1),
            current: Generation(2)
        }
    );
    assert_eq!(state, before);
}

#[test]
fn a_client_report_fails_the_primary_over_only_after_its_lease() {
    let (mut state, mut memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    let heard_at = t0 + Duration::from_secs(20);
    for name in ["n1", "n2", "n3"] {
        memory.heard(&node(name), heard_at, &HeartbeatRequest::default());
    }
    let n = Notification::Unresponsive {
        source: Source::Client("host-1".into()),
        target: node("n1"),
        units: vec![at(unit, 1)],
    };
    let now = heard_at + Duration::from_secs(2);
    match decide(&state, &memory, &n, now).expect("accepted") {
        Decision::Revoke { units, retry_after } => {
            assert_eq!(units, [(unit, Generation(1))]);
            assert_eq!(retry_after, LEASE + MARGIN - Duration::from_secs(2));
            memory.revoke(unit, Generation(1), &node("n1"), "test");
        }
        other => panic!("must wait for the lease, got {other:?}"),
    }
    // n1 heartbeats on, but the revoked lease is not renewed, so the wait does not move.
    memory.heard(
        &node("n1"),
        now + Duration::from_secs(1),
        &HeartbeatRequest::default(),
    );
    let still = decide(
        &state,
        &memory,
        &n,
        heard_at + LEASE + MARGIN - Duration::from_millis(1),
    );
    assert!(matches!(still, Ok(Decision::Revoke { .. })), "{still:?}");
    let decision = decide(&state, &memory, &n, heard_at + LEASE + MARGIN).expect("expired");
    commit(&mut state, decision);
    let slice = state.slice(unit).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(2))
    );
    assert_eq!(status(&state, unit, "n1"), CopyStatus::Stale);
    // The same report again names generation 1: refused, no second failover.
    let again = decide(&state, &memory, &n, heard_at + LEASE + MARGIN);
    assert!(
        matches!(again, Err(Refusal::StaleGeneration { .. })),
        "{again:?}"
    );
}

#[test]
fn a_client_report_about_a_down_primary_fails_over_at_once() {
    let (mut state, memory, t0) = setup();
    let unit = UnitId::new(1, 1);
    state.nodes.get_mut(&node("n2")).expect("n2").state = vbs_wire::api::NodeState::Down;
    let n = Notification::Unresponsive {
        source: Source::Client("host-1".into()),
        target: node("n2"),
        units: vec![at(unit, 1)],
    };
    let decision = decide(&state, &memory, &n, t0).expect("accepted");
    commit(&mut state, decision);
    assert_eq!(
        state.slice(unit).map(|s| s.primary.clone()),
        Some(node("n3"))
    );
    assert_eq!(status(&state, unit, "n2"), CopyStatus::Down);
}

#[test]
fn a_client_report_with_no_current_copy_to_promote_is_unavailable() {
    let (mut state, memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    for name in ["n2", "n3"] {
        let n = Notification::NotCurrent {
            source: NodeId(name.into()),
            units: vec![at(unit, 1)],
        };
        let decision = decide(&state, &memory, &n, t0).expect("accepted");
        commit(&mut state, decision);
    }
    let n = Notification::Unresponsive {
        source: Source::Client("host-1".into()),
        target: node("n1"),
        units: vec![at(unit, 1)],
    };
    let err = decide(&state, &memory, &n, t0 + LEASE * 10).expect_err("nobody to promote");
    assert!(matches!(err, Refusal::Unavailable(_)), "{err:?}");
}

#[test]
fn unknown_units_and_empty_lists_are_refused() {
    let (state, memory, t0) = setup();
    let n = Notification::NotCurrent {
        source: node("n1"),
        units: vec![at(UnitId::new(9, 0), 1)],
    };
    assert!(matches!(
        decide(&state, &memory, &n, t0),
        Err(Refusal::NotFound(_))
    ));
    let n = Notification::NotCurrent {
        source: node("n1"),
        units: vec![],
    };
    assert!(matches!(
        decide(&state, &memory, &n, t0),
        Err(Refusal::BadRequest(_))
    ));
    let n = Notification::NotCurrent {
        source: node("zz"),
        units: vec![at(UnitId::new(1, 0), 1)],
    };
    assert!(matches!(
        decide(&state, &memory, &n, t0),
        Err(Refusal::NotFound(_))
    ));
}

#[test]
fn a_failover_after_the_lease_first_stops_renewing_the_old_primarys_lease() {
    let (mut state, mut memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    let n = Notification::Unresponsive {
        source: Source::Client("host-1".into()),
        target: node("n1"),
        units: vec![at(unit, 1)],
    };
    // n1 has been silent for its whole lease, but is not judged down yet.
    let decision = decide(&state, &memory, &n, t0 + LEASE + MARGIN).expect("accepted");
    let Decision::Failover { units, command } = decision else {
        panic!("expected a failover, got {decision:?}");
    };
    assert_eq!(units, [(unit, Generation(1))], "the lease to revoke first");
    for (unit, generation) in &units {
        memory.revoke(*unit, *generation, &node("n1"), "test");
    }
    // A heartbeat from n1 answered while the failover commits renews nothing for the unit.
    memory.heard(
        &node("n1"),
        t0 + LEASE + MARGIN,
        &HeartbeatRequest::default(),
    );
    assert!(!memory.renews(&state, &node("n1"), unit, Generation(1)));
    commit(&mut state, Decision::Propose(command));
    assert_eq!(state.slice(unit).map(|s| s.generation), Some(Generation(2)));
}

#[test]
fn a_unit_named_twice_is_refused() {
    let (state, memory, t0) = setup();
    let unit = UnitId::new(1, 0);
    let n = Notification::NotCurrent {
        source: node("n2"),
        units: vec![at(unit, 1), at(unit, 1)],
    };
    let err = decide(&state, &memory, &n, t0).expect_err("named twice");
    assert!(matches!(err, Refusal::BadRequest(_)), "{err:?}");
    assert!(err.to_string().contains("twice"), "{err}");
}
