//! The decision API of `overseer run`: the same router as `overseer serve`
//! ([`crate::decision::router`]), answering from the engine the [`super::controller`] keeps equal
//! to the cluster's policies. It runs on every replica (followers answer too), each with its own
//! audit log and its own rate-limit and budget counters (see `docs/policies.md`).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::Utc;
use clap::Args;
use overseer_policy::{
    approvals::ApprovalStore,
    audit::{AuditConfig, AuditLog},
    compile::CompiledPolicies,
    engine::Engine,
    limits::{LimitState, LimitsConfig, Persister},
};
use prometheus_client::registry::Registry;

use crate::decision::{
    DecisionMetrics, DecisionService,
    auth::Authenticator,
    tokenreview::{RoleMapping, TokenReviewConfig},
};

/// Flags of `overseer run` for its decision API.
#[derive(Debug, Clone, Args)]
pub struct DecisionArgs {
    /// Serve the decision API (`POST /v1/decisions`, `/v1/usage`, `/v1/approvals`,
    /// `/openapi.json`) on this address, from the cluster's AgentPolicy and ClusterAgentPolicy
    /// objects. Off when not given.
    #[arg(long, env = "OVERSEER_DECISION_LISTEN")]
    pub decision_listen: Option<SocketAddr>,
    /// YAML file of API keys callers of the decision API may present (the format of
    /// `overseer serve --api-keys`), besides Kubernetes tokens. Optional: in a cluster callers
    /// authenticate with their ServiceAccount (or EphemeralIdentity) token, reviewed with
    /// TokenReview.
    #[arg(long, env = "OVERSEER_DECISION_API_KEYS")]
    pub decision_api_keys: Option<PathBuf>,
    /// Audience a caller's Kubernetes token must be meant for (repeatable, or comma-separated);
    /// none: the API server's own audiences.
    #[arg(
        long = "decision-token-audience",
        env = "OVERSEER_DECISION_TOKEN_AUDIENCES",
        value_delimiter = ','
    )]
    pub decision_token_audiences: Vec<String>,
    /// Kubernetes user or group (e.g. `system:serviceaccount:mcp:overseer-gateway`) whose token
    /// gets the `gateway` role: it may ask on behalf of any agent (repeatable, or
    /// comma-separated). Other ServiceAccounts are agents that may only ask for themselves.
    #[arg(
        long = "decision-gateway",
        env = "OVERSEER_DECISION_GATEWAYS",
        value_delimiter = ','
    )]
    pub decision_gateways: Vec<String>,
    /// Kubernetes user or group whose token gets the `admin` role (the kill switch
    /// `POST /v1/admin/identities/revoke`); repeatable, or comma-separated.
    #[arg(
        long = "decision-admin",
        env = "OVERSEER_DECISION_ADMINS",
        value_delimiter = ','
    )]
    pub decision_admins: Vec<String>,
    /// How long an accepted token is trusted before it is reviewed again, in seconds. A revoked
    /// EphemeralIdentity is denied at once regardless (the identity gate).
    #[arg(long, env = "OVERSEER_DECISION_TOKEN_CACHE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub decision_token_cache_seconds: u64,
    /// Namespace of the AgentApproval objects of agents that have no ServiceAccount (agents a
    /// gateway names by id); default: the operator's own namespace (--lease-namespace).
    #[arg(long, env = "OVERSEER_DECISION_APPROVAL_NAMESPACE")]
    pub decision_approval_namespace: Option<String>,
    /// Audit log file of the decision API (JSON lines, hash-chained, rotated by size); resumed
    /// when it exists. Each replica needs its own file.
    #[arg(long, env = "OVERSEER_DECISION_AUDIT_FILE")]
    pub decision_audit_file: Option<PathBuf>,
    /// Rotate the audit file when it grows past this many MiB.
    #[arg(long, env = "OVERSEER_DECISION_AUDIT_MAX_MIB", default_value_t = DEFAULT_AUDIT_MAX_MIB, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub decision_audit_max_mib: u64,
    /// Keep at most this many rotated audit files, deleting the oldest at each rotation; without
    /// it every rotated file is kept. Before files are pruned, keep the last hash `overseer audit
    /// verify` prints somewhere else, and check later with `--since HASH`.
    #[arg(long, env = "OVERSEER_DECISION_AUDIT_KEEP_FILES", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub decision_audit_keep_files: Option<u64>,
    /// Write every audit record to stdout (as well as to --decision-audit-file, if given).
    #[arg(long, env = "OVERSEER_DECISION_AUDIT_STDOUT")]
    pub decision_audit_stdout: bool,
    /// File this replica persists its rate-limit and budget counters to (every second), so they
    /// survive a restart of the process. Without it the counters live in memory only.
    #[arg(long, env = "OVERSEER_DECISION_STATE_FILE")]
    pub decision_state_file: Option<PathBuf>,
}

/// The audit file's default rotation size, in MiB.
pub const DEFAULT_AUDIT_MAX_MIB: u64 = 100;

impl Default for DecisionArgs {
    /// The flags' defaults: the decision API off.
    fn default() -> Self {
        Self {
            decision_listen: None,
            decision_api_keys: None,
            decision_token_audiences: Vec::new(),
            decision_gateways: Vec::new(),
            decision_admins: Vec::new(),
            decision_token_cache_seconds: 10,
            decision_approval_namespace: None,
            decision_audit_file: None,
            decision_audit_max_mib: DEFAULT_AUDIT_MAX_MIB,
            decision_audit_keep_files: None,
            decision_audit_stdout: false,
            decision_state_file: None,
        }
    }
}

impl DecisionArgs {
    /// Check the relations between the flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.decision_listen.is_none() {
            return Ok(());
        }
        if self
            .decision_approval_namespace
            .as_deref()
            .is_some_and(str::is_empty)
        {
            return Err("--decision-approval-namespace must not be empty".to_owned());
        }
        if self.decision_audit_file.is_none() && !self.decision_audit_stdout {
            return Err(
                "--decision-listen needs an audit sink: --decision-audit-file FILE and/or --decision-audit-stdout"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

impl DecisionArgs {
    /// How callers' Kubernetes tokens are reviewed: every ServiceAccount is an `agent` that may
    /// ask only for itself, unless named a gateway or admin. Approvers review AgentApproval
    /// objects with kubectl, never through this API, so no token gets the `approver` role.
    pub fn token_review_config(&self) -> TokenReviewConfig {
        TokenReviewConfig {
            audiences: self.decision_token_audiences.clone(),
            roles: RoleMapping {
                admins: self.decision_admins.clone(),
                gateways: self.decision_gateways.clone(),
                approvers: Vec::new(),
            },
            ttl: Duration::from_secs(self.decision_token_cache_seconds),
            ..TokenReviewConfig::default()
        }
    }
}

/// The decision service of `overseer run` and what must be stopped with it.
#[derive(Debug)]
pub struct DecisionRuntime {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The service (router state).
    pub service: Arc<DecisionService>,
    persister: Option<Persister>,
}

/// The engine every replica keeps current: empty (default deny) until the policies have synced;
/// counters restored from `--decision-state-file` when given; approvals kept by `approvals`
/// (the cluster's AgentApproval objects when the decision API is on).
pub fn engine(
    args: &DecisionArgs,
    approvals: Arc<dyn ApprovalStore>,
) -> anyhow::Result<Arc<Engine>> {
    let limits = match &args.decision_state_file {
        Some(path) => LimitState::load(LimitsConfig::default(), path, Utc::now())
            .with_context(|| format!("cannot restore counters from {}", path.display()))?,
        None => LimitState::new(LimitsConfig::default()),
    };
    Ok(Arc::new(Engine::with_state(
        CompiledPolicies::empty(),
        Arc::new(limits),
        approvals,
    )))
}

/// The readiness check that holds while the identity gate's cache has not synced.
pub const CHECK_IDENTITIES: &str = "decision/identities";
/// The readiness check that holds while the AgentApproval watch has not listed every approval.
pub const CHECK_APPROVALS: &str = "decision/approvals";

/// Build the decision service over `engine` when `--decision-listen` is given: authentication,
/// the audit log, counter persistence, and metrics registered in `registry`; `cluster` adds the
/// in-cluster pieces (the identity gate) and is only called when the service is enabled.
pub fn build(
    args: &DecisionArgs,
    engine: Arc<Engine>,
    registry: &mut Registry,
    cluster: impl FnOnce(DecisionService) -> DecisionService,
) -> anyhow::Result<Option<DecisionRuntime>> {
    args.validate().map_err(anyhow::Error::msg)?;
    let Some(listen) = args.decision_listen else {
        return Ok(None);
    };
    let auth = match &args.decision_api_keys {
        Some(path) => Authenticator::from_file(path)?,
        None => Authenticator::no_keys(),
    };
    let file = args.decision_audit_file.as_ref().map(|path| {
        crate::decision::standalone::audit_file_sink(
            path,
            args.decision_audit_max_mib,
            args.decision_audit_keep_files,
        )
    });
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file,
            stdout: args.decision_audit_stdout,
            ..AuditConfig::default()
        })
        .context("cannot open the decision audit log")?,
    );
    let persister = match &args.decision_state_file {
        Some(path) => Some(
            Persister::start(
                engine.limits().clone(),
                path.clone(),
                Persister::DEFAULT_INTERVAL,
            )
            .with_context(|| format!("cannot persist counters to {}", path.display()))?,
        ),
        None => None,
    };
    let metrics = DecisionMetrics::register(registry);
    Ok(Some(DecisionRuntime {
        listen,
        service: Arc::new(cluster(DecisionService::new(engine, audit, auth, metrics))),
        persister,
    }))
}

/// Where the in-cluster decision service gets its Kubernetes access.
#[derive(Clone)]
pub struct ClusterClients {
    /// Watches EphemeralIdentities (the gate), reviews tokens and revokes identities.
    pub client: kube::Client,
    /// Creates AgentApproval objects and writes their status (the operator's own identity: the
    /// shipped admission policy lets only the operator create them).
    pub approvals: kube::Client,
    /// Namespace of approvals whose agent has no ServiceAccount, unless
    /// `--decision-approval-namespace` says otherwise.
    pub default_approval_namespace: String,
}

impl std::fmt::Debug for ClusterClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClients")
            .field(
                "default_approval_namespace",
                &self.default_approval_namespace,
            )
            .finish_non_exhaustive()
    }
}

/// The decision engine of `overseer run` and, when `--decision-listen` is given, the decision
/// API over it, wired for a cluster: callers' Kubernetes tokens reviewed with TokenReview, the
/// identity gate consulted before any policy, approvals as AgentApproval objects whose use is
/// confirmed at the API server, and the identity kill switch. Registers the gate's and the
/// approvals' readiness checks in `readiness` and runs their watches until `shutdown`. Without
/// `--decision-listen` the engine (still kept current by the policy controller) holds approvals
/// in memory and nothing is served.
pub fn in_cluster(
    args: &DecisionArgs,
    clients: ClusterClients,
    readiness: &crate::health::Readiness,
    registry: &mut Registry,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<(Arc<Engine>, Option<DecisionRuntime>)> {
    use crate::decision::{
        approvals::{KubeApprovals, KubeApprovalsConfig},
        gate::KubeRevoker,
        tokenreview::TokenReviewer,
    };
    if args.decision_listen.is_none() {
        let engine = engine(
            args,
            Arc::new(overseer_policy::approvals::InMemoryApprovals::default()),
        )?;
        return Ok((engine, None));
    }
    let namespace = args
        .decision_approval_namespace
        .clone()
        .unwrap_or(clients.default_approval_namespace);
    let (approvals, driver) =
        KubeApprovals::new(clients.approvals, KubeApprovalsConfig::new(namespace));
    let engine = engine(args, approvals.clone())?;
    let client = clients.client;
    let decisions = build(args, engine.clone(), registry, |service| {
        let identities_ready = readiness.register(CHECK_IDENTITIES);
        let (gate, store, _task) =
            super::gate::IdentityGate::watch(client.clone(), shutdown.clone());
        crate::controller::mark_ready_when_synced(store, identities_ready, shutdown.clone());
        let approvals_ready = readiness.register(CHECK_APPROVALS);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = driver.with_ready(approvals_ready).run() => {}
            }
        });
        service
            .with_gate(Arc::new(gate))
            .with_token_review(TokenReviewer::new(
                client.clone(),
                args.token_review_config(),
            ))
            .with_revoker(Arc::new(KubeRevoker::new(client.clone())))
            .with_approval_ledger(approvals)
    })?;
    Ok((engine, decisions))
}

impl DecisionRuntime {
    /// The decision API's routes: the same router as `overseer serve`.
    pub fn router(&self) -> axum::Router {
        crate::decision::router(self.service.clone())
    }

    /// Flush the audit log and write the counters one last time (after the server stopped).
    pub fn stop(self) -> anyhow::Result<()> {
        let head = self
            .service
            .audit
            .flush()
            .map_err(|e| anyhow::anyhow!("cannot flush the audit log: {e}"))?;
        tracing::info!(?head, "decision audit log flushed");
        if let Some(persister) = self.persister {
            persister
                .stop()
                .map_err(|e| anyhow::anyhow!("cannot persist counters: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_api_needs_an_audit_sink_and_keys_are_optional() {
        assert_eq!(DecisionArgs::default().validate(), Ok(()), "off by default");
        let on = DecisionArgs {
            decision_listen: Some("0.0.0.0:8181".parse().expect("addr")),
            ..DecisionArgs::default()
        };
        assert!(
            on.validate().expect_err("no audit").contains("audit sink"),
            "API keys are optional (callers present Kubernetes tokens), an audit sink is not"
        );
        let keys = DecisionArgs {
            decision_api_keys: Some("keys.yaml".into()),
            ..on.clone()
        };
        assert!(
            keys.validate()
                .expect_err("no audit")
                .contains("audit sink")
        );
        let empty_namespace = DecisionArgs {
            decision_audit_stdout: true,
            decision_approval_namespace: Some(String::new()),
            ..on.clone()
        };
        assert!(
            empty_namespace
                .validate()
                .expect_err("empty namespace")
                .contains("--decision-approval-namespace")
        );
        let stdout = DecisionArgs {
            decision_audit_stdout: true,
            ..keys.clone()
        };
        assert_eq!(stdout.validate(), Ok(()));
        let file = DecisionArgs {
            decision_audit_file: Some("/var/lib/overseer/audit.jsonl".into()),
            ..keys
        };
        assert_eq!(file.validate(), Ok(()));
    }
}
