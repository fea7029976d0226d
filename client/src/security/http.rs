//! The HTTP side of cluster security, shared by the managers' API and the storage nodes'
//! `/metrics`: bearer-token checks with their 401 answer, and a TLS listener for axum.

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

/// A listener for `axum::serve` that hands over connections once their TLS handshake is done.
/// Handshakes run in tasks of their own, so a slow or silent client holds up no other; one that
/// fails (a plaintext client, an unknown CA) is counted as a `tls` rejection and closed.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
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
    queue: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of file descriptors and the like: keep serving the connections we have.
            Err(e) => {
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tls, rejections, queue) = (tls.clone(), rejections.clone(), queue.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    // Fails only when the server is shutting down.
                    let _ = queue.send((stream, peer)).await;
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
    type Io = TlsStream<TcpStream>;
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
