//! Injecting the faults of a schedule into a running cluster, and healing them.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{bail, Context};
use std::collections::{BTreeMap, BTreeSet};
use vbs_wire::api::{ClusterStatus, CopyStatus, Role, SliceMap};

use storagenode::engine::backend::BlockFile;
use storagenode::engine::log::LOG_DIR;
use storagenode::engine::meta::{UnitMeta, UNIT_META};
use storagenode::engine::record::{Kind, HEADER_BYTES};
use storagenode::engine::segment::{read_header, scan, Found, Vsid};
use storagenode::engine::{Backend, FileBackend};
use vbs_wire::types::UnitId;
use vbs_wire::types::BLOCK_BYTES;

use super::netfilter::Netfilter;
use super::schedule::{FaultKind, Step};
use crate::Cluster;

/// How to undo an injected fault.
#[derive(Clone, Debug)]
pub enum Heal {
    RestartStorage(String),
    RestartManager(u64),
    ContinueStorage(String),
    ContinueManager(u64),
    Network,
}

/// The slices of `volume` in `status`.
pub fn slices<'a>(status: &'a ClusterStatus, volume: &str) -> anyhow::Result<&'a [SliceMap]> {
    status
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .map(|v| &v.slices[..])
        .with_context(|| format!("volume {volume} is not in the status"))
}

/// A storage node chosen by `pick`: the primary or a secondary of slice `pick % slices`.
fn pick_node(slices: &[SliceMap], pick: u64, role: Option<Role>) -> anyhow::Result<String> {
    let slice = &slices[(pick % slices.len() as u64) as usize];
    let rest = pick / slices.len() as u64;
    let role = role.unwrap_or(if rest % 2 == 0 {
        Role::Primary
    } else {
        Role::Secondary
    });
    if role == Role::Primary {
        return Ok(slice.primary.0.clone());
    }
    let secondaries: Vec<&str> = slice
        .copies
        .iter()
        .filter(|c| c.node != slice.primary)
        .map(|c| c.node.0.as_str())
        .collect();
    if secondaries.is_empty() {
        bail!("slice {} has no secondary", slice.unit);
    }
    Ok(secondaries[((rest / 2) % secondaries.len() as u64) as usize].to_string())
}

/// Injects `step`; returns what was done and how to undo it.
pub async fn inject(
    cluster: &mut Cluster,
    net: &mut Netfilter,
    volume: &str,
    step: &Step,
) -> anyhow::Result<(String, Heal)> {
    let status = cluster.status().await.context("reading the status")?;
    let slices = slices(&status, volume)?;
    let leader = status.leader.map(|l| l.0);
    let managers: Vec<IpAddr> = cluster
        .manager_ids()
        .into_iter()
        .map(|id| cluster.manager_ip(id))
        .collect();
    let pick = step.pick;
    Ok(match step.kind {
        FaultKind::KillPrimary | FaultKind::KillSecondary => {
            let role = if step.kind == FaultKind::KillPrimary {
                Role::Primary
            } else {
                Role::Secondary
            };
            let node = pick_node(slices, pick, Some(role))?;
            cluster.storage_node(&node)?.kill();
            (format!("killed {node}"), Heal::RestartStorage(node))
        }
        FaultKind::KillLeader => {
            let id = leader.context("no manager leader")?;
            cluster.kill_manager(id)?;
            (
                format!("killed manager-{id} (leader)"),
                Heal::RestartManager(id),
            )
        }
        FaultKind::KillFollower => {
            let followers: Vec<u64> = cluster
                .manager_ids()
                .into_iter()
                .filter(|id| Some(*id) != leader)
                .collect();
            let id = followers[(pick % followers.len() as u64) as usize];
            cluster.kill_manager(id)?;
            (
                format!("killed manager-{id} (follower)"),
                Heal::RestartManager(id),
            )
        }
        FaultKind::HangPrimary | FaultKind::HangSecondary => {
            let role = if step.kind == FaultKind::HangPrimary {
                Role::Primary
            } else {
                Role::Secondary
            };
            let node = pick_node(slices, pick, Some(role))?;
            cluster.storage_node(&node)?.signal(libc::SIGSTOP)?;
            (format!("stopped {node}"), Heal::ContinueStorage(node))
        }
        FaultKind::HangLeader => {
            let id = leader.context("no manager leader")?;
            cluster.manager(id)?.signal(libc::SIGSTOP)?;
            (
                format!("stopped manager-{id} (leader)"),
                Heal::ContinueManager(id),
            )
        }
        FaultKind::IsolateNode => {
            let node = pick_node(slices, pick, None)?;
            let mut rest = managers;
            rest.extend(
                cluster
                    .storage_names()
                    .iter()
                    .filter(|n| **n != node)
                    .map(|n| cluster.storage_ip(n)),
            );
            net.partition(&[cluster.storage_ip(&node)], &rest)?;
            (
                format!("cut {node} off from the other nodes and the managers"),
                Heal::Network,
            )
        }
        FaultKind::SplitPrimary => {
            let slice = &slices[(pick % slices.len() as u64) as usize];
            let primary = slice.primary.0.clone();
            let secondaries: Vec<String> = slice
                .copies
                .iter()
                .filter(|c| c.node != slice.primary)
                .map(|c| c.node.0.clone())
                .collect();
            let ips: Vec<IpAddr> = secondaries.iter().map(|n| cluster.storage_ip(n)).collect();
            net.partition(&[cluster.storage_ip(&primary)], &ips)?;
            (
                format!(
                    "cut {primary} (primary of {}) off from {}",
                    slice.unit,
                    secondaries.join(", ")
                ),
                Heal::Network,
            )
        }
        FaultKind::CutManagers => {
            let node = pick_node(slices, pick, None)?;
            net.partition(&[cluster.storage_ip(&node)], &managers)?;
            (format!("cut {node} off from the managers"), Heal::Network)
        }
        FaultKind::TornTail => {
            let node = pick_node(slices, pick, None)?;
            // The last batch may be synced and acknowledged: zeroing it stands for a disk that
            // lost acknowledged writes, which only another current copy can give back. Without
            // one, no design survives it: only records of units backed by a current copy on
            // another node are torn.
            let backed = backed_elsewhere(slices, &node);
            cluster.storage_node(&node)?.kill();
            // From here on the node is stopped: whatever tearing finds, it is restarted.
            let torn = tear_tail(&cluster.storage_data_dir(&node), &backed, pick)
                .unwrap_or_else(|e| format!("nothing torn: {e:#}"));
            (format!("killed {node}, {torn}"), Heal::RestartStorage(node))
        }
        FaultKind::BitRot => {
            let node = pick_node(slices, pick, None)?;
            // Only another current copy can give a damaged record back: only records of units
            // backed by one are damaged.
            let backed = backed_elsewhere(slices, &node);
            // A clean stop checkpoints the devices, so the node reads none of its log when it
            // starts again: the damage is found by reads and scrubs, as on a disk that rots.
            cluster
                .storage_node(&node)?
                .stop(std::time::Duration::from_secs(10));
            let rotted = rot(&cluster.storage_data_dir(&node), &backed, pick)
                .unwrap_or_else(|e| format!("nothing damaged: {e:#}"));
            (
                format!("stopped {node}, {rotted}"),
                Heal::RestartStorage(node),
            )
        }
    })
}

/// The units of `slices` with a current copy on another node than `node`.
fn backed_elsewhere(slices: &[SliceMap], node: &str) -> BTreeSet<UnitId> {
    slices
        .iter()
        .filter(|s| {
            s.copies
                .iter()
                .any(|c| c.node.0 != node && c.status == CopyStatus::Current)
        })
        .map(|s| s.unit)
        .collect()
}

/// Flips one bit of a live write record of a unit in `backed`, in the (stopped) storage node's
/// data directory `data_dir`: in its data, or in its header when `pick` is odd. A record is live
/// here when no record of the same unit with a higher VBA writes the same block. Says what it
/// damaged.
pub fn rot(data_dir: &Path, backed: &BTreeSet<UnitId>, pick: u64) -> anyhow::Result<String> {
    let backend = FileBackend::open(data_dir).context("opening the data directory")?;
    let units = unit_numbers(&backend)?;
    let mut found: Vec<(String, Found)> = Vec::new();
    for name in backend.list(LOG_DIR).context("listing the log")? {
        let Some(vsid) = Vsid::from_file_name(&name) else {
            continue;
        };
        let path = format!("{LOG_DIR}/{name}");
        let file = backend.open(&path)?;
        let header = match read_header(file.as_ref())? {
            Ok(header) if header.vsid == vsid => header,
            _ => continue,
        };
        let Ok(scan) = scan(file.as_ref(), header.nonce, vsid.is_log())? else {
            continue;
        };
        found.extend(scan.records.into_iter().map(|f| (path.clone(), f)));
    }
    let newest: BTreeMap<(u32, u64), u64> =
        found.iter().fold(BTreeMap::new(), |mut newest, (_, f)| {
            let h = f.header;
            let vba = newest.entry((h.unit, h.lba.0)).or_insert(0);
            *vba = (*vba).max(h.vba.0);
            newest
        });
    let live: Vec<&(String, Found)> = found
        .iter()
        .filter(|(_, f)| {
            let h = f.header;
            h.kind == Kind::Write
                && !f.damaged
                && units.get(&h.unit).is_some_and(|u| backed.contains(u))
                && newest.get(&(h.unit, h.lba.0)) == Some(&h.vba.0)
        })
        .collect();
    if live.is_empty() {
        bail!("no live record of a unit with another current copy");
    }
    let (path, record) = live[(pick % live.len() as u64) as usize];
    let offset = if pick % 2 == 1 {
        // The header's LBA field.
        record.offset + 40
    } else {
        record.offset + HEADER_BYTES as u64 + (pick / 2) % BLOCK_BYTES
    };
    let file = backend.open(path)?;
    let mut byte = [0u8; 1];
    file.read_at(&mut byte, offset)?;
    file.write_at(&[byte[0] ^ (1 << (pick % 8))], offset)?;
    file.sync()?;
    let unit = units
        .get(&record.header.unit)
        .map_or("?".into(), |u| u.to_string());
    Ok(format!(
        "flipped a bit at offset {offset} of {path}: unit {unit} VBA {} LBA {}",
        record.header.vba, record.header.lba
    ))
}

/// Undoes an injected fault.
pub fn heal(cluster: &mut Cluster, net: &mut Netfilter, heal: &Heal) -> anyhow::Result<()> {
    match heal {
        Heal::RestartStorage(node) => cluster.storage_node(node)?.restart(),
        Heal::RestartManager(id) => cluster.restart_manager(*id),
        Heal::ContinueStorage(node) => cluster.storage_node(node)?.signal(libc::SIGCONT),
        Heal::ContinueManager(id) => cluster.manager(*id)?.signal(libc::SIGCONT),
        Heal::Network => net.heal(),
    }
}

/// Zeroes the end of the last write batch of the device log in the (stopped) storage node's data
/// directory `data_dir`, from a point `pick` chooses among the batch's trailing records of units in
/// `backed`: what a crash in the middle of the batch's write could leave. The log ends in its
/// newest segment that holds records: a newer one may have been taken from the pool just before
/// the kill, its header never written, which recovery rightly drops. Says what it cut.
pub fn tear_tail(data_dir: &Path, backed: &BTreeSet<UnitId>, pick: u64) -> anyhow::Result<String> {
    let backend = FileBackend::open(data_dir).context("opening the data directory")?;
    let units = unit_numbers(&backend)?;
    let mut logs: Vec<Vsid> = backend
        .list(LOG_DIR)
        .with_context(|| format!("listing {LOG_DIR}"))?
        .into_iter()
        .filter_map(|name| Vsid::from_file_name(&name))
        .filter(|vsid| vsid.is_log())
        .collect();
    logs.sort_unstable_by(|a, b| b.cmp(a));
    for vsid in logs {
        let path = format!("{LOG_DIR}/{}", vsid.file_name());
        let file = backend.open(&path)?;
        // A segment taken from the pool whose header was never written holds zeroes there, or
        // the header of the segment it was before it was recycled.
        let header = match read_header(file.as_ref())? {
            Ok(header) if header.vsid == vsid => header,
            _ => continue,
        };
        let found = scan(file.as_ref(), header.nonce, true)?
            .map_err(|c| anyhow::anyhow!("{path} is corrupt at {}: {}", c.offset, c.reason))?;
        let Some(last) = found.records.last() else {
            continue;
        };
        let batch = last.header.batch_start;
        let unit_of = |f: &Found| units.get(&f.header.unit).copied();
        let tearable = found
            .records
            .iter()
            .rev()
            .take_while(|f| {
                f.header.batch_start == batch && unit_of(f).is_some_and(|u| backed.contains(&u))
            })
            .last();
        let Some(first) = tearable else {
            let whose = unit_of(last).map_or("a removed unit".into(), |u| u.to_string());
            return Ok(format!(
                "nothing torn: the log's last record is of {whose}, which has no other current copy"
            ));
        };
        let torn: BTreeSet<String> = found
            .records
            .iter()
            .filter(|f| f.offset >= first.offset)
            .filter_map(|f| unit_of(f).map(|u| u.to_string()))
            .collect();
        let what = tear(file.as_ref(), &path, first, last, found.end, pick)?;
        return Ok(format!(
            "{what}: records of {}",
            torn.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(format!("{LOG_DIR} holds no record yet: nothing torn"))
}

/// The units of a data directory by their number on the device.
fn unit_numbers(backend: &FileBackend) -> anyhow::Result<BTreeMap<u32, UnitId>> {
    let mut units = BTreeMap::new();
    for name in backend.list("units").context("listing units")? {
        let path = format!("units/{name}/{UNIT_META}");
        let Ok(bytes) = backend.read_all(&path) else {
            continue;
        };
        let meta: UnitMeta =
            serde_json::from_slice(&bytes).with_context(|| format!("reading {path}"))?;
        units.insert(meta.number, meta.unit);
    }
    Ok(units)
}

/// Zeroes `path` from a point `pick` chooses between the start of `first` and `end`.
fn tear(
    file: &dyn BlockFile,
    path: &str,
    first: &Found,
    last: &Found,
    end: u64,
    pick: u64,
) -> anyhow::Result<String> {
    let batch = first.offset;
    let cut = batch + pick % (end - batch);
    let zeroes = vec![0u8; (end - cut) as usize];
    file.write_at(&zeroes, cut)?;
    file.sync()?;
    Ok(format!(
        "zeroed bytes {cut}..{end} of {path} (tearable from {batch}, last VBA {})",
        last.header.vba
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use storagenode::engine::{Device, DeviceOptions, Op};
    use vbs_wire::types::{Generation, Lba, UnitId, BLOCK_BYTES};

    use super::*;

    /// A device log whose newest segment was taken from the pool but never written (its header
    /// is zeroes, as after a kill at that moment): the tear lands in the segment before it.
    #[test]
    fn a_torn_tail_skips_a_segment_whose_header_was_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let unit = UnitId::new(1, 1);
        {
            let backend = Arc::new(FileBackend::open(dir.path()).unwrap());
            let options = DeviceOptions {
                segment_bytes: 64 << 10,
                spare_segments: 1,
                sync: true,
            };
            let (device, _) = Device::open(backend, &options).unwrap();
            let unit = device.create_unit(unit, 1 << 20).unwrap();
            for lba in 0..20 {
                let data = Bytes::from(vec![lba as u8 + 1; BLOCK_BYTES as usize]);
                unit.append(
                    Generation(1),
                    vec![Op::Write {
                        lba: Lba(lba),
                        data,
                    }],
                )
                .unwrap();
            }
        }
        let log = dir.path().join(LOG_DIR);
        let newest = std::fs::read_dir(&log)
            .unwrap()
            .filter_map(|e| Vsid::from_file_name(e.unwrap().file_name().to_str()?))
            .filter(|v| v.is_log())
            .max()
            .unwrap();
        let unwritten = Vsid(newest.0 + 1);
        std::fs::write(log.join(unwritten.file_name()), vec![0u8; 64 << 10]).unwrap();

        let torn = tear_tail(dir.path(), &BTreeSet::from([unit]), 7).unwrap();
        assert!(torn.contains(&newest.file_name()), "{torn}");
        assert!(torn.contains("last VBA 20"), "{torn}");
        assert!(torn.contains("records of 1.1"), "{torn}");
        // A unit with no other current copy is never torn.
        let spared = tear_tail(dir.path(), &BTreeSet::new(), 7).unwrap();
        assert!(spared.starts_with("nothing torn"), "{spared}");
    }
}
