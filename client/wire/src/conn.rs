//! A pipelined data-plane connection to a storage node, and a pool of them by address.
//!
//! Many calls share one connection: each gets a request id, its encoded frame goes to the
//! connection's [`FrameWriter`], and a reader task hands each response to the call with the same
//! id. A frame is queued whole, so a call that is cancelled (a timeout, a dropped future) can
//! never leave half a frame on the wire. At most [`MAX_IN_FLIGHT`] calls are in flight per
//! connection; more wait for a slot, which also bounds the writer's queue. When the connection fails, every call in flight
//! fails with [`DataError::Closed`] and the pool opens a new one for the next call.
//!
//! Connections run over TCP, or over TLS when the [`Security`] given says so; with a token, the
//! handshake proves on both sides that they know the cluster secret (`docs/protocol.md`).
//!
//! One file, past 600 lines: a connection's life (handshake, the in-flight table, the reader
//! task, failure reaching every call) is one state machine, and the pool is a few lines on top.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use crate::proto::{
    self, Auth, ErrorCode, Frame, Hello, PeerKind, ProtocolError, Request, Response, WireError,
    AUTH_PROTOCOL_VERSION, MAX_IN_FLIGHT, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use crate::security::{token, Security, Token};
pub use crate::writer::FrameWriter;

/// Errors of data-plane calls.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot connect to storage node {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to storage node {addr} closed: {reason}")]
    Closed { addr: String, reason: String },
    #[error("no answer from storage node {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The node answered with an error.
    #[error("storage node {addr}: {error}")]
    Remote { addr: String, error: WireError },
    /// The handshake did not authenticate: the node refused this side's proof, the node could
    /// not prove it knows the cluster secret, or only one side has a token.
    #[error("storage node {addr}: {reason}")]
    Unauthorized { addr: String, reason: String },
}

impl DataError {
    /// The node's error, if it answered with one.
    pub fn remote(&self) -> Option<&WireError> {
        match self {
            DataError::Remote { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether the node could not be reached or did not answer (rather than answering an error).
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, DataError::Remote { .. })
    }
}

type Waiters = HashMap<u64, oneshot::Sender<Response>>;

/// Calls waiting for their response, or why the connection is closed.
enum Pending {
    Open(Waiters),
    Closed(String),
}

struct Shared {
    addr: String,
    pending: std::sync::Mutex<Pending>,
}

impl Shared {
    fn close(&self, reason: String) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Pending::Open(_) = *pending {
            // Dropping the senders wakes every waiting call with "closed".
            *pending = Pending::Closed(reason);
        }
    }

    fn closed_reason(&self) -> Option<String> {
        match &*self.pending.lock().unwrap_or_else(|p| p.into_inner()) {
            Pending::Open(_) => None,
            Pending::Closed(reason) => Some(reason.clone()),
        }
    }
}

pub struct Connection {
    shared: Arc<Shared>,
    /// Where requests are written. Its queue is unbounded, bounded in fact by `slots`: every
    /// queued frame holds an in-flight slot.
    frames: FrameWriter,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    node: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Replies still out (from `send`) would otherwise wait for their timeout: nobody reads.
        self.shared.close("the connection was dropped".into());
        self.reader.abort();
        // The writer ends by itself when `frames` is dropped, after sending what is queued.
    }
}

impl Connection {
    /// Connects to `addr` and shakes hands, within `timeout`, in plaintext and without a
    /// token (an open cluster).
    pub async fn connect(
        addr: &str,
        peer: PeerKind,
        name: &str,
        timeout: Duration,
    ) -> Result<Connection, DataError> {
        Connection::connect_from(addr, None, peer, name, &Security::default(), timeout).await
    }

    /// Like [`Connection::connect`], from local address `source` when one is given (see
    /// [`Pool::with_source`]), over TLS and with a proof of the token as `security` says.
    pub async fn connect_from(
        addr: &str,
        source: Option<IpAddr>,
        peer: PeerKind,
        name: &str,
        security: &Security,
        timeout: Duration,
    ) -> Result<Connection, DataError> {
        let connect_err = |reason: String| DataError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let connecting = async {
            let tcp = open_stream(addr, source)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            tcp.set_nodelay(true)
                .map_err(|e| connect_err(e.to_string()))?;
            let greeting = Greeting {
                addr,
                peer,
                name,
                token: security.token.as_deref(),
            };
            match &security.tls {
                None => {
                    let mut stream = tcp;
                    let (leftover, node) = greeting.shake(&mut stream).await?;
                    let (read, write) = stream.into_split();
                    Ok(Connection::start(addr, read, leftover, node, |on_error| {
                        FrameWriter::tcp(write, on_error)
                    }))
                }
                Some(tls) => {
                    let mut stream = tls
                        .connect(addr, tcp)
                        .await
                        .map_err(|e| connect_err(format!("TLS: {e}")))?;
                    let (leftover, node) = greeting.shake(&mut stream).await?;
                    let (read, write) = tokio::io::split(stream);
                    Ok(Connection::start(addr, read, leftover, node, |on_error| {
                        FrameWriter::spawn(write, on_error)
                    }))
                }
            }
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| connect_err(format!("no handshake within {timeout:?}")))?
    }

    /// Starts the reader task of a connection whose handshake is done, and its writer, made by
    /// `writer` from what to do when a write fails.
    fn start<R>(
        addr: &str,
        read: R,
        leftover: BytesMut,
        node: String,
        writer: impl FnOnce(Box<dyn FnOnce(io::Error) + Send>) -> FrameWriter,
    ) -> Connection
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            pending: std::sync::Mutex::new(Pending::Open(HashMap::new())),
        });
        let reader = tokio::spawn(read_responses(read, leftover, shared.clone()));
        let frames = {
            let shared = shared.clone();
            writer(Box::new(move |e| {
                shared.close(format!("write failed: {e}"))
            }))
        };
        Connection {
            shared,
            frames,
            next_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            node,
            reader,
        }
    }

    /// The storage node's id, from the handshake.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed_reason().is_some()
    }

    /// Sends `request` and waits up to `timeout` (in all: waiting for a slot, then for the
    /// response) for its response. An error response becomes [`DataError::Remote`].
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, DataError> {
        let deadline = Instant::now() + timeout;
        let reply = tokio::time::timeout_at(deadline, self.send(request))
            .await
            .map_err(|_| DataError::Timeout {
                addr: self.shared.addr.clone(),
                timeout,
            })??;
        reply.wait_until(deadline, timeout).await
    }

    /// Writes `request` and returns at once; the response is awaited with [`Reply::wait`]. Frames
    /// go out in the order of `send` calls that were awaited one after another, which is how a
    /// primary keeps replicated records in VBA order on the wire.
    pub async fn send(&self, request: Request) -> Result<Reply, DataError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match &mut *pending {
                Pending::Open(waiters) => waiters.insert(id, tx),
                Pending::Closed(reason) => {
                    return Err(DataError::Closed {
                        addr: self.shared.addr.clone(),
                        reason: reason.clone(),
                    })
                }
            };
        }
        // No await between registering and queueing: frames leave in the order of `send` calls.
        if !self.frames.queue(id, &Frame::Request(request)) {
            self.shared
                .close("the writer stopped after a failed write".into());
        }
        Ok(Reply {
            shared: self.shared.clone(),
            id,
            rx,
            _slot: slot,
        })
    }
}

/// A response on its way: returned by [`Connection::send`].
pub struct Reply {
    shared: Arc<Shared>,
    id: u64,
    rx: oneshot::Receiver<Response>,
    /// The request's in-flight slot, freed when the reply is done with.
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Reply {
    /// Waits up to `timeout` for the response. An error response becomes [`DataError::Remote`].
    pub async fn wait(self, timeout: Duration) -> Result<Response, DataError> {
        self.wait_until(Instant::now() + timeout, timeout).await
    }

    /// Waits until `deadline`; `timeout` is what a [`DataError::Timeout`] reports.
    async fn wait_until(self, deadline: Instant, timeout: Duration) -> Result<Response, DataError> {
        let addr = || self.shared.addr.clone();
        match tokio::time::timeout_at(deadline, self.rx).await {
            Ok(Ok(Response::Error(error))) => Err(DataError::Remote {
                addr: addr(),
                error,
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(DataError::Closed {
                addr: addr(),
                reason: self
                    .shared
                    .closed_reason()
                    .unwrap_or_else(|| "closed".into()),
            }),
            Err(_) => {
                if let Pending::Open(waiters) = &mut *self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                {
                    waiters.remove(&self.id);
                }
                Err(DataError::Timeout {
                    addr: addr(),
                    timeout,
                })
            }
        }
    }
}

/// Room made in a read buffer before each read: a whole 4 KiB write frame, or several smaller
/// frames, arrive in one system call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads one frame, buffering in `buf`. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> io::Result<Option<(u64, Frame)>> {
    loop {
        if let Some(frame) = proto::decode(buf).map_err(protocol_io)? {
            return Ok(Some(frame));
        }
        // An empty `BytesMut` would otherwise read 64 bytes at a time: a frame's header, then
        // its body, in two system calls.
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-frame",
                ))
            };
        }
    }
}

/// The connecting side's half of the handshake (`docs/protocol.md`).
struct Greeting<'a> {
    addr: &'a str,
    peer: PeerKind,
    name: &'a str,
    token: Option<&'a Token>,
}

impl Greeting<'_> {
    /// Sends the hello, answers a challenge and checks the node's proof. Returns the bytes read
    /// past the handshake and the node's id.
    async fn shake<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> Result<(BytesMut, String), DataError> {
        let hello = Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            peer: self.peer,
            name: self.name.to_string(),
        };
        let mut buf = BytesMut::new();
        self.send(stream, &Frame::Hello(hello)).await?;
        let ok = match self.receive(stream, &mut buf).await? {
            Frame::HelloOk(ok) => ok,
            other => return Err(self.unexpected(&other)),
        };
        match (self.token, ok.challenge) {
            (None, None) => Ok((buf, ok.node)),
            (None, Some(_)) => Err(self.unauthorized(
                "the node requires authentication: give this process the cluster's token \
                 (--token-file)",
            )),
            (Some(_), None) if ok.version < AUTH_PROTOCOL_VERSION => {
                Err(self.unauthorized(format!(
                    "the node speaks protocol version {}, which cannot authenticate; upgrade it",
                    ok.version
                )))
            }
            (Some(_), None) => Err(self.unauthorized(
                "the node does not authenticate (it runs without --token-file): it cannot prove \
                 it belongs to this cluster",
            )),
            (Some(token), Some(server_nonce)) => {
                let nonce = token::nonce();
                let proof = token.client_proof(&server_nonce, &nonce, self.peer, self.name);
                self.send(stream, &Frame::Auth(Auth { nonce, proof }))
                    .await?;
                match self.receive(stream, &mut buf).await? {
                    Frame::AuthOk(answer)
                        if token.verify_server_proof(
                            &nonce,
                            &server_nonce,
                            &ok.node,
                            &answer.proof,
                        ) =>
                    {
                        Ok((buf, ok.node))
                    }
                    Frame::AuthOk(_) => Err(self.unauthorized(
                        "the node's proof is wrong: it does not hold this cluster's token",
                    )),
                    other => Err(self.unexpected(&other)),
                }
            }
        }
    }

    async fn send<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        frame: &Frame,
    ) -> Result<(), DataError> {
        let mut out = BytesMut::new();
        proto::encode(&mut out, 0, frame);
        let sent = match stream.write_all(&out).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
        sent.map_err(|e| self.connect_err(e.to_string()))
    }

    async fn receive<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
    ) -> Result<Frame, DataError> {
        match read_frame(stream, buf).await {
            Ok(Some((_, frame))) => Ok(frame),
            Ok(None) => Err(self.connect_err("closed during the handshake".into())),
            Err(e) => Err(self.connect_err(format!("during the handshake: {e}"))),
        }
    }

    /// A refusal or an unexpected frame in the handshake.
    fn unexpected(&self, frame: &Frame) -> DataError {
        match frame {
            Frame::Response(Response::Error(error)) if error.code == ErrorCode::Unauthorized => {
                self.unauthorized(format!("refused: {}", error.message))
            }
            Frame::Response(Response::Error(error)) => DataError::Remote {
                addr: self.addr.to_string(),
                error: error.clone(),
            },
            _ => self.connect_err("unexpected frame in the handshake".into()),
        }
    }

    fn unauthorized(&self, reason: impl Into<String>) -> DataError {
        DataError::Unauthorized {
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }

    fn connect_err(&self, reason: String) -> DataError {
        DataError::Connect {
            addr: self.addr.to_string(),
            reason,
        }
    }
}

fn protocol_io(e: ProtocolError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

async fn read_responses<R: AsyncRead + Unpin>(mut read: R, mut buf: BytesMut, shared: Arc<Shared>) {
    let reason = loop {
        match read_frame(&mut read, &mut buf).await {
            Ok(Some((id, Frame::Response(response)))) => {
                let waiter = match &mut *shared.pending.lock().unwrap_or_else(|p| p.into_inner()) {
                    Pending::Open(waiters) => waiters.remove(&id),
                    Pending::Closed(_) => None,
                };
                // A response to a call that timed out meanwhile has no one waiting: dropped.
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Ok(Some(_)) => break "the node sent a frame that is not a response".to_string(),
            Ok(None) => break "closed by the node".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    shared.close(reason);
}

/// The address a process listening at `listen` connects from: the listen address when it is a
/// specific one, so that a host (or a test's loopback address) is one address both ways; `None`
/// (the system's choice) for a wildcard listener.
pub fn source_of(listen: SocketAddr) -> Option<IpAddr> {
    (!listen.ip().is_unspecified()).then_some(listen.ip())
}

/// A TCP connection to `addr`, bound to `source` (any port) when one is given.
async fn open_stream(addr: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// One connection per storage node address, opened on first use and again after a failure.
///
/// Connecting is coalesced per address: calls that arrive while a connection is being opened wait
/// for that attempt and share its result, so 32 concurrent first calls open one connection, and a
/// node that does not answer costs them one connect timeout, not 32 in a row.
pub struct Pool {
    peer: PeerKind,
    name: String,
    connect_timeout: Duration,
    /// The local address connections are opened from; `None` lets the system choose.
    source: Option<IpAddr>,
    security: Security,
    entries: std::sync::Mutex<HashMap<String, PoolEntry>>,
}

#[derive(Default)]
struct PoolEntry {
    connection: Option<Arc<Connection>>,
    /// Connect attempts finished so far, and how the last one failed.
    attempts: u64,
    last_error: Option<DataError>,
    /// Held by the call that is connecting.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl PoolEntry {
    fn live(&self) -> Option<Arc<Connection>> {
        self.connection.as_ref().filter(|c| !c.is_closed()).cloned()
    }
}

impl Pool {
    pub fn new(peer: PeerKind, name: &str, connect_timeout: Duration) -> Pool {
        Pool {
            peer,
            name: name.to_string(),
            connect_timeout,
            source: None,
            security: Security::default(),
            entries: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Opens every connection over TLS and with a proof of the token, as `security` says.
    pub fn with_security(mut self, security: Security) -> Pool {
        self.security = security;
        self
    }

    /// Opens every connection from local address `source` (port chosen by the system), so that
    /// peers and packet filters see this process at one address: a process listening on a
    /// specific address also speaks from it.
    pub fn with_source(mut self, source: Option<IpAddr>) -> Pool {
        self.source = source;
        self
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, PoolEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live connection to `addr`.
    pub async fn get(&self, addr: &str) -> Result<Arc<Connection>, DataError> {
        let (seen, connecting) = {
            let mut entries = self.entries();
            // The hot path (a live connection) looks up without allocating a key.
            if let Some(connection) = entries.get(addr).and_then(PoolEntry::live) {
                return Ok(connection);
            }
            let entry = entries.entry(addr.to_string()).or_default();
            (entry.attempts, entry.connecting.clone())
        };
        let _connecting = connecting.lock().await;
        if let Some(entry) = self.entries().get(addr) {
            if entry.attempts > seen {
                // Another call connected, or failed to, while this one waited: share its result.
                if let Some(connection) = entry.live() {
                    return Ok(connection);
                }
                if let Some(error) = &entry.last_error {
                    return Err(error.clone());
                }
            }
        }
        let result = Connection::connect_from(
            addr,
            self.source,
            self.peer,
            &self.name,
            &self.security,
            self.connect_timeout,
        )
        .await
        .map(Arc::new);
        let mut entries = self.entries();
        let entry = entries.entry(addr.to_string()).or_default();
        entry.attempts += 1;
        match &result {
            Ok(connection) => {
                entry.connection = Some(connection.clone());
                entry.last_error = None;
            }
            Err(error) => entry.last_error = Some(error.clone()),
        }
        result
    }

    /// Sends `request` to `addr` over the pooled connection.
    pub async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, DataError> {
        self.get(addr).await?.call(request, timeout).await
    }

    /// Drops the connection to `addr` (after a timeout, say), so the next call opens a new one.
    pub async fn forget(&self, addr: &str) {
        if let Some(entry) = self.entries().get_mut(addr) {
            entry.connection = None;
        }
    }
}
