//! Bytes to frames: every read is checked, and bytes that are not a valid frame are an error
//! that closes the connection.

use bytes::{Buf, Bytes, BytesMut};

use crate::types::{Generation, Lba, SliceIndex, UnitId, Vba, VolumeId};

use super::*;

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
                    Request::Client(ClientRequest::Read {
                        unit,
                        generation,
                        lba,
                        blocks,
                    })
                }
                kind::WRITE => {
                    let lba = Lba(r.u64("LBA")?);
                    let blocks = r.u32("blocks")? as u64;
                    Request::Client(ClientRequest::Write {
                        unit,
                        generation,
                        lba,
                        data: r.blocks(blocks)?,
                    })
                }
                kind::FLUSH => Request::Client(ClientRequest::Flush { unit, generation }),
                kind::TRIM => {
                    let lba = Lba(r.u64("LBA")?);
                    Request::Client(ClientRequest::Trim {
                        unit,
                        generation,
                        lba,
                        blocks: r.u64("blocks")?,
                    })
                }
                kind::ALLOCATION => {
                    let lba = Lba(r.u64("LBA")?);
                    Request::Client(ClientRequest::Allocation {
                        unit,
                        generation,
                        lba,
                        blocks: r.u64("blocks")?,
                    })
                }
                kind::REPLICATE => {
                    let committed = Vba(r.u64("committed VBA")?);
                    Request::Peer(PeerRequest::Replicate {
                        unit,
                        generation,
                        committed,
                        records: r.records()?,
                    })
                }
                kind::SCRUB => Request::Client(ClientRequest::Scrub { unit, generation }),
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
                    Request::Peer(PeerRequest::ScrubRepair {
                        unit,
                        generation,
                        after,
                        through,
                        entries,
                    })
                }
                kind::SCRUB_RANGE => {
                    let after = Vba(r.u64("after")?);
                    Request::Peer(PeerRequest::ScrubRange {
                        unit,
                        generation,
                        after,
                        through: Vba(r.u64("through")?),
                    })
                }
                kind::FETCH_RECORD => Request::Peer(PeerRequest::FetchRecord {
                    unit,
                    generation,
                    vba: Vba(r.u64("VBA")?),
                }),
                kind::RESEND_RANGE => {
                    let after = Vba(r.u64("after")?);
                    Request::Peer(PeerRequest::ResendRange {
                        unit,
                        generation,
                        after,
                        until: Vba(r.u64("until")?),
                    })
                }
                _ => {
                    let after = Vba(r.u64("after")?);
                    let after_generation = Generation(r.u64("after generation")?);
                    let max_bytes = r.u32("max bytes")?;
                    Request::Peer(PeerRequest::CatchUp {
                        unit,
                        generation,
                        after,
                        after_generation,
                        max_bytes,
                        join: r.u8("join")? != 0,
                    })
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
