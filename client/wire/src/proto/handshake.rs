//! The frames that open a connection: who connects, with which versions, and the proofs
//! that both sides know the cluster secret.

use super::{AUTH_NONCE_BYTES, AUTH_PROOF_BYTES};

/// Who opens a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A compute node (the client library).
    Client = 1,
    /// Another storage node (replication, resend, catch-up).
    Node = 2,
}

/// The first frame on a connection, from the side that connected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub min_version: u16,
    pub max_version: u16,
    pub peer: PeerKind,
    /// The connecting side's name (node id or client name), for logs.
    pub name: String,
}

/// The server's answer to [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u16,
    /// The storage node's id.
    pub node: String,
    /// From version 2: the node's nonce when it requires authentication, to be answered with
    /// [`Auth`] before any request. `None`: the node is open (and cannot prove anything).
    pub challenge: Option<[u8; AUTH_NONCE_BYTES]>,
}

/// The connecting side's answer to a challenge: its own nonce and the proof that it knows the
/// cluster secret (`vbs_wire::security::Token::client_proof`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Auth {
    pub nonce: [u8; AUTH_NONCE_BYTES],
    pub proof: [u8; AUTH_PROOF_BYTES],
}

/// The node's proof back, over both nonces the other way round: the connecting side learns it
/// talks to a member of the cluster, not to whoever answered on the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthOk {
    pub proof: [u8; AUTH_PROOF_BYTES],
}
