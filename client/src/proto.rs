//! The data-plane protocol: binary, length-prefixed frames over TCP, pipelined (many requests in
//! flight per connection, matched by request id), versioned by a handshake. `docs/protocol.md`
//! describes every frame; this module is the only code that encodes or decodes them.
//!
//! Every frame is `length: u32` (bytes after this field) then `kind: u8`, `flags: u8` (0),
//! `reserved: u16` (0), `request_id: u64`, and the kind's payload, all little-endian. A response
//! carries the id of its request; responses may come back in any order.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::{Generation, Lba, SliceIndex, UnitId, Vba, VolumeId, BLOCK_BYTES};

/// Bytes of `length` + the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 4 + 12;
/// The most data one read or write request may carry: 1 MiB. Larger IO is split by the client.
pub const MAX_IO_BYTES: u64 = 1 << 20;
/// The largest frame either side accepts. A frame over it closes the connection.
pub const MAX_FRAME_BYTES: usize = 4 << 20;
/// Records one replicate or records frame may carry.
pub const MAX_RECORDS_PER_FRAME: usize = 1024;
/// The most extents one allocation answer carries; a longer map is answered in part.
pub const MAX_EXTENTS_PER_FRAME: usize = 64 << 10;
/// Requests one connection may have in flight; a client that sends more waits.
pub const MAX_IN_FLIGHT: usize = 256;

pub const PROTOCOL_MAGIC: [u8; 8] = *b"VBSDATA\0";
/// Versions this build speaks. The handshake settles on the highest both sides know.
/// Version 2 added authentication ([`Auth`]); a node that requires it refuses version 1.
pub const PROTOCOL_VERSION: u16 = 2;
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The first version whose handshake can authenticate.
pub const AUTH_PROTOCOL_VERSION: u16 = 2;
/// Bytes of each side's random nonce in the authentication step.
pub const AUTH_NONCE_BYTES: usize = 32;
/// Bytes of a proof: an HMAC-SHA256.
pub const AUTH_PROOF_BYTES: usize = 32;
const MAX_NAME_BYTES: usize = 255;

const _: () = assert!(MAX_IO_BYTES as usize + 1024 <= MAX_FRAME_BYTES);
const _: () = assert!(MAX_IO_BYTES % BLOCK_BYTES == 0);
const _: () = assert!(FRAME_HEADER_BYTES + 4 + MAX_EXTENTS_PER_FRAME * 9 <= MAX_FRAME_BYTES);

/// Frame kinds.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_OK: u8 = 0x02;
    pub const AUTH: u8 = 0x03;
    pub const AUTH_OK: u8 = 0x04;
    pub const READ: u8 = 0x10;
    pub const WRITE: u8 = 0x11;
    pub const FLUSH: u8 = 0x12;
    pub const TRIM: u8 = 0x13;
    pub const REPLICATE: u8 = 0x14;
    pub const RESEND_RANGE: u8 = 0x15;
    pub const CATCH_UP: u8 = 0x16;
    pub const ALLOCATION: u8 = 0x17;
    pub const FETCH_RECORD: u8 = 0x18;
    pub const SCRUB: u8 = 0x19;
    pub const SCRUB_RANGE: u8 = 0x1a;
    pub const SCRUB_REPAIR: u8 = 0x1b;
    pub const READ_OK: u8 = 0x90;
    pub const WRITE_OK: u8 = 0x91;
    pub const FLUSH_OK: u8 = 0x92;
    pub const TRIM_OK: u8 = 0x93;
    pub const REPLICATE_OK: u8 = 0x94;
    pub const RECORDS: u8 = 0x95;
    pub const ALLOCATION_OK: u8 = 0x96;
    pub const SCRUBBED: u8 = 0x97;
    pub const SCRUB_DIGEST: u8 = 0x98;
    pub const ERROR: u8 = 0xff;
}

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A compute node (the client library).
    Client = 1,
    /// Another storage node (replication, resend, catch-up).
    Node = 2,
}

/// The first frame on a connection, from the side that connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub peer: PeerKind,
    /// The connecting side's name (node id or client name), for logs.
    pub name: String,
}

/// The server's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    /// The storage node's id.
    pub node: String,
    /// From version 2: the node's nonce when it requires authentication, to be answered with
    /// [`Auth`] before any request. `None`: the node is open (and cannot prove anything).
    pub challenge: Option<[u8; AUTH_NONCE_BYTES]>,
}

/// The connecting side's answer to a challenge: its own nonce and the proof that it knows the
/// cluster secret (`client::security::Token::client_proof`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub nonce: [u8; AUTH_NONCE_BYTES],
    pub proof: [u8; AUTH_PROOF_BYTES],
}

/// The node's proof back, over both nonces the other way round: the connecting side learns it
/// talks to a member of the cluster, not to whoever answered on the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthOk {
    pub proof: [u8; AUTH_PROOF_BYTES],
}

/// One record of a unit's log, as replication, resend and catch-up carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRecord {
    pub vba: Vba,
    pub generation: Generation,
    pub body: RecordBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody {
    /// One block.
    Write {
        lba: Lba,
        data: Bytes,
    },
    Trim {
        lba: Lba,
        blocks: u64,
    },
}

impl RecordBody {
    fn wire_bytes(&self) -> usize {
        match self {
            RecordBody::Write { data, .. } => 8 + 8 + 1 + 8 + 8 + data.len(),
            RecordBody::Trim { .. } => 8 + 8 + 1 + 8 + 8,
        }
    }
}

/// Requests. Every one names the unit and the generation of its slice the sender knows; a
/// storage node refuses a generation older than its own (fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `blocks` blocks from `lba` (client -> primary).
    Read {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u32,
    },
    /// Write whole blocks at `lba` (client -> primary). Acknowledged once durable on the primary
    /// and on every current secondary.
    Write {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        data: Bytes,
    },
    /// A barrier: answered once every write acknowledged before it is durable on every current
    /// copy (which acknowledgement already implies) and the primary still holds its lease.
    Flush {
        unit: UnitId,
        generation: Generation,
    },
    /// Trim `blocks` blocks from `lba` (client -> primary).
    Trim {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u64,
    },
    /// Which of `blocks` blocks from `lba` hold data, from the index alone (client -> primary).
    Allocation {
        unit: UnitId,
        generation: Generation,
        lba: Lba,
        blocks: u64,
    },
    /// Records the primary numbered, in VBA order (primary -> secondary). `committed` is the VBA up
    /// to which every copy holds the log (what the secondary may compact under).
    Replicate {
        unit: UnitId,
        generation: Generation,
        committed: Vba,
        records: Vec<WireRecord>,
    },
    /// Every VBA in `(after, until]` (secondary -> primary, to fill a hole).
    ResendRange {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        until: Vba,
    },
    /// The live records after `after`, up to about `max_bytes` (a returning copy -> primary).
    /// `after_generation` is the generation the copy holds at `after` (0 when `after` is 0): a
    /// primary whose history differs there answers `Conflict` with its committed VBA as `detail`.
    /// With `join`, a copy that is nearly caught up asks for the rest at once: the primary stops
    /// numbering writes, sends everything up to its last VBA, and from then on forwards every new
    /// write to the copy and waits for it (`Records::joined`).
    CatchUp {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        after_generation: Generation,
        max_bytes: u32,
        join: bool,
    },
    /// The live record at `vba`, checked against its checksum (a copy that found its own record
    /// damaged -> another current copy, for read repair). Answered with `Records` holding that
    /// record, or none when it is no longer live there.
    FetchRecord {
        unit: UnitId,
        generation: Generation,
        vba: Vba,
    },
    /// Scrub one slice (client -> primary): every current copy reads its live records up to the
    /// VBA every copy holds back and checks them, damage is repaired from a good copy, and the
    /// copies are compared by digests over VBA ranges. Answered with `Scrubbed` when done.
    Scrub {
        unit: UnitId,
        generation: Generation,
    },
    /// This copy's digest of its live records in `(after, through]`, each checked (and a
    /// damaged one repaired) first (primary -> current copy, during a scrub).
    ScrubRange {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        through: Vba,
    },
    /// The primary's live records in `(after, through]`, for a copy whose digest of the range
    /// differs (primary -> current copy): the copy replaces each record of the same VBA that
    /// differs with the primary's (fetched with `FetchRecord`) and answers with its new digest.
    ScrubRepair {
        unit: UnitId,
        generation: Generation,
        after: Vba,
        through: Vba,
        entries: Vec<ScrubEntry>,
    },
}

/// One live record as a scrub compares it: VBA, generation and content checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubEntry {
    pub vba: Vba,
    pub generation: Generation,
    pub crc: u32,
}

/// The most entries a `ScrubRepair` carries.
pub const MAX_SCRUB_ENTRIES: usize = 65_536;

/// What a scrub of one slice found (see [`Request::Scrub`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// The scrub covered VBAs up to this one (what every copy held when it started).
    pub through: Vba,
    /// Live records and bytes read back, over every copy.
    pub records: u64,
    pub bytes: u64,
    /// Records found damaged on any copy; of them, those repaired from a good copy.
    pub damaged: u64,
    pub repaired: u64,
    /// VBA ranges where a copy's digest differed from the primary's (after retries).
    pub mismatched: u64,
    /// Copies compared with the primary's.
    pub copies: u32,
}

impl Request {
    pub fn unit(&self) -> UnitId {
        match self {
            Request::Read { unit, .. }
            | Request::Write { unit, .. }
            | Request::Flush { unit, .. }
            | Request::Trim { unit, .. }
            | Request::Allocation { unit, .. }
            | Request::Replicate { unit, .. }
            | Request::ResendRange { unit, .. }
            | Request::CatchUp { unit, .. }
            | Request::FetchRecord { unit, .. }
            | Request::Scrub { unit, .. }
            | Request::ScrubRange { unit, .. }
            | Request::ScrubRepair { unit, .. } => *unit,
        }
    }

    pub fn generation(&self) -> Generation {
        match self {
            Request::Read { generation, .. }
            | Request::Write { generation, .. }
            | Request::Flush { generation, .. }
            | Request::Trim { generation, .. }
            | Request::Allocation { generation, .. }
            | Request::Replicate { generation, .. }
            | Request::ResendRange { generation, .. }
            | Request::CatchUp { generation, .. }
            | Request::FetchRecord { generation, .. }
            | Request::Scrub { generation, .. }
            | Request::ScrubRange { generation, .. }
            | Request::ScrubRepair { generation, .. } => *generation,
        }
    }
}

/// What went wrong, as the client must tell apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request's generation is older than the slice's; `detail` is the current generation.
    /// Refresh the volume map.
    StaleGeneration = 1,
    /// This node is not the slice's primary (or its lease ran out). Refresh the volume map.
    NotPrimary = 2,
    /// This copy is not current, so it must not serve.
    NotCurrent = 3,
    /// The blocks are outside the unit.
    OutOfRange = 4,
    /// The request is larger than the protocol allows.
    TooLarge = 5,
    /// Temporarily unable to serve (starting, unit not yet assigned here, manager unreachable).
    /// Retry after a short wait.
    Unavailable = 6,
    /// A replicated VBA is beyond the next one expected; `detail` is the expected VBA.
    Hole = 7,
    /// A replicated VBA is already held with another generation or content.
    Conflict = 8,
    /// Malformed or impossible request.
    BadRequest = 9,
    /// This node does not hold the unit.
    UnknownUnit = 10,
    /// A failure inside the node (disk error).
    Internal = 11,
    /// The handshake did not authenticate (no proof, or a wrong one). The connection is closed.
    Unauthorized = 12,
    /// The data fails its checksum on this copy and on every other copy the node tried: it
    /// cannot be served. The message names the block, the VBA and the copies tried.
    Damaged = 13,
    /// The storage node's device has no room for the write: nothing was written, and the copy
    /// stays current. The same write succeeds once space comes back.
    NoSpace = 14,
}

impl ErrorCode {
    fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => StaleGeneration,
            2 => NotPrimary,
            3 => NotCurrent,
            4 => OutOfRange,
            5 => TooLarge,
            6 => Unavailable,
            7 => Hole,
            8 => Conflict,
            9 => BadRequest,
            10 => UnknownUnit,
            11 => Internal,
            12 => Unauthorized,
            13 => Damaged,
            14 => NoSpace,
            _ => return None,
        })
    }
}

/// An error response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct WireError {
    pub code: ErrorCode,
    /// Extra number the code defines (the current generation, the expected VBA), else 0.
    pub detail: u64,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            detail: 0,
            message: message.into(),
        }
    }

    pub fn with_detail(mut self, detail: u64) -> WireError {
        self.detail = detail;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Read {
        data: Bytes,
    },
    /// The VBA given to the write's first block.
    Write {
        first_vba: Vba,
    },
    Flush,
    Trim {
        vba: Vba,
    },
    /// The highest VBA the secondary holds after applying the frame.
    Replicate {
        last_vba: Vba,
    },
    /// Records answering a resend or catch-up: every live record in `(after, through]`.
    /// `last_vba` is the sender's highest durable VBA; `done` says `through` reached it.
    /// `remaining_*` count the live records after `through` (catch-up only). `joined`: the copy
    /// was joined (see [`Request::CatchUp`]).
    Records {
        through: Vba,
        last_vba: Vba,
        done: bool,
        remaining_records: u64,
        remaining_bytes: u64,
        joined: bool,
        records: Vec<WireRecord>,
    },
    /// Runs of blocks from the request's LBA on, each all holding data or all not (never
    /// written, or trimmed: they read as zeroes). They cover the request's blocks, or a prefix
    /// of them when there were more than [`MAX_EXTENTS_PER_FRAME`] runs.
    Allocation {
        extents: Vec<Extent>,
    },
    Scrubbed(ScrubReport),
    /// A copy's digest of a range (see [`Request::ScrubRange`]); `damaged`: its records that
    /// failed their checksum, of which it `repaired` some from another copy first.
    ScrubDigest {
        records: u64,
        bytes: u64,
        digest: u32,
        damaged: u64,
        repaired: u64,
    },
    Error(WireError),
}

/// A run of blocks of one allocation status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub blocks: u64,
    /// The blocks hold written data; `false`: they read as zeroes without a record to read.
    pub allocated: bool,
}

/// A frame as read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    HelloOk(HelloOk),
    Auth(Auth),
    AuthOk(AuthOk),
    Request(Request),
    Response(Response),
}

/// Why bytes are not a valid frame. The connection that sent them is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes is over the {MAX_FRAME_BYTES}-byte limit")]
    FrameTooLarge(usize),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("frame kind {kind:#04x} is cut short or malformed: {what}")]
    Malformed { kind: u8, what: &'static str },
    #[error("not a vbs data-plane connection (bad magic)")]
    BadMagic,
}

fn malformed(kind: u8, what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { kind, what }
}

/// Appends one encoded frame to `out`.
pub fn encode(out: &mut BytesMut, id: u64, frame: &Frame) {
    let start = out.len();
    out.put_u32_le(0); // length, patched below
    let kind = match frame {
        Frame::Hello(_) => kind::HELLO,
        Frame::HelloOk(_) => kind::HELLO_OK,
        Frame::Auth(_) => kind::AUTH,
        Frame::AuthOk(_) => kind::AUTH_OK,
        Frame::Request(request) => match request {
            Request::Read { .. } => kind::READ,
            Request::Write { .. } => kind::WRITE,
            Request::Flush { .. } => kind::FLUSH,
            Request::Trim { .. } => kind::TRIM,
            Request::Replicate { .. } => kind::REPLICATE,
            Request::ResendRange { .. } => kind::RESEND_RANGE,
            Request::CatchUp { .. } => kind::CATCH_UP,
            Request::Allocation { .. } => kind::ALLOCATION,
            Request::FetchRecord { .. } => kind::FETCH_RECORD,
            Request::Scrub { .. } => kind::SCRUB,
            Request::ScrubRange { .. } => kind::SCRUB_RANGE,
            Request::ScrubRepair { .. } => kind::SCRUB_REPAIR,
        },
        Frame::Response(response) => match response {
            Response::Read { .. } => kind::READ_OK,
            Response::Write { .. } => kind::WRITE_OK,
            Response::Flush => kind::FLUSH_OK,
            Response::Trim { .. } => kind::TRIM_OK,
            Response::Replicate { .. } => kind::REPLICATE_OK,
            Response::Records { .. } => kind::RECORDS,
            Response::Allocation { .. } => kind::ALLOCATION_OK,
            Response::Scrubbed(_) => kind::SCRUBBED,
            Response::ScrubDigest { .. } => kind::SCRUB_DIGEST,
            Response::Error(_) => kind::ERROR,
        },
    };
    out.put_u8(kind);
    out.put_u8(0);
    out.put_u16_le(0);
    out.put_u64_le(id);
    match frame {
        Frame::Hello(hello) => {
            out.put_slice(&PROTOCOL_MAGIC);
            out.put_u16_le(hello.min_version);
            out.put_u16_le(hello.max_version);
            out.put_u8(hello.peer as u8);
            put_name(out, &hello.name);
        }
        Frame::HelloOk(ok) => {
            out.put_u16_le(ok.version);
            put_name(out, &ok.node);
            if ok.version >= AUTH_PROTOCOL_VERSION {
                match &ok.challenge {
                    None => out.put_u8(0),
                    Some(nonce) => {
                        out.put_u8(1);
                        out.put_slice(nonce);
                    }
                }
            } else {
                debug_assert!(ok.challenge.is_none(), "version 1 cannot carry a challenge");
            }
        }
        Frame::Auth(auth) => {
            out.put_slice(&auth.nonce);
            out.put_slice(&auth.proof);
        }
        Frame::AuthOk(ok) => out.put_slice(&ok.proof),
        Frame::Request(request) => encode_request(out, request),
        Frame::Response(response) => encode_response(out, response),
    }
    let length = out.len() - start - 4;
    debug_assert!(
        length + 4 <= MAX_FRAME_BYTES,
        "encoded a frame over the limit"
    );
    out[start..start + 4].copy_from_slice(&(length as u32).to_le_bytes());
}

fn put_name(out: &mut BytesMut, name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_BYTES)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn put_unit(out: &mut BytesMut, unit: UnitId, generation: Generation) {
    out.put_u64_le(unit.volume.0);
    out.put_u32_le(unit.slice.0);
    out.put_u64_le(generation.0);
}

fn put_records(out: &mut BytesMut, records: &[WireRecord]) {
    out.put_u32_le(records.len() as u32);
    for record in records {
        out.put_u64_le(record.vba.0);
        out.put_u64_le(record.generation.0);
        match &record.body {
            RecordBody::Write { lba, data } => {
                out.put_u8(1);
                out.put_u64_le(lba.0);
                out.put_u64_le(data.len() as u64 / BLOCK_BYTES);
                out.put_slice(data);
            }
            RecordBody::Trim { lba, blocks } => {
                out.put_u8(2);
                out.put_u64_le(lba.0);
                out.put_u64_le(*blocks);
            }
        }
    }
}

fn encode_request(out: &mut BytesMut, request: &Request) {
    put_unit(out, request.unit(), request.generation());
    match request {
        Request::Read { lba, blocks, .. } => {
            out.put_u64_le(lba.0);
            out.put_u32_le(*blocks);
        }
        Request::Write { lba, data, .. } => {
            out.put_u64_le(lba.0);
            out.put_u32_le((data.len() as u64 / BLOCK_BYTES) as u32);
            out.put_slice(data);
        }
        Request::Flush { .. } => {}
        Request::Trim { lba, blocks, .. } | Request::Allocation { lba, blocks, .. } => {
            out.put_u64_le(lba.0);
            out.put_u64_le(*blocks);
        }
        Request::Replicate {
            committed, records, ..
        } => {
            out.put_u64_le(committed.0);
            put_records(out, records);
        }
        Request::ResendRange { after, until, .. } => {
            out.put_u64_le(after.0);
            out.put_u64_le(until.0);
        }
        Request::CatchUp {
            after,
            after_generation,
            max_bytes,
            join,
            ..
        } => {
            out.put_u64_le(after.0);
            out.put_u64_le(after_generation.0);
            out.put_u32_le(*max_bytes);
            out.put_u8(u8::from(*join));
        }
        Request::FetchRecord { vba, .. } => out.put_u64_le(vba.0),
        Request::Scrub { .. } => {}
        Request::ScrubRange { after, through, .. } => {
            out.put_u64_le(after.0);
            out.put_u64_le(through.0);
        }
        Request::ScrubRepair {
            after,
            through,
            entries,
            ..
        } => {
            out.put_u64_le(after.0);
            out.put_u64_le(through.0);
            out.put_u32_le(entries.len() as u32);
            for entry in entries {
                out.put_u64_le(entry.vba.0);
                out.put_u64_le(entry.generation.0);
                out.put_u32_le(entry.crc);
            }
        }
    }
}

fn encode_response(out: &mut BytesMut, response: &Response) {
    match response {
        Response::Read { data } => out.put_slice(data),
        Response::Write { first_vba } => out.put_u64_le(first_vba.0),
        Response::Flush => {}
        Response::Trim { vba } => out.put_u64_le(vba.0),
        Response::Replicate { last_vba } => out.put_u64_le(last_vba.0),
        Response::Records {
            through,
            last_vba,
            done,
            remaining_records,
            remaining_bytes,
            joined,
            records,
        } => {
            out.put_u64_le(through.0);
            out.put_u64_le(last_vba.0);
            out.put_u8(u8::from(*done));
            out.put_u64_le(*remaining_records);
            out.put_u64_le(*remaining_bytes);
            out.put_u8(u8::from(*joined));
            put_records(out, records);
        }
        Response::Allocation { extents } => {
            debug_assert!(extents.len() <= MAX_EXTENTS_PER_FRAME);
            out.put_u32_le(extents.len() as u32);
            for extent in extents {
                out.put_u64_le(extent.blocks);
                out.put_u8(u8::from(extent.allocated));
            }
        }
        Response::Scrubbed(report) => {
            out.put_u64_le(report.through.0);
            out.put_u64_le(report.records);
            out.put_u64_le(report.bytes);
            out.put_u64_le(report.damaged);
            out.put_u64_le(report.repaired);
            out.put_u64_le(report.mismatched);
            out.put_u32_le(report.copies);
        }
        Response::ScrubDigest {
            records,
            bytes,
            digest,
            damaged,
            repaired,
        } => {
            out.put_u64_le(*records);
            out.put_u64_le(*bytes);
            out.put_u32_le(*digest);
            out.put_u64_le(*damaged);
            out.put_u64_le(*repaired);
        }
        Response::Error(error) => {
            out.put_u16_le(error.code as u16);
            out.put_u64_le(error.detail);
            let message = &error.message.as_bytes()[..error.message.len().min(u16::MAX as usize)];
            out.put_u16_le(message.len() as u16);
            out.put_slice(message);
        }
    }
}

/// Bytes a frame of `records` takes, for callers that split records across frames.
pub fn records_wire_bytes(records: &[WireRecord]) -> usize {
    FRAME_HEADER_BYTES + 64 + records.iter().map(|r| r.body.wire_bytes()).sum::<usize>()
}

/// Takes one whole frame off the front of `buf`, if one is there. `Ok(None)`: more bytes are
/// needed. A frame over [`MAX_FRAME_BYTES`] is an error as soon as its length is read.
pub fn decode(buf: &mut BytesMut) -> Result<Option<(u64, Frame)>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if length + 4 > MAX_FRAME_BYTES {
        return Err(ProtocolError::FrameTooLarge(length + 4));
    }
    if length < FRAME_HEADER_BYTES - 4 {
        return Err(malformed(0, "frame shorter than its header"));
    }
    if buf.len() < 4 + length {
        buf.reserve(4 + length - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let mut body = buf.split_to(length).freeze();
    let kind = body.get_u8();
    let _flags = body.get_u8();
    let _reserved = body.get_u16_le();
    let id = body.get_u64_le();
    let frame = decode_body(kind, &mut body)?;
    if body.has_remaining() {
        return Err(malformed(kind, "trailing bytes"));
    }
    Ok(Some((id, frame)))
}

/// A cursor over a frame body whose every read is checked.
struct Reader<'a> {
    kind: u8,
    body: &'a mut Bytes,
}

impl Reader<'_> {
    fn need(&self, n: usize, what: &'static str) -> Result<(), ProtocolError> {
        if self.body.remaining() < n {
            Err(malformed(self.kind, what))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        self.need(1, what)?;
        Ok(self.body.get_u8())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        self.need(2, what)?;
        Ok(self.body.get_u16_le())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        self.need(4, what)?;
        Ok(self.body.get_u32_le())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        self.need(8, what)?;
        Ok(self.body.get_u64_le())
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        self.need(n, what)?;
        Ok(self.body.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        self.need(N, what)?;
        let mut out = [0u8; N];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    fn name(&mut self) -> Result<String, ProtocolError> {
        let n = self.u8("name length")? as usize;
        let bytes = self.bytes(n, "name")?;
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(self.kind, "name is not UTF-8"))
    }

    fn unit(&mut self) -> Result<(UnitId, Generation), ProtocolError> {
        let volume = self.u64("volume id")?;
        let slice = self.u32("slice index")?;
        let generation = self.u64("generation")?;
        Ok((
            UnitId {
                volume: VolumeId(volume),
                slice: SliceIndex(slice),
            },
            Generation(generation),
        ))
    }

    /// A block count and that many blocks of data.
    fn blocks(&mut self, blocks: u64) -> Result<Bytes, ProtocolError> {
        let bytes = blocks
            .checked_mul(BLOCK_BYTES)
            .filter(|b| *b <= MAX_IO_BYTES)
            .ok_or(malformed(self.kind, "data larger than the IO limit"))?;
        self.bytes(bytes as usize, "block data")
    }

    fn records(&mut self) -> Result<Vec<WireRecord>, ProtocolError> {
        let count = self.u32("record count")? as usize;
        if count > MAX_RECORDS_PER_FRAME {
            return Err(malformed(self.kind, "too many records"));
        }
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            let vba = Vba(self.u64("record VBA")?);
            let generation = Generation(self.u64("record generation")?);
            let body = match self.u8("record kind")? {
                1 => {
                    let lba = Lba(self.u64("record LBA")?);
                    let blocks = self.u64("record blocks")?;
                    if blocks != 1 {
                        return Err(malformed(self.kind, "a write record carries one block"));
                    }
                    RecordBody::Write {
                        lba,
                        data: self.blocks(blocks)?,
                    }
                }
                2 => RecordBody::Trim {
                    lba: Lba(self.u64("record LBA")?),
                    blocks: self.u64("blocks")?,
                },
                _ => return Err(malformed(self.kind, "unknown record kind")),
            };
            records.push(WireRecord {
                vba,
                generation,
                body,
            });
        }
        Ok(records)
    }
}

fn decode_body(kind: u8, body: &mut Bytes) -> Result<Frame, ProtocolError> {
    let mut r = Reader { kind, body };
    let frame = match kind {
        kind::HELLO => {
            let magic = r.bytes(PROTOCOL_MAGIC.len(), "magic")?;
            if magic[..] != PROTOCOL_MAGIC {
                return Err(ProtocolError::BadMagic);
            }
            let min_version = r.u16("min version")?;
            let max_version = r.u16("max version")?;
            let peer = match r.u8("peer kind")? {
                1 => PeerKind::Client,
                2 => PeerKind::Node,
                _ => return Err(malformed(kind, "unknown peer kind")),
            };
            Frame::Hello(Hello {
                min_version,
                max_version,
                peer,
                name: r.name()?,
            })
        }
        kind::HELLO_OK => {
            let version = r.u16("version")?;
            let node = r.name()?;
            // Version 1 ends with the name; later versions say whether they authenticate.
            let challenge = if version >= AUTH_PROTOCOL_VERSION {
                match r.u8("authentication")? {
                    0 => None,
                    1 => Some(r.array("challenge nonce")?),
                    _ => return Err(malformed(kind, "unknown authentication kind")),
                }
            } else {
                None
            };
            Frame::HelloOk(HelloOk {
                version,
                node,
                challenge,
            })
        }
        kind::AUTH => Frame::Auth(Auth {
            nonce: r.array("nonce")?,
            proof: r.array("proof")?,
        }),
        kind::AUTH_OK => Frame::AuthOk(AuthOk {
            proof: r.array("proof")?,
        }),
        kind::READ
        | kind::WRITE
        | kind::FLUSH
        | kind::TRIM
        | kind::REPLICATE
        | kind::RESEND_RANGE
        | kind::CATCH_UP
        | kind::ALLOCATION
        | kind::FETCH_RECORD
        | kind::SCRUB
        | kind::SCRUB_RANGE
        | kind::SCRUB_REPAIR => {
            let (unit, generation) = r.unit()?;
            Frame::Request(match kind {
                kind::READ => {
                    let lba = Lba(r.u64("LBA")?);
                    let blocks = r.u32("blocks")?;
                    Request::Read {
                        unit,
                        generation,
                        lba,
                        blocks,
                    }
                }
                kind::WRITE => {
                    let lba = Lba(r.u64("LBA")?);
                    let blocks = r.u32("blocks")? as u64;
                    Request::Write {
                        unit,
                        generation,
                        lba,
                        data: r.blocks(blocks)?,
                    }
                }
                kind::FLUSH => Request::Flush { unit, generation },
                kind::TRIM => {
                    let lba = Lba(r.u64("LBA")?);
                    Request::Trim {
                        unit,
                        generation,
                        lba,
                        blocks: r.u64("blocks")?,
                    }
                }
                kind::ALLOCATION => {
                    let lba = Lba(r.u64("LBA")?);
                    Request::Allocation {
                        unit,
                        generation,
                        lba,
                        blocks: r.u64("blocks")?,
                    }
                }
                kind::REPLICATE => {
                    let committed = Vba(r.u64("committed VBA")?);
                    Request::Replicate {
                        unit,
                        generation,
                        committed,
                        records: r.records()?,
                    }
                }
                kind::SCRUB => Request::Scrub { unit, generation },
                kind::SCRUB_REPAIR => {
                    let after = Vba(r.u64("after")?);
                    let through = Vba(r.u64("through")?);
                    let count = r.u32("entry count")? as usize;
                    if count > MAX_SCRUB_ENTRIES {
                        return Err(malformed(kind, "too many scrub entries"));
                    }
                    r.need(count * 20, "scrub entries")?;
                    let entries = (0..count)
                        .map(|_| {
                            Ok(ScrubEntry {
                                vba: Vba(r.u64("entry VBA")?),
                                generation: Generation(r.u64("entry generation")?),
                                crc: r.u32("entry checksum")?,
                            })
                        })
                        .collect::<Result<_, ProtocolError>>()?;
                    Request::ScrubRepair {
                        unit,
                        generation,
                        after,
                        through,
                        entries,
                    }
                }
                kind::SCRUB_RANGE => {
                    let after = Vba(r.u64("after")?);
                    Request::ScrubRange {
                        unit,
                        generation,
                        after,
                        through: Vba(r.u64("through")?),
                    }
                }
                kind::FETCH_RECORD => Request::FetchRecord {
                    unit,
                    generation,
                    vba: Vba(r.u64("VBA")?),
                },
                kind::RESEND_RANGE => {
                    let after = Vba(r.u64("after")?);
                    Request::ResendRange {
                        unit,
                        generation,
                        after,
                        until: Vba(r.u64("until")?),
                    }
                }
                _ => {
                    let after = Vba(r.u64("after")?);
                    let after_generation = Generation(r.u64("after generation")?);
                    let max_bytes = r.u32("max bytes")?;
                    Request::CatchUp {
                        unit,
                        generation,
                        after,
                        after_generation,
                        max_bytes,
                        join: r.u8("join")? != 0,
                    }
                }
            })
        }
        kind::READ_OK => {
            let n = r.body.remaining();
            Frame::Response(Response::Read {
                data: r.bytes(n, "data")?,
            })
        }
        kind::WRITE_OK => Frame::Response(Response::Write {
            first_vba: Vba(r.u64("VBA")?),
        }),
        kind::FLUSH_OK => Frame::Response(Response::Flush),
        kind::TRIM_OK => Frame::Response(Response::Trim {
            vba: Vba(r.u64("VBA")?),
        }),
        kind::REPLICATE_OK => Frame::Response(Response::Replicate {
            last_vba: Vba(r.u64("VBA")?),
        }),
        kind::RECORDS => {
            let through = Vba(r.u64("through")?);
            let last_vba = Vba(r.u64("last VBA")?);
            let done = r.u8("done")? != 0;
            let remaining_records = r.u64("remaining records")?;
            let remaining_bytes = r.u64("remaining bytes")?;
            let joined = r.u8("joined")? != 0;
            Frame::Response(Response::Records {
                through,
                last_vba,
                done,
                remaining_records,
                remaining_bytes,
                joined,
                records: r.records()?,
            })
        }
        kind::ALLOCATION_OK => {
            let count = r.u32("extent count")? as usize;
            if count > MAX_EXTENTS_PER_FRAME {
                return Err(malformed(kind, "too many extents"));
            }
            r.need(count * 9, "extents")?;
            let extents = (0..count)
                .map(|_| {
                    Ok(Extent {
                        blocks: r.u64("extent blocks")?,
                        allocated: r.u8("extent status")? != 0,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?;
            Frame::Response(Response::Allocation { extents })
        }
        kind::SCRUBBED => Frame::Response(Response::Scrubbed(ScrubReport {
            through: Vba(r.u64("through")?),
            records: r.u64("records")?,
            bytes: r.u64("bytes")?,
            damaged: r.u64("damaged")?,
            repaired: r.u64("repaired")?,
            mismatched: r.u64("mismatched")?,
            copies: r.u32("copies")?,
        })),
        kind::SCRUB_DIGEST => Frame::Response(Response::ScrubDigest {
            records: r.u64("records")?,
            bytes: r.u64("bytes")?,
            digest: r.u32("digest")?,
            damaged: r.u64("damaged")?,
            repaired: r.u64("repaired")?,
        }),
        kind::ERROR => {
            let code = r.u16("error code")?;
            let code = ErrorCode::from_u16(code).ok_or(malformed(kind, "unknown error code"))?;
            let detail = r.u64("error detail")?;
            let n = r.u16("message length")? as usize;
            let message = String::from_utf8_lossy(&r.bytes(n, "message")?).into_owned();
            Frame::Response(Response::Error(WireError {
                code,
                detail,
                message,
            }))
        }
        other => return Err(ProtocolError::UnknownKind(other)),
    };
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        encode(&mut buf, 42, &frame);
        let whole = buf.clone();
        // Every prefix is "need more bytes", never an error or a wrong frame.
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut partial), Ok(None), "prefix of {cut} bytes");
        }
        assert_eq!(decode(&mut buf), Ok(Some((42, frame))));
        assert!(buf.is_empty());
    }

    fn unit() -> UnitId {
        UnitId::new(7, 3)
    }

    #[test]
    fn every_frame_round_trips() {
        let block = Bytes::from(vec![9u8; BLOCK_BYTES as usize]);
        let records = vec![
            WireRecord {
                vba: Vba(5),
                generation: Generation(2),
                body: RecordBody::Write {
                    lba: Lba(1),
                    data: block.clone(),
                },
            },
            WireRecord {
                vba: Vba(6),
                generation: Generation(2),
                body: RecordBody::Trim {
                    lba: Lba(0),
                    blocks: 1 << 20,
                },
            },
        ];
        let g = Generation(2);
        for frame in [
            Frame::Hello(Hello {
                min_version: 1,
                max_version: 1,
                peer: PeerKind::Node,
                name: "n1".into(),
            }),
            Frame::HelloOk(HelloOk {
                version: 1,
                node: "n2".into(),
                challenge: None,
            }),
            Frame::HelloOk(HelloOk {
                version: 2,
                node: "n2".into(),
                challenge: None,
            }),
            Frame::HelloOk(HelloOk {
                version: 2,
                node: "n2".into(),
                challenge: Some([7; AUTH_NONCE_BYTES]),
            }),
            Frame::Auth(Auth {
                nonce: [1; AUTH_NONCE_BYTES],
                proof: [2; AUTH_PROOF_BYTES],
            }),
            Frame::AuthOk(AuthOk {
                proof: [3; AUTH_PROOF_BYTES],
            }),
            Frame::Request(Request::Read {
                unit: unit(),
                generation: g,
                lba: Lba(3),
                blocks: 2,
            }),
            Frame::Request(Request::Write {
                unit: unit(),
                generation: g,
                lba: Lba(3),
                data: block.clone(),
            }),
            Frame::Request(Request::Flush {
                unit: unit(),
                generation: g,
            }),
            Frame::Request(Request::Trim {
                unit: unit(),
                generation: g,
                lba: Lba(3),
                blocks: 9,
            }),
            Frame::Request(Request::Replicate {
                unit: unit(),
                generation: g,
                committed: Vba(4),
                records: records.clone(),
            }),
            Frame::Request(Request::ResendRange {
                unit: unit(),
                generation: g,
                after: Vba(1),
                until: Vba(9),
            }),
            Frame::Request(Request::CatchUp {
                unit: unit(),
                generation: g,
                after: Vba(1),
                after_generation: Generation(1),
                max_bytes: 1 << 20,
                join: true,
            }),
            Frame::Request(Request::FetchRecord {
                unit: unit(),
                generation: g,
                vba: Vba(17),
            }),
            Frame::Request(Request::Scrub {
                unit: unit(),
                generation: g,
            }),
            Frame::Request(Request::ScrubRange {
                unit: unit(),
                generation: g,
                after: Vba(3),
                through: Vba(4099),
            }),
            Frame::Request(Request::ScrubRepair {
                unit: unit(),
                generation: g,
                after: Vba(3),
                through: Vba(9),
                entries: vec![
                    ScrubEntry {
                        vba: Vba(4),
                        generation: Generation(1),
                        crc: 7,
                    },
                    ScrubEntry {
                        vba: Vba(9),
                        generation: Generation(2),
                        crc: 0xffff_ffff,
                    },
                ],
            }),
            Frame::Response(Response::Scrubbed(ScrubReport {
                through: Vba(9),
                records: 8,
                bytes: 8 * 4160,
                damaged: 2,
                repaired: 1,
                mismatched: 1,
                copies: 2,
            })),
            Frame::Response(Response::ScrubDigest {
                records: 5,
                bytes: 5 * 4160,
                digest: 0xdead_beef,
                damaged: 2,
                repaired: 1,
            }),
            Frame::Response(Response::Read {
                data: block.clone(),
            }),
            Frame::Response(Response::Write { first_vba: Vba(77) }),
            Frame::Response(Response::Flush),
            Frame::Response(Response::Trim { vba: Vba(78) }),
            Frame::Response(Response::Replicate { last_vba: Vba(79) }),
            Frame::Request(Request::Allocation {
                unit: unit(),
                generation: g,
                lba: Lba(5),
                blocks: 1 << 18,
            }),
            Frame::Response(Response::Allocation {
                extents: vec![
                    Extent {
                        blocks: 3,
                        allocated: false,
                    },
                    Extent {
                        blocks: 1 << 17,
                        allocated: true,
                    },
                ],
            }),
            Frame::Response(Response::Allocation { extents: vec![] }),
            Frame::Response(Response::Records {
                through: Vba(9),
                last_vba: Vba(12),
                done: false,
                remaining_records: 3,
                remaining_bytes: 12480,
                joined: true,
                records,
            }),
            Frame::Response(Response::Error(
                WireError::new(ErrorCode::StaleGeneration, "slice 7.3 is at generation 4")
                    .with_detail(4),
            )),
            Frame::Response(Response::Error(WireError::new(
                ErrorCode::Unauthorized,
                "authentication failed",
            ))),
        ] {
            round_trip(frame);
        }
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        let mut huge = BytesMut::new();
        huge.put_u32_le(MAX_FRAME_BYTES as u32);
        assert!(matches!(
            decode(&mut huge),
            Err(ProtocolError::FrameTooLarge(_))
        ));

        let mut unknown = BytesMut::new();
        unknown.put_u32_le(12);
        unknown.put_u8(0x77);
        unknown.put_slice(&[0u8; 11]);
        assert_eq!(decode(&mut unknown), Err(ProtocolError::UnknownKind(0x77)));

        // A write that claims more blocks than it carries.
        let mut buf = BytesMut::new();
        let write = Request::Write {
            unit: unit(),
            generation: Generation(1),
            lba: Lba(0),
            data: Bytes::from(vec![1u8; 4096]),
        };
        encode(&mut buf, 1, &Frame::Request(write));
        let blocks_at = FRAME_HEADER_BYTES + 20 + 8;
        buf[blocks_at..blocks_at + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            decode(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));

        let mut hello = BytesMut::new();
        encode(
            &mut hello,
            0,
            &Frame::Hello(Hello {
                min_version: 1,
                max_version: 1,
                peer: PeerKind::Client,
                name: "c".into(),
            }),
        );
        hello[FRAME_HEADER_BYTES] = b'X';
        assert_eq!(decode(&mut hello), Err(ProtocolError::BadMagic));
    }

    #[test]
    fn write_data_over_the_io_limit_is_refused() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(0);
        buf.put_u8(kind::WRITE);
        buf.put_slice(&[0u8; 11]);
        put_unit(&mut buf, unit(), Generation(1));
        buf.put_u64_le(0);
        buf.put_u32_le((MAX_IO_BYTES / BLOCK_BYTES + 1) as u32);
        let length = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(
            decode(&mut buf),
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn hello_answers_say_whether_the_node_authenticates_from_version_2_on() {
        // A version 1 answer (an older node) ends with the node id.
        let mut v1 = BytesMut::new();
        v1.put_u32_le(0);
        v1.put_u8(kind::HELLO_OK);
        v1.put_slice(&[0u8; 11]);
        v1.put_u16_le(1);
        put_name(&mut v1, "n1");
        let length = (v1.len() - 4) as u32;
        v1[..4].copy_from_slice(&length.to_le_bytes());
        assert_eq!(
            decode(&mut v1),
            Ok(Some((
                0,
                Frame::HelloOk(HelloOk {
                    version: 1,
                    node: "n1".into(),
                    challenge: None,
                })
            )))
        );

        let mut v2 = BytesMut::new();
        let ok = HelloOk {
            version: 2,
            node: "n1".into(),
            challenge: Some([9; AUTH_NONCE_BYTES]),
        };
        encode(&mut v2, 0, &Frame::HelloOk(ok));
        let mode_at = FRAME_HEADER_BYTES + 2 + 1 + 2;
        assert_eq!(v2[mode_at], 1);
        v2[mode_at] = 7;
        assert!(matches!(
            decode(&mut v2),
            Err(ProtocolError::Malformed { .. })
        ));

        // A cut-short proof is malformed, not a shorter proof.
        let mut auth = BytesMut::new();
        let frame = Frame::Auth(Auth {
            nonce: [1; AUTH_NONCE_BYTES],
            proof: [2; AUTH_PROOF_BYTES],
        });
        encode(&mut auth, 0, &frame);
        auth.truncate(auth.len() - 1);
        let length = (auth.len() - 4) as u32;
        auth[..4].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(
            decode(&mut auth),
            Err(ProtocolError::Malformed { .. })
        ));
    }
}
