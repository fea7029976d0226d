//! Hostile input on every surface of a running cluster: malformed and oversized requests to every
//! HTTP route of a manager, garbage and oversized frames to the data plane of every storage node,
//! garbage to the NBD gateway, and a flood of connections. Afterwards every process still serves,
//! and the data written before reads back unchanged.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use integration::cluster::replicated_volumes;
use integration::gateway::NbdGateway;
use integration::{Cluster, ClusterOptions};
use reqwest::{Method, StatusCode};
use vbs_wire::api::CopyStatus;

const STARTUP: Duration = Duration::from_secs(30);

/// Sends raw bytes and reads whatever comes back until the peer closes or 2 s pass.
fn raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Opens `count` connections to `addr` from this one address, and waits (at most 3 s) until the
/// server has closed at least `count - limit` of them: those over its per-address limit, closed
/// at once. Returns how many it closed and how many stayed open, seen at the same moment.
fn flood(addr: &str, count: usize, limit: usize) -> (usize, usize) {
    let streams: Vec<TcpStream> = (0..count)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    for stream in &streams {
        stream.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (mut closed, mut open) = (0, 0);
        for stream in &streams {
            match stream.peek(&mut [0u8; 1]) {
                Ok(0) => closed += 1,
                Ok(_) => open += 1,
                Err(e) if e.kind() == ErrorKind::WouldBlock => open += 1,
                Err(_) => closed += 1,
            }
        }
        if closed + limit >= count || Instant::now() >= deadline {
            return (closed, open);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `limit + over` connections from one address to `addr` (`what`): at least `over` of them are
/// closed, and some stay open.
fn assert_flood_refused(what: &str, addr: &str, limit: usize, over: usize) {
    let (closed, open) = flood(addr, limit + over, limit);
    assert!(
        closed >= over && open > 0,
        "{what}: {closed} of {} connections closed, {open} open",
        limit + over
    );
}

fn frame_header(length: u32, kind: u8) -> Vec<u8> {
    let mut out = length.to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(&[0u8; 11]);
    out
}

fn hello() -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    let hello = vbs_wire::proto::Hello {
        min_version: vbs_wire::proto::MIN_PROTOCOL_VERSION,
        max_version: vbs_wire::proto::PROTOCOL_VERSION,
        peer: vbs_wire::proto::PeerKind::Client,
        name: "hostile".into(),
    };
    vbs_wire::proto::encode(&mut buf, 0, &vbs_wire::proto::Frame::Hello(hello));
    buf.to_vec()
}

/// `(method, path, body)` cases for every route; `None` body means no body.
fn http_cases() -> Vec<(Method, String, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Nesting inside a field: a body type that skips unknown fields still has to walk it, which
    // only the JSON parser's nesting limit keeps from exhausting the stack.
    let deep_field = format!(
        "{{\"name\":\"v\",\"unknown\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge = vec![b'x'; 2 << 20];
    let long_name = "a".repeat(10_000);
    let mut cases = Vec::new();
    for path in [
        "/v1/nodes",
        "/v1/notifications",
        "/v1/volumes",
        "/v1/managers",
        "/v1/nodes/n1/heartbeat",
        "/v1/nodes/n1/drain",
        "/v1/volumes/v/slices/0/accept-loss",
    ] {
        cases.push((Method::POST, path.to_string(), b"{not json".to_vec()));
        cases.push((Method::POST, path.to_string(), deep.clone().into_bytes()));
        cases.push((
            Method::POST,
            path.to_string(),
            deep_field.clone().into_bytes(),
        ));
        cases.push((Method::POST, path.to_string(), huge.clone()));
        cases.push((
            Method::POST,
            path.to_string(),
            br#"{"kind":"unresponsive","source":{"client":1},"units":"x"}"#.to_vec(),
        ));
        cases.push((
            Method::POST,
            path.to_string(),
            br#"{"name":"v","size_bytes":-1,"replicas":99999999999}"#.to_vec(),
        ));
        cases.push((Method::POST, path.to_string(), vec![0xff, 0xfe, 0x00, 0x80]));
        cases.push((Method::PUT, path.to_string(), Vec::new()));
    }
    for path in [
        format!("/v1/volumes/{long_name}"),
        "/v1/volumes/..%2F..%2Fetc".to_string(),
        "/v1/volumes/%00".to_string(),
        "/v1/managers/notanumber".to_string(),
        "/v1/volumes/keep/slices/99999999999/accept-loss".to_string(),
        "/v1/volumes/keep/slices/-1/accept-loss".to_string(),
        "/v1/managers/99999999999999999999999".to_string(),
        format!("/v1/nodes/{long_name}/heartbeat"),
        "/v1/status?local=maybe".to_string(),
        "/ui/../../etc/passwd".to_string(),
        "/nowhere".to_string(),
    ] {
        for method in [Method::GET, Method::DELETE, Method::POST] {
            cases.push((method, path.clone(), b"{}".to_vec()));
        }
    }
    for path in ["/raft/append", "/raft/vote", "/raft/snapshot"] {
        cases.push((Method::POST, path.to_string(), vec![0x13; 4096]));
        cases.push((Method::POST, path.to_string(), huge.clone()));
        cases.push((Method::POST, path.to_string(), b"{}".to_vec()));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_surface_changes_nothing_and_stops_nothing() {
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    let out = cluster
        .vbs(&[
            "volume",
            "create",
            "keep",
            "--size",
            "8M",
            "--replicas",
            "2",
            "--slice-size",
            "4M",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: Vec<u8> = (0..(8 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = cluster.dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    let out = cluster
        .vbs(&[
            "write",
            "keep",
            "--offset",
            "0",
            "--file",
            file.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = cluster.status().await.unwrap();

    // Every HTTP route of every manager: refused with a 4xx, never a 5xx, never a crash. Each
    // request on a connection of its own: a server that refuses an oversized body before reading
    // it closes the connection, and a pooled connection would carry the next case into that close.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for id in cluster.manager_ids() {
        for (method, path, body) in http_cases() {
            let url = format!("http://{}{path}", cluster.manager_addr(id));
            let oversized = body.len() > 1 << 20;
            let len = body.len();
            let response = match http.request(method.clone(), &url).body(body).send().await {
                Ok(response) => response,
                // A server may answer 413 and close before an oversized body is all sent; the
                // client then sees the connection reset. Either is a refusal.
                Err(_) if oversized => continue,
                Err(e) => panic!("{method} {path} on manager {id} ({len} bytes): {e:?}"),
            };
            if oversized && path.starts_with("/v1/") {
                assert_eq!(
                    response.status(),
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "{method} {path}"
                );
                continue;
            }
            let status = response.status();
            assert!(
                status.is_client_error() || (status.is_success() && method == Method::GET),
                "{method} {path} on manager {id} answered {status}"
            );
            if status.is_client_error() && status != StatusCode::METHOD_NOT_ALLOWED {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                assert!(
                    body["error"].is_string(),
                    "{method} {path}: error body {body}"
                );
            }
        }
        assert!(cluster.manager_running(id), "manager {id} died");
    }

    // Every storage node's data plane.
    let mut hostile: Vec<Vec<u8>> = vec![
        (0..1024u32).map(|i| (i * 7) as u8).collect(),
        frame_header(u32::MAX, 0x11),
        [hello(), frame_header(12, 0x77)].concat(),
        [hello(), frame_header(4096 + 32, 0x11), vec![1u8; 100]].concat(),
        [hello(), hello()].concat(),
        frame_header(4, 0x01),
    ];
    // A write claiming more blocks than the limit.
    let mut write = [hello(), frame_header(12 + 20 + 12, 0x11)].concat();
    write.extend_from_slice(&[0u8; 20]);
    write.extend_from_slice(&0u64.to_le_bytes());
    write.extend_from_slice(&u32::MAX.to_le_bytes());
    hostile.push(write);
    for name in cluster.storage_names() {
        let addr = cluster.storage_addr(&name).to_string();
        for bytes in &hostile {
            raw(&addr, bytes);
        }
        // A flood of connections from one address: those over the limit are closed at once,
        // the others stay open, and the node keeps serving.
        let limit = vbs_wire::admission::DEFAULT_CONNECTIONS_PER_ADDRESS;
        assert_flood_refused(&name, &addr, limit, 44);
    }

    // The NBD gateway.
    let gateway = NbdGateway::start(&cluster, "keep").await.unwrap();
    let nbd = gateway.addr.clone();
    let option = |magic: u64, option: u32, length: u32| {
        let mut out = 3u32.to_be_bytes().to_vec(); // client flags
        out.extend_from_slice(&magic.to_be_bytes());
        out.extend_from_slice(&option.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
        out
    };
    let mut request = 3u32.to_be_bytes().to_vec();
    request.extend(option(client::nbd::wire::IHAVEOPT, 1, 4).split_off(4));
    request.extend_from_slice(b"keep");
    request.extend_from_slice(&client::nbd::wire::REQUEST_MAGIC.to_be_bytes());
    request.extend_from_slice(&[0, 0, 0, 1]); // write
    request.extend_from_slice(&7u64.to_be_bytes());
    request.extend_from_slice(&0u64.to_be_bytes());
    request.extend_from_slice(&u32::MAX.to_be_bytes());
    for bytes in [
        vec![0x55; 600],
        option(0x1234, 7, 0),
        option(client::nbd::wire::IHAVEOPT, 7, u32::MAX),
        option(client::nbd::wire::IHAVEOPT, 1, 9),
        request,
    ] {
        raw(&nbd, &bytes);
    }
    assert_flood_refused("NBD", &nbd, client::nbd::MAX_CONNECTIONS_PER_ADDRESS, 36);
    assert!(
        TcpStream::connect(&nbd).is_ok(),
        "the gateway still accepts"
    );
    drop(gateway);

    // Everything still serves, and nothing changed.
    for name in cluster.storage_names() {
        assert!(
            cluster.storage_node_running(&name),
            "storage node {name} died"
        );
    }
    let back = cluster.dir.path().join("back.bin");
    let out = cluster
        .vbs(&[
            "read",
            "keep",
            "--offset",
            "0",
            "--length",
            "8M",
            "--out",
            back.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == data, "the volume changed");
    let after = cluster.status().await.unwrap();
    assert_eq!(
        replicated_volumes(&after),
        replicated_volumes(&before),
        "the volume map changed"
    );
    assert!(after.volumes[0]
        .slices
        .iter()
        .flat_map(|s| &s.copies)
        .all(|c| c.status == CopyStatus::Current));
}
