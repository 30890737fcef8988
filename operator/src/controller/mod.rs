//! Scaffolding shared by every controller: the [`Context`] they receive, the [`Controller`]
//! registration seam, the instrumented reconcile wrapper, and the modules for errors, conditions,
//! server-side apply and Events.
//!
//! # Writing a controller
//!
//! Implement [`Controller`] and register it in [`crate::runtime::controllers`]. Inside `run`:
//! - build a `kube::runtime::Controller` over the kind's `Api`, with `.default_backoff()` on its
//!   watcher config and `.graceful_shutdown_on(shutdown.cancelled_owned())`;
//! - call `.reconcile_all_on(ctx.leader.acquisitions())` so a replica that becomes leader
//!   reconciles everything it cached while it was a follower;
//! - set the [`ReadyHandle`] once the stores have synced with [`mark_ready_when_synced`];
//! - wrap the reconcile body in [`instrumented`]: followers keep their caches warm but reconcile
//!   nothing, the leader's reconciles are timed and their errors counted and reported as Events;
//! - write only through [`apply`] (server-side apply, leader-gated) and build status with
//!   [`conditions`].

pub mod apply;
pub mod conditions;
pub mod error;
pub mod events;
#[cfg(test)]
pub(crate) mod test_support;

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{api::core::v1::ObjectReference, jiff::Timestamp};
use kube::{Client, runtime::controller::Action};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use self::{
    error::{Error, Result},
    events::EventRecorder,
};
use crate::{
    health::{Readiness, ReadyHandle},
    leader::LeaderState,
    metrics::Metrics,
};

/// Everything a controller needs, shared by all of them.
#[derive(Clone)]
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// The metrics registry (reconcile duration and errors are recorded by [`instrumented`]).
    pub metrics: Arc<Metrics>,
    /// Publishes Events (leader only).
    pub recorder: EventRecorder,
    /// Whether this replica leads; check before every write (the [`apply`] helpers do).
    pub leader: LeaderState,
    /// Readiness checks served on `/readyz`.
    pub readiness: Readiness,
    /// The last outcome of every controller's reconciles.
    pub diagnostics: Diagnostics,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("client", &self.client.default_namespace())
            .field("leader", &self.leader.is_leader())
            .field("recorder", &self.recorder)
            .field("readiness", &self.readiness)
            .field("diagnostics", &self.diagnostics)
            .finish_non_exhaustive()
    }
}

/// What a controller last did, for debugging a stuck operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerDiagnostics {
    /// Reconciles run by this replica while leader.
    pub reconciles: u64,
    /// Reconciles that failed.
    pub errors: u64,
    /// When the last reconcile finished.
    pub last_reconcile: Option<Timestamp>,
    /// The metric label of the last error, if the last reconcile failed.
    pub last_error: Option<&'static str>,
}

/// Per-controller [`ControllerDiagnostics`], cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Diagnostics(Arc<Mutex<BTreeMap<&'static str, ControllerDiagnostics>>>);

impl Diagnostics {
    fn record(&self, controller: &'static str, error: Option<&'static str>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(controller).or_default();
        entry.reconciles += 1;
        entry.errors += u64::from(error.is_some());
        entry.last_reconcile = Some(Timestamp::now());
        entry.last_error = error;
    }

    /// A copy of every controller's diagnostics.
    pub fn snapshot(&self) -> BTreeMap<&'static str, ControllerDiagnostics> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Run one reconcile of `controller` for the object `regarding`, instrumented:
/// - on a follower, `reconcile` is not run and the object waits for the next change (the
///   controller's `reconcile_all_on(ctx.leader.acquisitions())` revisits it on takeover);
/// - on the leader, its duration is observed, an error is counted by kind, recorded in the
///   diagnostics and published as a Warning Event on `regarding`;
/// - a write refused because leadership was lost midway ([`Error::NotLeader`]) is not an error.
pub async fn instrumented<F>(
    ctx: &Context,
    controller: &'static str,
    regarding: &ObjectReference,
    reconcile: F,
) -> Result<Action>
where
    F: Future<Output = Result<Action>>,
{
    if !ctx.leader.is_leader() {
        return Ok(Action::await_change());
    }
    let result = {
        let _timer = ctx.metrics.reconcile.start(controller);
        reconcile.await
    };
    match result {
        Ok(action) => {
            ctx.diagnostics.record(controller, None);
            Ok(action)
        }
        Err(e) if e.is_not_leader() => Ok(Action::await_change()),
        Err(e) => {
            let label = e.metric_label();
            ctx.metrics.reconcile.record_error(controller, label);
            ctx.diagnostics.record(controller, Some(label));
            warn!(controller, error = %e, kind = ?regarding.kind, name = ?regarding.name, namespace = ?regarding.namespace, "reconcile failed");
            ctx.recorder.error(regarding, &e, "Reconcile").await;
            Err(e)
        }
    }
}

/// When to retry after a failed reconcile: soon after a write conflict, later otherwise.
pub fn requeue_after_error(error: &Error) -> Action {
    match error.metric_label() {
        "kube_api_conflict" => Action::requeue(Duration::from_secs(1)),
        "kube_api_throttled" | "kube_transport" | "kube_api_server_error" => {
            Action::requeue(Duration::from_secs(10))
        }
        _ => Action::requeue(Duration::from_secs(30)),
    }
}

/// A controller that can be registered with the runtime.
pub trait Controller: Send + 'static {
    /// A short, stable name (`agentpolicy`): the `controller` metric label and the readiness
    /// check `controller/<name>`.
    fn name(&self) -> &'static str;

    /// Run until `shutdown` is cancelled. Set `ready` once the watch caches have synced. Runs on
    /// every replica; the leader gate is [`instrumented`] and the leader-gated writers.
    fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        ready: ReadyHandle,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

/// The controllers the runtime starts.
#[derive(Default)]
pub struct ControllerSet {
    controllers: Vec<Box<dyn Controller>>,
}

impl std::fmt::Debug for ControllerSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerSet")
            .field("controllers", &self.names())
            .finish()
    }
}

impl ControllerSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a controller.
    pub fn register(&mut self, controller: impl Controller) -> &mut Self {
        self.controllers.push(Box::new(controller));
        self
    }

    /// The names of the registered controllers, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.controllers.iter().map(|c| c.name()).collect()
    }

    /// Whether no controller is registered.
    pub fn is_empty(&self) -> bool {
        self.controllers.is_empty()
    }

    /// Register every controller's readiness check, then spawn them all.
    pub fn start(self, ctx: Arc<Context>, shutdown: &CancellationToken) -> RunningControllers {
        if self.controllers.is_empty() {
            info!("no controllers registered: nothing will be reconciled");
        }
        let handles: Vec<_> = self
            .controllers
            .into_iter()
            .map(|c| {
                (
                    c.name(),
                    ctx.readiness.register(format!("controller/{}", c.name())),
                    c,
                )
            })
            .collect();
        let tasks = handles
            .into_iter()
            .map(|(name, ready, controller)| {
                info!(controller = name, "starting controller");
                let task = tokio::spawn(controller.run(ctx.clone(), ready, shutdown.child_token()));
                (name, task)
            })
            .collect();
        RunningControllers { tasks }
    }
}

/// The spawned controllers.
#[derive(Debug)]
pub struct RunningControllers {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl RunningControllers {
    /// Wait for every controller to stop (they stop when the shutdown token is cancelled).
    /// Returns the names of the controllers that panicked or stopped on their own.
    pub async fn join(self) -> Vec<&'static str> {
        let mut failed = Vec::new();
        for (name, task) in self.tasks {
            if let Err(e) = task.await {
                error!(controller = name, error = %e, "controller task failed");
                failed.push(name);
            } else {
                info!(controller = name, "controller stopped");
            }
        }
        failed
    }

    /// How many controllers run.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Set `ready` once `store` has synced, or give up when `shutdown` fires.
///
/// kube-runtime's `Store::wait_until_ready` wakes only the task that polled it last; the
/// `Controller` polls the same store, so a second waiter can sleep forever. This polls the
/// readiness without registering a waker instead.
pub fn mark_ready_when_synced<K>(
    store: kube::runtime::reflector::Store<K>,
    ready: crate::health::ReadyHandle,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    use futures::FutureExt;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store.wait_until_ready().now_or_never() {
                Some(Ok(())) => {
                    ready.set(true);
                    return;
                }
                Some(Err(_)) => return,
                None => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn context(client: Client, leader: bool) -> Context {
        let leader = LeaderState::fixed(leader);
        Context {
            recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
            client,
            metrics: Arc::new(Metrics::new()),
            leader,
            readiness: Readiness::new(),
            diagnostics: Diagnostics::default(),
        }
    }

    fn reference() -> ObjectReference {
        ObjectReference {
            kind: Some("AgentPolicy".into()),
            name: Some("support".into()),
            namespace: Some("team-a".into()),
            ..ObjectReference::default()
        }
    }

    #[tokio::test]
    async fn followers_do_not_reconcile() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![]);
        let ctx = context(client, false);
        let ran = AtomicBool::new(false);
        let action = instrumented(&ctx, "test", &reference(), async {
            ran.store(true, Ordering::SeqCst);
            Ok(Action::requeue(Duration::from_secs(5)))
        })
        .await
        .expect("ok");
        assert_eq!(action, Action::await_change());
        assert!(!ran.load(Ordering::SeqCst));
        assert!(ctx.diagnostics.snapshot().is_empty());
        drop(ctx);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn leader_reconciles_are_timed_and_errors_counted_and_reported() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::post_containing(
                "/apis/events.k8s.io/v1/namespaces/team-a/events?",
                json!({"type": "Warning", "reason": "MissingObjectKey", "action": "Reconcile"}),
            )
            .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
        ]);
        let ctx = context(client, true);
        let ok = instrumented(&ctx, "test", &reference(), async {
            Ok(Action::requeue(Duration::from_secs(5)))
        })
        .await
        .expect("ok");
        assert_eq!(ok, Action::requeue(Duration::from_secs(5)));
        let err = instrumented(&ctx, "test", &reference(), async {
            Err(Error::MissingObjectKey("namespace"))
        })
        .await
        .expect_err("fails");
        assert!(matches!(err, Error::MissingObjectKey(_)));
        // Losing leadership midway is not an error and reports nothing.
        let skipped = instrumented(&ctx, "test", &reference(), async { Err(Error::NotLeader) })
            .await
            .expect("not an error");
        assert_eq!(skipped, Action::await_change());

        let text = ctx.metrics.encode().expect("encodes");
        assert!(
            text.contains(
                r#"overseer_reconcile_errors_total{controller="test",error="missing_object_key"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("not_leader"), "{text}");
        assert!(
            text.contains(r#"overseer_reconcile_duration_seconds_count{controller="test"} 3"#),
            "{text}"
        );
        let diagnostics = ctx.diagnostics.snapshot();
        assert_eq!(diagnostics["test"].reconciles, 2);
        assert_eq!(diagnostics["test"].errors, 1);
        assert_eq!(diagnostics["test"].last_error, Some("missing_object_key"));
        drop(ctx);
        timeout_after_1s(scenario).await;
    }

    #[test]
    fn conflicts_retry_sooner() {
        let conflict = Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("conflict", "Conflict").with_code(409),
        )));
        assert_eq!(
            requeue_after_error(&conflict),
            Action::requeue(Duration::from_secs(1))
        );
        assert_eq!(
            requeue_after_error(&Error::MissingObjectKey("x")),
            Action::requeue(Duration::from_secs(30))
        );
    }

    struct Fake {
        stopped: Arc<AtomicBool>,
    }

    impl Controller for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn run(
            self: Box<Self>,
            _ctx: Arc<Context>,
            ready: ReadyHandle,
            shutdown: CancellationToken,
        ) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                ready.set(true);
                shutdown.cancelled().await;
                self.stopped.store(true, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn registered_controllers_gate_readiness_and_stop_on_shutdown() {
        let (client, _verifier) = ApiServerVerifier::new();
        let ctx = Arc::new(context(client, true));
        let stopped = Arc::new(AtomicBool::new(false));
        let mut set = ControllerSet::new();
        set.register(Fake {
            stopped: stopped.clone(),
        });
        assert_eq!(set.names(), ["fake"]);
        let shutdown = CancellationToken::new();
        let running = set.start(ctx.clone(), &shutdown);
        assert_eq!(running.len(), 1);
        // The check exists from the moment the controller is started.
        assert!(
            ctx.readiness.failing() == ["controller/fake"] || ctx.readiness.is_ready(),
            "{:?}",
            ctx.readiness.failing()
        );
        tokio::time::timeout(Duration::from_secs(1), async {
            while !ctx.readiness.is_ready() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("controller became ready");
        shutdown.cancel();
        let failed = tokio::time::timeout(Duration::from_secs(1), running.join())
            .await
            .expect("controllers stop");
        assert!(failed.is_empty());
        assert!(stopped.load(Ordering::SeqCst));
    }
}
