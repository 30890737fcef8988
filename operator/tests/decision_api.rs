//! The decision service's router, in process (`oneshot`): decisions with reasons, approvals,
//! usage, authentication, bad input as JSON 4xx, and one audit record per attempt.

use std::sync::Arc;

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use operator::decision::{
    self, DecisionMetrics, DecisionService, auth::Authenticator, catalog::PolicyCatalog,
    files::parse_policies,
};
use overseer_policy::{
    approvals::InMemoryApprovals,
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
    limits::{LimitState, LimitsConfig},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: finance, namespace: agents}
spec:
  subjects: {agentIds: ["finance-bot"]}
  tools:
    - {name: read, tools: ["read_*"], effect: Allow}
    - {name: pay, tools: ["pay"], effect: RequireApproval, reason: "payments need a human"}
    - {name: no-drop, tools: ["drop_*"], effect: Deny, reason: "never drop tables"}
  budgets:
    - {name: tokens, metric: Tokens, key: Agent, limit: 1000}
  approval:
    users: ["alice"]
"#;

const KEYS: &str = r#"
keys:
  - {name: gateway, role: gateway, key: "gateway-key-0123456789"}
  - {name: finance-bot, role: agent, agent: finance-bot, namespace: agents, key: "finance-key-0123456789"}
  - {name: other-bot, role: agent, agent: other-bot, namespace: agents, key: "other-bot-key-0123456789"}
  - {name: loose-bot, role: agent, agent: loose-bot, key: "loose-bot-key-0123456789"}
  - {name: alice, role: approver, key: "alice-key-0123456789ab"}
  - {name: mallory, role: approver, key: "mallory-key-0123456789"}
"#;

struct Fixture {
    service: Arc<DecisionService>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
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
        Arc::new(InMemoryApprovals::default()),
    ));
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit log"),
    );
    let service = Arc::new(DecisionService::new(
        engine,
        audit,
        Authenticator::from_yaml(KEYS).expect("keys"),
        DecisionMetrics::register(&mut Registry::default()),
    ));
    Fixture {
        service,
        audit_path,
        _dir: dir,
    }
}

async fn call(
    f: &Fixture,
    method: &str,
    uri: &str,
    key: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let response = decision::router(f.service.clone())
        .oneshot(request.body(body.into()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, value)
}

fn request(tool: &str) -> String {
    json!({"principal": {"id": "finance-bot", "namespace": "agents"}, "tool": tool, "arguments": {"amount": 5}}).to_string()
}

const GATEWAY: Option<&str> = Some("gateway-key-0123456789");

fn audit_lines(f: &Fixture) -> Vec<Value> {
    f.service.audit.flush().expect("flush");
    std::fs::read_to_string(&f.audit_path)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[tokio::test]
async fn decisions_name_their_rules_and_are_audited() {
    let f = fixture();
    let (status, allow) = call(&f, "POST", "/v1/decisions", GATEWAY, request("read_ledger")).await;
    assert_eq!(status, StatusCode::OK, "{allow}");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(allow["reasons"][0]["rule"], "read");
    assert!(
        allow["policyRevision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );

    let (_, deny) = call(&f, "POST", "/v1/decisions", GATEWAY, request("drop_table")).await;
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reasons"][0]["message"], "never drop tables");

    let (_, unknown) = call(&f, "POST", "/v1/decisions", GATEWAY, request("format_disk")).await;
    assert_eq!(unknown["decision"], "deny", "default deny");

    let records = audit_lines(&f);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["result"], "allow");
    assert_eq!(records[1]["result"], "deny");
    assert_eq!(records[0]["decision_id"], allow["decisionId"]);
    assert!(
        records[1]["prev_hash"] == records[0]["hash"],
        "records are chained"
    );
    assert!(
        records[0]["input"].get("arguments").is_none(),
        "raw arguments are never stored"
    );
    overseer_policy::audit::verify(&f.audit_path).expect("the chain verifies");
}

#[tokio::test]
async fn approval_flow_binds_to_the_exact_request_and_refuses_self_approval() {
    let f = fixture();
    let (_, pending) = call(&f, "POST", "/v1/decisions", GATEWAY, request("pay")).await;
    assert_eq!(pending["decision"], "require_approval", "{pending}");
    let id = pending["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned();

    // Approving needs an approver key; an agent key is refused.
    let (status, body) = call(
        &f,
        "POST",
        &format!("/v1/approvals/{id}/review"),
        Some("finance-key-0123456789"),
        r#"{"verdict":"Approve"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // An approver the policy does not list is refused.
    let (status, body) = call(
        &f,
        "POST",
        &format!("/v1/approvals/{id}/review"),
        Some("mallory-key-0123456789"),
        r#"{"verdict":"Approve"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "not_allowed");

    let (status, body) = call(
        &f,
        "POST",
        &format!("/v1/approvals/{id}/review"),
        Some("alice-key-0123456789ab"),
        r#"{"verdict":"Approve"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The same request is now allowed once; a different request is not covered.
    let different = json!({"principal": {"id": "finance-bot", "namespace": "agents"}, "tool": "pay", "arguments": {"amount": 6}}).to_string();
    let (_, other) = call(&f, "POST", "/v1/decisions", GATEWAY, different).await;
    assert_eq!(other["decision"], "require_approval");
    let (_, approved) = call(&f, "POST", "/v1/decisions", GATEWAY, request("pay")).await;
    assert_eq!(approved["decision"], "allow", "{approved}");
    let (_, again) = call(&f, "POST", "/v1/decisions", GATEWAY, request("pay")).await;
    assert_eq!(
        again["decision"], "require_approval",
        "approvals are single-use"
    );
}

#[tokio::test]
async fn agents_may_only_ask_for_themselves() {
    let f = fixture();
    let body = json!({"principal": {"id": "someone-else"}, "tool": "read_x"}).to_string();
    let (status, err) = call(
        &f,
        "POST",
        "/v1/decisions",
        Some("finance-key-0123456789"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["code"], "forbidden");
    let (status, _) = call(
        &f,
        "POST",
        "/v1/decisions",
        Some("finance-key-0123456789"),
        request("read_x"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_agent_key_cannot_borrow_another_namespace_account_or_identity() {
    let f = fixture();
    let finance = Some("finance-key-0123456789");
    // The key's namespace is filled in, so its namespace's policies govern it.
    let body = json!({"principal": {"id": "finance-bot"}, "tool": "read_x"}).to_string();
    let (status, allow) = call(&f, "POST", "/v1/decisions", finance, body).await;
    assert_eq!(status, StatusCode::OK, "{allow}");
    assert_eq!(allow["decision"], "allow", "{allow}");
    // Everything it could use to be governed by other policies is refused.
    for (principal, says) in [
        (
            json!({"id": "finance-bot", "namespace": "payments"}),
            "principal.namespace \"payments\" is not its own",
        ),
        (
            json!({"id": "finance-bot", "serviceAccount": "payments-admin"}),
            "principal.serviceAccount",
        ),
        (
            json!({"id": "finance-bot", "ephemeralIdentity": "task-42"}),
            "principal.ephemeralIdentity",
        ),
        (
            json!({"id": "finance-bot", "labels": {"tier": "trusted"}}),
            "principal.labels",
        ),
        (
            json!({"id": "finance-bot", "spiffeId": "spiffe://x/y"}),
            "principal.spiffeId",
        ),
        (
            json!({"id": "finance-bot", "kind": "ServiceAccount"}),
            "principal.kind",
        ),
    ] {
        let body = json!({"principal": principal, "tool": "read_x"}).to_string();
        let (status, err) = call(&f, "POST", "/v1/decisions", finance, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{principal}: {err}");
        assert!(
            err["message"].as_str().is_some_and(|m| m.contains(says)),
            "{principal}: {err}"
        );
    }
    // A key without a namespace may not name one: it would pick its own policies.
    let body = json!({"principal": {"id": "loose-bot", "namespace": "agents"}, "tool": "read_x"})
        .to_string();
    let (status, err) = call(
        &f,
        "POST",
        "/v1/decisions",
        Some("loose-bot-key-0123456789"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("add `namespace: agents`")),
        "{err}"
    );
    let refused = audit_lines(&f)
        .iter()
        .filter(|r| r["result"] == "deny")
        .count();
    assert_eq!(refused, 7, "every refusal is audited");
}

#[tokio::test]
async fn an_agent_commits_and_reads_only_its_own() {
    let f = fixture();
    let finance = Some("finance-key-0123456789");
    let other = Some("other-bot-key-0123456789");
    let body = json!({"principal": {"id": "finance-bot"}, "tool": "read_x", "usageEstimate": {"tokens": 100}}).to_string();
    let (_, allow) = call(&f, "POST", "/v1/decisions", finance, body).await;
    assert_eq!(allow["decision"], "allow", "{allow}");
    // Another agent naming this decision cannot spend finance-bot's budget.
    let usage = json!({"decisionId": allow["decisionId"], "tokens": 900}).to_string();
    let (status, err) = call(&f, "POST", "/v1/usage", other, usage).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("its own usage")),
        "{err}"
    );
    // The agent itself can.
    let usage = json!({"decisionId": allow["decisionId"], "tokens": 40}).to_string();
    let (status, report) = call(&f, "POST", "/v1/usage", finance, usage).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["adjusted"], 1);

    // An approval is visible to its agent, approvers and gateways — not to another agent.
    let (_, pending) = call(&f, "POST", "/v1/decisions", finance, request("pay")).await;
    let id = pending["approval"]["id"]
        .as_str()
        .expect("approval id")
        .to_owned();
    let path = format!("/v1/approvals/{id}");
    for (key, status) in [
        (finance, StatusCode::OK),
        (Some("alice-key-0123456789ab"), StatusCode::OK),
        (GATEWAY, StatusCode::OK),
        (other, StatusCode::NOT_FOUND),
    ] {
        let (got, body) = call(&f, "GET", &path, key, Body::empty()).await;
        assert_eq!(got, status, "{key:?}: {body}");
    }
}

#[tokio::test]
async fn a_wrong_method_or_an_unreadable_path_gets_a_json_4xx() {
    let f = fixture();
    let (status, err) = call(&f, "GET", "/v1/decisions", GATEWAY, Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{err}");
    assert_eq!(err["code"], "method_not_allowed");
    let (status, err) = call(&f, "GET", "/v1/approvals/%FF", GATEWAY, Body::empty()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["code"], "invalid_request");
    let (status, err) = call(
        &f,
        "POST",
        "/v1/approvals/%FF/review",
        Some("alice-key-0123456789ab"),
        r#"{"verdict":"Approve"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    // Authentication comes first: no key, no hint about the path.
    let (status, err) = call(&f, "GET", "/v1/approvals/%FF", None, Body::empty()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
}

#[tokio::test]
async fn bad_input_gets_json_4xx_and_is_audited() {
    let f = fixture();
    let cases: Vec<(Option<&str>, Body, StatusCode, &str)> = vec![
        (
            None,
            Body::from(request("read_x")),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            Some("wrong-key-0000000000"),
            Body::from(request("read_x")),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            GATEWAY,
            Body::from("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            GATEWAY,
            Body::from(r#"{"tool":"read_x"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            GATEWAY,
            Body::from(r#"{"principal":{"id":"a"},"tool":"x","surprise":1}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            GATEWAY,
            Body::from(r#"{"principal":{"id":""},"tool":"x"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_field",
        ),
        (
            GATEWAY,
            Body::from(vec![b' '; decision::MAX_BODY_BYTES + 1]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    let count = cases.len();
    for (key, body, status, code) in cases {
        let (got, err) = call(&f, "POST", "/v1/decisions", key, body).await;
        assert_eq!(got, status, "{err}");
        assert_eq!(err["code"], code, "{err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let records = audit_lines(&f);
    assert_eq!(records.len(), count, "every attempt is audited");
    assert!(
        records
            .iter()
            .all(|r| r["result"] == "malformed" || r["result"] == "deny")
    );
}

#[tokio::test]
async fn usage_commits_against_the_reservation_once() {
    let f = fixture();
    let body = json!({"principal": {"id": "finance-bot", "namespace": "agents"}, "tool": "read_x", "usageEstimate": {"tokens": 100}}).to_string();
    let (_, allow) = call(&f, "POST", "/v1/decisions", GATEWAY, body).await;
    assert_eq!(allow["decision"], "allow", "{allow}");
    let usage = json!({"decisionId": allow["decisionId"], "tokens": 40}).to_string();
    let (status, report) = call(&f, "POST", "/v1/usage", GATEWAY, usage.clone()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["adjusted"], 1);
    let (status, err) = call(&f, "POST", "/v1/usage", GATEWAY, usage).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let (status, _) = call(
        &f,
        "POST",
        "/v1/usage",
        GATEWAY,
        r#"{"decisionId":"not-a-uuid"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_openapi_document_is_served_and_committed() {
    let f = fixture();
    let (status, doc) = call(&f, "GET", "/openapi.json", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/decisions"]["post"].is_object());
    let committed_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi/decisions.json");
    let generated = decision::openapi::document_text();
    if std::env::var_os("OVERSEER_UPDATE_OPENAPI").is_some() {
        std::fs::create_dir_all(committed_path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&committed_path, generated).expect("write");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi/decisions.json is stale: run `OVERSEER_UPDATE_OPENAPI=1 cargo test -p operator --test decision_api` and commit"
    );
    let (status, err) = call(&f, "GET", "/nope", None, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["code"], "not_found");
}

/// Every example policy compiles, so the README's `overseer serve --policies examples/policies`
/// serves all of them.
#[test]
fn example_policies_all_compile() {
    use overseer_crds::agents::{AgentPolicy, ClusterAgentPolicy};
    use overseer_policy::compile::{NamespaceScope, PolicySource, compile};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");

    let mut catalog = PolicyCatalog::new();
    let mut dir = decision::files::PolicyDir::new(root.join("policies"));
    let errors = dir
        .load_into(&mut catalog)
        .expect("examples/policies is readable");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(catalog.len() >= 3);
    let rebuild = catalog.rebuild();
    let failed: Vec<_> = rebuild
        .reports
        .iter()
        .filter(|r| !r.is_ok())
        .map(|r| r.message())
        .collect();
    assert!(
        failed.is_empty(),
        "example policies do not compile:\n{}",
        failed.join("\n")
    );

    // The AgentPolicy / ClusterAgentPolicy samples too (namespace selectors resolved as "all").
    let mut sources = Vec::new();
    for file in decision::files::policy_files(&root.join("agentpolicy")).expect("samples") {
        let p: AgentPolicy =
            serde_yaml::from_str(&std::fs::read_to_string(&file).expect("read")).expect("parse");
        sources.push(PolicySource::namespaced(
            p.metadata.namespace.unwrap_or_default(),
            p.metadata.name.unwrap_or_default(),
            p.spec.policy,
        ));
    }
    for file in decision::files::policy_files(&root.join("clusteragentpolicy")).expect("samples") {
        let p: ClusterAgentPolicy =
            serde_yaml::from_str(&std::fs::read_to_string(&file).expect("read")).expect("parse");
        sources.push(PolicySource::cluster(
            p.metadata.name.unwrap_or_default(),
            NamespaceScope::All,
            p.spec.policy,
        ));
    }
    let compilation = compile(&sources);
    let failed: Vec<_> = compilation
        .reports
        .iter()
        .filter(|r| !r.is_ok())
        .map(|r| r.message())
        .collect();
    assert!(
        failed.is_empty(),
        "sample policies do not compile:\n{}",
        failed.join("\n")
    );
}
