//! The data-plane protocol: binary, length-prefixed frames over TCP, pipelined (many requests in
//! flight per connection, matched by request id), versioned by a handshake. `docs/protocol.md`
//! describes every frame; this module is the only code that encodes or decodes them.
//!
//! Every frame is `length: u32` (bytes after this field) then `kind: u8`, `flags: u8` (0),
//! `reserved: u16` (0), `request_id: u64`, and the kind's payload, all little-endian. A response
//! carries the id of its request; responses may come back in any order.
//!
//! # Layout
//! - [`handshake`]: the frames that open a connection (hello, authentication).
//! - [`request`]: requests, and the records replication carries.
//! - [`response`]: responses, and the errors a request is answered with.
//! - `encode` and `decode`: frames to bytes and back, the only code that does either.

mod decode;
mod encode;
pub mod handshake;
pub mod request;
pub mod response;
#[cfg(test)]
mod tests;

pub use decode::{decode, ProtocolError};
pub use encode::{encode, records_wire_bytes};
pub use handshake::{Auth, AuthOk, Hello, HelloOk, PeerKind};
pub use request::{
    ClientRequest, PeerRequest, RecordBody, Request, ScrubEntry, ScrubReport, WireRecord,
    MAX_SCRUB_ENTRIES,
};
pub use response::{ErrorCode, Extent, Response, WireError};

use crate::types::BLOCK_BYTES;

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
