use std::time::{Duration, Instant};

use vbs_wire::api::{HeartbeatRequest, NodeState, UnitReport};
use vbs_wire::types::{Generation, UnitId, Vba};

use super::*;
use crate::state::apply::Touched;
use crate::state::fixtures::{cluster, node, volume_on};

const LEASE: Duration = Duration::from_secs(5);
const MARGIN: Duration = Duration::from_millis(500);

fn liveness(leader_since: Instant) -> Liveness {
    Liveness::new(
        LeaseConfig {
            lease: LEASE,
            clock_margin: MARGIN,
        },
        leader_since,
    )
}

fn heartbeat(units: &[(UnitId, u64)]) -> HeartbeatRequest {
    HeartbeatRequest {
        free_bytes: Some(1 << 20),
        units: units
            .iter()
            .map(|(u, v)| UnitReport {
                unit: *u,
                last_vba: Vba(*v),
            })
            .collect(),
        ..Default::default()
    }
}

fn downed(verdicts: &Verdicts) -> Vec<String> {
    verdicts
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::SetNodeState {
                node,
                state: NodeState::Down,
                ..
            } => Some(node.0.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_new_leader_gives_every_node_a_full_lease_before_judging() {
    let state = cluster(&["n1", "n2"]);
    let elected = Instant::now();
    let memory = liveness(elected);
    // Nothing heard at all: still nobody is down until lease + margin after the election.
    assert!(memory.detect(&state, elected + LEASE).commands.is_empty());
    assert!(memory
        .detect(&state, elected + LEASE + MARGIN - Duration::from_millis(1))
        .commands
        .is_empty());
    assert_eq!(
        downed(&memory.detect(&state, elected + LEASE + MARGIN)),
        ["n1", "n2"]
    );
}

#[test]
fn a_node_silent_past_lease_and_margin_goes_down_with_its_last_vbas() {
    let mut state = cluster(&["n1", "n2", "n3"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    let t1 = t0 + Duration::from_secs(3);
    memory.heard(&node("n1"), t1, &heartbeat(&[(UnitId::new(1, 0), 17)]));
    memory.heard(&node("n2"), t1 + LEASE, &heartbeat(&[]));
    memory.heard(&node("n3"), t1 + LEASE, &heartbeat(&[]));

    // Counted from when the heartbeat was received, plus the margin.
    assert!(downed(&memory.detect(&state, t1 + LEASE)).is_empty());
    let verdicts = memory.detect(&state, t1 + LEASE + MARGIN);
    assert_eq!(downed(&verdicts), ["n1"]);
    match &verdicts.commands[0] {
        Command::SetNodeState { last_vbas, .. } => {
            assert_eq!(
                last_vbas,
                &[UnitReport {
                    unit: UnitId::new(1, 0),
                    last_vba: Vba(17)
                }]
            )
        }
        other => panic!("unexpected {other:?}"),
    }

    // Applying the verdict fails the slice over to n2 and marks n1's copy down.
    state.apply(&verdicts.commands[0], &mut Touched::default());
    let slice = state.slice(UnitId::new(1, 0)).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(2))
    );
    let copy = slice.copy(&node("n1")).expect("copy");
    assert_eq!(
        (copy.status, copy.last_vba),
        (vbs_wire::api::CopyStatus::Down, Vba(17))
    );
    // A node already down is not judged again.
    assert!(downed(&memory.detect(&state, t1 + LEASE + MARGIN)).is_empty());
}

#[test]
fn a_revoked_primary_fails_over_once_its_last_renewal_runs_out() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    let revoked_at = t0 + Duration::from_secs(10);
    memory.heard(
        &node("n1"),
        revoked_at - Duration::from_secs(1),
        &heartbeat(&[]),
    );
    memory.revoke(unit, Generation(1), &node("n1"), "test");
    assert!(!memory.lease_renewed(unit, Generation(1)));
    // n1 keeps heartbeating; that no longer renews the unit's lease.
    let later = revoked_at + LEASE + MARGIN;
    memory.heard(&node("n1"), later, &heartbeat(&[]));
    memory.heard(&node("n2"), later, &heartbeat(&[]));
    let before = memory.detect(&state, revoked_at + Duration::from_secs(2));
    assert!(before.commands.is_empty(), "{before:?}");
    let verdicts = memory.detect(&state, revoked_at - Duration::from_secs(1) + LEASE + MARGIN);
    assert_eq!(verdicts.commands.len(), 1, "{verdicts:?}");
    state.apply(&verdicts.commands[0], &mut Touched::default());
    let slice = state.slice(unit).expect("slice");
    assert_eq!(
        (slice.primary.clone(), slice.generation),
        (node("n2"), Generation(2))
    );
    assert_eq!(
        memory.detect(&state, later).cancel,
        [unit],
        "the revocation is spent"
    );
    // The new primary's lease is renewed: the revocation named the old generation.
    assert!(memory.lease_renewed(unit, Generation(2)));
}

#[test]
fn a_revocation_with_no_copy_to_take_over_is_cancelled() {
    let mut state = cluster(&["n1"]);
    volume_on(&mut state, "vol", &[&["n1"]]);
    let unit = UnitId::new(1, 0);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    memory.heard(&node("n1"), t0, &heartbeat(&[]));
    memory.revoke(unit, Generation(1), &node("n1"), "test");
    memory.heard(&node("n1"), t0 + LEASE, &heartbeat(&[]));
    let verdicts = memory.detect(&state, t0 + LEASE + MARGIN);
    assert_eq!(
        verdicts,
        Verdicts {
            commands: vec![],
            cancel: vec![unit],
            paused: None,
        }
    );
}

/// The detector judging every 100 ms from `from` until just before `until`, as it does on a
/// leader that keeps running; nobody is judged down meanwhile.
fn keep_looking(memory: &mut Liveness, state: &State, from: Instant, until: Instant) {
    let mut at = from;
    while at < until {
        let verdicts = memory.judge(state, at);
        assert!(
            verdicts.commands.is_empty(),
            "judged at {:?}: {verdicts:?}",
            at - from
        );
        at += Duration::from_millis(100);
    }
}

#[test]
fn a_leader_that_did_not_run_gives_every_node_a_full_lease_before_judging() {
    let state = cluster(&["n1", "n2"]);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    memory.heard(&node("n1"), t0, &heartbeat(&[]));
    memory.heard(&node("n2"), t0, &heartbeat(&[]));
    let stopped = t0 + Duration::from_secs(1);
    keep_looking(&mut memory, &state, t0, stopped);
    // The leader stops for longer than a lease: the heartbeats sent meanwhile wait unread, so
    // its silence is not the nodes'.
    let resumed = stopped + LEASE + MARGIN;
    let verdicts = memory.judge(&state, resumed);
    assert!(downed(&verdicts).is_empty(), "{verdicts:?}");
    assert_eq!(
        verdicts.paused,
        Some(LEASE + MARGIN + Duration::from_millis(100))
    );
    // n2's heartbeats are read again, n1 stays silent: n1 goes down a full lease after the
    // pause, not before.
    memory.heard(&node("n2"), resumed, &heartbeat(&[]));
    keep_looking(&mut memory, &state, resumed, resumed + LEASE + MARGIN);
    memory.heard(&node("n2"), resumed + LEASE, &heartbeat(&[]));
    let verdicts = memory.judge(&state, resumed + LEASE + MARGIN);
    assert_eq!(downed(&verdicts), ["n1"]);
    assert_eq!(verdicts.paused, None);
}

#[test]
fn a_node_being_judged_down_gets_no_lease_until_the_verdict_is_resolved() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    memory.heard(&node("n2"), t0 + LEASE, &heartbeat(&[]));
    keep_looking(&mut memory, &state, t0, t0 + LEASE + MARGIN);
    let verdicts = memory.judge(&state, t0 + LEASE + MARGIN);
    assert_eq!(downed(&verdicts), ["n1"]);
    // n1 heartbeats while its verdict commits: the reply must not renew its lease, since the
    // verdict fails its slice over once committed.
    memory.heard(&node("n1"), t0 + LEASE + MARGIN, &heartbeat(&[]));
    assert!(!memory.renews(&state, &node("n1"), unit, Generation(1)));
    assert!(memory
        .judge(&state, t0 + LEASE + MARGIN)
        .commands
        .is_empty());

    state.apply(&verdicts.commands[0], &mut Touched::default());
    memory.judged(&node("n1"));
    // Down in the state: still no renewal until the node is committed up again.
    assert!(!memory.renews(&state, &node("n1"), unit, Generation(2)));
    state.apply(
        &Command::SetNodeState {
            node: node("n1"),
            state: NodeState::Up,
            last_vbas: vec![],
        },
        &mut Touched::default(),
    );
    assert!(memory.renews(&state, &node("n1"), unit, Generation(2)));
}

#[test]
fn a_node_is_lost_once_down_for_the_grace_period_after_its_lease() {
    let mut state = cluster(&["n1", "n2"]);
    let elected = Instant::now();
    let mut memory = liveness(elected);
    let grace = Duration::from_secs(60);
    let heard = elected + Duration::from_secs(10);
    memory.heard(&node("n1"), heard, &heartbeat(&[]));
    state.apply(
        &Command::SetNodeState {
            node: node("n1"),
            state: NodeState::Down,
            last_vbas: vec![],
        },
        &mut Touched::default(),
    );
    let lease_out = heard + LEASE + MARGIN;
    assert!(memory
        .down_past(&state, lease_out + grace - Duration::from_millis(1), grace)
        .is_empty());
    let lost = memory.down_past(&state, lease_out + grace, grace);
    assert_eq!(
        lost.into_iter().collect::<Vec<_>>(),
        [node("n1")],
        "n2 is up"
    );
}

/// The copies of volume `vol`'s first slice as n1's heartbeat reply lists them at `now`, checked
/// to be those the volume map shows.
fn copies_shown(state: &State, memory: &Liveness, now: Instant) -> Vec<vbs_wire::api::CopyInfo> {
    let remembered = |u, c: &Copy| memory.remembered(u, c, now);
    let assigned = state.assigned_units(&node("n1"), |_, _| false, &remembered);
    let volume = state.volume_by_name("vol").expect("volume");
    let map = state.volume_map(volume, &remembered);
    assert_eq!(map.slices[0].copies, assigned[0].copies);
    assigned[0].copies.clone()
}

#[test]
fn views_show_the_last_vba_each_node_reported_beside_the_committed_one() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    // The copies as n1's heartbeat reply lists them, and as the volume map shows them:
    // (node, committed last VBA, reported last VBA).
    let shown = |memory: &Liveness| {
        copies_shown(&state, memory, t0)
            .iter()
            .map(|c| (c.node.0.clone(), c.last_vba.0, c.reported_vba.map(|v| v.0)))
            .collect::<Vec<_>>()
    };
    let rows = |list: &[(&str, u64, Option<u64>)]| {
        list.iter()
            .map(|(n, committed, reported)| (n.to_string(), *committed, *reported))
            .collect::<Vec<_>>()
    };

    // Nothing heard yet: only what was committed with the copies (nothing written).
    assert_eq!(shown(&memory), rows(&[("n1", 0, None), ("n2", 0, None)]));
    // Written since, without any status change: nothing new is committed, and the heartbeats
    // say how far each copy is.
    memory.heard(&node("n1"), t0, &heartbeat(&[(unit, 40)]));
    memory.heard(&node("n2"), t0, &heartbeat(&[(unit, 39)]));
    assert_eq!(
        shown(&memory),
        rows(&[("n1", 0, Some(40)), ("n2", 0, Some(39))])
    );
    // n1 comes back with an empty disk before its lease ran out, so nothing failed over. Its
    // first heartbeat lists no unit; the reply that has it create the unit again still says the
    // copies were written, so it knows its empty unit lost them.
    memory.heard(&node("n1"), t0 + Duration::from_secs(1), &heartbeat(&[]));
    assert_eq!(
        shown(&memory),
        rows(&[("n1", 0, Some(40)), ("n2", 0, Some(39))])
    );
    // Once the new, empty unit reports, the view says so.
    memory.heard(
        &node("n1"),
        t0 + Duration::from_secs(2),
        &heartbeat(&[(unit, 0)]),
    );
    assert_eq!(
        shown(&memory),
        rows(&[("n1", 0, Some(0)), ("n2", 0, Some(39))])
    );
}

#[test]
fn a_node_whose_heartbeat_lists_no_such_unit_is_shown_at_vba_0() {
    let mut state = cluster(&["n1", "n2"]);
    volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(1, 0);
    let t0 = Instant::now();
    let mut memory = liveness(t0);
    let reported = |memory: &Liveness| {
        copies_shown(&state, memory, t0)
            .iter()
            .map(|c| c.reported_vba.map(|v| v.0))
            .collect::<Vec<_>>()
    };
    // A registration lists no units and says nothing of them.
    memory.registered(&node("n2"), t0, Some(1 << 30));
    assert_eq!(reported(&memory), [None, None]);
    // A heartbeat listing every unit of n2, this one not among them: n2 holds none of it yet.
    memory.heard(&node("n2"), t0, &heartbeat(&[(UnitId::new(7, 0), 5)]));
    assert_eq!(reported(&memory), [None, Some(0)]);
    // Once n2 lists the unit, its own figure.
    memory.heard(
        &node("n2"),
        t0,
        &heartbeat(&[(UnitId::new(7, 0), 5), (unit, 3)]),
    );
    assert_eq!(reported(&memory), [None, Some(3)]);
}

#[test]
fn a_node_whose_devices_are_all_past_the_full_threshold_has_no_room_for_new_copies() {
    let t0 = Instant::now();
    let mut l = liveness(t0);
    let device = |dir: &str, free_bytes| vbs_wire::api::DeviceSpace {
        dir: dir.into(),
        total_bytes: 100 << 20,
        free_bytes,
    };
    let with_devices = |devices: Vec<vbs_wire::api::DeviceSpace>| HeartbeatRequest {
        free_bytes: Some(40 << 20),
        devices,
        ..Default::default()
    };
    // One device nearly full, one not: the node still takes copies.
    l.heard(
        &node("n1"),
        t0,
        &with_devices(vec![device("/a", 2 << 20), device("/b", 50 << 20)]),
    );
    // Every device past 95% used.
    l.heard(
        &node("n2"),
        t0,
        &with_devices(vec![device("/a", 4 << 20), device("/b", 1 << 20)]),
    );
    let free = l.reported_free();
    assert_eq!(free[&node("n1")], 40 << 20);
    assert_eq!(free[&node("n2")], 0);
    // Space comes back: the next heartbeat says so.
    l.heard(&node("n2"), t0, &with_devices(vec![device("/a", 30 << 20)]));
    assert_eq!(l.reported_free()[&node("n2")], 40 << 20);
}

#[test]
fn a_heartbeat_brings_a_down_node_back_with_its_last_vbas_and_changes_nothing_for_an_up_one() {
    let mut state = cluster(&["n1", "n2"]);
    let id = volume_on(&mut state, "vol", &[&["n1", "n2"]]);
    let unit = UnitId::new(id.0, 0);
    let request = heartbeat(&[(unit, 7)]);
    assert_eq!(on_heartbeat(&state, &node("n2"), &request), Ok(None));

    state.nodes.get_mut(&node("n2")).expect("n2").state = NodeState::Down;
    assert_eq!(
        on_heartbeat(&state, &node("n2"), &request),
        Ok(Some(Command::SetNodeState {
            node: node("n2"),
            state: NodeState::Up,
            last_vbas: request.units.clone(),
        }))
    );

    let refusal = on_heartbeat(&state, &node("n9"), &request).expect_err("not registered");
    assert!(matches!(refusal, Refusal::NotFound(_)), "{refusal:?}");
}
