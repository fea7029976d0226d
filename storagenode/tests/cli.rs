//! The `vbs-storage` offline tools, run as real processes.

use std::process::Command;

use serde_json::Value;

fn vbs_storage() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vbs-storage"))
}

#[test]
fn bench_prints_its_figures_as_json() {
    // One unit written by threads (the defaults), and three written by tokio tasks, as a storage
    // node holding three slices writes them.
    for (units, driver) in [("1", "threads"), ("3", "tokio")] {
        let dir = tempfile::tempdir().unwrap();
        let out = vbs_storage()
            .args(["bench", "--data-dir"])
            .arg(dir.path())
            .args([
                "--count",
                "300",
                "--iodepth",
                "4",
                "--units",
                units,
                "--driver",
                driver,
                "--size",
                "16M",
                "--segment-size",
                "1M",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        for key in [
            "iops",
            "latency_us_p50",
            "latency_us_p99",
            "raw_fdatasync_us_p50",
        ] {
            assert!(
                report[key].as_f64().is_some_and(|v| v > 0.0),
                "{key} missing in {report}"
            );
        }
        assert_eq!(report["count"], 300);
        assert_eq!(report["units"].to_string(), units);
        assert_eq!(report["driver"], driver);
        // The benchmark leaves no unit behind.
        let check = vbs_storage()
            .args(["check", "--json", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let check: Value = serde_json::from_slice(&check.stdout).unwrap();
        assert_eq!(check["units"].as_array().unwrap().len(), 0);
    }
}

#[test]
fn bench_refuses_bad_sizes_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = vbs_storage()
        .args(["bench", "--bs", "4q", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown suffix"), "{stderr}");
    let out = vbs_storage()
        .args(["bench", "--bs", "1000", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 4096"));
    let out = vbs_storage()
        .args(["bench", "--units", "0", "--iodepth", "4", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--units 0 must be between 1 and 4096"),
        "{stderr}"
    );
}

#[test]
fn check_finds_damage_and_names_where() {
    use storagenode::engine::{Device, DeviceOptions, Op};
    use vbs_wire::types::{Generation, Lba, UnitId};

    let dir = tempfile::tempdir().unwrap();
    let unit_id = UnitId::new(3, 2);
    {
        let options = DeviceOptions {
            segment_bytes: 1 << 20,
            ..DeviceOptions::default()
        };
        let (device, _) = Device::open_dir(dir.path(), &options).unwrap();
        let unit = device.create_unit(unit_id, 1 << 20).unwrap();
        for i in 0..10u64 {
            let data = bytes::Bytes::from(vec![i as u8 + 1; 4096]);
            unit.append(Generation(1), vec![Op::Write { lba: Lba(i), data }])
                .unwrap();
        }
    }
    let check = |json: bool| {
        let mut cmd = vbs_storage();
        cmd.args(["check", "--data-dir"]).arg(dir.path());
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = check(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["units"][0]["unit"], "3.2");
    assert_eq!(report["units"][0]["live_blocks"], 10);
    assert_eq!(report["units"][0]["last_vba"], 10);

    // Flip one data byte of the fourth record.
    let segment = dir.path().join("log/00000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let offset = 4096 + 3 * 4160;
    bytes[offset + 1000] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let out = check(false);
    assert!(!out.status.success(), "damage must fail the check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "unit 3.2: the record of VBA 4 is damaged (segment 00000001, offset 16576: checksum mismatch)"
        ),
        "{text}"
    );
    assert!(text.contains("damaged: 1 records"), "{text}");
    assert!(text.contains("INCONSISTENT"), "{text}");
}

#[test]
fn check_refuses_a_directory_that_is_not_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = vbs_storage()
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a vbs data directory"), "{stderr}");
}
