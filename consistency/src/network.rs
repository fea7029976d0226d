//! Raft RPCs between manager replicas, over HTTP on the same listener as the public API.
//!
//! `POST /raft/append` and `POST /raft/vote` carry JSON; `POST /raft/snapshot` carries a chunk as
//! a binary body (a length-prefixed JSON header, then the raw bytes), since JSON would inflate
//! the bytes 2-4x. Every reply is the JSON of the `Result` the receiving `Raft` returned. One
//! shared HTTP client serves all peers; each call's timeout is openraft's hard TTL for it.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::RPCTypes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vbs_wire::security::Security;

use crate::raft_types::{ManagerNode, RaftId, SnapshotMeta, TypeConfig, Vote};

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Builds the HTTP client for Raft traffic between managers: no proxies, short connect timeout,
/// idle connections kept so that heartbeats do not reconnect; the token on every request and
/// TLS as `security` says. Requests leave from `source` when given (the manager's listen
/// address, see `vbs_wire::conn::source_of`).
pub fn raft_http_client(
    connect_timeout: Duration,
    source: Option<std::net::IpAddr>,
    security: &Security,
) -> reqwest::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(connect_timeout)
        .local_address(source)
        .pool_max_idle_per_host(4)
        .tcp_nodelay(true);
    security.http_client(builder).build()
}

/// Everything of an [`InstallSnapshotRequest`] but its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunkHeader {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub done: bool,
}

/// Encodes a snapshot chunk as `u32 LE header length | header JSON | data`.
pub fn encode_snapshot_chunk(
    rpc: InstallSnapshotRequest<TypeConfig>,
) -> serde_json::Result<Vec<u8>> {
    let header = SnapshotChunkHeader {
        vote: rpc.vote,
        meta: rpc.meta,
        offset: rpc.offset,
        done: rpc.done,
    };
    let header = serde_json::to_vec(&header)?;
    let mut body = Vec::with_capacity(4 + header.len() + rpc.data.len());
    body.extend_from_slice(&(header.len() as u32).to_le_bytes());
    body.extend_from_slice(&header);
    body.extend_from_slice(&rpc.data);
    Ok(body)
}

/// Decodes what [`encode_snapshot_chunk`] wrote.
pub fn decode_snapshot_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    let len_bytes: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or("snapshot chunk shorter than its header length")?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let header = body
        .get(4..4 + len)
        .ok_or("snapshot chunk shorter than its header")?;
    let header: SnapshotChunkHeader =
        serde_json::from_slice(header).map_err(|e| format!("snapshot chunk header: {e}"))?;
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: body[4 + len..].to_vec(),
        done: header.done,
    })
}

/// Creates a [`PeerClient`] per peer; never connects by itself.
pub struct Network {
    pub id: RaftId,
    pub client: reqwest::Client,
    /// `http`, or `https` with TLS on.
    pub scheme: &'static str,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: RaftId, node: &ManagerNode) -> PeerClient {
        PeerClient {
            id: self.id,
            target,
            node: node.clone(),
            client: self.client.clone(),
            scheme: self.scheme,
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    id: RaftId,
    target: RaftId,
    node: ManagerNode,
    client: reqwest::Client,
    scheme: &'static str,
}

type RpcError<E> = RPCError<RaftId, ManagerNode, RaftError<RaftId, E>>;

impl PeerClient {
    async fn call<Resp, E>(
        &self,
        action: RPCTypes,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
        timeout: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let url = format!("{}://{}{path}", self.scheme, self.node.addr);
        let transport = |e: reqwest::Error| -> RpcError<E> {
            if e.is_timeout() {
                RPCError::Timeout(Timeout {
                    action,
                    id: self.id,
                    target: self.target,
                    timeout,
                })
            } else if e.is_connect() {
                // openraft backs off quietly from an unreachable peer.
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        };
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let e =
                std::io::Error::other(format!("peer {} answered {status}: {text}", self.target));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let result: Result<Resp, RaftError<RaftId, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError {
                target: self.target,
                target_node: Some(self.node.clone()),
                source: e,
            })
        })
    }

    fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, NetworkError> {
        serde_json::to_vec(value).map_err(|e| NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RpcError<openraft::error::Infallible>> {
        let body = Self::json(&rpc).map_err(RPCError::Network)?;
        self.call(
            RPCTypes::AppendEntries,
            APPEND_PATH,
            body,
            "application/json",
            option.hard_ttl(),
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<RaftId>, RpcError<InstallSnapshotError>> {
        let body =
            encode_snapshot_chunk(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let content_type = "application/octet-stream";
        self.call(
            RPCTypes::InstallSnapshot,
            SNAPSHOT_PATH,
            body,
            content_type,
            option.hard_ttl(),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RpcError<openraft::error::Infallible>> {
        let body = Self::json(&rpc).map_err(RPCError::Network)?;
        self.call(
            RPCTypes::Vote,
            VOTE_PATH,
            body,
            "application/json",
            option.hard_ttl(),
        )
        .await
    }
}
