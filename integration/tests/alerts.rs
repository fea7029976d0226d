//! The alerting rules shipped in `docs/prometheus/vbs-alerts.yml`, checked with `promtool test
//! rules` (Debian's `prometheus` package) against series scraped from real managers: a healthy
//! cluster fires nothing; with a storage node killed, the node-down and below-replica-count
//! alerts fire for it, and the no-leader alert does not; a data directory past 85% full (its
//! scraped free space lowered) fires the nearfull alert.

use std::fmt::Write;
use std::time::Duration;

use integration::binaries::workspace_root;
use integration::cluster::free_port;
use integration::{tools, wait_until, Cluster, ClusterOptions};
use vbs_wire::api::{CopyStatus, NodeState};

const STARTUP: Duration = Duration::from_secs(30);

/// The samples of one scrape: (series in PromQL notation, value).
async fn scrape_managers(cluster: &Cluster) -> Vec<(String, String)> {
    let mut samples = Vec::new();
    for id in cluster.manager_ids() {
        let addr = cluster.manager_addr(id).to_string();
        samples.extend(scrape(cluster, &addr, "vbs-manager", &format!("manager-{id}")).await);
    }
    samples
}

/// The samples of one `GET /metrics` at `addr`, labelled with `job` and `instance`.
async fn scrape(cluster: &Cluster, addr: &str, job: &str, instance: &str) -> Vec<(String, String)> {
    let text = cluster
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics text");
    let extra = format!("job=\"{job}\",instance=\"{instance}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let series = match series.split_once('{') {
                Some((name, labels)) => format!("{name}{{{extra},{labels}"),
                None => format!("{series}{{{extra}}}"),
            };
            (series, value.to_string())
        })
        .collect()
}

/// The value of the one sample whose series contains every one of `parts`.
fn sample<'a>(samples: &'a [(String, String)], parts: &[&str]) -> &'a str {
    let found: Vec<&(String, String)> = samples
        .iter()
        .filter(|(series, _)| parts.iter().all(|p| series.contains(p)))
        .collect();
    assert_eq!(found.len(), 1, "one sample with {parts:?}: {found:?}");
    &found[0].1
}

/// A `promtool test rules` file: `samples` held for 40 minutes at one-minute steps, and the
/// alerts expected at 35 minutes (`(alert name, expected alerts as YAML)`).
fn rule_test(rules: &str, samples: &[(String, String)], expected: &[(&str, &str)]) -> String {
    let mut out = format!("rule_files:\n  - {rules}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n");
    for (series, value) in samples {
        let quoted = series.replace('\'', "''");
        writeln!(
            out,
            "      - series: '{quoted}'\n        values: '{value}x40'"
        )
        .unwrap();
    }
    out.push_str("    alert_rule_test:\n");
    for (alert, alerts) in expected {
        write!(
            out,
            "      - eval_time: 35m\n        alertname: {alert}\n        exp_alerts:{alerts}\n"
        )
        .unwrap();
    }
    out
}

/// Runs `promtool test rules` on `test`; fails with promtool's output.
fn promtool_test(promtool: &std::path::Path, dir: &std::path::Path, name: &str, test: &str) {
    let path = dir.join(name);
    std::fs::write(&path, test).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool test rules {name}:\n{}{}\n--- the test file ---\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_alert_rules_fire_on_a_killed_node_and_stay_quiet_when_healthy() {
    let promtool = tools::ensure("promtool", "prometheus").expect("promtool");
    let rules = workspace_root().join("docs/prometheus/vbs-alerts.yml");
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "2s".into()],
        ..ClusterOptions::default()
    })
    .unwrap();
    // One more node, whose own metrics are scraped too.
    let node_metrics = format!("127.0.0.1:{}", free_port().unwrap());
    let mut args = ClusterOptions::default().storage_args;
    args.extend(["--metrics-listen".to_string(), node_metrics.clone()]);
    cluster.add_storage_node("n4", &args).unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    cluster.create_volume("v", "8M", "2", "4M").unwrap();
    let dir = cluster.dir.path().to_path_buf();
    let rules = rules.display().to_string();
    let quiet: Vec<(&str, &str)> = [
        "VbsStorageNodeDown",
        "VbsSlicesBelowReplicaCount",
        "VbsCopiesNotCurrentForLong",
        "VbsNoManagerLeader",
    ]
    .into_iter()
    .map(|alert| (alert, " []"))
    .collect();
    let healthy = scrape_managers(&cluster).await;
    promtool_test(
        &promtool,
        &dir,
        "healthy.yml",
        &rule_test(&rules, &healthy, &quiet),
    );

    // A data directory: nearfull fires when its filesystem is over 85% full, as it is once the
    // scraped free space is made 5% of the total.
    let mut node = scrape(&cluster, &node_metrics, "vbs-storage", "n4").await;
    let total: u64 = sample(&node, &["vbs_device_bytes{", "kind=\"total\""])
        .parse()
        .unwrap();
    let free: u64 = sample(&node, &["vbs_device_bytes{", "kind=\"free\""])
        .parse()
        .unwrap();
    let data_dir = cluster.storage_data_dir("n4").display().to_string();
    let nearfull = format!(
        "\n          - exp_labels: {{dir: '{data_dir}', instance: n4, severity: warning}}\n            exp_annotations:\n              summary: \"data directory {data_dir} on n4 is over 85% full\"\n              description: \"A storage node refuses writes it has no room for. Free space on that filesystem, add a data directory or a storage node, or drain the node (`vbs node drain`).\""
    );
    let as_it_is = if 1.0 - free as f64 / total as f64 > 0.85 {
        nearfull.as_str()
    } else {
        " []"
    };
    promtool_test(
        &promtool,
        &dir,
        "device.yml",
        &rule_test(&rules, &node, &[("VbsDeviceNearFull", as_it_is)]),
    );
    for (series, value) in &mut node {
        if series.starts_with("vbs_device_bytes{") && series.contains("kind=\"free\"") {
            *value = (total / 20).to_string();
        }
    }
    promtool_test(
        &promtool,
        &dir,
        "device-nearfull.yml",
        &rule_test(&rules, &node, &[("VbsDeviceNearFull", &nearfull)]),
    );

    // Kill a node that holds copies; wait until every manager has applied it down.
    let status = cluster.status().await.unwrap();
    let victim = status
        .nodes
        .iter()
        .find(|n| !n.units.is_empty())
        .expect("a node with copies")
        .id
        .clone();
    cluster.storage_node(&victim.0).unwrap().kill();
    for id in cluster.manager_ids() {
        wait_until(
            "the node down everywhere",
            Duration::from_secs(60),
            || async {
                let status = cluster.local_status(id).await?;
                let down = status
                    .nodes
                    .iter()
                    .any(|n| n.id == victim && n.state == NodeState::Down);
                let copies_down = status
                    .volumes
                    .iter()
                    .flat_map(|v| &v.slices)
                    .flat_map(|s| &s.copies)
                    .any(|c| c.status == CopyStatus::Down);
                Ok::<_, anyhow::Error>((down && copies_down).then_some(()))
            },
        )
        .await
        .unwrap();
    }
    let degraded = cluster.status().await.unwrap().counts.slices_degraded;
    let broken = scrape_managers(&cluster).await;
    let node_down = format!(
        "\n          - exp_labels: {{node: {victim}, severity: warning}}\n            exp_annotations:\n              summary: \"storage node {victim} is down\"\n              description: \"The managers have not heard from {victim} within its lease: its primaries failed over and its copies are down. Bring it back within --grace (10 minutes by default) and its copies catch up incrementally; after that they are re-created on other nodes.\""
    );
    let below = format!(
        "\n          - exp_labels: {{severity: warning}}\n            exp_annotations:\n              summary: \"{degraded} slices have fewer current copies than their replicas\"\n              description: \"These volumes run with less redundancy until their copies are current again. `vbs status` lists the slices under NEEDS ATTENTION.\""
    );
    let long = "\n          - exp_labels: {severity: critical}\n            exp_annotations:\n              summary: \"copies have not been current for 30 minutes\"\n              description: \"A resync should make a copy current within minutes. Check `vbs status` for resyncs that make no progress and the storage node logs of the copies named there.\"";
    let expected = [
        ("VbsStorageNodeDown", node_down.as_str()),
        ("VbsSlicesBelowReplicaCount", below.as_str()),
        ("VbsCopiesNotCurrentForLong", long),
        ("VbsNoManagerLeader", " []"),
    ];
    promtool_test(
        &promtool,
        &dir,
        "node-down.yml",
        &rule_test(&rules, &broken, &expected),
    );
}
