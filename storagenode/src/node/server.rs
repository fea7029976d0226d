//! The data-plane listener: one task per connection reads frames, runs each request in a task of
//! its own (so requests are pipelined and answered in any order), and writes responses whole.
//!
//! Limits: a connection has at most [`MAX_IN_FLIGHT`] requests being served; past that it is not
//! read until one finishes (backpressure, not an error). A frame over [`proto::MAX_FRAME_BYTES`],
//! a malformed frame, or a handshake that fails closes that connection with a logged reason;
//! nothing a peer sends can stop the process.
//!
//! With TLS on, a connection is served only once its TLS handshake is done; with a token, only
//! once the peer has proved it knows the token ([`super::handshake`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use vbs_wire::admission::{PerAddress, DEFAULT_CONNECTIONS_PER_ADDRESS};
use vbs_wire::conn::{read_frame, FrameWriter};
use vbs_wire::proto::{
    ClientRequest, ErrorCode, Frame, PeerKind, PeerRequest, Request, Response, WireError,
    MAX_IN_FLIGHT,
};
use vbs_wire::security::Surface;
use vbs_wire::types::NodeId;

use super::handshake::HandshakeError;
use super::metrics::IoKind;
use super::{catchup, handshake, primary, repair, replica, scrub, Node};

/// How long a new connection has to finish its TLS handshake, and then to say hello (and prove
/// it knows the token).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let gate = PerAddress::new(DEFAULT_CONNECTIONS_PER_ADDRESS);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return Ok(()),
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(admitted) = gate.admit(peer.ip()) else {
                    warn!(%peer, limit = gate.limit(), "refused a data-plane connection: too many from this address");
                    continue;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(reason) = connection(node, stream, peer).await {
                        warn!(%peer, %reason, "closed a data-plane connection");
                    }
                    drop(admitted);
                });
            }
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(e) => {
                warn!(error = %e, "accepting a data-plane connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why the node closed a data-plane connection, when that was not a clean end.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("setting TCP_NODELAY: {0}")]
    NoDelay(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("no TLS handshake within the handshake timeout")]
    TlsTimeout,
    #[error("no hello (or proof) within the handshake timeout")]
    HandshakeTimeout,
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("{0}")]
    Read(std::io::Error),
    #[error("expected a request, got {0}")]
    NotARequest(&'static str),
}

/// Serves one connection. Returns why it was closed when that was not a clean end.
async fn connection(node: Arc<Node>, stream: TcpStream, peer: SocketAddr) -> Result<(), Closed> {
    stream.set_nodelay(true).map_err(Closed::NoDelay)?;
    let write_failed = move |e: std::io::Error| {
        debug!(%peer, error = %e, "could not send responses");
    };
    let Some(tls) = node.config.security.tls.clone() else {
        let (read, write) = stream.into_split();
        let writer = FrameWriter::tcp(write, write_failed);
        return serve_stream(node, read, writer, peer).await;
    };
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            node.rejections.count(Surface::Tls);
            return Err(Closed::Tls(e));
        }
        Err(_) => {
            node.rejections.count(Surface::Tls);
            return Err(Closed::TlsTimeout);
        }
    };
    let (read, write) = tokio::io::split(stream);
    serve_stream(node, read, FrameWriter::spawn(write, write_failed), peer).await
}

/// Serves one connection over `read` and `writer` (TCP or TLS): the handshake, then requests.
/// Each request is served by its own task, which sends its response itself.
async fn serve_stream<R>(
    node: Arc<Node>,
    mut read: R,
    writer: FrameWriter,
    peer: SocketAddr,
) -> Result<(), Closed>
where
    R: AsyncRead + Unpin,
{
    let writer = Arc::new(writer);
    let mut buf = BytesMut::new();

    let greeted = handshake::accept(&node, &mut read, &mut buf, &writer);
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, greeted).await {
        Ok(Ok(Some(hello))) => hello,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(failed)) => return Err(failed.into()),
        Err(_) => {
            if node.config.security.token.is_some() {
                node.rejections.count(Surface::Data);
            }
            return Err(Closed::HandshakeTimeout);
        }
    };
    debug!(%peer, name = %hello.name, ?hello.peer, "data-plane connection");

    let peer_node = match hello.peer {
        PeerKind::Node => NodeId::parse(&hello.name).ok(),
        PeerKind::Client => None,
    };
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let frame = match read_frame(&mut read, &mut buf).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => return Err(Closed::Read(e)),
        };
        let (id, request) = match frame {
            (id, Frame::Request(request)) => (id, request),
            (_, other) => return Err(Closed::NotARequest(frame_name(&other))),
        };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (node, writer, peer_node) = (node.clone(), writer.clone(), peer_node.clone());
        tokio::spawn(async move {
            let response = match handle(&node, peer_node.as_ref(), request).await {
                Ok(response) => response,
                Err(error) => Response::Error(error),
            };
            writer.queue(id, &Frame::Response(response));
            drop(slot);
        });
    }
}

fn frame_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::Hello(_) => "a second hello",
        Frame::HelloOk(_) => "a hello answer",
        Frame::Auth(_) => "a proof outside the handshake",
        Frame::AuthOk(_) => "a proof answer",
        Frame::Request(_) => "a request",
        Frame::Response(_) => "a response",
    }
}

/// `peer` is the storage node on the other end, when it said it is one.
async fn handle(
    node: &Arc<Node>,
    peer: Option<&NodeId>,
    request: Request,
) -> Result<Response, WireError> {
    let unit = request.unit();
    let Some(runtime) = node.unit(unit) else {
        // Perhaps assigned a moment ago: learn the assignment now rather than at the next beat.
        node.refresh.notify_one();
        return Err(WireError::new(
            ErrorCode::UnknownUnit,
            format!("storage node {} holds no unit {unit}", node.id),
        ));
    };
    let request = match request {
        Request::Client(request) => request,
        Request::Peer(request) => return peer_request(node, peer, &runtime, request).await,
    };
    let started = std::time::Instant::now();
    let volume = unit.volume;
    let (kind, bytes, result) = match request {
        ClientRequest::Read {
            generation,
            lba,
            blocks,
            ..
        } => {
            let bytes = u64::from(blocks) * vbs_wire::types::BLOCK_BYTES;
            (
                IoKind::Read,
                bytes,
                primary::read(
                    node,
                    &runtime,
                    generation,
                    lba,
                    blocks,
                    node.config.write_timeout,
                )
                .await,
            )
        }
        ClientRequest::Write {
            generation,
            lba,
            data,
            ..
        } => {
            let bytes = data.len() as u64;
            (
                IoKind::Write,
                bytes,
                primary::write(node, &runtime, generation, lba, data).await,
            )
        }
        ClientRequest::Trim {
            generation,
            lba,
            blocks,
            ..
        } => {
            let bytes = blocks * vbs_wire::types::BLOCK_BYTES;
            (
                IoKind::Trim,
                bytes,
                primary::trim(node, &runtime, generation, lba, blocks).await,
            )
        }
        ClientRequest::Flush { generation, .. } => {
            let result = runtime.serving_primary(generation).map(|_| Response::Flush);
            (IoKind::Flush, 0, result)
        }
        ClientRequest::Allocation {
            generation,
            lba,
            blocks,
            ..
        } => {
            return primary::allocation(
                node,
                &runtime,
                generation,
                lba,
                blocks,
                node.config.write_timeout,
            )
            .await
        }
        ClientRequest::Scrub { generation, .. } => {
            return scrub::scrub(node, &runtime, generation)
                .await
                .map(Response::Scrubbed)
        }
    };
    node.io_metrics
        .record(volume, kind, bytes, started.elapsed(), result.is_ok());
    result
}

/// Requests between storage nodes.
async fn peer_request(
    node: &Arc<Node>,
    peer: Option<&NodeId>,
    runtime: &Arc<super::unit::UnitRuntime>,
    request: PeerRequest,
) -> Result<Response, WireError> {
    match request {
        PeerRequest::Replicate {
            generation,
            committed,
            records,
            ..
        } => replica::replicate(node, runtime, generation, committed, records).await,
        PeerRequest::ResendRange {
            generation,
            after,
            until,
            ..
        } => replica::resend(runtime, generation, after, until),
        PeerRequest::CatchUp {
            generation,
            after,
            after_generation,
            max_bytes,
            join,
            ..
        } => {
            let Some(copy) = peer else {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    "catch-up is for storage nodes; clients read from the primary",
                ));
            };
            let pull = catchup::Pull {
                generation,
                after,
                after_generation,
                max_bytes,
                join,
            };
            catchup::serve(node, runtime, copy.clone(), pull).await
        }
        PeerRequest::FetchRecord {
            generation, vba, ..
        } => repair::serve_fetch(runtime, peer, generation, vba).await,
        PeerRequest::ScrubRange {
            generation,
            after,
            through,
            ..
        } => scrub::serve_range(node, runtime, peer, generation, after, through).await,
        PeerRequest::ScrubRepair {
            generation,
            after,
            through,
            entries,
            ..
        } => scrub::serve_repair(node, runtime, peer, generation, (after, through), entries).await,
    }
}
