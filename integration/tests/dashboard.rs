//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed with apt
//! when missing) renders the page a manager serves at `/`, which must show every storage node
//! `up`, then a killed one `down` with the event log saying why; and charts of client IO for a
//! loaded volume and none for an idle one. Screenshots are saved in the cluster's temp dir, and
//! copied to `$VBS_TEST_ARTIFACTS` when that is set (the temp dir goes with the test).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use integration::binaries::{binary, profile_dir, workspace_root};
use integration::{volumes_with_a_copy_on, wait_until, Cluster, ClusterOptions};
use vbs_wire::api::{EventKind, IoHistory, NodeState};

const STARTUP: Duration = Duration::from_secs(30);
/// The lease is 2 s (+ 500 ms clock margin), the page polls every second: a down node shows
/// well within this.
const SHOWS_DOWN: Duration = Duration::from_secs(60);
/// Longest one browser run may take before it is killed.
const BROWSER_RUN: Duration = Duration::from_secs(60);
/// Page time the browser runs the page's script for before it dumps or shoots: enough for the
/// first poll and a few more.
const VIRTUAL_TIME_BUDGET_MS: u64 = 4000;
const WINDOW: (u32, u32) = (1400, 1000);

/// The browser, installed once per test run when it is missing.
fn chromium() -> &'static Path {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND.get_or_init(|| {
        integration::tools::ensure("chromium", "chromium").unwrap_or_else(|e| {
            panic!("headless Chromium is needed (Debian package chromium): {e:#}")
        })
    })
}

/// The dashboard's files, compiled into `vbs-manager`.
fn assets_dir() -> PathBuf {
    workspace_root().join("consistency/assets/dashboard")
}

/// The harness rebuilds a binary when a `.rs`, `.toml` or `.lock` file is newer than it; the
/// dashboard's files are compiled into `vbs-manager` too, so a change to them alone is caught
/// here.
fn rebuild_manager_if_the_page_changed() {
    let manager = binary("vbs-manager").expect("vbs-manager built");
    let built = manager
        .metadata()
        .and_then(|m| m.modified())
        .expect("vbs-manager's mtime");
    let changed = std::fs::read_dir(assets_dir())
        .expect("the dashboard's files")
        .flatten()
        .filter_map(|e| e.metadata().and_then(|m| m.modified()).ok())
        .any(|modified| modified > built);
    if !changed {
        return;
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.current_dir(workspace_root()).args([
        "build",
        "-p",
        "consistency",
        "--bin",
        "vbs-manager",
    ]);
    if profile_dir().is_ok_and(|d| d.ends_with("release")) {
        cargo.arg("--release");
    }
    eprintln!("the dashboard changed: {cargo:?}");
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "{cargo:?} failed: {status}");
}

/// Checks that the manager serves the page and its files as they are on disk, so the browser
/// tests this page and not one from an older build.
async fn assert_served_as_on_disk(cluster: &Cluster, manager: u64) {
    for (path, file) in [
        ("/", "index.html"),
        ("/ui/dashboard.css", "dashboard.css"),
        ("/ui/dashboard.js", "dashboard.js"),
        ("/ui/activity.js", "activity.js"),
    ] {
        let on_disk = std::fs::read_to_string(assets_dir().join(file)).expect("asset");
        let served = cluster
            .http
            .get(format!("http://{}{path}", cluster.manager_addr(manager)))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .expect("text");
        assert!(
            served == on_disk,
            "GET {path} is not {file} as on disk: vbs-manager is older than the dashboard"
        );
    }
}

/// Runs headless Chromium on `url` with `extra` arguments (`--dump-dom`, `--screenshot=...`),
/// each run with a profile of its own. Chromium runs in a process group of its own, which is
/// killed once it is done, so no renderer or helper outlives the run.
async fn browse(profiles: &Path, url: &str, extra: &[String]) -> anyhow::Result<Output> {
    let profile = tempfile::Builder::new()
        .prefix("chromium-")
        .tempdir_in(profiles)?;
    let mut command = tokio::process::Command::new(chromium());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-proxy-server",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().context("starting chromium")?;
    let group = child.id().context("chromium's pid")?;
    let finished = tokio::time::timeout(BROWSER_RUN, child.wait_with_output()).await;
    kill_group(group);
    match finished {
        Ok(output) => Ok(output.context("waiting for chromium")?),
        Err(_) => bail!("chromium did not finish within {BROWSER_RUN:?}"),
    }
}

/// SIGKILL to every process left in group `group`; none left is fine.
fn kill_group(group: u32) {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the group is the browser's own,
    // created by `process_group(0)` for this run.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// The rendered DOM of the page.
async fn dom(profiles: &Path, url: &str) -> anyhow::Result<String> {
    let out = browse(profiles, url, &["--dump-dom".into()]).await?;
    if !out.status.success() {
        bail!(
            "chromium --dump-dom failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Saves a screenshot of the page to `path` and checks it is a PNG of the window's size.
async fn screenshot(profiles: &Path, url: &str, path: &Path) -> anyhow::Result<()> {
    let out = browse(profiles, url, &[format!("--screenshot={}", path.display())]).await?;
    let png = std::fs::read(path).with_context(|| {
        format!(
            "chromium wrote no screenshot ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    // The PNG signature, then the IHDR chunk: width and height, big endian.
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" {
        bail!("{} is not a PNG", path.display());
    }
    let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
    if (width, height) != WINDOW {
        bail!("the screenshot is {width}x{height}, not {WINDOW:?}");
    }
    Ok(())
}

/// Every start tag in `dom` that carries `attribute`.
fn tags_having<'a>(dom: &'a str, attribute: &str) -> Vec<&'a str> {
    let needle = format!(" {attribute}=\"");
    dom.match_indices(&needle)
        .filter_map(|(at, _)| {
            let start = dom[..at].rfind('<')?;
            let end = at + dom[at..].find('>')?;
            Some(&dom[start..=end])
        })
        .collect()
}

/// The value of `attribute` in start tag `tag`.
fn attribute<'a>(tag: &'a str, attribute: &str) -> Option<&'a str> {
    let needle = format!(" {attribute}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// Every start tag in `dom` that carries `attribute="value"`.
fn tags_with<'a>(dom: &'a str, name: &str, value: &str) -> Vec<&'a str> {
    tags_having(dom, name)
        .into_iter()
        .filter(|tag| attribute(tag, name) == Some(value))
        .collect()
}

/// The state the page shows for storage node `node` (`data-node`, `data-state`).
fn node_state<'a>(dom: &'a str, node: &str) -> Option<&'a str> {
    let tags = tags_with(dom, "data-node", node);
    tags.first().and_then(|tag| attribute(tag, "data-state"))
}

/// (copy, status) of every copy on `node` the page shows (`data-copy="VOLUME/SLICE/NODE"`,
/// `data-status`).
fn copy_statuses<'a>(dom: &'a str, node: &str) -> Vec<(&'a str, &'a str)> {
    let suffix = format!("/{node}");
    tags_having(dom, "data-copy")
        .into_iter()
        .filter_map(|tag| Some((attribute(tag, "data-copy")?, attribute(tag, "data-status")?)))
        .filter(|(copy, _)| copy.ends_with(&suffix))
        .collect()
}

/// Copies the screenshot to `$VBS_TEST_ARTIFACTS` when set, and prints where it is.
fn keep(path: &Path) {
    println!("dashboard screenshot: {}", path.display());
    if let Some(dir) = std::env::var_os("VBS_TEST_ARTIFACTS") {
        let dir = PathBuf::from(dir);
        let name = path.file_name().expect("a file name");
        let kept = dir.join(name);
        std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::copy(path, &kept))
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", path.display(), dir.display()));
        println!("dashboard screenshot kept: {}", kept.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_killed_storage_node_going_down() {
    chromium();
    rebuild_manager_if_the_page_changed();
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "2s".into()],
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let status = cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("nodes up");
    cluster.vbs_ok(
        &[
            "volume",
            "create",
            "v",
            "--size",
            "8M",
            "--replicas",
            "2",
            "--slice-size",
            "4M",
        ],
        None,
    );
    // Through a follower: the page's reads are forwarded to the leader like any other.
    let leader = status.leader.expect("a leader").0;
    let follower = cluster
        .manager_ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    assert_served_as_on_disk(&cluster, follower).await;
    let url = format!("http://{}/", cluster.manager_addr(follower));
    let dir = cluster.dir.path().to_path_buf();
    let profiles = dir.join("chromium-profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    let names = cluster.storage_names();

    let shown = wait_until("the dashboard to show every node up", STARTUP, || async {
        let dom = dom(&profiles, &url).await?;
        let all_up = names.iter().all(|n| node_state(&dom, n) == Some("up"));
        let copies = tags_with(&dom, "data-status", "current").len();
        Ok::<_, anyhow::Error>((all_up && copies == 4).then_some(dom))
    })
    .await
    .expect("the dashboard shows the cluster");
    assert!(
        shown.contains("data-poll=\"ok\""),
        "a linearizable read answered"
    );
    let up_shot = dir.join("dashboard-up.png");
    screenshot(&profiles, &url, &up_shot)
        .await
        .expect("screenshot");
    keep(&up_shot);

    let victim = "n2";
    let on_victim = cluster
        .status()
        .await
        .expect("status")
        .volumes
        .iter()
        .flat_map(|v| &v.slices)
        .flat_map(|s| &s.copies)
        .filter(|c| c.node.0 == victim)
        .count();
    // `vbs events --follow` prints what is committed from now on, as it happens.
    let mut follow = cluster
        .vbs_command(&["events", "--follow", "--json", "--last", "0"])
        .expect("vbs built")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vbs events --follow starts");
    let (lines, followed) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().expect("its stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    cluster.storage_node(victim).expect("n2").kill();
    let dom = wait_until(
        &format!("the dashboard to show {victim} down"),
        SHOWS_DOWN,
        || async {
            let dom = dom(&profiles, &url).await?;
            Ok::<_, anyhow::Error>((node_state(&dom, victim) == Some("down")).then_some(dom))
        },
    )
    .await
    .expect("the dashboard shows the killed node down");
    let status = cluster.status().await.expect("status");
    let node = status
        .nodes
        .iter()
        .find(|n| n.id.0 == victim)
        .expect("n2 listed");
    assert_eq!(node.state, NodeState::Down, "the page agrees with the API");
    for other in names.iter().filter(|n| *n != victim) {
        assert_eq!(node_state(&dom, other), Some("up"), "{other}");
    }
    let copies = copy_statuses(&dom, victim);
    assert_eq!(copies.len(), on_victim, "{copies:?}");
    assert!(
        copies.iter().all(|(_, status)| *status == "down"),
        "copies on a down node show down: {copies:?}"
    );
    // The leader's metrics say the same.
    let leader = status.leader.expect("a leader").0;
    let metrics = cluster
        .http
        .get(format!("http://{}/metrics", cluster.manager_addr(leader)))
        .send()
        .await
        .expect("metrics answered");
    let content_type = metrics.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert!(
        content_type
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{content_type:?}"
    );
    let metrics = metrics.text().await.expect("metrics text");
    for line in [
        "vbs_raft_is_leader 1".to_string(),
        format!("vbs_storage_node_up{{node=\"{victim}\"}} 0"),
        "vbs_storage_nodes{status=\"down\"} 1".to_string(),
        format!("vbs_copies{{status=\"down\"}} {on_victim}"),
        "vbs_volumes 1".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line} in:\n{metrics}"
        );
    }

    // The event log says what happened and why, on the page and through `vbs events`.
    let events = cluster
        .vbs(&["events", "--json", "--last", "1000"])
        .expect("vbs events runs");
    assert!(events.status.success(), "{events:?}");
    let events: Vec<vbs_wire::api::Event> = String::from_utf8_lossy(&events.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect();
    let down = events
        .iter()
        .find(|e| matches!(&e.what, EventKind::NodeDown { node, .. } if node.0 == victim))
        .unwrap_or_else(|| panic!("no node_down of {victim} in {events:#?}"));
    assert!(
        down.cause
            .as_deref()
            .is_some_and(|c| c.contains("no heartbeat from node n2")),
        "{down:?}"
    );
    for slice in status.volumes.iter().flat_map(|v| &v.slices) {
        let was_primary = events.iter().any(|e| {
            matches!(&e.what, EventKind::Failover { unit, from, to, .. }
                if *unit == slice.unit && from.0 == victim && *to == slice.primary)
        });
        let on_victim_first = slice.generation.0 > 1;
        assert_eq!(
            was_primary, on_victim_first,
            "a failover event for each slice that moved: {slice:?} {events:#?}"
        );
    }
    let deadline = std::time::Instant::now() + SHOWS_DOWN;
    let mut printed = Vec::new();
    let down_followed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = followed.recv_timeout(left) else {
            break false;
        };
        let event: vbs_wire::api::Event = serde_json::from_str(&line).expect("an event per line");
        let seen = matches!(&event.what, EventKind::NodeDown { node, .. } if node.0 == victim);
        printed.push(event);
        if seen {
            break true;
        }
    };
    follow.kill().expect("vbs events stopped");
    follow.wait().expect("vbs events reaped");
    assert!(
        down_followed,
        "vbs events --follow printed no node_down of {victim}: {printed:#?}"
    );
    assert!(
        printed
            .iter()
            .all(|e| !matches!(e.what, EventKind::VolumeCreated { .. })),
        "--last 0 prints only what comes after it started: {printed:#?}"
    );
    let listed = wait_until(
        "the page to list the node_down event",
        SHOWS_DOWN,
        || async {
            let page = crate::dom(&profiles, &url).await?;
            Ok::<_, anyhow::Error>(
                (!tags_with(&page, "data-kind", "node_down").is_empty()).then_some(page),
            )
        },
    )
    .await
    .expect("the event shown");
    assert!(!tags_with(&listed, "data-kind", "volume_created").is_empty());

    let down_shot = dir.join("dashboard-down.png");
    screenshot(&profiles, &url, &down_shot)
        .await
        .expect("screenshot");
    keep(&down_shot);
}

/// Past a few dozen volumes the page fetches the cluster's numbers and only the volumes with a
/// copy not current, not every volume's map every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_many_volumes_the_dashboard_shows_those_needing_attention() {
    const VOLUMES: usize = 60;
    chromium();
    rebuild_manager_if_the_page_changed();
    let mut cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        manager_args: vec!["--lease".into(), "2s".into()],
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let status = cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("nodes up");
    let leader = status.leader.expect("a leader").0;
    let names = (0..VOLUMES).map(|i| format!("v{i:02}"));
    cluster
        .create_one_slice_volumes(names, 1 << 20)
        .await
        .expect("volumes created");
    let url = format!("http://{}/", cluster.manager_addr(leader));
    let profiles = cluster.dir.path().join("chromium-profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");

    let healthy = wait_until("the dashboard to show the volumes", STARTUP, || async {
        let dom = dom(&profiles, &url).await?;
        Ok::<_, anyhow::Error>(
            dom.contains("data-volumes-shown=\"attention\"")
                .then_some(dom),
        )
    })
    .await
    .expect("the dashboard shows the cluster");
    assert!(
        healthy.contains(&format!("Every copy of all {VOLUMES} volumes is current")),
        "{healthy}"
    );
    assert!(tags_having(&healthy, "data-volume").is_empty());

    let victim = "n2";
    let victim_id = vbs_wire::types::NodeId::parse(victim).expect("a node name");
    let mut on_victim =
        volumes_with_a_copy_on(&cluster.status().await.expect("status"), &victim_id);
    on_victim.sort();
    cluster.storage_node(victim).expect("n2").kill();
    let shown = wait_until("the dashboard to list n2's volumes", SHOWS_DOWN, || async {
        let dom = dom(&profiles, &url).await?;
        let mut shown: Vec<String> = tags_having(&dom, "data-volume")
            .into_iter()
            .filter_map(|tag| attribute(tag, "data-volume").map(str::to_string))
            .collect();
        shown.sort();
        Ok::<_, anyhow::Error>((shown == on_victim).then_some(dom))
    })
    .await
    .expect("the volumes with a copy on the down node, and no other");
    assert!(
        shown.contains("data-list-more"),
        "the rest can be listed on demand"
    );
    let shot = cluster.dir.path().join("dashboard-many-volumes.png");
    screenshot(&profiles, &url, &shot)
        .await
        .expect("screenshot");
    keep(&shot);
}

/// With one volume under load and one idle, the page charts IO for the loaded volume and for
/// the nodes serving it, and nothing for the idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_io_of_a_loaded_volume_and_none_of_an_idle_one() {
    chromium();
    rebuild_manager_if_the_page_changed();
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })
    .expect("cluster starts");
    let status = cluster
        .wait_for_storage_up(STARTUP)
        .await
        .expect("nodes up");
    for name in ["busy", "idle"] {
        cluster
            .create_volume(name, "16M", "2", "16M")
            .expect("volume created");
    }
    let mut bench = cluster
        .vbs_command(&[
            "bench",
            "busy",
            "--rw",
            "randrw",
            "--iodepth",
            "4",
            "--runtime",
            "120s",
        ])
        .expect("vbs built")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vbs bench starts");
    let leader = status.leader.expect("a leader").0;
    let io_url = format!("http://{}/v1/io", cluster.manager_addr(leader));
    // A step closes every 5 s: the first points come within a few steps.
    let history = wait_until("the leader to chart the loaded volume", STARTUP, || async {
        let history: IoHistory = cluster
            .http
            .get(&io_url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let loaded = history
            .volumes
            .iter()
            .any(|s| s.name == "busy" && s.points.iter().any(|p| p.write_iops > 0.0));
        Ok::<_, anyhow::Error>(loaded.then_some(history))
    })
    .await
    .expect("IO history of the loaded volume");
    assert!(
        history.volumes.iter().all(|s| s.name != "idle"),
        "no series for the idle volume: {history:?}"
    );
    let status = cluster.status().await.expect("status");
    let busy = status
        .volumes
        .iter()
        .find(|v| v.name == "busy")
        .expect("busy listed");
    let primary = &busy.slices[0].primary;
    let node = history
        .nodes
        .iter()
        .find(|s| s.name == primary.0)
        .unwrap_or_else(|| panic!("no series for busy's primary {primary}: {history:?}"));
    assert!(node.points.iter().any(|p| p.p99_us.is_some()), "{node:?}");

    let url = format!("http://{}/", cluster.manager_addr(leader));
    let profiles = cluster.dir.path().join("chromium-profiles");
    std::fs::create_dir_all(&profiles).expect("profiles dir");
    let dom = wait_until("the page to chart the loaded volume", STARTUP, || async {
        let dom = dom(&profiles, &url).await?;
        let charted = tags_with(&dom, "data-io", "volume:busy")
            .first()
            .and_then(|tag| attribute(tag, "data-points"))
            .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0));
        Ok::<_, anyhow::Error>(charted.then_some(dom))
    })
    .await
    .expect("the page charts the loaded volume");
    assert!(
        tags_with(&dom, "data-io", "volume:idle").is_empty(),
        "the idle volume is not charted"
    );
    let served_by = format!("node:{}", primary.0);
    assert!(
        !tags_with(&dom, "data-io", &served_by).is_empty(),
        "the loaded volume's primary is charted"
    );
    assert!(
        !tags_having(&dom, "data-device").is_empty(),
        "each node's data directories are shown with their space"
    );
    let shot = cluster.dir.path().join("dashboard-io.png");
    screenshot(&profiles, &url, &shot)
        .await
        .expect("screenshot");
    keep(&shot);
    bench.kill().expect("bench stopped");
    bench.wait().expect("bench reaped");
}
