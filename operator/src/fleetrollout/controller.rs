//! Wiring: the `kube::runtime::Controller` over `FleetRollout`, woken by its `FleetApproval`s and
//! by the member clusters it targets, with caches of both for the reconcile to read.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use kube::{
    Api, Resource, ResourceExt,
    core::{Selector, SelectorExt},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use overseer_crds::fleet::{FleetApproval, FleetCluster, FleetRollout};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::{
    delivery::Delivery,
    kube::KubeDelivery,
    reconcile::{CONTROLLER, Fleet, World, member, reconcile_at},
};
use crate::{
    controller::{self as scaffolding, Context, Error, Result, instrumented, requeue_after_error},
    health::ReadyHandle,
};

/// Environment variable naming the directory Git sources are cached in.
pub const GIT_CACHE_ENV: &str = "OVERSEER_FLEET_GIT_CACHE";

/// The `FleetRollout` controller, for [`crate::controller::ControllerSet::register`]: delivers
/// through [`KubeDelivery`], caching Git sources under `$OVERSEER_FLEET_GIT_CACHE` (default: a
/// directory in the system's temporary directory).
#[derive(Debug, Clone)]
pub struct FleetRolloutController {
    git_cache: PathBuf,
}

impl Default for FleetRolloutController {
    fn default() -> Self {
        let git_cache = std::env::var_os(GIT_CACHE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("overseer-fleet-git"));
        Self { git_cache }
    }
}

impl scaffolding::Controller for FleetRolloutController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        ready: ReadyHandle,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            match KubeDelivery::new(ctx.client.clone(), self.git_cache) {
                Ok(delivery) => run(ctx, delivery, ready, shutdown).await,
                Err(e) => {
                    // Stays not ready (the readiness check names this controller).
                    error!(controller = CONTROLLER, error = %e, "cannot start the fleet rollout controller");
                    shutdown.cancelled().await;
                }
            }
        })
    }
}

/// What every reconcile shares.
struct Shared<D> {
    ctx: Arc<Context>,
    fleet: Fleet<D>,
    rollouts: Store<FleetRollout>,
    clusters: Store<FleetCluster>,
    approvals: Store<FleetApproval>,
}

fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

async fn reconcile<D: Delivery>(
    rollout: Arc<FleetRollout>,
    shared: Arc<Shared<D>>,
) -> Result<Action> {
    let ctx = shared.ctx.clone();
    let regarding = rollout.object_ref(&());
    instrumented(&ctx, CONTROLLER, &regarding, async {
        // An empty cluster cache would read as "every member left the targets" (and prune).
        if !synced(&shared.clusters) || !synced(&shared.approvals) {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let live: HashSet<String> = shared
            .rollouts
            .state()
            .iter()
            .filter_map(|r| r.metadata.uid.clone())
            .collect();
        shared.fleet.memory.retain(&live);
        let clusters: Vec<FleetCluster> = shared
            .clusters
            .state()
            .iter()
            .map(|c| (**c).clone())
            .collect();
        let namespace = rollout.namespace();
        let name = rollout.name_any();
        let approvals: Vec<FleetApproval> = shared
            .approvals
            .state()
            .iter()
            .filter(|a| a.namespace() == namespace && a.spec.rollout == name)
            .map(|a| (**a).clone())
            .collect();
        let world = World {
            clusters: &clusters,
            approvals: &approvals,
        };
        reconcile_at(&rollout, world, &shared.fleet, &ctx, chrono::Utc::now()).await
    })
    .await
}

fn error_policy<D>(_rollout: Arc<FleetRollout>, error: &Error, _shared: Arc<Shared<D>>) -> Action {
    requeue_after_error(error)
}

/// Whether `rollout` targets `cluster` (by name or selector) or still lists it in its status
/// (so a cluster that leaves the targets gets pruned).
pub fn targets(rollout: &FleetRollout, cluster: &FleetCluster) -> bool {
    let name = cluster.name_any();
    if rollout.spec.targets.cluster_names.contains(&name) {
        return true;
    }
    let selected = rollout
        .spec
        .targets
        .cluster_selector
        .as_ref()
        .and_then(|s| Selector::try_from(s.clone()).ok())
        .is_some_and(|s| s.matches(cluster.labels()));
    selected
        || rollout.status.as_ref().is_some_and(|s| {
            s.stages
                .iter()
                .flat_map(|st| &st.clusters)
                .any(|c| c.name == name)
        })
}

/// What about a member matters to rollouts: its labels, whether it is paused and reachable.
/// Heartbeats change nothing else, and must not wake every rollout each period.
type ClusterFacts = (BTreeMap<String, String>, bool, bool);

fn facts(cluster: &FleetCluster) -> ClusterFacts {
    let m = member(cluster);
    (m.labels, m.paused, m.reachable)
}

async fn run<D: Delivery>(
    ctx: Arc<Context>,
    delivery: D,
    ready: ReadyHandle,
    shutdown: CancellationToken,
) {
    let client = ctx.client.clone();
    let controller = Controller::new(
        Api::<FleetRollout>::all(client.clone()),
        watcher::Config::default(),
    );
    let rollouts = controller.store();

    // Caches the reconcile reads.
    let (clusters, cluster_writer) = reflector::store::<FleetCluster>();
    let (approvals, approval_writer) = reflector::store::<FleetApproval>();
    let cluster_cache = reflector::reflector(
        cluster_writer,
        watcher(
            Api::<FleetCluster>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(|_| async {});
    let approval_cache = reflector::reflector(
        approval_writer,
        watcher(
            Api::<FleetApproval>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .for_each(|_| async {});
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            _ = futures::future::join(cluster_cache, approval_cache) => {}
        }
    });

    let by_cluster = rollouts.clone();
    let seen: Mutex<HashMap<String, ClusterFacts>> = Mutex::default();
    let controller = controller
        .watches(
            Api::<FleetApproval>::all(client.clone()),
            watcher::Config::default(),
            |approval: FleetApproval| {
                approval
                    .namespace()
                    .map(|ns| ObjectRef::<FleetRollout>::new(&approval.spec.rollout).within(&ns))
            },
        )
        .watches(
            Api::<FleetCluster>::all(client.clone()),
            watcher::Config::default(),
            move |cluster: FleetCluster| {
                let now = facts(&cluster);
                let changed = seen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(cluster.name_any(), now.clone())
                    .is_none_or(|before| before != now);
                if !changed {
                    return Vec::new();
                }
                by_cluster
                    .state()
                    .into_iter()
                    .filter(|r| targets(r, &cluster))
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ctx.leader.acquisitions())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    crate::controller::mark_ready_when_synced(rollouts.clone(), ready, shutdown.clone());
    let shared = Arc::new(Shared {
        ctx,
        fleet: Fleet::new(delivery),
        rollouts,
        clusters,
        approvals,
    });
    controller
        .run(reconcile, error_policy, shared)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = CONTROLLER, error = %e, "fleet rollout reconcile failed");
            }
        })
        .await;
}
