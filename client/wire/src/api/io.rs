//! Client IO and device space as storage nodes report them in heartbeats, and the IO history the
//! leader keeps from those reports (`GET /v1/io`), which the dashboard charts.

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, VolumeId};

/// Upper bounds of the IO latency buckets, in microseconds; one overflow bucket follows.
pub const IO_LATENCY_BUCKETS_US: [u64; 12] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 500_000, 1_000_000,
];

/// Client IO one node served as primary of a volume's slices since the node started: running
/// totals, so a lost heartbeat loses nothing and a restart shows as totals going down.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeIo {
    pub volume: VolumeId,
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Successful reads and writes per latency bucket: one per bound of
    /// [`IO_LATENCY_BUCKETS_US`], then the overflow bucket.
    pub latency: Vec<u64>,
}

/// One data directory of a storage node and its filesystem's space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpace {
    pub dir: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

impl DeviceSpace {
    /// The share of the filesystem in use, from 0 to 1.
    pub fn used_ratio(&self) -> f64 {
        if self.total_bytes == 0 {
            return 0.0;
        }
        self.total_bytes.saturating_sub(self.free_bytes) as f64 / self.total_bytes as f64
    }
}

/// When the managers call a device's filesystem nearly full (they warn) and full (its node takes
/// no new copies), in percent of it in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceThresholds {
    pub nearfull_percent: u8,
    pub full_percent: u8,
}

impl Default for SpaceThresholds {
    fn default() -> SpaceThresholds {
        SpaceThresholds {
            nearfull_percent: 85,
            full_percent: 95,
        }
    }
}

impl SpaceThresholds {
    pub fn is_nearfull(&self, device: &DeviceSpace) -> bool {
        device.used_ratio() * 100.0 >= f64::from(self.nearfull_percent)
    }

    pub fn is_full(&self, device: &DeviceSpace) -> bool {
        device.used_ratio() * 100.0 >= f64::from(self.full_percent)
    }

    /// Whether every one of a node's devices is past the full threshold (a node that reported
    /// none is not).
    pub fn node_is_full(&self, devices: &[DeviceSpace]) -> bool {
        !devices.is_empty() && devices.iter().all(|d| self.is_full(d))
    }
}

/// The IO of one step of the history: rates over the step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoPoint {
    /// Start of the step, in milliseconds since the Unix epoch.
    pub t_ms: u64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    /// 99th percentile latency of the step's successful requests, in microseconds
    /// (interpolated within its bucket); absent when none completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<u64>,
}

/// The steps of one storage node or volume that saw IO, oldest first; steps without IO are left
/// out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoSeries {
    /// The node's id, or the volume's name.
    pub name: String,
    pub points: Vec<IoPoint>,
}

/// `GET /v1/io[?volume=NAME]`: the leader's IO history. It starts empty when a manager becomes
/// leader; nodes and volumes without IO in the window are not listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IoHistory {
    pub step_ms: u64,
    /// The window the history covers, ending now.
    pub window_ms: u64,
    /// The leader's clock when it answered, in milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub nodes: Vec<IoSeries>,
    pub volumes: Vec<IoSeries>,
}

/// Who a history series belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoSource {
    Node(NodeId),
    Volume(VolumeId),
}
