//! The heartbeat against a mock hub and a mock member: the exact status patches and Events for a
//! reachable, a paused, an unreachable cluster and a missing kubeconfig Secret.

use std::{sync::Arc, time::Duration};

use fleet::member::{MemberError, MemberPool};
use http::{Request, Response};
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::version::Info, jiff::Timestamp,
};
use kube::{Client, api::ObjectMeta, client::Body, runtime::controller::Action};
use overseer_crds::{
    common::NamespacedSecretKeyRef,
    fleet::{FleetCluster, FleetClusterSpec, FleetClusterStatus},
};
use serde_json::{Value, json};

use super::reconcile::{
    CONDITION_REACHABLE, CONFIG_RETRY, DEFAULT_HEARTBEAT_PERIOD, FleetClusterContext,
    desired_status, heartbeat_at, heartbeat_period,
};
use crate::{
    controller::{
        Context, Diagnostics, EventRecorder,
        test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s},
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const SECRET_PATH: &str = "/api/v1/namespaces/fleet-system/secrets/edge-1-kubeconfig";
const STATUS_PATH: &str = "/apis/fleet.overseer.dev/v1alpha1/fleetclusters/edge-1/status?&force=true&fieldManager=overseer-fleetcluster-status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events?";
const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://edge-1.example:6443'}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n";

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn context(client: Client) -> Arc<Context> {
    let leader = LeaderState::fixed(true);
    Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: Readiness::new(),
        diagnostics: Diagnostics::default(),
    })
}

/// A state whose pool hands out `member` as the client of every cluster.
fn state(hub: Client, member: Client) -> FleetClusterContext {
    let pool = MemberPool::new(hub.clone()).with_connector(Arc::new(
        move |_cluster: &str, config: kube::Config| {
            assert_eq!(
                config.cluster_url.to_string(),
                "https://edge-1.example:6443/"
            );
            let member = member.clone();
            Box::pin(async move { Ok::<_, MemberError>(member) })
        },
    ));
    FleetClusterContext::new(context(hub), pool)
}

fn cluster(paused: bool) -> FleetCluster {
    let mut cluster = FleetCluster::new(
        "edge-1",
        FleetClusterSpec {
            kubeconfig_secret_ref: NamespacedSecretKeyRef {
                name: "edge-1-kubeconfig".into(),
                namespace: "fleet-system".into(),
                key: None,
            },
            paused,
            heartbeat_period: Some("30s".parse().expect("duration")),
        },
    );
    cluster.metadata.generation = Some(2);
    cluster.metadata.uid = Some("c-uid".into());
    cluster
}

fn secret() -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some("edge-1-kubeconfig".into()),
            namespace: Some("fleet-system".into()),
            uid: Some("s-uid".into()),
            resource_version: Some("5".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "value".to_owned(),
                ByteString(KUBECONFIG.as_bytes().to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    })
    .expect("secret")
}

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "abc",
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
           "compiler": "gc", "platform": "linux/amd64"})
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": 2, "lastTransitionTime": "2030-01-01T00:00:00Z"})
}

fn status_patch(status: Value) -> ExpectedRequest {
    ExpectedRequest::apply(
        STATUS_PATH,
        json!({"apiVersion": "fleet.overseer.dev/v1alpha1", "kind": "FleetCluster", "status": status}),
    )
    .respond(200, serde_json::to_value(cluster(false)).expect("cluster"))
}

fn event(type_: &str, reason: &str, note: &str) -> ExpectedRequest {
    ExpectedRequest::post_containing(
        EVENTS_PATH,
        json!({"type": type_, "reason": reason, "action": "Heartbeat", "note": note,
               "regarding": {"kind": "FleetCluster", "name": "edge-1"}}),
    )
    .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}))
}

async fn reachable_scenario(paused: bool, ready: Value) {
    let (hub, hub_verifier) = ApiServerVerifier::new();
    let (member, member_verifier) = ApiServerVerifier::new();
    let hub_scenario = hub_verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret()),
        status_patch(json!({
            "kubernetesVersion": "v1.33.1",
            "lastHeartbeatTime": "2030-01-01T00:00:00Z",
            "observedGeneration": 2,
            "conditions": [
                condition("Reachable", "True", "HeartbeatSucceeded", "the API server answered (v1.33.1)"),
                ready,
            ],
        })),
        event(
            "Normal",
            "HeartbeatSucceeded",
            "Reachable=True: the API server answered (v1.33.1)",
        ),
    ]);
    let member_scenario = member_verifier.run(vec![
        ExpectedRequest::get("/version").respond(200, version()),
    ]);
    let state = state(hub, member);
    let cluster = cluster(paused);
    let action = heartbeat_at(&cluster, &state, now()).await.expect("beat");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    // The status write wakes the controller again at once: no second heartbeat before it is due.
    let again = heartbeat_at(&cluster, &state, now())
        .await
        .expect("not due");
    assert_ne!(again, Action::requeue(Duration::from_secs(30)));
    drop(state);
    timeout_after_1s(hub_scenario).await;
    timeout_after_1s(member_scenario).await;
}

#[tokio::test]
async fn a_reachable_cluster_is_ready() {
    reachable_scenario(
        false,
        condition(
            "Ready",
            "True",
            "Ready",
            "the cluster is reachable and accepts deliveries",
        ),
    )
    .await;
}

#[tokio::test]
async fn a_paused_cluster_is_reachable_but_not_ready() {
    reachable_scenario(
        true,
        condition(
            "Ready",
            "False",
            "Paused",
            "spec.paused is true: deliveries to this cluster are frozen",
        ),
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_cluster_is_reported_and_the_heartbeat_ends() {
    let (hub, hub_verifier) = ApiServerVerifier::new();
    let (member, member_verifier) = ApiServerVerifier::new();
    let message = "cluster edge-1 is unreachable: connection refused";
    let hub_scenario = hub_verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret()),
        status_patch(json!({
            "observedGeneration": 2,
            "conditions": [
                condition("Reachable", "False", "Unreachable", message),
                condition("Ready", "False", "Unreachable", message),
            ],
        })),
        event(
            "Warning",
            "Unreachable",
            &format!("Reachable=False: {message}"),
        ),
    ]);
    let member_scenario = tokio::spawn(async move {
        let mut handle = std::pin::pin!(member_verifier.into_handle());
        let (request, send) = handle.next_request().await.expect("heartbeat");
        assert_eq!(request.uri().path(), "/version");
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert!(handle.next_request().await.is_none(), "one request only");
    });
    let state = state(hub, member);
    let action = heartbeat_at(&cluster(false), &state, now())
        .await
        .expect("beat");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    drop(state);
    timeout_after_1s(hub_scenario).await;
    timeout_after_1s(member_scenario).await;
}

#[tokio::test]
async fn a_silent_cluster_times_out_within_the_heartbeat_deadline() {
    let (hub, hub_verifier) = ApiServerVerifier::new();
    let (service, _silent) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let member = Client::new(service, "default");
    let message = "cluster edge-1 did not answer within 50ms";
    let hub_scenario = hub_verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret()),
        status_patch(json!({
            "observedGeneration": 2,
            "conditions": [
                condition("Reachable", "False", "TimedOut", message),
                condition("Ready", "False", "TimedOut", message),
            ],
        })),
        event(
            "Warning",
            "TimedOut",
            &format!("Reachable=False: {message}"),
        ),
    ]);
    let mut state = state(hub, member);
    state.heartbeat_timeout = Duration::from_millis(50);
    heartbeat_at(&cluster(false), &state, now())
        .await
        .expect("beat");
    drop(state);
    timeout_after_1s(hub_scenario).await;
}

#[tokio::test]
async fn a_missing_secret_is_named_and_retried_soon() {
    let (hub, hub_verifier) = ApiServerVerifier::new();
    let (member, member_verifier) = ApiServerVerifier::new();
    let message = "cluster edge-1: kubeconfig Secret fleet-system/edge-1-kubeconfig not found";
    let hub_scenario = hub_verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
        status_patch(json!({
            "observedGeneration": 2,
            "conditions": [
                condition("Reachable", "Unknown", "KubeconfigSecretNotFound", message),
                condition("Ready", "False", "KubeconfigSecretNotFound", message),
            ],
        })),
        event(
            "Warning",
            "KubeconfigSecretNotFound",
            &format!("Reachable=Unknown: {message}"),
        ),
    ]);
    let member_scenario = member_verifier.run(vec![]);
    let state = state(hub, member);
    let action = heartbeat_at(&cluster(false), &state, now())
        .await
        .expect("beat");
    assert_eq!(action, Action::requeue(CONFIG_RETRY));
    drop(state);
    timeout_after_1s(hub_scenario).await;
    timeout_after_1s(member_scenario).await;
}

#[test]
fn failures_keep_the_last_known_version_and_heartbeat() {
    let info: Info = serde_json::from_value(version()).expect("info");
    let spec = cluster(false).spec;
    let (up, transition) = desired_status(
        &FleetClusterStatus::default(),
        &spec,
        Some(1),
        &Ok(info),
        now(),
    );
    assert!(transition.is_transition());
    let later: Timestamp = "2030-01-01T00:05:00Z".parse().expect("timestamp");
    let down = MemberError::Unreachable {
        cluster: "edge-1".into(),
        message: "no route to host".into(),
    };
    let (status, transition) = desired_status(&up, &spec, Some(1), &Err(down), later);
    assert!(transition.is_transition());
    assert_eq!(status.kubernetes_version.as_deref(), Some("v1.33.1"));
    assert_eq!(
        status.last_heartbeat_time.as_deref(),
        Some("2030-01-01T00:00:00Z")
    );
    let reachable = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_REACHABLE)
        .expect("reachable");
    assert_eq!(reachable.status, "False");
    assert_eq!(reachable.last_transition_time.0, later);
}

#[test]
fn heartbeat_periods_default_and_stay_in_range() {
    let mut spec = cluster(false).spec;
    assert_eq!(heartbeat_period(&spec), Duration::from_secs(30));
    spec.heartbeat_period = None;
    assert_eq!(heartbeat_period(&spec), DEFAULT_HEARTBEAT_PERIOD);
    spec.heartbeat_period = Some("1ms".parse().expect("duration"));
    assert_eq!(heartbeat_period(&spec), Duration::from_secs(5));
    spec.heartbeat_period = Some("-10s".parse().expect("duration"));
    assert_eq!(heartbeat_period(&spec), DEFAULT_HEARTBEAT_PERIOD);
    spec.heartbeat_period = Some("48h".parse().expect("duration"));
    assert_eq!(heartbeat_period(&spec), Duration::from_secs(3600));
}
