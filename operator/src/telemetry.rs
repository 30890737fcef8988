//! Logging: `tracing` to stderr as JSON or text, filtered with a `RUST_LOG`-style directive.

use anyhow::Context as _;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::cli::{LogArgs, LogFormat};

/// Install the global `tracing` subscriber described by `args`.
///
/// Fails when the filter is not valid `RUST_LOG` syntax or a subscriber is already installed.
pub fn init(args: &LogArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_filter)
        .with_context(|| format!("invalid log filter {:?}", args.log_filter))?;
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    }
    .context("cannot install the log subscriber")
}
