//! `overseer run`: start-up checks, the health and metrics servers, leader election and the
//! controllers, all stopped together by one shutdown signal.

pub mod startup;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::Router;
use kube::Client;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    agentpolicy::{self, controller::PolicyController},
    cli::RunArgs,
    controller::{Context, ControllerSet, Diagnostics, EventRecorder},
    health::{self, CHECK_CRDS, CHECK_KUBERNETES_API, Readiness},
    identity::controller::IdentityController,
    leader::{self, LeaseConfig},
    metrics::{self, Metrics},
};

/// The controllers `run` starts. A controller is registered here only once its behaviour is
/// implemented: no kind may report `Ready` for work nobody does.
///
/// Every controller runs on every replica so its caches stay warm; only the leader reconciles
/// or writes (the [`crate::controller::instrumented`] gate and the leader-gated writers).
/// `engine` is the decision engine the policy controller keeps current on every replica.
pub fn controllers(engine: Arc<overseer_policy::engine::Engine>) -> ControllerSet {
    let mut set = ControllerSet::new();
    set.register(IdentityController);
    set.register(crate::fleetcluster::controller::FleetClusterController);
    set.register(crate::fleetrollout::controller::FleetRolloutController::default());
    set.register(crate::mcpserver::controller::MCPServerController);
    set.register(PolicyController::new(engine));
    set.register(crate::runway::controller::RunwayController::default());
    set
}

/// Run the operator until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    args.validate().map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let config = startup::load_config().await?;
    let url = config.cluster_url.to_string();
    let client = startup::client(config.clone())?;

    let readiness = Readiness::new();
    let api_ready = readiness.register(CHECK_KUBERNETES_API);
    let crds_ready = readiness.register(CHECK_CRDS);
    let crds = overseer_crds::all_crds();
    tokio::select! {
        () = shutdown.cancelled() => {
            info!("shutdown requested during start-up");
            return Ok(());
        }
        checked = startup::verify_crds(&client, &crds, &url, args.startup_timeout()) => checked?,
    }
    api_ready.set(true);
    crds_ready.set(true);
    info!(%url, crds = crds.len(), "connected; every Overseer CRD is installed");

    // Register every controller's readiness check before `/readyz` is served, so no probe can
    // see the operator ready in the moment between the servers starting and the controllers.
    // The decision engine the policy controller keeps current on every replica and, with
    // --decision-listen, the decision API answering from it (see `agentpolicy::service::in_cluster`).
    let mut metrics = Metrics::new();
    let (engine, decisions) = agentpolicy::service::in_cluster(
        &args.decision,
        agentpolicy::service::ClusterClients {
            client: client.clone(),
            approvals: client.clone(),
            default_approval_namespace: args.lease_namespace.clone(),
        },
        &readiness,
        metrics.registry_mut(),
        &shutdown,
    )?;
    let set = controllers(engine.clone());
    for name in set.names() {
        readiness.register(format!("controller/{name}"));
    }

    let metrics = Arc::new(metrics);
    let decision_router = decisions.as_ref().map(|d| (d.listen, d.router()));
    let mut servers = serve(
        &args,
        readiness.clone(),
        metrics.clone(),
        decision_router,
        shutdown.clone(),
    )
    .await?;

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("overseer-{}", uuid::Uuid::new_v4()));
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew: Duration::from_secs(args.lease_renew_seconds),
    };
    let (leader_sender, leader) = leader::channel();
    let election_stop = CancellationToken::new();
    let election = tokio::spawn(leader::run(
        lease_client(config, lease.renew)?,
        lease,
        leader_sender,
        metrics.leader.clone(),
        api_ready,
        election_stop.clone(),
    ));

    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), &identity, leader.clone()),
        client,
        metrics,
        leader,
        readiness,
        diagnostics: Diagnostics::default(),
    });
    info!(controllers = ?set.names(), "starting controllers");
    let running = set.start(ctx, &shutdown);

    let mut server_failed = None;
    tokio::select! {
        biased;
        () = shutdown.cancelled() => info!("shutting down"),
        result = servers.wait_any() => {
            // A server stops on its own only when it fails (or when shutdown raced it here).
            if !shutdown.is_cancelled() {
                error!("an HTTP server stopped unexpectedly; shutting down");
                server_failed = Some(result);
                shutdown.cancel();
            }
        }
    }

    let graceful = async {
        let failed = running.join().await;
        // Only now that no controller can write any more, hand the Lease over.
        election_stop.cancel();
        if let Err(e) = election.await {
            warn!(error = %e, "leader election task failed");
        }
        servers.join().await;
        // No decision is in flight any more: flush the audit log and the counters.
        if let Some(Err(e)) = decisions.map(agentpolicy::service::DecisionRuntime::stop) {
            warn!(error = %e, "cannot stop the decision service cleanly");
        }
        failed
    };
    let failed = tokio::time::timeout(args.shutdown_timeout(), graceful)
        .await
        .context("graceful shutdown timed out")?;
    if let Some(result) = server_failed {
        result?;
        anyhow::bail!("an HTTP server stopped unexpectedly");
    }
    if !failed.is_empty() {
        anyhow::bail!("controllers failed: {}", failed.join(", "));
    }
    info!("stopped");
    Ok(())
}

/// A client for the Lease alone: its requests time out within the renew interval, so a hung
/// renewal makes this replica step down before its Lease can expire.
fn lease_client(mut config: kube::Config, renew: Duration) -> anyhow::Result<Client> {
    config.connect_timeout = Some(renew);
    config.read_timeout = Some(renew);
    config.write_timeout = Some(renew);
    config.reset_reader_on_write = true;
    Ok(startup::client(config)?)
}

/// Cancel `token` on SIGTERM or SIGINT.
async fn cancel_on_signal(token: CancellationToken) {
    let signal = wait_for_signal().await;
    info!(signal, "received shutdown signal");
    token.cancel();
}

/// Wait for SIGTERM or SIGINT; returns which one arrived.
#[cfg(unix)]
pub async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Wait for Ctrl-C.
#[cfg(not(unix))]
pub async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

/// The running HTTP servers.
#[derive(Debug)]
struct Servers {
    tasks: Vec<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
}

/// Bind the health and metrics servers (one server when both addresses are equal) and the
/// decision API (when enabled), and serve them until `shutdown`.
async fn serve(
    args: &RunArgs,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    decisions: Option<(SocketAddr, Router)>,
    shutdown: CancellationToken,
) -> anyhow::Result<Servers> {
    let health = health::router(readiness);
    let metrics = metrics::router(metrics);
    let mut routers: Vec<(SocketAddr, Router)> = if args.health_addr == args.metrics_addr {
        vec![(args.health_addr, health.merge(metrics))]
    } else {
        vec![(args.health_addr, health), (args.metrics_addr, metrics)]
    };
    routers.extend(decisions);
    let mut tasks = Vec::new();
    for (addr, router) in routers {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().unwrap_or(addr);
        info!(addr = %local, "serving HTTP");
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
        tasks.push((local, task));
    }
    Ok(Servers { tasks })
}

impl Servers {
    /// Resolve when the first server stops, with its outcome.
    async fn wait_any(&mut self) -> anyhow::Result<()> {
        let (result, index, _) =
            futures::future::select_all(self.tasks.iter_mut().map(|(_, task)| task)).await;
        let (addr, _) = self.tasks.remove(index);
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                Err(anyhow::Error::new(e).context(format!("HTTP server on {addr} failed")))
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("HTTP server on {addr} panicked"))),
        }
    }

    /// Wait for every server to finish its graceful shutdown.
    async fn join(self) {
        for (addr, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => info!(%addr, "HTTP server stopped"),
                Ok(Err(e)) => warn!(%addr, error = %e, "HTTP server failed"),
                Err(e) => warn!(%addr, error = %e, "HTTP server task failed"),
            }
        }
    }
}
