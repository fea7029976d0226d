//! Starting a manager replica: open the store, decide how to start, run Raft, the HTTP API and
//! the failure detector until the shutdown future resolves.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::storage::RaftLogStorage;
use tokio::net::TcpListener;
use tokio::sync::watch;
use vbs_wire::security::http::{PlainListener, TlsListener};

use crate::bootstrap::{self, Start};
use crate::config::Config;
use crate::manager::Manager;
use crate::network::{raft_http_client, Network};
use crate::raft_types::{ManagerNode, Raft};
use crate::{api, detector, store};

/// How long in-flight requests get to finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs a manager replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate().context("checking the configuration")?;
    let dir = config.data_dir.clone();
    let (mut log, state_machine) =
        store::open(&dir).with_context(|| format!("opening the store in {}", dir.display()))?;
    let empty =
        log.read_vote().await?.is_none() && log.get_log_state().await?.last_log_id.is_none();

    let security = config.security.clone();
    for warning in security.server_warnings() {
        tracing::warn!(id = config.id, "{warning}");
    }
    // Requests to other managers leave from the listen address, as a storage node's do.
    let source = vbs_wire::conn::source_of(listener.local_addr()?);
    let forward_client = security
        .http_client(
            reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(1))
                .local_address(source),
        )
        .build()
        .context("building the HTTP client")?;
    let replies = if empty {
        bootstrap::probe_peers(config.id, &config.peers, &forward_client, security.scheme()).await
    } else {
        Vec::new()
    };
    let start = bootstrap::decide(config.id, &config.peers, empty, &replies)
        .context("deciding how to start")?;
    tracing::info!(id = config.id, ?start, data_dir = %dir.display(), "starting manager");

    let raft_config = Arc::new(
        config
            .raft_config()
            .context("building the Raft configuration")?,
    );
    let network = Network {
        id: config.id,
        client: raft_http_client(Duration::from_millis(500), source, &security)
            .context("building the Raft client")?,
        scheme: security.scheme(),
    };
    let state = state_machine.shared();
    let raft = Raft::new(config.id, raft_config, network, log.clone(), state_machine)
        .await
        .context("starting Raft")?;
    let members: std::collections::BTreeMap<u64, ManagerNode> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id, ManagerNode { addr: addr.clone() }))
        .collect();
    let manager = Arc::new(Manager::new(
        config,
        raft.clone(),
        log,
        state,
        forward_client,
    ));

    let (stop, stopped) = watch::channel(false);
    let detector = tokio::spawn(detector::run(manager.clone(), stopped.clone()));
    let mut server_stopped = stopped.clone();
    let until_stopped = async move {
        let _ = server_stopped.wait_for(|s| *s).await;
    };
    let router = api::router(manager.clone());
    let server = match &security.tls {
        None => tokio::spawn(
            axum::serve(PlainListener::new(listener), router)
                .with_graceful_shutdown(until_stopped)
                .into_future(),
        ),
        Some(tls) => {
            let listener = TlsListener::new(listener, tls.clone(), manager.rejections.clone())
                .context("serving TLS")?;
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(until_stopped)
                    .into_future(),
            )
        }
    };

    if start == Start::Initialize {
        match raft.initialize(members).await {
            Ok(()) => tracing::info!("initialized a new cluster"),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(e),
            )) => tracing::info!(reason = %e, "cluster already initialized"),
            Err(e) => return Err(e).context("initializing the cluster"),
        }
    }

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
    let _ = detector.await;
    raft.shutdown().await.context("stopping Raft")?;
    Ok(())
}
