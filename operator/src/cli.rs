//! The `overseer` command line: subcommands and their flags (clap derive).
//!
//! Every flag of `run` can also be set through an environment variable (named in `--help`), so the
//! Deployment manifest can configure the operator without rewriting its arguments.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Overseer: Kubernetes operators that govern AI agents.
#[derive(Debug, Parser)]
#[command(name = "overseer", version, about, propagate_version = true)]
pub struct Cli {
    /// Logging options shared by every subcommand.
    #[command(flatten)]
    pub log: LogArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `overseer`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every controller and server against the cluster in KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
    /// Print every Overseer CustomResourceDefinition as one multi-document YAML stream.
    ///
    /// Install them with `overseer crd | kubectl apply --server-side -f -`.
    Crd,
    /// Manage ephemeral identities (`overseer identities revoke --agent NAME`).
    Identities(crate::identity::cli::IdentitiesArgs),
    /// List, approve and deny agents' approval requests (`AgentApproval`) as the current user.
    Approvals(crate::approvals::ApprovalsArgs),
    /// Serve the decision API from a directory of AgentPolicy YAML files, without a cluster;
    /// the policies are reloaded when the directory changes.
    Serve(crate::decision::standalone::ServeArgs),
    /// Decide one request against a directory of policies and print the decision and its
    /// reasons. Exit status: 0 allow, 1 deny, 2 approval required, 3 could not decide.
    Check(crate::decision::standalone::CheckArgs),
    /// Run the MCP gateway: a Streamable HTTP reverse proxy that decides every tools/call
    /// before it reaches an upstream MCP server (see docs/gateway.md).
    Gateway(crate::gateway::run::GatewayArgs),
    /// Serve Envoy's external authorization gRPC API (envoy.service.auth.v3.Authorization), so
    /// Envoy or Istio ask Overseer about every request, MCP tools/call included (see
    /// docs/ext-authz.md).
    ExtAuthz(crate::extauthz::run::ExtAuthzArgs),
    /// Tools for the hash-chained audit log.
    Audit {
        /// What to do with the audit log.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// Subcommands of `overseer audit`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of an audit log — the file and the files it was rotated into — and
    /// name the first broken record. Exit status 0 when the chain is intact (and starts where
    /// `--from-genesis` or `--since` require), 1 when it is broken, unreadable or starts elsewhere.
    Verify(AuditVerifyArgs),
}

/// Flags of `overseer audit verify`.
#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    /// The audit log's active file (JSON lines), as given to `--audit-file`. The files it was
    /// rotated into (`FILE.000001`, `FILE.000002`, ... beside it) are checked with it, oldest
    /// first, as one chain.
    pub file: std::path::PathBuf,
    /// Check FILE alone, without its rotated files (e.g. one rotated file, or a copy).
    #[arg(long)]
    pub only_this_file: bool,
    /// Fail unless the chain starts at its first record (seq 1, linked to the genesis hash):
    /// nothing was rotated away, pruned or cut from the front.
    #[arg(long, conflicts_with = "since")]
    pub from_genesis: bool,
    /// Fail unless the chain holds the record with this hash or starts right after it. Keep the
    /// last hash an earlier check printed: this proves nothing from that record on was removed
    /// or changed, even after older files were pruned.
    #[arg(long, value_name = "HASH", value_parser = parse_record_hash)]
    pub since: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A record hash: 64 hex digits (SHA-256), normalised to lowercase as the log writes them.
fn parse_record_hash(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("a record hash is 64 hex digits (the SHA-256 an earlier `overseer audit verify` printed as the last hash)".into())
    }
}

/// How logs are written.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, global = true, value_enum, env = "OVERSEER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Which logs to keep, in `RUST_LOG` syntax (for example `info,overseer=debug,kube=warn`).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log_filter: String,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object a line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Flags of `overseer run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Namespace of the leader-election Lease (normally the operator's own namespace).
    #[arg(
        long,
        env = "OVERSEER_LEASE_NAMESPACE",
        default_value = "overseer-system"
    )]
    pub lease_namespace: String,
    /// Name of the leader-election Lease (coordination.k8s.io/v1).
    #[arg(long, env = "OVERSEER_LEASE_NAME", default_value = "overseer-leader")]
    pub lease_name: String,
    /// Identity of this replica in the Lease (defaults to the pod name in POD_NAME, else a random id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid after its holder last renewed it, in seconds. A new leader
    /// takes over at most this long after the old one died.
    #[arg(long, env = "OVERSEER_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub lease_duration_seconds: u64,
    /// How often the leader renews its Lease, in seconds; must be shorter than the lease duration.
    #[arg(long, env = "OVERSEER_LEASE_RENEW_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3599))]
    pub lease_renew_seconds: u64,
    /// Address of the health server (`/healthz`, `/readyz`).
    #[arg(long, env = "OVERSEER_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,
    /// Address of the Prometheus metrics server (`/metrics`). May equal the health address, then
    /// one server answers both.
    #[arg(long, env = "OVERSEER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// How long start-up may wait for the Kubernetes API before giving up, in seconds.
    #[arg(long, env = "OVERSEER_STARTUP_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub startup_timeout_seconds: u64,
    /// How long a graceful shutdown may take before the process exits anyway, in seconds.
    #[arg(long, env = "OVERSEER_SHUTDOWN_TIMEOUT_SECONDS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub shutdown_timeout_seconds: u64,
    /// The decision API served from the cluster's AgentPolicy objects.
    #[command(flatten)]
    pub decision: crate::agentpolicy::service::DecisionArgs,
}

impl RunArgs {
    /// Check the relations between flags that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_renew_seconds >= self.lease_duration_seconds {
            return Err(format!(
                "--lease-renew-seconds ({}) must be shorter than --lease-duration-seconds ({})",
                self.lease_renew_seconds, self.lease_duration_seconds
            ));
        }
        if self.lease_name.is_empty() || self.lease_namespace.is_empty() {
            return Err("--lease-name and --lease-namespace must not be empty".to_owned());
        }
        self.decision.validate()?;
        Ok(())
    }

    /// The start-up timeout as a [`Duration`].
    pub fn startup_timeout(&self) -> Duration {
        Duration::from_secs(self.startup_timeout_seconds)
    }

    /// The shutdown timeout as a [`Duration`].
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }
}

fn parse_log_filter(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("not a valid RUST_LOG filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, error::ErrorKind};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("overseer").chain(args.iter().copied()))
    }

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn crd_takes_no_arguments() {
        let cli = parse(&["crd"]).expect("crd parses");
        assert!(matches!(cli.command, Command::Crd));
        let err = parse(&["crd", "extra"]).expect_err("extra argument rejected");
        assert_eq!(err.kind(), ErrorKind::UnknownArgument);
    }

    #[test]
    fn run_defaults() {
        let cli = parse(&["run"]).expect("run parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.lease_duration_seconds, 15);
        assert_eq!(args.lease_renew_seconds, 5);
        assert_eq!(args.health_addr, "0.0.0.0:8081".parse().expect("addr"));
        assert_eq!(args.metrics_addr, "0.0.0.0:8080".parse().expect("addr"));
        args.validate().expect("defaults are valid");
    }

    #[test]
    fn run_flags_are_parsed() {
        let cli = parse(&[
            "--log-format",
            "json",
            "run",
            "--lease-namespace",
            "ops",
            "--lease-name",
            "l",
            "--identity",
            "pod-0",
            "--lease-duration-seconds",
            "30",
            "--lease-renew-seconds",
            "10",
            "--health-addr",
            "127.0.0.1:9000",
            "--metrics-addr",
            "127.0.0.1:9001",
            "--log-filter",
            "debug,kube=warn",
        ])
        .expect("parses");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert_eq!(cli.log.log_filter, "debug,kube=warn");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        assert_eq!(args.lease_namespace, "ops");
        assert_eq!(args.lease_name, "l");
        assert_eq!(args.identity.as_deref(), Some("pod-0"));
        assert_eq!(args.lease_duration_seconds, 30);
        assert_eq!(args.lease_renew_seconds, 10);
        assert_eq!(args.health_addr.port(), 9000);
        assert_eq!(args.metrics_addr.port(), 9001);
    }

    #[test]
    fn bad_invocations_are_errors() {
        for (args, kind) in [
            (&["frobnicate"][..], ErrorKind::InvalidSubcommand),
            (&[][..], ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
            (&["--log-format", "xml", "crd"][..], ErrorKind::InvalidValue),
            (
                &["run", "--health-addr", "nowhere"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["run", "--lease-duration-seconds", "0"][..],
                ErrorKind::ValueValidation,
            ),
            (
                &["run", "--log-filter", "info,[[["][..],
                ErrorKind::ValueValidation,
            ),
        ] {
            let err = parse(args).expect_err(&format!("{args:?} must be rejected"));
            assert_eq!(err.kind(), kind, "{args:?}: {err}");
        }
    }

    #[test]
    fn renew_must_be_shorter_than_duration() {
        let cli = parse(&[
            "run",
            "--lease-duration-seconds",
            "5",
            "--lease-renew-seconds",
            "5",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let msg = args.validate().expect_err("rejected");
        assert!(msg.contains("--lease-renew-seconds"), "{msg}");
    }
}
