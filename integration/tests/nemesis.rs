//! Short nemesis runs with fixed seeds: every fault kind against real processes on distinct
//! loopback addresses, cut apart with iptables (installed when missing), and the checker's
//! verdict on the clients' history. Invariants checked: no acknowledged write lost, no stale
//! read, at most one primary acknowledging per slice and generation, every copy current and
//! identical after healing, and, when only managers were struck, no slice failed over.
//! `vbs-nemesis --seed S --duration D` runs long schedules; a failure prints the command that
//! replays it.

use std::time::Duration;

use integration::nemesis::schedule::FaultKind;
use integration::nemesis::{self, Config};

/// Runs one schedule and fails the test, with the report and the replay command, unless it
/// passed. Runs share the loopback addresses, so `nemesis::run` takes them one at a time.
async fn run(seed: u64, replicas: u32, faults: &[FaultKind]) {
    let mut config = Config::new(seed, Duration::from_secs(25), replicas);
    config.faults = faults.to_vec();
    let report = nemesis::run(&config).await.expect("the nemesis runs");
    let description = report.describe();
    println!("{description}");
    assert!(report.passed(), "{description}");
    for kind in faults {
        assert!(
            report.injected.contains_key(kind),
            "{kind} was not injected: {description}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_with_two_copies_lose_nothing() {
    run(
        0x5eed_0002,
        2,
        &[
            FaultKind::KillPrimary,
            FaultKind::KillSecondary,
            FaultKind::IsolateNode,
            FaultKind::SplitPrimary,
            FaultKind::TornTail,
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_and_partitions_with_three_copies_lose_nothing() {
    run(
        0x5eed_0003,
        3,
        &[
            FaultKind::HangPrimary,
            FaultKind::HangSecondary,
            FaultKind::CutManagers,
        ],
    )
    .await;
}

/// Manager faults alone: besides the checker's verdict, no slice may fail over, since every
/// primary stays healthy (`needless_failovers=0`, part of `passed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_faults_with_three_copies_lose_nothing_and_fail_nothing_over() {
    run(
        0x5eed_0004,
        3,
        &[
            FaultKind::KillLeader,
            FaultKind::KillFollower,
            FaultKind::HangLeader,
        ],
    )
    .await;
}
