//! A volume as a compute node uses it: `read`, `write`, `trim`, `flush` at byte offsets, routed to
//! each slice's primary.
//!
//! # Layout
//! - `plan`: checking an operation and cutting it into per-slice requests of at most
//!   [`MAX_IO_BYTES`].
//! - `map`: the cached volume map and its coalesced refresh.
//! - `retry`: what each failure calls for (refresh, back off, report the primary, give up).
//! - `call`: the retry loop around one request, and reporting an unresponsive primary.
//! - `flight`: coalescing identical work in progress (one report for 32 failed requests).
//! - `error`: the typed [`ClientError`] callers branch on.
//!
//! Every method takes `&self` and holds no lock across an await, so N concurrent calls keep N
//! requests in flight on the pipelined connections of a shared [`Pool`].

mod call;
mod error;
mod flight;
mod map;
mod plan;
mod retry;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt, TryStreamExt};
use tokio::time::Instant;

use crate::api::{ErrorCode as ApiCode, VolumeMap};
use crate::conn::Pool;
use crate::managers::Managers;
use crate::proto::{
    ClientRequest, Extent, PeerKind, Request, Response, ScrubReport, MAX_EXTENTS_PER_FRAME,
    MAX_IO_BYTES,
};
use crate::types::{Generation, Lba, NodeId, SliceIndex, UnitId, Vba, VolumeId, BLOCK_BYTES};

pub use error::{ClientError, Op};
pub use map::MapError;
pub use plan::{Geometry, Part};
pub use retry::{classify, classify_code, Action, MAX_BACKOFF};

use flight::Flights;
use map::MapCache;
use retry::ReportOutcome;

/// Requests of one call in flight at once (a 64 MiB read is 64 requests): enough to keep every
/// slice's primary busy without queueing a whole large buffer's worth of frames at once.
const MAX_PARTS_IN_FLIGHT: usize = 64;
/// How long a scrub of one slice may take, retries included.
const SCRUB_DEADLINE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// A trim carries no data, so one request per slice.
const MAX_TRIM_PART_BYTES: u64 = u64::MAX - u64::MAX % BLOCK_BYTES;

/// How a [`Volume`] behaves; `VolumeOptions::default()` suits most callers.
#[derive(Clone)]
pub struct VolumeOptions {
    /// How long one request (and one connection attempt) may take before the primary is deemed
    /// unresponsive and reported to the managers.
    pub io_timeout: Duration,
    /// How long one operation keeps retrying before it fails with [`ClientError::GaveUp`].
    pub retry_deadline: Duration,
    /// The name this client gives storage nodes and managers (logs, notifications).
    pub client_name: String,
    /// A pool to share with other volumes; by default each volume opens its own.
    pub pool: Option<Arc<Pool>>,
}

impl Default for VolumeOptions {
    fn default() -> VolumeOptions {
        VolumeOptions {
            io_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(30),
            client_name: default_client_name(),
            pool: None,
        }
    }
}

impl std::fmt::Debug for VolumeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeOptions")
            .field("io_timeout", &self.io_timeout)
            .field("retry_deadline", &self.retry_deadline)
            .field("client_name", &self.client_name)
            .field("shared_pool", &self.pool.is_some())
            .finish()
    }
}

/// `client-HOSTNAME-PID`: unique per process, and says where a notification came from.
pub fn default_client_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("client-{host}-{}", std::process::id())
}

/// Which primary acknowledged one part of a write ([`Volume::write_acked`]), for audits and
/// fault-injection checkers: at most one primary of a slice acknowledges writes in a generation,
/// and no VBA of a slice is acknowledged for two different writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteAck {
    pub unit: UnitId,
    /// The part's first block, relative to the unit.
    pub lba: Lba,
    pub blocks: u64,
    pub primary: NodeId,
    /// The generation the primary served at.
    pub generation: Generation,
    /// The VBA of the part's first block; the part's other blocks have the VBAs that follow.
    pub first_vba: Vba,
}

/// An open volume. Cheap to share: wrap it in an `Arc` and call it from many tasks.
pub struct Volume {
    managers: Arc<Managers>,
    pool: Arc<Pool>,
    io_timeout: Duration,
    retry_deadline: Duration,
    client_name: String,
    map: MapCache,
    /// One report per slice and generation at a time, however many requests timed out.
    reports: Flights<(SliceIndex, Generation), ReportOutcome>,
    /// Slices written or trimmed since the last flush began: what `flush` must cover.
    dirty: Mutex<BTreeSet<SliceIndex>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Volume({:?}, id {})", self.map.name(), self.map.id())
    }
}

impl Volume {
    /// Looks the volume up on the managers and checks its map.
    pub async fn open(
        managers: Arc<Managers>,
        name: &str,
        options: VolumeOptions,
    ) -> Result<Volume, ClientError> {
        let map = managers.volume(name).await.map_err(|e| {
            if e.code() == Some(ApiCode::NotFound) {
                ClientError::VolumeNotFound { name: name.into() }
            } else {
                ClientError::Managers(e)
            }
        })?;
        let map = MapCache::new(map)?;
        let pool = options.pool.unwrap_or_else(|| {
            Arc::new(
                Pool::new(PeerKind::Client, &options.client_name, options.io_timeout)
                    .with_security(managers.security().clone()),
            )
        });
        Ok(Volume {
            managers,
            pool,
            io_timeout: options.io_timeout,
            retry_deadline: options.retry_deadline,
            client_name: options.client_name,
            map,
            reports: Flights::new(),
            dirty: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn name(&self) -> &str {
        self.map.name()
    }

    pub fn id(&self) -> VolumeId {
        self.map.id()
    }

    pub fn size_bytes(&self) -> u64 {
        self.map.geometry().size_bytes
    }

    pub fn geometry(&self) -> Geometry {
        self.map.geometry()
    }

    /// Asks the managers for the volume's map now: its size (it may have grown) and where its
    /// slices are served.
    pub async fn refresh_map(&self) -> Result<(), ClientError> {
        let seen = self.map.snapshot().version;
        self.map.refresh(&self.managers, seen).await.map(drop)
    }

    /// The volume map as last cached (refreshed when nodes say it is out of date).
    pub fn map(&self) -> Arc<VolumeMap> {
        self.map.snapshot().map.clone()
    }

    /// Reads `len` bytes at `offset`, both multiples of 4096. Blocks never written read as zeroes.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, ClientError> {
        let parts = self.plan(offset, len, MAX_IO_BYTES)?;
        let deadline = self.deadline();
        if let [part] = parts[..] {
            return self.read_part(part, deadline).await;
        }
        let size = usize::try_from(len).expect("the volume's size fits in memory addresses");
        let mut out = BytesMut::zeroed(size);
        let mut reads = stream::iter(parts)
            .map(|part| async move { (part, self.read_part(part, deadline).await) })
            .buffer_unordered(MAX_PARTS_IN_FLIGHT);
        while let Some((part, data)) = reads.next().await {
            let data = data?;
            let start = part.buf_offset as usize;
            out[start..start + data.len()].copy_from_slice(&data);
        }
        Ok(out.freeze())
    }

    /// Writes `data` (a multiple of 4096 bytes) at `offset`. Succeeds only when every part is
    /// acknowledged, that is durable on the primary and on every current copy of its slice; on
    /// error some parts may have been written and others not.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<(), ClientError> {
        self.write_keeping(offset, data, drop).await
    }

    /// [`Volume::write`], also saying which primary, at which generation and VBA, acknowledged
    /// each part (one per slice and [`MAX_IO_BYTES`]), in volume order. `write` costs nothing
    /// for this: the route that answered is at hand either way.
    pub async fn write_acked(
        &self,
        offset: u64,
        data: Bytes,
    ) -> Result<Vec<WriteAck>, ClientError> {
        let mut acks: Vec<WriteAck> = self.write_keeping(offset, data, |ack| ack).await?;
        acks.sort_by_key(|ack| (ack.unit.slice, ack.lba));
        Ok(acks)
    }

    /// A write whose parts' acknowledgements are turned into `T` by `keep` and collected.
    async fn write_keeping<T, C>(
        &self,
        offset: u64,
        data: Bytes,
        keep: fn(WriteAck) -> T,
    ) -> Result<C, ClientError>
    where
        C: Default + Extend<T>,
    {
        let parts = self.plan(offset, data.len() as u64, MAX_IO_BYTES)?;
        let deadline = self.deadline();
        self.run_parts(parts, |part| {
            let start = part.buf_offset as usize;
            let chunk = data.slice(start..start + part.len_bytes as usize);
            async move { self.write_part(part, chunk, deadline).await.map(keep) }
        })
        .await
    }

    /// Discards `len` bytes at `offset`: they read as zeroes afterwards.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let parts = self.plan(offset, len, MAX_TRIM_PART_BYTES)?;
        let deadline = self.deadline();
        self.run_parts(parts, |part| self.trim_part(part, deadline))
            .await
    }

    /// Which blocks of `len` bytes at `offset` hold data, as runs of one status from `offset` on
    /// (`false`: never written or trimmed, they read as zeroes), answered from the primaries'
    /// indexes without reading data. The runs cover the whole range, or a prefix of it when it
    /// has more than [`MAX_EXTENTS_PER_FRAME`] runs (ask again from where they end).
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>, ClientError> {
        let parts = self.plan(offset, len, MAX_TRIM_PART_BYTES)?;
        let deadline = self.deadline();
        let mut answers = stream::iter(parts)
            .map(|part| async move { (part, self.allocation_part(part, deadline).await) })
            .buffered(MAX_PARTS_IN_FLIGHT);
        let mut runs: Vec<Extent> = Vec::new();
        while let Some((part, extents)) = answers.next().await {
            let extents = extents?;
            let covered: u64 = extents.iter().map(|e| e.blocks).sum();
            for extent in extents {
                match runs.last_mut() {
                    Some(last) if last.allocated == extent.allocated => {
                        last.blocks += extent.blocks
                    }
                    _ => runs.push(extent),
                }
            }
            if covered < part.blocks() || runs.len() >= MAX_EXTENTS_PER_FRAME {
                break;
            }
        }
        Ok(runs)
    }

    /// A barrier: returns once every write and trim this `Volume` completed before the call is
    /// durable on every current copy and each primary involved still holds its lease. (An
    /// acknowledged write is already durable; the flush confirms no primary was deposed since.)
    pub async fn flush(&self) -> Result<(), ClientError> {
        let slices = std::mem::take(&mut *self.lock_dirty());
        let deadline = self.deadline();
        // Owned indexes: a closure over `&SliceIndex` would make this future not `Send` for
        // callers that spawn it (a limitation of how async closures over borrows are typed).
        let flushes: Vec<_> = slices
            .iter()
            .copied()
            .map(|slice| self.flush_slice(slice, deadline))
            .collect();
        let result = stream::iter(flushes)
            .buffer_unordered(MAX_PARTS_IN_FLIGHT)
            .try_collect::<()>()
            .await;
        if result.is_err() {
            // Whatever is unconfirmed stays owed to the next flush.
            self.lock_dirty().extend(slices);
        }
        result
    }

    fn plan(&self, offset: u64, len: u64, max_part_bytes: u64) -> Result<Vec<Part>, ClientError> {
        let geometry = self.map.geometry();
        geometry.check(self.map.name(), offset, len)?;
        Ok(geometry.split(offset, len, max_part_bytes))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.retry_deadline
    }

    fn lock_dirty(&self) -> std::sync::MutexGuard<'_, BTreeSet<SliceIndex>> {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `run` on every part, several at once, and collects what they return.
    async fn run_parts<T, C, F, Fut>(&self, parts: Vec<Part>, run: F) -> Result<C, ClientError>
    where
        C: Default + Extend<T>,
        F: Fn(Part) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        if let [part] = parts[..] {
            let mut out = C::default();
            out.extend([run(part).await?]);
            return Ok(out);
        }
        stream::iter(parts.into_iter().map(run))
            .buffer_unordered(MAX_PARTS_IN_FLIGHT)
            .try_collect::<C>()
            .await
    }

    async fn read_part(&self, part: Part, deadline: Instant) -> Result<Bytes, ClientError> {
        let blocks = u32::try_from(part.blocks()).expect("a part is at most MAX_IO_BYTES");
        self.call(
            Op::Read,
            part.slice,
            deadline,
            |route| {
                Request::Client(ClientRequest::Read {
                    unit: route.unit,
                    generation: route.generation,
                    lba: part.lba,
                    blocks,
                })
            },
            |response| match response {
                Response::Read { data } if data.len() as u64 == part.len_bytes => Ok(data),
                Response::Read { data } => Err(format!(
                    "{} bytes for a read of {}",
                    data.len(),
                    part.len_bytes
                )),
                other => Err(format!("{other:?} for a read")),
            },
        )
        .await
        .map(|(data, _)| data)
    }

    async fn write_part(
        &self,
        part: Part,
        data: Bytes,
        deadline: Instant,
    ) -> Result<WriteAck, ClientError> {
        let (first_vba, route) = self
            .call(
                Op::Write,
                part.slice,
                deadline,
                |route| {
                    Request::Client(ClientRequest::Write {
                        unit: route.unit,
                        generation: route.generation,
                        lba: part.lba,
                        data: data.clone(),
                    })
                },
                |response| match response {
                    Response::Write { first_vba } => Ok(first_vba),
                    other => Err(format!("{other:?} for a write")),
                },
            )
            .await?;
        self.lock_dirty().insert(part.slice);
        Ok(WriteAck {
            unit: route.unit,
            lba: part.lba,
            blocks: part.blocks(),
            primary: route.primary,
            generation: route.generation,
            first_vba,
        })
    }

    async fn trim_part(&self, part: Part, deadline: Instant) -> Result<(), ClientError> {
        self.call(
            Op::Trim,
            part.slice,
            deadline,
            |route| {
                Request::Client(ClientRequest::Trim {
                    unit: route.unit,
                    generation: route.generation,
                    lba: part.lba,
                    blocks: part.blocks(),
                })
            },
            |response| match response {
                Response::Trim { .. } => Ok(()),
                other => Err(format!("{other:?} for a trim")),
            },
        )
        .await?;
        self.lock_dirty().insert(part.slice);
        Ok(())
    }

    async fn allocation_part(
        &self,
        part: Part,
        deadline: Instant,
    ) -> Result<Vec<Extent>, ClientError> {
        self.call(
            Op::Allocation,
            part.slice,
            deadline,
            |route| {
                Request::Client(ClientRequest::Allocation {
                    unit: route.unit,
                    generation: route.generation,
                    lba: part.lba,
                    blocks: part.blocks(),
                })
            },
            |response| match response {
                Response::Allocation { extents } => {
                    let covered: u64 = extents.iter().map(|e| e.blocks).sum();
                    if covered == 0 || covered > part.blocks() {
                        Err(format!(
                            "an allocation map of {covered} blocks for {} blocks",
                            part.blocks()
                        ))
                    } else {
                        Ok(extents)
                    }
                }
                other => Err(format!("{other:?} for an allocation map")),
            },
        )
        .await
        .map(|(extents, _)| extents)
    }

    /// Scrubs slice `slice` on its primary: every current copy read back and checked, damage
    /// repaired, the copies compared (see [`ClientRequest::Scrub`]). Answers when done, which takes
    /// as long as the nodes' scrub rate says.
    pub async fn scrub(&self, slice: SliceIndex) -> Result<ScrubReport, ClientError> {
        self.call(
            Op::Scrub,
            slice,
            Instant::now() + SCRUB_DEADLINE,
            |route| {
                Request::Client(ClientRequest::Scrub {
                    unit: route.unit,
                    generation: route.generation,
                })
            },
            |response| match response {
                Response::Scrubbed(report) => Ok(report),
                other => Err(format!("{other:?} for a scrub")),
            },
        )
        .await
        .map(|(report, _)| report)
    }

    async fn flush_slice(&self, slice: SliceIndex, deadline: Instant) -> Result<(), ClientError> {
        self.call(
            Op::Flush,
            slice,
            deadline,
            |route| {
                Request::Client(ClientRequest::Flush {
                    unit: route.unit,
                    generation: route.generation,
                })
            },
            |response| match response {
                Response::Flush => Ok(()),
                other => Err(format!("{other:?} for a flush")),
            },
        )
        .await
        .map(drop)
    }
}
