//! The HTTP side of cluster security, shared by the managers' API and the storage nodes'
//! `/metrics`: bearer-token checks with their 401 answer, and the listeners for axum (plain and
//! TLS), both with a limit on connections per client address.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use super::{BearerError, Rejections, Surface, Tls, Token};
use crate::admission::{Admitted, Limited, PerAddress, DEFAULT_CONNECTIONS_PER_ADDRESS};
use crate::api::{ApiError, ErrorCode};

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake is done and that wait for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Checks the request's bearer token when `token` is set; [`unauthorized`] is the answer to a
/// refusal.
pub fn authorize(token: Option<&Token>, headers: &HeaderMap) -> Result<(), BearerError> {
    match token {
        Some(token) => token.check_bearer(headers.get(header::AUTHORIZATION)),
        None => Ok(()),
    }
}

/// The 401 answer to a request with a missing or wrong bearer token:
/// `{"error", "code": "unauthorized"}` with `WWW-Authenticate: Bearer`.
pub fn unauthorized(error: BearerError) -> Response {
    let body = ApiError {
        error: error.to_string(),
        code: ErrorCode::Unauthorized,
        retry_after_ms: None,
    };
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"vbs\""),
    );
    response
}

/// Accepts the next connection that `gate` admits. A client address over its limit has the
/// connection closed at once (logged); accept errors (out of file descriptors and the like) are
/// logged and retried, so the connections already open keep being served.
async fn accept_admitted(
    listener: &TcpListener,
    gate: &Arc<PerAddress>,
) -> (TcpStream, SocketAddr, Admitted) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => match gate.admit(peer.ip()) {
                Some(admitted) => return (tcp, peer, admitted),
                None => warn!(
                    %peer,
                    limit = gate.limit(),
                    "refused an HTTP connection: too many from this address"
                ),
            },
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A plaintext listener for `axum::serve` that admits at most
/// [`DEFAULT_CONNECTIONS_PER_ADDRESS`] connections at once from one client address.
pub struct PlainListener {
    listener: TcpListener,
    gate: Arc<PerAddress>,
}

impl PlainListener {
    pub fn new(listener: TcpListener) -> PlainListener {
        PlainListener::with_limit(listener, DEFAULT_CONNECTIONS_PER_ADDRESS)
    }

    /// At most `limit` connections at once from one client address.
    pub fn with_limit(listener: TcpListener, limit: usize) -> PlainListener {
        PlainListener {
            listener,
            gate: PerAddress::new(limit),
        }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Limited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, peer, admitted) = accept_admitted(&self.listener, &self.gate).await;
        // Small JSON answers: do not let Nagle hold them back waiting for an ACK.
        let _ = tcp.set_nodelay(true);
        (Limited::new(tcp, admitted), peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A listener for `axum::serve` that hands over connections once their TLS handshake is done.
/// Handshakes run in tasks of their own, so a slow or silent client holds up no other; one that
/// fails (a plaintext client, an unknown CA) is counted as a `tls` rejection and closed. Like
/// [`PlainListener`], it admits at most [`DEFAULT_CONNECTIONS_PER_ADDRESS`] connections at once
/// from one client address, handshakes included.
pub struct TlsListener {
    accepted: mpsc::Receiver<(Limited<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        tls: Arc<Tls>,
        rejections: Arc<Rejections>,
    ) -> io::Result<TlsListener> {
        if !tls.serves() {
            return Err(io::Error::other(
                "TLS is on but this process has no certificate (--tls-cert, --tls-key)",
            ));
        }
        let local = listener.local_addr()?;
        let (queue, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, tls, rejections, queue));
        Ok(TlsListener {
            accepted,
            local,
            acceptor,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<Tls>,
    rejections: Arc<Rejections>,
    queue: mpsc::Sender<(Limited<TlsStream<TcpStream>>, SocketAddr)>,
) {
    let gate = PerAddress::new(DEFAULT_CONNECTIONS_PER_ADDRESS);
    loop {
        let (tcp, peer, admitted) = accept_admitted(&listener, &gate).await;
        let _ = tcp.set_nodelay(true);
        let (tls, rejections, queue) = (tls.clone(), rejections.clone(), queue.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only when the server is shutting down.
                    let _ = queue.send((Limited::new(stream, admitted), peer)).await;
                }
                Ok(Err(e)) => {
                    rejections.count(Surface::Tls);
                    debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    rejections.count(Surface::Tls);
                    debug!(%peer, "no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Limited<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Sends one HTTP/1.1 request on `stream` and returns the whole answer (its body is `ok`),
    /// or what came before the server closed the connection (empty when it closed unanswered).
    async fn get_root(stream: &mut TcpStream) -> Vec<u8> {
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut chunk = [0u8; 256];
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .expect("the server answers or closes within 10 s")
                .unwrap_or(0);
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..read]);
        }
        answer
    }

    #[tokio::test]
    async fn an_address_over_its_connection_limit_is_closed_and_the_rest_are_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let server =
            tokio::spawn(
                async move { axum::serve(PlainListener::with_limit(listener, 2), app).await },
            );

        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get_root(&mut first).await.starts_with(b"HTTP/1.1 200"));
        assert!(get_root(&mut second).await.starts_with(b"HTTP/1.1 200"));
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(
            get_root(&mut third).await.is_empty(),
            "a third connection from the same address is closed unanswered"
        );
        assert!(
            get_root(&mut first).await.starts_with(b"HTTP/1.1 200"),
            "the admitted connections are still served"
        );
        drop(second);
        // The freed slot is taken by the next connection, once the server has seen the close.
        let mut answered = false;
        for _ in 0..100 {
            let mut again = TcpStream::connect(addr).await.unwrap();
            if get_root(&mut again).await.starts_with(b"HTTP/1.1 200") {
                answered = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(answered, "a freed slot is given to a new connection");
        server.abort();
    }
}
