//! Controller tests against the mock API server: the exact requests of starting a switch,
//! cutting over (scale down, history kept, older history deleted), a switch that misses its
//! deadline, a backend that is not installed, and an object someone else owns.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{api::apps::v1::ControllerRevision, jiff::Timestamp};
use kube::{Client, runtime::controller::Action};
use overseer_crds::runway::{
    BackendKind, EngineSpec, InferenceRuntime, InferenceRuntimeSpec, InferenceRuntimeStatus,
    ModelSpec, Profile, RevisionRef, SmokeTest, SmokeTestType,
};
use runway_api::{RenderInput, backend_for};
use serde_json::{Value, json};

use super::{
    plan::{self, SmokeOutcome},
    reconcile::{RunwayContext, controller_revision, reconcile_at},
    smoke::{SmokeTarget, SmokeTester},
};
use crate::{
    controller::{
        Context, Diagnostics, EventRecorder,
        test_support::{ApiServerVerifier, BodyMatch, ExpectedRequest, timeout_after_1s},
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const NS: &str = "ml";
const NAME: &str = "chat";
const UID: &str = "rt-uid";
const MANAGER: &str = "?&force=true&fieldManager=overseer-runway";
const STATUS_PATH: &str = "/apis/runway.overseer.dev/v1alpha1/namespaces/ml/inferenceruntimes/chat/status?&force=true&fieldManager=overseer-runway-status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/ml/events?";
const CR_LIST: &str = "/apis/apps/v1/namespaces/ml/controllerrevisions?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Doverseer%2Crunway.overseer.dev%2Fruntime%3Dchat";
const KSERVE_DISCOVERY: &str = "/apis/serving.kserve.io/v1beta1";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_900_000_000 + secs).expect("timestamp")
}

/// A smoke tester that answers from a script and records its targets.
#[derive(Default)]
struct FakeSmoke {
    answer: Option<SmokeOutcome>,
    seen: Mutex<Vec<SmokeTarget>>,
}

impl SmokeTester for FakeSmoke {
    fn check<'a>(&'a self, target: &'a SmokeTarget) -> BoxFuture<'a, SmokeOutcome> {
        self.seen.lock().expect("lock").push(target.clone());
        let answer = self
            .answer
            .clone()
            .unwrap_or_else(|| SmokeOutcome::Failed("not scripted".into()));
        Box::pin(async move { answer })
    }
}

fn rctx(client: Client, smoke: Arc<FakeSmoke>) -> RunwayContext {
    let leader = LeaderState::fixed(true);
    RunwayContext {
        ctx: Arc::new(Context {
            recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
            client,
            metrics: Arc::new(Metrics::new()),
            leader,
            readiness: Readiness::new(),
            diagnostics: Diagnostics::default(),
        }),
        smoke,
    }
}

fn spec(backend: BackendKind) -> InferenceRuntimeSpec {
    InferenceRuntimeSpec {
        model: ModelSpec {
            uri: "hf://Qwen/Qwen3-0.6B".into(),
            ..Default::default()
        },
        engine: EngineSpec {
            backend,
            ..Default::default()
        },
        profile: Profile::Cpu,
        replicas: 1,
        revision_history_limit: 1,
        ..Default::default()
    }
}

/// An older vllm revision (different engine args).
fn spec_r0() -> InferenceRuntimeSpec {
    let mut s = spec(BackendKind::Vllm);
    s.engine.args.insert("max-model-len".into(), "2048".into());
    s
}

fn runtime(spec: InferenceRuntimeSpec, status: Option<InferenceRuntimeStatus>) -> InferenceRuntime {
    let mut rt = InferenceRuntime::new(NAME, spec);
    rt.metadata.namespace = Some(NS.into());
    rt.metadata.uid = Some(UID.into());
    rt.metadata.generation = Some(2);
    rt.status = status;
    rt
}

fn rev(spec: &InferenceRuntimeSpec) -> String {
    plan::desired_revision(NAME, spec).0
}

fn rev_ref(spec: &InferenceRuntimeSpec) -> RevisionRef {
    let (name, hash) = plan::desired_revision(NAME, spec);
    RevisionRef {
        name,
        backend: spec.engine.backend,
        hash,
    }
}

fn cr_uid(spec: &InferenceRuntimeSpec) -> String {
    format!("uid-{}", rev(spec))
}

/// A ControllerRevision as the API server returns it.
fn cr(spec: &InferenceRuntimeSpec, number: i64, annotations: &[(&str, String)]) -> Value {
    let rt = runtime(spec.clone(), None);
    let owner = kube::Resource::controller_owner_ref(&rt, &()).expect("owner");
    let (name, hash) = plan::desired_revision(NAME, spec);
    let plan = plan::RevisionPlan {
        name,
        hash,
        spec: spec.clone(),
        number,
        role: plan::Role::History,
        replicas: 0,
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect(),
        objects: true,
        minted: false,
    };
    let body: ControllerRevision =
        controller_revision(NAME, NS, &owner, &plan).expect("controller revision");
    let mut v = serde_json::to_value(body).expect("json");
    v["metadata"]["uid"] = json!(cr_uid(spec));
    v
}

fn cr_path(spec: &InferenceRuntimeSpec) -> String {
    format!(
        "/apis/apps/v1/namespaces/ml/controllerrevisions/{}",
        rev(spec)
    )
}

/// What the controller sends when it applies a revision's ControllerRevision.
fn cr_body(spec: &InferenceRuntimeSpec, number: i64, annotations: &[(&str, String)]) -> Value {
    let mut v = cr(spec, number, annotations);
    if let Some(meta) = v["metadata"].as_object_mut() {
        meta.remove("uid");
    }
    v
}

/// The objects of a revision, rendered as the controller renders them.
fn rendered(spec: &InferenceRuntimeSpec, replicas: i32) -> Vec<Value> {
    let (name, hash) = plan::desired_revision(NAME, spec);
    let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ControllerRevision".into(),
        name: name.clone(),
        uid: cr_uid(spec),
        controller: Some(true),
        block_owner_deletion: None,
    };
    backend_for(spec.engine.backend)
        .render(&RenderInput {
            runtime_name: NAME,
            namespace: NS,
            revision_name: &name,
            revision_hash: &hash,
            spec,
            replicas,
            owner: Some(&owner),
        })
        .expect("renders")
}

fn path_of(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().expect("name");
    match object["kind"].as_str().expect("kind") {
        "Deployment" => format!("/apis/apps/v1/namespaces/ml/deployments/{name}"),
        "Service" => format!("/api/v1/namespaces/ml/services/{name}"),
        "InferenceService" => {
            format!("/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices/{name}")
        }
        other => panic!("no path for {other}"),
    }
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn get(path: String, response: (u16, Value)) -> ExpectedRequest {
    ExpectedRequest::get(leak(path)).respond(response.0, response.1)
}

fn apply_exact(path: String, body: Value, response: Value) -> ExpectedRequest {
    ExpectedRequest::apply(leak(format!("{path}{MANAGER}")), body).respond(200, response)
}

fn with_uid(mut object: Value, uid: &str) -> Value {
    object["metadata"]["uid"] = json!(uid);
    object
}

/// The object as live, with a status that makes it ready (or not).
fn live(object: &Value, ready: bool) -> Value {
    let mut v = with_uid(
        object.clone(),
        &format!("uid-{}", object["metadata"]["name"].as_str().unwrap_or("")),
    );
    v["metadata"]["generation"] = json!(1);
    match object["kind"].as_str() {
        Some("Deployment") => {
            let n = object["spec"]["replicas"].as_i64().unwrap_or(0);
            let up = if ready { n } else { 0 };
            v["status"] = json!({"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "availableReplicas": up, "readyReplicas": up});
        }
        Some("InferenceService") => {
            v["status"] = json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "reason": "Starting"}]});
        }
        _ => {}
    }
    v
}

/// GET every object (answered as live, ours) then apply each (answered live).
fn converge_existing(
    spec: &InferenceRuntimeSpec,
    replicas: i32,
    ready: bool,
) -> Vec<ExpectedRequest> {
    let objects = rendered(spec, replicas);
    let mut out: Vec<ExpectedRequest> = objects
        .iter()
        .map(|o| get(path_of(o), (200, live(o, ready))))
        .collect();
    out.extend(
        objects
            .iter()
            .map(|o| apply_exact(path_of(o), o.clone(), live(o, ready))),
    );
    out
}

fn discovery_kserve() -> ExpectedRequest {
    get(
        KSERVE_DISCOVERY.to_string(),
        (
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "serving.kserve.io/v1beta1", "resources": [
                {"name": "inferenceservices", "singularName": "inferenceservice", "namespaced": true, "kind": "InferenceService", "verbs": ["get", "list", "watch", "patch"]}
            ]}),
        ),
    )
}

fn list(items: Vec<Value>) -> ExpectedRequest {
    get(
        CR_LIST.to_string(),
        (
            200,
            json!({"apiVersion": "apps/v1", "kind": "ControllerRevisionList", "metadata": {"resourceVersion": "1"}, "items": items}),
        ),
    )
}

fn endpoint_service(spec: &InferenceRuntimeSpec) -> Value {
    let (name, hash) = plan::desired_revision(NAME, spec);
    let rt = runtime(spec.clone(), None);
    let owner = kube::Resource::controller_owner_ref(&rt, &()).expect("owner");
    let target = backend_for(spec.engine.backend).endpoint(&RenderInput {
        runtime_name: NAME,
        namespace: NS,
        revision_name: &name,
        revision_hash: &hash,
        spec,
        replicas: 1,
        owner: None,
    });
    runway_api::endpoint::endpoint_service(NAME, NS, spec, &target, Some(&owner)).expect("service")
}

/// GET the endpoint Service (ours) and apply it selecting `spec`'s revision.
fn endpoint_moves_to(spec: &InferenceRuntimeSpec) -> Vec<ExpectedRequest> {
    let body = endpoint_service(spec);
    let path = "/api/v1/namespaces/ml/services/chat".to_string();
    vec![
        get(path.clone(), (200, with_uid(body.clone(), "svc-uid"))),
        apply_exact(path, body.clone(), with_uid(body, "svc-uid")),
    ]
}

fn status_containing(body: Value) -> ExpectedRequest {
    ExpectedRequest {
        content_type: Some("application/apply-patch+yaml"),
        body: BodyMatch::Contains(body),
        ..ExpectedRequest::new("PATCH", STATUS_PATH)
    }
    .respond(
        200,
        serde_json::to_value(runtime(spec(BackendKind::Vllm), None)).expect("json"),
    )
}

/// A condition as written at `now` for generation 2.
fn cond(type_: &str, status: &str, reason: &str, message: &str, now: Timestamp) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 2,
        "lastTransitionTime": now.to_string(),
    })
}

fn event(reason: &str, type_: &str) -> ExpectedRequest {
    ExpectedRequest::post_containing(EVENTS_PATH, json!({"reason": reason, "type": type_}))
        .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}))
}

fn delete(path: String, uid: &str) -> ExpectedRequest {
    ExpectedRequest {
        content_type: Some("application/json"),
        body: BodyMatch::Exact(
            json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}}),
        ),
        ..ExpectedRequest::new("DELETE", leak(format!("{path}?")))
    }
    .respond(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
}

fn switching_status(
    active: &InferenceRuntimeSpec,
    candidate: Option<&InferenceRuntimeSpec>,
) -> InferenceRuntimeStatus {
    InferenceRuntimeStatus {
        active_revision: Some(rev_ref(active)),
        candidate_revision: candidate.map(rev_ref),
        ..Default::default()
    }
}

async fn run(
    rt: InferenceRuntime,
    smoke: Arc<FakeSmoke>,
    now: Timestamp,
    expected: Vec<ExpectedRequest>,
) -> Action {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(expected);
    let ctx = rctx(client, smoke);
    let action = reconcile_at(&rt, &ctx, now).await.expect("reconciles");
    drop(ctx);
    timeout_after_1s(scenario).await;
    action
}

#[tokio::test]
async fn a_changed_backend_renders_a_candidate_next_to_the_serving_revision() {
    let r0 = spec_r0();
    let r1 = spec(BackendKind::Vllm);
    let mut r2 = spec(BackendKind::Kserve);
    r2.switch_strategy.smoke_test = Some(SmokeTest {
        type_: SmokeTestType::Models,
    });
    let rt = runtime(r2.clone(), Some(switching_status(&r1, None)));
    let started = t(0).to_string();
    let isvc = rendered(&r2, 1).remove(0);
    let mut expected = vec![
        list(vec![cr(&r0, 1, &[]), cr(&r1, 2, &[])]),
        discovery_kserve(),
    ];
    // The active revision keeps serving at full size.
    expected.extend(converge_existing(&r1, 1, true));
    // The candidate: nothing under its name, then its ControllerRevision, then its objects.
    expected.extend([
        get(path_of(&isvc), not_found()),
        get(cr_path(&r2), not_found()),
        apply_exact(
            cr_path(&r2),
            cr_body(&r2, 3, &[(plan::SWITCH_STARTED, started.clone())]),
            cr(&r2, 3, &[(plan::SWITCH_STARTED, started.clone())]),
        ),
        apply_exact(path_of(&isvc), isvc.clone(), live(&isvc, false)),
    ]);
    // History at zero.
    expected.extend(converge_existing(&r0, 0, false));
    // The endpoint stays on the active revision.
    expected.extend(endpoint_moves_to(&r1));
    expected.push(status_containing(json!({"status": {
        "phase": "Switching",
        "activeRevision": {"name": rev(&r1), "backend": "vllm"},
        "candidateRevision": {"name": rev(&r2), "backend": "kserve"},
        "replicas": 1,
        "readyReplicas": 1,
        "endpoint": {"url": "http://chat.ml.svc:8000/v1", "service": "chat", "port": 8000, "modelName": "Qwen3-0.6B"},
        "observedGeneration": 2,
    }})));
    expected.push(event("SwitchStarted", "Normal"));
    let smoke = Arc::new(FakeSmoke::default());
    let action = run(rt, smoke.clone(), t(0), expected).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert!(
        smoke.seen.lock().expect("lock").is_empty(),
        "no smoke test before ready"
    );
}

#[tokio::test]
async fn a_ready_candidate_takes_the_endpoint_then_the_old_revision_scales_down() {
    let r0 = spec_r0();
    let r1 = spec(BackendKind::Vllm);
    let mut r2 = spec(BackendKind::Kserve);
    r2.switch_strategy.smoke_test = Some(SmokeTest {
        type_: SmokeTestType::Models,
    });
    let rt = runtime(r2.clone(), Some(switching_status(&r1, Some(&r2))));
    let started = t(0).to_string();
    let isvc = rendered(&r2, 1).remove(0);
    let mut expected = vec![
        list(vec![
            cr(&r0, 1, &[]),
            cr(&r1, 2, &[]),
            cr(&r2, 3, &[(plan::SWITCH_STARTED, started.clone())]),
        ]),
        discovery_kserve(),
    ];
    expected.extend(converge_existing(&r1, 1, true));
    expected.extend(converge_existing(&r2, 1, true));
    expected.extend(converge_existing(&r0, 0, false));
    // Cut over: the endpoint Service now selects the candidate's pods ...
    expected.extend(endpoint_moves_to(&r2));
    // ... the candidate's switch state is cleared ...
    expected.push(apply_exact(
        cr_path(&r2),
        cr_body(&r2, 3, &[]),
        cr(&r2, 3, &[]),
    ));
    // ... only then is the old revision scaled to zero (kept as history) ...
    expected.extend(converge_existing(&r1, 0, false));
    // ... and history beyond the limit is deleted.
    expected.push(delete(cr_path(&r0), &cr_uid(&r0)));
    expected.push(status_containing(json!({"status": {
        "phase": "Serving",
        "activeRevision": {"name": rev(&r2), "backend": "kserve"},
        "readyReplicas": 1,
        "selector": format!("component=predictor,serving.kserve.io/inferenceservice={}", rev(&r2)),
        "endpoint": {"service": "chat", "port": 8000},
    }})));
    for (reason, type_) in [
        ("SmokeTestPassed", "Normal"),
        ("TrafficShifted", "Normal"),
        ("RevisionScaledDown", "Normal"),
        ("RevisionDeleted", "Normal"),
    ] {
        expected.push(event(reason, type_));
    }
    let smoke = Arc::new(FakeSmoke {
        answer: Some(SmokeOutcome::Passed("lists the model".into())),
        ..Default::default()
    });
    run(rt, smoke.clone(), t(120), expected).await;
    let seen = smoke.seen.lock().expect("lock");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].model, "Qwen3-0.6B");
    assert_eq!(seen[0].kind, SmokeTestType::Models);
    assert_eq!(
        seen[0].pod_selector,
        BTreeMap::from([
            ("component".to_string(), "predictor".to_string()),
            ("serving.kserve.io/inferenceservice".to_string(), rev(&r2)),
        ])
    );
    let _ = isvc;
}

#[tokio::test]
async fn a_failed_smoke_test_keeps_traffic_on_the_active_revision() {
    let r1 = spec(BackendKind::Vllm);
    let mut r2 = spec(BackendKind::Kserve);
    r2.switch_strategy.smoke_test = Some(SmokeTest {
        type_: SmokeTestType::Completion,
    });
    let rt = runtime(r2.clone(), Some(switching_status(&r1, Some(&r2))));
    let started = t(0).to_string();
    let isvc = rendered(&r2, 1).remove(0);
    let mut expected = vec![
        list(vec![
            cr(&r1, 2, &[]),
            cr(&r2, 3, &[(plan::SWITCH_STARTED, started.clone())]),
        ]),
        discovery_kserve(),
    ];
    expected.extend(converge_existing(&r1, 1, true));
    expected.extend(converge_existing(&r2, 1, true));
    expected.extend(endpoint_moves_to(&r1));
    // The failure is recorded on the candidate and its objects are deleted (onFailure: Delete).
    expected.push(apply_exact(
        cr_path(&r2),
        cr_body(
            &r2,
            3,
            &[
                (plan::SWITCH_STARTED, started.clone()),
                (plan::FAILED, plan::reason::SMOKE_FAILED.to_string()),
                (plan::STEP_STARTED, t(60).to_string()),
            ],
        ),
        cr(&r2, 3, &[]),
    ));
    let isvc_zero = rendered(&r2, 0).remove(0);
    expected.push(get(path_of(&isvc_zero), (200, live(&isvc_zero, false))));
    expected.push(delete(path_of(&isvc), &format!("uid-{}", rev(&r2))));
    expected.push(status_containing(json!({"status": {
        "phase": "Degraded",
        "activeRevision": {"name": rev(&r1)},
        "readyReplicas": 1,
    }})));
    expected.push(event("SwitchFailed", "Warning"));
    let smoke = Arc::new(FakeSmoke {
        answer: Some(SmokeOutcome::Failed("HTTP 500".into())),
        ..Default::default()
    });
    run(rt, smoke, t(60), expected).await;
}

#[tokio::test]
async fn a_candidate_past_its_deadline_fails_the_switch() {
    let r1 = spec(BackendKind::Vllm);
    let mut r2 = spec(BackendKind::Kserve);
    r2.switch_strategy.progress_deadline = Some("10m".parse().expect("duration"));
    let rt = runtime(r2.clone(), Some(switching_status(&r1, Some(&r2))));
    let started = t(0).to_string();
    let isvc = rendered(&r2, 1).remove(0);
    let why = format!(
        "ProgressDeadlineExceeded: candidate {0} was not ready within the progress deadline (600s): InferenceService {0}: Ready=False Starting: ",
        rev(&r2)
    );
    let mut expected = vec![
        list(vec![
            cr(&r1, 2, &[]),
            cr(&r2, 3, &[(plan::SWITCH_STARTED, started.clone())]),
        ]),
        discovery_kserve(),
    ];
    expected.extend(converge_existing(&r1, 1, true));
    expected.extend(converge_existing(&r2, 1, false));
    expected.extend(endpoint_moves_to(&r1));
    expected.push(apply_exact(
        cr_path(&r2),
        cr_body(
            &r2,
            3,
            &[
                (plan::SWITCH_STARTED, started.clone()),
                (plan::FAILED, plan::reason::DEADLINE.to_string()),
                (plan::STEP_STARTED, t(601).to_string()),
            ],
        ),
        cr(&r2, 3, &[]),
    ));
    expected.push(get(path_of(&isvc), (200, live(&isvc, false))));
    expected.push(delete(path_of(&isvc), &format!("uid-{}", rev(&r2))));
    expected.push(status_containing(json!({"status": {
        "phase": "Degraded",
        "activeRevision": {"name": rev(&r1)},
        "conditions": [
            cond("Ready", "False", "SwitchFailed", &why, t(601)),
            cond("BackendAvailable", "True", "BackendInstalled", "the kserve backend's APIs are served", t(601)),
            cond("Progressing", "False", "AsExpected", "", t(601)),
            cond("Degraded", "True", "SwitchFailed", &why, t(601)),
        ],
    }})));
    expected.push(event("SwitchFailed", "Warning"));
    run(rt, Arc::new(FakeSmoke::default()), t(601), expected).await;
}

#[tokio::test]
async fn a_failed_revision_is_not_retried() {
    let r1 = spec(BackendKind::Vllm);
    let r2 = spec(BackendKind::Kserve);
    let rt = runtime(r2.clone(), Some(switching_status(&r1, None)));
    let failed = [
        (plan::SWITCH_STARTED, t(0).to_string()),
        (plan::FAILED, plan::reason::DEADLINE.to_string()),
    ];
    let isvc = rendered(&r2, 0).remove(0);
    let mut expected = vec![
        list(vec![cr(&r1, 2, &[]), cr(&r2, 3, &failed)]),
        discovery_kserve(),
    ];
    expected.extend(converge_existing(&r1, 1, true));
    // Its objects stay deleted: a GET finds nothing, nothing is applied.
    expected.push(get(path_of(&isvc), not_found()));
    expected.extend(endpoint_moves_to(&r1));
    expected.push(status_containing(json!({"status": {"phase": "Degraded"}})));
    let action = run(rt, Arc::new(FakeSmoke::default()), t(5000), expected).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_missing_backend_creates_nothing_and_says_what_to_install() {
    let r1 = spec(BackendKind::Kserve);
    let rt = runtime(r1, None);
    let hint = format!(
        "serving.kserve.io/v1beta1 InferenceService is not served: {}",
        backend_for(BackendKind::Kserve).required_apis()[0].install_hint
    );
    let expected = vec![
        list(vec![]),
        get(KSERVE_DISCOVERY.to_string(), not_found()),
        status_containing(json!({"status": {
            "phase": "Pending",
            "conditions": [
                cond("Ready", "False", "BackendUnavailable", &hint, t(0)),
                cond("BackendAvailable", "False", "BackendUnavailable", &hint, t(0)),
                cond("Progressing", "False", "AsExpected", "", t(0)),
                cond("Degraded", "False", "AsExpected", "", t(0)),
            ],
        }})),
    ];
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(expected);
    let ctx = rctx(client, Arc::new(FakeSmoke::default()));
    let action = reconcile_at(&rt, &ctx, t(0)).await.expect("reconciles");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_backend_object_owned_by_someone_else_is_never_overwritten() {
    let r1 = spec(BackendKind::Vllm);
    let rt = runtime(r1.clone(), None);
    let objects = rendered(&r1, 1);
    let conflict = format!("{} already exists and is not this runtime's", {
        let o = &objects[0];
        format!(
            "apps/v1/Deployment/{}",
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    let mut foreign = with_uid(objects[0].clone(), "theirs");
    foreign["metadata"]["ownerReferences"] = json!([]);
    let expected = vec![
        list(vec![]),
        // No discovery: vllm needs only core and apps kinds.
        get(path_of(&objects[0]), (200, foreign)),
        get(path_of(&objects[1]), not_found()),
        status_containing(json!({"status": {
            "phase": "Failed",
            "conditions": [
                cond("Ready", "False", "ObjectConflict", &conflict, t(0)),
                cond("BackendAvailable", "True", "BackendInstalled", "the vllm backend's APIs are served", t(0)),
                cond("Progressing", "False", "AsExpected", "", t(0)),
                cond("Degraded", "False", "AsExpected", "", t(0)),
            ],
        }})),
    ];
    let action = run(rt, Arc::new(FakeSmoke::default()), t(0), expected).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn an_invalid_spec_writes_only_the_status() {
    let mut bad = spec(BackendKind::Kaito);
    bad.profile = Profile::Cpu;
    let rt = runtime(bad, None);
    let expected = vec![status_containing(json!({"status": {
        "phase": "Failed",
        "observedGeneration": 2,
    }}))];
    let action = run(rt, Arc::new(FakeSmoke::default()), t(0), expected).await;
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn scale_reaches_the_active_revision_and_fills_the_scale_status() {
    let mut r1 = spec(BackendKind::Vllm);
    r1.replicas = 3;
    let rt = runtime(r1.clone(), Some(switching_status(&r1, None)));
    let mut expected = vec![list(vec![cr(&r1, 1, &[])])];
    expected.extend(converge_existing(&r1, 3, true));
    expected.extend(endpoint_moves_to(&r1));
    let selector = format!(
        "runway.overseer.dev/component=server,runway.overseer.dev/revision={},runway.overseer.dev/runtime=chat",
        rev(&r1)
    );
    expected.push(status_containing(json!({"status": {
        "phase": "Serving",
        "replicas": 3,
        "readyReplicas": 3,
        "selector": selector,
    }})));
    run(rt, Arc::new(FakeSmoke::default()), t(0), expected).await;
    // The applied Deployment carried the new replica count.
    assert_eq!(rendered(&r1, 3)[0]["spec"]["replicas"], json!(3));
}
