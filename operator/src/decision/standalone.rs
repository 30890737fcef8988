//! The decision service without a cluster: `overseer serve --policies DIR` (reloading on change)
//! and `overseer check` (one decision, for CI pipelines).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::Args;
use notify::{RecursiveMode, Watcher};
use overseer_policy::{
    approvals::InMemoryApprovals,
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    compile::CompiledPolicies,
    engine::Engine,
    limits::{LimitState, LimitsConfig, Persister},
    request::{DecisionRequest, Outcome},
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::{
    DecisionMetrics, DecisionService,
    auth::Authenticator,
    catalog::{PolicyCatalog, Rebuild},
    files::{FileError, PolicyDir},
};

/// The audit file sink writing `path`, rotated past `max_mib` MiB, keeping at most `keep_files`
/// rotated files (all when `None`).
pub fn audit_file_sink(path: &Path, max_mib: u64, keep_files: Option<u64>) -> FileSinkConfig {
    let mut file = FileSinkConfig::new(path);
    file.max_bytes = max_mib.saturating_mul(1024 * 1024);
    file.max_rotated_files = keep_files.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    file
}

/// When an audit file is rotated and how many rotated files are kept: flags of `overseer serve`,
/// `overseer gateway` and `overseer ext-authz` (`overseer run` has its own, `--decision-audit-*`).
#[derive(Debug, Clone, Args)]
pub struct AuditRotationArgs {
    /// Rotate the audit file when it grows past this many MiB.
    #[arg(long, env = "OVERSEER_AUDIT_MAX_MIB", default_value_t = crate::agentpolicy::service::DEFAULT_AUDIT_MAX_MIB, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub audit_max_mib: u64,
    /// Keep at most this many rotated audit files, deleting the oldest at each rotation; without
    /// it every rotated file is kept. Before files are pruned, keep the last hash `overseer audit
    /// verify` prints somewhere else, and check later with `--since HASH`.
    #[arg(long, env = "OVERSEER_AUDIT_KEEP_FILES", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub audit_keep_files: Option<u64>,
}

impl AuditRotationArgs {
    /// The file sink writing `path` with this rotation.
    pub fn file_sink(&self, path: &Path) -> FileSinkConfig {
        audit_file_sink(path, self.audit_max_mib, self.audit_keep_files)
    }

    /// These flags as `overseer serve` arguments (for an in-process decision service).
    pub fn to_serve_args(&self) -> Vec<std::ffi::OsString> {
        let mut argv = vec![
            "--audit-max-mib".into(),
            self.audit_max_mib.to_string().into(),
        ];
        if let Some(keep) = self.audit_keep_files {
            argv.push("--audit-keep-files".into());
            argv.push(keep.to_string().into());
        }
        argv
    }
}

/// Flags of `overseer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Directory of AgentPolicy / ClusterAgentPolicy YAML files; reloaded when it changes.
    #[arg(long, env = "OVERSEER_POLICIES")]
    pub policies: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "OVERSEER_LISTEN", default_value = "127.0.0.1:8181")]
    pub listen: SocketAddr,
    /// YAML file of API keys (see the README); required unless --insecure-no-auth.
    #[arg(long, env = "OVERSEER_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    /// Serve without authentication. Only allowed on a loopback address; every caller may ask on
    /// behalf of any agent and nobody can review approvals.
    #[arg(long, conflicts_with = "api_keys")]
    pub insecure_no_auth: bool,
    /// Audit log file (JSON lines, hash-chained, rotated by size). Resumed when it exists.
    #[arg(
        long,
        env = "OVERSEER_AUDIT_FILE",
        default_value = "overseer-audit.jsonl"
    )]
    pub audit_file: PathBuf,
    /// When the audit file is rotated, and how many rotated files are kept.
    #[command(flatten)]
    pub audit_rotation: AuditRotationArgs,
    /// Also write every audit record to stdout.
    #[arg(long)]
    pub audit_stdout: bool,
    /// File the rate-limit and budget counters are persisted to (every second), so usage
    /// survives a restart.
    #[arg(
        long,
        env = "OVERSEER_STATE_FILE",
        default_value = "overseer-limits.json"
    )]
    pub state_file: PathBuf,
}

/// Flags of `overseer check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Directory of AgentPolicy / ClusterAgentPolicy YAML files.
    #[arg(long)]
    pub policies: PathBuf,
    /// A decision request as JSON (the body of `POST /v1/decisions`); `-` reads stdin.
    #[arg(long)]
    pub request: PathBuf,
    /// Print the decision as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Exit status of `overseer check` when it could not decide (bad policies or request).
pub const CHECK_ERROR_EXIT: u8 = 3;

/// Read a policy directory into a catalog and compile it: what `check` and `serve` start from.
fn load_dir(dir: &Path) -> anyhow::Result<(PolicyCatalog, PolicyDir, Vec<FileError>, Rebuild)> {
    let mut catalog = PolicyCatalog::new();
    let mut pd = PolicyDir::new(dir);
    let file_errors = pd
        .load_into(&mut catalog)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rebuild = catalog.rebuild();
    Ok((catalog, pd, file_errors, rebuild))
}

fn load_policies(dir: &Path) -> anyhow::Result<(CompiledPolicies, Vec<String>)> {
    let (_, _, file_errors, rebuild) = load_dir(dir)?;
    let mut problems: Vec<String> = file_errors.iter().map(FileError::to_string).collect();
    problems.extend(
        rebuild
            .reports
            .iter()
            .filter(|r| !r.is_ok())
            .map(|r| r.message()),
    );
    Ok((rebuild.compilation.compiled, problems))
}

/// `overseer check`: decide one request; exit 0 allow, 1 deny, 2 approval required, 3 error.
pub fn run_check(args: &CheckArgs) -> ExitCode {
    match check(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("overseer check: {e:#}");
            ExitCode::from(CHECK_ERROR_EXIT)
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<u8> {
    let (compiled, problems) = load_policies(&args.policies)?;
    if !problems.is_empty() {
        bail!(
            "the policies in {} have errors:\n  {}",
            args.policies.display(),
            problems.join("\n  ")
        );
    }
    let text = if args.request.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the request from stdin")?
    } else {
        std::fs::read_to_string(&args.request)
            .with_context(|| format!("cannot read {}", args.request.display()))?
    };
    let request: DecisionRequest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid decision request", args.request.display()))?;
    let engine = Engine::new(compiled);
    let decision = engine
        .decide(&request, Utc::now())
        .map_err(|e| anyhow::anyhow!("invalid request: {e}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        println!(
            "{} (policy revision {})",
            decision.decision, decision.policy_revision
        );
        for reason in &decision.reasons {
            let at = match (&reason.policy, &reason.rule) {
                (Some(p), Some(r)) => format!("{p}#{r}"),
                (Some(p), None) => p.clone(),
                _ => "default".into(),
            };
            println!("  {at}: {} ({:?})", reason.message, reason.code);
        }
    }
    Ok(match decision.decision {
        Outcome::Allow => 0,
        Outcome::Deny => 1,
        Outcome::RequireApproval => 2,
    })
}

fn authenticator(args: &ServeArgs) -> anyhow::Result<Authenticator> {
    match (&args.api_keys, args.insecure_no_auth) {
        (Some(path), false) => Ok(Authenticator::from_file(path)?),
        (None, true) if args.listen.ip().is_loopback() => {
            tracing::warn!(
                listen = %args.listen,
                "INSECURE: the decision service runs WITHOUT AUTHENTICATION (--insecure-no-auth); any local process may ask on behalf of any agent"
            );
            Ok(Authenticator::Insecure)
        }
        (None, true) => bail!(
            "--insecure-no-auth is only allowed on a loopback address, not {}; give --api-keys FILE instead",
            args.listen
        ),
        (None, false) => bail!(
            "no authentication configured: give --api-keys FILE, or --insecure-no-auth on a loopback address"
        ),
        (Some(_), true) => bail!("--api-keys and --insecure-no-auth exclude each other"),
    }
}

/// Build the service from the flags (policies, engine, audit log, authentication).
pub fn build(
    args: &ServeArgs,
    registry: &mut Registry,
) -> anyhow::Result<(Arc<DecisionService>, PolicyCatalog, PolicyDir, Persister)> {
    let auth = authenticator(args)?;
    let (catalog, dir, file_errors, rebuild) = load_dir(&args.policies)?;
    for e in &file_errors {
        tracing::error!(file = %e.path.display(), error = %e.message, "policy file not loaded");
    }
    log_reports(&rebuild.reports);
    let limits = Arc::new(
        LimitState::load(LimitsConfig::default(), &args.state_file, Utc::now()).with_context(
            || format!("cannot restore counters from {}", args.state_file.display()),
        )?,
    );
    let persister = Persister::start(
        limits.clone(),
        args.state_file.clone(),
        Persister::DEFAULT_INTERVAL,
    )
    .with_context(|| format!("cannot persist counters to {}", args.state_file.display()))?;
    let engine = Arc::new(Engine::with_state(
        rebuild.compilation.compiled,
        limits,
        Arc::new(InMemoryApprovals::default()),
    ));
    let file = args.audit_rotation.file_sink(&args.audit_file);
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(file),
            stdout: args.audit_stdout,
            ..AuditConfig::default()
        })
        .with_context(|| format!("cannot open the audit log {}", args.audit_file.display()))?,
    );
    let metrics = DecisionMetrics::register(registry);
    Ok((
        Arc::new(DecisionService::new(engine, audit, auth, metrics)),
        catalog,
        dir,
        persister,
    ))
}

fn log_reports(reports: &[overseer_policy::compile::PolicyReport]) {
    for report in reports {
        if report.is_ok() {
            tracing::info!(policy = %report.policy, revision = %report.revision, rules = report.rule_count, "policy compiled");
        } else {
            tracing::error!(policy = %report.policy, error = %report.message(), "policy rejected; its last good version (if any) keeps serving");
        }
    }
}

/// `overseer serve`: serve decisions from a policy directory until SIGINT/SIGTERM.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix(crate::metrics::PREFIX);
    let (service, mut catalog, mut dir, persister) = build(&args, &mut registry)?;
    let registry = Arc::new(registry);
    tracing::info!(
        revision = %service.engine.current().revision(),
        policies = catalog.len(),
        listen = %args.listen,
        "decision service ready"
    );

    // Reload on change: notify events are coalesced over 200 ms.
    let (changed_tx, mut changed_rx) = watch::channel(());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = changed_tx.send(());
        }
    })
    .context("cannot watch the policy directory")?;
    watcher
        .watch(&args.policies, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", args.policies.display()))?;
    let reloader = {
        let service = service.clone();
        tokio::spawn(async move {
            while changed_rx.changed().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                changed_rx.borrow_and_update();
                match dir.load_into(&mut catalog) {
                    Ok(errors) => {
                        for e in &errors {
                            tracing::error!(file = %e.path.display(), error = %e.message, "policy file not reloaded; its previous policies keep serving");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the policy directory; the current revision keeps serving");
                        continue;
                    }
                }
                let rebuild = catalog.rebuild();
                log_reports(&rebuild.reports);
                let new = rebuild.compilation.compiled;
                if new.revision() != service.engine.current().revision() {
                    let revision = new.revision().to_owned();
                    service.engine.swap(new);
                    tracing::info!(%revision, "policy revision swapped in");
                }
            }
        })
    };

    let app = super::router(service.clone()).merge(crate::metrics::registry_router(registry));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("the decision server failed")?;

    reloader.abort();
    drop(watcher);
    let head = service
        .audit
        .flush()
        .map_err(|e| anyhow::anyhow!("cannot flush the audit log: {e}"))?;
    tracing::info!(?head, "audit log flushed");
    persister
        .stop()
        .map_err(|e| anyhow::anyhow!("cannot persist counters: {e}"))?;
    Ok(())
}
