//! Cluster authentication and TLS with real processes.
//!
//! Invariants checked: with a token, a client without it (or with another) can neither read,
//! write, create nor delete anything on any port (every manager route but `/health` and the
//! dashboard's files answers 401; the data-plane handshake closes before any request is
//! served; the NBD gateway cannot open a volume), and every refusal is counted; with the token
//! everything works end to end, replication between nodes included. With TLS, the same holds
//! over TLS, and a plaintext client (or one that trusts another CA) is refused on both planes.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use integration::binaries::binary;
use integration::cluster::free_port;
use integration::credentials::{write_token_file, TestCa};
use integration::gateway::NbdGateway;
use integration::{Cluster, ClusterOptions};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use vbs_wire::api::{ClusterStatus, CopyStatus, VolumeMap};
use vbs_wire::conn::{read_frame, Connection, DataError};
use vbs_wire::managers::Managers;
use vbs_wire::proto::{
    self, Auth, ClientRequest, ErrorCode, Frame, Hello, PeerKind, Request, Response,
    AUTH_NONCE_BYTES, AUTH_PROOF_BYTES,
};
use vbs_wire::security::Security;
use vbs_wire::types::Lba;

const STARTUP: Duration = Duration::from_secs(30);
const VOLUME: &str = "vol";
/// What the test writes at offset 0 with the token, and reads back by every way it has.
const PATTERN: u8 = 0xab;
const WRITTEN_BYTES: usize = 64 << 10;

/// Every route of a manager, with a body where it takes one: none may answer without the token.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/v1/status", None),
        (Method::GET, "/v1/status?local=true", None),
        (Method::GET, "/v1/volumes", None),
        (
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "intruder", "size_bytes": 4096})),
        ),
        (Method::GET, "/v1/volumes/vol", None),
        (Method::DELETE, "/v1/volumes/vol", None),
        (
            Method::POST,
            "/v1/nodes",
            Some(json!({"id": "evil", "addr": "127.0.0.1:1", "capacity_bytes": 1})),
        ),
        (Method::POST, "/v1/nodes/n1/heartbeat", Some(json!({}))),
        (Method::POST, "/v1/nodes/n1/drain", None),
        (
            Method::POST,
            "/v1/notifications",
            Some(json!({"kind": "not_current", "source": {"node": "n1"}, "units": []})),
        ),
        (
            Method::POST,
            "/v1/managers",
            Some(json!({"id": 9, "addr": "127.0.0.1:1"})),
        ),
        (Method::DELETE, "/v1/managers/3", None),
        (Method::GET, "/metrics", None),
        (Method::POST, "/raft/append", Some(json!({}))),
        (Method::POST, "/raft/vote", Some(json!({}))),
        (Method::POST, "/raft/snapshot", None),
        (Method::GET, "/raft/probe?id=1", None),
        (Method::GET, "/no/such/route", None),
    ]
}

fn http_client(token: Option<&str>, security: Option<&Security>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(security) = security {
        builder = security.http_client(builder);
    }
    if let Some(token) = token {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        builder = builder.default_headers(headers);
    }
    builder.build().expect("an HTTP client")
}

/// Runs `vbs` with `global` flags (and not the cluster's credentials) and `args`.
fn vbs_as(cluster: &Cluster, global: &[&str], args: &[&str]) -> Output {
    Command::new(binary("vbs").unwrap())
        .env_remove("VBS_TOKEN_FILE")
        .env_remove("VBS_TLS_CA")
        .args(global)
        .args(["--managers", &cluster.managers_arg()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("vbs runs")
}

fn assert_refused(out: &Output, what: &str, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} should fail: {stderr}");
    assert!(
        words.iter().any(|w| stderr.contains(w)),
        "{what}: expected one of {words:?} in {stderr:?}"
    );
}

/// Creates the volume on two nodes, writes the pattern and reads it back with the CLI, and
/// checks that both copies are current (the secondary took every replicated write).
async fn works_end_to_end(cluster: &Cluster) -> VolumeMap {
    cluster.vbs_ok(
        &[
            "volume",
            "create",
            VOLUME,
            "--size",
            "4M",
            "--replicas",
            "2",
            "--slice-size",
            "4M",
        ],
        None,
    );
    let data = vec![PATTERN; WRITTEN_BYTES];
    cluster.vbs_ok(&["write", VOLUME, "--offset", "0"], Some(&data));
    let read = cluster.vbs_ok(&["read", VOLUME, "--offset", "0", "--length", "64k"], None);
    assert!(read == data, "the data read back is what was written");
    let status: ClusterStatus = cluster.status().await.unwrap();
    let volume = status
        .volumes
        .into_iter()
        .find(|v| v.name == VOLUME)
        .expect("the volume exists");
    let copies = &volume.slices[0].copies;
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(
        copies.iter().all(|c| c.status == CopyStatus::Current),
        "both copies took the writes: {copies:?}"
    );
    volume
}

/// Reads the pattern back through a `vbs nbd` gateway with qemu-io.
async fn nbd_reads_back(cluster: &Cluster) {
    let gateway = NbdGateway::start(cluster, VOLUME).await.unwrap();
    let out = Command::new("qemu-io")
        .args(["-f", "raw", &gateway.url, "-c"])
        .arg(format!("read -P {PATTERN:#x} 0 64k"))
        .output()
        .expect("qemu-io (Debian package qemu-utils) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("Pattern verification failed"),
        "qemu-io through the gateway: {stdout}"
    );
}

/// A client's settings with `secret` as the token and, when given, `ca` for TLS.
fn settings(dir: &std::path::Path, secret: &str, ca: Option<&std::path::Path>) -> Security {
    let path = dir.join(format!("token-{}", rand::random::<u32>()));
    write_token_file(&path, secret).unwrap();
    Security::load(Some(&path), ca, None, None).unwrap()
}

async fn metric(http: &reqwest::Client, url: &str, line_start: &str) -> u64 {
    let text = http
        .get(url)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

/// Sends `frames` on a fresh plaintext connection to `addr`, then reads what comes back until
/// the node closes the connection (or 10 s pass).
async fn raw_exchange(addr: &str, frames: &[Frame]) -> Vec<Frame> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    for frame in frames {
        proto::encode(&mut out, 1, frame);
    }
    stream.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, read_frame(&mut stream, &mut buf)).await {
            Ok(Ok(Some((_, frame)))) => answers.push(frame),
            Ok(Ok(None)) | Ok(Err(_)) => return answers,
            Err(_) => panic!("{addr} kept the connection open after {answers:?}"),
        }
    }
}

fn hello(min_version: u16, max_version: u16) -> Frame {
    Frame::Hello(Hello {
        min_version,
        max_version,
        peer: PeerKind::Client,
        name: "intruder".into(),
    })
}

fn read_request(volume: &VolumeMap) -> Request {
    Request::Client(ClientRequest::Read {
        unit: volume.slices[0].unit,
        generation: volume.slices[0].generation,
        lba: Lba(0),
        blocks: 1,
    })
}

fn refused_with(answers: &[Frame], code: ErrorCode) -> bool {
    answers
        .iter()
        .any(|f| matches!(f, Frame::Response(Response::Error(e)) if e.code == code))
}

fn served_a_request(answers: &[Frame]) -> bool {
    answers
        .iter()
        .any(|f| matches!(f, Frame::Response(r) if !matches!(r, Response::Error(_))))
}

#[tokio::test]
async fn without_the_token_nothing_can_be_read_written_created_or_deleted() {
    let mut cluster = Cluster::start(ClusterOptions {
        token: true,
        ..ClusterOptions::default()
    })
    .unwrap();
    let node_metrics = format!("127.0.0.1:{}", free_port().unwrap());
    for (name, metrics) in [("n1", Some(node_metrics.as_str())), ("n2", None)] {
        let mut args = vec!["--segment-size".to_string(), "1M".into()];
        if let Some(metrics) = metrics {
            args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
        }
        cluster.add_storage_node(name, &args).unwrap();
    }
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    let volume = works_end_to_end(&cluster).await;
    let token_path = cluster.credentials().token_path().unwrap().to_path_buf();
    let dir = cluster.dir.path().to_path_buf();
    let wrong_path = dir.join("wrong-token");
    write_token_file(&wrong_path, "not-the-cluster-token").unwrap();

    // Manager HTTP: every route, on every manager, without the token or with another one.
    let anonymous = http_client(None, None);
    let wrong = http_client(Some("not-the-cluster-token"), None);
    for id in cluster.manager_ids() {
        let addr = cluster.manager_addr(id).to_string();
        for (method, path, body) in routes() {
            for (who, http) in [("no token", &anonymous), ("a wrong token", &wrong)] {
                let mut request = http.request(method.clone(), format!("http://{addr}{path}"));
                if let Some(body) = &body {
                    request = request.json(body);
                }
                let response = request.send().await.unwrap();
                let status = response.status();
                let challenge = response.headers().get(WWW_AUTHENTICATE).cloned();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} on manager {id} with {who}: {body}"
                );
                assert_eq!(body["code"], "unauthorized", "{method} {path}: {body}");
                assert!(
                    challenge.is_some_and(|c| c.to_str().unwrap().starts_with("Bearer")),
                    "{method} {path}: WWW-Authenticate"
                );
            }
        }
        let health = anonymous
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK, "the health check is open");
        let page = anonymous
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            page.status(),
            StatusCode::OK,
            "the dashboard page holds no data"
        );
    }

    // The CLI without the token, or with another one.
    let no_token = [
        &["status"][..],
        &["volume", "list"],
        &["volume", "create", "intruder", "--size", "4M"],
        &["volume", "delete", VOLUME],
        &["node", "drain", "n1"],
        &["read", VOLUME, "--offset", "0", "--length", "4k"],
        &["write", VOLUME, "--offset", "0", "--file", "/dev/null"],
    ];
    let wrong_flag = wrong_path.display().to_string();
    for args in no_token {
        let out = vbs_as(&cluster, &[], args);
        assert_refused(&out, &format!("vbs {args:?} without a token"), &["token"]);
        let out = vbs_as(&cluster, &["--token-file", &wrong_flag], args);
        assert_refused(
            &out,
            &format!("vbs {args:?} with a wrong token"),
            &["does not match"],
        );
    }
    let mut readable = std::fs::metadata(&token_path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut readable, 0o644);
    let exposed = dir.join("exposed-token");
    std::fs::copy(&token_path, &exposed).unwrap();
    std::fs::set_permissions(&exposed, readable).unwrap();
    let out = vbs_as(
        &cluster,
        &["--token-file", &exposed.display().to_string()],
        &["status"],
    );
    assert_refused(&out, "a world-readable token file", &["chmod 600"]);

    // The NBD gateway is a client of the cluster: without the token it cannot open the volume,
    // so it never listens. By default it listens on loopback only.
    let nbd_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut gateway = Command::new(binary("vbs").unwrap())
        .env_remove("VBS_TOKEN_FILE")
        .args([
            "--managers",
            &cluster.managers_arg(),
            "nbd",
            VOLUME,
            "--listen",
            &nbd_addr,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while gateway.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < STARTUP,
            "vbs nbd without the token kept running"
        );
        assert!(
            std::net::TcpStream::connect(&nbd_addr).is_err(),
            "vbs nbd without the token listens"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = gateway.wait_with_output().unwrap();
    assert_refused(&out, "vbs nbd without the token", &["token"]);
    let help = vbs_as(&cluster, &[], &["nbd", "--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("[default: 127.0.0.1:10809]"),
        "vbs nbd listens on loopback unless told otherwise"
    );
    nbd_reads_back(&cluster).await;

    // The data plane, against n1: the library and raw frames, without the token or with
    // another one. No request is ever served.
    let n1 = cluster.storage_addr("n1").to_string();
    let timeout = Duration::from_secs(5);
    match Connection::connect(&n1, PeerKind::Client, "intruder", timeout)
        .await
        .err()
    {
        Some(DataError::Unauthorized { reason, .. }) => {
            assert!(reason.contains("requires authentication"), "{reason}")
        }
        other => panic!("a client without the token must be refused: {other:?}"),
    }
    let wrong_settings = settings(&dir, "not-the-cluster-token", None);
    for peer in [PeerKind::Client, PeerKind::Node] {
        let name = if peer == PeerKind::Node {
            "n2"
        } else {
            "intruder"
        };
        match Connection::connect_from(&n1, None, peer, name, &wrong_settings, timeout)
            .await
            .err()
        {
            Some(DataError::Unauthorized { reason, .. }) => {
                assert!(reason.contains("authentication failed"), "{reason}")
            }
            other => panic!("a {peer:?} with a wrong token must be refused: {other:?}"),
        }
    }
    let request = Frame::Request(read_request(&volume));
    let skipped_proof = raw_exchange(&n1, &[hello(1, 2), request.clone()]).await;
    assert!(
        matches!(&skipped_proof[0], Frame::HelloOk(ok) if ok.challenge.is_some()),
        "{skipped_proof:?}"
    );
    assert!(
        refused_with(&skipped_proof, ErrorCode::Unauthorized),
        "{skipped_proof:?}"
    );
    assert!(!served_a_request(&skipped_proof), "{skipped_proof:?}");
    let garbage = Frame::Auth(Auth {
        nonce: [1; AUTH_NONCE_BYTES],
        proof: [2; AUTH_PROOF_BYTES],
    });
    let forged = raw_exchange(&n1, &[hello(1, 2), garbage, request.clone()]).await;
    assert!(refused_with(&forged, ErrorCode::Unauthorized), "{forged:?}");
    assert!(!served_a_request(&forged), "{forged:?}");
    let old = raw_exchange(&n1, &[hello(1, 1), request]).await;
    assert!(refused_with(&old, ErrorCode::BadRequest), "{old:?}");
    assert!(!served_a_request(&old), "{old:?}");

    // With the token, the library is served (by the slice's primary).
    let right = cluster.credentials().security().unwrap();
    let primary = volume.slices[0]
        .copies
        .iter()
        .find(|c| c.node == volume.slices[0].primary)
        .unwrap();
    let connection = Connection::connect_from(
        &primary.addr,
        None,
        PeerKind::Client,
        "test",
        &right,
        timeout,
    )
    .await
    .expect("the token opens the data plane");
    match connection.call(read_request(&volume), timeout).await {
        Ok(Response::Read { data }) => assert!(data.iter().all(|b| *b == PATTERN)),
        other => panic!("a read with the token: {other:?}"),
    }

    // With the token, every manager answers a linearizable read: the followers forward it to
    // the leader with their own token.
    for id in cluster.manager_ids() {
        let status: ClusterStatus = cluster
            .call(id, Method::GET, "/v1/status", None)
            .await
            .unwrap_or_else(|e| panic!("status from manager {id}: {e}"));
        assert!(status.leader.is_some(), "manager {id}");
    }

    // Nothing changed: one volume, nobody draining, three voting managers.
    let status: ClusterStatus = cluster.status().await.unwrap();
    let names: Vec<&str> = status.volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, [VOLUME]);
    assert!(
        status.nodes.iter().all(|n| !n.draining),
        "{:?}",
        status.nodes
    );
    assert_eq!(status.nodes.len(), 2, "{:?}", status.nodes);
    assert_eq!(status.managers.len(), 3, "{:?}", status.managers);
    assert_eq!(
        status.volumes[0].slices[0].generation,
        volume.slices[0].generation
    );

    // Every refusal was counted; metrics themselves need the token.
    let leader = status.leader.unwrap().0;
    let manager_metrics = format!("http://{}/metrics", cluster.manager_addr(leader));
    let http = &cluster.http;
    let api = metric(
        http,
        &manager_metrics,
        "vbs_auth_rejected_total{surface=\"api\"}",
    )
    .await;
    let raft = metric(
        http,
        &manager_metrics,
        "vbs_auth_rejected_total{surface=\"raft\"}",
    )
    .await;
    assert!(api >= 28, "api rejections on manager {leader}: {api}");
    assert!(raft >= 8, "raft rejections on manager {leader}: {raft}");
    let node_url = format!("http://{node_metrics}/metrics");
    let refused = anonymous.get(&node_url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let data = metric(http, &node_url, "vbs_auth_rejected_total{surface=\"data\"}").await;
    assert!(data >= 6, "data-plane rejections on n1: {data}");
    let metrics = metric(
        http,
        &node_url,
        "vbs_auth_rejected_total{surface=\"metrics\"}",
    )
    .await;
    assert_eq!(metrics, 1);
    let log = std::fs::read_to_string(cluster.storage_node("n1").unwrap().log_path()).unwrap();
    assert!(log.contains("did not authenticate"), "refusals are logged");
    let secret = std::fs::read_to_string(&token_path).unwrap();
    assert!(
        !log.contains(secret.trim()),
        "the token never reaches a log"
    );
}

#[tokio::test]
async fn with_tls_the_cluster_works_and_plaintext_clients_are_refused() {
    let mut cluster = Cluster::start(ClusterOptions {
        token: true,
        tls: true,
        ..ClusterOptions::default()
    })
    .unwrap();
    let node_metrics = format!("127.0.0.1:{}", free_port().unwrap());
    cluster
        .add_storage_node(
            "n1",
            &[
                "--segment-size".into(),
                "1M".into(),
                "--metrics-listen".into(),
                node_metrics.clone(),
            ],
        )
        .unwrap();
    cluster
        .add_storage_node("n2", &["--segment-size".into(), "1M".into()])
        .unwrap();
    // Heartbeats, registration and Raft all go over TLS: the nodes are up only if they work.
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    works_end_to_end(&cluster).await;
    nbd_reads_back(&cluster).await;

    let dir = cluster.dir.path().to_path_buf();
    let secret = std::fs::read_to_string(cluster.credentials().token_path().unwrap()).unwrap();
    let secret = secret.trim();
    let manager = cluster.manager_addr(1).to_string();
    let n1 = cluster.storage_addr("n1").to_string();
    let timeout = Duration::from_secs(5);

    // Plaintext, even with the right token: no HTTP answer, no handshake answer.
    let plaintext = http_client(Some(secret), None);
    let answer = plaintext
        .get(format!("http://{manager}/v1/status"))
        .send()
        .await;
    assert!(
        answer.is_err(),
        "a plaintext request was answered: {answer:?}"
    );
    let health = plaintext
        .get(format!("http://{manager}/health"))
        .send()
        .await;
    assert!(
        health.is_err(),
        "a plaintext health check was answered: {health:?}"
    );
    let plain_settings = settings(&dir, secret, None);
    match Connection::connect_from(
        &n1,
        None,
        PeerKind::Client,
        "plain",
        &plain_settings,
        timeout,
    )
    .await
    .err()
    {
        Some(DataError::Connect { .. }) => {}
        other => panic!("a plaintext data-plane client must be refused: {other:?}"),
    }
    let answers = raw_exchange(&n1, &[hello(1, 2)]).await;
    assert!(answers.is_empty(), "plaintext hello answered: {answers:?}");
    let out = vbs_as(
        &cluster,
        &[
            "--token-file",
            &cluster
                .credentials()
                .token_path()
                .unwrap()
                .display()
                .to_string(),
        ],
        &["status"],
    );
    assert_refused(&out, "vbs status in plaintext", &["no manager answered"]);

    // TLS from a client that trusts another CA: refused before any request.
    let other_ca = TestCa::new(&dir.join("other-ca"), "another CA").unwrap();
    let stranger = settings(&dir, secret, Some(&other_ca.ca_path()));
    let managers = Managers::parse_secured(&manager, timeout, None, stranger.clone()).unwrap();
    let refused = managers.status().await.unwrap_err();
    assert!(refused.to_string().contains("certificate"), "{refused}");
    match Connection::connect_from(&n1, None, PeerKind::Client, "stranger", &stranger, timeout)
        .await
        .err()
    {
        Some(DataError::Connect { reason, .. }) => assert!(reason.contains("TLS"), "{reason}"),
        other => panic!("a client of another CA must be refused: {other:?}"),
    }

    // The right CA and token: the library works over TLS too.
    let right = cluster.credentials().security().unwrap();
    let managers = Arc::new(Managers::parse_secured(&manager, timeout, None, right).unwrap());
    let volume = client::volume::Volume::open(managers, VOLUME, Default::default())
        .await
        .expect("opens over TLS");
    let data = volume.read(0, 4096).await.expect("reads over TLS");
    assert!(data.iter().all(|b| *b == PATTERN));

    // Failed TLS handshakes are counted, on the managers and on the storage nodes.
    let http = &cluster.http;
    let tls_manager = metric(
        http,
        &format!("https://{manager}/metrics"),
        "vbs_auth_rejected_total{surface=\"tls\"}",
    )
    .await;
    assert!(
        tls_manager >= 2,
        "TLS rejections on manager 1: {tls_manager}"
    );
    let tls_node = metric(
        http,
        &format!("https://{node_metrics}/metrics"),
        "vbs_auth_rejected_total{surface=\"tls\"}",
    )
    .await;
    assert!(tls_node >= 2, "TLS rejections on n1: {tls_node}");
}
