//! `vbs status`: the whole cluster at a glance.

use client::api::{ClusterStatus, NodeState, VolumeMap};
use client::managers::Managers;

use super::format;
use super::table::Table;
use super::volume::copies_summary;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the `GET /v1/status` body as JSON instead of tables
    #[arg(long)]
    json: bool,
}

pub async fn run(managers: &Managers, args: StatusArgs) -> anyhow::Result<()> {
    let status = managers.status().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

pub fn render(status: &ClusterStatus) -> String {
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

    out.push_str("\nSTORAGE NODES\n");
    let mut nodes = Table::new(&[
        "ID",
        "ADDRESS",
        "STATE",
        "CAPACITY",
        "FREE",
        "UNITS",
        "HEARTBEAT",
    ]);
    for node in &status.nodes {
        nodes.row(vec![
            node.id.to_string(),
            node.addr.clone(),
            match node.state {
                NodeState::Up => "up".into(),
                NodeState::Down => "down".into(),
            },
            format::size(node.capacity_bytes),
            format::size(node.free_bytes),
            node.units.len().to_string(),
            node.last_heartbeat_ms_ago
                .map_or("-".into(), |ms| format!("{} ago", format::age_ms(ms))),
        ]);
    }
    out.push_str(&or_none(&nodes));

    out.push_str("\nVOLUMES\n");
    out.push_str(&or_none(&volumes_table(&status.volumes)));

    out.push_str("\nSLICES\n");
    let mut slices = Table::new(&["VOLUME", "SLICE", "UNIT", "GENERATION", "PRIMARY", "COPIES"]);
    for volume in &status.volumes {
        for slice in &volume.slices {
            slices.row(vec![
                volume.name.clone(),
                slice.index.to_string(),
                slice.unit.to_string(),
                slice.generation.to_string(),
                slice.primary.to_string(),
                slice
                    .copies
                    .iter()
                    .map(|copy| format!("{} {}", copy.node, copy.status.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
    }
    out.push_str(&or_none(&slices));
    out
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
    ]);
    for volume in volumes {
        table.row(vec![
            volume.name.clone(),
            volume.id.to_string(),
            format::size(volume.size_bytes),
            format::size(volume.slice_bytes),
            volume.slices.len().to_string(),
            volume.replicas.to_string(),
            copies_summary(volume),
        ]);
    }
    table
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
    use client::api::{CopyInfo, CopyStatus, ManagerStatus, NodeStatus, Role, SliceMap};
    use client::types::{Generation, ManagerId, NodeId, SliceIndex, UnitId, Vba, VolumeId};

    use super::*;

    fn copy(node: &str, role: Role, status: CopyStatus) -> CopyInfo {
        CopyInfo {
            node: NodeId(node.into()),
            addr: format!("127.0.0.1:710{}", &node[1..]),
            role,
            status,
            last_vba: Vba(12),
        }
    }

    pub fn cluster() -> ClusterStatus {
        ClusterStatus {
            answered_by: ManagerId(2),
            leader: Some(ManagerId(1)),
            term: 4,
            applied_index: 99,
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
        }
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
NAME  ID  SIZE  SLICE SIZE  SLICES  REPLICAS  COPIES
db    1   2G    1G          2       2         3 current, 1 stale

SLICES
VOLUME  SLICE  UNIT  GENERATION  PRIMARY  COPIES
db      0      1.0   1           n1       n1 current, n2 current
db      1      1.1   2           n1       n1 current, n2 stale
";
        assert_eq!(text, expected);
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
