//! The clients: each its own [`Volume`] (its own map cache and connections, like separate compute
//! nodes), or an NBD connection through the gateway with libnbd ([`NbdClient`]), writing and
//! reading random runs of blocks one operation at a time until told to stop, recording
//! everything in the [`History`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::volume::{ClientError, Volume, VolumeOptions, WriteAck};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vbs_wire::managers::Managers;
use vbs_wire::types::BLOCK_BYTES;

use super::history::{decode_block, payload, History, Outcome, ReadEvent, WriteEvent, WriteId};
use super::nbd::NbdClient;

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
    /// Clients besides `clients` that go through the NBD gateway (writers, like the others).
    pub nbd_clients: u32,
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
            nbd_clients: 1,
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

/// How one client reaches the volume.
pub enum Client {
    Volume(Arc<Volume>),
    Nbd(Box<NbdClient>),
}

impl Client {
    pub fn size_bytes(&self) -> u64 {
        match self {
            Client::Volume(volume) => volume.size_bytes(),
            Client::Nbd(nbd) => nbd.size_bytes(),
        }
    }

    async fn write(&self, offset: u64, data: Bytes) -> Outcome<Vec<WriteAck>> {
        match self {
            Client::Volume(volume) => outcome(volume.write_acked(offset, data).await),
            // An NBD client does not learn which primary acknowledged; an error reply may come
            // after the write was applied.
            Client::Nbd(nbd) => match nbd.write(offset, &data).await {
                Ok(()) => Outcome::Ok(Vec::new()),
                Err(e) => Outcome::Unknown(e),
            },
        }
    }

    async fn read(&self, offset: u64, len: u64) -> Outcome<Bytes> {
        match self {
            Client::Volume(volume) => outcome(volume.read(offset, len).await),
            Client::Nbd(nbd) => match nbd.read(offset, len).await {
                Ok(data) => Outcome::Ok(data),
                Err(e) => Outcome::Unknown(e),
            },
        }
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
    /// Starts one client on each of `clients`; client `i` (from 1) draws its operations from
    /// `seed` and `i`. Of the first `options.clients`, the last `options.readers` only read.
    pub fn start(
        clients: Vec<Client>,
        history: Arc<History>,
        seed: u64,
        options: &WorkloadOptions,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, io)| {
                let client = i as u32 + 1;
                let rng = StdRng::seed_from_u64(seed ^ (u64::from(client) << 32));
                let reader =
                    client <= options.clients && client + options.readers > options.clients;
                let write_percent = if reader { 0 } else { options.write_percent };
                tokio::spawn(run_client(
                    client,
                    io,
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
    volume: Client,
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
            let outcome = volume.write(first * BLOCK_BYTES, data).await;
            history.record_write(WriteEvent {
                id,
                first_block: first,
                blocks,
                start_us,
                end_us: history.now_us(),
                outcome,
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
    volume: &Client,
    history: &History,
    client: u32,
    first: u64,
    blocks: u64,
    is_final: bool,
) -> bool {
    let start_us = history.now_us();
    let outcome = match volume.read(first * BLOCK_BYTES, blocks * BLOCK_BYTES).await {
        Outcome::Ok(data) => Outcome::Ok(
            data.chunks(BLOCK_BYTES as usize)
                .enumerate()
                .map(|(i, block)| decode_block(first + i as u64, block))
                .collect::<Vec<_>>(),
        ),
        Outcome::Failed(e) => Outcome::Failed(e),
        Outcome::Unknown(e) => Outcome::Unknown(e),
    };
    let ok = matches!(outcome, Outcome::Ok(_));
    history.record_read(ReadEvent {
        client,
        first_block: first,
        start_us,
        end_us: history.now_us(),
        outcome,
        is_final,
    });
    ok
}
