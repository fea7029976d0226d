//! The device's pool of spare segment files, written full of zeroes ahead of need.
//!
//! A 4 KiB write plus fdatasync into space that is already allocated and written costs about half
//! of an append to a growing file (which must also commit the new size and extents), so log
//! segments are never grown: a background thread keeps a few spare files of the full segment size
//! ready, and segments freed by compaction come back here to be used again.

use std::io;
use std::sync::Arc;
use std::thread;

use parking_lot::{Condvar, Mutex};
use tracing::{debug, info, warn};

use super::backend::Backend;

pub const SPARE_DIR: &str = "spare";
const ZERO_CHUNK_BYTES: usize = 256 << 10;

struct PoolState {
    ready: Vec<String>,
    next_id: u64,
    stopping: bool,
}

struct Shared {
    backend: Arc<dyn Backend>,
    segment_bytes: u64,
    target_spares: usize,
    max_spares: usize,
    state: Mutex<PoolState>,
    wake: Condvar,
}

pub struct SegmentPool {
    shared: Arc<Shared>,
    filler: Mutex<Option<thread::JoinHandle<()>>>,
}

impl SegmentPool {
    /// Opens the pool in `SPARE_DIR`, dropping half-written spares, and starts a thread that keeps
    /// `target_spares` files ready.
    pub fn open(
        backend: Arc<dyn Backend>,
        segment_bytes: u64,
        target_spares: usize,
    ) -> io::Result<SegmentPool> {
        backend.create_dir(SPARE_DIR)?;
        let mut ready = Vec::new();
        let mut next_id = 0;
        for name in backend.list(SPARE_DIR)? {
            let path = format!("{SPARE_DIR}/{name}");
            let id = name
                .strip_suffix(".seg")
                .and_then(|id| id.parse::<u64>().ok());
            let whole = match id {
                Some(_) => backend.open(&path)?.size()? == segment_bytes,
                None => false,
            };
            if whole {
                ready.push(path);
            } else {
                debug!(%path, "removing an unfinished spare segment");
                backend.remove(&path)?;
            }
            next_id = next_id.max(id.unwrap_or(0) + 1);
        }
        let shared = Arc::new(Shared {
            backend,
            segment_bytes,
            target_spares,
            max_spares: target_spares.max(1) * 2,
            state: Mutex::new(PoolState {
                ready,
                next_id,
                stopping: false,
            }),
            wake: Condvar::new(),
        });
        let filler = {
            let shared = shared.clone();
            thread::Builder::new()
                .name("vbs-segment-pool".into())
                .spawn(move || shared.fill_forever())?
        };
        Ok(SegmentPool {
            shared,
            filler: Mutex::new(Some(filler)),
        })
    }

    /// A pool that never writes: no spares are made and none are taken (for read-only checks).
    pub fn inert(backend: Arc<dyn Backend>, segment_bytes: u64) -> SegmentPool {
        let shared = Arc::new(Shared {
            backend,
            segment_bytes,
            target_spares: 0,
            max_spares: 0,
            state: Mutex::new(PoolState {
                ready: Vec::new(),
                next_id: 0,
                stopping: true,
            }),
            wake: Condvar::new(),
        });
        SegmentPool {
            shared,
            filler: Mutex::new(None),
        }
    }

    pub fn segment_bytes(&self) -> u64 {
        self.shared.segment_bytes
    }

    /// A spare segment's path, ready to be renamed into a unit. Writes one now if none is ready.
    pub fn take(&self) -> io::Result<String> {
        let spare = {
            let mut state = self.shared.state.lock();
            let spare = state.ready.pop();
            self.shared.wake.notify_all();
            spare
        };
        match spare {
            Some(path) => Ok(path),
            None if self.filler.lock().is_none() => {
                Err(io::Error::other("this device was opened read-only"))
            }
            None => {
                info!("no spare segment ready; writing one in the foreground");
                self.shared.make_spare()
            }
        }
    }

    /// Takes back a segment file that a unit no longer needs. It is reused if it has the full
    /// size and the pool is not full, and deleted otherwise.
    pub fn give_back(&self, path: &str) -> io::Result<()> {
        let backend = &self.shared.backend;
        let reusable = backend.open(path)?.size()? == self.shared.segment_bytes;
        let id = {
            let mut state = self.shared.state.lock();
            let keep = reusable && state.ready.len() < self.shared.max_spares;
            if keep {
                state.next_id += 1;
                Some(state.next_id - 1)
            } else {
                None
            }
        };
        match id {
            Some(id) => {
                let spare = format!("{SPARE_DIR}/{id}.seg");
                backend.rename(path, &spare)?;
                self.shared.state.lock().ready.push(spare);
                Ok(())
            }
            None => backend.remove(path),
        }
    }

    /// How many spares are ready now.
    pub fn ready(&self) -> usize {
        self.shared.state.lock().ready.len()
    }
}

impl Shared {
    /// Writes a new spare of `segment_bytes` zeroes, durable, under a temporary name that only
    /// becomes a `.seg` once complete.
    fn make_spare(&self) -> io::Result<String> {
        let id = {
            let mut state = self.state.lock();
            state.next_id += 1;
            state.next_id - 1
        };
        let temp = format!("{SPARE_DIR}/{id}.tmp");
        let written = self.backend.create(&temp).and_then(|file| {
            let zeroes = vec![0u8; ZERO_CHUNK_BYTES];
            let mut offset = 0;
            while offset < self.segment_bytes {
                let n = (self.segment_bytes - offset).min(ZERO_CHUNK_BYTES as u64) as usize;
                file.write_at(&zeroes[..n], offset)?;
                // Chunk by chunk to the device: a foreground fdatasync on the same disk then
                // waits behind one chunk of this at most, not behind the whole segment.
                file.write_back(offset, n as u64)?;
                offset += n as u64;
            }
            file.sync()
        });
        if let Err(error) = written {
            // A full filesystem: what was written of it is given back at once.
            let _ = self.backend.remove(&temp);
            return Err(error);
        }
        let path = format!("{SPARE_DIR}/{id}.seg");
        self.backend.rename(&temp, &path)?;
        Ok(path)
    }

    fn fill_forever(&self) {
        let mut state = self.state.lock();
        loop {
            if state.stopping {
                return;
            }
            if state.ready.len() >= self.target_spares {
                self.wake.wait(&mut state);
                continue;
            }
            let made = parking_lot::MutexGuard::unlocked(&mut state, || self.make_spare());
            match made {
                Ok(path) => state.ready.push(path),
                Err(e) => {
                    // Out of space or a failing disk: the foreground will get the error itself when
                    // it needs a segment; retry later rather than spin.
                    warn!(error = %e, "could not write a spare segment");
                    self.wake
                        .wait_for(&mut state, std::time::Duration::from_secs(5));
                }
            }
            self.wake.notify_all();
        }
    }
}

impl Drop for SegmentPool {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(filler) = self.filler.lock().take() {
            let _ = filler.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::backend::memory::MemoryBackend;
    use crate::engine::backend::{BlockFile, Wrapped};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Event {
        Write(u64, u64),
        WriteBack(u64, u64),
        Sync,
    }

    type Events = Arc<Mutex<Vec<Event>>>;

    /// A file that records its writes, write-backs and syncs.
    struct RecordingFile {
        inner: Arc<dyn BlockFile>,
        events: Events,
    }

    impl BlockFile for RecordingFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            self.events
                .lock()
                .push(Event::Write(offset, buf.len() as u64));
            self.inner.write_at(buf, offset)
        }
        fn write_back(&self, offset: u64, len: u64) -> io::Result<()> {
            self.events.lock().push(Event::WriteBack(offset, len));
            self.inner.write_back(offset, len)
        }
        fn sync(&self) -> io::Result<()> {
            self.events.lock().push(Event::Sync);
            self.inner.sync()
        }
        fn size(&self) -> io::Result<u64> {
            self.inner.size()
        }
        fn set_size(&self, size: u64) -> io::Result<()> {
            self.inner.set_size(size)
        }
    }

    #[test]
    fn a_spare_reaches_the_device_a_chunk_at_a_time_then_is_synced() {
        let events = Events::default();
        let recorded = events.clone();
        let backend = Arc::new(Wrapped::new(
            Arc::new(MemoryBackend::new(1 << 30)),
            move |_, inner| {
                Arc::new(RecordingFile {
                    inner,
                    events: recorded.clone(),
                })
            },
        ));
        backend.create_dir(SPARE_DIR).unwrap();
        let segment_bytes = 4 * ZERO_CHUNK_BYTES as u64 + 4096;
        let pool = SegmentPool::inert(backend.clone(), segment_bytes);
        let path = pool.shared.make_spare().unwrap();

        let events = events.lock().clone();
        let (last, chunks) = events.split_last().expect("the spare was written");
        assert_eq!(*last, Event::Sync, "a spare is durable before it is ready");
        let mut next = 0;
        for pair in chunks.chunks(2) {
            // Each chunk is written, then sent to the device before the next is written.
            let [Event::Write(offset, len), Event::WriteBack(back, back_len)] = pair else {
                panic!("expected a write, then its write-back: {pair:?} in {events:?}");
            };
            assert_eq!(
                (*offset, *back, *back_len),
                (next, next, *len),
                "{events:?}"
            );
            assert!(*len <= ZERO_CHUNK_BYTES as u64);
            next += len;
        }
        assert_eq!(next, segment_bytes);
        assert_eq!(backend.open(&path).unwrap().size().unwrap(), segment_bytes);
    }
}
