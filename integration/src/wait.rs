//! Waiting on observable state: poll a condition until it holds or a deadline passes.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// Between polls: short enough to observe a change promptly, long enough not to load the
/// processes under test.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `probe` until it returns `Ok(Some(value))`, and returns the value. Fails after
/// `timeout`, saying what was awaited and what the last probe saw.
pub async fn wait_until<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last = "condition not met yet".into(),
            Err(e) => last = format!("{e:?}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last probe: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
