//! Delivery to a member against a mock API server (kube's `tower-test`): the exact verb, path,
//! query and body of every request for apply, prune, drift and health, and the member pool's
//! client cache.

use std::{
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fleet::{
    apply::{
        self, ApplyRequest, Drift, MEMBER_LABEL, REVISION_ANNOTATION, REVISION_LABEL,
        ROLLOUT_LABEL, RolloutRef,
    },
    health::{GateEvaluator, HealthStatus},
    member::{Member, MemberError, MemberPool},
};
use http::{Request, Response};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Client,
    api::{DynamicObject, ObjectMeta},
    client::Body,
    core::GroupVersionKind,
};
use overseer_crds::{
    common::NamespacedSecretKeyRef,
    fleet::{DriftAction, FleetCluster, FleetClusterSpec, StageGate},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// A mock API server that checks every request
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Body_ {
    Empty,
    Exact(Value),
}

#[derive(Debug, Clone)]
struct Expect {
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Body_,
    /// `None`: answer with a transport error.
    response: Option<(u16, Value)>,
}

impl Expect {
    fn get(path: impl Into<String>, status: u16, response: Value) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            content_type: None,
            body: Body_::Empty,
            response: Some((status, response)),
        }
    }
    fn apply(path: impl Into<String>, body: Value, response: Value) -> Self {
        Self {
            method: "PATCH",
            path: path.into(),
            content_type: Some("application/apply-patch+yaml"),
            body: Body_::Exact(body),
            response: Some((200, response)),
        }
    }
    fn delete(path: impl Into<String>, body: Value) -> Self {
        Self {
            method: "DELETE",
            path: path.into(),
            content_type: Some("application/json"),
            body: Body_::Exact(body),
            response: Some((
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )),
        }
    }
    fn unreachable(mut self) -> Self {
        self.response = None;
        self
    }
}

fn mock(expected: Vec<Expect>) -> (Client, JoinHandle<()>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut handle = pin!(handle);
        for (i, want) in expected.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!("request #{i} ({} {}) never came", want.method, want.path)
            });
            assert_eq!(
                request.method().as_str(),
                want.method,
                "request #{i} method"
            );
            assert_eq!(
                request.uri().path_and_query().map(|p| p.as_str()),
                Some(want.path.as_str()),
                "request #{i} path and query"
            );
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(
                content_type.as_deref(),
                want.content_type,
                "request #{i} content type"
            );
            let bytes = request.into_body().collect_bytes().await.expect("body");
            match want.body {
                Body_::Empty => assert!(bytes.is_empty(), "request #{i} has a body"),
                Body_::Exact(body) => {
                    let got: Value = serde_json::from_slice(&bytes).expect("JSON body");
                    assert_eq!(got, body, "request #{i} body");
                }
            }
            match want.response {
                Some((status, body)) => send.send_response(
                    Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Body::from(serde_json::to_vec(&body).expect("serializes")))
                        .expect("response"),
                ),
                None => send.send_error(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "connection refused",
                )),
            }
        }
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    });
    (Client::new(service, "default"), task)
}

async fn finish(task: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(2), task).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("mock scenario timed out: a request never came or a client was kept"),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn resources(group_version: &str, resources: Value) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
}

fn resource(name: &str, kind: &str, namespaced: bool) -> Value {
    json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
           "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
}

fn core_v1() -> Expect {
    Expect::get(
        "/api/v1",
        200,
        resources("v1", json!([resource("configmaps", "ConfigMap", true)])),
    )
}

fn apps_v1() -> Expect {
    Expect::get(
        "/apis/apps/v1",
        200,
        resources(
            "apps/v1",
            json!([resource("deployments", "Deployment", true)]),
        ),
    )
}

fn rbac_v1() -> Expect {
    Expect::get(
        "/apis/rbac.authorization.k8s.io/v1",
        200,
        resources(
            "rbac.authorization.k8s.io/v1",
            json!([resource("clusterroles", "ClusterRole", false)]),
        ),
    )
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).expect("object")
}

fn rollout() -> RolloutRef {
    RolloutRef::new("team-a", "web")
}

const SELECTOR: &str = "labelSelector=fleet.overseer.dev%2Frollout%3Dteam-a.web%2Cfleet.overseer.dev%2Fmember%3Dedge-1";

fn owned_labels(revision: &str) -> Value {
    json!({ROLLOUT_LABEL: "team-a.web", MEMBER_LABEL: "edge-1", REVISION_LABEL: revision})
}

fn config_map(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "pay"}, "data": {"k": "v"}})
}

fn deployment(replicas: i64, ready: i64) -> Value {
    let available = if ready == replicas { "True" } else { "False" };
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "api", "namespace": "pay", "generation": 2},
           "spec": {"replicas": replicas},
           "status": {"observedGeneration": 2, "replicas": replicas, "updatedReplicas": ready,
                      "readyReplicas": ready, "availableReplicas": ready,
                      "conditions": [{"type": "Available", "status": available}]}})
}

fn with_ownership(mut obj: Value, revision: &str) -> Value {
    let meta = obj["metadata"].as_object_mut().expect("metadata");
    meta.insert("labels".into(), owned_labels(revision));
    meta.insert("annotations".into(), json!({REVISION_ANNOTATION: revision}));
    obj
}

fn member(client: Client) -> Member {
    Member::new("edge-1", client, Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------------
// Apply and prune
// ---------------------------------------------------------------------------------------------

/// Reverting to an older revision is apply + prune with the older set: the objects applied with
/// `fieldManager=overseer-fleet&force=true`, then only stale objects carrying this rollout's and
/// this member's labels are deleted, each with a uid precondition; foreign objects, kept objects
/// and objects being deleted are left alone.
#[tokio::test]
async fn apply_then_prune_deletes_only_our_stale_objects() {
    let cluster_role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "reader"}, "rules": []});
    let live_cm = |name: &str, uid: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "pay", "uid": uid, "labels": labels}})
    };
    let (client, task) = mock(vec![
        core_v1(),
        rbac_v1(),
        Expect::apply(
            "/api/v1/namespaces/pay/configmaps/settings?&force=true&fieldManager=overseer-fleet",
            with_ownership(config_map("settings"), "r1"),
            with_ownership(config_map("settings"), "r1"),
        ),
        Expect::apply(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/reader?&force=true&fieldManager=overseer-fleet",
            with_ownership(cluster_role.clone(), "r1"),
            with_ownership(cluster_role.clone(), "r1"),
        ),
        // Prune: the Deployments the revision before had are resolved too; then namespaced kinds
        // first (the set's ConfigMaps, then those Deployments), cluster-scoped last.
        apps_v1(),
        Expect::get(
            format!("/api/v1/configmaps?&{SELECTOR}&limit=500"),
            200,
            json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {},
            "items": [
                live_cm("settings", "u1", owned_labels("r2")),
                live_cm("added-in-r2", "u2", owned_labels("r2")),
                // A server that ignored the selector must not make us delete this.
                live_cm("foreign", "u3", json!({"app": "other"})),
            ]}),
        ),
        Expect::delete(
            "/api/v1/namespaces/pay/configmaps/added-in-r2?",
            json!({"propagationPolicy": "Background", "preconditions": {"uid": "u2"}}),
        ),
        Expect::get(
            format!("/apis/apps/v1/deployments?&{SELECTOR}&limit=500"),
            200,
            json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {"continue": "page2"},
                   "items": [{"apiVersion": "apps/v1", "kind": "Deployment",
                              "metadata": {"name": "gone", "namespace": "pay", "uid": "d1",
                                           "labels": owned_labels("r2"),
                                           "deletionTimestamp": "2026-01-01T00:00:00Z"}}]}),
        ),
        Expect::get(
            format!("/apis/apps/v1/deployments?&{SELECTOR}&limit=500&continue=page2"),
            200,
            json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {},
                   "items": [{"apiVersion": "apps/v1", "kind": "Deployment",
                              "metadata": {"name": "api", "namespace": "pay", "uid": "d2",
                                           "labels": owned_labels("r2")}}]}),
        ),
        Expect::delete(
            "/apis/apps/v1/namespaces/pay/deployments/api?",
            json!({"propagationPolicy": "Background", "preconditions": {"uid": "d2"}}),
        ),
        Expect::get(
            format!("/apis/rbac.authorization.k8s.io/v1/clusterroles?&{SELECTOR}&limit=500"),
            200,
            json!({"kind": "ClusterRoleList", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {},
                   "items": [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                              "metadata": {"name": "reader", "uid": "c1", "labels": owned_labels("r2")}}]}),
        ),
    ]);
    let member = member(client);
    // The reordering puts nothing before the ConfigMap: neither is a CRD nor a Namespace.
    let objects = vec![object(config_map("settings")), object(cluster_role)];
    let rollout = rollout();
    let report = apply::apply(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: true,
            prune_kinds: &[GroupVersionKind::gvk("apps", "v1", "Deployment")],
            gate: None,
        },
    )
    .await
    .expect("delivered");
    drop(member);
    finish(task).await;

    let names =
        |keys: &[apply::ObjectKey]| keys.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(
        names(&report.applied),
        [
            "v1/ConfigMap/pay/settings",
            "rbac.authorization.k8s.io/v1/ClusterRole/reader"
        ]
    );
    assert_eq!(
        names(&report.pruned),
        ["v1/ConfigMap/pay/added-in-r2", "apps/v1/Deployment/pay/api"]
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.drifted.is_empty());
    assert_eq!(report.cluster_health().status, HealthStatus::Current);
    assert_eq!(report.kinds().len(), 2);
}

/// A kind the member does not serve and a namespaced object without a namespace fail alone; the
/// rest is applied, and health comes from the apply's answer through the gate. With failures,
/// prune is skipped: no list, no delete.
#[tokio::test]
async fn per_object_failures_do_not_stop_the_others() {
    let (client, task) = mock(vec![
        Expect::get(
            "/apis/example.com/v1",
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not found"}),
        ),
        apps_v1(),
        core_v1(),
        Expect::apply(
            "/apis/apps/v1/namespaces/pay/deployments/api?&force=true&fieldManager=overseer-fleet",
            with_ownership(
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "pay"}, "spec": {"replicas": 3}}),
                "r1",
            ),
            deployment(3, 1),
        ),
    ]);
    let member = member(client);
    let objects = vec![
        object(
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "pay"}}),
        ),
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "pay", "resourceVersion": "7"},
            "spec": {"replicas": 3}})),
        object(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nons"}})),
        object(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})),
    ];
    let gate = GateEvaluator::new(&StageGate::default()).expect("gate");
    let rollout = rollout();
    let report = apply::apply(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: true,
            prune_kinds: &[],
            gate: Some(&gate),
        },
    )
    .await
    .expect("delivered");
    drop(member);
    finish(task).await;

    let errors: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "ConfigMap has no metadata.name",
            "example.com/v1/Widget/pay/w: the cluster does not serve example.com/v1 Widget",
            "v1/ConfigMap/nons: a namespaced object needs metadata.namespace",
        ]
    );
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.health[0].health.status, HealthStatus::InProgress);
    assert_eq!(report.cluster_health().status, HealthStatus::Failed);
    assert!(
        report
            .cluster_health()
            .message
            .contains("and 2 more errors")
    );
}

/// An unreachable member stops the delivery at the first request, with an error naming it.
#[tokio::test]
async fn an_unreachable_member_stops_the_delivery() {
    let (client, task) = mock(vec![core_v1().unreachable()]);
    let member = member(client);
    let objects = vec![object(config_map("settings"))];
    let rollout = rollout();
    let err = apply::apply(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: true,
            prune_kinds: &[],
            gate: None,
        },
    )
    .await
    .expect_err("unreachable");
    drop(member);
    finish(task).await;
    assert!(err.is_unreachable(), "{err:?}");
    assert!(
        err.to_string().starts_with("cluster edge-1 is unreachable"),
        "{err}"
    );
}

/// A member that never answers times out at the member's deadline instead of hanging.
#[tokio::test]
async fn a_silent_member_times_out() {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let member = Member::new(
        "edge-9",
        Client::new(service, "default"),
        Duration::from_millis(50),
    );
    let err = member.version().await.expect_err("times out");
    assert!(matches!(err, MemberError::TimedOut { .. }), "{err:?}");
    assert_eq!(err.to_string(), "cluster edge-9 did not answer within 50ms");
}

/// Leaving the targets deletes everything this rollout delivered through the member.
#[tokio::test]
async fn prune_all_deletes_every_owned_object() {
    let (client, task) = mock(vec![
        core_v1(),
        Expect::get(
            format!("/api/v1/configmaps?&{SELECTOR}&limit=500"),
            200,
            json!({"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {},
                   "items": [{"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "settings", "namespace": "pay", "uid": "u1", "labels": owned_labels("r1")}}]}),
        ),
        Expect {
            response: Some((
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "gone"}),
            )),
            ..Expect::delete(
                "/api/v1/namespaces/pay/configmaps/settings?",
                json!({"propagationPolicy": "Background", "preconditions": {"uid": "u1"}}),
            )
        },
    ]);
    let member = member(client);
    let report = apply::prune_all(
        &member,
        &rollout(),
        &[GroupVersionKind::gvk("", "v1", "ConfigMap")],
    )
    .await
    .expect("pruned");
    drop(member);
    finish(task).await;
    // Already gone is not an error, and not counted as pruned by us.
    assert!(report.pruned.is_empty());
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

// ---------------------------------------------------------------------------------------------
// Drift
// ---------------------------------------------------------------------------------------------

fn drift_scenario(action: DriftAction) -> Vec<Expect> {
    let desired = with_ownership(
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "api", "namespace": "pay"}, "spec": {"replicas": 3}}),
        "r1",
    );
    let mut live = deployment(5, 5);
    live["metadata"]["resourceVersion"] = json!("10");
    live["metadata"]["managedFields"] = json!([{"manager": "kubectl-edit"}]);
    let mut would = deployment(3, 5);
    would["metadata"]["resourceVersion"] = json!("10");
    would["metadata"]["generation"] = json!(3);
    let mut expected = vec![
        apps_v1(),
        core_v1(),
        Expect::get("/apis/apps/v1/namespaces/pay/deployments/api", 200, live),
        Expect::apply(
            "/apis/apps/v1/namespaces/pay/deployments/api?&dryRun=All&force=true&fieldManager=overseer-fleet",
            desired.clone(),
            would,
        ),
    ];
    if action == DriftAction::Correct {
        let mut corrected = deployment(3, 3);
        corrected["metadata"]["generation"] = json!(3);
        expected.push(Expect::apply(
            "/apis/apps/v1/namespaces/pay/deployments/api?&force=true&fieldManager=overseer-fleet",
            desired,
            corrected,
        ));
    }
    expected.push(Expect::get(
        "/api/v1/namespaces/pay/configmaps/settings",
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "gone"}),
    ));
    if action == DriftAction::Correct {
        expected.push(Expect::apply(
            "/api/v1/namespaces/pay/configmaps/settings?&force=true&fieldManager=overseer-fleet",
            with_ownership(config_map("settings"), "r1"),
            with_ownership(config_map("settings"), "r1"),
        ));
    }
    expected
}

async fn run_drift(action: DriftAction) -> apply::ApplyReport {
    let (client, task) = mock(drift_scenario(action));
    let member = member(client);
    let objects = vec![
        object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "api", "namespace": "pay"}, "spec": {"replicas": 3}})),
        object(config_map("settings")),
    ];
    let rollout = rollout();
    let report = apply::check_drift(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: true,
            prune_kinds: &[],
            gate: None,
        },
        action,
    )
    .await
    .expect("checked");
    drop(member);
    finish(task).await;
    report
}

/// `Report` lists drifted objects (a changed field found by a dry-run apply, a missing object)
/// and writes nothing.
#[tokio::test]
async fn drift_report_writes_nothing() {
    let report = run_drift(DriftAction::Report).await;
    assert_eq!(
        report
            .drifted
            .iter()
            .map(|d: &Drift| (d.object.to_string(), d.fields.clone(), d.corrected))
            .collect::<Vec<_>>(),
        [
            (
                "apps/v1/Deployment/pay/api".to_owned(),
                vec![".spec.replicas".to_owned()],
                false
            ),
            (
                "v1/ConfigMap/pay/settings".to_owned(),
                vec!["(missing)".to_owned()],
                false
            ),
        ]
    );
    assert!(report.applied.is_empty());
    let status = report.drifted_objects();
    assert_eq!(status[0].cluster, "edge-1");
    assert_eq!(status[0].object, "apps/v1/Deployment/pay/api");
    // Live health: the scaled-up deployment is current, the missing map is awaited.
    assert_eq!(report.health[0].health.status, HealthStatus::Current);
    assert_eq!(report.health[1].health.status, HealthStatus::InProgress);
}

/// `Correct` re-applies every drifted object and reports it corrected.
#[tokio::test]
async fn drift_correct_reapplies() {
    let report = run_drift(DriftAction::Correct).await;
    assert_eq!(report.drifted.len(), 2);
    assert!(report.drifted.iter().all(|d| d.corrected));
    assert_eq!(report.applied.len(), 2);
    assert!(report.drifted_objects().iter().all(|d| d.corrected));
    assert!(report.errors.is_empty());
}

/// An object that matches what we would apply is not drift.
#[tokio::test]
async fn no_drift_no_write() {
    let live = with_ownership(config_map("settings"), "r1");
    let (client, task) = mock(vec![
        core_v1(),
        Expect::get(
            "/api/v1/namespaces/pay/configmaps/settings",
            200,
            live.clone(),
        ),
        Expect::apply(
            "/api/v1/namespaces/pay/configmaps/settings?&dryRun=All&force=true&fieldManager=overseer-fleet",
            live.clone(),
            live,
        ),
    ]);
    let member = member(client);
    let objects = vec![object(config_map("settings"))];
    let rollout = rollout();
    let report = apply::check_drift(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: false,
            prune_kinds: &[],
            gate: None,
        },
        DriftAction::Correct,
    )
    .await
    .expect("checked");
    drop(member);
    finish(task).await;
    assert!(report.drifted.is_empty());
    assert!(report.applied.is_empty());
}

/// Health read back without writing: kstatus on the live objects.
#[tokio::test]
async fn health_is_read_back_from_live_objects() {
    let (client, task) = mock(vec![
        apps_v1(),
        Expect::get(
            "/apis/apps/v1/namespaces/pay/deployments/api",
            200,
            deployment(3, 1),
        ),
    ]);
    let member = member(client);
    let objects = vec![object(deployment(3, 0))];
    let rollout = rollout();
    let report = apply::read_health(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: false,
            prune_kinds: &[],
            gate: None,
        },
    )
    .await
    .expect("read");
    drop(member);
    finish(task).await;
    let health = report.cluster_health();
    assert_eq!(health.status, HealthStatus::InProgress);
    assert!(
        health.message.starts_with("apps/v1/Deployment/pay/api: "),
        "{}",
        health.message
    );
}

// ---------------------------------------------------------------------------------------------
// The member pool
// ---------------------------------------------------------------------------------------------

const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://edge.example:6443'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n";

fn fleet_cluster(name: &str) -> FleetCluster {
    FleetCluster::new(
        name,
        FleetClusterSpec {
            kubeconfig_secret_ref: NamespacedSecretKeyRef {
                name: "edge".into(),
                namespace: "fleet-system".into(),
                key: Some("kubeconfig".into()),
            },
            ..FleetClusterSpec::default()
        },
    )
}

fn secret_json(resource_version: &str) -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some("edge".into()),
            namespace: Some("fleet-system".into()),
            uid: Some("s1".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "kubeconfig".to_owned(),
                ByteString(KUBECONFIG.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    })
    .expect("secret")
}

/// Clients are cached per cluster and Secret version; a rotated Secret builds a new one; two
/// clusters registered with the same kubeconfig get one each; a deleted Secret drops the client.
#[tokio::test]
async fn the_pool_rebuilds_only_when_the_secret_changes() {
    const SECRET: &str = "/api/v1/namespaces/fleet-system/secrets/edge";
    let (hub, task) = mock(vec![
        Expect::get(SECRET, 200, secret_json("1")),
        Expect::get(SECRET, 200, secret_json("1")),
        Expect::get(SECRET, 200, secret_json("1")),
        Expect::get(SECRET, 200, secret_json("2")),
        Expect::get(
            SECRET,
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "gone"}),
        ),
    ]);
    let builds = Arc::new(AtomicUsize::new(0));
    let counter = builds.clone();
    let pool = MemberPool::new(hub).with_connector(Arc::new(
        move |cluster: &str, config: kube::Config| {
            counter.fetch_add(1, Ordering::SeqCst);
            assert_eq!(config.cluster_url.to_string(), "https://edge.example:6443/");
            assert_eq!(
                config.read_timeout,
                Some(fleet::member::DEFAULT_REQUEST_TIMEOUT)
            );
            let cluster = cluster.to_owned();
            Box::pin(async move {
                let (service, _) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
                let _ = cluster;
                Ok(Client::new(service, "default"))
            })
        },
    ));

    let a = pool.member(&fleet_cluster("edge-a")).await.expect("built");
    assert_eq!(a.name(), "edge-a");
    pool.member(&fleet_cluster("edge-a")).await.expect("cached");
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    // The same kubeconfig registered as a second member.
    let b = pool.member(&fleet_cluster("edge-b")).await.expect("built");
    assert_eq!(b.name(), "edge-b");
    assert_eq!((builds.load(Ordering::SeqCst), pool.len()), (2, 2));
    // Rotated.
    pool.member(&fleet_cluster("edge-a"))
        .await
        .expect("rebuilt");
    assert_eq!(builds.load(Ordering::SeqCst), 3);
    // Deleted.
    let err = pool
        .member(&fleet_cluster("edge-a"))
        .await
        .expect_err("missing");
    assert_eq!(err.reason(), "KubeconfigSecretNotFound");
    assert_eq!(
        err.to_string(),
        "cluster edge-a: kubeconfig Secret fleet-system/edge not found"
    );
    assert_eq!(pool.len(), 1);
    drop((pool, a, b));
    finish(task).await;
}

/// Discovery failing for one group-version (an aggregated API down) fails that group's objects
/// only; the rest is applied.
#[tokio::test]
async fn a_failing_discovery_fails_its_objects_only() {
    let (client, task) = mock(vec![
        Expect::get(
            "/apis/metrics.example.com/v1",
            503,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable", "message": "the server is currently unable to handle the request"}),
        ),
        core_v1(),
        Expect::apply(
            "/api/v1/namespaces/pay/configmaps/settings?&force=true&fieldManager=overseer-fleet",
            with_ownership(config_map("settings"), "r1"),
            with_ownership(config_map("settings"), "r1"),
        ),
    ]);
    let member = member(client);
    let objects = vec![
        object(
            json!({"apiVersion": "metrics.example.com/v1", "kind": "Probe", "metadata": {"name": "p", "namespace": "pay"}}),
        ),
        object(config_map("settings")),
    ];
    let rollout = rollout();
    let report = apply::apply(
        &member,
        &ApplyRequest {
            rollout: &rollout,
            revision: "r1",
            objects: &objects,
            prune: false,
            prune_kinds: &[],
            gate: None,
        },
    )
    .await
    .expect("delivered");
    drop(member);
    finish(task).await;
    assert_eq!(report.applied.len(), 1);
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0].to_string().starts_with(
            "metrics.example.com/v1/Probe/pay/p: discovery failed: cluster edge-1: request failed: "
        ),
        "{}",
        report.errors[0]
    );
}
