//! Inference runway on a real cluster, with the InferenceRuntime controller running in-process:
//! a runtime on the `vllm` backend (CPU edge profile) is switched to another backend and back,
//! while the endpoint Service keeps its name, port and uid and only ever has ready endpoints.
//! The switch overhead (endpoint moved − candidate pods ready) is measured and printed.
//!
//! The other backend is `kserve` unless `OVERSEER_E2E_RUNWAY_BACKEND` names another one; its
//! CRDs and controller must be installed. The model (`OVERSEER_E2E_RUNWAY_MODEL`, default
//! `hf://Qwen/Qwen2.5-0.5B-Instruct`) is downloaded by the pods, so the cluster needs egress to
//! Hugging Face and about 8 GiB of memory per replica.
//!
//! Without a cluster each test prints `SKIPPED` and returns (see the crate's README).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use e2e::{Cluster, apply_params, wait_for};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
    runtime::wait::Condition,
};
use operator::{
    controller::{Context, Controller as _, Diagnostics, EventRecorder},
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
    runway::{controller::RunwayController, reconcile::RESYNC},
};
use overseer_crds::runway::{BackendKind, InferenceRuntime, RuntimePhase};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// How long a revision may take to serve (image pull and model download included).
const SERVE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The in-process controller; stopped when dropped.
struct RunningController(CancellationToken);

impl Drop for RunningController {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn start_controller(client: Client) -> RunningController {
    let leader = LeaderState::fixed(true);
    let readiness = Readiness::new();
    let ready = readiness.register("controller/inferenceruntime");
    let ctx = Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "e2e", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness,
        diagnostics: Diagnostics::default(),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(Box::new(RunwayController::default()).run(ctx, ready, shutdown.clone()));
    RunningController(shutdown)
}

fn other_backend() -> anyhow::Result<BackendKind> {
    let name = std::env::var("OVERSEER_E2E_RUNWAY_BACKEND").unwrap_or_else(|_| "kserve".into());
    let kind: BackendKind = serde_json::from_value(json!(name))
        .map_err(|_| anyhow!("OVERSEER_E2E_RUNWAY_BACKEND={name} is not a backend"))?;
    if kind == BackendKind::Vllm {
        bail!("OVERSEER_E2E_RUNWAY_BACKEND must name a backend other than vllm");
    }
    Ok(kind)
}

/// Serving `backend` with nothing left to switch.
fn serving(backend: BackendKind) -> impl Condition<InferenceRuntime> {
    move |obj: Option<&InferenceRuntime>| {
        obj.and_then(|o| o.status.as_ref()).is_some_and(|s| {
            s.phase == Some(RuntimePhase::Serving)
                && s.candidate_revision.is_none()
                && s.active_revision.as_ref().map(|r| r.backend) == Some(backend)
        })
    }
}

/// What the endpoint watcher saw.
#[derive(Debug, Default)]
struct EndpointLog {
    /// Observations with no ready endpoint (after the first one).
    downtime: Vec<String>,
    /// Endpoints that were listed not ready and not terminating.
    unready: Vec<String>,
    /// The last selector seen, and when it changed.
    selector_changes: Vec<(Timestamp, String)>,
    samples: u64,
}

/// Poll the Service and its EndpointSlices every 200 ms until `stop`.
async fn watch_endpoint(
    client: Client,
    namespace: String,
    service: String,
    log: Arc<Mutex<EndpointLog>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let by_service = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let svc = services.get(&service).await?;
        let selector = svc
            .spec
            .and_then(|s| s.selector)
            .map(|s| {
                s.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let mut ready = 0usize;
        let mut unready = Vec::new();
        for slice in slices.list(&by_service).await?.items {
            for endpoint in slice.endpoints {
                let c = endpoint.conditions.unwrap_or_default();
                let target = endpoint.target_ref.and_then(|t| t.name).unwrap_or_default();
                if c.ready == Some(true) {
                    ready += 1;
                } else if c.terminating != Some(true) {
                    unready.push(target);
                }
            }
        }
        let now = Timestamp::now();
        {
            let mut log = log.lock().map_err(|_| anyhow!("log poisoned"))?;
            log.samples += 1;
            if log.selector_changes.last().map(|(_, s)| s) != Some(&selector) {
                log.selector_changes.push((now, selector.clone()));
            }
            if ready == 0 {
                log.downtime
                    .push(format!("{now}: no ready endpoint ({selector})"));
            }
            for pod in unready {
                log.unready
                    .push(format!("{now}: {pod} listed but not ready ({selector})"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When the last of the pods selected by `selector` became Ready (kubelet's clock).
async fn pods_ready_at(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> anyhow::Result<Timestamp> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.list(&ListParams::default().labels(selector))
        .await?
        .items
        .iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .max()
        .ok_or_else(|| anyhow!("no ready pod matches {selector}"))
}

/// Switch to `backend` and return (candidate ready → endpoint moved) as measured.
async fn switch(
    client: &Client,
    namespace: &str,
    name: &str,
    backend: BackendKind,
    log: &Arc<Mutex<EndpointLog>>,
) -> anyhow::Result<(Duration, Duration)> {
    let api: Api<InferenceRuntime> = Api::namespaced(client.clone(), namespace);
    let started = Timestamp::now();
    // A merge patch of the one field (an apply of it alone would drop the rest of the spec this
    // field manager applied).
    let patch = json!({"spec": {"engine": {"backend": backend}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("switching the backend")?;
    let done = wait_for(&api, name, serving(backend), SERVE_TIMEOUT)
        .await
        .with_context(|| format!("waiting for the switch to {backend:?}"))?;
    let status = done.status.ok_or_else(|| anyhow!("no status"))?;
    let selector = status.selector.ok_or_else(|| anyhow!("no selector"))?;
    let ready_at = pods_ready_at(client, namespace, &selector).await?;
    let moved_at = log
        .lock()
        .map_err(|_| anyhow!("log poisoned"))?
        .selector_changes
        .iter()
        .find(|(_, s)| *s == selector)
        .map(|(t, _)| *t)
        .ok_or_else(|| anyhow!("the watcher never saw the Service select {selector}"))?;
    let readiness = ready_at.duration_since(started).unsigned_abs();
    let overhead = moved_at.duration_since(ready_at);
    let overhead = if overhead.is_negative() {
        Duration::ZERO
    } else {
        overhead.unsigned_abs()
    };
    Ok((readiness, overhead))
}

#[tokio::test]
#[ignore = "needs a cluster with vLLM-capable nodes and the other backend installed"]
async fn switching_backends_keeps_the_endpoint_and_only_ready_pods() -> anyhow::Result<()> {
    let test = "runway::switching_backends_keeps_the_endpoint_and_only_ready_pods";
    let Some(cluster) = Cluster::connect_or_skip(test).await? else {
        return Ok(());
    };
    let other = other_backend()?;
    let client = cluster.client().clone();
    cluster.install_crds().await?;
    let namespace = cluster.temp_namespace().await?;
    let ns = namespace.name().to_owned();
    let _controller = start_controller(client.clone());
    let model = std::env::var("OVERSEER_E2E_RUNWAY_MODEL")
        .unwrap_or_else(|_| "hf://Qwen/Qwen2.5-0.5B-Instruct".into());

    let name = "edge-chat";
    let api: Api<InferenceRuntime> = Api::namespaced(client.clone(), &ns);
    let runtime = json!({
        "apiVersion": "runway.overseer.dev/v1alpha1",
        "kind": "InferenceRuntime",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model, "servedName": "edge-chat"},
            "engine": {"backend": "vllm", "args": {"max-model-len": "2048"}, "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"}]},
            "profile": "Cpu",
            "resources": {"cpu": "2", "memory": "6Gi"},
            "replicas": 1,
            "revisionHistoryLimit": 1,
            "switchStrategy": {"type": "BlueGreen", "progressDeadline": "20m"},
        },
    });
    api.patch(name, &apply_params(false), &Patch::Apply(&runtime))
        .await
        .context("creating the runtime")?;
    let first = wait_for(&api, name, serving(BackendKind::Vllm), SERVE_TIMEOUT)
        .await
        .context("waiting for the vllm revision to serve")?;
    let endpoint = first
        .status
        .and_then(|s| s.endpoint)
        .ok_or_else(|| anyhow!("no endpoint in the status"))?;
    assert_eq!(endpoint.service, name);
    assert_eq!(endpoint.port, 8000);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let service_uid = services.get(name).await?.metadata.uid;

    let log = Arc::new(Mutex::new(EndpointLog::default()));
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_endpoint(
        client.clone(),
        ns.clone(),
        name.to_owned(),
        log.clone(),
        stop.clone(),
    ));
    // Let the watcher see the serving state first.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (ready, overhead) = switch(&client, &ns, name, other, &log).await?;
    e2e::report(&format!(
        "{test}: vllm -> {other:?}: candidate ready after {:.1}s, endpoint moved {:.1}s later (reconcile interval {}s)",
        ready.as_secs_f64(),
        overhead.as_secs_f64(),
        RESYNC.as_secs()
    ));
    assert!(overhead <= RESYNC, "the switch added {overhead:?}");
    let (ready_back, overhead_back) = switch(&client, &ns, name, BackendKind::Vllm, &log).await?;
    e2e::report(&format!(
        "{test}: {other:?} -> vllm (rollback to the kept revision): ready after {:.1}s, endpoint moved {:.1}s later",
        ready_back.as_secs_f64(),
        overhead_back.as_secs_f64()
    ));
    assert!(
        overhead_back <= RESYNC,
        "the switch back added {overhead_back:?}"
    );

    stop.cancel();
    watcher.await??;
    let service = services.get(name).await?;
    assert_eq!(
        service.metadata.uid, service_uid,
        "the endpoint Service was re-created"
    );
    let port = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().map(|p| p.port));
    assert_eq!(port, Some(8000));
    let log = log.lock().map_err(|_| anyhow!("log poisoned"))?;
    e2e::report(&format!(
        "{test}: {} endpoint samples, {} selector changes",
        log.samples,
        log.selector_changes.len()
    ));
    assert!(log.downtime.is_empty(), "downtime: {:#?}", log.downtime);
    assert!(
        log.unready.is_empty(),
        "unready endpoints: {:#?}",
        log.unready
    );
    Ok(())
}
