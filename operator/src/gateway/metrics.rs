//! The MCP gateway's Prometheus metrics (prefix `overseer_gateway`), served on
//! `--metrics-listen` (never on the agents' port: they name servers and count every agent's calls).
//!
//! Labels are bounded: `server` is a configured upstream's name (or `unknown` for a name no
//! upstream has), `method` an MCP method the gateway knows (`other` for the rest, `GET`/`DELETE`
//! for the stream and session requests), `outcome` one of a fixed set. Tool names and principals
//! are never labels (unbounded, and the audit trail has them).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The upstream the request was for (`unknown` when no upstream has the name asked for).
    pub server: String,
    /// The JSON-RPC method (`GET`/`DELETE` for the SSE stream and session end, `other` for a
    /// method the gateway refuses, `none` when the request was refused before it was read).
    pub method: &'static str,
    /// What happened: `forwarded`, `denied`, `approval_required`, `unavailable` (no decision could
    /// be had), `refused` (malformed, unauthenticated, not admitted, another agent's session...)
    /// or `upstream_error` (the upstream failed or timed out).
    pub outcome: &'static str,
}

/// Labels of the upstream latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// The upstream.
    pub server: String,
}

/// Labels of the configuration reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `applied` (a valid change is served) or `invalid` (refused; the last valid one serves).
    pub outcome: &'static str,
}

/// The gateway's metrics.
#[derive(Clone, Debug)]
pub struct GatewayMetrics {
    /// Requests by server, method and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from forwarding a request to the upstream's response headers.
    pub upstream_duration: Family<ServerLabels, Histogram>,
    /// Changes of the configuration file (or the files it names) found on a reload, by outcome.
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// 1 while the configuration served is what the files hold (or there is no file), 0 while a
    /// change is refused as invalid and an older configuration serves.
    pub config_last_reload_successful: Gauge,
}

impl GatewayMetrics {
    /// Count a reload that found a change: `applied` or not.
    pub fn reloaded(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "invalid" };
        self.config_reloads
            .get_or_create(&ReloadLabels { outcome })
            .inc();
        self.config_last_reload_successful.set(i64::from(applied));
    }
}

impl GatewayMetrics {
    /// Create the metrics and register them in `registry` (under `gateway`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            // 50 µs … ~1.6 s.
            upstream_duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    50e-6, 2.0, 16,
                ))
            }),
            config_reloads: Family::default(),
            config_last_reload_successful: Gauge::default(),
        };
        metrics.config_last_reload_successful.set(1);
        let sub = registry.sub_registry_with_prefix("gateway");
        sub.register(
            "requests",
            "MCP requests by server, method and outcome",
            metrics.requests.clone(),
        );
        sub.register(
            "upstream_duration_seconds",
            "Time from forwarding a request to the MCP server's response headers",
            metrics.upstream_duration.clone(),
        );
        sub.register(
            "config_reloads",
            "Changes of the configuration file or the files it names, by outcome (applied, invalid)",
            metrics.config_reloads.clone(),
        );
        sub.register(
            "config_last_reload_successful",
            "1 while the configuration served is what its files hold, 0 while a change is refused",
            metrics.config_last_reload_successful.clone(),
        );
        metrics
    }
}

/// The `method` label of a response, attached by the handlers and read (then removed) by the
/// router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MethodLabel(pub &'static str);

/// The `outcome` label of a response, attached where it is decided; absent means `refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutcomeLabel(pub &'static str);

/// Marks the answer to a request for a server name no upstream has (`server="unknown"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UnknownServer;
