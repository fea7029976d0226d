//! What a replica does on start: resume from its data directory, initialize a new cluster, or
//! wait to be brought in by the leader; and refuse to start when its data was lost while the
//! cluster still counts on it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::raft::{ProbeReply, PROBE_PATH};
use crate::raft_types::RaftId;

/// How a replica starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The data directory holds Raft state: carry on from it.
    Resume,
    /// Empty, lowest id, and no peer belongs to a cluster: create the cluster of `--peers`.
    Initialize,
    /// Empty: wait for the leader to replicate to this replica (as a member of the initial
    /// cluster, or after `POST /v1/managers`).
    Wait,
}

/// Why a replica must not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartRefused {
    #[error(
        "this replica's data directory is empty, but the leader (manager {leader}) has \
         replicated to manager {id} before: its data was lost. Remove it first \
         (DELETE /v1/managers/{id}), then start it, then add it again (POST /v1/managers); \
         see docs/operations.md"
    )]
    DataLost { id: RaftId, leader: RaftId },
}

/// Decides how to start from the probe replies of the peers that answered.
pub fn decide(
    id: RaftId,
    peers: &BTreeMap<RaftId, String>,
    store_is_empty: bool,
    replies: &[(RaftId, ProbeReply)],
) -> Result<Start, StartRefused> {
    if !store_is_empty {
        return Ok(Start::Resume);
    }
    if let Some((peer, _)) = replies.iter().find(|(_, r)| r.replicated_before) {
        return Err(StartRefused::DataLost { id, leader: *peer });
    }
    if replies.iter().any(|(_, r)| r.initialized) {
        return Ok(Start::Wait);
    }
    if peers.keys().next() == Some(&id) {
        return Ok(Start::Initialize);
    }
    Ok(Start::Wait)
}

/// Asks every other peer what it knows; a peer that does not answer within a second is left out
/// (at the first start of a cluster the others may not be up yet).
/// `scheme` is `http` or `https`.
pub async fn probe_peers(
    id: RaftId,
    peers: &BTreeMap<RaftId, String>,
    client: &reqwest::Client,
    scheme: &str,
) -> Vec<(RaftId, ProbeReply)> {
    let mut replies = Vec::new();
    for (peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
        let url = format!("{scheme}://{addr}{PROBE_PATH}?id={id}");
        let answer = client.get(url).timeout(Duration::from_secs(1)).send().await;
        match answer {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(reply) => replies.push((*peer, reply)),
                Err(e) => tracing::warn!(peer, error = %e, "unreadable probe reply"),
            },
            Ok(response) => tracing::warn!(peer, status = %response.status(), "probe refused"),
            Err(e) => tracing::info!(peer, error = %e, "peer not reachable at start"),
        }
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> BTreeMap<RaftId, String> {
        (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    fn reply(initialized: bool, replicated_before: bool) -> ProbeReply {
        ProbeReply {
            initialized,
            leader: Some(2),
            member: true,
            replicated_before,
        }
    }

    #[test]
    fn a_replica_with_state_resumes() {
        assert_eq!(decide(1, &peers(), false, &[]), Ok(Start::Resume));
    }

    #[test]
    fn only_the_lowest_id_initializes_and_only_a_new_cluster() {
        assert_eq!(decide(1, &peers(), true, &[]), Ok(Start::Initialize));
        assert_eq!(decide(2, &peers(), true, &[]), Ok(Start::Wait));
        let up = [(2, reply(true, false))];
        assert_eq!(decide(1, &peers(), true, &up), Ok(Start::Wait));
    }

    #[test]
    fn a_wiped_replica_the_leader_knows_refuses_to_start() {
        let err = decide(3, &peers(), true, &[(2, reply(true, true))]).expect_err("refused");
        assert_eq!(err, StartRefused::DataLost { id: 3, leader: 2 });
        assert!(err.to_string().contains("DELETE /v1/managers/3"), "{err}");
    }
}
