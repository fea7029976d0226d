//! The fuzz targets: every decoder that reads bytes from outside, each as a check that takes
//! arbitrary bytes and panics only when the decoder panics or accepts something inconsistent.
//!
//! Two fuzzers drive the same checks: the short seeded mutation fuzzing of `tests/fuzz.rs` (part
//! of `cargo test`, a few seconds a target), and the coverage-guided libFuzzer targets of
//! `integration/fuzz/` (`cargo fuzz`, run for hours by `.ci/fuzz`). Each target has seed inputs:
//! valid encodings that a mutation starts from.
//!
//! - [`frames`]: data-plane frames (`vbs_wire::proto::decode`);
//! - [`log_record`]: one log record (`storagenode::engine::record`);
//! - [`recovery`]: a unit written, its device's log segments damaged as the input says, then
//!   reopened;
//! - [`nbd_requests`]: NBD transmission requests and `NBD_OPT_GO` payloads.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use client::nbd::wire;
use storagenode::engine::backend::Backend;
use storagenode::engine::{record, Device, DeviceOptions, EngineError, MemoryBackend, Op};
use vbs_wire::proto::{
    self, ClientRequest, ErrorCode, Frame, Hello, HelloOk, PeerKind, PeerRequest, RecordBody,
    Request, Response, WireError, WireRecord,
};
use vbs_wire::types::{Generation, Lba, SliceIndex, UnitId, Vba, VolumeId, BLOCK_BYTES};

const BLOCK: usize = BLOCK_BYTES as usize;

/// The four targets by name, with their seeds and checks.
pub const TARGETS: [Target; 4] = [
    Target {
        name: "data_plane_frames",
        seeds: frame_seeds,
        check: frames,
    },
    Target {
        name: "log_records",
        seeds: record_seeds,
        check: log_record,
    },
    Target {
        name: "recovery_of_damaged_segments",
        seeds: recovery_seeds,
        check: recovery,
    },
    Target {
        name: "nbd_requests",
        seeds: nbd_seeds,
        check: nbd_requests,
    },
];

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    pub name: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub check: fn(&[u8]),
}

/// One of every kind of frame, encoded.
pub fn frame_seeds() -> Vec<Vec<u8>> {
    let unit = UnitId::new(3, 1);
    let g = Generation(2);
    let block = Bytes::from(vec![7u8; BLOCK]);
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
    let frames = [
        Frame::Hello(Hello {
            min_version: 1,
            max_version: 2,
            peer: PeerKind::Client,
            name: "fuzz".into(),
        }),
        Frame::HelloOk(HelloOk {
            version: 1,
            node: "n1".into(),
            challenge: None,
        }),
        Frame::Request(Request::Client(ClientRequest::Read {
            unit,
            generation: g,
            lba: Lba(2),
            blocks: 4,
        })),
        Frame::Request(Request::Client(ClientRequest::Write {
            unit,
            generation: g,
            lba: Lba(2),
            data: block.clone(),
        })),
        Frame::Request(Request::Client(ClientRequest::Trim {
            unit,
            generation: g,
            lba: Lba(2),
            blocks: 3,
        })),
        Frame::Request(Request::Client(ClientRequest::Flush {
            unit,
            generation: g,
        })),
        Frame::Request(Request::Client(ClientRequest::Allocation {
            unit,
            generation: g,
            lba: Lba(2),
            blocks: 300,
        })),
        Frame::Request(Request::Peer(PeerRequest::Replicate {
            unit,
            generation: g,
            committed: Vba(3),
            records: records.clone(),
        })),
        Frame::Request(Request::Peer(PeerRequest::ResendRange {
            unit,
            generation: g,
            after: Vba(1),
            until: Vba(5),
        })),
        Frame::Request(Request::Peer(PeerRequest::CatchUp {
            unit,
            generation: g,
            after: Vba(1),
            after_generation: g,
            max_bytes: 1 << 20,
            join: true,
        })),
        Frame::Response(Response::Read { data: block }),
        Frame::Response(Response::Write { first_vba: Vba(4) }),
        Frame::Response(Response::Allocation {
            extents: vec![
                vbs_wire::proto::Extent {
                    blocks: 2,
                    allocated: false,
                },
                vbs_wire::proto::Extent {
                    blocks: 298,
                    allocated: true,
                },
            ],
        }),
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
            WireError::new(ErrorCode::Hole, "x").with_detail(5),
        )),
    ];
    frames
        .iter()
        .map(|frame| {
            let mut buf = BytesMut::new();
            proto::encode(&mut buf, 42, frame);
            buf.to_vec()
        })
        .collect()
}

/// Decodes every frame `input` holds; whatever decodes must encode back to bytes that decode to
/// the same frame.
pub fn frames(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    while let Ok(Some((id, frame))) = proto::decode(&mut buf) {
        let mut again = BytesMut::new();
        proto::encode(&mut again, id, &frame);
        assert_eq!(
            proto::decode(&mut again),
            Ok(Some((id, frame))),
            "a decoded frame does not survive encoding again; input {input:02x?}"
        );
    }
}

/// The segment nonce the record target's records carry.
const RECORD_NONCE: u64 = 0x1234;

/// A write record and a trim record, encoded.
pub fn record_seeds() -> Vec<Vec<u8>> {
    let ops = [
        Op::Write {
            lba: Lba(3),
            data: Bytes::from(vec![5u8; BLOCK]),
        },
        Op::Trim {
            lba: Lba(0),
            blocks: 100,
        },
    ];
    ops.iter()
        .map(|op| {
            let mut buf = vec![0u8; op.record_bytes()];
            record::encode(&mut buf, op, 1, Generation(1), Vba(7), RECORD_NONCE, 4096);
            buf
        })
        .collect()
}

/// Decodes `input` as a log record, then again with its checksum made to match (so that the
/// checks behind the checksum are reached too): only a record whose checksum matches is
/// accepted, and an accepted record's fields are coherent.
pub fn log_record(input: &[u8]) {
    check_record(input);
    if input.len() >= record::HEADER_BYTES {
        let mut sealed = input.to_vec();
        record::seal_header(&mut sealed);
        let end = match record::decode_header(&sealed, RECORD_NONCE) {
            Ok(header) => header.record_bytes().min(sealed.len()),
            Err(_) => sealed.len(),
        };
        record::seal(&mut sealed[..end]);
        check_record(&sealed);
    }
    let _ = record::decode_header(input, RECORD_NONCE);
}

fn check_record(input: &[u8]) {
    let Ok(header) = record::decode(input, RECORD_NONCE) else {
        return;
    };
    assert!(
        header.record_bytes() <= input.len(),
        "a record past its bytes"
    );
    assert!(
        header.vba > Vba::ZERO && header.length % BLOCK_BYTES == 0 && header.length > 0,
        "an accepted record with impossible fields: {header:?}"
    );
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

/// Reads an input as a little program: missing bytes read as zero.
struct Cursor<'a> {
    input: &'a [u8],
}

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        match self.input.split_first() {
            Some((first, rest)) => {
                self.input = rest;
                *first
            }
            None => 0,
        }
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn is_empty(&self) -> bool {
        self.input.is_empty()
    }
}

const RECOVERY_UNIT: UnitId = UnitId {
    volume: VolumeId(1),
    slice: SliceIndex(0),
};
/// Blocks of the recovery target's unit that its writes touch.
const RECOVERY_BLOCKS: u64 = 32;

/// What a write with tag `tag` puts in block `lba`: what a recovered unit may return there.
fn tagged(lba: u64, tag: u64) -> Vec<u8> {
    let mut data = vec![0u8; BLOCK];
    data[..8].copy_from_slice(&lba.to_le_bytes());
    data[8..16].copy_from_slice(&tag.to_le_bytes());
    data
}

/// A few programs for [`recovery`].
pub fn recovery_seeds() -> Vec<Vec<u8>> {
    vec![
        // 40 writes, then a bit flip in the middle of the first segment.
        [
            &[39u8][..],
            &[5, 1].repeat(40),
            &[0, 0, 0x00, 0x80, 0, 0, 3],
        ]
        .concat(),
        // 60 writes and trims, then the newest segment cut short.
        [
            &[59u8][..],
            &[1, 0, 9, 4].repeat(30),
            &[1, 1, 0x10, 0x27, 0, 0],
        ]
        .concat(),
        // 20 writes, then zeroes over a record.
        [
            &[19u8][..],
            &[7, 2].repeat(20),
            &[2, 0, 0, 0x10, 0, 0, 0x40, 0x10],
        ]
        .concat(),
    ]
}

/// Writes a unit as `input` says (a count, then per operation a block and a kind), damages its
/// segment files as the rest says (bit flips, cuts, zeroed runs), and reopens it. Recovery must
/// either refuse with a corruption report, or open the unit so that every block reads as zeroes
/// or as one of the writes made to it, or names the damage, and invents no VBA.
pub fn recovery(input: &[u8]) {
    let mut program = Cursor { input };
    let options = DeviceOptions {
        segment_bytes: 64 << 10,
        spare_segments: 1,
        sync: true,
    };
    let backend = MemoryBackend::new(1 << 30);
    let written = {
        let (device, _) =
            Device::open(Arc::new(backend.clone()), &options).expect("a new memory device opens");
        let unit = device
            .create_unit(RECOVERY_UNIT, 256 * BLOCK_BYTES)
            .expect("a new unit is created");
        let count = 1 + u64::from(program.u8()) % 60;
        for tag in 1..=count {
            let lba = u64::from(program.u8()) % RECOVERY_BLOCKS;
            let kind = program.u8();
            let op = if kind % 10 == 9 {
                Op::Trim {
                    lba: Lba(lba),
                    blocks: 1 + u64::from(kind / 10) % 3,
                }
            } else {
                Op::Write {
                    lba: Lba(lba),
                    data: Bytes::from(tagged(lba, tag)),
                }
            };
            unit.append(Generation(1), vec![op])
                .expect("appending to a memory unit");
        }
        unit.last_vba()
    };
    let dir = storagenode::engine::log::LOG_DIR;
    let segments: Vec<String> = backend
        .list(dir)
        .expect("listing the log's files")
        .into_iter()
        .filter(|name| name.ends_with(".seg"))
        .collect();
    for _ in 0..4 {
        if program.is_empty() || segments.is_empty() {
            break;
        }
        let damage = program.u8() % 3;
        let path = format!(
            "{dir}/{}",
            segments[usize::from(program.u8()) % segments.len()]
        );
        let file = backend.open(&path).expect("opening a segment file");
        let size = file.size().expect("a segment's size");
        if size == 0 {
            continue;
        }
        let at = u64::from(program.u32()) % size;
        match damage {
            0 => {
                let mut byte = [0u8];
                file.read_at(&mut byte, at).expect("reading a byte");
                file.write_at(&[byte[0] ^ (1 << (program.u8() % 8))], at)
                    .expect("flipping a bit");
            }
            1 => file.set_size(at).expect("cutting the file"),
            _ => {
                let len = (1 + u64::from(program.u32()) % 8192).min(size - at);
                file.write_at(&vec![0u8; len as usize], at)
                    .expect("zeroing a run");
            }
        }
        file.sync().expect("syncing a memory file");
    }
    match Device::open(Arc::new(backend.clone()), &options) {
        Ok((device, _)) => {
            let unit = device.unit(RECOVERY_UNIT).expect("the unit is still there");
            assert!(unit.last_vba() <= written, "recovery invented VBAs");
            for lba in 0..RECOVERY_BLOCKS {
                match unit.read(Lba(lba), 1) {
                    Ok(data) => {
                        let zero = data.iter().all(|b| *b == 0);
                        let tag = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
                        assert!(
                            zero || data == tagged(lba, tag),
                            "LBA {lba} reads garbage after recovery"
                        );
                    }
                    Err(EngineError::Corrupt { .. } | EngineError::Damaged { .. }) => {}
                    Err(other) => panic!("LBA {lba}: unexpected error {other}"),
                }
            }
        }
        Err(
            EngineError::Corrupt { .. } | EngineError::CorruptLog { .. } | EngineError::Invalid(_),
        ) => {}
        Err(other) => panic!("recovery failed with {other}, not a corruption report"),
    }
}

/// A read request header and an `NBD_OPT_GO` payload.
pub fn nbd_seeds() -> Vec<Vec<u8>> {
    let mut request = vec![0u8; wire::REQUEST_BYTES];
    request[..4].copy_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
    let mut go = Vec::new();
    go.extend_from_slice(&4u32.to_be_bytes());
    go.extend_from_slice(b"demo");
    go.extend_from_slice(&1u16.to_be_bytes());
    go.extend_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
    vec![request, go]
}

/// Parses `input` as a transmission request header and as an `NBD_OPT_GO` payload: a request is
/// accepted only with its magic, a payload only when its lengths account for every byte.
pub fn nbd_requests(input: &[u8]) {
    if let Some(header) = input.get(..wire::REQUEST_BYTES) {
        let header: [u8; wire::REQUEST_BYTES] = header.try_into().expect("the header's length");
        if wire::parse_request(&header).is_ok() {
            assert_eq!(
                &header[..4],
                &wire::REQUEST_MAGIC.to_be_bytes(),
                "a request without its magic was accepted"
            );
        }
    }
    if let Some((name, infos)) = wire::parse_go(input) {
        assert_eq!(
            name.len() + 6 + infos.len() * 2,
            input.len(),
            "an NBD_OPT_GO payload with bytes unaccounted for was accepted"
        );
    }
}
