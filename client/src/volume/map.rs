//! The cached volume map: each slice's generation and primary, refreshed from the managers when a
//! storage node says the cache is out of date.
//!
//! Refreshes are coalesced: every failure carries the version of the map it was routed by, and a
//! refresh asked for with a version that has already been replaced returns the newer map without
//! asking the managers again. So 32 requests that fail together cost one `GET`, not 32.
//!
//! A slice's entry never moves back to an older generation: an answer that was overtaken by a
//! failover (a slow `GET` racing a notification's reply) cannot undo it. The volume may grow
//! (`vbs volume resize`): a refresh takes in its new size and slices; it never shrinks.

use std::sync::{Arc, RwLock};

use crate::api::{ErrorCode, Role, SliceMap, VolumeMap, MAX_SLICES_PER_VOLUME};
use crate::managers::Managers;
use crate::types::{Generation, NodeId, SliceIndex, UnitId, VolumeId, BLOCK_BYTES};

use super::error::ClientError;
use super::plan::Geometry;

/// Where requests for one slice go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub unit: UnitId,
    pub generation: Generation,
    pub primary: NodeId,
    /// The primary's data-plane address.
    pub addr: String,
}

/// One version of the map, with a route for every slice.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every refresh and every merge, whether or not anything changed.
    pub version: u64,
    pub map: Arc<VolumeMap>,
    pub geometry: Geometry,
    routes: Vec<Route>,
}

impl Snapshot {
    /// The route of `slice`, which must be inside the volume (plans only make such slices).
    pub fn route(&self, slice: SliceIndex) -> &Route {
        &self.routes[slice.0 as usize]
    }
}

pub struct MapCache {
    name: String,
    id: VolumeId,
    current: RwLock<Arc<Snapshot>>,
    /// Held while asking the managers, so that refreshes queue behind one another and find the
    /// map already refreshed.
    refreshing: tokio::sync::Mutex<()>,
}

impl MapCache {
    /// A cache starting from `map`, checked first.
    pub fn new(map: VolumeMap) -> Result<MapCache, ClientError> {
        let invalid = |reason| ClientError::InvalidMap {
            volume: map.name.clone(),
            reason,
        };
        let geometry = geometry(&map).map_err(invalid)?;
        let routes = routes(&map).map_err(invalid)?;
        Ok(MapCache {
            name: map.name.clone(),
            id: map.id,
            current: RwLock::new(Arc::new(Snapshot {
                version: 0,
                map: Arc::new(map),
                geometry,
                routes,
            })),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> VolumeId {
        self.id
    }

    /// The volume's shape as last learned (it only grows).
    pub fn geometry(&self) -> Geometry {
        self.snapshot().geometry
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A map newer than version `seen`: the managers' answer, or a refresh that finished while
    /// this one waited its turn.
    pub async fn refresh(
        &self,
        managers: &Managers,
        seen: u64,
    ) -> Result<Arc<Snapshot>, ClientError> {
        let _refreshing = self.refreshing.lock().await;
        let current = self.snapshot();
        if current.version > seen {
            return Ok(current);
        }
        let fresh = managers.volume(&self.name).await.map_err(|e| {
            if e.code() == Some(ErrorCode::NotFound) {
                self.deleted()
            } else {
                ClientError::Managers(e)
            }
        })?;
        if fresh.id != self.id {
            return Err(self.deleted());
        }
        let known = current.geometry;
        let reason = match geometry(&fresh) {
            Ok(geometry)
                if geometry.slice_bytes == known.slice_bytes
                    && geometry.size_bytes >= known.size_bytes =>
            {
                return self.install(fresh.slices, Some((fresh.size_bytes, geometry)));
            }
            Ok(geometry) => MapError::Reshaped {
                from: known,
                to: geometry,
            },
            Err(reason) => reason,
        };
        Err(ClientError::InvalidMap {
            volume: self.name.clone(),
            reason,
        })
    }

    /// Takes in slices the managers sent with another answer (a notification's reply).
    pub fn merge(&self, slices: Vec<SliceMap>) -> Result<Arc<Snapshot>, ClientError> {
        self.install(slices, None)
    }

    fn deleted(&self) -> ClientError {
        ClientError::VolumeDeleted {
            name: self.name.clone(),
            id: self.id.0,
        }
    }

    /// Makes a new snapshot from the current one and `slices`, keeping for each slice whichever
    /// has the newer generation (the incoming one on a tie: copy statuses change without a new
    /// generation). With `grown`, the volume's new size and shape: the slices past the old end
    /// are taken as they come.
    fn install(
        &self,
        slices: Vec<SliceMap>,
        grown: Option<(u64, Geometry)>,
    ) -> Result<Arc<Snapshot>, ClientError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut map = VolumeMap::clone(&current.map);
        let mut geometry = current.geometry;
        if let Some((size_bytes, grown)) = grown.filter(|(size, _)| *size > map.size_bytes) {
            map.size_bytes = size_bytes;
            geometry = grown;
            let known = map.slices.len();
            map.slices.extend(slices.iter().skip(known).cloned());
        }
        for slice in slices {
            let Some(old) = map.slices.get_mut(slice.index.0 as usize) else {
                continue;
            };
            if slice.unit == old.unit && slice.generation >= old.generation {
                *old = slice;
            }
        }
        let routes = routes(&map).map_err(|reason| ClientError::InvalidMap {
            volume: self.name.clone(),
            reason,
        })?;
        if map.slices.len() as u64 != geometry.slice_count() {
            return Err(ClientError::InvalidMap {
                volume: self.name.clone(),
                reason: MapError::SliceCountForSize {
                    listed: map.slices.len(),
                    size_bytes: geometry.size_bytes,
                },
            });
        }
        let snapshot = Arc::new(Snapshot {
            version: current.version + 1,
            map: Arc::new(map),
            geometry,
            routes,
        });
        *current = snapshot.clone();
        Ok(snapshot)
    }
}

/// How a volume map contradicts itself, or the map this client already had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("block size {0} is not the {BLOCK_BYTES} bytes this client speaks")]
    BlockSize(u64),
    #[error("size {0} is not a positive multiple of {BLOCK_BYTES}")]
    Size(u64),
    #[error("slice size {0} is not a positive multiple of {BLOCK_BYTES}")]
    SliceSize(u64),
    #[error("{listed} slices listed for {expected} slices of {slice_bytes} bytes")]
    SliceCount {
        listed: usize,
        expected: u64,
        slice_bytes: u64,
    },
    #[error("{listed} slices listed for a volume of {size_bytes} bytes")]
    SliceCountForSize { listed: usize, size_bytes: u64 },
    #[error("slice {index} is listed as slice {listed} (unit {unit})")]
    Misplaced {
        index: usize,
        listed: SliceIndex,
        unit: UnitId,
    },
    #[error("slice {index}: primary {primary} is not among its copies")]
    PrimaryWithoutCopy { index: usize, primary: NodeId },
    #[error(
        "the volume went from {} bytes in slices of {} to {} bytes in slices of {}",
        from.size_bytes, from.slice_bytes, to.size_bytes, to.slice_bytes
    )]
    Reshaped { from: Geometry, to: Geometry },
}

/// The volume's shape, if the map's numbers are consistent.
fn geometry(map: &VolumeMap) -> Result<Geometry, MapError> {
    if map.block_bytes != BLOCK_BYTES {
        return Err(MapError::BlockSize(map.block_bytes));
    }
    if map.size_bytes == 0 || map.size_bytes % BLOCK_BYTES != 0 {
        return Err(MapError::Size(map.size_bytes));
    }
    if map.slice_bytes == 0 || map.slice_bytes % BLOCK_BYTES != 0 {
        return Err(MapError::SliceSize(map.slice_bytes));
    }
    let geometry = Geometry {
        size_bytes: map.size_bytes,
        slice_bytes: map.slice_bytes,
    };
    let expected = geometry.slice_count();
    if expected > MAX_SLICES_PER_VOLUME || map.slices.len() as u64 != expected {
        return Err(MapError::SliceCount {
            listed: map.slices.len(),
            expected,
            slice_bytes: map.slice_bytes,
        });
    }
    Ok(geometry)
}

/// A route for every slice, in slice order.
fn routes(map: &VolumeMap) -> Result<Vec<Route>, MapError> {
    map.slices
        .iter()
        .enumerate()
        .map(|(index, slice)| {
            let unit = UnitId {
                volume: map.id,
                slice: SliceIndex(index as u32),
            };
            if slice.index.0 as usize != index || slice.unit != unit {
                return Err(MapError::Misplaced {
                    index,
                    listed: slice.index,
                    unit: slice.unit,
                });
            }
            let primary = slice
                .copies
                .iter()
                .find(|copy| copy.node == slice.primary)
                .or_else(|| slice.copies.iter().find(|copy| copy.role == Role::Primary))
                .ok_or_else(|| MapError::PrimaryWithoutCopy {
                    index,
                    primary: slice.primary.clone(),
                })?;
            Ok(Route {
                unit,
                generation: slice.generation,
                primary: primary.node.clone(),
                addr: primary.addr.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{CopyInfo, CopyStatus};
    use crate::types::Vba;

    pub fn copy(node: &str, role: Role) -> CopyInfo {
        CopyInfo {
            node: NodeId(node.into()),
            addr: format!("{node}:7100"),
            role,
            status: CopyStatus::Current,
            last_vba: Vba::ZERO,
            reported_vba: None,
            resync: None,
            scrub: None,
        }
    }

    pub fn slice(volume: u64, index: u32, generation: u64, primary: &str) -> SliceMap {
        let other = if primary == "n1" { "n2" } else { "n1" };
        SliceMap {
            unit: UnitId::new(volume, index),
            index: SliceIndex(index),
            generation: Generation(generation),
            primary: NodeId(primary.into()),
            copies: vec![copy(primary, Role::Primary), copy(other, Role::Secondary)],
        }
    }

    /// Volume 7, "v": 10 MiB in slices of 4 MiB, every primary on n1 at generation 1.
    pub fn volume_map() -> VolumeMap {
        VolumeMap {
            id: VolumeId(7),
            name: "v".into(),
            size_bytes: 10 << 20,
            block_bytes: BLOCK_BYTES,
            slice_bytes: 4 << 20,
            replicas: 2,
            slices: (0..3).map(|i| slice(7, i, 1, "n1")).collect(),
        }
    }

    #[test]
    fn routes_point_at_each_slice_primary() {
        let cache = MapCache::new(volume_map()).expect("valid map");
        let snapshot = cache.snapshot();
        let route = snapshot.route(SliceIndex(2));
        assert_eq!(route.unit, UnitId::new(7, 2));
        assert_eq!(route.primary, NodeId("n1".into()));
        assert_eq!(route.addr, "n1:7100");
        assert_eq!(route.generation, Generation(1));
    }

    #[test]
    fn inconsistent_maps_are_refused() {
        let mut map = volume_map();
        map.slices.pop();
        assert!(matches!(
            MapCache::new(map),
            Err(ClientError::InvalidMap { .. })
        ));

        let mut map = volume_map();
        map.slices[1].copies.retain(|c| c.role != Role::Primary);
        let error = MapCache::new(map).err().expect("no primary copy");
        assert!(error.to_string().contains("primary n1"), "{error}");

        let mut map = volume_map();
        map.block_bytes = 512;
        assert!(MapCache::new(map).is_err());

        let mut map = volume_map();
        map.slices.swap(0, 1);
        assert!(MapCache::new(map).is_err());
    }

    #[test]
    fn a_grown_volume_gets_its_new_slices_and_size() {
        let cache = MapCache::new(volume_map()).expect("valid map");
        // 10 MiB grew to 16 MiB: the last slice is whole now and a fourth one follows.
        let mut grown = volume_map();
        grown.size_bytes = 16 << 20;
        grown.slices.push(slice(7, 3, 1, "n2"));
        let shape = geometry(&grown).expect("valid");
        let snapshot = cache
            .install(grown.slices.clone(), Some((grown.size_bytes, shape)))
            .expect("valid");
        assert_eq!(snapshot.geometry.size_bytes, 16 << 20);
        assert_eq!(cache.geometry().slice_count(), 4);
        assert_eq!(snapshot.route(SliceIndex(3)).primary, NodeId("n2".into()));
        // An answer from before the growth does not shrink it back.
        let old = volume_map();
        let old_shape = geometry(&old).unwrap();
        let snapshot = cache
            .install(old.slices, Some((old.size_bytes, old_shape)))
            .expect("valid");
        assert_eq!(snapshot.geometry.size_bytes, 16 << 20);
        // A grown size without its slices is refused.
        let mut short = grown.clone();
        short.size_bytes = 32 << 20;
        let error = cache
            .install(
                short.slices,
                Some((
                    short.size_bytes,
                    Geometry {
                        size_bytes: 32 << 20,
                        slice_bytes: 4 << 20,
                    },
                )),
            )
            .expect_err("slices missing");
        assert!(error.to_string().contains("4 slices listed"), "{error}");
    }

    #[test]
    fn merges_keep_the_newest_generation_of_each_slice() {
        let cache = MapCache::new(volume_map()).expect("valid map");
        let merged = cache
            .merge(vec![slice(7, 1, 2, "n2")])
            .expect("valid slices");
        assert_eq!(merged.version, 1);
        assert_eq!(merged.route(SliceIndex(1)).primary, NodeId("n2".into()));
        assert_eq!(merged.route(SliceIndex(1)).addr, "n2:7100");
        assert_eq!(merged.route(SliceIndex(0)).primary, NodeId("n1".into()));

        // An older answer arriving late does not undo the failover.
        let late = cache
            .merge(vec![slice(7, 1, 1, "n1")])
            .expect("valid slices");
        assert_eq!(late.version, 2);
        assert_eq!(late.route(SliceIndex(1)).generation, Generation(2));
        assert_eq!(late.route(SliceIndex(1)).primary, NodeId("n2".into()));

        // Slices of other volumes, or beyond this one, are ignored.
        let other = cache
            .merge(vec![slice(8, 0, 9, "n2"), slice(7, 5, 9, "n2")])
            .expect("ignored");
        assert_eq!(other.route(SliceIndex(0)).generation, Generation(1));
    }
}
