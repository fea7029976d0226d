//! The storage node's half of the data-plane handshake (`docs/protocol.md`): version
//! negotiation and, when the node has the cluster token, the challenge-response. Nothing but a
//! hello, and then a correct proof, gets a connection to the point where requests are read.

use bytes::BytesMut;
use tokio::io::AsyncRead;
use vbs_wire::conn::{read_frame, FrameWriter};
use vbs_wire::proto::{
    AuthOk, ErrorCode, Frame, Hello, HelloOk, PeerKind, Response, WireError, AUTH_PROTOCOL_VERSION,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use vbs_wire::security::token::nonce;
use vbs_wire::security::Surface;

use super::Node;

/// Why a handshake failed and the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake: {0}")]
    Read(std::io::Error),
    #[error("the first frame was not a hello")]
    NoHello,
    /// The versions do not meet, or authentication needs a newer one.
    #[error("{name} ({peer:?}): {}", .refusal.message)]
    Refused {
        name: String,
        peer: PeerKind,
        refusal: WireError,
    },
    #[error("{name} ({peer:?}) did not authenticate: {why}")]
    NotAuthenticated {
        name: String,
        peer: PeerKind,
        why: String,
    },
}

/// Reads the hello, answers it, and checks the connecting side's proof when this node has a
/// token. `Ok(None)`: the peer closed before saying hello. `Err`: why the connection must be
/// closed (a refusal was queued to `writer` where the peer should learn why).
pub async fn accept<R: AsyncRead + Unpin>(
    node: &Node,
    read: &mut R,
    buf: &mut BytesMut,
    writer: &FrameWriter,
) -> Result<Option<Hello>, HandshakeError> {
    let hello = match read_frame(read, buf).await.map_err(HandshakeError::Read)? {
        Some((_, Frame::Hello(hello))) => hello,
        Some(_) => return Err(HandshakeError::NoHello),
        None => return Ok(None),
    };
    let token = node.config.security.token.as_deref();
    let version = match negotiate(&hello, token.is_some()) {
        Ok(version) => version,
        Err(refusal) => {
            if token.is_some() {
                node.rejections.count(Surface::Data);
            }
            writer.queue(0, &Frame::Response(Response::Error(refusal.clone())));
            return Err(HandshakeError::Refused {
                name: hello.name,
                peer: hello.peer,
                refusal,
            });
        }
    };
    let challenge = token.map(|_| nonce());
    let ok = HelloOk {
        version,
        node: node.id.0.clone(),
        challenge,
    };
    writer.queue(0, &Frame::HelloOk(ok));
    let (Some(token), Some(server_nonce)) = (token, challenge) else {
        return Ok(Some(hello));
    };
    let refuse = |why: &str| {
        node.rejections.count(Surface::Data);
        let refusal = WireError::new(ErrorCode::Unauthorized, "authentication failed");
        writer.queue(0, &Frame::Response(Response::Error(refusal)));
        HandshakeError::NotAuthenticated {
            name: hello.name.clone(),
            peer: hello.peer,
            why: why.to_string(),
        }
    };
    let auth = match read_frame(read, buf).await {
        Ok(Some((_, Frame::Auth(auth)))) => auth,
        Ok(Some(_)) => return Err(refuse("it sent another frame instead of its proof")),
        Ok(None) => {
            return Err(refuse(
                "it closed the connection instead of sending a proof",
            ))
        }
        Err(e) => return Err(refuse(&format!("its proof was unreadable: {e}"))),
    };
    if !token.verify_client_proof(
        &server_nonce,
        &auth.nonce,
        hello.peer,
        &hello.name,
        &auth.proof,
    ) {
        return Err(refuse("wrong proof (another token)"));
    }
    let proof = token.server_proof(&auth.nonce, &server_nonce, &node.id.0);
    writer.queue(0, &Frame::AuthOk(AuthOk { proof }));
    Ok(Some(hello))
}

/// The version to speak with the sender of `hello`, or the refusal to send it. A node that
/// authenticates speaks nothing older than the first version that can.
pub fn negotiate(hello: &Hello, authenticating: bool) -> Result<u16, WireError> {
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if version < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "protocol versions {}..={} are not among the \
                 {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION} this node speaks",
                hello.min_version, hello.max_version
            ),
        ));
    }
    if authenticating && version < AUTH_PROTOCOL_VERSION {
        return Err(WireError::new(
            ErrorCode::BadRequest,
            format!(
                "this storage node requires authentication, which needs protocol version \
                 {AUTH_PROTOCOL_VERSION}; the connecting side speaks up to {}: upgrade it and \
                 give it the cluster token",
                hello.max_version
            ),
        ));
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use vbs_wire::proto::PeerKind;

    use super::*;

    fn hello(min_version: u16, max_version: u16) -> Hello {
        Hello {
            min_version,
            max_version,
            peer: PeerKind::Client,
            name: "c".into(),
        }
    }

    #[test]
    fn the_highest_common_version_is_spoken() {
        assert_eq!(negotiate(&hello(1, 1), false), Ok(1));
        assert_eq!(negotiate(&hello(1, 2), false), Ok(2));
        assert_eq!(negotiate(&hello(1, 9), false), Ok(PROTOCOL_VERSION));
        assert_eq!(negotiate(&hello(2, 2), true), Ok(2));
        let none = negotiate(&hello(9, 9), false).unwrap_err();
        assert_eq!(none.code, ErrorCode::BadRequest);
        assert!(none.message.contains("9..=9"), "{}", none.message);
    }

    #[test]
    fn an_authenticating_node_refuses_peers_that_cannot_authenticate() {
        let refusal = negotiate(&hello(1, 1), true).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::BadRequest);
        assert!(
            refusal.message.contains("requires authentication"),
            "{}",
            refusal.message
        );
    }
}
