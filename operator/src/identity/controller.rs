//! Wiring: the `kube::runtime::Controller` over `EphemeralIdentity`, owning its children and
//! watching classes, plus the periodic orphan sweep.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::{
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, ResourceExt,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use overseer_crds::agents::{
    AgentApproval, EphemeralIdentity, EphemeralIdentityClass, IdentityPhase,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    approval,
    class::{self, BindChecks, ClassState},
    reconcile::{CONTROLLER, reconcile},
    sweep::{child_selector, sweep},
};
use crate::{
    controller::{self as scaffolding, Context, Error, requeue_after_error},
    health::ReadyHandle,
};

/// How often the orphan sweep runs (it also runs at start).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The `EphemeralIdentity` controller, for [`crate::controller::ControllerSet::register`].
#[derive(Debug, Default)]
pub struct IdentityController;

impl scaffolding::Controller for IdentityController {
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

fn error_policy(_identity: Arc<EphemeralIdentity>, error: &Error, _ctx: Arc<Context>) -> Action {
    requeue_after_error(error)
}

/// The class events that can change an identity's verdict: a new `metadata.generation` (its
/// spec) or a deletion — not the class's own status writes, which come with every issue and
/// expiry and would otherwise revisit every identity of the class each time. A relist passes
/// every class once.
#[derive(Debug, Default)]
struct ClassSpecChanges {
    seen: std::collections::HashMap<String, Option<i64>>,
}

impl ClassSpecChanges {
    fn pass(
        &mut self,
        event: watcher::Event<EphemeralIdentityClass>,
    ) -> Option<EphemeralIdentityClass> {
        match event {
            watcher::Event::Init => {
                self.seen.clear();
                None
            }
            watcher::Event::Apply(class) | watcher::Event::InitApply(class) => {
                let generation = class.metadata.generation;
                (self.seen.insert(class.name_any(), generation) != Some(generation))
                    .then_some(class)
            }
            watcher::Event::Delete(class) => {
                self.seen.remove(&class.name_any());
                Some(class)
            }
            watcher::Event::InitDone => None,
        }
    }
}

fn class_spec_changes(
    api: Api<EphemeralIdentityClass>,
) -> impl futures::Stream<Item = Result<EphemeralIdentityClass, watcher::Error>> + Send + 'static {
    let mut changes = ClassSpecChanges::default();
    watcher::watcher(api, watcher::Config::default()).filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => changes.pass(event).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

async fn run(ctx: Arc<Context>, ready: ReadyHandle, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let children = watcher::Config::default().labels(&child_selector());
    let controller = Controller::new(
        Api::<EphemeralIdentity>::all(client.clone()),
        watcher::Config::default(),
    );
    let store = controller.store();
    let by_class = store.clone();
    let by_namespace = store.clone();
    let controller = controller
        .owns(Api::<ServiceAccount>::all(client.clone()), children.clone())
        .owns(Api::<Secret>::all(client.clone()), children.clone())
        .owns(Api::<Role>::all(client.clone()), children.clone())
        .owns(Api::<RoleBinding>::all(client.clone()), children)
        .owns(
            Api::<AgentApproval>::all(client.clone()),
            watcher::Config::default().labels(&approval::selector()),
        )
        .watches_stream(
            class_spec_changes(Api::<EphemeralIdentityClass>::all(client.clone())),
            move |class: EphemeralIdentityClass| {
                let name = class.name_any();
                by_class
                    .state()
                    .into_iter()
                    .filter(|identity| identity.spec.class_name == name)
                    .map(|identity| ObjectRef::from_obj(&*identity))
                    .collect::<Vec<_>>()
            },
        )
        // A namespace relabelled out of a class's namespaceSelector ends its identities now,
        // not at their expiry: each active one is revalidated when its namespace changes.
        .watches(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            move |namespace: Namespace| {
                let name = namespace.name_any();
                by_namespace
                    .state()
                    .into_iter()
                    .filter(|identity| {
                        identity.namespace().as_deref() == Some(name.as_str())
                            && identity.status.as_ref().and_then(|s| s.phase)
                                == Some(IdentityPhase::Active)
                    })
                    .map(|identity| ObjectRef::from_obj(&*identity))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ctx.leader.acquisitions())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());

    crate::controller::mark_ready_when_synced(store.clone(), ready, shutdown.clone());
    tokio::spawn(sweep_loop(ctx.clone(), shutdown.clone()));

    // Class status (active count, bind check) from the same identity cache: revisited on every
    // identity change, debounced so a burst of changes is one reconcile per class.
    let state = Arc::new(ClassState {
        identities: store.clone(),
        checks: BindChecks::default(),
    });
    let classes = Controller::new(
        Api::<EphemeralIdentityClass>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
    .watches(
        Api::<EphemeralIdentity>::all(client.clone()),
        watcher::Config::default(),
        |identity: EphemeralIdentity| {
            Some(ObjectRef::<EphemeralIdentityClass>::new(
                &identity.spec.class_name,
            ))
        },
    )
    .reconcile_all_on(ctx.leader.acquisitions())
    .graceful_shutdown_on(shutdown.clone().cancelled_owned())
    .run(
        move |class, ctx| class::reconcile(class, ctx, state.clone()),
        |_class, error: &Error, _ctx| requeue_after_error(error),
        ctx.clone(),
    )
    .for_each(|result| async move {
        if let Err(e) = result {
            warn!(controller = class::CONTROLLER, error = %e, "class reconcile failed");
        }
    });

    let identities = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = CONTROLLER, error = %e, "identity reconcile failed");
            }
        });
    futures::join!(identities, classes);
}

/// Sweep orphans at start and every [`SWEEP_INTERVAL`] while this replica leads.
async fn sweep_loop(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if !ctx.leader.is_leader() {
            continue;
        }
        match sweep(&ctx.client, &ctx.leader).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "orphan sweep deleted identity objects"),
            Err(e) if e.is_not_leader() => {}
            Err(e) => warn!(error = %e, "orphan sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(generation: i64) -> EphemeralIdentityClass {
        let mut class = crate::identity::tests::bare_class("1h");
        class.metadata.generation = Some(generation);
        class
    }

    #[test]
    fn only_spec_changes_and_deletions_of_a_class_revisit_its_identities() {
        use watcher::Event;
        let mut changes = ClassSpecChanges::default();
        let passed = |e: Option<EphemeralIdentityClass>| e.is_some();
        assert!(passed(changes.pass(Event::Apply(class(1)))), "new class");
        assert!(
            !passed(changes.pass(Event::Apply(class(1)))),
            "its own status write"
        );
        assert!(
            passed(changes.pass(Event::Apply(class(2)))),
            "a spec change"
        );
        assert!(passed(changes.pass(Event::Delete(class(2)))), "a deletion");
        assert!(passed(changes.pass(Event::Apply(class(2)))), "recreated");
        // A relist passes every class once, then filters again.
        assert!(!passed(changes.pass(Event::Init)));
        assert!(passed(changes.pass(Event::InitApply(class(2)))));
        assert!(!passed(changes.pass(Event::InitDone)));
        assert!(!passed(changes.pass(Event::Apply(class(2)))));
    }
}
