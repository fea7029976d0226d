//! `vbs volume create|list|show|resize|delete|accept-loss`.

use anyhow::Context;
use client::api::{
    AcceptLossRequest, CopyStatus, CreateVolumeRequest, Role, VolumeFilter, VolumeList, VolumeMap,
};
use client::managers::Managers;
use client::types::{NodeId, Vba};

use super::format;
use super::status::{copy_status, volumes_table};
use super::table::Table;

#[derive(Debug, clap::Subcommand)]
pub enum VolumeCommand {
    /// Create a volume; its slices are placed on distinct storage nodes
    Create {
        /// Volume name
        #[arg(value_parser = super::volume_name)]
        name: String,
        /// Size of the volume, a multiple of 4k (e.g. 10G)
        #[arg(long, value_parser = super::size)]
        size: u64,
        /// Copies of each slice [default: 3]
        #[arg(long)]
        replicas: Option<u32>,
        /// Size of each slice, a multiple of 4k [default: 1G]
        #[arg(long, value_parser = super::size)]
        slice_size: Option<u64>,
    },
    /// List volumes
    List {
        /// Only volumes with a copy of this status (`not-current`: any copy not current;
        /// `current`: every copy current)
        #[arg(long, value_parser = volume_filter)]
        status: Option<VolumeFilter>,
        /// Print the volumes as JSON (`GET /v1/volumes`, every page in one list)
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's slices and where every copy is
    Show {
        /// Volume name
        #[arg(value_parser = super::volume_name)]
        name: String,
        /// Print the volume map as JSON
        #[arg(long)]
        json: bool,
    },
    /// Grow a volume, while it is in use (volumes never shrink)
    Resize {
        /// Volume name
        #[arg(value_parser = super::volume_name)]
        name: String,
        /// The new size, a multiple of 4k, at least the volume's size (e.g. 20G)
        #[arg(long, value_parser = super::size)]
        size: u64,
        /// Print the volume map as JSON
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and every copy of its data
    Delete {
        /// Volume name
        #[arg(value_parser = super::volume_name)]
        name: String,
    },
    /// Make a slice that has no current copy serve again from one of its copies, as that copy
    /// is: what no copy holds any more is lost for good
    AcceptLoss {
        /// Volume name
        #[arg(value_parser = super::volume_name)]
        name: String,
        /// The slice's index (`vbs volume show NAME` lists them)
        #[arg(long)]
        slice: u32,
        /// The node whose copy serves [default: the copy on an up node with the highest VBA]
        #[arg(long)]
        node: Option<String>,
        /// Required: says that the writes the copy no longer holds are given up
        #[arg(long)]
        yes_i_accept_data_loss: bool,
    },
}

pub async fn run(managers: &Managers, command: VolumeCommand) -> anyhow::Result<()> {
    match command {
        VolumeCommand::Create {
            name,
            size,
            replicas,
            slice_size,
        } => {
            let request = CreateVolumeRequest {
                name: name.clone(),
                size_bytes: size,
                replicas,
                slice_bytes: slice_size,
            };
            let map = managers
                .create_volume(&request)
                .await
                .with_context(|| format!("creating volume {name:?}"))?;
            print!("{}", render(&map));
        }
        VolumeCommand::List { status, json } => {
            let volumes = managers.volumes_where(status).await?;
            if json {
                let list = VolumeList {
                    volumes,
                    next: None,
                };
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if volumes.is_empty() {
                println!("no volumes");
            } else {
                print!("{}", volumes_table(&volumes).render());
            }
        }
        VolumeCommand::Show { name, json } => {
            let map = managers.volume(&name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else {
                print!("{}", render(&map));
            }
        }
        VolumeCommand::Resize { name, size, json } => {
            let map = managers
                .resize_volume(&name, size)
                .await
                .with_context(|| format!("resizing volume {name:?} to {}", format::size(size)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&map)?);
            } else {
                print!("{}", render(&map));
            }
        }
        VolumeCommand::Delete { name } => {
            let map = managers
                .delete_volume(&name)
                .await
                .with_context(|| format!("deleting volume {name:?}"))?;
            println!("deleted volume {} (id {})", map.name, map.id);
        }
        VolumeCommand::AcceptLoss {
            name,
            slice,
            node,
            yes_i_accept_data_loss,
        } => {
            let node = node
                .map(|n| NodeId::parse(&n).map_err(anyhow::Error::msg))
                .transpose()?;
            if !yes_i_accept_data_loss {
                anyhow::bail!(
                    "accepting the loss of slice {slice} of {name:?} gives up for good the writes \
                     no copy holds any more; run again with --yes-i-accept-data-loss to do it"
                );
            }
            let request = AcceptLossRequest {
                node,
                confirm: true,
            };
            let map = managers
                .accept_loss(&name, slice, &request)
                .await
                .with_context(|| format!("accepting the loss of slice {slice} of {name:?}"))?;
            let serving = map.slices.get(slice as usize);
            if let Some(serving) = serving {
                let vba = serving
                    .copies
                    .iter()
                    .find(|c| c.node == serving.primary)
                    .map_or(Vba::ZERO, |c| c.last_vba);
                println!(
                    "slice {slice} of {name} serves again from {}, ending at VBA {vba}, generation {}",
                    serving.primary, serving.generation
                );
            }
        }
    }
    Ok(())
}

/// How many copies are in each status, e.g. `5 current, 1 stale`.
pub fn copies_summary(volume: &VolumeMap) -> String {
    CopyStatus::ALL
        .iter()
        .filter_map(|status| {
            let count = volume
                .slices
                .iter()
                .flat_map(|slice| &slice.copies)
                .filter(|copy| copy.status == *status)
                .count();
            (count > 0).then(|| format!("{count} {}", status.as_str()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A summary line, then one row per copy of every slice.
pub fn render(map: &VolumeMap) -> String {
    let mut out = format!(
        "volume {} (id {}): {} in {} slice{} of {}, {} replicas, copies {}\n\n",
        map.name,
        map.id,
        format::size(map.size_bytes),
        map.slices.len(),
        if map.slices.len() == 1 { "" } else { "s" },
        format::size(map.slice_bytes),
        map.replicas,
        copies_summary(map),
    );
    let mut table = Table::new(&[
        "SLICE",
        "UNIT",
        "GENERATION",
        "NODE",
        "ADDRESS",
        "ROLE",
        "STATUS",
        "LAST VBA",
    ]);
    for slice in &map.slices {
        for (i, copy) in slice.copies.iter().enumerate() {
            let first = i == 0;
            let cell = |text: String| if first { text } else { String::new() };
            table.row(vec![
                cell(slice.index.to_string()),
                cell(slice.unit.to_string()),
                cell(slice.generation.to_string()),
                copy.node.to_string(),
                copy.addr.clone(),
                match copy.role {
                    Role::Primary => "primary".into(),
                    Role::Secondary => "secondary".into(),
                },
                copy_status(copy),
                copy.latest_vba().to_string(),
            ]);
        }
    }
    out.push_str(&table.render());
    out
}

/// A `--status` that names no status.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a status; use current, not-current, stale, syncing or down")]
pub struct FilterError(String);

/// Parses `--status`: `current`, `not-current`, `stale`, `syncing` or `down`.
fn volume_filter(text: &str) -> Result<VolumeFilter, FilterError> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| FilterError(text.to_string()))
}

#[cfg(test)]
mod tests {
    use client::api::{CopyInfo, SliceMap};
    use client::types::{Generation, NodeId, SliceIndex, UnitId, Vba, VolumeId};

    use super::*;

    #[test]
    fn a_volume_shows_one_row_per_copy() {
        let copy = |node: &str, role, status| CopyInfo {
            node: NodeId(node.into()),
            addr: format!("{node}:7100"),
            role,
            status,
            last_vba: Vba(7),
            reported_vba: None,
            resync: None,
            scrub: None,
        };
        let map = VolumeMap {
            id: VolumeId(3),
            name: "logs".into(),
            size_bytes: 4 << 20,
            block_bytes: 4096,
            slice_bytes: 4 << 20,
            replicas: 2,
            slices: vec![SliceMap {
                unit: UnitId::new(3, 0),
                index: SliceIndex(0),
                generation: Generation(2),
                primary: NodeId("n2".into()),
                copies: vec![
                    copy("n2", Role::Primary, CopyStatus::Current),
                    copy("n1", Role::Secondary, CopyStatus::Down),
                ],
            }],
        };
        assert_eq!(
            render(&map),
            "\
volume logs (id 3): 4M in 1 slice of 4M, 2 replicas, copies 1 current, 1 down

SLICE  UNIT  GENERATION  NODE  ADDRESS  ROLE       STATUS   LAST VBA
0      3.0   2           n2    n2:7100  primary    current  7
                         n1    n1:7100  secondary  down     7
"
        );
    }
}
