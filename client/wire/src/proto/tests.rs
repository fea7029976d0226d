use bytes::{BufMut, Bytes, BytesMut};

use super::encode::{put_name, put_unit};
use super::*;
use crate::types::{Generation, Lba, UnitId, Vba};

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
        Frame::Request(Request::Client(ClientRequest::Read {
            unit: unit(),
            generation: g,
            lba: Lba(3),
            blocks: 2,
        })),
        Frame::Request(Request::Client(ClientRequest::Write {
            unit: unit(),
            generation: g,
            lba: Lba(3),
            data: block.clone(),
        })),
        Frame::Request(Request::Client(ClientRequest::Flush {
            unit: unit(),
            generation: g,
        })),
        Frame::Request(Request::Client(ClientRequest::Trim {
            unit: unit(),
            generation: g,
            lba: Lba(3),
            blocks: 9,
        })),
        Frame::Request(Request::Peer(PeerRequest::Replicate {
            unit: unit(),
            generation: g,
            committed: Vba(4),
            records: records.clone(),
        })),
        Frame::Request(Request::Peer(PeerRequest::ResendRange {
            unit: unit(),
            generation: g,
            after: Vba(1),
            until: Vba(9),
        })),
        Frame::Request(Request::Peer(PeerRequest::CatchUp {
            unit: unit(),
            generation: g,
            after: Vba(1),
            after_generation: Generation(1),
            max_bytes: 1 << 20,
            join: true,
        })),
        Frame::Request(Request::Peer(PeerRequest::FetchRecord {
            unit: unit(),
            generation: g,
            vba: Vba(17),
        })),
        Frame::Request(Request::Client(ClientRequest::Scrub {
            unit: unit(),
            generation: g,
        })),
        Frame::Request(Request::Peer(PeerRequest::ScrubRange {
            unit: unit(),
            generation: g,
            after: Vba(3),
            through: Vba(4099),
        })),
        Frame::Request(Request::Peer(PeerRequest::ScrubRepair {
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
        })),
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
        Frame::Request(Request::Client(ClientRequest::Allocation {
            unit: unit(),
            generation: g,
            lba: Lba(5),
            blocks: 1 << 18,
        })),
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
    let write = Request::Client(ClientRequest::Write {
        unit: unit(),
        generation: Generation(1),
        lba: Lba(0),
        data: Bytes::from(vec![1u8; 4096]),
    });
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
