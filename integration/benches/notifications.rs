//! Notification throughput of a 3-manager cluster on loopback: each notification marks one copy
//! `stale`, so each is one Raft commit (fdatasync on a majority) plus the HTTP round trip.
//!
//! Run with `cargo bench -p integration --bench notifications`. Prints commits/s and latency
//! p50/p99 for 1 and for 16 concurrent clients.

use integration::measure::notification_commits;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = notification_commits(&[(1, 2_000), (16, 8_000)]).await?;
    println!("notifications to a 3-manager cluster on loopback (one Raft commit each)");
    println!(
        "{:>8} {:>8} {:>10} {:>10} {:>10}",
        "clients", "commits", "commits/s", "p50 us", "p99 us"
    );
    for run in runs {
        println!(
            "{:>8} {:>8} {:>10.0} {:>10} {:>10}",
            run.clients,
            run.commits,
            run.per_second(),
            run.latencies.value_at_quantile(0.50),
            run.latencies.value_at_quantile(0.99),
        );
    }
    Ok(())
}
