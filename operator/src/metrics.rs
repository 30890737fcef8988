//! Prometheus metrics: one `prometheus-client` registry with the prefix `overseer`, served on
//! `/metrics` in the OpenMetrics text format.
//!
//! Every label value is a `&'static str` chosen by the code (a controller name, an error kind),
//! never data from an object, so the number of series stays small.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The prefix of every metric Overseer exports.
pub const PREFIX: &str = "overseer";

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the reconcile-duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// The controller's name.
    pub controller: &'static str,
}

/// Labels of the reconcile-error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller's name.
    pub controller: &'static str,
    /// The error kind: [`crate::controller::Error::metric_label`].
    pub error: &'static str,
}

/// Metrics every controller reports about its reconcile loop.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    /// `overseer_reconcile_duration_seconds{controller}`.
    pub duration: Family<ControllerLabels, Histogram>,
    /// `overseer_reconcile_errors_total{controller,error}`.
    pub errors: Family<ErrorLabels, Counter>,
}

impl ReconcileMetrics {
    fn new() -> Self {
        Self {
            duration: Family::new_with_constructor(|| {
                // 1 ms … ~16 s: reconciles are API round trips.
                Histogram::new([
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            errors: Family::default(),
        }
    }

    /// Start timing one reconcile of `controller`; the duration is observed when the timer drops.
    pub fn start(&self, controller: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            histogram: self
                .duration
                .get_or_create(&ControllerLabels { controller })
                .clone(),
            start: Instant::now(),
        }
    }

    /// Count one failed reconcile of `controller` with the given error kind.
    pub fn record_error(&self, controller: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }
}

/// Observes the time since it was created into the reconcile-duration histogram when dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    histogram: Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// The operator's metrics and the registry that exports them.
///
/// Build it with [`Metrics::new`], let later subsystems add their own metrics through
/// [`Metrics::registry_mut`], then share it behind an [`Arc`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconcile duration and errors, per controller.
    pub reconcile: ReconcileMetrics,
    /// `overseer_leader`: 1 while this replica holds the leader Lease, else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the prefix [`PREFIX`] holding the shared metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconcile = ReconcileMetrics::new();
        registry.register(
            "reconcile_duration_seconds",
            "Time taken by one reconcile, per controller",
            reconcile.duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error kind",
            reconcile.errors.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease, else 0",
            leader.clone(),
        );
        Self {
            registry,
            reconcile,
            leader,
        }
    }

    /// The registry, for subsystems that register their own metrics before it is shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Encode every metric in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// A router serving `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(metrics)
}

/// A router serving `GET /metrics` from a bare registry (for `overseer serve`, which has no
/// controllers and so none of [`Metrics`]' reconcile metrics).
pub fn registry_router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(serve_registry))
        .with_state(registry)
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    openmetrics_response(metrics.encode())
}

async fn serve_registry(State(registry): State<Arc<Registry>>) -> Response {
    let mut out = String::new();
    openmetrics_response(encode(&mut out, &registry).map(|()| out))
}

fn openmetrics_response(encoded: Result<String, std::fmt::Error>) -> Response {
    match encoded {
        Ok(body) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use http::Request;
    use tower::ServiceExt;

    #[tokio::test]
    async fn metrics_endpoint_serves_prefixed_reconcile_metrics() {
        let metrics = Metrics::new();
        metrics
            .reconcile
            .record_error("agentpolicy", "kube_api_conflict");
        drop(metrics.reconcile.start("agentpolicy"));
        metrics.leader.set(1);

        let response = router(Arc::new(metrics))
            .oneshot(
                Request::get("/metrics")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(
            text.contains(
                r#"overseer_reconcile_errors_total{controller="agentpolicy",error="kube_api_conflict"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"overseer_reconcile_duration_seconds_count{controller="agentpolicy"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("overseer_leader 1"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("overseer_"), "unprefixed metric: {line}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn other_paths_are_not_found() {
        let response = router(Arc::new(Metrics::new()))
            .oneshot(Request::get("/nope").body(Body::empty()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
