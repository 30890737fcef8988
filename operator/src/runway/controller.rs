//! Wiring: the `kube::runtime::Controller` over `InferenceRuntime`, woken by its revisions, its
//! endpoint and every backend object's status change.
//!
//! Backend objects are owned by their revision's `ControllerRevision`, not by the runtime, so
//! they are mapped back to their runtime by the `runway.overseer.dev/runtime` label. Backend kinds
//! are watched as dynamic objects when their API is served at start-up; a backend installed later
//! is polled (see [`super::reconcile::RESYNC`]) until the operator restarts.

use std::sync::Arc;

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::api::{
    apps::v1::{ControllerRevision, Deployment},
    core::v1::Service,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{Controller, controller::Action, reflector::ObjectRef, reflector::Store, watcher},
};
use overseer_crds::{
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    runway::{BackendKind, InferenceRuntime},
};
use runway_api::{RUNTIME_LABEL, RequiredApi, backend_for, endpoint, label_value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    reconcile::{CONTROLLER, RunwayContext, reconcile},
    smoke::{DEFAULT_TIMEOUT, HttpSmokeTester, SmokeTester},
};
use crate::{
    controller::{self as scaffolding, Context, Error, requeue_after_error},
    health::ReadyHandle,
};

/// The `InferenceRuntime` controller, for [`crate::controller::ControllerSet::register`].
#[derive(Default)]
pub struct RunwayController {
    smoke: Option<Arc<dyn SmokeTester>>,
}

impl std::fmt::Debug for RunwayController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunwayController")
            .field("custom_smoke_tester", &self.smoke.is_some())
            .finish()
    }
}

impl RunwayController {
    /// A controller with its own smoke tester (the default sends real HTTP requests).
    pub fn with_smoke_tester(smoke: Arc<dyn SmokeTester>) -> Self {
        Self { smoke: Some(smoke) }
    }
}

impl scaffolding::Controller for RunwayController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        ready: ReadyHandle,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let smoke = self
            .smoke
            .unwrap_or_else(|| Arc::new(HttpSmokeTester::new(ctx.client.clone(), DEFAULT_TIMEOUT)));
        Box::pin(run(RunwayContext { ctx, smoke }, ready, shutdown))
    }
}

fn error_policy(
    _runtime: Arc<InferenceRuntime>,
    error: &Error,
    _ctx: Arc<RunwayContext>,
) -> Action {
    requeue_after_error(error)
}

/// The runtimes an object labelled with `runway.overseer.dev/runtime` belongs to.
fn runtime_of<K: Resource>(
    store: &Store<InferenceRuntime>,
    object: &K,
) -> Vec<ObjectRef<InferenceRuntime>> {
    let Some(label) = object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(RUNTIME_LABEL))
    else {
        return Vec::new();
    };
    let namespace = object.meta().namespace.clone();
    store
        .state()
        .into_iter()
        .filter(|rt| rt.namespace() == namespace && label_value(&rt.name_any()) == *label)
        .map(|rt| ObjectRef::from_obj(&*rt))
        .collect()
}

/// Every custom API a backend or the endpoint may render, deduplicated.
fn all_apis() -> Vec<RequiredApi> {
    let mut apis: Vec<RequiredApi> = Vec::new();
    for kind in [
        BackendKind::Vllm,
        BackendKind::Kaito,
        BackendKind::LlmD,
        BackendKind::Dynamo,
        BackendKind::Kserve,
    ] {
        for api in backend_for(kind).required_apis() {
            if !apis.contains(&api) {
                apis.push(api);
            }
        }
    }
    apis.push(endpoint::gateway_required_api());
    apis
}

/// The custom APIs served now, as watchable resources.
async fn served_apis(client: &Client) -> Vec<ApiResource> {
    let mut out = Vec::new();
    for api in all_apis() {
        match client
            .list_api_group_resources(&format!("{}/{}", api.group, api.version))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == api.plural) => {
                let gvk = GroupVersionKind::gvk(api.group, api.version, api.kind);
                out.push(ApiResource::from_gvk_with_plural(&gvk, api.plural));
            }
            Ok(_) | Err(kube::Error::Api(_)) => {
                info!(
                    group = api.group,
                    kind = api.kind,
                    "backend API not served: not watched"
                );
            }
            Err(e) => {
                warn!(group = api.group, kind = api.kind, error = %e, "cannot discover backend API")
            }
        }
    }
    out
}

async fn run(rctx: RunwayContext, ready: ReadyHandle, shutdown: CancellationToken) {
    let client = rctx.ctx.client.clone();
    let ours = watcher::Config::default()
        .labels(&format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RUNTIME_LABEL}"
        ))
        .any_semantic();
    let controller = Controller::new(
        Api::<InferenceRuntime>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = controller.store();
    let by_label = store.clone();
    let mut controller = controller
        .owns(Api::<ControllerRevision>::all(client.clone()), ours.clone())
        .owns(Api::<Service>::all(client.clone()), ours.clone())
        .watches(
            Api::<Deployment>::all(client.clone()),
            ours.clone(),
            move |d: Deployment| runtime_of(&by_label, &d),
        );
    for resource in served_apis(&client).await {
        let by_label = store.clone();
        controller = controller.watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            resource.clone(),
            ours.clone(),
            move |o: DynamicObject| runtime_of(&by_label, &o),
        );
    }
    let controller = controller
        .reconcile_all_on(rctx.ctx.leader.acquisitions())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    crate::controller::mark_ready_when_synced(store, ready, shutdown);
    controller
        .run(reconcile, error_policy, Arc::new(rctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(controller = CONTROLLER, error = %e, "runtime reconcile failed");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::runway::InferenceRuntimeSpec;

    #[test]
    fn objects_map_back_to_their_runtime_by_label() {
        let (store, mut writer) = kube::runtime::reflector::store::<InferenceRuntime>();
        let mut rt = InferenceRuntime::new("chat", InferenceRuntimeSpec::default());
        rt.metadata.namespace = Some("ml".into());
        writer.apply_watcher_event(&watcher::Event::Apply(rt));
        let mut d = Deployment::default();
        d.metadata.namespace = Some("ml".into());
        d.metadata.labels = Some([(RUNTIME_LABEL.to_string(), "chat".to_string())].into());
        assert_eq!(
            runtime_of(&store, &d),
            vec![ObjectRef::new("chat").within("ml")]
        );
        d.metadata.namespace = Some("other".into());
        assert!(runtime_of(&store, &d).is_empty());
        d.metadata.labels = None;
        assert!(runtime_of(&store, &d).is_empty());
    }

    #[test]
    fn every_backend_api_is_known() {
        let apis = all_apis();
        assert!(apis.iter().any(|a| a.group == "kaito.sh"));
        assert!(apis.iter().any(|a| a.group == "serving.kserve.io"));
        assert!(apis.iter().any(|a| a.kind == "HTTPRoute"));
    }
}
