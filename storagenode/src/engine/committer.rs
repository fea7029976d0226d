//! A device's commit thread: under load it writes batch after batch of the device log, so that
//! async writers hand their records over instead of each taking a thread of the runtime for its
//! own batch. One per device, however many units the device holds.
//!
//! An async writer that finds the log idle still writes its batch itself (in `block_in_place`),
//! so a lone write pays no hand-off. Once writes overlap, the thread takes over: it loops while
//! records keep arriving, and sleeps once a batch finds nothing new.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread;

use parking_lot::{Condvar, Mutex};
use tracing::warn;

use super::log::Log;

/// The commit thread's stack: it encodes into the log's reused batch buffer, never on its stack.
const STACK_BYTES: usize = 256 << 10;

#[derive(Default)]
struct Signal {
    /// Records wait to be written.
    wanted: AtomicBool,
    /// The thread sleeps (or is about to): a writer must wake it.
    idle: AtomicBool,
    stop: AtomicBool,
    sleep: Mutex<()>,
    wake: Condvar,
}

/// The handle a log keeps on its commit thread; the thread stops when the handle is dropped.
pub(super) struct Committer {
    signal: Arc<Signal>,
}

impl Committer {
    /// Starts the commit thread of `log`. The thread holds the log weakly, so it never keeps it
    /// alive.
    pub fn start(log: &Arc<Log>, device: &str) -> std::io::Result<Committer> {
        let signal = Arc::new(Signal {
            idle: AtomicBool::new(true),
            ..Signal::default()
        });
        let weak = Arc::downgrade(log);
        let shared = signal.clone();
        let name = device.rsplit('/').next().unwrap_or(device);
        thread::Builder::new()
            .name(format!("vbs-commit-{name}"))
            .stack_size(STACK_BYTES)
            .spawn(move || commit_forever(&weak, &shared))?;
        Ok(Committer { signal })
    }

    /// Whether the thread is at work, so that records queued now are written by it without being
    /// asked.
    pub fn busy(&self) -> bool {
        !self.signal.idle.load(Ordering::SeqCst)
    }

    /// Asks the thread to write what is pending.
    pub fn want(&self) {
        let signal = &self.signal;
        signal.wanted.store(true, Ordering::SeqCst);
        if signal.idle.load(Ordering::SeqCst) {
            let _sleep = signal.sleep.lock();
            signal.wake.notify_one();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Not joined: the last reference to the log may be dropped by the thread itself.
        let signal = &self.signal;
        signal.stop.store(true, Ordering::SeqCst);
        let _sleep = signal.sleep.lock();
        signal.wake.notify_one();
    }
}

fn commit_forever(log: &Weak<Log>, signal: &Signal) {
    loop {
        {
            let mut sleep = signal.sleep.lock();
            // `idle` is set before `wanted` is read, and a writer sets `wanted` before it reads
            // `idle`: one of the two sees the other's store, so no request is slept through.
            signal.idle.store(true, Ordering::SeqCst);
            while !signal.wanted.swap(false, Ordering::SeqCst) {
                if signal.stop.load(Ordering::SeqCst) {
                    return;
                }
                signal.wake.wait(&mut sleep);
            }
            signal.idle.store(false, Ordering::SeqCst);
        }
        let Some(log) = log.upgrade() else {
            return;
        };
        if let Err(e) = log.commit_pending() {
            // The log is failed; its writers get the error themselves.
            warn!(error = %e, "the commit thread could not write a batch");
        }
    }
}
