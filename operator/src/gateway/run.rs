//! `overseer gateway`: flags and start-up.
//!
//! Two ways to decide:
//! * `--decision-url URL` (with `--decision-api-key-file`, a `gateway` role key): ask a decision
//!   service (`overseer serve`, or the one `overseer run` serves in a cluster). Give `--policies`
//!   too (the same directory, read-only) to filter `tools/list`; the gateway's own refusals go to
//!   `--audit-file`.
//! * `--policies DIR` alone: decide in-process. The decision API (approvals review, usage,
//!   `/metrics`) is then served on `--decision-listen` from the same engine and audit log.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser};
use overseer_policy::{
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
};
use prometheus_client::registry::Registry;

use super::{
    config::GatewayConfig,
    decider::{Decider, LocalDecider, RemoteDecider},
    proxy::{self, Gateway},
};
use crate::decision::{auth::Authenticator, standalone::ServeArgs};

/// Flags of `overseer gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Gateway configuration (upstream MCP servers, their credentials, who may reach them).
    #[arg(long, env = "OVERSEER_GATEWAY_CONFIG")]
    pub config: PathBuf,
    /// Address agents connect to (`http://ADDR/mcp/{upstream}`).
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub listen: SocketAddr,
    /// YAML file of API keys (the decision service's format); agents present an `agent` key.
    #[arg(long, env = "OVERSEER_GATEWAY_API_KEYS")]
    pub api_keys: PathBuf,
    /// Decision service to ask (`http://host:port`); without it, decide in-process.
    #[arg(long, env = "OVERSEER_DECISION_URL")]
    pub decision_url: Option<String>,
    /// File holding the gateway's own API key (role `gateway`) for the decision service.
    #[arg(
        long,
        env = "OVERSEER_DECISION_API_KEY_FILE",
        requires = "decision_url"
    )]
    pub decision_api_key_file: Option<PathBuf>,
    /// How long to wait for a decision before denying (`decision_service_unavailable`).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub decision_timeout_ms: u64,
    /// Policy directory: decide in-process from it, or (with --decision-url) filter tools/list
    /// with it.
    #[arg(long, env = "OVERSEER_POLICIES")]
    pub policies: Option<PathBuf>,
    /// In-process mode: where the decision API (approvals, usage, metrics) is served.
    #[arg(long, default_value = "127.0.0.1:8182")]
    pub decision_listen: SocketAddr,
    /// In-process mode: API keys of the decision API (approvers review approvals with them);
    /// default: --api-keys.
    #[arg(long)]
    pub decision_api_keys: Option<PathBuf>,
    /// Audit log (JSON lines, hash-chained): every decision in-process mode makes, and every
    /// request the gateway refuses.
    #[arg(
        long,
        env = "OVERSEER_AUDIT_FILE",
        default_value = "overseer-gateway-audit.jsonl"
    )]
    pub audit_file: PathBuf,
    /// In-process mode: file the rate-limit and budget counters are persisted to.
    #[arg(long, default_value = "overseer-gateway-limits.json")]
    pub state_file: PathBuf,
    /// Largest POST body accepted, in KiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_body_kib: u64,
}

/// Wraps [`ServeArgs`] so in-process mode builds the decision service exactly as `overseer
/// serve` does (every flag it adds keeps its default).
#[derive(Debug, Parser)]
struct ServeWrapper {
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve_args(args: &GatewayArgs, policies: &std::path::Path) -> anyhow::Result<ServeArgs> {
    let keys = args.decision_api_keys.as_ref().unwrap_or(&args.api_keys);
    let argv = [
        "serve".into(),
        "--policies".into(),
        policies.as_os_str().to_owned(),
        "--listen".into(),
        args.decision_listen.to_string().into(),
        "--api-keys".into(),
        keys.as_os_str().to_owned(),
        "--audit-file".into(),
        args.audit_file.as_os_str().to_owned(),
        "--state-file".into(),
        args.state_file.as_os_str().to_owned(),
    ];
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    Ok(ServeWrapper::try_parse_from(argv)
        .context("cannot set up the in-process decision service")?
        .serve)
}

/// `overseer gateway`: proxy until `shutdown` resolves.
pub async fn run_gateway(
    args: GatewayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let config = GatewayConfig::from_yaml(&text)
        .map_err(|e| anyhow::anyhow!("{} is invalid: {e}", args.config.display()))?;
    let upstreams = config
        .resolve(|v| std::env::var(v).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let namespace = config
        .agent_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok());
    let auth = Authenticator::from_file(&args.api_keys)?;
    let deadline = Duration::from_millis(args.decision_timeout_ms);

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut side_server = None;
    let (decider, audit): (Arc<dyn Decider>, Arc<AuditLog>) = match &args.decision_url {
        Some(url) => {
            let key = match &args.decision_api_key_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            };
            let audit = Arc::new(
                AuditLog::open(AuditConfig {
                    file: Some(FileSinkConfig::new(&args.audit_file)),
                    ..AuditConfig::default()
                })
                .with_context(|| format!("cannot open {}", args.audit_file.display()))?,
            );
            let mut remote =
                RemoteDecider::new(url, key.as_deref(), deadline)?.with_audit(Arc::clone(&audit));
            match &args.policies {
                Some(dir) => {
                    let (compiled, problems) = compile_dir(dir)?;
                    for p in problems {
                        tracing::error!(problem = %p, "policy not loaded for tools/list filtering");
                    }
                    remote = remote.with_policies(Arc::new(Engine::new(compiled)));
                }
                None => tracing::warn!(
                    "no --policies: tools/list is passed through unfiltered (every tools/call is still decided)"
                ),
            }
            (Arc::new(remote), audit)
        }
        None => {
            let Some(dir) = &args.policies else {
                bail!(
                    "give --decision-url URL (ask a decision service) or --policies DIR (decide in-process)"
                );
            };
            let serve = serve_args(&args, dir)?;
            let mut registry = Registry::with_prefix(crate::metrics::PREFIX);
            let (service, _catalog, _dir, persister) =
                crate::decision::standalone::build(&serve, &mut registry)?;
            let local = LocalDecider::new(Arc::clone(&service.engine), Arc::clone(&service.audit));
            let app = crate::decision::router(Arc::clone(&service))
                .merge(crate::metrics::registry_router(Arc::new(registry)));
            let listener = tokio::net::TcpListener::bind(args.decision_listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.decision_listen))?;
            tracing::info!(listen = %args.decision_listen, "decision API (approvals, usage) ready");
            let mut rx = shutdown_rx.clone();
            side_server = Some((
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.wait_for(|s| *s).await;
                        })
                        .await
                }),
                persister,
            ));
            (Arc::new(local), Arc::clone(&service.audit))
        }
    };

    let max_body = usize::try_from(args.max_body_kib.saturating_mul(1024)).unwrap_or(usize::MAX);
    let names: Vec<String> = upstreams.keys().cloned().collect();
    let gateway =
        Arc::new(Gateway::new(decider, auth, upstreams, namespace).with_max_body(max_body));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, upstreams = ?names, "MCP gateway ready");
    axum::serve(listener, proxy::router(gateway))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        })
        .await
        .context("the gateway failed")?;
    if let Some((server, persister)) = side_server {
        let _ = server.await;
        persister
            .stop()
            .map_err(|e| anyhow::anyhow!("cannot persist counters: {e}"))?;
    }
    let head = audit
        .flush()
        .map_err(|e| anyhow::anyhow!("cannot flush the audit log: {e}"))?;
    tracing::info!(?head, "audit log flushed");
    Ok(())
}

/// Compile a policy directory (for tools/list filtering in remote mode).
fn compile_dir(
    dir: &std::path::Path,
) -> anyhow::Result<(overseer_policy::compile::CompiledPolicies, Vec<String>)> {
    let mut catalog = crate::decision::catalog::PolicyCatalog::new();
    let mut pd = crate::decision::files::PolicyDir::new(dir);
    let errors = pd
        .load_into(&mut catalog)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rebuild = catalog.rebuild();
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    problems.extend(
        rebuild
            .reports
            .iter()
            .filter(|r| !r.is_ok())
            .map(|r| r.message()),
    );
    Ok((rebuild.compilation.compiled, problems))
}
