//! The router's in-cluster pieces, in process (`oneshot`) against a mock API server: TokenReview
//! authentication (401 / 403 / 503, audited), the identity gate, the admin kill switch and the
//! approval flow through `AgentApproval` objects.

use std::sync::{Arc, Mutex};

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use kube::Client;
use overseer_policy::{
    approvals::{ApprovalStore, InMemoryApprovals},
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
    limits::{LimitState, LimitsConfig},
    request::Principal,
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{
    DecisionMetrics, DecisionService,
    approvals::{KubeApprovals, KubeApprovalsConfig, STATUS_MANAGER},
    auth::{Authenticator, Caller},
    catalog::PolicyCatalog,
    files::parse_policies,
    gate::{GateReason, GateVerdict, IdentityRevoker, PrincipalGate, RevokeError},
    router,
    tokenreview::{RoleMapping, TokenReviewConfig, TokenReviewer},
};
use crate::controller::test_support::{
    ApiServerVerifier, BodyMatch, ExpectedRequest, timeout_after_1s,
};

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: finance, namespace: agents}
spec:
  subjects: {serviceAccounts: [{name: finance-bot}]}
  tools:
    - {name: read, tools: ["read_*"], effect: Allow}
    - {name: pay, tools: ["pay"], effect: RequireApproval, reason: "payments need a human"}
  approval:
    users: ["alice"]
"#;

const KEYS: &str = r#"
keys:
  - {name: gateway, role: gateway, key: "gateway-key-0123456789"}
  - {name: root, role: admin, key: "admin-key-0123456789ab"}
"#;

const REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews?";
const BOT: &str = "system:serviceaccount:agents:finance-bot";

struct Fixture {
    service: Arc<DecisionService>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture(
    client: Option<Client>,
    approvals: Option<Arc<dyn ApprovalStore>>,
    customize: impl FnOnce(DecisionService) -> DecisionService,
) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut catalog = PolicyCatalog::new();
    for source in parse_policies(POLICIES).expect("policies parse") {
        catalog.upsert(source);
    }
    let rebuild = catalog.rebuild();
    assert!(
        rebuild.reports.iter().all(|r| r.is_ok()),
        "{:?}",
        rebuild.reports
    );
    let engine = Arc::new(Engine::with_state(
        rebuild.compilation.compiled,
        Arc::new(LimitState::new(LimitsConfig::default())),
        approvals.unwrap_or_else(|| Arc::new(InMemoryApprovals::default())),
    ));
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit log"),
    );
    let mut service = DecisionService::new(
        engine,
        audit,
        Authenticator::from_yaml(KEYS).expect("keys"),
        DecisionMetrics::register(&mut Registry::default()),
    );
    if let Some(client) = client {
        service = service.with_token_review(TokenReviewer::new(
            client,
            TokenReviewConfig {
                audiences: vec!["overseer-decisions".into()],
                roles: RoleMapping {
                    approvers: vec!["finance-approvers".into()],
                    ..RoleMapping::default()
                },
                ..TokenReviewConfig::default()
            },
        ));
    }
    Fixture {
        service: Arc::new(customize(service)),
        audit_path,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    uri: &str,
    credential: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(c) = credential {
        request = request.header(header::AUTHORIZATION, format!("Bearer {c}"));
    }
    let response = router(f.service.clone())
        .oneshot(request.body(Body::from(body.to_string())).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn audit_lines(f: &Fixture) -> Vec<Value> {
    f.service.audit.flush().expect("flush");
    std::fs::read_to_string(&f.audit_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn review(token: &str) -> ExpectedRequest {
    ExpectedRequest::post_containing(
        REVIEW_PATH,
        json!({"spec": {"token": token, "audiences": ["overseer-decisions"]}}),
    )
}

fn accepted(username: &str, groups: &[&str]) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
           "status": {"authenticated": true, "audiences": ["overseer-decisions"],
                      "user": {"username": username, "groups": groups}}})
}

fn bot_request(tool: &str) -> Value {
    json!({"principal": {"id": BOT}, "tool": tool, "arguments": {"amount": 5}})
}

#[tokio::test]
async fn service_account_tokens_decide_only_for_themselves() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![review("bot-token").respond(201, accepted(BOT, &[]))]);
    let f = fixture(Some(client), None, |s| s);
    // namespace and serviceAccount are filled in from the token, so the policy governs it.
    let (status, allow) = call(
        &f,
        "/v1/decisions",
        Some("bot-token"),
        bot_request("read_ledger"),
    )
    .await;
    assert_eq!(
        (status, allow["decision"].as_str()),
        (StatusCode::OK, Some("allow")),
        "{allow}"
    );
    // Another principal, or a namespace that is not its own: 403, audited as forbidden.
    let (status, body) = call(
        &f,
        "/v1/decisions",
        Some("bot-token"),
        json!({"principal": {"id": "system:serviceaccount:agents:ceo-bot"}, "tool": "read_x"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(
        &f,
        "/v1/decisions",
        Some("bot-token"),
        json!({"principal": {"id": BOT, "namespace": "finance"}, "tool": "read_x"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not its own")),
        "{body}"
    );
    let lines = audit_lines(&f);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["result"], "allow");
    assert_eq!(lines[1]["result"], "deny");
    drop(f);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn refused_tokens_are_401_unknown_users_403_and_both_audited() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        review("stale").respond(
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                   "status": {"authenticated": false, "error": "token has been invalidated"}}),
        ),
        review("human").respond(201, accepted("bob@example.com", &["devs"])),
    ]);
    let f = fixture(Some(client), None, |s| s);
    let response = router(f.service.clone())
        .oneshot(
            Request::post("/v1/decisions")
                .header(header::AUTHORIZATION, "Bearer stale")
                .body(Body::from(bot_request("read_x").to_string()))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let body: Value = serde_json::from_slice(
        &to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(body["code"], "unauthenticated");
    assert!(body["decisionId"].is_string(), "{body}");
    let (status, body) = call(&f, "/v1/decisions", Some("human"), bot_request("read_x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "forbidden");
    let lines = audit_lines(&f);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["result"] == "deny"));
    let text = std::fs::read_to_string(&f.audit_path).expect("audit");
    assert!(
        !text.contains("stale") && !text.contains("\"human\""),
        "tokens never reach the audit log"
    );
    drop(f);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn token_review_failures_fail_closed_with_503() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![review("bot-token").respond(
        403,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
               "message": "tokenreviews.authentication.k8s.io is forbidden"}),
    )]);
    let f = fixture(Some(client), None, |s| s);
    let (status, body) = call(
        &f,
        "/v1/decisions",
        Some("bot-token"),
        bot_request("read_x"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "authentication_unavailable");
    let lines = audit_lines(&f);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["result"], "deny");
    assert!(
        lines[0]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("could not be reviewed"))
    );
    drop(f);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn api_keys_are_tried_before_any_token_review() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![]);
    let f = fixture(Some(client), None, |s| s);
    let (status, body) = call(
        &f,
        "/v1/decisions",
        Some("gateway-key-0123456789"),
        bot_request("read_x"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = call(&f, "/v1/decisions", None, bot_request("read_x")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    drop(f);
    timeout_after_1s(scenario).await;
}

/// A gate that closes for the principals it lists.
#[derive(Debug, Default)]
struct FakeGate {
    revoked: Vec<String>,
    asked: Mutex<Vec<(String, Option<String>)>>,
}

impl PrincipalGate for FakeGate {
    fn check(&self, caller: &Caller, principal: &Principal) -> GateVerdict {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((caller.name.clone(), principal.ephemeral_identity.clone()));
        }
        match &principal.ephemeral_identity {
            Some(eid) if self.revoked.contains(eid) => GateVerdict::Closed {
                reason: GateReason::Revoked,
                message: format!("EphemeralIdentity agents/{eid} was revoked"),
            },
            _ => GateVerdict::Open,
        }
    }
}

#[tokio::test]
async fn a_closed_gate_denies_before_any_policy() {
    let gate = Arc::new(FakeGate {
        revoked: vec!["task-42".into()],
        ..FakeGate::default()
    });
    let f = fixture(None, None, |s| s.with_gate(gate.clone()));
    let with_identity = |eid: &str| {
        json!({"principal": {"id": BOT, "namespace": "agents", "serviceAccount": "finance-bot",
                             "ephemeralIdentity": eid}, "tool": "read_ledger"})
    };
    let gw = Some("gateway-key-0123456789");
    let (status, deny) = call(&f, "/v1/decisions", gw, with_identity("task-42")).await;
    assert_eq!(status, StatusCode::OK, "{deny}");
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reasons"][0]["rule"], "identity-revoked");
    assert!(
        deny["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("task-42"))
    );
    // An identity the gate knows nothing against is decided by the policies.
    let (_, allow) = call(&f, "/v1/decisions", gw, with_identity("task-43")).await;
    assert_eq!(allow["decision"], "allow", "{allow}");
    let lines = audit_lines(&f);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["result"], "deny");
    assert_eq!(lines[0]["decision_id"], deny["decisionId"]);
    assert!(
        lines[0]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("identity-revoked: "))
    );
    let asked = gate.asked.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(
        asked,
        vec![
            ("gateway".into(), Some("task-42".into())),
            ("gateway".into(), Some("task-43".into()))
        ]
    );
}

/// A revoker that records what it was asked.
#[derive(Debug, Default)]
struct FakeRevoker {
    calls: Mutex<Vec<(Option<String>, String)>>,
}

impl IdentityRevoker for FakeRevoker {
    fn revoke_agent<'a>(
        &'a self,
        namespace: Option<&'a str>,
        agent: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<usize, RevokeError>> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((namespace.map(str::to_owned), agent.to_owned()));
        }
        Box::pin(async move {
            if agent == "broken" {
                Err(RevokeError::Failed("the API server is unreachable".into()))
            } else {
                Ok(2)
            }
        })
    }
}

#[tokio::test]
async fn the_kill_switch_needs_an_admin_and_a_cluster() {
    let admin = Some("admin-key-0123456789ab");
    // Standalone: no revoker.
    let f = fixture(None, None, |s| s);
    let (status, body) = call(
        &f,
        "/v1/admin/identities/revoke",
        admin,
        json!({"agent": "finance-bot"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["code"], "needs_cluster");

    let revoker = Arc::new(FakeRevoker::default());
    let f = fixture(None, None, |s| s.with_revoker(revoker.clone()));
    let (status, body) = call(
        &f,
        "/v1/admin/identities/revoke",
        Some("gateway-key-0123456789"),
        json!({"agent": "finance-bot"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = call(
        &f,
        "/v1/admin/identities/revoke",
        None,
        json!({"agent": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for bad in [
        json!({"agent": ""}),
        json!({"agent": "a", "namespace": "Not_A_Namespace"}),
    ] {
        let (status, body) = call(&f, "/v1/admin/identities/revoke", admin, bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let (status, body) = call(
        &f,
        "/v1/admin/identities/revoke",
        admin,
        json!({"agent": "a", "extra": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &f,
        "/v1/admin/identities/revoke",
        admin,
        json!({"agent": "finance-bot", "namespace": "agents"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"agent": "finance-bot", "namespace": "agents", "revoked": 2})
    );
    let (status, body) = call(
        &f,
        "/v1/admin/identities/revoke",
        admin,
        json!({"agent": "broken"}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let calls = revoker.calls.lock().map(|c| c.clone()).unwrap_or_default();
    assert_eq!(
        calls,
        vec![
            (Some("agents".into()), "finance-bot".into()),
            (None, "broken".into())
        ]
    );
    let lines = audit_lines(&f);
    assert_eq!(
        lines.len(),
        2,
        "only attempts that reached the revoker are audited"
    );
    assert_eq!(lines[0]["path"], super::REVOKE_AUDIT_PATH);
    assert_eq!(lines[0]["input"]["user"], "root");
    assert_eq!(lines[0]["result"], "allow");
    assert_eq!(lines[1]["result"], "deny");
}

#[tokio::test]
async fn approvals_in_a_cluster_are_agent_approvals_used_once() {
    let (client, verifier) = ApiServerVerifier::new();
    let mut handle = Box::pin(verifier.into_handle());
    let (store, _driver) = KubeApprovals::new(client, KubeApprovalsConfig::new("overseer-system"));
    let f = fixture(None, Some(store.clone()), |s| {
        s.with_approval_ledger(store.clone())
    });
    let gw = Some("gateway-key-0123456789");
    let pay = json!({"principal": {"id": BOT, "namespace": "agents", "serviceAccount": "finance-bot"},
                     "tool": "pay", "arguments": {"amount": 5}});
    let (status, first) = call(&f, "/v1/decisions", gw, pay.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["decision"], "require_approval");
    let id = first["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned();
    let object =
        format!("/apis/agents.overseer.dev/v1alpha1/namespaces/agents/agentapprovals/{id}");

    // The driver creates the object, then its Pending status.
    let create = tokio::spawn({
        let store = store.clone();
        let id = id.clone();
        async move { store.create(&id).await }
    });
    let (request, send) = handle.as_mut().next_request().await.expect("apply");
    assert_eq!(request.method(), "PATCH");
    assert_eq!(
        request.uri().to_string(),
        format!("{object}?&force=true&fieldManager=overseer-decision-approvals")
    );
    let body: Value =
        serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body"))
            .expect("json");
    assert_eq!(body["spec"]["principal"]["username"], BOT);
    assert_eq!(body["spec"]["tool"], "pay");
    assert_eq!(body["spec"]["approverUsers"], json!(["alice"]));
    assert_eq!(body["spec"]["decisionId"], first["decisionId"]);
    let mut created = body.clone();
    created["metadata"]["resourceVersion"] = json!("1");
    send.send_response(http::Response::new(kube::client::Body::from(
        serde_json::to_vec(&created).expect("json"),
    )));
    let (request, send) = handle.as_mut().next_request().await.expect("status");
    assert_eq!(
        request.uri().to_string(),
        format!("{object}/status?&fieldManager={STATUS_MANAGER}")
    );
    let body: Value =
        serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body"))
            .expect("json");
    assert_eq!(
        body,
        json!({"metadata": {"resourceVersion": "1"}, "status": {"phase": "Pending"}})
    );
    created["metadata"]["resourceVersion"] = json!("2");
    send.send_response(http::Response::new(kube::client::Body::from(
        serde_json::to_vec(&created).expect("json"),
    )));
    create.await.expect("created");

    // Asking again finds the same pending approval.
    let (_, again) = call(&f, "/v1/decisions", gw, pay.clone()).await;
    assert_eq!(again["approval"]["id"], id.as_str());

    // alice approves with kubectl; the watch brings the object (status already recorded).
    let mut reviewed = created.clone();
    reviewed["metadata"]["resourceVersion"] = json!("3");
    reviewed["spec"]["review"] = json!({"decision": "Approved", "reviewer": "alice"});
    reviewed["status"] = json!({"phase": "Approved", "reviewedBy": "alice"});
    let reviewed_object = serde_json::from_value(reviewed.clone()).expect("object");
    assert!(
        store
            .observe(&reviewed_object, chrono::Utc::now())
            .is_none()
    );

    // The approved call is allowed once the use is recorded at the API server.
    let decide = tokio::spawn({
        let service = f.service.clone();
        let pay = pay.clone();
        async move {
            router(service)
                .oneshot(
                    Request::post("/v1/decisions")
                        .header(header::AUTHORIZATION, "Bearer gateway-key-0123456789")
                        .body(Body::from(pay.to_string()))
                        .expect("request"),
                )
                .await
                .expect("response")
        }
    });
    let (request, send) = handle.as_mut().next_request().await.expect("consume");
    assert_eq!(
        request.uri().to_string(),
        format!("{object}/status?&fieldManager={STATUS_MANAGER}")
    );
    let body: Value =
        serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body"))
            .expect("json");
    assert_eq!(body["metadata"], json!({"resourceVersion": "3"}));
    assert_eq!(body["status"]["phase"], "Consumed");
    assert_eq!(body["status"]["reviewedBy"], "alice");
    reviewed["metadata"]["resourceVersion"] = json!("4");
    reviewed["status"] = json!({"phase": "Consumed"});
    send.send_response(http::Response::new(kube::client::Body::from(
        serde_json::to_vec(&reviewed).expect("json"),
    )));
    let response = decide.await.expect("decided");
    let allow: Value = serde_json::from_slice(
        &to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body"),
    )
    .expect("json");
    assert_eq!(allow["decision"], "allow", "{allow}");
    assert_eq!(allow["reasons"][0]["code"], "approval_granted");

    // Used: the same request needs a new approval (which is queued for creation).
    let (_, third) = call(&f, "/v1/decisions", gw, pay.clone()).await;
    assert_eq!(third["decision"], "require_approval");
    assert_ne!(third["approval"]["id"], id.as_str());
}

#[tokio::test]
async fn a_use_another_replica_recorded_first_is_denied() {
    let (client, verifier) = ApiServerVerifier::new();
    let (store, _driver) = KubeApprovals::new(client, KubeApprovalsConfig::new("overseer-system"));
    let f = fixture(None, Some(store.clone()), |s| {
        s.with_approval_ledger(store.clone())
    });
    let gw = Some("gateway-key-0123456789");
    let pay = json!({"principal": {"id": BOT, "namespace": "agents", "serviceAccount": "finance-bot"},
                     "tool": "pay", "arguments": {"amount": 5}});
    let (_, first) = call(&f, "/v1/decisions", gw, pay.clone()).await;
    let id = first["approval"]["id"].as_str().expect("id").to_owned();
    let approval = store.get(&id, chrono::Utc::now()).expect("opened");
    let mut object =
        serde_json::to_value(super::approvals::approval_object(&approval, "agents")).expect("json");
    object["metadata"]["resourceVersion"] = json!("7");
    object["spec"]["review"] = json!({"decision": "Approved", "reviewer": "alice"});
    object["status"] = json!({"phase": "Approved", "reviewedBy": "alice"});
    store.observe(
        &serde_json::from_value(object.clone()).expect("object"),
        chrono::Utc::now(),
    );
    let path: &'static str = Box::leak(
        format!("/apis/agents.overseer.dev/v1alpha1/namespaces/agents/agentapprovals/{id}/status?&fieldManager={STATUS_MANAGER}")
            .into_boxed_str(),
    );
    let get: &'static str = Box::leak(
        format!("/apis/agents.overseer.dev/v1alpha1/namespaces/agents/agentapprovals/{id}")
            .into_boxed_str(),
    );
    let mut consumed = object.clone();
    consumed["metadata"]["resourceVersion"] = json!("8");
    consumed["status"] = json!({"phase": "Consumed", "reviewedBy": "alice"});
    let scenario = verifier.run(vec![
        ExpectedRequest {
            content_type: Some("application/merge-patch+json"),
            body: BodyMatch::Contains(json!({"metadata": {"resourceVersion": "7"}, "status": {"phase": "Consumed"}})),
            ..ExpectedRequest::new("PATCH", path)
        }
        .respond(409, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"})),
        ExpectedRequest::get(get).respond(200, consumed),
    ]);
    let (status, deny) = call(&f, "/v1/decisions", gw, pay).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["reasons"][0]["rule"], id.as_str());
    assert!(
        deny["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already used"))
    );
    let lines = audit_lines(&f);
    assert_eq!(
        lines.last().map(|l| l["result"].clone()),
        Some(json!("deny"))
    );
    drop(f);
    drop(store);
    drop(_driver);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn permitted_tools_are_what_the_principal_may_ever_call() {
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![review("bot-token").respond(201, accepted(BOT, &[]))]);
    let gate = Arc::new(FakeGate {
        revoked: vec!["task-42".into()],
        ..FakeGate::default()
    });
    let f = fixture(Some(client), None, |s| s.with_gate(gate.clone()));
    let listed = json!(["read_ledger", "pay", "delete_ledger", "read_mail"]);
    let ask =
        |principal: Value| json!({"principal": principal, "server": "ledger", "tools": listed});
    let bot = json!({"id": BOT, "namespace": "agents", "serviceAccount": "finance-bot"});
    let gw = Some("gateway-key-0123456789");

    // Allowed and approval-gated tools are kept, in the order asked; the rest are not.
    let (status, body) = call(&f, "/v1/tools/permitted", gw, ask(bot.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tools"], json!(["read_ledger", "pay", "read_mail"]));
    assert!(
        body["policyRevision"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{body}"
    );
    // A principal no policy governs may call nothing.
    let (_, body) = call(
        &f,
        "/v1/tools/permitted",
        gw,
        ask(json!({"id": "stranger"})),
    )
    .await;
    assert_eq!(body["tools"], json!([]), "{body}");
    // An identity the gate shuts out may call nothing either.
    let mut revoked = bot.clone();
    revoked["ephemeralIdentity"] = json!("task-42");
    let (status, body) = call(&f, "/v1/tools/permitted", gw, ask(revoked)).await;
    assert_eq!(
        (status, body["tools"].clone()),
        (StatusCode::OK, json!([])),
        "{body}"
    );

    // A ServiceAccount asks for itself (namespace and serviceAccount come from its token)...
    let (status, body) = call(
        &f,
        "/v1/tools/permitted",
        Some("bot-token"),
        ask(json!({"id": BOT})),
    )
    .await;
    assert_eq!(
        (status, body["tools"].clone()),
        (StatusCode::OK, json!(["read_ledger", "pay", "read_mail"])),
        "{body}"
    );
    // ...and for no one else.
    let (status, body) = call(
        &f,
        "/v1/tools/permitted",
        Some("bot-token"),
        ask(json!({"id": "system:serviceaccount:agents:ceo-bot"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{body}"
    );

    // Bad requests are JSON 4xx saying what to fix.
    let (status, body) = call(&f, "/v1/tools/permitted", None, ask(bot.clone())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(
        &f,
        "/v1/tools/permitted",
        gw,
        json!({"principal": bot, "tool": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request")),
        "{body}"
    );
    let many: Vec<String> = (0..=super::MAX_PERMITTED_TOOLS)
        .map(|i| format!("t{i}"))
        .collect();
    let (status, body) = call(
        &f,
        "/v1/tools/permitted",
        gw,
        json!({"principal": {"id": BOT}, "tools": many}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("too_many_tools")),
        "{body}"
    );
    // Asking is not a decision: nothing is audited.
    assert!(audit_lines(&f).is_empty());
    drop(f);
    timeout_after_1s(scenario).await;
}
