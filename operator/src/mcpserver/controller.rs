//! Wiring: the `kube::runtime::Controller` over `MCPServer`, woken by every change of an object
//! and by the requeue of every reconcile. (Its own status write wakes it once more: that check
//! reads the Secret again, finds the status current and writes nothing.)

use std::sync::Arc;

use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api,
    runtime::{Controller, controller::Action, watcher},
};
use overseer_crds::agents::MCPServer;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::reconcile::{CONTROLLER, reconcile};
use crate::{
    controller::{self as scaffolding, Context, Error, requeue_after_error},
    health::ReadyHandle,
};

/// The `MCPServer` controller, for [`crate::controller::ControllerSet::register`].
#[derive(Debug, Default)]
pub struct MCPServerController;

impl scaffolding::Controller for MCPServerController {
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

fn error_policy(_server: Arc<MCPServer>, error: &Error, _ctx: Arc<Context>) -> Action {
    requeue_after_error(error)
}

async fn run(ctx: Arc<Context>, ready: ReadyHandle, shutdown: CancellationToken) {
    let api = Api::<MCPServer>::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    crate::controller::mark_ready_when_synced(store, ready, shutdown.clone());
    controller
        .reconcile_all_on(ctx.leader.acquisitions())
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = CONTROLLER, error = %e, "MCPServer reconcile failed");
            }
        })
        .await;
}
