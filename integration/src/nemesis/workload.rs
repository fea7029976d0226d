//! The clients: each its own [`Volume`] (its own map cache and connections, like separate compute
//! nodes), writing and reading random runs of blocks one operation at a time until told to stop,
//! recording everything in the [`History`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use client::managers::Managers;
use client::types::BLOCK_BYTES;
use client::volume::{ClientError, Volume, VolumeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::history::{decode_block, payload, History, Outcome, ReadEvent, WriteEvent, WriteId};

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub clients: u32,
    /// How many of the clients only read (the last ones): a reader keeps its volume map until a
    /// read fails, so it is the first to see a deposed primary that still serves.
    pub readers: u32,
    /// Percent of a writing client's operations that are writes.
    pub write_percent: u32,
    pub max_write_blocks: u64,
    pub max_read_blocks: u64,
    pub io_timeout: Duration,
    pub retry_deadline: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> WorkloadOptions {
        WorkloadOptions {
            clients: 4,
            readers: 1,
            write_percent: 60,
            max_write_blocks: 4,
            max_read_blocks: 8,
            io_timeout: Duration::from_secs(1),
            retry_deadline: Duration::from_secs(20),
        }
    }
}

fn outcome<T>(result: Result<T, ClientError>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Ok(value),
        Err(e) if e.is_invalid_request() => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// Opens the volume as a new client.
pub async fn open(
    managers: &str,
    volume: &str,
    name: String,
    options: &WorkloadOptions,
) -> anyhow::Result<Arc<Volume>> {
    let managers =
        Arc::new(Managers::parse(managers, Duration::from_secs(5)).map_err(anyhow::Error::msg)?);
    let volume_options = VolumeOptions {
        io_timeout: options.io_timeout,
        retry_deadline: options.retry_deadline,
        client_name: name,
        pool: None,
    };
    Ok(Arc::new(
        Volume::open(managers, volume, volume_options).await?,
    ))
}

/// Running clients.
pub struct Workload {
    stop: Arc<AtomicBool>,
    /// Operations completed so far, all clients.
    pub done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// Starts `options.clients` clients on `volumes` (one each); client `i` draws its operations
    /// from `seed` and `i`.
    pub fn start(
        volumes: Vec<Arc<Volume>>,
        history: Arc<History>,
        seed: u64,
        options: &WorkloadOptions,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = volumes
            .into_iter()
            .enumerate()
            .map(|(i, volume)| {
                let client = i as u32 + 1;
                let rng = StdRng::seed_from_u64(seed ^ (u64::from(client) << 32));
                let write_percent = if client + options.readers > options.clients {
                    0
                } else {
                    options.write_percent
                };
                tokio::spawn(run_client(
                    client,
                    volume,
                    history.clone(),
                    rng,
                    Mix {
                        write_percent,
                        max_write_blocks: options.max_write_blocks,
                        max_read_blocks: options.max_read_blocks,
                    },
                    stop.clone(),
                    done.clone(),
                ))
            })
            .collect();
        Workload { stop, done, tasks }
    }

    /// Stops the clients after their current operation and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            // A client task that panicked has recorded what it did before; nothing to add.
            let _ = task.await;
        }
    }
}

/// A reading client's pause between reads, so that it does not take the CPU from the writers
/// (a think time, as a compute node's).
const READER_PAUSE: Duration = Duration::from_millis(2);

/// What one client does.
struct Mix {
    write_percent: u32,
    max_write_blocks: u64,
    max_read_blocks: u64,
}

async fn run_client(
    client: u32,
    volume: Arc<Volume>,
    history: Arc<History>,
    mut rng: StdRng,
    options: Mix,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let volume_blocks = volume.size_bytes() / BLOCK_BYTES;
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        if rng.random_range(0..100) < options.write_percent {
            seq += 1;
            let id = WriteId { client, seq };
            let blocks = rng.random_range(1..=options.max_write_blocks);
            let first = rng.random_range(0..=volume_blocks - blocks);
            let data = payload(first, blocks, id);
            let start_us = history.now_us();
            let result = volume.write_acked(first * BLOCK_BYTES, data).await;
            history.record_write(WriteEvent {
                id,
                first_block: first,
                blocks,
                start_us,
                end_us: history.now_us(),
                outcome: outcome(result),
            });
        } else {
            let blocks = rng.random_range(1..=options.max_read_blocks);
            let first = rng.random_range(0..=volume_blocks - blocks);
            read(&volume, &history, client, first, blocks, false).await;
            if options.write_percent == 0 {
                tokio::time::sleep(READER_PAUSE).await;
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads `blocks` blocks from `first` and records what each held; returns whether it succeeded.
pub async fn read(
    volume: &Volume,
    history: &History,
    client: u32,
    first: u64,
    blocks: u64,
    is_final: bool,
) -> bool {
    let start_us = history.now_us();
    let result = volume
        .read(first * BLOCK_BYTES, blocks * BLOCK_BYTES)
        .await
        .map(|data| {
            data.chunks(BLOCK_BYTES as usize)
                .enumerate()
                .map(|(i, block)| decode_block(first + i as u64, block))
                .collect::<Vec<_>>()
        });
    let ok = result.is_ok();
    history.record_read(ReadEvent {
        client,
        first_block: first,
        start_us,
        end_us: history.now_us(),
        outcome: outcome(result),
        is_final,
    });
    ok
}
