//! `overseer ext-authz`: flags and start-up.
//!
//! Two ways to decide, as for `overseer gateway`:
//! * `--decision-url URL` (with `--decision-api-key-file`, a `gateway` role key): ask a decision
//!   service under `--decision-timeout-ms`, failing closed. Decisions are audited by the decision
//!   service; what ext-authz answers itself (refusals, MCP protocol messages, fail-closed denials)
//!   goes to `--audit-file`.
//! * `--policies DIR` alone: decide in-process; decisions and refusals share `--audit-file`, and
//!   the decision API (approval review, usage, `/metrics`) is served on `--decision-listen` from
//!   the same engine. The policies are read once at start-up (restart to change them; a decision
//!   service reloads on change).

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser};
use overseer_policy::audit::AuditLog;

use super::{ExtAuthz, ExtAuthzConfig};
use crate::{
    decision::{auth::Authenticator, standalone::ServeArgs, tokenreview::AgentTokenFlags},
    gateway::{
        decider::Decider,
        run::{InProcess, finish, remote_decider},
    },
};

/// Flags of `overseer ext-authz`.
#[derive(Debug, Clone, Args)]
#[command(group(
    clap::ArgGroup::new("agent_authentication")
        .args(["api_keys", "token_review"])
        .required(true)
        .multiple(true)
))]
pub struct ExtAuthzArgs {
    /// Address the gRPC `envoy.service.auth.v3.Authorization` service listens on.
    #[arg(
        long,
        env = "OVERSEER_EXTAUTHZ_LISTEN",
        default_value = "127.0.0.1:9191"
    )]
    pub listen: SocketAddr,
    /// YAML file of API keys (the decision service's format); agents present an `agent` key as
    /// `Authorization: Bearer`, trusted proxies a `gateway` key plus `x-overseer-agent`.
    /// Required unless --token-review is given.
    #[arg(long, env = "OVERSEER_EXTAUTHZ_API_KEYS")]
    pub api_keys: Option<PathBuf>,
    #[command(flatten)]
    pub tokens: AgentTokenFlags,
    /// Decision service to ask (`http://host:port`); without it, decide in-process.
    #[arg(long, env = "OVERSEER_DECISION_URL")]
    pub decision_url: Option<String>,
    /// File holding this service's own API key (role `gateway`) for the decision service.
    #[arg(
        long,
        env = "OVERSEER_DECISION_API_KEY_FILE",
        requires = "decision_url"
    )]
    pub decision_api_key_file: Option<PathBuf>,
    /// How long to wait for a decision before denying (`decision_service_unavailable`). Keep it
    /// below the `timeout` of Envoy's ext_authz `grpc_service`.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub decision_timeout_ms: u64,
    /// Policy directory to decide in-process from (without --decision-url).
    #[arg(long, env = "OVERSEER_POLICIES", conflicts_with = "decision_url")]
    pub policies: Option<PathBuf>,
    /// In-process mode: where the decision API (approvals, usage, metrics) is served.
    #[arg(long, default_value = "127.0.0.1:8183")]
    pub decision_listen: SocketAddr,
    /// In-process mode: API keys of the decision API (approvers review approvals with them);
    /// default: --api-keys.
    #[arg(long)]
    pub decision_api_keys: Option<PathBuf>,
    /// Audit log (JSON lines, hash-chained).
    #[arg(
        long,
        env = "OVERSEER_AUDIT_FILE",
        default_value = "overseer-extauthz-audit.jsonl"
    )]
    pub audit_file: PathBuf,
    /// When the audit file is rotated, and how many rotated files are kept.
    #[command(flatten)]
    pub audit_rotation: crate::decision::standalone::AuditRotationArgs,
    /// Also write every audit record to stdout (for log collectors).
    #[arg(long)]
    pub audit_stdout: bool,
    /// In-process mode: file the rate-limit and budget counters are persisted to.
    #[arg(long, default_value = "overseer-extauthz-limits.json")]
    pub state_file: PathBuf,
    /// Path of an MCP Streamable HTTP endpoint behind Envoy (repeatable; paths below it count).
    /// Requests to other paths are decided as the tool `"<METHOD> <path>"`.
    #[arg(long = "mcp-path", default_value = "/mcp")]
    pub mcp_paths: Vec<String>,
    /// MCP server named in decisions when the route's `context_extensions` do not set
    /// `mcp_server`.
    #[arg(long, env = "OVERSEER_MCP_SERVER")]
    pub mcp_server: Option<String>,
    /// Header naming the MCP server. Only for a header Envoy itself sets (overwriting what the
    /// agent sent); otherwise an agent could choose the server its calls are decided for.
    #[arg(long)]
    pub mcp_server_header: Option<String>,
    /// Namespace of the agents behind this Envoy (for a sidecar: its pod's namespace), so
    /// namespaced AgentPolicy objects govern them.
    #[arg(long, env = "OVERSEER_AGENT_NAMESPACE")]
    pub agent_namespace: Option<String>,
    /// Largest request body read, in KiB (set Envoy's `with_request_body.max_request_bytes` to
    /// at most this).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_body_kib: u64,
}

impl ExtAuthzArgs {
    /// How requests are read.
    pub fn config(&self) -> ExtAuthzConfig {
        ExtAuthzConfig {
            mcp_paths: self.mcp_paths.clone(),
            default_server: self.mcp_server.clone().filter(|s| !s.is_empty()),
            server_header: self.mcp_server_header.clone().filter(|s| !s.is_empty()),
            max_body: usize::try_from(self.max_body_kib.saturating_mul(1024)).unwrap_or(usize::MAX),
            agent_namespace: self.agent_namespace.clone().filter(|s| !s.is_empty()),
        }
    }
}

/// Wraps [`ServeArgs`] so in-process mode builds the decision service exactly as `overseer
/// serve` does.
#[derive(Debug, Parser)]
struct ServeWrapper {
    #[command(flatten)]
    serve: ServeArgs,
}

fn serve_args(args: &ExtAuthzArgs, policies: &std::path::Path) -> anyhow::Result<ServeArgs> {
    let Some(keys) = args.decision_api_keys.as_ref().or(args.api_keys.as_ref()) else {
        bail!(
            "in-process mode serves the decision API (approvals review, usage) on --decision-listen, \
             which needs API keys: give --decision-api-keys FILE (or --api-keys FILE)"
        );
    };
    let mut argv: Vec<std::ffi::OsString> = vec![
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
    argv.extend(args.audit_rotation.to_serve_args());
    if args.audit_stdout {
        argv.push("--audit-stdout".into());
    }
    Ok(ServeWrapper::try_parse_from(argv)
        .context("cannot set up the in-process decision service")?
        .serve)
}

/// `overseer ext-authz`: serve checks until `shutdown` resolves.
pub async fn run_ext_authz(
    args: ExtAuthzArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let auth = match &args.api_keys {
        Some(path) => Authenticator::from_file(path)?,
        None => Authenticator::no_keys(),
    };
    let tokens = if args.tokens.token_review {
        let client = kube::Client::try_default().await.context(
            "--token-review needs a Kubernetes API server (to review agent tokens), but no \
             in-cluster configuration or KUBECONFIG was found",
        )?;
        args.tokens.reviewer(&client)
    } else {
        None
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut side_server = None;
    let (decider, audit): (Arc<dyn Decider>, Arc<AuditLog>) = match &args.decision_url {
        Some(url) => {
            let (remote, audit) = remote_decider(
                url,
                args.decision_api_key_file.as_deref(),
                Duration::from_millis(args.decision_timeout_ms),
                &args.audit_rotation.file_sink(&args.audit_file),
                args.audit_stdout,
            )?;
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

    let mut service = ExtAuthz::new(decider, auth, args.config());
    if let Some(reviewer) = tokens {
        service = service.with_token_review(reviewer);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(listen = %args.listen, mcp_paths = ?args.mcp_paths, "ext_authz gRPC service ready");
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                shutdown.await;
                let _ = shutdown_tx.send(true);
            },
        )
        .await
        .context("the ext_authz service failed")?;
    finish(side_server, &audit).await
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ExtAuthzArgs,
    }

    #[test]
    fn flags_become_the_config() {
        let w = Wrapper::try_parse_from([
            "ext-authz",
            "--api-keys",
            "keys.yaml",
            "--decision-url",
            "http://decisions:8181",
            "--mcp-path",
            "/mcp",
            "--mcp-path",
            "/tools",
            "--mcp-server",
            "ledger",
            "--agent-namespace",
            "agents",
            "--max-body-kib",
            "64",
        ])
        .expect("parses");
        let config = w.args.config();
        assert_eq!(config.mcp_paths, ["/mcp", "/tools"]);
        assert_eq!(config.default_server.as_deref(), Some("ledger"));
        assert_eq!(config.agent_namespace.as_deref(), Some("agents"));
        assert_eq!(config.max_body, 64 * 1024);
        assert_eq!(w.args.listen.port(), 9191);
        let defaults = Wrapper::try_parse_from(["ext-authz", "--api-keys", "k"]).expect("parses");
        assert_eq!(defaults.args.config().mcp_paths, ["/mcp"]);
        assert!(
            Wrapper::try_parse_from([
                "ext-authz",
                "--api-keys",
                "k",
                "--policies",
                "p",
                "--decision-url",
                "http://x:1"
            ])
            .is_err(),
            "in-process and remote exclude each other"
        );
    }

    #[test]
    fn audit_rotation_reaches_the_in_process_decision_service() {
        let w = Wrapper::try_parse_from([
            "ext-authz",
            "--api-keys",
            "keys.yaml",
            "--policies",
            "p",
            "--audit-max-mib",
            "7",
            "--audit-keep-files",
            "2",
            "--audit-stdout",
        ])
        .expect("parses");
        let serve = serve_args(&w.args, std::path::Path::new("p")).expect("serve flags");
        assert_eq!(serve.audit_file, w.args.audit_file);
        assert_eq!(serve.audit_rotation.audit_max_mib, 7);
        assert_eq!(serve.audit_rotation.audit_keep_files, Some(2));
        assert!(serve.audit_stdout);
        let sink = w.args.audit_rotation.file_sink(&w.args.audit_file);
        assert_eq!(
            (sink.max_bytes, sink.max_rotated_files),
            (7 * 1024 * 1024, Some(2))
        );
    }

    #[test]
    fn agents_authenticate_with_api_keys_or_kubernetes_tokens() {
        let err = Wrapper::try_parse_from(["ext-authz", "--decision-url", "http://x:1"])
            .expect_err("no way for agents to authenticate");
        assert!(err.to_string().contains("--api-keys"), "{err}");
        let w = Wrapper::try_parse_from([
            "ext-authz",
            "--token-review",
            "--token-audience",
            "overseer",
            "--token-cache-ttl-seconds",
            "5",
            "--policies",
            "p",
        ])
        .expect("tokens alone");
        let config = w.args.tokens.config().expect("token review");
        assert_eq!(config.audiences, ["overseer"]);
        assert_eq!(config.ttl, Duration::from_secs(5));
        // In-process mode still needs keys for its decision API (approvers review with them).
        let err = serve_args(&w.args, std::path::Path::new("p")).expect_err("no keys");
        assert!(err.to_string().contains("--decision-api-keys"), "{err}");
        assert!(
            Wrapper::try_parse_from(["ext-authz", "--api-keys", "k", "--token-audience", "a"])
                .is_err(),
            "--token-audience needs --token-review"
        );
    }
}
