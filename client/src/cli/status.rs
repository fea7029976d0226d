//! `vbs status`: the cluster at a glance (its numbers, managers, nodes, and what needs
//! attention); `--all` adds every volume and slice.

use client::api::{
    ClusterStatus, CopyInfo, CopyStatus, NodeState, NodeStatus, StatusCounts, VolumeFilter,
    VolumeMap,
};
use client::managers::Managers;

use super::format;
use super::table::Table;
use super::volume::copies_summary;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Every volume and slice too, not only those that need attention
    #[arg(long)]
    all: bool,
    /// Print the `GET /v1/status` body as JSON instead of tables
    #[arg(long)]
    json: bool,
}

/// Slices listed under NEEDS ATTENTION; past that, a count and where to see the rest.
const ATTENTION_ROWS: usize = 50;

pub async fn run(managers: &Managers, args: StatusArgs) -> anyhow::Result<()> {
    if args.json {
        let status = managers.status().await?;
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else if args.all {
        print!("{}", render(&managers.status().await?));
    } else {
        let status = managers.status_summary().await?;
        let attention = if status.counts.copies.not_current() > 0 {
            managers
                .volumes_where(Some(VolumeFilter::NotCurrent))
                .await?
        } else {
            Vec::new()
        };
        print!("{}", render_summary(&status, &attention));
    }
    Ok(())
}

/// The cluster's numbers, its managers and nodes, and the slices with a copy not `current`
/// (`attention`: the volumes that have one).
pub fn render_summary(status: &ClusterStatus, attention: &[VolumeMap]) -> String {
    let mut out = counts(&status.counts);
    out.push('\n');
    out.push_str(&managers_section(status));
    out.push_str("\nSTORAGE NODES\n");
    out.push_str(&or_none(&nodes_table(&status.nodes)));
    out.push_str("\nNEEDS ATTENTION\n");
    let down: Vec<&NodeStatus> = status
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Down)
        .collect();
    for node in &down {
        out.push_str(&format!(
            "storage node {} is down ({} units)\n",
            node.id,
            node.units.len()
        ));
    }
    let space = status.space;
    let mut devices = 0;
    for node in &status.nodes {
        for device in &node.devices {
            let used = (device.used_ratio() * 100.0).floor();
            let (dir, id) = (&device.dir, &node.id);
            if space.is_full(device) {
                out.push_str(&format!(
                    "storage node {id}: device {dir} is {used}% full, past the full threshold \
                     ({}%): once all its devices are, the node takes no new copies\n",
                    space.full_percent
                ));
            } else if space.is_nearfull(device) {
                out.push_str(&format!(
                    "storage node {id}: device {dir} is {used}% full, past the nearfull \
                     threshold ({}%)\n",
                    space.nearfull_percent
                ));
            } else {
                continue;
            }
            devices += 1;
        }
    }
    let mut slices = slices_table();
    let mut more = 0;
    for volume in attention {
        for slice in &volume.slices {
            if slice.copies.iter().all(|c| c.status == CopyStatus::Current) {
                continue;
            }
            if slices.len() == ATTENTION_ROWS {
                more += 1;
                continue;
            }
            slice_row(&mut slices, volume, slice);
        }
    }
    let scrubs = status.counts.slices_scrub_problems;
    if scrubs > 0 {
        out.push_str(&format!(
            "{scrubs} slices: their last scrub found damage it could not repair or copies that \
             disagree (vbs status --all; the storage nodes' logs)\n"
        ));
    }
    if slices.is_empty() && down.is_empty() && scrubs == 0 && devices == 0 {
        out.push_str("nothing: every node is up and every copy is current\n");
    } else if !slices.is_empty() {
        out.push_str(&slices.render());
    }
    if more > 0 {
        out.push_str(&format!(
            "... and {more} more slices (vbs volume list --status not-current; vbs status --all)\n"
        ));
    }
    let resyncs = resyncs_table(attention, true);
    if !resyncs.is_empty() {
        out.push_str("\nRESYNCS RUNNING\n");
        out.push_str(&resyncs.render());
    }
    out
}

/// The first lines of `vbs status`: the cluster in numbers.
fn counts(counts: &StatusCounts) -> String {
    let c = counts.copies;
    let mut copies = format!("{} current", c.current);
    for (n, what) in [(c.syncing, "syncing"), (c.stale, "stale"), (c.down, "down")] {
        if n > 0 {
            copies.push_str(&format!(", {n} {what}"));
        }
    }
    let n = counts.nodes;
    let mut nodes = format!("{} up", n.up);
    if n.down > 0 {
        nodes.push_str(&format!(", {} down", n.down));
    }
    if n.draining > 0 {
        nodes.push_str(&format!(", {} draining", n.draining));
    }
    let mut slices = format!("{} slices", counts.slices);
    if counts.slices_degraded > 0 {
        slices.push_str(&format!(
            ", {} with fewer current copies than their replicas",
            counts.slices_degraded
        ));
    }
    format!(
        "CLUSTER\nstorage nodes  {}: {nodes}\nvolumes        {} ({slices})\ncopies         {}: {copies}\nresyncs        {} running\n",
        n.up + n.down,
        counts.volumes,
        c.current + c.not_current(),
        counts.resyncs_running,
    )
}

fn managers_section(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let leader = status
        .leader
        .map_or("no leader".to_string(), |id| format!("leader {id}"));
    out.push_str(&format!(
        "MANAGERS ({leader}, term {}, answered by {})\n",
        status.term, status.answered_by
    ));
    let mut managers = Table::new(&["ID", "ADDRESS", "ROLE"]);
    for manager in &status.managers {
        let role = if Some(manager.id) == status.leader {
            "leader"
        } else if manager.voter {
            "follower"
        } else {
            "learner"
        };
        managers.row(vec![
            manager.id.to_string(),
            manager.addr.clone(),
            role.into(),
        ]);
    }
    out.push_str(&managers.render());
    out
}

fn slices_table() -> Table {
    Table::new(&["VOLUME", "SLICE", "UNIT", "GENERATION", "PRIMARY", "COPIES"])
}

fn slice_row(table: &mut Table, volume: &VolumeMap, slice: &client::api::SliceMap) {
    table.row(vec![
        volume.name.clone(),
        slice.index.to_string(),
        slice.unit.to_string(),
        slice.generation.to_string(),
        slice.primary.to_string(),
        slice
            .copies
            .iter()
            .map(|copy| format!("{} {}", copy.node, copy_status(copy)))
            .collect::<Vec<_>>()
            .join(", "),
    ]);
}

/// `vbs status --all`: every section, every volume and slice.
pub fn render(status: &ClusterStatus) -> String {
    let mut out = managers_section(status);

    out.push_str("\nSTORAGE NODES\n");
    out.push_str(&or_none(&nodes_table(&status.nodes)));

    out.push_str("\nVOLUMES\n");
    out.push_str(&or_none(&volumes_table(&status.volumes)));

    out.push_str("\nSLICES\n");
    let mut slices = slices_table();
    for volume in &status.volumes {
        for slice in &volume.slices {
            slice_row(&mut slices, volume, slice);
        }
    }
    out.push_str(&or_none(&slices));
    let resyncs = resyncs_table(&status.volumes, false);
    if !resyncs.is_empty() {
        out.push_str("\nRESYNCS\n");
        out.push_str(&resyncs.render());
    }
    out
}

/// One row per storage node.
pub fn nodes_table(nodes: &[NodeStatus]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "ADDRESS",
        "STATE",
        "CAPACITY",
        "FREE",
        "UNITS",
        "HEARTBEAT",
    ]);
    for node in nodes {
        let state = match node.state {
            NodeState::Up => "up",
            NodeState::Down => "down",
        };
        table.row(vec![
            node.id.to_string(),
            node.addr.clone(),
            if node.draining && node.units.is_empty() {
                format!("{state}, drained")
            } else if node.draining {
                format!("{state}, draining")
            } else {
                state.into()
            },
            format::size(node.capacity_bytes),
            format::size(node.free_bytes),
            node.units.len().to_string(),
            node.last_heartbeat_ms_ago
                .map_or("-".into(), |ms| format!("{} ago", format::age_ms(ms))),
        ]);
    }
    table
}

/// A copy's status, with its resync's progress while one runs: `syncing 45%`.
pub fn copy_status(copy: &CopyInfo) -> String {
    match copy.resync {
        Some(resync) if copy.resync_running() => {
            format!(
                "{} {}",
                copy.status.as_str(),
                format::percent(&resync.progress)
            )
        }
        _ => copy.status.as_str().into(),
    }
}

/// One row per copy with a resync report: the resyncs under way, and (unless `running_only`)
/// the last one of copies that are current again.
fn resyncs_table(volumes: &[VolumeMap], running_only: bool) -> Table {
    let mut table = Table::new(&[
        "VOLUME", "SLICE", "NODE", "STATUS", "KIND", "PROGRESS", "RECORDS", "BYTES", "RATE", "ETA",
        "ELAPSED",
    ]);
    for volume in volumes {
        for slice in &volume.slices {
            for copy in &slice.copies {
                let Some(resync) = copy.resync else { continue };
                let p = resync.progress;
                let running = copy.resync_running();
                if running_only && !running {
                    continue;
                }
                table.row(vec![
                    volume.name.clone(),
                    slice.index.to_string(),
                    copy.node.to_string(),
                    copy.status.as_str().into(),
                    if p.full { "full" } else { "incremental" }.into(),
                    if p.finished {
                        "done".into()
                    } else {
                        format::percent(&p)
                    },
                    format!("{}/{}", p.records_done, p.records_total),
                    format!(
                        "{}/{}",
                        format::size(p.bytes_done),
                        format::size(p.bytes_total)
                    ),
                    format!("{}/s", format::size(resync.bytes_per_sec)),
                    match resync.eta_secs {
                        Some(secs) if running => format::age_ms(secs.saturating_mul(1000)),
                        _ => "-".into(),
                    },
                    format::age_ms(resync.elapsed_ms),
                ]);
            }
        }
    }
    table
}

/// One row per volume, with a one-word health of its copies.
pub fn volumes_table(volumes: &[VolumeMap]) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "ID",
        "SIZE",
        "SLICE SIZE",
        "SLICES",
        "REPLICAS",
        "COPIES",
        "LAST SCRUB",
    ]);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for volume in volumes {
        table.row(vec![
            volume.name.clone(),
            volume.id.to_string(),
            format::size(volume.size_bytes),
            format::size(volume.slice_bytes),
            volume.slices.len().to_string(),
            volume.replicas.to_string(),
            copies_summary(volume),
            scrub_summary(volume, now_ms),
        ]);
    }
    table
}

/// When every slice of `volume` was last scrubbed (the oldest), and what those scrubs found:
/// `never`, `5h ago`, `5h ago, 2 repaired`, `3d ago, 1 NOT REPAIRED`, `2h ago (1 slice never)`.
pub fn scrub_summary(volume: &VolumeMap, now_ms: u64) -> String {
    let scrubs: Vec<_> = volume.slices.iter().map(|s| s.last_scrub()).collect();
    let done: Vec<_> = scrubs.iter().flatten().collect();
    let Some(oldest) = done.iter().map(|s| s.finished_unix_ms).min() else {
        return "never".into();
    };
    let mut out = format::ago(now_ms.saturating_sub(oldest));
    let never = scrubs.len() - done.len();
    if never > 0 {
        out.push_str(&format!(" ({never} slices never)"));
    }
    let repaired: u64 = done.iter().map(|s| s.repaired).sum();
    let unmended: u64 = done
        .iter()
        .map(|s| s.damaged.saturating_sub(s.repaired) + s.mismatched)
        .sum();
    if repaired > 0 {
        out.push_str(&format!(", {repaired} repaired"));
    }
    if unmended > 0 {
        out.push_str(&format!(", {unmended} NOT REPAIRED"));
    }
    out
}

fn or_none(table: &Table) -> String {
    if table.is_empty() {
        "(none)\n".into()
    } else {
        table.render()
    }
}

#[cfg(test)]
mod tests {
    use client::api::{ManagerStatus, Role, ScrubStatus, SliceMap, StatusCounts};
    use client::types::{Generation, ManagerId, NodeId, SliceIndex, UnitId, Vba, VolumeId};

    use super::*;

    fn copy(node: &str, role: Role, status: CopyStatus) -> CopyInfo {
        CopyInfo {
            node: NodeId(node.into()),
            addr: format!("127.0.0.1:710{}", &node[1..]),
            role,
            status,
            last_vba: Vba(12),
            reported_vba: None,
            resync: None,
            scrub: None,
        }
    }

    pub fn cluster() -> ClusterStatus {
        let mut status = ClusterStatus {
            answered_by: ManagerId(2),
            leader: Some(ManagerId(1)),
            term: 4,
            applied_index: 99,
            space: Default::default(),
            managers: (1..=3)
                .map(|id| ManagerStatus {
                    id: ManagerId(id),
                    addr: format!("127.0.0.1:700{id}"),
                    voter: id != 3,
                })
                .collect(),
            nodes: vec![NodeStatus {
                id: NodeId("n1".into()),
                addr: "127.0.0.1:7101".into(),
                state: NodeState::Up,
                capacity_bytes: 10 << 30,
                free_bytes: 9 << 30,
                last_heartbeat_ms_ago: Some(420),
                units: vec![UnitId::new(1, 0)],
                draining: false,
                devices: Vec::new(),
                device_ids: Vec::new(),
                unknown_devices: Vec::new(),
            }],
            volumes: vec![VolumeMap {
                id: VolumeId(1),
                name: "db".into(),
                size_bytes: 2 << 30,
                block_bytes: 4096,
                slice_bytes: 1 << 30,
                replicas: 2,
                slices: (0..2)
                    .map(|i| SliceMap {
                        unit: UnitId::new(1, i),
                        index: SliceIndex(i),
                        generation: Generation(1 + i as u64),
                        primary: NodeId("n1".into()),
                        copies: vec![
                            copy("n1", Role::Primary, CopyStatus::Current),
                            copy(
                                "n2",
                                Role::Secondary,
                                if i == 1 {
                                    CopyStatus::Stale
                                } else {
                                    CopyStatus::Current
                                },
                            ),
                        ],
                    })
                    .collect(),
            }],
            counts: StatusCounts::default(),
        };
        status.counts = StatusCounts::of(&status.nodes, &status.volumes);
        status
    }

    #[test]
    fn the_summary_gives_the_numbers_and_only_what_needs_attention() {
        let status = cluster();
        let text = render_summary(&status, &status.volumes);
        let expected = "\
CLUSTER
storage nodes  1: 1 up
volumes        1 (2 slices, 1 with fewer current copies than their replicas)
copies         4: 3 current, 1 stale
resyncs        0 running

MANAGERS (leader 1, term 4, answered by 2)
ID  ADDRESS         ROLE
1   127.0.0.1:7001  leader
2   127.0.0.1:7002  follower
3   127.0.0.1:7003  learner

STORAGE NODES
ID  ADDRESS         STATE  CAPACITY  FREE  UNITS  HEARTBEAT
n1  127.0.0.1:7101  up     10G       9G    1      420ms ago

NEEDS ATTENTION
VOLUME  SLICE  UNIT  GENERATION  PRIMARY  COPIES
db      1      1.1   2           n1       n1 current, n2 stale
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_healthy_cluster_needs_nothing_and_a_down_node_is_named() {
        let mut status = cluster();
        status.volumes[0].slices[1].copies[1].status = CopyStatus::Current;
        status.counts = StatusCounts::of(&status.nodes, &status.volumes);
        let text = render_summary(&status, &[]);
        assert!(
            text.ends_with(
                "NEEDS ATTENTION\nnothing: every node is up and every copy is current\n"
            ),
            "{text}"
        );
        status.nodes[0].state = NodeState::Down;
        status.counts = StatusCounts::of(&status.nodes, &status.volumes);
        let text = render_summary(&status, &[]);
        assert!(text.contains("storage nodes  1: 0 up, 1 down\n"), "{text}");
        assert!(
            text.ends_with("NEEDS ATTENTION\nstorage node n1 is down (1 units)\n"),
            "{text}"
        );
    }

    #[test]
    fn devices_past_the_space_thresholds_need_attention() {
        let mut status = cluster();
        let device = |dir: &str, free_bytes| client::api::DeviceSpace {
            dir: dir.into(),
            total_bytes: 1000,
            free_bytes,
        };
        status.nodes[0].devices = vec![device("/d0", 500), device("/d1", 120), device("/d2", 30)];
        let text = render_summary(&status, &[]);
        assert!(
            text.ends_with(
                "NEEDS ATTENTION\n\
                 storage node n1: device /d1 is 88% full, past the nearfull threshold (85%)\n\
                 storage node n1: device /d2 is 97% full, past the full threshold (95%): once all \
                 its devices are, the node takes no new copies\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_long_attention_list_is_cut_with_where_to_see_the_rest() {
        let status = cluster();
        let mut volumes = Vec::new();
        for i in 0..60 {
            let mut volume = status.volumes[0].clone();
            volume.name = format!("v{i:02}");
            volumes.push(volume);
        }
        let text = render_summary(&status, &volumes);
        assert!(text.contains("v49     1"), "{text}");
        assert!(!text.contains("v50"), "{text}");
        assert!(
            text.contains(
                "... and 10 more slices (vbs volume list --status not-current; vbs status --all)"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_renders_every_section_aligned() {
        let text = render(&cluster());
        let expected = "\
MANAGERS (leader 1, term 4, answered by 2)
ID  ADDRESS         ROLE
1   127.0.0.1:7001  leader
2   127.0.0.1:7002  follower
3   127.0.0.1:7003  learner

STORAGE NODES
ID  ADDRESS         STATE  CAPACITY  FREE  UNITS  HEARTBEAT
n1  127.0.0.1:7101  up     10G       9G    1      420ms ago

VOLUMES
NAME  ID  SIZE  SLICE SIZE  SLICES  REPLICAS  COPIES              LAST SCRUB
db    1   2G    1G          2       2         3 current, 1 stale  never

SLICES
VOLUME  SLICE  UNIT  GENERATION  PRIMARY  COPIES
db      0      1.0   1           n1       n1 current, n2 current
db      1      1.1   2           n1       n1 current, n2 stale
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_volumes_last_scrub_is_its_oldest_slices_with_what_was_found() {
        let mut status = cluster();
        let volume = &mut status.volumes[0];
        let day = 86_400_000;
        let now = 10 * day;
        let scrub = |finished_unix_ms, repaired, damaged| ScrubStatus {
            finished_unix_ms,
            records: 100,
            bytes: 416_000,
            damaged,
            repaired,
            mismatched: 0,
        };
        assert_eq!(scrub_summary(volume, now), "never");
        volume.slices[0].copies[0].scrub = Some(scrub(now - 2 * 3_600_000, 0, 0));
        assert_eq!(scrub_summary(volume, now), "2h ago (1 slices never)");
        // The newest scrub of a slice counts, whichever copy ran it.
        volume.slices[1].copies[0].scrub = Some(scrub(now - 3 * day, 2, 3));
        volume.slices[1].copies[1].scrub = Some(scrub(now - 4 * day, 0, 0));
        assert_eq!(
            scrub_summary(volume, now),
            "3d ago, 2 repaired, 1 NOT REPAIRED"
        );
        let counts = StatusCounts::of(&status.nodes, &status.volumes);
        assert_eq!(counts.slices_scrub_problems, 1);
    }

    #[test]
    fn an_empty_cluster_says_none() {
        let mut status = cluster();
        status.nodes.clear();
        status.volumes.clear();
        status.leader = None;
        let text = render(&status);
        assert!(text.starts_with("MANAGERS (no leader,"), "{text}");
        assert!(text.contains("STORAGE NODES\n(none)\n"), "{text}");
        assert!(text.contains("VOLUMES\n(none)\n"), "{text}");
    }
}

#[cfg(test)]
mod resync_tests {
    use client::api::{ResyncProgress, ResyncStatus};

    use super::tests::cluster;
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn resyncs_and_drains_show_with_rate_and_time_left() {
        let mut status = cluster();
        status.nodes[0].draining = true;
        let running = ResyncStatus {
            progress: ResyncProgress {
                records_done: 300,
                records_total: 700,
                bytes_done: 12 * MIB,
                bytes_total: 28 * MIB,
                full: false,
                finished: false,
            },
            bytes_per_sec: 8 * MIB,
            eta_secs: Some(2),
            elapsed_ms: 1500,
        };
        let slices = &mut status.volumes[0].slices;
        slices[1].copies[1].status = CopyStatus::Syncing;
        slices[1].copies[1].resync = Some(running);
        // The last resync of a copy that is current again stays visible, as done.
        slices[0].copies[1].resync = Some(ResyncStatus {
            progress: ResyncProgress {
                records_done: 700,
                records_total: 700,
                bytes_done: 28 * MIB,
                bytes_total: 28 * MIB,
                full: true,
                finished: true,
            },
            eta_secs: None,
            ..running
        });
        let text = render(&status);
        assert!(
            text.contains("n1  127.0.0.1:7101  up, draining  10G"),
            "{text}"
        );
        assert!(text.contains("n1 current, n2 syncing 42%"), "{text}");
        assert!(text.contains("n1 current, n2 current\n"), "{text}");
        let resyncs = text.split("RESYNCS\n").nth(1).expect("a resync section");
        assert_eq!(
            resyncs,
            "\
VOLUME  SLICE  NODE  STATUS   KIND         PROGRESS  RECORDS  BYTES    RATE  ETA   ELAPSED
db      0      n2    current  full         done      700/700  28M/28M  8M/s  -     1.5s
db      1      n2    syncing  incremental  42%       300/700  12M/28M  8M/s  2.0s  1.5s
"
        );
        status.nodes[0].units.clear();
        assert!(render(&status).contains("up, drained"));
    }

    #[test]
    fn without_resync_reports_there_is_no_resync_section() {
        assert!(!render(&cluster()).contains("RESYNCS"));
    }
}
