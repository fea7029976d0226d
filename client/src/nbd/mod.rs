//! The NBD server of `vbs nbd` and `vbs up`: every volume of the cluster is an export, by its
//! name, so that tools nobody here wrote (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdfuse, fio's
//! `nbd` engine, the kernel's client) can use it.
//!
//! - Exports: every volume, including those created after the server started (`exports`);
//!   `NBD_OPT_LIST` names them. A server may have a default export for clients that name none.
//! - Structured replies, and block status for the `base:allocation` context: blocks never
//!   written or trimmed are holes that read as zeroes, answered from the primaries' indexes.
//! - Requests are pipelined: each runs in its own task and is answered when done, in any order
//!   (`transmission`), bounded in number and in bytes per connection.
//! - Writes are durable on every current copy when the volume acknowledges them, so FLUSH and
//!   FUA need no extra work beyond confirming the primaries still serve; the same makes
//!   multi-conn safe (`NBD_FLAG_CAN_MULTI_CONN`).
//! - Block sizes: minimum 1 byte, preferred 4096, largest payload 32 MiB. Any byte range
//!   works: the partial blocks at its ends are read-modified-written. (FUSE clients such as
//!   `nbdfuse` pass sub-sector writes through, and libnbd refuses to send a request a larger
//!   advertised minimum forbids.) TRIM, WRITE_ZEROES and BLOCK_STATUS take any length inside
//!   the export.
//! - Every request gets a reply: an error the protocol names for one the server cannot take
//!   (with a message when structured replies are on); only a broken stream ends a connection.
//!
//! # Layout
//! - `wire`: the protocol's constants and message layouts.
//! - `exports`: the volumes served, opened on first use and shared by every connection.
//! - `handshake`: the option haggling.
//! - `transmission`: the request loop and the checks every request passes.
//! - `commands`: running a request against the volume.

mod commands;
pub mod exports;
pub mod handshake;
pub mod transmission;
pub mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::admission::PerAddress;
use crate::writer::FrameWriter;
pub use exports::Exports;

/// Requests one NBD connection may have in flight; more wait (the socket is not read).
pub const MAX_IN_FLIGHT: usize = 128;
/// Bytes of reads and writes one connection may have in flight.
pub const MAX_IN_FLIGHT_BYTES: usize = 256 << 20;
/// Connections one client address may hold open at once.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// The advertised minimum block size (NBD_INFO_BLOCK_SIZE): any byte range is served.
pub const MIN_BLOCK_BYTES: u32 = 1;
/// The advertised preferred block size: vbs's block; anything smaller is read-modify-written.
pub const PREFERRED_BLOCK_BYTES: u32 = crate::types::BLOCK_BYTES as u32;
/// The largest read or write payload (what qemu and the kernel send at most).
pub const MAX_PAYLOAD_BYTES: u32 = 32 << 20;

/// Serves `exports` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<Exports>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
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
        let exports = exports.clone();
        tokio::spawn(async move {
            match connection(&exports, stream, peer).await {
                Ok(()) => debug!(%peer, "NBD client disconnected"),
                Err(e) => warn!(%peer, error = %e, "closed an NBD connection"),
            }
            drop(admitted);
        });
    }
}

async fn connection(exports: &Exports, mut stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(session) = handshake::negotiate(exports, &mut stream).await? else {
        return Ok(());
    };
    info!(%peer, export = %session.export.name, size_bytes = session.size_bytes,
        structured = session.structured, block_status = session.allocation_context.is_some(),
        "NBD client connected");
    let (read, write) = stream.into_split();
    let writer = Arc::new(FrameWriter::tcp(write, move |e| {
        debug!(%peer, error = %e, "could not send NBD replies");
    }));
    transmission::serve(session, read, writer).await
}
