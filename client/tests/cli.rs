//! The `vbs` command as a user runs it, against a fake manager and fake storage nodes: one clear
//! line and a non-zero exit for bad input, data round trips, tables, and a verified bench run.

mod fake;

use std::process::Output;
use std::sync::atomic::Ordering;

use fake::{slice, volume_map, FakeManager, FakeNode};
use tokio::process::Command;
use vbs_wire::types::UnitId;

const MIB: u64 = 1 << 20;

async fn vbs(managers: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vbs"));
    command.env_remove("VBS_MANAGERS").env_remove("RUST_LOG");
    if let Some(managers) = managers {
        command.args(["--managers", managers]);
    }
    command.args(args).output().await.expect("vbs runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The command failed with `code` and said so in one line on stderr that contains `needle`.
fn assert_one_line_failure(output: &Output, code: i32, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {text}");
    assert_eq!(text.lines().count(), 1, "one line expected: {text:?}");
    assert!(text.starts_with("vbs: "), "{text:?}");
    assert!(text.contains(needle), "{needle:?} not in {text:?}");
}

/// Volume 3 "v": 6 MiB in two slices of 4 MiB and 2 MiB, primaries on a and b.
async fn cluster() -> (FakeManager, FakeNode, FakeNode) {
    let a = FakeNode::start("a").await;
    let b = FakeNode::start("b").await;
    a.set_unit(UnitId::new(3, 0), 1, true, 1024);
    b.set_unit(UnitId::new(3, 0), 1, false, 1024);
    a.set_unit(UnitId::new(3, 1), 1, false, 512);
    b.set_unit(UnitId::new(3, 1), 1, true, 512);
    let map = volume_map(
        "v",
        6 * MIB,
        4 * MIB,
        vec![slice(3, 0, 1, &a, &b), slice(3, 1, 1, &b, &a)],
    );
    (FakeManager::start(Some(map)).await, a, b)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_command_lines_get_one_line_and_exit_2() {
    let bad_rw = vbs(Some("127.0.0.1:1"), &["bench", "v", "--rw", "randomwrite"]).await;
    assert_one_line_failure(&bad_rw, 2, "randomwrite");
    let typo = vbs(
        Some("127.0.0.1:1"),
        &["read", "v", "--offset", "4kk", "--length", "4k"],
    )
    .await;
    assert_one_line_failure(&typo, 2, "unknown suffix");
    let bad_name = vbs(Some("127.0.0.1:1"), &["volume", "show", "a/b"]).await;
    assert_one_line_failure(&bad_name, 2, "volume name");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_unreachable_managers_get_one_line_and_exit_1() {
    let none = vbs(None, &["status"]).await;
    assert_one_line_failure(&none, 1, "VBS_MANAGERS");
    let unreachable = vbs(Some("127.0.0.1:1"), &["status"]).await;
    assert_one_line_failure(&unreachable, 1, "no manager answered");
    let malformed = vbs(Some("localhost"), &["volume", "list"]).await;
    assert_one_line_failure(&malformed, 1, "not HOST:PORT");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_against_a_cluster_get_one_line_and_exit_1() {
    let (manager, _a, _b) = cluster().await;
    let m = Some(manager.addr.as_str());
    let unknown = vbs(m, &["read", "nope", "--offset", "0", "--length", "4k"]).await;
    assert_one_line_failure(&unknown, 1, "volume \"nope\" does not exist");
    let show = vbs(m, &["volume", "show", "nope"]).await;
    assert_one_line_failure(&show, 1, "does not exist");
    let unaligned = vbs(m, &["read", "v", "--offset", "100", "--length", "4k"]).await;
    assert_one_line_failure(
        &unaligned,
        1,
        "offset 100 is not a multiple of the 4096-byte",
    );
    let beyond = vbs(m, &["read", "v", "--offset", "6M", "--length", "4k"]).await;
    assert_one_line_failure(&beyond, 1, "beyond the end of volume");

    let dir = tempfile::tempdir().expect("temp dir");
    let odd = dir.path().join("odd");
    std::fs::write(&odd, vec![1u8; 5000]).expect("write file");
    let odd = odd.to_str().expect("utf-8 path");
    let write = vbs(m, &["write", "v", "--offset", "0", "--file", odd]).await;
    assert_one_line_failure(&write, 1, "5000 bytes, not a multiple of 4096");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_written_from_a_file_reads_back_identical() {
    let (manager, _a, b) = cluster().await;
    let m = Some(manager.addr.as_str());
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in");
    // 3 MiB + 8 KiB at 2 MiB: crosses from slice 0 into slice 1.
    let data: Vec<u8> = (0..3 * MIB + 8192).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).expect("write file");
    let input = input.to_str().expect("utf-8 path");
    let write = vbs(m, &["write", "v", "--offset", "2M", "--file", input]).await;
    assert!(write.status.success(), "{}", stderr(&write));
    assert!(stdout(&write).contains(&format!("wrote {} bytes", data.len())));
    assert!(b.seen().iter().any(|s| s.kind == "write"));

    let output = dir.path().join("out");
    let out = output.to_str().expect("utf-8 path");
    let length = data.len().to_string();
    let read = vbs(
        m,
        &[
            "read", "v", "--offset", "2M", "--length", &length, "--out", out,
        ],
    )
    .await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(std::fs::read(&output).expect("read file") == data);

    let to_stdout = vbs(m, &["read", "v", "--offset", "2M", "--length", "8k"]).await;
    assert!(to_stdout.status.success(), "{}", stderr(&to_stdout));
    assert_eq!(to_stdout.stdout, data[..8192]);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_volumes_print_tables_or_json() {
    let (manager, _a, _b) = cluster().await;
    let m = Some(manager.addr.as_str());
    let status = vbs(m, &["status"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let text = stdout(&status);
    for needle in [
        "CLUSTER\n",
        "volumes        1 (2 slices)",
        "copies         4: 4 current",
        "MANAGERS (leader 1",
        "STORAGE NODES",
        "NEEDS ATTENTION\nnothing: every node is up and every copy is current",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let all = vbs(m, &["status", "--all"]).await;
    let text = stdout(&all);
    for needle in [
        "MANAGERS (leader 1",
        "STORAGE NODES",
        "VOLUMES",
        "SLICES",
        "a current, b current",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    let json = vbs(m, &["status", "--json"]).await;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(value["leader"], 1);

    let list = vbs(m, &["volume", "list"]).await;
    assert!(stdout(&list).contains("v     3   6M"), "{}", stdout(&list));
    let show = vbs(m, &["volume", "show", "v"]).await;
    let text = stdout(&show);
    assert!(
        text.starts_with("volume v (id 3): 6M in 2 slices of 4M"),
        "{text}"
    );
    let show_json = vbs(m, &["volume", "show", "v", "--json"]).await;
    let value: serde_json::Value = serde_json::from_slice(&show_json.stdout).expect("JSON");
    assert_eq!(value["slices"][1]["primary"], "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verified_bench_run_reports_its_figures_as_json() {
    let (manager, a, b) = cluster().await;
    let m = Some(manager.addr.as_str());
    let args = [
        "bench",
        "v",
        "--rw",
        "randrw",
        "--runtime",
        "1s",
        "--iodepth",
        "8",
        "--verify",
        "--json",
        "--seed",
        "5",
    ];
    let bench = vbs(m, &args).await;
    assert!(bench.status.success(), "{}", stderr(&bench));
    let report: serde_json::Value = serde_json::from_slice(&bench.stdout).expect("JSON");
    assert_eq!(report["rw"], "randrw");
    assert_eq!(report["bs"], 4096);
    assert_eq!(report["iodepth"], 8);
    assert_eq!(report["seed"], 5);
    assert_eq!(report["errors"], 0);
    assert_eq!(report["verify_mismatches"], 0);
    assert!(report["ops"].as_u64().expect("ops") > 0);
    assert!(report["blocks_checked"].as_u64().expect("checked") > 0);
    for key in [
        "iops",
        "mbps",
        "latency_us_p50",
        "latency_us_p99",
        "latency_us_p999",
        "latency_us_max",
    ] {
        assert!(report[key].is_number(), "{key} in {report}");
    }

    // Damaged reads are caught: exit code 3 and the mismatches on stderr.
    a.state.corrupt_reads.store(true, Ordering::SeqCst);
    b.state.corrupt_reads.store(true, Ordering::SeqCst);
    let damaged = vbs(
        m,
        &[
            "bench",
            "v",
            "--rw",
            "randread",
            "--runtime",
            "300ms",
            "--verify",
        ],
    )
    .await;
    assert_eq!(damaged.status.code(), Some(3), "{}", stderr(&damaged));
    let text = stderr(&damaged);
    assert!(text.contains("was not written by vbs bench"), "{text}");
    assert!(
        text.lines()
            .last()
            .expect("a line")
            .contains("did not match"),
        "{text}"
    );
}
