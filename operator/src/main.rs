//! `overseer`: see `overseer --help`.

use std::{io::Write, process::ExitCode};

use clap::Parser as _;
use operator::cli::{AuditCommand, Cli, Command, LogFormat};

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request paths (each MCP call
/// and decision allocates its parsed messages), and no arena growth across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status of a command line that does not parse (BSD `EX_USAGE`).
const USAGE_ERROR_EXIT: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0. A usage error exits with
            // EX_USAGE (64), never 2: `overseer check` uses 2 for "approval required".
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(USAGE_ERROR_EXIT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Crd => print_crds(),
        Command::Identities(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(operator::identity::cli::run(args))),
        Command::Approvals(args) => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(operator::approvals::run(args))),
        Command::Run(args) => operator::telemetry::init(&cli.log).and_then(|()| {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(operator::runtime::run(args)))
        }),
        Command::Serve(args) => operator::telemetry::init(&cli.log).and_then(|()| {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(operator::decision::standalone::run_serve(args, async {
                        let signal = operator::runtime::wait_for_signal().await;
                        tracing::info!(signal, "received shutdown signal");
                    }))
                })
        }),
        Command::Gateway(args) => operator::telemetry::init(&cli.log).and_then(|()| {
            runtime(args.worker_threads)
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(operator::gateway::run::run_gateway(args, async {
                        let signal = operator::runtime::wait_for_signal().await;
                        tracing::info!(signal, "received shutdown signal");
                    }))
                })
        }),
        Command::ExtAuthz(args) => operator::telemetry::init(&cli.log).and_then(|()| {
            tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(operator::extauthz::run::run_ext_authz(args, async {
                        let signal = operator::runtime::wait_for_signal().await;
                        tracing::info!(signal, "received shutdown signal");
                    }))
                })
        }),
        Command::Check(args) => return operator::decision::standalone::run_check(&args),
        Command::Audit {
            command: AuditCommand::Verify(args),
        } => return operator::audit_verify::run_audit_verify(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = one_line(&e);
            if cli.log.log_format == LogFormat::Json && tracing::dispatcher::has_been_set() {
                tracing::error!(error = message, "overseer failed");
            } else {
                eprintln!("overseer: error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A runtime with `worker_threads` threads: 0 = one per CPU, 1 = a single-threaded runtime.
fn runtime(worker_threads: u16) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
    }
}

fn print_crds() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(operator::crd::render_all().as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The error and its causes on one line, leaving out causes whose text is already shown (kube's
/// errors repeat their sources in their own messages).
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
