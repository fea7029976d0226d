//! Coalescing of identical work in progress ("single flight"): callers that ask for the same key
//! while the work runs wait for it and share its result instead of repeating it. Once the work is
//! done the key is free again, so a later caller starts afresh; nothing is cached.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Flights<K, V> {
    cells: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Flights<K, V> {
        Flights {
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` for `key`, or waits for the run already in progress and returns its result.
    /// If the caller running the work is cancelled, one of the waiters runs its own `work`.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        cell.get_or_init(|| async {
            let value = work().await;
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                cells.remove(&key);
            }
            value
        })
        .await
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::future::join_all;
    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Flights::<u32, u32>::new();
        let runs = AtomicU32::new(0);
        let release = Notify::new();
        let work = || async {
            release.notified().await;
            runs.fetch_add(1, Ordering::SeqCst) + 100
        };
        let callers = join_all((0..10).map(|_| flights.run(7, work)));
        let (results, ()) = tokio::join!(callers, async {
            tokio::task::yield_now().await;
            release.notify_one();
        });
        assert_eq!(results, vec![100; 10]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // Done work is not cached: the next caller runs it again.
        release.notify_one();
        assert_eq!(flights.run(7, work).await, 101);
        release.notify_one();
        assert_eq!(flights.run(8, work).await, 102);
    }
}
