//! `overseer gateway`: flags and start-up.
//!
//! Two ways to decide:
//! * `--decision-url URL` (with `--decision-api-key-file`, a `gateway` role key): ask a decision
//!   service (`overseer serve`, or the one `overseer run` serves in a cluster), which also says
//!   which listed tools an agent may see (`POST /v1/tools/permitted`) to filter `tools/list`;
//!   `--policies` too (the same directory, read-only) answers that locally instead. The gateway's
//!   own refusals go to `--audit-file`.
//! * `--policies DIR` alone: decide in-process. The decision API (approvals review, usage,
//!   `/metrics`) is then served on `--decision-listen` from the same engine and audit log.
//!
//! Agents authenticate with an `agent` API key (`--api-keys`) and/or, with `--token-review`,
//! with their Kubernetes ServiceAccount or `EphemeralIdentity` token, reviewed with the
//! TokenReview API of the cluster the gateway runs in (at least one of the two is required).
//!
//! Upstreams come from the configuration file (`--config`), from the `MCPServer` objects of one
//! namespace (`--mcp-servers-namespace`, watched: changes apply without a restart), or both (an
//! object wins over a file upstream of the same name).

use std::{
    collections::HashMap,
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, builder::TypedValueParser as _};
use overseer_policy::{
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
};
use prometheus_client::registry::Registry;

use super::{
    config::Upstream,
    decider::{Decider, LocalDecider, RemoteDecider},
    mcpservers::{FileUpstreams, McpServerWatch},
    metrics::GatewayMetrics,
    proxy::{self, Gateway},
    reload::{ConfigFile, Reload},
    routes::{Route, RouteTable},
};
use crate::decision::{
    auth::Authenticator,
    standalone::ServeArgs,
    tokenreview::{AgentTokenFlags, TokenReviewConfig},
};

/// Flags of `overseer gateway`.
#[derive(Debug, Clone, Args)]
#[command(group(
    clap::ArgGroup::new("agent_authentication")
        .args(["api_keys", "token_review"])
        .required(true)
        .multiple(true)
))]
pub struct GatewayArgs {
    /// Gateway configuration file (upstream MCP servers, their credentials, who may reach them).
    /// Optional with --mcp-servers-namespace.
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_CONFIG",
        required_unless_present = "mcp_servers_namespace"
    )]
    pub config: Option<PathBuf>,
    /// Also serve the MCPServer objects (agents.overseer.dev) of this namespace, watched: objects
    /// created, changed or deleted apply without a restart; an object wins over a --config
    /// upstream of the same name. Credentials are read from the Secrets they name (same
    /// namespace). Needs RBAC get/list/watch on mcpservers and get on those Secrets there; the
    /// Kubernetes client comes from the in-cluster configuration, else KUBECONFIG.
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_MCP_SERVERS_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub mcp_servers_namespace: Option<String>,
    /// With --mcp-servers-namespace: seconds after which every credential Secret is read again
    /// (a rotated or newly created Secret is served within this period; a changed MCPServer
    /// re-reads its Secret at once).
    #[arg(
        long,
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        requires = "mcp_servers_namespace"
    )]
    pub mcp_servers_refresh_seconds: u64,
    /// Seconds between reads of --config and the files it names (credential files, TLS
    /// material): a change (a rotated Secret, an edited ConfigMap) is served without a restart
    /// once it is valid; an invalid one is logged and the last valid configuration kept.
    /// 0: read once at start-up. Environment variables and agentNamespace apply at start-up.
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_CONFIG_RELOAD_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(0..=86400)
    )]
    pub config_reload_seconds: u64,
    /// Namespace of agents authenticated by API key (namespaced AgentPolicy objects only govern
    /// principals of their namespace). Default: the configuration file's `agentNamespace`, else
    /// $POD_NAMESPACE.
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_AGENT_NAMESPACE",
        value_name = "NAMESPACE"
    )]
    pub agent_namespace: Option<String>,
    /// Address agents connect to (`http://ADDR/mcp/{upstream}`).
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub listen: SocketAddr,
    /// Threads serving requests: 0 = one per CPU the process may use; 1 = everything on one
    /// thread (a call never crosses threads: more calls per CPU, the same latency in
    /// BENCHMARKS.md; a sidecar's choice).
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_WORKER_THREADS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u16).range(0..=1024)
    )]
    pub worker_threads: u16,
    /// Serve Prometheus metrics (`GET /metrics`: requests by server, method and outcome; upstream
    /// latency) on this address. Kept off the agents' port: they would see every agent's counts.
    #[arg(long, env = "OVERSEER_GATEWAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// YAML file of API keys (the decision service's format); agents present an `agent` key.
    /// Required unless --token-review is given.
    // Not given: the empty path (`api_keys_file()` is `None`). Kept a `PathBuf` so code reading
    // the flag (e.g. the manifest tests) keeps working.
    #[arg(
        long,
        env = "OVERSEER_GATEWAY_API_KEYS",
        default_value = "",
        hide_default_value = true,
        value_parser = clap::builder::OsStringValueParser::new().map(PathBuf::from)
    )]
    pub api_keys: PathBuf,
    #[command(flatten)]
    pub tokens: AgentTokenFlags,
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
    /// with it instead of asking the decision service.
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
    /// When the audit file is rotated, and how many rotated files are kept.
    #[command(flatten)]
    pub audit_rotation: crate::decision::standalone::AuditRotationArgs,
    /// In-process mode: file the rate-limit and budget counters are persisted to.
    #[arg(long, default_value = "overseer-gateway-limits.json")]
    pub state_file: PathBuf,
    /// Largest POST body accepted, in KiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_body_kib: u64,
}

impl GatewayArgs {
    /// The API-key file, when one is given.
    pub fn api_keys_file(&self) -> Option<&Path> {
        (!self.api_keys.as_os_str().is_empty()).then_some(self.api_keys.as_path())
    }

    /// The TokenReview settings of `--token-review`, when it is given.
    pub fn token_review_config(&self) -> Option<TokenReviewConfig> {
        self.tokens.config()
    }
}

/// Wraps [`ServeArgs`] so in-process mode builds the decision service exactly as `overseer
/// serve` does (every flag it adds keeps its default).
#[derive(Debug, Parser)]
struct ServeWrapper {
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve_args(args: &GatewayArgs, policies: &Path) -> anyhow::Result<ServeArgs> {
    let Some(keys) = args
        .decision_api_keys
        .as_deref()
        .or_else(|| args.api_keys_file())
    else {
        bail!(
            "in-process mode serves the decision API (approvals review, usage) on --decision-listen, \
             which needs API keys: give --decision-api-keys FILE (or --api-keys FILE)"
        );
    };
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
    let argv: Vec<OsString> = argv
        .into_iter()
        .chain(args.audit_rotation.to_serve_args())
        .collect();
    Ok(ServeWrapper::try_parse_from(argv)
        .context("cannot set up the in-process decision service")?
        .serve)
}

/// `overseer gateway`: proxy until `shutdown` resolves.
pub async fn run_gateway(
    args: GatewayArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut config_file = args
        .config
        .as_ref()
        .map(|path| ConfigFile::new(path, args.mcp_servers_namespace.is_some()));
    let (upstreams, file_namespace) = match &mut config_file {
        Some(file) => match file.reload(|v| std::env::var(v).ok()) {
            Reload::Changed(upstreams) => (upstreams, file.agent_namespace().map(str::to_owned)),
            Reload::Invalid(why) => bail!("{why}"),
            Reload::Unchanged => bail!("{} was not read", file.path().display()),
        },
        None if args.mcp_servers_namespace.is_some() => (HashMap::new(), None),
        None => bail!("give --config FILE and/or --mcp-servers-namespace NAMESPACE: no upstreams"),
    };
    let namespace = args
        .agent_namespace
        .clone()
        .or(file_namespace)
        .or_else(|| std::env::var("POD_NAMESPACE").ok());
    let auth = match args.api_keys_file() {
        Some(path) => Authenticator::from_file(path)?,
        None if args.tokens.token_review => Authenticator::no_keys(),
        None => bail!(
            "agents cannot authenticate: give --api-keys FILE (agent API keys) and/or \
             --token-review (Kubernetes ServiceAccount / EphemeralIdentity tokens)"
        ),
    };
    let client = if args.tokens.token_review || args.mcp_servers_namespace.is_some() {
        Some(kube::Client::try_default().await.context(
            "--token-review and --mcp-servers-namespace need a Kubernetes API server (to review \
             agent tokens, to watch MCPServer objects), but no in-cluster configuration or \
             KUBECONFIG was found",
        )?)
    } else {
        None
    };
    let tokens = client.as_ref().and_then(|c| args.tokens.reviewer(c));
    let deadline = Duration::from_millis(args.decision_timeout_ms);

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut side_server = None;
    let (decider, audit): (Arc<dyn Decider>, Arc<AuditLog>) = match &args.decision_url {
        Some(url) => {
            let (mut remote, audit) = remote_decider(
                url,
                args.decision_api_key_file.as_deref(),
                deadline,
                &args.audit_rotation.file_sink(&args.audit_file),
                false,
            )?;
            match &args.policies {
                Some(dir) => {
                    let (compiled, problems) = compile_dir(dir)?;
                    for p in problems {
                        tracing::error!(problem = %p, "policy not loaded for tools/list filtering");
                    }
                    remote = remote.with_policies(Arc::new(Engine::new(compiled)));
                }
                None => tracing::info!(
                    "tools/list is filtered by asking the decision service (POST /v1/tools/permitted)"
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
            let local = InProcess::start(&serve, args.decision_listen, shutdown_rx.clone()).await?;
            let decider = Arc::new(local.decider.clone());
            let audit = Arc::clone(&local.audit);
            side_server = Some(local);
            (decider, audit)
        }
    };

    let max_body = usize::try_from(args.max_body_kib.saturating_mul(1024)).unwrap_or(usize::MAX);
    let table = RouteTable::default();
    // The configuration file's upstreams as reloaded: into the table, or (with MCPServer
    // objects) into the watch that merges them with the objects.
    type Publish = Box<dyn FnMut(HashMap<String, Arc<Upstream>>) + Send>;
    let (watch, publish_file): (_, Publish) = match (&args.mcp_servers_namespace, client) {
        (Some(ns), Some(client)) => {
            let (file_tx, file_rx) = tokio::sync::watch::channel(FileUpstreams::default());
            let publish: Publish = Box::new(move |upstreams| {
                let _ = file_tx.send(Arc::new(upstreams));
            });
            let watch = McpServerWatch::new(client, ns, upstreams, table.clone())
                .with_refresh(Duration::from_secs(args.mcp_servers_refresh_seconds))
                .with_file_updates(file_rx);
            (
                Some(start_watch(watch, shutdown_rx.clone()).await?),
                publish,
            )
        }
        _ => {
            let serve = |upstreams: HashMap<String, Arc<Upstream>>| {
                upstreams
                    .into_iter()
                    .map(|(name, u)| (name, Route::Serve(u)))
                    .collect()
            };
            table.store(serve(
                upstreams
                    .into_iter()
                    .map(|(name, u)| (name, Arc::new(u)))
                    .collect(),
            ));
            let table = table.clone();
            (
                None,
                Box::new(move |upstreams| table.store(serve(upstreams))),
            )
        }
    };
    let mut names: Vec<String> = table.snapshot().keys().cloned().collect();
    names.sort();
    let mut gateway = Gateway::new(decider, auth, HashMap::new(), namespace)
        .with_routes(table)
        .with_max_body(max_body);
    if let Some(reviewer) = tokens {
        gateway = gateway.with_token_review(reviewer);
    }
    let mut reload_metrics = None;
    let metrics_server = match args.metrics_listen {
        Some(addr) => {
            let mut registry =
                prometheus_client::registry::Registry::with_prefix(crate::metrics::PREFIX);
            let metrics = GatewayMetrics::register(&mut registry);
            gateway = gateway.with_metrics(metrics.clone());
            reload_metrics = Some(metrics);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            tracing::info!(listen = %addr, "gateway metrics served at /metrics");
            let mut stop = shutdown_rx.clone();
            Some(tokio::spawn(async move {
                axum::serve(
                    listener,
                    crate::metrics::registry_router(Arc::new(registry)),
                )
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            }))
        }
        None => None,
    };
    let reloader = match (config_file, args.config_reload_seconds) {
        (Some(file), seconds) if seconds > 0 => {
            let mut stop = shutdown_rx.clone();
            Some(tokio::spawn(file.watch(
                Duration::from_secs(seconds),
                publish_file,
                reload_metrics,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )))
        }
        _ => None,
    };
    let gateway = Arc::new(gateway);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, upstreams = ?names, "MCP gateway ready");
    // Answers leave at once (no Nagle delay behind a previous segment's ACK).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    // Every call sets an upstream timeout (at least 1 s), and a remote decision its deadline.
    let armed = proxy::keep_timer_armed(if args.decision_url.is_some() {
        deadline.min(Duration::from_secs(1))
    } else {
        Duration::from_secs(1)
    });
    let served = axum::serve(listener, proxy::router(gateway))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
        })
        .await
        .context("the gateway failed");
    if let Some(watch) = watch {
        watch.abort();
    }
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    armed.abort();
    if let Some(server) = metrics_server {
        // Nothing to finish: stop it whether or not the shutdown signal reached it.
        server.abort();
    }
    served?;
    finish(side_server, &audit).await
}

/// A decider asking the decision service at `url` (authenticating with the key in `key_file`)
/// under `deadline`, and the audit log of the enforcement point's own refusals (`audit_file`,
/// and stdout when `stdout`).
pub(crate) fn remote_decider(
    url: &str,
    key_file: Option<&Path>,
    deadline: Duration,
    audit_file: &FileSinkConfig,
    stdout: bool,
) -> anyhow::Result<(RemoteDecider, Arc<AuditLog>)> {
    let key = match key_file {
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
            file: Some(audit_file.clone()),
            stdout,
            ..AuditConfig::default()
        })
        .with_context(|| format!("cannot open {}", audit_file.path.display()))?,
    );
    let remote = RemoteDecider::new(url, key.as_deref(), deadline)?.with_audit(Arc::clone(&audit));
    Ok((remote, audit))
}

/// The in-process decision engine of `overseer gateway` and `overseer ext-authz` (`--policies`
/// without `--decision-url`): built as `overseer serve` builds it, with its decision API
/// (approvals review, usage, metrics) served beside the enforcement point.
pub(crate) struct InProcess {
    /// Decides with the engine and audits to its log.
    pub(crate) decider: LocalDecider,
    /// The hash-chained audit log the decisions and refusals go to.
    pub(crate) audit: Arc<AuditLog>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    persister: overseer_policy::limits::Persister,
}

impl InProcess {
    /// Build the engine from `serve` and serve its decision API on `listen` until `shutdown`
    /// turns true.
    pub(crate) async fn start(
        serve: &ServeArgs,
        listen: SocketAddr,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let mut registry = Registry::with_prefix(crate::metrics::PREFIX);
        let (service, _catalog, _dir, persister) =
            crate::decision::standalone::build(serve, &mut registry)?;
        let decider = LocalDecider::new(Arc::clone(&service.engine), Arc::clone(&service.audit));
        let app = crate::decision::router(Arc::clone(&service))
            .merge(crate::metrics::registry_router(Arc::new(registry)));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(%listen, "decision API (approvals, usage) ready");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self {
            decider,
            audit: Arc::clone(&service.audit),
            server,
            persister,
        })
    }
}

/// After the enforcement point stopped: wait for the in-process decision API (if any) and write
/// its counters, then flush the audit log.
pub(crate) async fn finish(side: Option<InProcess>, audit: &AuditLog) -> anyhow::Result<()> {
    if let Some(side) = side {
        let _ = side.server.await;
        side.persister
            .stop()
            .map_err(|e| anyhow::anyhow!("cannot persist counters: {e}"))?;
    }
    let head = audit
        .flush()
        .map_err(|e| anyhow::anyhow!("cannot flush the audit log: {e}"))?;
    tracing::info!(?head, "audit log flushed");
    Ok(())
}

/// How long the first list of `MCPServer` objects may take before start-up fails.
const WATCH_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Check that `MCPServer` objects can be listed, start the watch, and wait until the first
/// complete list is in the table (so no request finds a server missing that exists).
async fn start_watch(
    watch: McpServerWatch,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    watch.check().await.map_err(anyhow::Error::msg)?;
    let namespace = watch.namespace().to_owned();
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(watch.run(
        move || {
            let _ = synced_tx.send(());
        },
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        },
    ));
    match tokio::time::timeout(WATCH_STARTUP_TIMEOUT, synced_rx).await {
        Ok(Ok(())) => Ok(task),
        _ => {
            task.abort();
            bail!(
                "the MCPServer objects of namespace {namespace} could not be loaded within {}s",
                WATCH_STARTUP_TIMEOUT.as_secs()
            )
        }
    }
}

/// Compile a policy directory (for tools/list filtering in remote mode).
fn compile_dir(
    dir: &Path,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        gateway: GatewayArgs,
    }

    fn parse(flags: &[&str]) -> Result<GatewayArgs, clap::Error> {
        Wrapper::try_parse_from(
            ["gateway", "--config", "gateway.yaml"]
                .iter()
                .chain(flags)
                .copied(),
        )
        .map(|w| w.gateway)
    }

    fn parse_without_config(flags: &[&str]) -> Result<GatewayArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once(&"gateway").chain(flags).copied())
            .map(|w| w.gateway)
    }

    #[test]
    fn mcp_servers_namespace_makes_the_config_file_optional() {
        let args = parse_without_config(&[
            "--api-keys",
            "keys.yaml",
            "--mcp-servers-namespace",
            "mcp",
            "--mcp-servers-refresh-seconds",
            "5",
            "--agent-namespace",
            "agents",
        ])
        .expect("parses");
        assert_eq!(args.config, None);
        assert_eq!(args.mcp_servers_namespace.as_deref(), Some("mcp"));
        assert_eq!(args.mcp_servers_refresh_seconds, 5);
        assert_eq!(args.agent_namespace.as_deref(), Some("agents"));
        // Both: the file's upstreams and the objects.
        let both = parse(&["--api-keys", "k", "--mcp-servers-namespace", "mcp"]).expect("parses");
        assert_eq!(both.config, Some(PathBuf::from("gateway.yaml")));
        assert_eq!(both.mcp_servers_refresh_seconds, 30);
        // Neither: no upstreams at all.
        let err = parse_without_config(&["--api-keys", "k"]).expect_err("no upstreams");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--config"), "{err}");
        // The refresh period needs the watch, and stays in range.
        assert!(parse(&["--api-keys", "k", "--mcp-servers-refresh-seconds", "5"]).is_err());
        assert!(
            parse_without_config(&[
                "--api-keys",
                "k",
                "--mcp-servers-namespace",
                "mcp",
                "--mcp-servers-refresh-seconds",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn api_keys_alone_keep_working() {
        let args = parse(&["--api-keys", "keys.yaml"]).expect("parses");
        assert_eq!(args.api_keys_file(), Some(Path::new("keys.yaml")));
        assert!(!args.tokens.token_review);
        assert_eq!(args.token_review_config(), None);
    }

    #[test]
    fn token_review_makes_api_keys_optional() {
        let args = parse(&[
            "--token-review",
            "--token-audience",
            "overseer-gateway",
            "--token-audience=mcp",
            "--token-cache-ttl-seconds",
            "30",
        ])
        .expect("parses");
        assert_eq!(args.api_keys_file(), None);
        let config = args.token_review_config().expect("token review");
        assert_eq!(config.audiences, ["overseer-gateway", "mcp"]);
        assert_eq!(config.ttl, Duration::from_secs(30));
        // Both together: API keys first, then tokens.
        let both = parse(&["--token-review", "--api-keys", "keys.yaml"]).expect("parses");
        assert_eq!(both.api_keys_file(), Some(Path::new("keys.yaml")));
        assert_eq!(
            both.token_review_config().map(|c| (c.audiences, c.ttl)),
            Some((Vec::new(), Duration::from_secs(10)))
        );
    }

    #[test]
    fn one_way_to_authenticate_is_required() {
        let err = parse(&[]).expect_err("no authentication");
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let text = err.to_string();
        assert!(
            text.contains("--api-keys") && text.contains("--token-review"),
            "{text}"
        );
        // Token flags without --token-review say what is missing.
        for flags in [
            &["--api-keys", "k.yaml", "--token-audience", "a"][..],
            &["--api-keys", "k.yaml", "--token-cache-ttl-seconds", "5"][..],
        ] {
            let err = parse(flags).expect_err("needs --token-review");
            assert!(err.to_string().contains("--token-review"), "{err}");
        }
        assert!(parse(&["--token-review", "--token-cache-ttl-seconds", "0"]).is_err());
    }

    #[tokio::test]
    async fn without_keys_or_token_review_the_gateway_says_what_to_give() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("gateway.yaml");
        std::fs::write(
            &config,
            "upstreams: [{name: a, url: 'http://127.0.0.1:9/mcp'}]",
        )
        .expect("write");
        // What a caller building the flags in code (not through clap) could pass.
        let mut args = parse(&["--api-keys", "unused"]).expect("parses");
        args.config = Some(config);
        args.api_keys = PathBuf::new();
        let err = run_gateway(args, async {}).await.expect_err("refused");
        let text = format!("{err:#}");
        assert!(
            text.contains("--api-keys") && text.contains("--token-review"),
            "{text}"
        );
    }

    #[test]
    fn in_process_mode_without_api_keys_needs_decision_api_keys() {
        let args = parse(&["--token-review"]).expect("parses");
        let err = serve_args(&args, Path::new("policies")).expect_err("no keys");
        assert!(err.to_string().contains("--decision-api-keys"), "{err}");
        let args =
            parse(&["--token-review", "--decision-api-keys", "approvers.yaml"]).expect("parses");
        let serve = serve_args(&args, Path::new("policies")).expect("serve flags");
        assert_eq!(serve.api_keys, Some(PathBuf::from("approvers.yaml")));
    }

    #[test]
    fn audit_rotation_reaches_the_in_process_decision_service() {
        let keys = ["--api-keys", "keys.yaml"];
        let args = parse(&keys).expect("parses");
        let sink = args.audit_rotation.file_sink(&args.audit_file);
        assert_eq!(sink.max_bytes, 100 * 1024 * 1024);
        assert_eq!(
            sink.max_rotated_files, None,
            "every rotated file is kept by default"
        );
        let serve = serve_args(&args, Path::new("policies")).expect("serve flags");
        assert_eq!(serve.audit_rotation.audit_keep_files, None);

        let args = parse(
            &[
                &keys[..],
                &["--audit-max-mib", "5", "--audit-keep-files", "3"],
            ]
            .concat(),
        )
        .expect("parses");
        let sink = args.audit_rotation.file_sink(&args.audit_file);
        assert_eq!(sink.path, args.audit_file);
        assert_eq!(sink.max_bytes, 5 * 1024 * 1024);
        assert_eq!(sink.max_rotated_files, Some(3));
        // In-process mode: the decision service writes the same file with the same rotation.
        let serve = serve_args(&args, Path::new("policies")).expect("serve flags");
        assert_eq!(serve.audit_file, args.audit_file);
        assert_eq!(serve.audit_rotation.audit_max_mib, 5);
        assert_eq!(serve.audit_rotation.audit_keep_files, Some(3));

        for bad in [["--audit-keep-files", "0"], ["--audit-max-mib", "0"]] {
            let err = parse(&[&keys[..], &bad[..]].concat()).expect_err("out of range");
            assert!(err.to_string().contains(bad[0]), "{err}");
        }
    }
}
