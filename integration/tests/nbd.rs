//! `vbs nbd` driven by block tools nobody here wrote: qemu-io, qemu-img (Debian's qemu-utils)
//! and e2fsprogs, against a real cluster.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use client::nbd::wire;
use integration::gateway::NbdGateway;
use integration::user::qemu_io_ok;
use integration::{Cluster, ClusterOptions};

const STARTUP: Duration = Duration::from_secs(30);

/// `program` from Debian's `package`, installed when missing.
fn tool(program: &str, package: &str) -> String {
    integration::tools::ensure(program, package)
        .unwrap_or_else(|e| panic!("{program} is needed (Debian package {package}): {e:#}"))
        .to_string_lossy()
        .into_owned()
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn cluster_with_export(volume: &str, size: &str) -> (Cluster, NbdGateway, String) {
    cluster_exporting(volume, size, "16M", &[]).await
}

/// A cluster of 3 storage nodes (managers started with `manager_args`), a volume of `size` in
/// slices of `slice` with 2 replicas, and an NBD server whose default export it is.
async fn cluster_exporting(
    volume: &str,
    size: &str,
    slice: &str,
    manager_args: &[&str],
) -> (Cluster, NbdGateway, String) {
    let cluster = Cluster::start(ClusterOptions {
        storage_nodes: 3,
        manager_args: manager_args.iter().map(|a| a.to_string()).collect(),
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster.wait_for_storage_up(STARTUP).await.unwrap();
    create_volume(&cluster, volume, size, slice);
    let gateway = NbdGateway::start(&cluster, volume).await.unwrap();
    let url = gateway.url.clone();
    (cluster, gateway, url)
}

fn create_volume(cluster: &Cluster, volume: &str, size: &str, slice: &str) {
    cluster.create_volume(volume, size, "2", slice).unwrap();
}

fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_read_back_including_unaligned_ones() {
    let qemu_io = tool("qemu-io", "qemu-utils");
    let (_cluster, _gateway, url) = cluster_with_export("pat", "64M").await;
    let out = run(
        &qemu_io,
        &[
            "-f",
            "raw",
            &url,
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0x5c 20M 64k",
            "-c",
            "write -P 0xcd 1536 1000",
            "-c",
            "write -z 40M 8k",
            "-c",
            "read -P 0xab 0 1536",
            "-c",
            "read -P 0xcd 1536 1000",
            "-c",
            "read -P 0xab 2536 1046040",
            "-c",
            "read -P 0x5c 20M 64k",
            "-c",
            "read -P 0 40M 8k",
            "-c",
            "flush",
            "-c",
            "discard 20M 64k",
            "-c",
            "read -P 0 20M 64k",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("verification failed"), "{text}");
    assert!(!text.contains("failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_converted_in_and_out_is_identical_and_ext4_checks_clean() {
    let qemu_img = tool("qemu-img", "qemu-utils");
    let mkfs = tool("mkfs.ext4", "e2fsprogs");
    let fsck = tool("e2fsck", "e2fsprogs");
    let (cluster, _gateway, url) = cluster_with_export("img", "64M").await;
    let dir = cluster.dir.path();

    // A filesystem image with files in it, made without mounting anything.
    let image = dir.join("fs.img");
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..20 {
        let data: Vec<u8> = (0..100_000u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8)
            .collect();
        std::fs::write(files.join(format!("file-{i}")), data).unwrap();
    }
    run(
        &qemu_img,
        &["create", "-f", "raw", image.to_str().unwrap(), "64M"],
    );
    run(
        &mkfs,
        &[
            "-q",
            "-F",
            "-d",
            files.to_str().unwrap(),
            image.to_str().unwrap(),
        ],
    );

    run(
        &qemu_img,
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            image.to_str().unwrap(),
            &url,
        ],
    );
    let back = dir.join("back.img");
    run(
        &qemu_img,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &url,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(
        sha256(&image),
        sha256(&back),
        "the image did not come back identical"
    );
    run(&fsck, &["-fn", back.to_str().unwrap()]);

    // qemu-img bench: durable 4 KiB writes at depth 32, a flush every 32.
    let out = run(
        &qemu_img,
        &[
            "bench",
            "-f",
            "raw",
            "-t",
            "none",
            "-w",
            "-s",
            "4096",
            "-c",
            "2000",
            "-d",
            "32",
            "--flush-interval=32",
            &url,
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Run completed"));
}

/// The output of `nbdinfo --json ARGS`.
fn nbdinfo_json(args: &[&str]) -> serde_json::Value {
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    let out = run(&nbdinfo, &[&["--json"], args].concat());
    serde_json::from_slice(&out.stdout).expect("nbdinfo prints JSON")
}

/// Bytes of the export `url` that `nbdinfo --map` shows as data, and as holes.
fn mapped(url: &str) -> (u64, u64) {
    let map = nbdinfo_json(&["--map", url]);
    let (mut data, mut holes) = (0, 0);
    for extent in map.as_array().expect("a list of extents") {
        let length = extent["length"].as_u64().expect("a length");
        if extent["type"].as_u64().expect("a type") & 1 == 0 {
            data += length;
        } else {
            holes += length;
        }
    }
    (data, holes)
}

/// One server serves every volume by name, those created after it started too; block status
/// maps holes from the index; a whole-device discard is one request like any other; a volume
/// grown in use shows its new size to a new connection, and cannot shrink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_volume_is_an_export_with_holes_mapped_discards_served_and_growth_seen() {
    let (cluster, gateway, url) = cluster_exporting("big", "4G", "256M", &[]).await;

    // 1 MiB written in a 4 GiB volume: the map shows 1 MiB of data, the rest holes.
    qemu_io_ok(&url, &["write -P 0xab 3G 1M"]);
    assert_eq!(mapped(&url), (1 << 20, (4 << 30) - (1 << 20)));

    // A volume created now is listed and served by name.
    create_volume(&cluster, "later", "64M", "16M");
    let list = nbdinfo_json(&["--list", &format!("nbd://{}", gateway.addr)]);
    let names: Vec<&str> = list["exports"]
        .as_array()
        .expect("exports")
        .iter()
        .map(|e| e["export-name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, vec!["big", "later"], "{list}");
    let later = format!("nbd://{}/later", gateway.addr);

    // A whole-device discard, then a write and reads on the same connection.
    qemu_io_ok(
        &later,
        &[
            "write -P 0x5c 0 1M",
            "write -P 0x5c 40M 1M",
            "discard 0 64M",
            "write -P 0xcd 32M 1M",
            "read -P 0 0 1M",
            "read -P 0 40M 1M",
            "read -P 0xcd 32M 1M",
        ],
    );
    assert_eq!(mapped(&later), (1 << 20, (63 << 20)));

    // Grown while in use: a new connection sees the new size and can write past the old end.
    let nbdinfo = tool("nbdinfo", "libnbd-bin");
    let size = |url: &str| -> u64 {
        let out = run(&nbdinfo, &["--size", url]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    assert_eq!(size(&later), 64 << 20);
    let out = cluster
        .vbs(&["volume", "resize", "later", "--size", "100M"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(size(&later), 100 << 20);
    qemu_io_ok(
        &later,
        &[
            "write -P 0x77 90M 1M",
            "read -P 0x77 90M 1M",
            "read -P 0xcd 32M 1M",
        ],
    );
    // Shrinking is refused with one line, and changes nothing.
    let out = cluster
        .vbs(&["volume", "resize", "later", "--size", "64M"])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("vbs: ") && stderr.contains("cannot shrink"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(size(&later), 100 << 20);
}

/// Unmounts a FUSE mount point when dropped, and waits for the process that served it.
struct Mounted {
    point: std::path::PathBuf,
    server: std::process::Child,
}

impl Mounted {
    /// Starts `program args` (a FUSE server in the foreground) and waits until `check` holds.
    async fn start(
        point: &Path,
        program: &str,
        args: &[&str],
        check: impl Fn() -> bool,
    ) -> Mounted {
        let server = Command::new(program)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let mounted = Mounted {
            point: point.to_path_buf(),
            server,
        };
        integration::wait_until(&format!("{program} to mount"), STARTUP, || async {
            Ok::<_, anyhow::Error>(check().then_some(()))
        })
        .await
        .unwrap();
        mounted
    }

    fn is_mounted(point: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let point = point.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(1) == Some(&*point))
    }

    /// Unmounts and waits for the server to exit (fuse2fs writes its last blocks then).
    fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if Mounted::is_mounted(&self.point) {
            let _ = Command::new("fusermount3")
                .args(["-u", self.point.to_str().unwrap()])
                .status();
        }
        let _ = self.server.wait();
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `mkfs.ext4` on an export through `nbdfuse` (it discards the whole device first), files
/// written through `fuse2fs`, and `e2fsck -fn` clean, then again once a storage node is killed:
/// the reads fail over and every file reads back the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkfs_ext4_through_nbdfuse_checks_clean_before_and_after_a_node_is_killed() {
    let nbdfuse = tool("nbdfuse", "libnbd-bin");
    let fuse2fs = tool("fuse2fs", "fuse2fs");
    tool("fusermount3", "fuse3");
    let mkfs = tool("mkfs.ext4", "e2fsprogs");
    let fsck = tool("e2fsck", "e2fsprogs");
    let (mut cluster, _gateway, url) =
        cluster_exporting("fs", "512M", "64M", &["--lease", "2s"]).await;
    let dir = cluster.dir.path().to_path_buf();
    let (nbd_mount, fs_mount, files) = (dir.join("nbd"), dir.join("fs"), dir.join("files"));
    for d in [&nbd_mount, &fs_mount, &files] {
        std::fs::create_dir_all(d).unwrap();
    }
    let disk = nbd_mount.join("disk");
    let disk_path = disk.to_str().unwrap().to_string();
    let device = Mounted::start(&nbd_mount, &nbdfuse, &[&disk_path, &url], || disk.exists()).await;

    run(&mkfs, &["-q", "-F", &disk_path]);
    let mut sums = Vec::new();
    for i in 0..24u32 {
        let len = 1000 + i as usize * 37_000;
        let data: Vec<u8> = (0..len)
            .map(|j| {
                (j as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(i)
                    .to_le_bytes()[1]
            })
            .collect();
        let name = format!("file-{i}");
        std::fs::write(files.join(&name), &data).unwrap();
        sums.push((name, sha256(&files.join(format!("file-{i}")))));
    }
    let fs_path = fs_mount.to_str().unwrap().to_string();
    let fs = Mounted::start(
        &fs_mount,
        &fuse2fs,
        &["-f", "-o", "fakeroot", &disk_path, &fs_path],
        || Mounted::is_mounted(&fs_mount),
    )
    .await;
    for (name, _) in &sums {
        std::fs::copy(files.join(name), fs_mount.join(name)).unwrap();
    }
    fs.unmount();
    let check = || {
        let out = Command::new(&fsck)
            .args(["-fn", &disk_path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn: exit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    check();

    // A storage node dies; its primaries fail over, and the filesystem is the same.
    let status = cluster.status().await.unwrap();
    let victim = status.volumes[0].slices[0].primary.clone();
    cluster.storage_node(&victim.0).unwrap().kill();
    check();
    let fs = Mounted::start(
        &fs_mount,
        &fuse2fs,
        &["-f", "-o", "ro,fakeroot", &disk_path, &fs_path],
        || Mounted::is_mounted(&fs_mount),
    )
    .await;
    for (name, sum) in &sums {
        assert_eq!(
            &sha256(&fs_mount.join(name)),
            sum,
            "{name} read back differs"
        );
    }
    fs.unmount();
    device.unmount();
}

/// fio's `nbd` engine writes with `--verify=crc32c` and reads everything back while the
/// slice's primary is killed and, once the slice failed over, started again (it resyncs and
/// rejoins under the verify reads). fio sees no error, and no IO waits longer than the lease
/// plus 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_verifies_every_block_while_the_primary_is_killed_and_restarted() {
    let fio = tool("fio", "fio");
    let lease = Duration::from_secs(2);
    let (mut cluster, _gateway, url) =
        cluster_exporting("fio", "48M", "64M", &["--lease", "2s"]).await;
    let report_path = cluster.dir.path().join("fio.json");
    let job = Command::new(&fio)
        // fio saves its verify state in its working directory.
        .current_dir(cluster.dir.path())
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=48M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
            &format!("--output={}", report_path.display()),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Kill the primary once a few thousand writes went through it.
    let before = cluster.status().await.unwrap().volumes[0].slices[0].clone();
    let watched = &cluster;
    integration::wait_until(
        "2000 writes on the primary",
        Duration::from_secs(60),
        || async move {
            let slice = watched.status().await?.volumes[0].slices[0].clone();
            let written = slice.copies.iter().filter_map(|c| c.reported_vba).max();
            Ok::<_, anyhow::Error>(written.filter(|v| v.0 >= 2000).map(|_| ()))
        },
    )
    .await
    .unwrap();
    let old = &before.primary;
    cluster.storage_node(&old.0).unwrap().kill();
    let watched = &cluster;
    integration::wait_until(
        "the slice to fail over",
        Duration::from_secs(30),
        || async move {
            let slice = watched.status().await?.volumes[0].slices[0].clone();
            Ok::<_, anyhow::Error>((&slice.primary != old).then_some(()))
        },
    )
    .await
    .unwrap();
    cluster
        .storage_node(&before.primary.0)
        .unwrap()
        .restart()
        .unwrap();

    let out = tokio::task::spawn_blocking(move || job.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(&report_path).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report).expect("fio's JSON report");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    let longest_ns = ["read", "write"]
        .iter()
        .map(|dir| job[dir]["clat_ns"]["max"].as_u64().unwrap_or(0))
        .max()
        .unwrap();
    let longest = Duration::from_nanos(longest_ns);
    println!("longest IO under the kill: {longest:?}");
    assert!(
        longest <= lease + Duration::from_secs(5),
        "an IO waited {longest:?}, more than the lease plus 5 s"
    );
    assert!(
        job["read"]["io_bytes"].as_u64().unwrap() >= 48 << 20,
        "every block verified"
    );
}

/// A bare NBD client over a blocking socket, to send what real clients never do.
struct Raw {
    stream: std::net::TcpStream,
}

/// A reply: its error (0 for success) and its data (a read's bytes, or block status
/// descriptors as `(length, flags)` pairs), and the error message of a structured error.
#[derive(Debug, Default)]
struct RawReply {
    error: u32,
    data: Vec<u8>,
    descriptors: Vec<(u32, u32)>,
    message: String,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        stream.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        Raw { stream }
    }

    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0u8; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(buf[at..at + 4].try_into().unwrap())
    }

    /// Sends an option and collects its replies up to the final one: `(reply type, data)`.
    fn option(&mut self, option: u32, payload: &[u8]) -> Vec<(u32, Vec<u8>)> {
        use std::io::Write;
        let mut out = wire::IHAVEOPT.to_be_bytes().to_vec();
        out.extend(option.to_be_bytes());
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend(payload);
        self.stream.write_all(&out).unwrap();
        let mut replies = Vec::new();
        loop {
            let header = self.read_exact(20);
            let kind = Raw::u32_at(&header, 12);
            let data = self.read_exact(Raw::u32_at(&header, 16) as usize);
            let last = kind == wire::REP_ACK || kind & (1 << 31) != 0;
            replies.push((kind, data));
            if last {
                return replies;
            }
        }
    }

    fn name_payload(name: &str) -> Vec<u8> {
        let mut out = (name.len() as u32).to_be_bytes().to_vec();
        out.extend(name.as_bytes());
        out
    }

    fn go(&mut self, name: &str) -> Vec<(u32, Vec<u8>)> {
        let mut payload = Raw::name_payload(name);
        payload.extend(1u16.to_be_bytes());
        payload.extend(wire::INFO_BLOCK_SIZE.to_be_bytes());
        self.option(wire::OPT_GO, &payload)
    }

    fn set_meta_context(&mut self, name: &str, queries: &[&str]) -> Vec<(u32, Vec<u8>)> {
        let mut payload = Raw::name_payload(name);
        payload.extend((queries.len() as u32).to_be_bytes());
        for query in queries {
            payload.extend(Raw::name_payload(query));
        }
        self.option(wire::OPT_SET_META_CONTEXT, &payload)
    }

    /// Sends a request (with `payload` after it for a write) and reads its reply.
    fn request(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> RawReply {
        use std::io::Write;
        let mut out = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
        out.extend(flags.to_be_bytes());
        out.extend(command.to_be_bytes());
        out.extend(7u64.to_be_bytes());
        out.extend(offset.to_be_bytes());
        out.extend(length.to_be_bytes());
        out.extend(payload);
        self.stream.write_all(&out).unwrap();
        let read = command == 0;
        let magic = Raw::u32_at(&self.read_exact(4), 0);
        let mut reply = RawReply::default();
        if magic == wire::SIMPLE_REPLY_MAGIC {
            let rest = self.read_exact(12);
            reply.error = Raw::u32_at(&rest, 0);
            if read && reply.error == 0 {
                reply.data = self.read_exact(length as usize);
            }
            return reply;
        }
        assert_eq!(magic, wire::STRUCTURED_REPLY_MAGIC);
        loop {
            let header = self.read_exact(16);
            let flags = u16::from_be_bytes([header[0], header[1]]);
            let kind = u16::from_be_bytes([header[2], header[3]]);
            let body = self.read_exact(Raw::u32_at(&header, 12) as usize);
            match kind {
                wire::REPLY_TYPE_OFFSET_DATA => reply.data.extend(&body[8..]),
                wire::REPLY_TYPE_BLOCK_STATUS => {
                    for d in body[4..].chunks(8) {
                        reply
                            .descriptors
                            .push((Raw::u32_at(d, 0), Raw::u32_at(d, 4)));
                    }
                }
                wire::REPLY_TYPE_ERROR => {
                    reply.error = Raw::u32_at(&body, 0);
                    reply.message = String::from_utf8_lossy(&body[6..]).into_owned();
                }
                wire::REPLY_TYPE_NONE => {}
                other => panic!("unexpected reply chunk type {other}"),
            }
            if flags & wire::REPLY_FLAG_DONE != 0 {
                return reply;
            }
            assert_eq!(
                Raw::u32_at(&self.read_exact(4), 0),
                wire::STRUCTURED_REPLY_MAGIC
            );
        }
    }
}

/// Requests no real client sends: each gets the error the NBD protocol names for it, and the
/// connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_errors_the_protocol_names_and_the_connection_lives() {
    const SIZE: u64 = 64 << 20;
    const READ: u16 = 0;
    const WRITE: u16 = 1;
    const FLUSH: u16 = 3;
    const TRIM: u16 = 4;
    const BLOCK_STATUS: u16 = 7;
    let (_cluster, gateway, _url) = cluster_with_export("raw", "64M").await;
    let addr = gateway.addr.clone();
    let fail = tokio::task::spawn_blocking(move || {
        let mut nbd = Raw::connect(&addr);
        // Options: an unknown export, a list with data, contexts before structured replies.
        assert_eq!(nbd.go("nope").last().unwrap().0, wire::REP_ERR_UNKNOWN);
        assert_eq!(
            nbd.option(wire::OPT_LIST, b"x").last().unwrap().0,
            wire::REP_ERR_INVALID
        );
        let early = nbd.set_meta_context("raw", &["base:allocation"]);
        assert_eq!(early.last().unwrap().0, wire::REP_ERR_INVALID);
        assert_eq!(nbd.option(99, &[]).last().unwrap().0, wire::REP_ERR_UNSUP);
        assert_eq!(
            nbd.option(wire::OPT_STRUCTURED_REPLY, &[])[0].0,
            wire::REP_ACK
        );
        let replies = nbd.go("raw");
        assert_eq!(replies.last().unwrap().0, wire::REP_ACK);
        let sizes = replies
            .iter()
            .find(|(kind, data)| {
                *kind == wire::REP_INFO && data[..2] == wire::INFO_BLOCK_SIZE.to_be_bytes()
            })
            .expect("block sizes");
        let (min, preferred, max) = (
            Raw::u32_at(&sizes.1, 2),
            Raw::u32_at(&sizes.1, 6),
            Raw::u32_at(&sizes.1, 10),
        );
        assert_eq!((min, preferred, max), (1, 4096, 32 << 20));

        let cases: [(&str, u16, u16, u64, u32, u32); 8] = [
            (
                "a read past the end",
                READ,
                0,
                SIZE - 4096,
                8192,
                wire::EINVAL,
            ),
            ("a read of length 0", READ, 0, 0, 0, wire::EINVAL),
            ("a trim past the end", TRIM, 0, SIZE, 4096, wire::EINVAL),
            ("an unknown command", 42, 0, 0, 4096, wire::EINVAL),
            ("an unknown flag", READ, 1 << 9, 0, 4096, wire::EINVAL),
            ("a flush with a length", FLUSH, 0, 0, 4096, wire::EINVAL),
            (
                "block status with no context selected",
                BLOCK_STATUS,
                0,
                0,
                4096,
                wire::EINVAL,
            ),
            (
                "a read over the maximum payload",
                READ,
                0,
                0,
                (32 << 20) + 4096,
                wire::EOVERFLOW,
            ),
        ];
        for (what, command, flags, offset, length, errno) in cases {
            let reply = nbd.request(command, flags, offset, length, &[]);
            assert_eq!(reply.error, errno, "{what}: {reply:?}");
            assert!(!reply.message.is_empty(), "{what}: the error says why");
        }
        // Writes carry their payload whatever the answer: the stream stays in step.
        let past = nbd.request(WRITE, 0, SIZE - 4096, 8192, &[0x11; 8192]);
        assert_eq!(past.error, wire::ENOSPC, "{past:?}");
        let huge = vec![0x22; (32 << 20) + 4096];
        let oversized = nbd.request(WRITE, 0, 0, huge.len() as u32, &huge);
        assert_eq!(oversized.error, wire::EINVAL, "{oversized:?}");
        // An unaligned write is served, by read-modify-write.
        let block: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            nbd.request(WRITE, wire::CMD_FLAG_FUA, 8192, 4096, &block)
                .error,
            0
        );
        assert_eq!(nbd.request(WRITE, 0, 8192 + 100, 3, b"abc").error, 0);
        let back = nbd.request(READ, 0, 8192, 4096, &[]);
        assert_eq!(back.error, 0);
        let mut expected = block.clone();
        expected[100..103].copy_from_slice(b"abc");
        assert!(back.data == expected, "the unaligned write read back wrong");
        assert_eq!(nbd.request(FLUSH, 0, 0, 0, &[]).error, 0);

        // Another connection selects base:allocation: holes and data from the index.
        let mut nbd = Raw::connect(&addr);
        assert_eq!(
            nbd.option(wire::OPT_STRUCTURED_REPLY, &[])[0].0,
            wire::REP_ACK
        );
        let selected = nbd.set_meta_context("raw", &["base:allocation", "qemu:dirty-bitmap:x"]);
        assert_eq!(selected.len(), 2, "one context and the ACK: {selected:?}");
        assert_eq!(selected[0].0, wire::REP_META_CONTEXT);
        assert_eq!(&selected[0].1[4..], b"base:allocation");
        assert_eq!(nbd.go("raw").last().unwrap().0, wire::REP_ACK);
        let map = nbd.request(BLOCK_STATUS, 0, 0, SIZE as u32, &[]);
        assert_eq!(map.error, 0, "{map:?}");
        let hole = wire::STATE_HOLE | wire::STATE_ZERO;
        assert_eq!(
            map.descriptors,
            vec![(8192, hole), (4096, 0), (SIZE as u32 - 12288, hole)]
        );
        let one = nbd.request(BLOCK_STATUS, wire::CMD_FLAG_REQ_ONE, 4096, 4096, &[]);
        assert_eq!(one.descriptors, vec![(4096, hole)]);
        let unaligned = nbd.request(BLOCK_STATUS, 0, 8000, 4500, &[]);
        assert_eq!(
            unaligned.descriptors,
            vec![(192, hole), (4096, 0), (212, hole)]
        );
        let trimmed = nbd.request(TRIM, 0, 0, SIZE as u32, &[]);
        assert_eq!(trimmed.error, 0);
        let map = nbd.request(BLOCK_STATUS, 0, 0, SIZE as u32, &[]);
        assert_eq!(map.descriptors, vec![(SIZE as u32, hole)]);
        let back = nbd.request(READ, 0, 8192, 4096, &[]);
        assert!(
            back.data.iter().all(|b| *b == 0),
            "trimmed blocks read as zeroes"
        );
    })
    .await;
    if let Err(panic) = fail {
        std::panic::resume_unwind(panic.into_panic());
    }
}
