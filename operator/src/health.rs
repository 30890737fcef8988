//! Liveness and readiness: `/healthz` answers while the process serves HTTP; `/readyz` answers
//! 200 only when every registered readiness check passes (the Kubernetes API was reached, the CRDs
//! are installed, every controller's caches have synced).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};

/// Readiness check: the Kubernetes API answered.
pub const CHECK_KUBERNETES_API: &str = "kubernetes-api";
/// Readiness check: every Overseer CRD is installed and Established.
pub const CHECK_CRDS: &str = "crds";

/// The set of named readiness checks; cheap to clone, shared by everything that reports.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
}

/// The handle of one readiness check, set by whoever knows its state.
#[derive(Clone, Debug)]
pub struct ReadyHandle {
    name: String,
    ready: Arc<AtomicBool>,
}

impl ReadyHandle {
    /// Mark the check as passing (`true`) or failing (`false`).
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether the check passes.
    pub fn get(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The check's name as `/readyz` reports it.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Readiness {
    /// An empty set: ready until a check is registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a check named `name`, failing until its handle is set. Registering a name again
    /// returns the existing check.
    pub fn register(&self, name: impl Into<String>) -> ReadyHandle {
        let name = name.into();
        let mut checks = self.checks.lock().unwrap_or_else(PoisonError::into_inner);
        let ready = checks.entry(name.clone()).or_default().clone();
        ReadyHandle { name, ready }
    }

    /// The names of the checks that do not pass, in name order.
    pub fn failing(&self) -> Vec<String> {
        self.checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, ready)| !ready.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether every registered check passes.
    pub fn is_ready(&self) -> bool {
        self.failing().is_empty()
    }
}

/// A router serving `GET /healthz` and `GET /readyz`.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let failing = readiness.failing();
    if failing.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let body: String = failing
            .iter()
            .map(|name| format!("not ready: {name}\n"))
            .collect();
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, String::from_utf8(body.to_vec()).expect("utf-8"))
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        let readiness = Readiness::new();
        let _failing = readiness.register(CHECK_CRDS);
        assert_eq!(
            get(router(readiness), "/healthz").await,
            (StatusCode::OK, "ok\n".into())
        );
    }

    #[tokio::test]
    async fn readyz_waits_for_every_check() {
        let readiness = Readiness::new();
        let api = readiness.register(CHECK_KUBERNETES_API);
        let crds = readiness.register(CHECK_CRDS);
        let cache = readiness.register("controller/agentpolicy");

        let (status, body) = get(router(readiness.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: controller/agentpolicy\nnot ready: crds\nnot ready: kubernetes-api\n"
        );

        api.set(true);
        crds.set(true);
        let (status, body) = get(router(readiness.clone()), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: controller/agentpolicy\n");

        cache.set(true);
        assert_eq!(
            get(router(readiness.clone()), "/readyz").await,
            (StatusCode::OK, "ok\n".into())
        );

        // A check can fail again later (the API became unreachable).
        api.set(false);
        assert_eq!(
            get(router(readiness), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn registering_twice_shares_the_check() {
        let readiness = Readiness::new();
        let a = readiness.register("x");
        let b = readiness.register("x");
        a.set(true);
        assert!(b.get());
        assert_eq!(b.name(), "x");
        assert!(readiness.is_ready());
    }
}
