//! Admission of incoming connections: at most so many at once from one client address, so that
//! one misbehaving (or compromised) client cannot take every file descriptor or task of a server.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Connections one address may hold open at once on a listener (data plane, NBD, HTTP) by
/// default.
pub const DEFAULT_CONNECTIONS_PER_ADDRESS: usize = 256;

#[derive(Debug)]
pub struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<PerAddress>,
    addr: IpAddr,
}

impl PerAddress {
    pub fn new(limit: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one more connection from `addr`, or `None` when it already has `limit` open.
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(addr).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Admitted {
            gate: self.clone(),
            addr,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.addr) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// A connection that holds its admission: the slot is freed when the connection is dropped.
#[derive(Debug)]
pub struct Limited<S> {
    stream: S,
    _admitted: Admitted,
}

impl<S> Limited<S> {
    pub fn new(stream: S, admitted: Admitted) -> Limited<S> {
        Limited {
            stream,
            _admitted: admitted,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Limited<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Limited<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_limit_and_no_more() {
        let gate = PerAddress::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = gate.admit(a).expect("first");
        let _second = gate.admit(a).expect("second");
        assert!(gate.admit(a).is_none(), "a third from the same address");
        assert!(gate.admit(b).is_some(), "another address is not affected");
        drop(first);
        assert!(gate.admit(a).is_some(), "a freed slot is reused");
    }
}
