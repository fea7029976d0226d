//! The transmission phase: requests are read one after another, checked, and run concurrently,
//! each answered when it is done, in any order. A request the server cannot take gets the error
//! the protocol names for it (with a message, when structured replies were negotiated); only a
//! request header that breaks the framing (a bad magic) ends the connection.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::commands::{self, Outcome};
use super::handshake::Session;
use super::wire::{self, Command, Request};
use super::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, MAX_PAYLOAD_BYTES};
use crate::writer::FrameWriter;

/// A request refused before it runs: the NBD error, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub message: String,
}

impl Refusal {
    fn new(errno: u32, message: impl Into<String>) -> Refusal {
        Refusal {
            errno,
            message: message.into(),
        }
    }
}

/// What a request may ask of this connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub size_bytes: u64,
    pub structured: bool,
    pub allocation: bool,
}

impl Limits {
    pub fn of(session: &Session) -> Limits {
        Limits {
            size_bytes: session.size_bytes,
            structured: session.structured,
            allocation: session.allocation_context.is_some(),
        }
    }
}

fn name(command: Command) -> String {
    match command {
        Command::Read => "NBD_CMD_READ".into(),
        Command::Write => "NBD_CMD_WRITE".into(),
        Command::Disconnect => "NBD_CMD_DISC".into(),
        Command::Flush => "NBD_CMD_FLUSH".into(),
        Command::Trim => "NBD_CMD_TRIM".into(),
        Command::WriteZeroes => "NBD_CMD_WRITE_ZEROES".into(),
        Command::BlockStatus => "NBD_CMD_BLOCK_STATUS".into(),
        Command::Unknown(n) => format!("command {n}"),
    }
}

/// Checks a request against the protocol and the export, with the errors the protocol names:
/// `EINVAL` for unknown commands and flags, reads, trims and block status past the end, and
/// lengths of 0 (any alignment is served: the minimum block size is 1); `ENOSPC` for
/// writes past the end; `EOVERFLOW` for a read larger than the maximum payload, with
/// structured replies; `ENOTSUP` for a fast zero that would not be fast.
pub fn check(request: &Request, limits: &Limits) -> Result<(), Refusal> {
    let command = request.command;
    let what = name(command);
    if let Command::Unknown(n) = command {
        return Err(Refusal::new(wire::EINVAL, format!("unknown command {n}")));
    }
    let stray = request.flags & !command.allowed_flags();
    if stray != 0 {
        return Err(Refusal::new(
            wire::EINVAL,
            format!("flags {stray:#x} do not apply to {what}"),
        ));
    }
    if request.flags & wire::CMD_FLAG_DF != 0 && !limits.structured {
        return Err(Refusal::new(
            wire::EINVAL,
            "NBD_CMD_FLAG_DF without structured replies",
        ));
    }
    match command {
        Command::Flush | Command::Disconnect => {
            if request.offset != 0 || request.length != 0 {
                return Err(Refusal::new(
                    wire::EINVAL,
                    format!("{what} carries no offset or length"),
                ));
            }
            return Ok(());
        }
        Command::BlockStatus if !limits.allocation => {
            return Err(Refusal::new(
                wire::EINVAL,
                "NBD_CMD_BLOCK_STATUS without a metadata context selected for this export \
                 (base:allocation)",
            ));
        }
        _ => {}
    }
    if request.length == 0 {
        return Err(Refusal::new(wire::EINVAL, format!("{what} of length 0")));
    }
    let fits = request
        .offset
        .checked_add(u64::from(request.length))
        .is_some_and(|end| end <= limits.size_bytes);
    if !fits {
        let errno = match command {
            Command::Write | Command::WriteZeroes => wire::ENOSPC,
            _ => wire::EINVAL,
        };
        return Err(Refusal::new(
            errno,
            format!(
                "{what} of {} bytes at offset {} goes past the end of the export ({} bytes)",
                request.length, request.offset, limits.size_bytes
            ),
        ));
    }
    let too_large = request.length > MAX_PAYLOAD_BYTES;
    match command {
        Command::Read | Command::Write if too_large => {
            let errno = if command == Command::Read && limits.structured {
                wire::EOVERFLOW
            } else {
                wire::EINVAL
            };
            Err(Refusal::new(
                errno,
                format!(
                    "{what} of {} bytes is larger than the maximum payload of \
                     {MAX_PAYLOAD_BYTES} bytes",
                    request.length
                ),
            ))
        }
        Command::WriteZeroes
            if request.flags & wire::CMD_FLAG_FAST_ZERO != 0
                && request.flags & wire::CMD_FLAG_NO_HOLE != 0 =>
        {
            Err(Refusal::new(
                wire::ENOTSUP,
                "zeroes that must be allocated are written like data: not fast",
            ))
        }
        _ => Ok(()),
    }
}

/// Serves requests from `read` until the client disconnects, replying through `writer`.
pub async fn serve<R: AsyncRead + Unpin>(
    session: Session,
    read: R,
    writer: Arc<FrameWriter>,
) -> io::Result<()> {
    let limits = Limits::of(&session);
    let session = Arc::new(session);
    // A request's header and a small write's payload, or several requests, in one system call.
    let mut read = tokio::io::BufReader::with_capacity(64 * 1024, read);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let budget = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BYTES / BUDGET_UNIT));
    loop {
        let mut header = [0u8; wire::REQUEST_BYTES];
        match read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let request = wire::parse_request(&header)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        // Reads and writes hold their bytes' worth of the budget until answered.
        let carries = matches!(request.command, Command::Read | Command::Write)
            && request.length <= MAX_PAYLOAD_BYTES;
        let units = if carries {
            (request.length as usize).div_ceil(BUDGET_UNIT).max(1) as u32
        } else {
            1
        };
        let bytes = budget
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("never closed");
        let mut refused = check(&request, &limits).err();
        let data = if request.command == Command::Write {
            if refused.is_none() {
                let mut data = BytesMut::zeroed(request.length as usize);
                read.read_exact(&mut data).await?;
                Some(data.freeze())
            } else {
                // The payload follows the header whatever the answer: skip it, streamed.
                let payload = u64::from(request.length);
                tokio::io::copy(&mut (&mut read).take(payload), &mut tokio::io::sink()).await?;
                None
            }
        } else {
            None
        };
        if request.command == Command::Disconnect && refused.is_none() {
            drop((slot, bytes));
            // Wait for what is in flight, so every reply is sent before the socket closes.
            let _all = slots
                .acquire_many(MAX_IN_FLIGHT as u32)
                .await
                .expect("never closed");
            return Ok(());
        }
        let (session, writer) = (session.clone(), writer.clone());
        if let Some(refusal) = refused.take() {
            debug!(export = %session.export.name, ?request, message = %refusal.message, "refused an NBD request");
            writer.queue_bytes(error_reply(&session, request.handle, &refusal));
            continue;
        }
        tokio::spawn(async move {
            let reply = match commands::run(&session, &request, data).await {
                Ok(Outcome::Done) => wire::simple_reply(0, request.handle, None),
                Ok(Outcome::Data(data)) if session.structured => {
                    wire::data_chunk(request.handle, request.offset, &data)
                }
                Ok(Outcome::Data(data)) => wire::simple_reply(0, request.handle, Some(&data)),
                Ok(Outcome::Extents(descriptors)) => wire::block_status_chunk(
                    request.handle,
                    session
                        .allocation_context
                        .expect("checked with the request"),
                    &descriptors,
                ),
                Err(refusal) => {
                    if refusal.errno == wire::EIO {
                        warn!(export = %session.export.name, ?request, error = %refusal.message, "NBD request failed");
                    }
                    error_reply(&session, request.handle, &refusal)
                }
            };
            writer.queue_bytes(reply);
            drop((slot, bytes));
        });
    }
}

/// The bytes of the in-flight budget one permit stands for.
const BUDGET_UNIT: usize = 4096;
const _: () = assert!(MAX_IN_FLIGHT_BYTES >= MAX_PAYLOAD_BYTES as usize);

fn error_reply(session: &Session, handle: u64, refusal: &Refusal) -> Bytes {
    if session.structured {
        wire::error_chunk(handle, refusal.errno, &refusal.message)
    } else {
        wire::simple_reply(refusal.errno, handle, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 16 << 30;

    fn limits() -> Limits {
        Limits {
            size_bytes: SIZE,
            structured: true,
            allocation: true,
        }
    }

    fn request(command: Command, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            command,
            handle: 1,
            offset,
            length,
        }
    }

    fn errno(request: Request, limits: &Limits) -> Option<u32> {
        check(&request, limits).err().map(|r| r.errno)
    }

    #[test]
    fn requests_inside_the_export_pass() {
        let l = limits();
        for command in [
            Command::Read,
            Command::Write,
            Command::Trim,
            Command::WriteZeroes,
            Command::BlockStatus,
        ] {
            assert_eq!(
                errno(request(command, 0, 4096, 8192), &l),
                None,
                "{command:?}"
            );
            assert_eq!(
                errno(request(command, wire::CMD_FLAG_FUA, SIZE - 512, 512), &l),
                None
            );
        }
        assert_eq!(errno(request(Command::Flush, 0, 0, 0), &l), None);
        // Trims, zeroes and block status of any length inside the export.
        for command in [Command::Trim, Command::WriteZeroes, Command::BlockStatus] {
            assert_eq!(errno(request(command, 0, 0, u32::MAX - 511), &l), None);
        }
    }

    #[test]
    fn bad_requests_get_the_errors_the_protocol_names() {
        let l = limits();
        let cases = [
            (request(Command::Unknown(42), 0, 0, 4096), wire::EINVAL),
            (request(Command::Read, 1 << 9, 0, 4096), wire::EINVAL),
            (
                request(Command::Write, wire::CMD_FLAG_REQ_ONE, 0, 4096),
                wire::EINVAL,
            ),
            (request(Command::Read, 0, 0, 0), wire::EINVAL),
            (request(Command::Write, 0, 0, 0), wire::EINVAL),
            (request(Command::Trim, 0, 4096, 0), wire::EINVAL),
            (request(Command::Read, 0, SIZE, 4096), wire::EINVAL),
            (request(Command::Trim, 0, SIZE - 4096, 8192), wire::EINVAL),
            (request(Command::BlockStatus, 0, SIZE, 4096), wire::EINVAL),
            (request(Command::Write, 0, SIZE - 4096, 8192), wire::ENOSPC),
            (
                request(Command::WriteZeroes, 0, u64::MAX - 1, 4096),
                wire::ENOSPC,
            ),
            (request(Command::Flush, 0, 4096, 0), wire::EINVAL),
            (
                request(Command::Read, 0, 0, MAX_PAYLOAD_BYTES + 512),
                wire::EOVERFLOW,
            ),
            (
                request(Command::Write, 0, 0, MAX_PAYLOAD_BYTES + 512),
                wire::EINVAL,
            ),
            (
                request(
                    Command::WriteZeroes,
                    wire::CMD_FLAG_FAST_ZERO | wire::CMD_FLAG_NO_HOLE,
                    0,
                    4096,
                ),
                wire::ENOTSUP,
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(errno(request, &l), Some(expected), "{request:?}");
        }
        let message = check(&request(Command::Read, 0, SIZE, 4096), &l)
            .unwrap_err()
            .message;
        assert!(message.contains("past the end"), "{message}");
    }

    #[test]
    fn what_a_connection_negotiated_decides_the_rest() {
        let simple = Limits {
            structured: false,
            allocation: false,
            ..limits()
        };
        // Any alignment is served (read-modify-write).
        assert_eq!(errno(request(Command::Write, 0, 100, 1000), &simple), None);
        assert_eq!(errno(request(Command::Read, 0, 1, 1), &limits()), None);
        // Without structured replies, no block status, no DF, and large reads are EINVAL.
        assert_eq!(
            errno(request(Command::BlockStatus, 0, 0, 4096), &simple),
            Some(wire::EINVAL)
        );
        assert_eq!(
            errno(request(Command::Read, wire::CMD_FLAG_DF, 0, 4096), &simple),
            Some(wire::EINVAL)
        );
        assert_eq!(
            errno(
                request(Command::Read, 0, 0, MAX_PAYLOAD_BYTES + 512),
                &simple
            ),
            Some(wire::EINVAL)
        );
        // Structured replies, but no context selected: block status is refused.
        let unselected = Limits {
            allocation: false,
            ..limits()
        };
        assert_eq!(
            errno(request(Command::BlockStatus, 0, 0, 4096), &unselected),
            Some(wire::EINVAL)
        );
    }
}
