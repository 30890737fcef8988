//! Wiring: the `kube::runtime::Controller` over `FleetCluster`.

use std::sync::Arc;

use fleet::member::MemberPool;
use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api,
    runtime::{Controller, controller::Action, watcher},
};
use overseer_crds::fleet::FleetCluster;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::reconcile::{CONTROLLER, FleetClusterContext, reconcile};
use crate::{
    controller::{self as scaffolding, Context, Error, requeue_after_error},
    health::ReadyHandle,
};

/// How many clusters are heartbeaten at once; the others wait, none is blocked by a slow one for
/// longer than [`super::reconcile::HEARTBEAT_TIMEOUT`].
pub const CONCURRENCY: u16 = 16;

/// The `FleetCluster` controller, for [`crate::controller::ControllerSet::register`].
#[derive(Debug, Default)]
pub struct FleetClusterController;

impl scaffolding::Controller for FleetClusterController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        ready: ReadyHandle,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run(ctx, ready, shutdown))
    }
}

fn error_policy(
    _cluster: Arc<FleetCluster>,
    error: &Error,
    _state: Arc<FleetClusterContext>,
) -> Action {
    requeue_after_error(error)
}

async fn run(ctx: Arc<Context>, ready: ReadyHandle, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let state = Arc::new(FleetClusterContext::new(
        ctx.clone(),
        MemberPool::new(client.clone()),
    ));
    let controller = Controller::new(Api::<FleetCluster>::all(client), watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY));
    let store = controller.store();
    let controller = controller
        .reconcile_all_on(ctx.leader.acquisitions())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    crate::controller::mark_ready_when_synced(store, ready, shutdown);
    controller
        .run(reconcile, error_policy, state)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = CONTROLLER, error = %e, "fleet cluster reconcile failed");
            }
        })
        .await;
}
