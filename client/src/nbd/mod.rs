//! `vbs nbd`: an NBD server (fixed newstyle handshake, simple replies) that exports one volume
//! through the client library, so tools nobody here wrote (qemu-img, qemu-io, the kernel's NBD
//! client) can use it.
//!
//! - Requests are pipelined: each runs in its own task and is answered when done, in any order.
//! - Writes are durable on every current copy when the volume acknowledges them, so FLUSH and FUA
//!   need no extra work beyond confirming the primaries still serve (`Volume::flush`).
//! - The export advertises 4096 bytes as its preferred block size; smaller or unaligned requests
//!   are served by read-modify-write of the blocks they touch.
//! - TRIM and WRITE_ZEROES trim the whole blocks they cover (trimmed blocks read as zeroes); the
//!   partial blocks at either end of a WRITE_ZEROES are zeroed by read-modify-write.

pub mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore};
use tracing::{debug, info, warn};

use crate::admission::PerAddress;
use crate::conn::FrameWriter;
use crate::types::BLOCK_BYTES;
use crate::volume::{ClientError, Volume};
use wire::{Command, Request};

/// Requests one NBD connection may have in flight; more wait (the socket is not read).
pub const MAX_IN_FLIGHT: usize = 128;
/// Connections one client address may hold open at once.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

/// Serves `volume` as export `name` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    volume: Arc<Volume>,
    name: String,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let export = Arc::new(Export {
        volume,
        name,
        unaligned: Mutex::new(()),
    });
    let gate = PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let Some(admitted) = gate.admit(peer.ip()) else {
            warn!(%peer, limit = gate.limit(), "refused an NBD connection: too many from this address");
            continue;
        };
        let export = export.clone();
        tokio::spawn(async move {
            match connection(export, stream, peer).await {
                Ok(()) => debug!(%peer, "NBD client disconnected"),
                Err(e) => warn!(%peer, error = %e, "closed an NBD connection"),
            }
            drop(admitted);
        });
    }
}

struct Export {
    volume: Arc<Volume>,
    name: String,
    /// Read-modify-write of partial blocks is done one at a time, so two of them on the same block
    /// cannot lose each other's bytes.
    unaligned: Mutex<()>,
}

impl Export {
    fn size(&self) -> u64 {
        self.volume.size_bytes()
    }

    fn matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    fn transmission_flags(&self) -> u16 {
        wire::FLAG_HAS_FLAGS
            | wire::FLAG_SEND_FLUSH
            | wire::FLAG_SEND_FUA
            | wire::FLAG_SEND_TRIM
            | wire::FLAG_SEND_WRITE_ZEROES
            // Every acknowledged write is durable and visible to every other connection.
            | wire::FLAG_CAN_MULTI_CONN
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

async fn connection(
    export: Arc<Export>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if !handshake(&export, &mut stream).await? {
        return Ok(());
    }
    info!(%peer, export = %export.name, "NBD client connected");
    let (read, write) = stream.into_split();
    let writer = Arc::new(FrameWriter::tcp(write, move |e| {
        debug!(%peer, error = %e, "could not send NBD replies");
    }));
    transmission(export, read, writer).await
}

/// The option haggling. Returns whether the transmission phase starts (not when the client
/// aborted).
async fn handshake(export: &Export, stream: &mut TcpStream) -> io::Result<bool> {
    let mut hello = BytesMut::new();
    hello.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&hello).await?;
    let client_flags = stream.read_u32().await?;
    if client_flags & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(invalid(
            "the client does not speak the fixed newstyle handshake",
        ));
    }
    let no_zeroes = client_flags & wire::FLAG_C_NO_ZEROES != 0;
    loop {
        if stream.read_u64().await? != wire::IHAVEOPT {
            return Err(invalid("bad option magic"));
        }
        let option = stream.read_u32().await?;
        let length = stream.read_u32().await?;
        if length > wire::MAX_OPTION_BYTES {
            return Err(invalid("option too large"));
        }
        let mut payload = vec![0u8; length as usize];
        stream.read_exact(&mut payload).await?;
        match option {
            wire::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&payload);
                if !export.matches(&name) {
                    // The protocol has no error reply for this option: the server closes.
                    return Err(invalid(&format!("unknown export {name:?}")));
                }
                let mut reply = BytesMut::new();
                reply.extend_from_slice(&export.size().to_be_bytes());
                reply.extend_from_slice(&export.transmission_flags().to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                stream.write_all(&reply).await?;
                return Ok(true);
            }
            wire::OPT_ABORT => {
                stream
                    .write_all(&wire::option_reply(option, wire::REP_ACK, &[]))
                    .await?;
                return Ok(false);
            }
            wire::OPT_LIST => {
                let mut server = Vec::new();
                server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
                server.extend_from_slice(export.name.as_bytes());
                stream
                    .write_all(&wire::option_reply(option, wire::REP_SERVER, &server))
                    .await?;
                stream
                    .write_all(&wire::option_reply(option, wire::REP_ACK, &[]))
                    .await?;
            }
            wire::OPT_INFO | wire::OPT_GO => {
                let Some((name, _requested)) = wire::parse_go(&payload) else {
                    stream
                        .write_all(&wire::option_reply(option, wire::REP_ERR_INVALID, &[]))
                        .await?;
                    continue;
                };
                if !export.matches(&name) {
                    let message =
                        format!("no export {name:?}; this server exports {:?}", export.name);
                    stream
                        .write_all(&wire::option_reply(
                            option,
                            wire::REP_ERR_UNKNOWN,
                            message.as_bytes(),
                        ))
                        .await?;
                    continue;
                }
                let info = wire::info_export(export.size(), export.transmission_flags());
                stream
                    .write_all(&wire::option_reply(option, wire::REP_INFO, &info))
                    .await?;
                // Any size works (partial blocks are read-modified-written), 4 KiB is best.
                let sizes = wire::info_block_size(1, BLOCK_BYTES as u32, wire::MAX_REQUEST_BYTES);
                stream
                    .write_all(&wire::option_reply(option, wire::REP_INFO, &sizes))
                    .await?;
                stream
                    .write_all(&wire::option_reply(option, wire::REP_ACK, &[]))
                    .await?;
                if option == wire::OPT_GO {
                    return Ok(true);
                }
            }
            _ => {
                stream
                    .write_all(&wire::option_reply(option, wire::REP_ERR_UNSUP, &[]))
                    .await?;
            }
        }
    }
}

async fn transmission(
    export: Arc<Export>,
    read: OwnedReadHalf,
    writer: Arc<FrameWriter>,
) -> io::Result<()> {
    // A request's header and a small write's payload, or several requests, in one system call.
    let mut read = tokio::io::BufReader::with_capacity(64 * 1024, read);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let mut header = [0u8; wire::REQUEST_BYTES];
        match read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let request = wire::parse_request(&header).map_err(|e| invalid(&e.to_string()))?;
        if request.length > wire::MAX_REQUEST_BYTES {
            // A write's payload this large cannot be skipped safely: give up on the connection.
            return Err(invalid(&format!("a request of {} bytes", request.length)));
        }
        let data = if request.command == Command::Write {
            let mut data = BytesMut::zeroed(request.length as usize);
            read.read_exact(&mut data).await?;
            Some(data.freeze())
        } else {
            None
        };
        if request.command == Command::Disconnect {
            // Wait for what is in flight, so every reply is sent before the socket closes.
            let _all = slots
                .acquire_many(MAX_IN_FLIGHT as u32)
                .await
                .expect("never closed");
            return Ok(());
        }
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let (export, writer) = (export.clone(), writer.clone());
        tokio::spawn(async move {
            let reply = match execute(export, request, data).await {
                Ok(data) => wire::simple_reply(0, request.handle, data.as_ref()),
                Err(errno) => wire::simple_reply(errno, request.handle, None),
            };
            writer.queue_bytes(reply);
            drop(slot);
        });
    }
}

/// Runs one request; `Ok(Some(data))` for a read.
async fn execute(
    export: Arc<Export>,
    request: Request,
    data: Option<Bytes>,
) -> Result<Option<Bytes>, u32> {
    let export = &*export;
    let (offset, length) = (request.offset, u64::from(request.length));
    let end = offset.checked_add(length).ok_or(wire::EINVAL)?;
    let in_range = end <= export.size();
    match request.command {
        Command::Read if !in_range => Err(wire::EINVAL),
        Command::Write | Command::WriteZeroes if !in_range => Err(wire::ENOSPC),
        Command::Trim if !in_range => Err(wire::EINVAL),
        Command::Read => read(export, offset, length).await.map(Some),
        Command::Write => {
            let data = data.expect("a write carries its data");
            write(export, offset, data).await?;
            Ok(None)
        }
        Command::Flush => export.volume.flush().await.map(|()| None).map_err(errno),
        Command::Trim => {
            let (first, last) = whole_blocks(offset, end);
            if last > first {
                export
                    .volume
                    .trim(first, last - first)
                    .await
                    .map_err(errno)?;
            }
            Ok(None)
        }
        Command::WriteZeroes => {
            let (first, last) = whole_blocks(offset, end);
            if last > first {
                export
                    .volume
                    .trim(first, last - first)
                    .await
                    .map_err(errno)?;
                if offset < first {
                    write(
                        export,
                        offset,
                        Bytes::from(vec![0u8; (first - offset) as usize]),
                    )
                    .await?;
                }
                if end > last {
                    write(export, last, Bytes::from(vec![0u8; (end - last) as usize])).await?;
                }
            } else {
                write(export, offset, Bytes::from(vec![0u8; length as usize])).await?;
            }
            Ok(None)
        }
        Command::Disconnect => Ok(None),
        Command::Unknown(_) => Err(wire::EINVAL),
    }
}

/// The whole blocks inside `[offset, end)`.
fn whole_blocks(offset: u64, end: u64) -> (u64, u64) {
    (
        offset.next_multiple_of(BLOCK_BYTES),
        end / BLOCK_BYTES * BLOCK_BYTES,
    )
}

/// The blocks covering `[offset, end)`.
fn covering_blocks(offset: u64, end: u64) -> (u64, u64) {
    (
        offset / BLOCK_BYTES * BLOCK_BYTES,
        end.next_multiple_of(BLOCK_BYTES),
    )
}

async fn read(export: &Export, offset: u64, length: u64) -> Result<Bytes, u32> {
    if length == 0 {
        return Ok(Bytes::new());
    }
    let (first, last) = covering_blocks(offset, offset + length);
    let data = export
        .volume
        .read(first, last - first)
        .await
        .map_err(errno)?;
    let start = (offset - first) as usize;
    Ok(data.slice(start..start + length as usize))
}

async fn write(export: &Export, offset: u64, data: Bytes) -> Result<(), u32> {
    let end = offset + data.len() as u64;
    if data.is_empty() {
        return Ok(());
    }
    if offset % BLOCK_BYTES == 0 && end % BLOCK_BYTES == 0 {
        return export.volume.write(offset, data).await.map_err(errno);
    }
    let _one_at_a_time = export.unaligned.lock().await;
    let (first, last) = covering_blocks(offset, end);
    let old = export
        .volume
        .read(first, last - first)
        .await
        .map_err(errno)?;
    let mut merged = BytesMut::from(&old[..]);
    let start = (offset - first) as usize;
    merged[start..start + data.len()].copy_from_slice(&data);
    export
        .volume
        .write(first, merged.freeze())
        .await
        .map_err(errno)
}

fn errno(error: ClientError) -> u32 {
    if error.is_invalid_request() {
        wire::EINVAL
    } else {
        warn!(%error, "NBD request failed");
        wire::EIO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges() {
        assert_eq!(whole_blocks(0, 8192), (0, 8192));
        assert_eq!(whole_blocks(512, 8192), (4096, 8192));
        assert_eq!(whole_blocks(512, 4000), (4096, 0), "no whole block inside");
        assert_eq!(covering_blocks(512, 4000), (0, 4096));
        assert_eq!(covering_blocks(4096, 12289), (4096, 16384));
    }
}
