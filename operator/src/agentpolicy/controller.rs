//! The `AgentPolicy` / `ClusterAgentPolicy` controller.
//!
//! Every replica watches both kinds (and Namespace labels, for `namespaceSelector`s) into
//! reflector stores. After each burst of changes it rebuilds the policy set from the stores
//! ([`PolicyIndex::sync`]: compiled only when something changed, swapped into the engine
//! atomically) — on followers too, so every replica answers decisions from the same revision
//! while leadership changes hands. The leader then writes each policy's status (`Ready`,
//! `observedGeneration`, `policyRevision`, `ruleCount`) when it differs, and publishes an Event
//! when `Ready` changes. A replica that becomes leader rewrites whatever its cache shows stale.

use std::{collections::BTreeMap, fmt::Debug, sync::Arc, time::Duration};

use futures::{FutureExt, Stream, StreamExt, future::BoxFuture};
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{
    Api, Resource, ResourceExt,
    core::{PartialObjectMeta, object::HasStatus},
    runtime::{
        WatchStreamExt,
        controller::Action,
        events::EventType,
        reflector::{self, Store, reflector},
        watcher,
    },
};
use overseer_crds::agents::{AgentPolicy, AgentPolicyStatus, ClusterAgentPolicy};
use overseer_policy::engine::Engine;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    index::PolicyIndex,
    source::{
        Source, agent_policy_key, agent_policy_source, cluster_policy_key, cluster_policy_source,
    },
    status::{READY, desired_status},
};
use crate::{
    controller::{
        self as scaffolding, Context, Result,
        apply::{FieldManager, apply_status_if_changed},
        instrumented,
    },
    health::ReadyHandle,
};

/// The controller's name: the `controller` metric label and the readiness check
/// `controller/agentpolicy`.
pub const CONTROLLER: &str = "agentpolicy";

/// The field manager of policy status writes.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-agentpolicy-status");

/// How long a burst of watch events is collected before the set is rebuilt.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How soon failed status writes are retried.
const RETRY: Duration = Duration::from_secs(10);

/// What the watches hold: both policy kinds and the Namespaces' labels.
#[derive(Clone)]
pub struct PolicyStores {
    /// `AgentPolicy` objects, every namespace.
    pub policies: Store<AgentPolicy>,
    /// `ClusterAgentPolicy` objects.
    pub cluster_policies: Store<ClusterAgentPolicy>,
    /// Namespaces (metadata only), for `namespaceSelector`s.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Debug for PolicyStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStores")
            .field("policies", &self.policies.len())
            .field("cluster_policies", &self.cluster_policies.len())
            .field("namespaces", &self.namespaces.len())
            .finish()
    }
}

impl PolicyStores {
    /// Whether every store has completed its first list.
    pub fn is_ready(&self) -> bool {
        let ready = |f: BoxFuture<'_, _>| matches!(f.now_or_never(), Some(Ok(())));
        ready(self.policies.wait_until_ready().boxed())
            && ready(self.cluster_policies.wait_until_ready().boxed())
            && ready(self.namespaces.wait_until_ready().boxed())
    }

    /// Every watched policy as a source, mapped like the file loader maps YAML.
    pub fn sources(&self) -> Vec<Source> {
        let namespaces: BTreeMap<String, BTreeMap<String, String>> = self
            .namespaces
            .state()
            .iter()
            .map(|ns| (ns.name_any(), ns.labels().clone()))
            .collect();
        let mut sources: Vec<Source> = self
            .policies
            .state()
            .iter()
            .map(|p| agent_policy_source(p))
            .collect();
        sources.extend(
            self.cluster_policies
                .state()
                .iter()
                .map(|p| cluster_policy_source(p, &namespaces)),
        );
        sources
    }
}

/// The controller, for [`crate::controller::ControllerSet::register`]. It feeds `engine`, the
/// engine the decision service of `overseer run` answers from.
#[derive(Debug)]
pub struct PolicyController {
    engine: Arc<Engine>,
}

impl PolicyController {
    /// A controller keeping `engine`'s policy set equal to the cluster's policies.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl scaffolding::Controller for PolicyController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        ready: ReadyHandle,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run(ctx, self.engine, ready, shutdown))
    }
}

/// A reflector over `stream` into `writer`, yielding `()` per event (errors are logged; the
/// watcher's default backoff retries them).
fn signals<K, S>(
    what: &'static str,
    writer: reflector::store::Writer<K>,
    stream: S,
) -> impl Stream<Item = ()> + Send + 'static
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
    S: Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    reflector(writer, stream).filter_map(move |event| async move {
        match event {
            Ok(_) => Some(()),
            Err(e) => {
                warn!(controller = CONTROLLER, watch = what, error = %e, "watch failed; retrying");
                None
            }
        }
    })
}

/// Start the watches: the stores and one stream that yields after every change.
pub fn watch(
    client: kube::Client,
) -> (
    PolicyStores,
    impl Stream<Item = ()> + Send + Unpin + 'static,
) {
    let config = watcher::Config::default();
    let (policies, w1) = reflector::store::<AgentPolicy>();
    let (cluster_policies, w2) = reflector::store::<ClusterAgentPolicy>();
    let (namespaces, w3) = reflector::store::<PartialObjectMeta<Namespace>>();
    let changes = futures::stream::select_all([
        signals(
            "agentpolicies",
            w1,
            watcher(Api::<AgentPolicy>::all(client.clone()), config.clone()).default_backoff(),
        )
        .boxed(),
        signals(
            "clusteragentpolicies",
            w2,
            watcher(
                Api::<ClusterAgentPolicy>::all(client.clone()),
                config.clone(),
            )
            .default_backoff(),
        )
        .boxed(),
        signals(
            "namespaces",
            w3,
            watcher(Api::<PartialObjectMeta<Namespace>>::all(client), config).default_backoff(),
        )
        .boxed(),
    ]);
    (
        PolicyStores {
            policies,
            cluster_policies,
            namespaces,
        },
        changes,
    )
}

async fn run(
    ctx: Arc<Context>,
    engine: Arc<Engine>,
    ready: ReadyHandle,
    shutdown: CancellationToken,
) {
    let (stores, mut changes) = watch(ctx.client.clone());
    let mut acquisitions = ctx.leader.acquisitions();
    let mut index = PolicyIndex::new(engine);
    let mut retry: Option<Instant> = None;
    loop {
        let retry_at = retry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = shutdown.cancelled() => return,
            next = changes.next() => if next.is_none() { return },
            Some(()) = acquisitions.next() => {}
            () = tokio::time::sleep_until(retry_at), if retry.is_some() => {}
        }
        // Collect the rest of a burst (the initial lists, an apply of many objects).
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(DEBOUNCE) => {}
        }
        while let Some(Some(())) = changes.next().now_or_never() {}
        if !stores.is_ready() {
            continue;
        }
        let outcome = index.sync(stores.sources());
        if let Some(revision) = &outcome.swapped {
            info!(controller = CONTROLLER, %revision, policies = index.engine().current().policy_count(), "policy revision swapped in");
        }
        if !ready.get() {
            info!(controller = CONTROLLER, revision = %index.revision(), "policies synced; serving decisions");
            ready.set(true);
        }
        retry = None;
        if ctx.leader.is_leader() {
            let failed = write_statuses(&ctx, &stores, &index, Timestamp::now()).await;
            if failed > 0 {
                retry = Some(Instant::now() + RETRY);
            }
        }
    }
}

/// Write the status of every watched policy that needs it (leader only). Returns how many
/// writes failed (they are counted, reported as Events and retried by the caller).
pub async fn write_statuses(
    ctx: &Context,
    stores: &PolicyStores,
    index: &PolicyIndex,
    now: Timestamp,
) -> usize {
    let mut failed = 0;
    for policy in stores.policies.state() {
        let Some(namespace) = policy.namespace() else {
            continue;
        };
        let api = Api::<AgentPolicy>::namespaced(ctx.client.clone(), &namespace);
        let key = agent_policy_key(&policy);
        failed += usize::from(
            write_one(ctx, &api, &*policy, index, &key, now)
                .await
                .is_err(),
        );
    }
    for policy in stores.cluster_policies.state() {
        let api = Api::<ClusterAgentPolicy>::all(ctx.client.clone());
        let key = cluster_policy_key(&policy);
        failed += usize::from(
            write_one(ctx, &api, &*policy, index, &key, now)
                .await
                .is_err(),
        );
    }
    failed
}

async fn write_one<K>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    index: &PolicyIndex,
    key: &str,
    now: Timestamp,
) -> Result<Action>
where
    K: Resource<DynamicType = ()>
        + HasStatus<Status = AgentPolicyStatus>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let regarding = object.object_ref(&());
    instrumented(ctx, CONTROLLER, &regarding, async {
        write_status(ctx, api, object, index, key, now).await?;
        Ok(Action::await_change())
    })
    .await
}

/// Apply the status `index` implies for `object` (stored under `key`) when it differs from the
/// object's, and publish an Event when `Ready` flips (or, while it is `False`, when the reason
/// why changes). Returns whether a write was made. Leader-gated like every write.
pub async fn write_status<K>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    index: &PolicyIndex,
    key: &str,
    now: Timestamp,
) -> Result<bool>
where
    K: Resource<DynamicType = ()>
        + HasStatus<Status = AgentPolicyStatus>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let Some(report) = index.report(key) else {
        return Ok(false);
    };
    let (desired, transition) = desired_status(
        object.status(),
        object.meta().generation,
        report,
        index.serving(key),
        now,
    );
    let written = apply_status_if_changed(api, &ctx.leader, STATUS_MANAGER, object, &desired)
        .await?
        .is_some();
    let Some(ready) = desired.conditions.iter().find(|c| c.type_ == READY) else {
        return Ok(written);
    };
    let regarding = object.object_ref(&());
    if transition.is_transition() {
        ctx.recorder
            .condition_changed(&regarding, ready, &transition, "Compile")
            .await;
    } else if transition.is_change() && ready.status == "False" {
        ctx.recorder
            .publish(
                &regarding,
                EventType::Warning,
                &ready.reason,
                "Compile",
                Some(format!(
                    "{}={}: {}",
                    ready.type_, ready.status, ready.message
                )),
            )
            .await;
    }
    Ok(written)
}
