//! An HTTP client for the manager quorum's API, used by storage nodes, the client library and the
//! CLI.
//!
//! Any member answers (followers forward changes to the leader), so a request goes to the member
//! that answered last and moves on to the next one when a member cannot be reached or has no
//! leader. A refusal (4xx, or 503 `lease_not_expired`) is returned at once: another member would
//! give the same answer. A storage node's heartbeat is hedged: sent to every member at once when
//! the one that answered last is slow, so that a hung leader does not cost a lease.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    AcceptLossRequest, ApiError, ClusterStatus, CreateVolumeRequest, ErrorCode, EventPage,
    HeartbeatRequest, HeartbeatResponse, NodeStatus, Notification, NotificationResponse,
    RegisterNodeRequest, ResizeVolumeRequest, VolumeFilter, VolumeList, VolumeMap,
    MAX_VOLUMES_PER_PAGE,
};
use crate::security::Security;
use crate::types::NodeId;

/// How long one request to one member may take by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times the whole member list is tried when no member has a leader.
const ROUNDS: usize = 3;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ManagerError {
    /// No member could be reached, or none had a leader.
    #[error("no manager answered ({tried}): {last}")]
    Unreachable { tried: String, last: String },
    /// A member answered with a refusal.
    #[error("{}", .error.error)]
    Api { status: u16, error: ApiError },
}

impl ManagerError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ManagerError::Api { error, .. } => Some(error.code),
            ManagerError::Unreachable { .. } => None,
        }
    }
}

/// How a hedged request is sent: to the member that answered last, to every member once that
/// one has not answered within `hedge`, each try given up after `patience`, rounds until
/// `deadline`.
#[derive(Clone, Copy, Debug)]
pub struct Hedge {
    pub hedge: Duration,
    pub patience: Duration,
    pub deadline: Instant,
}

/// What one try at one member came to.
enum Attempt<T> {
    Answered(T),
    /// A refusal (or an answer that makes no sense): another member would say the same.
    Refused(ManagerError),
    /// Unreachable, too slow, or without a leader: another member may do.
    Elsewhere(String),
}

pub struct Managers {
    addrs: Vec<String>,
    http: reqwest::Client,
    /// The token and TLS settings requests use; volumes opened through these managers use them
    /// on the data plane too.
    security: Security,
    /// The member to try first: the one that answered last.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for Managers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Managers({})", self.addrs.join(","))
    }
}

/// A list of manager addresses that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManagersError {
    #[error("no manager addresses given (use --managers HOST:PORT,... or VBS_MANAGERS)")]
    Empty,
    #[error("manager address {0:?} asks for TLS: give the cluster's CA (--tls-ca)")]
    NeedsTls(String),
    #[error(
        "manager address {addr:?}: {given}:// does not fit, this client speaks {scheme}:// \
         (https:// with --tls-ca)"
    )]
    Scheme {
        addr: String,
        given: String,
        scheme: &'static str,
    },
    #[error("manager address {0:?} is not HOST:PORT")]
    NotHostPort(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
}

impl Managers {
    /// `list` is `HOST:PORT[,HOST:PORT...]` (an `http://` prefix is allowed), for an open
    /// cluster in plaintext.
    pub fn parse(list: &str, timeout: Duration) -> Result<Managers, ManagersError> {
        Managers::parse_from(list, timeout, None)
    }

    /// Like [`Managers::parse`], with every request sent from local address `source` when one
    /// is given (see [`crate::conn::Pool::with_source`]).
    pub fn parse_from(
        list: &str,
        timeout: Duration,
        source: Option<std::net::IpAddr>,
    ) -> Result<Managers, ManagersError> {
        Managers::parse_secured(list, timeout, source, Security::default())
    }

    /// Like [`Managers::parse_from`], sending the token and speaking TLS as `security` says.
    /// With TLS on, addresses may carry an `https://` prefix; `http://` is refused, as is
    /// `https://` without TLS settings (`--tls-ca`).
    pub fn parse_secured(
        list: &str,
        timeout: Duration,
        source: Option<std::net::IpAddr>,
        security: Security,
    ) -> Result<Managers, ManagersError> {
        let scheme = security.scheme();
        let addrs: Vec<String> = list
            .split(',')
            .map(|a| {
                let a = a.trim();
                let bare = match a.split_once("://") {
                    Some((given, rest)) if given == scheme => rest,
                    Some(("https", _)) => return Err(ManagersError::NeedsTls(a.to_string())),
                    Some((given, _)) => {
                        return Err(ManagersError::Scheme {
                            addr: a.to_string(),
                            given: given.to_string(),
                            scheme,
                        })
                    }
                    None => a,
                };
                Ok(bare.trim_end_matches('/').to_string())
            })
            .filter(|a| !matches!(a, Ok(a) if a.is_empty()))
            .collect::<Result<_, ManagersError>>()?;
        if addrs.is_empty() {
            return Err(ManagersError::Empty);
        }
        for addr in &addrs {
            let port = addr.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(_))) {
                return Err(ManagersError::NotHostPort(addr.clone()));
            }
        }
        let builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .local_address(source);
        let http = security
            .http_client(builder)
            .build()
            .map_err(|e| ManagersError::Client(e.to_string()))?;
        Ok(Managers {
            addrs,
            http,
            security,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// The token and TLS settings these managers are reached with.
    pub fn security(&self) -> &Security {
        &self.security
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ManagerError> {
        let mut last = String::new();
        let first = self.preferred.load(Ordering::Relaxed);
        for round in 0..ROUNDS {
            for i in 0..self.addrs.len() {
                let index = (first + i) % self.addrs.len();
                match self.attempt(index, &method, path, body, None).await {
                    Attempt::Answered(value) => return Ok(value),
                    Attempt::Refused(e) => return Err(e),
                    Attempt::Elsewhere(why) => last = why,
                }
            }
            if round + 1 < ROUNDS {
                // No member had a leader: an election may be under way.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Err(ManagerError::Unreachable {
            tried: self.addrs.join(","),
            last,
        })
    }

    /// Sends an idempotent request so that it gets through while a member hangs: to the member
    /// that answered last, then, if that one has not answered within `hedge`, to every member
    /// at once; the first answer wins. Each try gives up after `patience`, and rounds go on
    /// until `deadline`. A hung leader would otherwise cost a whole request timeout per round,
    /// and its followers forward to it until they elect another.
    async fn hedged<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        timing: Hedge,
    ) -> Result<T, ManagerError> {
        let mut last = String::new();
        loop {
            let first = self.preferred.load(Ordering::Relaxed) % self.addrs.len();
            let mut tries = FuturesUnordered::new();
            let attempt = |index: usize| {
                self.attempt(index, &method, path, Some(body), Some(timing.patience))
            };
            tries.push(attempt(first));
            let hedge = tokio::time::sleep(timing.hedge);
            tokio::pin!(hedge);
            let mut hedged = false;
            loop {
                tokio::select! {
                    Some(outcome) = tries.next() => match outcome {
                        Attempt::Answered(value) => return Ok(value),
                        Attempt::Refused(e) => return Err(e),
                        Attempt::Elsewhere(why) => last = why,
                    },
                    () = &mut hedge, if !hedged => {}
                    else => break,
                }
                if !hedged {
                    hedged = true;
                    for i in 1..self.addrs.len() {
                        tries.push(attempt((first + i) % self.addrs.len()));
                    }
                }
            }
            if Instant::now() + timing.patience > timing.deadline {
                return Err(ManagerError::Unreachable {
                    tried: self.addrs.join(","),
                    last,
                });
            }
            // No member had a leader: an election may be under way.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One request to member `index`, within `timeout` if given (else the client's).
    async fn attempt<B: Serialize, T: DeserializeOwned>(
        &self,
        index: usize,
        method: &Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Attempt<T> {
        let addr = &self.addrs[index];
        let mut request = self
            .http
            .request(method.clone(), self.security.url(addr, path));
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return Attempt::Elsewhere(format!("{addr}: {}", describe(&e))),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return Attempt::Elsewhere(format!("{addr}: {}", describe(&e))),
        };
        if status.is_success() {
            self.preferred.store(index, Ordering::Relaxed);
            return match serde_json::from_slice(&bytes) {
                Ok(value) => Attempt::Answered(value),
                Err(e) => Attempt::Refused(ManagerError::Unreachable {
                    tried: addr.clone(),
                    last: format!("unexpected answer to {method} {path}: {e}"),
                }),
            };
        }
        let error: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| ApiError {
            error: format!("{status}: {}", String::from_utf8_lossy(&bytes)),
            code: ErrorCode::Internal,
            retry_after_ms: None,
        });
        if status == StatusCode::SERVICE_UNAVAILABLE && error.code == ErrorCode::Unavailable {
            return Attempt::Elsewhere(format!("{addr}: {}", error.error));
        }
        Attempt::Refused(ManagerError::Api {
            status: status.as_u16(),
            error,
        })
    }

    pub async fn status(&self) -> Result<ClusterStatus, ManagerError> {
        self.request::<(), _>(Method::GET, "/v1/status", None).await
    }

    /// The status without the volume maps: counts, managers and nodes.
    pub async fn status_summary(&self) -> Result<ClusterStatus, ManagerError> {
        self.request::<(), _>(Method::GET, "/v1/status?volumes=false", None)
            .await
    }

    /// Every volume (that `filter` admits), fetched a page at a time, in name order.
    pub async fn volumes_where(
        &self,
        filter: Option<VolumeFilter>,
    ) -> Result<Vec<VolumeMap>, ManagerError> {
        let status = filter.map_or(String::new(), |f| {
            let name = serde_json::to_value(f).expect("a filter serializes");
            format!("&status={}", name.as_str().unwrap_or_default())
        });
        let mut volumes = Vec::new();
        let mut after = String::new();
        loop {
            let path = format!("/v1/volumes?limit={MAX_VOLUMES_PER_PAGE}{after}{status}");
            let page: VolumeList = self.request::<(), _>(Method::GET, &path, None).await?;
            volumes.extend(page.volumes);
            match page.next {
                // Names are letters, digits and `_.-`: nothing to escape.
                Some(next) => after = format!("&after={next}"),
                None => return Ok(volumes),
            }
        }
    }

    /// Up to `limit` entries of the event log after entry `after`.
    pub async fn events(&self, after: u64, limit: usize) -> Result<EventPage, ManagerError> {
        let path = format!("/v1/events?after={after}&limit={limit}");
        self.request::<(), _>(Method::GET, &path, None).await
    }

    /// Every volume, in name order.
    pub async fn volumes(&self) -> Result<Vec<VolumeMap>, ManagerError> {
        self.volumes_where(None).await
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeMap, ManagerError> {
        self.request::<(), _>(Method::GET, &format!("/v1/volumes/{name}"), None)
            .await
    }

    pub async fn create_volume(
        &self,
        request: &CreateVolumeRequest,
    ) -> Result<VolumeMap, ManagerError> {
        self.request(Method::POST, "/v1/volumes", Some(request))
            .await
    }

    /// Grows volume `name` to `size_bytes`; answers its map as it is then.
    /// `POST /v1/volumes/{name}/slices/{index}/accept-loss`.
    pub async fn accept_loss(
        &self,
        name: &str,
        index: u32,
        request: &AcceptLossRequest,
    ) -> Result<VolumeMap, ManagerError> {
        self.request(
            Method::POST,
            &format!("/v1/volumes/{name}/slices/{index}/accept-loss"),
            Some(request),
        )
        .await
    }

    pub async fn resize_volume(
        &self,
        name: &str,
        size_bytes: u64,
    ) -> Result<VolumeMap, ManagerError> {
        let request = ResizeVolumeRequest { size_bytes };
        self.request(
            Method::POST,
            &format!("/v1/volumes/{name}/resize"),
            Some(&request),
        )
        .await
    }

    pub async fn delete_volume(&self, name: &str) -> Result<VolumeMap, ManagerError> {
        self.request::<(), _>(Method::DELETE, &format!("/v1/volumes/{name}"), None)
            .await
    }

    pub async fn register_node(
        &self,
        request: &RegisterNodeRequest,
    ) -> Result<NodeStatus, ManagerError> {
        self.request(Method::POST, "/v1/nodes", Some(request)).await
    }

    /// A storage node's heartbeat, which must reach the leader within a lease even while a
    /// member hangs: hedged across the members (see [`Hedge`]).
    pub async fn heartbeat(
        &self,
        node: &NodeId,
        request: &HeartbeatRequest,
        timing: Hedge,
    ) -> Result<HeartbeatResponse, ManagerError> {
        self.hedged(
            Method::POST,
            &format!("/v1/nodes/{node}/heartbeat"),
            request,
            timing,
        )
        .await
    }

    /// Starts moving every copy off `node` (`POST /v1/nodes/{id}/drain`); idempotent.
    pub async fn drain_node(&self, node: &NodeId) -> Result<NodeStatus, ManagerError> {
        self.request::<(), _>(Method::POST, &format!("/v1/nodes/{node}/drain"), None)
            .await
    }

    pub async fn notify(
        &self,
        notification: &Notification,
    ) -> Result<NotificationResponse, ManagerError> {
        self.request(Method::POST, "/v1/notifications", Some(notification))
            .await
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        // A TLS failure (unknown CA, wrong host name, a plaintext server) is a connect error
        // too: say what it was.
        let mut innermost = std::error::Error::source(e);
        while let Some(deeper) = innermost.and_then(std::error::Error::source) {
            innermost = Some(deeper);
        }
        match innermost {
            Some(cause) => format!("cannot connect: {cause}"),
            None => "connection refused or unreachable".into(),
        }
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_may_name_the_scheme_this_client_speaks() {
        let timeout = Duration::from_secs(1);
        let managers = Managers::parse("http://a:1, b:2/", timeout).unwrap();
        assert_eq!(managers.addrs(), ["a:1", "b:2"]);
        let tls = Managers::parse("https://a:1", timeout).unwrap_err();
        assert_eq!(tls, ManagersError::NeedsTls("https://a:1".into()));
        assert!(tls.to_string().contains("--tls-ca"), "{tls}");
        let other = Managers::parse("ftp://a:1", timeout).unwrap_err();
        assert!(matches!(other, ManagersError::Scheme { .. }), "{other:?}");
        assert!(other.to_string().contains("ftp://"), "{other}");
        let port = Managers::parse("a", timeout).unwrap_err();
        assert_eq!(port, ManagersError::NotHostPort("a".into()));
        assert_eq!(
            Managers::parse(" , ", timeout).unwrap_err(),
            ManagersError::Empty
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_heartbeat_gets_past_a_member_that_never_answers() {
        // The member that answered last accepts connections and never answers: a stopped
        // process.
        let stopped = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stopped_addr = stopped.local_addr().unwrap();
        let holding = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = stopped.accept().await {
                held.push(stream);
            }
        });
        // The other member answers.
        let running = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running_addr = running.local_addr().unwrap();
        let reply = HeartbeatResponse {
            lease_ms: 2000,
            node_state: crate::api::NodeState::Up,
            units: Vec::new(),
        };
        let app = axum::Router::new().route(
            "/v1/nodes/{id}/heartbeat",
            axum::routing::post(move || {
                let reply = reply.clone();
                async move { axum::Json(reply) }
            }),
        );
        let serving = tokio::spawn(async move { axum::serve(running, app).await });

        let patience = Duration::from_secs(60);
        let managers =
            Managers::parse(&format!("{stopped_addr},{running_addr}"), patience).unwrap();
        let timing = Hedge {
            hedge: Duration::from_millis(50),
            patience,
            deadline: Instant::now() + patience * 2,
        };
        let request = HeartbeatRequest {
            free_bytes: None,
            units: Vec::new(),
            ..Default::default()
        };
        let node = NodeId::parse("n1").unwrap();
        // Asked one after the other, the stopped member would hold the heartbeat for the whole
        // minute of patience.
        let answered = tokio::time::timeout(
            Duration::from_secs(30),
            managers.heartbeat(&node, &request, timing),
        )
        .await
        .expect("the heartbeat waited on the member that never answers")
        .unwrap();
        assert_eq!(answered.lease_ms, 2000);
        // The member that answered is asked first next time.
        assert_eq!(managers.preferred.load(Ordering::Relaxed), 1);
        holding.abort();
        serving.abort();
    }
}
