//! Frames to bytes.

use bytes::{BufMut, BytesMut};

use crate::types::{Generation, UnitId};

use super::*;

impl RecordBody {
    fn wire_bytes(&self) -> usize {
        match self {
            RecordBody::Write { data, .. } => 8 + 8 + 1 + 8 + 8 + data.len(),
            RecordBody::Trim { .. } => 8 + 8 + 1 + 8 + 8,
        }
    }
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
            Request::Client(ClientRequest::Read { .. }) => kind::READ,
            Request::Client(ClientRequest::Write { .. }) => kind::WRITE,
            Request::Client(ClientRequest::Flush { .. }) => kind::FLUSH,
            Request::Client(ClientRequest::Trim { .. }) => kind::TRIM,
            Request::Peer(PeerRequest::Replicate { .. }) => kind::REPLICATE,
            Request::Peer(PeerRequest::ResendRange { .. }) => kind::RESEND_RANGE,
            Request::Peer(PeerRequest::CatchUp { .. }) => kind::CATCH_UP,
            Request::Client(ClientRequest::Allocation { .. }) => kind::ALLOCATION,
            Request::Peer(PeerRequest::FetchRecord { .. }) => kind::FETCH_RECORD,
            Request::Client(ClientRequest::Scrub { .. }) => kind::SCRUB,
            Request::Peer(PeerRequest::ScrubRange { .. }) => kind::SCRUB_RANGE,
            Request::Peer(PeerRequest::ScrubRepair { .. }) => kind::SCRUB_REPAIR,
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

pub(super) fn put_name(out: &mut BytesMut, name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_BYTES)];
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

pub(super) fn put_unit(out: &mut BytesMut, unit: UnitId, generation: Generation) {
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
        Request::Client(ClientRequest::Read { lba, blocks, .. }) => {
            out.put_u64_le(lba.0);
            out.put_u32_le(*blocks);
        }
        Request::Client(ClientRequest::Write { lba, data, .. }) => {
            out.put_u64_le(lba.0);
            out.put_u32_le((data.len() as u64 / BLOCK_BYTES) as u32);
            out.put_slice(data);
        }
        Request::Client(ClientRequest::Flush { .. }) => {}
        Request::Client(ClientRequest::Trim { lba, blocks, .. })
        | Request::Client(ClientRequest::Allocation { lba, blocks, .. }) => {
            out.put_u64_le(lba.0);
            out.put_u64_le(*blocks);
        }
        Request::Peer(PeerRequest::Replicate {
            committed, records, ..
        }) => {
            out.put_u64_le(committed.0);
            put_records(out, records);
        }
        Request::Peer(PeerRequest::ResendRange { after, until, .. }) => {
            out.put_u64_le(after.0);
            out.put_u64_le(until.0);
        }
        Request::Peer(PeerRequest::CatchUp {
            after,
            after_generation,
            max_bytes,
            join,
            ..
        }) => {
            out.put_u64_le(after.0);
            out.put_u64_le(after_generation.0);
            out.put_u32_le(*max_bytes);
            out.put_u8(u8::from(*join));
        }
        Request::Peer(PeerRequest::FetchRecord { vba, .. }) => out.put_u64_le(vba.0),
        Request::Client(ClientRequest::Scrub { .. }) => {}
        Request::Peer(PeerRequest::ScrubRange { after, through, .. }) => {
            out.put_u64_le(after.0);
            out.put_u64_le(through.0);
        }
        Request::Peer(PeerRequest::ScrubRepair {
            after,
            through,
            entries,
            ..
        }) => {
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
