//! `vbs up`: a local cluster in one command, used by qemu-io, stopped with Ctrl-C, resumed.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::user::qemu_io_ok;

/// A base port whose cluster ports (base+1..3, base+101..103, base+809) are all free now.
fn free_base() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..200 {
        let base = 20_000 + rand::random::<u16>() % 30_000;
        let ports = [1, 2, 3, 101, 102, 103, 201, 202, 203, 809];
        if ports.iter().all(|offset| free(base + offset)) {
            return base;
        }
    }
    panic!("no free port range");
}

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vbs up` and waits for it to say the cluster is up; returns the NBD URL.
/// Starts `vbs up` on `dir`, with `--volume` when `volume` is given.
fn up(dir: &std::path::Path, base: u16, volume: Option<&str>) -> (Up, String) {
    // vbs up finds vbs-manager and vbs-storage next to itself.
    integration::binaries::binary("vbs-manager").unwrap();
    integration::binaries::binary("vbs-storage").unwrap();
    let mut command = Command::new(integration::binaries::binary("vbs").unwrap());
    command.arg("up");
    if let Some(volume) = volume {
        command.args(["--volume", volume]);
    }
    let mut child = command
        .args(["--base-port", &base.to_string(), "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vbs up starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut url = None;
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.trim_start().starts_with("NBD") => {
                url = line.split_whitespace().last().map(str::to_string);
            }
            Ok(line) if line.starts_with("Ctrl-C") => break,
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("vbs up exited early: {status}");
                }
            }
            Err(_) => panic!("vbs up closed its output before the cluster was up"),
        }
    }
    (Up(child), url.expect("vbs up printed the NBD URL"))
}

/// A plain HTTP/1.0 GET on loopback with the cluster token `vbs up` made in `dir`; the body.
fn http_get(dir: &std::path::Path, port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(dir.join("token")).expect("vbs up wrote its token");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Sends SIGINT (what Ctrl-C sends) and waits for a clean exit.
fn interrupt(mut up: Up) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(up.0.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = up.0.try_wait().unwrap() {
            assert!(status.success(), "vbs up exited with {status} after Ctrl-C");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "vbs up did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vbs_up_serves_a_volume_stops_on_ctrl_c_and_resumes_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (first, url) = up(dir.path(), base, Some("disk:64M:2"));
    assert!(url.ends_with("/disk"), "{url}");
    // The cluster's token, made on first start, is for its owner's eyes only.
    let token = std::fs::metadata(dir.path().join("token")).expect("vbs up made a token");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&token.permissions()) & 0o777,
        0o600
    );
    qemu_io_ok(&url, &["write -P 0x3c 0 2M", "read -P 0x3c 0 2M"]);
    // Managers and storage nodes serve metrics; the writes show on the primary's.
    let manager = http_get(dir.path(), base + 1, "/metrics");
    assert!(manager.contains("vbs_raft_term"), "{manager}");
    let nodes: Vec<String> = (201..=203)
        .map(|offset| http_get(dir.path(), base + offset, "/metrics"))
        .collect();
    // Per volume latency histograms where writes were served, and each primary's view of its
    // copies' replication lag (zero once the writes are acknowledged everywhere).
    let served: Vec<&String> = nodes
        .iter()
        .filter(|text| text.contains("vbs_io_latency_seconds_count{"))
        .collect();
    assert!(!served.is_empty(), "no latency histogram: {nodes:?}");
    for text in &served {
        assert!(
            text.contains("vbs_io_latency_seconds_bucket{") && text.contains("le=\"+Inf\""),
            "{text}"
        );
    }
    let lags: Vec<u64> = nodes
        .iter()
        .flat_map(|text| text.lines())
        .filter(|l| l.starts_with("vbs_replication_lag_vbas{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!lags.is_empty(), "no replication lag: {nodes:?}");
    assert!(
        lags.iter().all(|lag| *lag == 0),
        "lag after acknowledged writes: {lags:?}"
    );
    let written: u64 = nodes
        .iter()
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("vbs_io_bytes_total{") && l.contains("op=\"write\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(
        written,
        2 << 20,
        "bytes written by the clients, as the primaries count them"
    );
    // The blocks read back were just written: the primaries found them in the page cache.
    let from_cache: u64 = nodes
        .iter()
        .flat_map(|text| text.lines())
        .filter(|l| l.starts_with("vbs_reads_total{path=\"page_cache\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        from_cache > 0,
        "no read served from the page cache: {nodes:?}"
    );
    interrupt(first);
    // Every process of the cluster is gone: nothing listens on its ports any more.
    for offset in [1, 2, 3, 101, 102, 103, 201, 202, 203, 809] {
        assert!(
            TcpStream::connect(("127.0.0.1", base + offset)).is_err(),
            "port {} still open",
            base + offset
        );
    }

    // Resumed without --volume: the first start's volume, with its data, and no other made.
    let (second, url) = up(dir.path(), base, None);
    assert!(url.ends_with("/disk"), "{url}");
    qemu_io_ok(&url, &["read -P 0x3c 0 2M"]);
    let volumes = http_get(dir.path(), base + 1, "/v1/volumes");
    assert!(volumes.contains("\"name\":\"disk\""), "{volumes}");
    assert!(!volumes.contains("\"name\":\"demo\""), "{volumes}");
    interrupt(second);
}

/// The pids of processes whose command line names `dir` (the processes of a `vbs up` cluster).
fn processes_in(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until no process of the cluster in `dir` is left.
fn wait_for_none_in(dir: &std::path::Path, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_in(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the cluster outlived vbs up: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vbs_up_says_which_process_failed_and_why_then_stops_the_rest() {
    integration::binaries::binary("vbs-manager").unwrap();
    integration::binaries::binary("vbs-storage").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    // Manager 1's port is taken.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base + 1)).unwrap();
    let began = Instant::now();
    let out = Command::new(integration::binaries::binary("vbs").unwrap())
        .args(["up", "--base-port", &base.to_string(), "--dir"])
        .arg(dir.path())
        .output()
        .expect("vbs up runs");
    let took = began.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "vbs up succeeded: {stderr}");
    assert!(
        took < Duration::from_secs(20),
        "vbs up took {took:?} to notice: {stderr}"
    );
    assert!(stderr.contains("manager-1 exited"), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    let log = dir.path().join("logs").join("manager-1.log");
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");
    wait_for_none_in(dir.path(), Duration::from_secs(5));
}

#[test]
fn a_storage_node_killed_once_the_cluster_is_up_leaves_the_rest_serving() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (up, url) = up(dir.path(), base, Some("demo:64M:2"));
    let node_dir = dir.path().join("node-1");
    let node = processes_in(&node_dir);
    assert_eq!(
        node.len(),
        1,
        "one storage node uses {}",
        node_dir.display()
    );
    // SAFETY: kill(2) on a pid just read from /proc.
    unsafe {
        libc::kill(node[0] as libc::pid_t, libc::SIGKILL);
    }
    wait_for_none_in(&node_dir, Duration::from_secs(5));
    // The volume has two copies on three nodes: it goes on serving, through vbs up's NBD server.
    qemu_io_ok(&url, &["write -P 0x5a 0 1M", "read -P 0x5a 0 1M"]);
    interrupt(up);
}

#[test]
fn the_cluster_does_not_outlive_a_killed_vbs_up() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base();
    let (mut up, _url) = up(dir.path(), base, Some("demo:64M:2"));
    assert!(
        processes_in(dir.path()).len() >= 6,
        "the cluster's processes run"
    );
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    wait_for_none_in(dir.path(), Duration::from_secs(20));
}

#[test]
fn vbs_up_refuses_fewer_nodes_than_the_volumes_replicas_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(integration::binaries::binary("vbs").unwrap())
        .args([
            "up",
            "--nodes",
            "1",
            "--base-port",
            &free_base().to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("vbs up runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("fewer than volume demo's 2 replicas"),
        "{stderr}"
    );
    // Nothing was started, so a later start is a first start again.
    assert!(!dir.path().join("cluster.json").exists());
}
