//! `GET /metrics`: Prometheus text exposition (format 0.0.4), computed at scrape time from the
//! Raft metrics, the applied state and, on the leader, the resync progress it remembers, and
//! written by `vbs_wire::metrics`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use vbs_wire::api::{CopyStatus, NodeState};
use vbs_wire::metrics::{self, Families, CONTENT_TYPE};
use vbs_wire::security::Surface;
use vbs_wire::types::{NodeId, SliceIndex, UnitId};

use crate::decide::resync::{ResyncTracker, RunningResyncs};
use crate::manager::SharedManager;
use crate::state::State as DbState;

/// What this replica's Raft reports.
#[derive(Debug, Default)]
struct RaftFigures {
    term: u64,
    is_leader: bool,
    leader: Option<u64>,
    last_log_index: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
    voters: u64,
    learners: u64,
}

/// A resync under way, as the leader last heard of it.
#[derive(Debug, PartialEq, Eq)]
struct CopyResync {
    volume: String,
    slice: SliceIndex,
    node: NodeId,
    bytes_done: u64,
    bytes_remaining: u64,
}

/// What the metrics show of the applied state, and of the resyncs on the leader.
#[derive(Debug, Default)]
struct StateFigures {
    /// Every storage node: its state and whether it is draining.
    nodes: Vec<(NodeId, NodeState, bool)>,
    copies: BTreeMap<CopyStatus, u64>,
    /// Slices with fewer `current` copies than their volume's replicas.
    slices_degraded: u64,
    volumes: u64,
    running: RunningResyncs,
    resyncs: Vec<CopyResync>,
    /// Storage devices past the nearfull threshold (and not full), and past the full one, as
    /// last reported to the leader (none elsewhere).
    devices_nearfull: u64,
    devices_full: u64,
}

impl StateFigures {
    /// `tracker` is the leader's resync memory, `None` elsewhere.
    fn of(state: &DbState, tracker: Option<&ResyncTracker>, now: Instant) -> StateFigures {
        let mut copies: BTreeMap<CopyStatus, u64> =
            CopyStatus::ALL.iter().map(|s| (*s, 0)).collect();
        let mut resyncs = Vec::new();
        let mut slices_degraded = 0;
        for volume in state.volumes.values() {
            for (index, slice) in volume.slices.iter().enumerate() {
                let unit = UnitId {
                    volume: volume.id,
                    slice: SliceIndex(index as u32),
                };
                let current = slice
                    .copies
                    .iter()
                    .filter(|c| c.status == CopyStatus::Current)
                    .count();
                slices_degraded += u64::from(current < volume.replicas as usize);
                for copy in &slice.copies {
                    *copies.entry(copy.status).or_default() += 1;
                    let Some(resync) = tracker.and_then(|t| t.status(unit, copy, now)) else {
                        continue;
                    };
                    // The rule of `ResyncTracker::running`, copy by copy.
                    let under_way = !resync.progress.finished
                        && matches!(copy.status, CopyStatus::Stale | CopyStatus::Syncing);
                    if under_way {
                        resyncs.push(CopyResync {
                            volume: volume.name.clone(),
                            slice: unit.slice,
                            node: copy.node.clone(),
                            bytes_done: resync.progress.bytes_done,
                            bytes_remaining: resync
                                .progress
                                .bytes_total
                                .saturating_sub(resync.progress.bytes_done),
                        });
                    }
                }
            }
        }
        let running = tracker.map_or_else(RunningResyncs::default, |t| {
            t.running(|unit, node| {
                state
                    .slice(unit)
                    .and_then(|s| s.copy(node))
                    .map(|c| c.status)
            })
        });
        StateFigures {
            nodes: state
                .nodes
                .values()
                .map(|n| (n.id.clone(), n.state, n.draining))
                .collect(),
            copies,
            slices_degraded,
            volumes: state.volumes.len() as u64,
            running,
            resyncs,
            devices_nearfull: 0,
            devices_full: 0,
        }
    }
}

pub async fn metrics(State(manager): State<SharedManager>) -> Response {
    let mut raft = {
        let metrics = manager.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let voters = membership.voter_ids().count() as u64;
        let members = membership.nodes().count() as u64;
        RaftFigures {
            term: m.current_term,
            is_leader: m.state == openraft::ServerState::Leader,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            commit_index: None,
            applied_index: m.last_applied.map(|id| id.index),
            voters,
            learners: members.saturating_sub(voters),
        }
    };
    raft.commit_index = manager.log.committed_index();
    let now = Instant::now();
    let figures = manager
        .with_liveness(now, |l| {
            manager.read(|a| {
                let mut figures = StateFigures::of(&a.state, Some(&l.resyncs), now);
                for node in a.state.nodes.keys() {
                    for device in l.devices(node) {
                        if l.space.is_full(device) {
                            figures.devices_full += 1;
                        } else if l.space.is_nearfull(device) {
                            figures.devices_nearfull += 1;
                        }
                    }
                }
                figures
            })
        })
        .unwrap_or_else(|| manager.read(|a| StateFigures::of(&a.state, None, now)));
    let rejections = manager.rejections.clone();
    let text = metrics::render(move |out| {
        write(out, &raft, &figures)?;
        rejections.write_metrics(out, &[Surface::Api, Surface::Raft, Surface::Tls])
    });
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

fn write(out: &mut Families<'_>, raft: &RaftFigures, figures: &StateFigures) -> fmt::Result {
    out.gauge("vbs_raft_term", "Current Raft term.", raft.term)?;
    out.gauge(
        "vbs_raft_is_leader",
        "1 if this manager is the Raft leader.",
        u64::from(raft.is_leader),
    )?;
    out.gauge(
        "vbs_raft_leader_id",
        "Id of the known leader, 0 if none.",
        raft.leader.unwrap_or(0),
    )?;
    out.gauge(
        "vbs_raft_last_log_index",
        "Index of the last Raft log entry.",
        raft.last_log_index.unwrap_or(0),
    )?;
    out.gauge(
        "vbs_raft_commit_index",
        "Highest committed Raft log index known here.",
        raft.commit_index.unwrap_or(0),
    )?;
    out.gauge(
        "vbs_raft_applied_index",
        "Highest Raft log index applied here.",
        raft.applied_index.unwrap_or(0),
    )?;
    out.gauges(
        "vbs_managers",
        "Manager replicas in the Raft membership, by role (learners are catching up).",
        [
            ([("role", "voter")], raft.voters),
            ([("role", "learner")], raft.learners),
        ],
    )?;

    let up = figures
        .nodes
        .iter()
        .filter(|(_, state, _)| *state == NodeState::Up)
        .count() as u64;
    out.gauges(
        "vbs_storage_nodes",
        "Storage nodes by status.",
        [
            ([("status", "up")], up),
            ([("status", "down")], figures.nodes.len() as u64 - up),
        ],
    )?;
    out.gauge(
        "vbs_storage_nodes_draining",
        "Storage nodes being drained.",
        figures.nodes.iter().filter(|(_, _, d)| *d).count() as u64,
    )?;
    out.gauges(
        "vbs_storage_node_up",
        "1 if the storage node is up, 0 if it is down.",
        figures.nodes.iter().map(|(id, state, _)| {
            (
                [("node", id.0.as_str())],
                u64::from(*state == NodeState::Up),
            )
        }),
    )?;

    out.gauges(
        "vbs_copies",
        "Copies of slices by update status.",
        figures
            .copies
            .iter()
            .map(|(status, count)| ([("status", status.as_str())], *count)),
    )?;
    out.gauge(
        "vbs_slices_degraded",
        "Slices with fewer current copies than their volume's replicas.",
        figures.slices_degraded,
    )?;
    out.gauge("vbs_volumes", "Volumes.", figures.volumes)?;

    out.gauges(
        "vbs_storage_devices_past_threshold",
        "Storage node devices past the managers' nearfull threshold (and not full), and past the \
         full one (leader only, 0 elsewhere).",
        [
            ([("threshold", "nearfull")], figures.devices_nearfull),
            ([("threshold", "full")], figures.devices_full),
        ],
    )?;
    out.gauge(
        "vbs_resyncs_running",
        "Resyncs under way, as reported to the leader (0 on other managers).",
        figures.running.count,
    )?;
    out.gauge(
        "vbs_resync_bytes_remaining",
        "Bytes the resyncs under way still have to copy, as last reported to the leader.",
        figures.running.bytes_remaining,
    )?;
    out.gauges(
        "vbs_resync_copy_bytes_done",
        "Bytes a resync under way has copied, per copy, as last reported to the leader \
         (absent on other managers).",
        figures
            .resyncs
            .iter()
            .map(|r| (copy_labels(r), r.bytes_done)),
    )?;
    out.gauges(
        "vbs_resync_copy_bytes_remaining",
        "Bytes a resync under way still has to copy, per copy, as last reported to the leader \
         (absent on other managers).",
        figures
            .resyncs
            .iter()
            .map(|r| (copy_labels(r), r.bytes_remaining)),
    )
}

fn copy_labels(resync: &CopyResync) -> [(&'static str, String); 3] {
    [
        ("volume", resync.volume.clone()),
        ("slice", resync.slice.to_string()),
        ("node", resync.node.0.clone()),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use vbs_wire::api::ResyncProgress;

    use super::*;
    use crate::state::fixtures::{cluster, node, volume_on};

    /// Every sample line belongs to the family announced just before it, every family has
    /// both its `# HELP` and its `# TYPE`, and no family appears twice.
    fn assert_well_formed(text: &str) {
        let mut seen = std::collections::BTreeSet::new();
        let mut family = String::new();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().expect("a name").to_string();
                assert!(seen.insert(family.clone()), "{family} twice:\n{text}");
                let typed = lines.next().expect("a TYPE line");
                assert_eq!(typed, format!("# TYPE {family} gauge"));
            } else {
                let name = line.split(['{', ' ']).next().expect("a name");
                assert_eq!(name, family, "sample outside its family:\n{text}");
                let value = line.rsplit(' ').next().expect("a value");
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
    }

    fn report(bytes_done: u64, bytes_total: u64, finished: bool) -> ResyncProgress {
        ResyncProgress {
            records_done: bytes_done / 4096,
            records_total: bytes_total / 4096,
            bytes_done,
            bytes_total,
            full: true,
            finished,
        }
    }

    #[test]
    fn a_resync_under_way_is_shown_per_copy_and_in_the_totals() {
        let mut state = cluster(&["n1", "n2", "n3"]);
        let id = volume_on(&mut state, "vol", &[&["n1", "n2"], &["n2", "n3"]]);
        let syncing = |state: &mut DbState, slice: usize, n: &str| {
            let volume = state.volumes.get_mut(&id).expect("volume");
            let copy = volume.slices[slice]
                .copy_mut(&node(n))
                .expect("a copy there");
            copy.status = CopyStatus::Syncing;
        };
        syncing(&mut state, 0, "n2");
        syncing(&mut state, 1, "n3");
        state.nodes.get_mut(&node("n3")).expect("n3").draining = true;
        let now = Instant::now();
        let mut tracker = ResyncTracker::default();
        let exists = |_: UnitId, _: &NodeId| true;
        tracker
            .record(
                UnitId::new(id.0, 0),
                &node("n2"),
                report(1 << 20, 4 << 20, false),
                CopyStatus::Syncing,
                now,
                exists,
            )
            .expect("recorded");
        // Finished: the copy is about to be current; not under way any more.
        tracker
            .record(
                UnitId::new(id.0, 1),
                &node("n3"),
                report(4 << 20, 4 << 20, true),
                CopyStatus::Syncing,
                now,
                exists,
            )
            .expect("recorded");
        let later = now + Duration::from_secs(1);
        let figures = StateFigures::of(&state, Some(&tracker), later);
        assert_eq!(
            figures.resyncs,
            [CopyResync {
                volume: "vol".into(),
                slice: SliceIndex(0),
                node: node("n2"),
                bytes_done: 1 << 20,
                bytes_remaining: 3 << 20,
            }]
        );
        assert_eq!(figures.running.count, figures.resyncs.len() as u64);
        assert_eq!(figures.running.bytes_remaining, 3 << 20);

        let text = metrics::render(move |out| write(out, &RaftFigures::default(), &figures));
        assert_well_formed(&text);
        for line in [
            "vbs_copies{status=\"current\"} 2",
            "vbs_copies{status=\"syncing\"} 2",
            "vbs_copies{status=\"down\"} 0",
            "vbs_storage_nodes{status=\"up\"} 3",
            "vbs_storage_nodes_draining 1",
            "vbs_storage_node_up{node=\"n3\"} 1",
            "vbs_volumes 1",
            "vbs_resyncs_running 1",
            "vbs_resync_bytes_remaining 3145728",
            "vbs_resync_copy_bytes_done{volume=\"vol\",slice=\"0\",node=\"n2\"} 1048576",
            "vbs_resync_copy_bytes_remaining{volume=\"vol\",slice=\"0\",node=\"n2\"} 3145728",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(!text.contains("node=\"n3\"} 4194304"), "{text}");
    }

    #[test]
    fn a_follower_shows_the_state_without_resyncs() {
        let mut state = cluster(&["n1", "n2"]);
        volume_on(&mut state, "vol", &[&["n1", "n2"]]);
        state.nodes.get_mut(&node("n2")).expect("n2").state = NodeState::Down;
        let figures = StateFigures::of(&state, None, Instant::now());
        let raft = RaftFigures {
            term: 7,
            leader: Some(2),
            voters: 3,
            ..RaftFigures::default()
        };
        let text = metrics::render(move |out| write(out, &raft, &figures));
        assert_well_formed(&text);
        for line in [
            "vbs_raft_term 7",
            "vbs_raft_is_leader 0",
            "vbs_raft_leader_id 2",
            "vbs_managers{role=\"voter\"} 3",
            "vbs_storage_nodes{status=\"down\"} 1",
            "vbs_storage_node_up{node=\"n2\"} 0",
            "vbs_resyncs_running 0",
            "# TYPE vbs_resync_copy_bytes_done gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
        }
        assert!(!text.contains("vbs_resync_copy_bytes_done{"), "{text}");
    }
}
