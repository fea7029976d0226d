//! The NBD wire format, as far as the vbs NBD server speaks it: the fixed newstyle handshake,
//! simple and structured replies, metadata contexts and block status. Constants and layouts
//! follow the protocol document of the NBD project (`doc/proto.md`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

/// Structured replies.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// The one metadata context served, and the flags of its extents.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Errors in replies (errno values the protocol defines).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The longest option payload taken in (an export name is at most 4 KiB by the protocol, and a
/// metadata context query as long); a longer one is skipped and refused with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_BYTES: u32 = 64 << 10;
/// The most queries one metadata context option may carry.
pub const MAX_META_QUERIES: u32 = 64;
/// The longest message an error reply carries (the protocol's string limit).
pub const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    fn from_u16(value: u16) -> Command {
        match value {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disconnect,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }

    /// The command flags that apply to it (`FUA` to every one, as the protocol allows).
    pub fn allowed_flags(self) -> u16 {
        CMD_FLAG_FUA
            | match self {
                Command::Read => CMD_FLAG_DF,
                Command::WriteZeroes => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                Command::BlockStatus => CMD_FLAG_REQ_ONE,
                _ => 0,
            }
    }
}

/// A transmission-phase request header (the data of a write follows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

pub const REQUEST_BYTES: usize = 28;

/// Why a request header is refused: the stream is broken, and the connection is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
}

pub fn parse_request(header: &[u8; REQUEST_BYTES]) -> Result<Request, WireError> {
    let mut buf = &header[..];
    let magic = buf.get_u32();
    if magic != REQUEST_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let flags = buf.get_u16();
    let command = Command::from_u16(buf.get_u16());
    Ok(Request {
        flags,
        command,
        handle: buf.get_u64(),
        offset: buf.get_u64(),
        length: buf.get_u32(),
    })
}

pub fn simple_reply(error: u32, handle: u64, data: Option<&Bytes>) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + data.map_or(0, |d| d.len()));
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(handle);
    if let Some(data) = data {
        out.put_slice(data);
    }
    out.freeze()
}

/// One structured reply chunk whose payload is `head` followed by `tail`.
fn chunk(flags: u16, kind: u16, handle: u64, head: &[u8], tail: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + head.len() + tail.len());
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(kind);
    out.put_u64(handle);
    out.put_u32((head.len() + tail.len()) as u32);
    out.put_slice(head);
    out.put_slice(tail);
    out.freeze()
}

/// The final chunk of a read: `data`, read at `offset`.
pub fn data_chunk(handle: u64, offset: u64, data: &[u8]) -> Bytes {
    chunk(
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        handle,
        &offset.to_be_bytes(),
        data,
    )
}

/// The final chunk of a request that succeeded with nothing to say.
pub fn done_chunk(handle: u64) -> Bytes {
    chunk(REPLY_FLAG_DONE, REPLY_TYPE_NONE, handle, &[], &[])
}

/// The final chunk of a request that failed with `error`, saying why to a human.
pub fn error_chunk(handle: u64, error: u32, message: &str) -> Bytes {
    let message = truncate(message, MAX_MESSAGE_BYTES);
    let mut head = Vec::with_capacity(6);
    head.put_u32(error);
    head.put_u16(message.len() as u16);
    chunk(
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        handle,
        &head,
        message.as_bytes(),
    )
}

/// One block status extent: `length` bytes with `flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub length: u32,
    pub flags: u32,
}

/// The final chunk of a block status reply: the descriptors of context `context`.
pub fn block_status_chunk(handle: u64, context: u32, descriptors: &[Descriptor]) -> Bytes {
    let mut body = Vec::with_capacity(descriptors.len() * 8);
    for d in descriptors {
        body.put_u32(d.length);
        body.put_u32(d.flags);
    }
    chunk(
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        handle,
        &context.to_be_bytes(),
        &body,
    )
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + data.len());
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

/// An option's error reply with a message for a human.
pub fn option_error(option: u32, reply: u32, message: &str) -> Bytes {
    option_reply(
        option,
        reply,
        truncate(message, MAX_MESSAGE_BYTES).as_bytes(),
    )
}

pub fn info_export(size_bytes: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.put_u16(INFO_EXPORT);
    out.put_u64(size_bytes);
    out.put_u16(flags);
    out
}

pub fn info_name(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + name.len());
    out.put_u16(INFO_NAME);
    out.put_slice(name.as_bytes());
    out
}

pub fn info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.put_u16(INFO_BLOCK_SIZE);
    out.put_u32(minimum);
    out.put_u32(preferred);
    out.put_u32(maximum);
    out
}

/// An `NBD_REP_SERVER` payload: an export's name.
pub fn server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.put_u32(name.len() as u32);
    out.put_slice(name.as_bytes());
    out
}

/// An `NBD_REP_META_CONTEXT` payload.
pub fn meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.put_u32(id);
    out.put_slice(name.as_bytes());
    out
}

/// A length-prefixed string off the front of `buf`.
fn string(buf: &mut &[u8]) -> Option<String> {
    if buf.remaining() < 4 {
        return None;
    }
    let len = buf.get_u32() as usize;
    if buf.remaining() < len {
        return None;
    }
    let text = String::from_utf8(buf[..len].to_vec()).ok()?;
    buf.advance(len);
    Some(text)
}

/// The export name in an `NBD_OPT_INFO` / `NBD_OPT_GO` payload, and the info types it asks for.
pub fn parse_go(payload: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut buf = payload;
    let name = string(&mut buf)?;
    if buf.remaining() < 2 {
        return None;
    }
    let count = buf.get_u16() as usize;
    if buf.remaining() != count * 2 {
        return None;
    }
    Some((name, (0..count).map(|_| buf.get_u16()).collect()))
}

/// The export name and queries of an `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`
/// payload; `None` when it is malformed (or asks too much).
pub fn parse_meta_context(payload: &[u8]) -> Option<(String, Vec<String>)> {
    let mut buf = payload;
    let name = string(&mut buf)?;
    if buf.remaining() < 4 {
        return None;
    }
    let count = buf.get_u32();
    if count > MAX_META_QUERIES {
        return None;
    }
    let queries = (0..count)
        .map(|_| string(&mut buf))
        .collect::<Option<Vec<String>>>()?;
    buf.is_empty().then_some((name, queries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_parse() {
        let mut header = [0u8; REQUEST_BYTES];
        let mut out = &mut header[..];
        out.put_u32(REQUEST_MAGIC);
        out.put_u16(CMD_FLAG_FUA);
        out.put_u16(1);
        out.put_u64(0xabc);
        out.put_u64(8192);
        out.put_u32(4096);
        let request = parse_request(&header).unwrap();
        assert_eq!(request.command, Command::Write);
        assert_eq!(
            (request.handle, request.offset, request.length),
            (0xabc, 8192, 4096)
        );
        header[0] = 0;
        assert!(parse_request(&header).is_err());
    }

    #[test]
    fn go_payloads_parse() {
        let mut payload = Vec::new();
        payload.put_u32(4);
        payload.put_slice(b"demo");
        payload.put_u16(1);
        payload.put_u16(INFO_BLOCK_SIZE);
        assert_eq!(
            parse_go(&payload),
            Some(("demo".into(), vec![INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_go(&payload[..6]), None);
        payload.push(0);
        assert_eq!(parse_go(&payload), None, "trailing bytes");
    }

    #[test]
    fn meta_context_payloads_parse() {
        let mut payload = Vec::new();
        payload.put_u32(4);
        payload.put_slice(b"demo");
        payload.put_u32(2);
        for query in ["base:allocation", "qemu:dirty-bitmap:x"] {
            payload.put_u32(query.len() as u32);
            payload.put_slice(query.as_bytes());
        }
        let (name, queries) = parse_meta_context(&payload).expect("well formed");
        assert_eq!(name, "demo");
        assert_eq!(queries, vec!["base:allocation", "qemu:dirty-bitmap:x"]);
        for cut in 0..payload.len() {
            assert_eq!(parse_meta_context(&payload[..cut]), None, "cut at {cut}");
        }
        payload.push(0);
        assert_eq!(parse_meta_context(&payload), None, "trailing bytes");
    }

    #[test]
    fn replies_have_their_magic_and_lengths() {
        let reply = simple_reply(EIO, 7, None);
        assert_eq!(&reply[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[4..8], &EIO.to_be_bytes());
        let option = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(&option[..8], &OPTION_REPLY_MAGIC.to_be_bytes());

        let data = data_chunk(9, 4096, &[1, 2, 3]);
        assert_eq!(&data[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&data[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&data[6..8], &REPLY_TYPE_OFFSET_DATA.to_be_bytes());
        assert_eq!(&data[16..20], &11u32.to_be_bytes(), "offset and data");
        assert_eq!(&data[20..28], &4096u64.to_be_bytes());

        let error = error_chunk(9, EINVAL, "bad");
        assert_eq!(&error[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&error[16..20], &9u32.to_be_bytes());
        assert_eq!(&error[20..24], &EINVAL.to_be_bytes());
        assert_eq!(&error[24..26], &3u16.to_be_bytes());

        let status = block_status_chunk(
            9,
            1,
            &[Descriptor {
                length: 8192,
                flags: STATE_HOLE | STATE_ZERO,
            }],
        );
        assert_eq!(&status[16..20], &12u32.to_be_bytes());
        assert_eq!(&status[20..24], &1u32.to_be_bytes());
        assert_eq!(&status[24..28], &8192u32.to_be_bytes());
        assert_eq!(&status[28..32], &3u32.to_be_bytes());
    }

    #[test]
    fn long_messages_are_cut_at_a_character() {
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate(&long, MAX_MESSAGE_BYTES - 1);
        assert!(cut.len() < MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
