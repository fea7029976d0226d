//! Mutation fuzzing of every decoder that reads bytes from outside: data-plane frames, log records,
//! recovery of a unit from damaged segment files, and NBD requests. Each target starts from valid
//! inputs, mutates them (bit flips, random bytes, cuts, extensions, splices) and checks that the
//! decoder neither panics nor accepts something inconsistent.
//!
//! Each target runs for `VBS_FUZZ_SECONDS` (default 2) from seed `VBS_FUZZ_SEED` (default random,
//! printed). `.ci/fuzz` runs them for longer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use client::nbd::wire;
use client::proto::{
    self, Frame, Hello, HelloOk, PeerKind, RecordBody, Request, Response, WireError, WireRecord,
};
use client::types::{Generation, Lba, UnitId, Vba};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storagenode::engine::backend::Backend;
use storagenode::engine::{record, Device, DeviceOptions, EngineError, MemoryBackend, Op};

fn budget() -> Duration {
    let seconds = std::env::var("VBS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(seconds)
}

/// A seeded generator, its seed printed so a failure can be replayed.
fn rng(target: &str) -> StdRng {
    let seed = std::env::var("VBS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("fuzz {target}: seed {seed} (replay: VBS_FUZZ_SEED={seed} cargo test -p integration --test fuzz {target})");
    StdRng::seed_from_u64(seed)
}

/// One random mutation of `input`.
fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        match rng.random_range(0..7) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            2 if !out.is_empty() => {
                let cut = rng.random_range(0..out.len());
                out.truncate(cut);
            }
            3 => {
                let extra = rng.random_range(1..64);
                out.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            4 => {
                let other = &corpus[rng.random_range(0..corpus.len())];
                let at = rng.random_range(0..=out.len());
                let from = rng.random_range(0..=other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            5 if out.len() >= 8 => {
                // An interesting integer somewhere: lengths and counts are where decoders break.
                let i = rng.random_range(0..out.len() - 4);
                let value: u32 = [0, 1, 0xff, 0xffff, 0x7fff_ffff, u32::MAX, 4096, 1 << 20]
                    [rng.random_range(0..8)];
                out[i..i + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                let i = rng.random_range(0..=out.len());
                out.insert(i, rng.random());
            }
        }
    }
    out
}

fn frames() -> Vec<Frame> {
    let unit = UnitId::new(3, 1);
    let g = Generation(2);
    let block = Bytes::from(vec![7u8; 4096]);
    let records = vec![
        WireRecord {
            vba: Vba(9),
            generation: g,
            body: RecordBody::Write {
                lba: Lba(1),
                data: block.clone(),
            },
        },
        WireRecord {
            vba: Vba(10),
            generation: g,
            body: RecordBody::Trim {
                lba: Lba(0),
                blocks: 8,
            },
        },
    ];
    vec![
        Frame::Hello(Hello {
            min_version: 1,
            max_version: 1,
            peer: PeerKind::Client,
            name: "fuzz".into(),
        }),
        Frame::HelloOk(HelloOk {
            version: 1,
            node: "n1".into(),
            challenge: None,
        }),
        Frame::Request(Request::Read {
            unit,
            generation: g,
            lba: Lba(2),
            blocks: 4,
        }),
        Frame::Request(Request::Write {
            unit,
            generation: g,
            lba: Lba(2),
            data: block.clone(),
        }),
        Frame::Request(Request::Trim {
            unit,
            generation: g,
            lba: Lba(2),
            blocks: 3,
        }),
        Frame::Request(Request::Flush {
            unit,
            generation: g,
        }),
        Frame::Request(Request::Replicate {
            unit,
            generation: g,
            committed: Vba(3),
            records: records.clone(),
        }),
        Frame::Request(Request::ResendRange {
            unit,
            generation: g,
            after: Vba(1),
            until: Vba(5),
        }),
        Frame::Request(Request::CatchUp {
            unit,
            generation: g,
            after: Vba(1),
            after_generation: g,
            max_bytes: 1 << 20,
            join: true,
        }),
        Frame::Response(Response::Read { data: block }),
        Frame::Response(Response::Write { first_vba: Vba(4) }),
        Frame::Response(Response::Records {
            through: Vba(10),
            last_vba: Vba(10),
            done: true,
            remaining_records: 0,
            remaining_bytes: 0,
            joined: false,
            records,
        }),
        Frame::Response(Response::Error(
            WireError::new(proto::ErrorCode::Hole, "x").with_detail(5),
        )),
    ]
}

#[test]
fn data_plane_frames() {
    let mut rng = rng("data_plane_frames");
    let corpus: Vec<Vec<u8>> = frames()
        .iter()
        .map(|f| {
            let mut buf = BytesMut::new();
            proto::encode(&mut buf, 42, f);
            buf.to_vec()
        })
        .collect();
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let pick = rng.random_range(0..corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        let mut buf = BytesMut::from(&input[..]);
        // Decode every frame the bytes hold; whatever decodes must encode back to a frame that
        // decodes to the same thing.
        while let Ok(Some((id, frame))) = proto::decode(&mut buf) {
            let mut again = BytesMut::new();
            proto::encode(&mut again, id, &frame);
            assert_eq!(
                proto::decode(&mut again),
                Ok(Some((id, frame))),
                "input {input:02x?}"
            );
        }
        runs += 1;
    }
    println!("fuzz data_plane_frames: {runs} inputs");
}

#[test]
fn log_records() {
    let mut rng = rng("log_records");
    let nonce = 0x1234;
    let ops = [
        Op::Write {
            lba: Lba(3),
            data: Bytes::from(vec![5u8; 4096]),
        },
        Op::Trim {
            lba: Lba(0),
            blocks: 100,
        },
    ];
    let corpus: Vec<Vec<u8>> = ops
        .iter()
        .map(|op| {
            let mut buf = vec![0u8; op.record_bytes()];
            record::encode(&mut buf, op, Generation(1), Vba(7), nonce, 4096);
            buf
        })
        .collect();
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let pick = rng.random_range(0..corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        if let Ok(header) = record::decode(&input, nonce) {
            // Only a record whose checksum matches is accepted, and its fields are coherent.
            assert!(header.record_bytes() <= input.len());
            assert!(header.vba > Vba::ZERO && header.length % 4096 == 0 && header.length > 0);
            let mut head = input[..record::HEADER_BYTES].to_vec();
            head[8..12].fill(0);
            let crc = crc32c::crc32c_append(
                crc32c::crc32c(&head),
                &input[record::HEADER_BYTES..header.record_bytes()],
            );
            assert_eq!(
                crc, header.crc,
                "a record with a wrong checksum was accepted: {input:02x?}"
            );
        }
        let _ = record::decode_header(&input, nonce);
        runs += 1;
    }
    println!("fuzz log_records: {runs} inputs");
}

const UNIT: UnitId = UnitId {
    volume: client::types::VolumeId(1),
    slice: client::types::SliceIndex(0),
};

/// Block contents a write of tag `t` to `lba` has: what a recovered unit may return.
fn block(lba: u64, tag: u64) -> Vec<u8> {
    let mut data = vec![0u8; 4096];
    data[..8].copy_from_slice(&lba.to_le_bytes());
    data[8..16].copy_from_slice(&tag.to_le_bytes());
    data
}

#[test]
fn recovery_of_damaged_segments() {
    let mut rng = rng("recovery_of_damaged_segments");
    let options = DeviceOptions {
        segment_bytes: 64 << 10,
        spare_segments: 1,
        sync: true,
    };
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let backend = MemoryBackend::new(1 << 30);
        let written = {
            let (device, _) = Device::open(Arc::new(backend.clone()), &options).unwrap();
            let unit = device.create_unit(UNIT, 256 * 4096).unwrap();
            let count = rng.random_range(1..60u64);
            for tag in 1..=count {
                let lba = rng.random_range(0..32u64);
                let op = if rng.random_range(0..10) == 0 {
                    Op::Trim {
                        lba: Lba(lba),
                        blocks: rng.random_range(1..4),
                    }
                } else {
                    Op::Write {
                        lba: Lba(lba),
                        data: Bytes::from(block(lba, tag)),
                    }
                };
                unit.append(Generation(1), vec![op]).unwrap();
            }
            unit.last_vba()
        };
        // Damage the segment files at random.
        let dir = format!("units/{UNIT}");
        let segments: Vec<String> = backend
            .list(&dir)
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".seg"))
            .collect();
        for _ in 0..rng.random_range(1..4) {
            let path = format!("{dir}/{}", segments[rng.random_range(0..segments.len())]);
            let file = backend.open(&path).unwrap();
            let size = file.size().unwrap();
            match rng.random_range(0..3) {
                0 => {
                    let at = rng.random_range(0..size);
                    let mut byte = [0u8];
                    file.read_at(&mut byte, at).unwrap();
                    file.write_at(&[byte[0] ^ (1 << rng.random_range(0..8))], at)
                        .unwrap();
                }
                1 => file.set_size(rng.random_range(0..size)).unwrap(),
                _ => {
                    let at = rng.random_range(0..size);
                    let len = rng.random_range(1..8192).min(size - at);
                    file.write_at(&vec![0u8; len as usize], at).unwrap();
                }
            }
            file.sync().unwrap();
        }
        match Device::open(Arc::new(backend.clone()), &options) {
            Ok((device, _)) => {
                let unit = device.unit(UNIT).expect("the unit is still there");
                assert!(unit.last_vba() <= written, "recovery invented VBAs");
                // Every block reads as zeroes or as one of the writes made to it, or the read
                // names the damage; nothing else.
                for lba in 0..32u64 {
                    match unit.read(Lba(lba), 1) {
                        Ok(data) => {
                            let zero = data.iter().all(|b| *b == 0);
                            let tag = u64::from_le_bytes(data[8..16].try_into().unwrap());
                            assert!(zero || data == block(lba, tag), "LBA {lba} reads garbage");
                        }
                        Err(EngineError::Corrupt { .. }) => {}
                        Err(other) => panic!("LBA {lba}: unexpected error {other}"),
                    }
                }
            }
            Err(EngineError::Corrupt { .. } | EngineError::Invalid(_)) => {}
            Err(other) => panic!("recovery failed with {other}, not a corruption report"),
        }
        runs += 1;
    }
    println!("fuzz recovery_of_damaged_segments: {runs} damaged units");
}

#[test]
fn nbd_requests() {
    let mut rng = rng("nbd_requests");
    let mut request = vec![0u8; wire::REQUEST_BYTES];
    request[..4].copy_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
    let mut go = Vec::new();
    go.extend_from_slice(&4u32.to_be_bytes());
    go.extend_from_slice(b"demo");
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
    let corpus = vec![request, go];
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget() {
        let pick = rng.random_range(0..corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        if input.len() >= wire::REQUEST_BYTES {
            let header: [u8; wire::REQUEST_BYTES] =
                input[..wire::REQUEST_BYTES].try_into().unwrap();
            if let Ok(parsed) = wire::parse_request(&header) {
                assert_eq!(&header[..4], &wire::REQUEST_MAGIC.to_be_bytes());
                let _ = parsed;
            }
        }
        if let Some((name, infos)) = wire::parse_go(&input) {
            assert!(name.len() + 6 + infos.len() * 2 == input.len());
        }
        runs += 1;
    }
    println!("fuzz nbd_requests: {runs} inputs");
}
