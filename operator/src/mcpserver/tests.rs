//! The check against a mock API server: the exact Secret read, status patch and Event for a
//! server that is ready, one whose Secret or key is missing, one without a credential, one
//! whose status is already current, a follower, and a Secret the operator may not read.

use std::sync::Arc;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{Client, api::ObjectMeta, runtime::controller::Action};
use overseer_crds::{
    agents::{MCPServer, MCPServerCredential, MCPServerSpec, MCPServerStatus, MCPServerTLS},
    common::SecretKeyRef,
};
use serde_json::{Value, json};

use super::reconcile::{NOT_READY_RECHECK, READY_RECHECK, check_at, desired_status, reconcile};
use crate::{
    controller::{
        Context, Diagnostics, EventRecorder,
        test_support::{
            ApiServerVerifier, ExpectedRequest, ca_pem, client_certificate, timeout_after_1s,
        },
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const SECRET_PATH: &str = "/api/v1/namespaces/tools/secrets/github-token";
const STATUS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/namespaces/tools/mcpservers/github/status?&force=true&fieldManager=overseer-mcpserver-status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/tools/events?";
/// The credential: it must never appear in any request the controller makes.
const VALUE: &str = "hunter2-upstream-token";

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn context(client: Client, leader: bool) -> Arc<Context> {
    let leader = LeaderState::fixed(leader);
    Arc::new(Context {
        recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: Readiness::new(),
        diagnostics: Diagnostics::default(),
    })
}

fn server(credential: bool) -> MCPServer {
    let mut server = MCPServer::new(
        "github",
        MCPServerSpec {
            url: "http://github-mcp.mcp-servers.svc:8080/mcp".into(),
            agents: vec!["support-bot-*".into()],
            timeout_seconds: Some(30),
            credential: credential.then(|| MCPServerCredential {
                secret_ref: SecretKeyRef {
                    name: "github-token".into(),
                    key: "token".into(),
                },
                header: None,
                prefix: Some("Bearer ".into()),
            }),
            tls: None,
        },
    );
    server.metadata.namespace = Some("tools".into());
    server.metadata.generation = Some(3);
    server.metadata.uid = Some("m-uid".into());
    server
}

fn secret(key: &str) -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some("github-token".into()),
            namespace: Some("tools".into()),
            resource_version: Some("9".into()),
            ..ObjectMeta::default()
        },
        data: Some([(key.to_owned(), ByteString(VALUE.as_bytes().to_vec()))].into()),
        ..Secret::default()
    })
    .expect("secret")
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
           "code": 404, "message": "secrets \"github-token\" not found"})
}

fn ready(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
           "observedGeneration": 3, "lastTransitionTime": "2030-01-01T00:00:00Z"})
}

const ACCEPTED: &str = "URL, agents, credential and TLS settings are valid: gateways watching this namespace serve it at /mcp/github";

fn status_patch(condition: Value) -> ExpectedRequest {
    ExpectedRequest::apply(
        STATUS_PATH,
        json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "MCPServer",
               "status": {"observedGeneration": 3, "conditions": [condition]}}),
    )
    .respond(200, serde_json::to_value(server(true)).expect("server"))
}

fn event(type_: &str, reason: &str, note: &str) -> ExpectedRequest {
    ExpectedRequest::post_containing(
        EVENTS_PATH,
        json!({"type": type_, "reason": reason, "action": "Validate", "note": note,
               "regarding": {"kind": "MCPServer", "name": "github", "namespace": "tools"}}),
    )
    .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}))
}

#[tokio::test]
async fn a_server_whose_secret_has_the_key_is_accepted() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret("token")),
        status_patch(ready("True", "Accepted", ACCEPTED)),
        event("Normal", "Accepted", &format!("Ready=True: {ACCEPTED}")),
    ]);
    let ctx = context(client, true);
    let action = check_at(&server(true), &ctx, now()).await.expect("checked");
    assert_eq!(action, Action::requeue(READY_RECHECK));
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_missing_secret_or_key_is_named_and_checked_again_soon() {
    for (answer, message) in [
        (
            (404, not_found()),
            "credential Secret tools/github-token not found; create it with the key \"token\"",
        ),
        (
            (200, secret("password")),
            "credential Secret tools/github-token has no key \"token\"",
        ),
    ] {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::get(SECRET_PATH).respond(answer.0, answer.1),
            status_patch(ready("False", "CredentialMissing", message)),
            event(
                "Warning",
                "CredentialMissing",
                &format!("Ready=False: {message}"),
            ),
        ]);
        let ctx = context(client, true);
        let action = check_at(&server(true), &ctx, now()).await.expect("checked");
        assert_eq!(action, Action::requeue(NOT_READY_RECHECK));
        drop(ctx);
        timeout_after_1s(scenario).await;
    }
}

#[tokio::test]
async fn a_server_without_a_credential_reads_no_secret() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        status_patch(ready("True", "Accepted", ACCEPTED)),
        event("Normal", "Accepted", &format!("Ready=True: {ACCEPTED}")),
    ]);
    let ctx = context(client, true);
    check_at(&server(false), &ctx, now())
        .await
        .expect("checked");
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_current_status_is_not_written_again() {
    let (client, verifier) = ApiServerVerifier::new();
    // Only the Secret is read: no status patch, no Event.
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret("token")),
    ]);
    let mut current = server(true);
    current.status = Some(MCPServerStatus {
        observed_generation: Some(3),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            message: ACCEPTED.into(),
            observed_generation: Some(3),
            last_transition_time: Time("2029-06-01T00:00:00Z".parse().expect("time")),
        }],
    });
    let ctx = context(client, true);
    check_at(&current, &ctx, now()).await.expect("checked");
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn followers_check_nothing() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![]);
    let ctx = context(client, false);
    let action = reconcile(Arc::new(server(true)), ctx.clone())
        .await
        .expect("skipped");
    assert_eq!(action, Action::await_change());
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_secret_the_operator_may_not_read_is_a_reconcile_error() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
                   "code": 403, "message": "secrets \"github-token\" is forbidden"}),
        ),
        // `reconcile` reports the failure as a Warning Event; no status is written.
        ExpectedRequest::post_containing(
            EVENTS_PATH,
            json!({"type": "Warning", "reason": "ApiForbidden", "action": "Reconcile"}),
        )
        .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
    ]);
    let ctx = context(client, true);
    let err = reconcile(Arc::new(server(true)), ctx.clone())
        .await
        .expect_err("forbidden");
    assert_eq!(err.metric_label(), "kube_api_forbidden");
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[test]
fn ready_keeps_its_transition_time_until_it_changes() {
    let ok: std::result::Result<(), _> = Ok(());
    let (first, transition) =
        desired_status(&MCPServerStatus::default(), Some(1), "github", &ok, now());
    assert!(transition.is_transition());
    let later: Timestamp = "2030-01-02T00:00:00Z".parse().expect("timestamp");
    let (same, transition) = desired_status(&first, Some(2), "github", &ok, later);
    assert!(!transition.is_transition());
    assert_eq!(same.observed_generation, Some(2));
    assert_eq!(same.conditions[0].last_transition_time.0, now());
    let missing = Err(crate::gateway::routes::Unavailable::new(
        "CredentialMissing",
        "credential Secret tools/x not found",
    ));
    let (down, transition) = desired_status(&same, Some(2), "github", &missing, later);
    assert!(transition.is_transition());
    assert_eq!(down.conditions[0].status, "False");
    assert_eq!(down.conditions[0].last_transition_time.0, later);
}

const CA_PATH: &str = "/api/v1/namespaces/tools/secrets/github-ca";

/// `server(true)` at an https:// URL verified against key `ca.crt` of Secret `ca_secret`.
fn tls_server(ca_secret: &str) -> MCPServer {
    let mut s = server(true);
    s.spec.url = "https://github-mcp.mcp-servers.svc:8443/mcp".into();
    s.spec.tls = Some(MCPServerTLS {
        ca_secret_ref: Some(SecretKeyRef {
            name: ca_secret.into(),
            key: "ca.crt".into(),
        }),
        client_certificate_secret_name: None,
    });
    s
}

fn secret_named(name: &str, data: &[(&str, &[u8])]) -> Value {
    serde_json::to_value(Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("tools".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Secret::default()
    })
    .expect("secret")
}

#[tokio::test]
async fn a_server_with_its_ca_in_another_secret_reads_both_and_is_accepted() {
    let pem = ca_pem();
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret("token")),
        ExpectedRequest::get(CA_PATH).respond(
            200,
            secret_named("github-ca", &[("ca.crt", pem.as_bytes())]),
        ),
        status_patch(ready("True", "Accepted", ACCEPTED)),
        event("Normal", "Accepted", &format!("Ready=True: {ACCEPTED}")),
    ]);
    let ctx = context(client, true);
    let action = check_at(&tls_server("github-ca"), &ctx, now())
        .await
        .expect("checked");
    assert_eq!(action, Action::requeue(READY_RECHECK));
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_credential_and_ca_in_one_secret_are_read_with_one_get() {
    let pem = ca_pem();
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(
            200,
            secret_named(
                "github-token",
                &[("token", VALUE.as_bytes()), ("ca.crt", pem.as_bytes())],
            ),
        ),
        status_patch(ready("True", "Accepted", ACCEPTED)),
        event("Normal", "Accepted", &format!("Ready=True: {ACCEPTED}")),
    ]);
    let ctx = context(client, true);
    check_at(&tls_server("github-token"), &ctx, now())
        .await
        .expect("checked");
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn a_missing_or_unusable_ca_is_named_with_its_own_reason() {
    for (answer, reason, message) in [
        (
            (404, not_found()),
            "CAMissing",
            "CA Secret tools/github-ca not found; create it with the key \"ca.crt\"".to_owned(),
        ),
        (
            (
                200,
                secret_named("github-ca", &[("ca.crt", b"not a certificate")]),
            ),
            "CAInvalid",
            "spec.tls.caSecretRef: key \"ca.crt\" of Secret tools/github-ca holds no PEM \
             certificate (-----BEGIN CERTIFICATE-----)"
                .to_owned(),
        ),
    ] {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            ExpectedRequest::get(SECRET_PATH).respond(200, secret("token")),
            ExpectedRequest::get(CA_PATH).respond(answer.0, answer.1),
            status_patch(ready("False", reason, &message)),
            event("Warning", reason, &format!("Ready=False: {message}")),
        ]);
        let ctx = context(client, true);
        let action = check_at(&tls_server("github-ca"), &ctx, now())
            .await
            .expect("checked");
        assert_eq!(action, Action::requeue(NOT_READY_RECHECK));
        drop(ctx);
        timeout_after_1s(scenario).await;
    }
}

#[tokio::test]
async fn a_client_certificate_is_read_from_its_tls_secret_once() {
    let (cert, key) = client_certificate();
    let mut server = tls_server("github-ca");
    if let Some(tls) = &mut server.spec.tls {
        tls.ca_secret_ref = None;
        tls.client_certificate_secret_name = Some("github-client".into());
    }
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::get(SECRET_PATH).respond(200, secret("token")),
        ExpectedRequest::get("/api/v1/namespaces/tools/secrets/github-client").respond(
            200,
            secret_named(
                "github-client",
                &[("tls.crt", cert.as_bytes()), ("tls.key", key.as_bytes())],
            ),
        ),
        status_patch(ready("True", "Accepted", ACCEPTED)),
        event("Normal", "Accepted", &format!("Ready=True: {ACCEPTED}")),
    ]);
    let ctx = context(client, true);
    check_at(&server, &ctx, now()).await.expect("checked");
    drop(ctx);
    timeout_after_1s(scenario).await;
}
