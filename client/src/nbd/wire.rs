//! The NBD wire format (fixed newstyle handshake, simple replies), as far as `vbs nbd` speaks it.
//! Constants and layouts follow the protocol document of the NBD project (`doc/proto.md`).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

/// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command flag: force unit access (durable before the reply), which every write is anyway.
pub const CMD_FLAG_FUA: u16 = 1 << 0;

/// Errors in simple replies (errno values the protocol defines).
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ESHUTDOWN: u32 = 108;

/// The longest option payload accepted (an export name is at most 4 KiB by the protocol).
pub const MAX_OPTION_BYTES: u32 = 16 << 10;
/// The largest read or write one request may carry; larger requests are refused with EINVAL
/// (qemu and the kernel client send at most 32 MiB).
pub const MAX_REQUEST_BYTES: u32 = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disconnect,
    Flush,
    Trim,
    WriteZeroes,
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
            other => Command::Unknown(other),
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

/// Why a request header is refused: the connection is closed.
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

pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(20 + data.len());
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

pub fn info_export(size_bytes: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.put_u16(INFO_EXPORT);
    out.put_u64(size_bytes);
    out.put_u16(flags);
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

/// The export name in an `NBD_OPT_INFO` / `NBD_OPT_GO` payload, and the info types it asks for.
pub fn parse_go(payload: &[u8]) -> Option<(String, Vec<u16>)> {
    let mut buf = payload;
    if buf.remaining() < 4 {
        return None;
    }
    let name_len = buf.get_u32() as usize;
    if buf.remaining() < name_len + 2 {
        return None;
    }
    let name = String::from_utf8(buf[..name_len].to_vec()).ok()?;
    buf.advance(name_len);
    let count = buf.get_u16() as usize;
    if buf.remaining() != count * 2 {
        return None;
    }
    Some((name, (0..count).map(|_| buf.get_u16()).collect()))
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
    fn replies_have_their_magic() {
        let reply = simple_reply(EIO, 7, None);
        assert_eq!(&reply[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&reply[4..8], &EIO.to_be_bytes());
        let option = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(&option[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    }
}
