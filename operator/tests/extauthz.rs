//! The Envoy ext_authz gRPC service, served by tonic on 127.0.0.1:0 and called with the
//! `envoy.service.auth.v3.Authorization` client generated from the same Envoy protos Envoy uses:
//! allow (headers upstream), deny (status, headers, JSON-RPC body), approval (id, then allowed
//! once approved), missing body, malformed JSON, unauthenticated, fail closed; every check
//! leaves exactly one audit record and the chain verifies.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse},
    pb::envoy::service::auth::v3::{
        AttributeContext,
        attribute_context::{HttpRequest, Request},
        authorization_client::AuthorizationClient,
    },
};
use operator::{
    decision::{auth::Authenticator, files::parse_policies},
    extauthz::{ExtAuthz, ExtAuthzConfig},
    gateway::decider::{Decider, LocalDecider, RemoteDecider, UNAVAILABLE},
};
use overseer_policy::compile::compile;
use overseer_policy::{
    approvals::InMemoryApprovals,
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
    limits::{LimitState, LimitsConfig},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: finance, namespace: agents}
spec:
  subjects: {agentIds: ["finance-bot"]}
  tools:
    - {name: read, tools: ["read_*"], server: ledger, effect: Allow}
    - {name: pay, tools: ["pay"], effect: RequireApproval, reason: "payments need a human"}
    - {name: no-drop, tools: ["drop_*"], effect: Deny, reason: "never drop tables"}
    - {name: api-reads, tools: ["GET /api/*"], effect: Allow}
  approval:
    users: ["alice"]
"#;

const KEYS: &str = r#"
keys:
  - {name: finance-bot, role: agent, agent: finance-bot, key: "finance-key-0123456789"}
  - {name: edge, role: gateway, key: "gateway-key-0123456789"}
  - {name: alice, role: approver, key: "alice-key-0123456789ab"}
"#;

const AGENT_KEY: &str = "Bearer finance-key-0123456789";

struct Fixture {
    client: AuthorizationClient<Channel>,
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn engine() -> Arc<Engine> {
    let compilation = compile(&parse_policies(POLICIES).expect("policies parse"));
    assert!(compilation.is_ok(), "{:?}", compilation.reports);
    Arc::new(Engine::with_state(
        compilation.compiled,
        Arc::new(LimitState::new(LimitsConfig::default())),
        Arc::new(InMemoryApprovals::default()),
    ))
}

/// Serve `service` on 127.0.0.1:0 and connect a client to it.
async fn serve(service: ExtAuthz) -> AuthorizationClient<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service.into_server())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .expect("server");
    });
    AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

async fn fixture_with(decider: Option<Arc<dyn Decider>>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit log"),
    );
    let decider =
        decider.unwrap_or_else(|| Arc::new(LocalDecider::new(engine.clone(), audit.clone())));
    let config = ExtAuthzConfig {
        default_server: Some("ledger".into()),
        agent_namespace: Some("agents".into()),
        ..ExtAuthzConfig::default()
    };
    let service = ExtAuthz::new(
        decider,
        Authenticator::from_yaml(KEYS).expect("keys"),
        config,
    );
    Fixture {
        client: serve(service).await,
        engine,
        audit,
        audit_path,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(None).await
}

fn check_request(
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
    raw: bool,
) -> CheckRequest {
    let mut headers = HashMap::from([
        ("content-type".to_owned(), "application/json".to_owned()),
        ("mcp-session-id".to_owned(), "session-1".to_owned()),
    ]);
    if let Some(a) = authorization {
        headers.insert("authorization".into(), a.into());
    }
    let mut http = HttpRequest {
        id: "req-1".into(),
        method: method.into(),
        path: path.into(),
        host: "tools.internal".into(),
        headers,
        ..HttpRequest::default()
    };
    if raw {
        http.raw_body = body.as_bytes().to_vec();
    } else {
        http.body = body.into();
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(http),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn tool_call(id: u64, tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
}

async fn check(f: &mut Fixture, request: CheckRequest) -> CheckResponse {
    f.client
        .check(request)
        .await
        .expect("the check RPC itself succeeds")
        .into_inner()
}

async fn mcp(f: &mut Fixture, body: &str) -> CheckResponse {
    check(
        f,
        check_request("POST", "/mcp", Some(AGENT_KEY), body, false),
    )
    .await
}

/// The gRPC status code of a check (0 is OK).
fn code(response: &CheckResponse) -> i32 {
    response.status.as_ref().map_or(-1, |s| s.code)
}

/// `(http status, headers, body as JSON)` of a denial.
fn denied(response: &CheckResponse) -> (i32, HashMap<String, String>, Value) {
    let Some(HttpResponse::DeniedResponse(d)) = &response.http_response else {
        panic!("not a denial: {response:?}")
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    let body = serde_json::from_str(&d.body).expect("the deny body is JSON");
    (d.status.as_ref().map_or(0, |s| s.code), headers, body)
}

/// `(headers sent upstream, headers removed, headers sent back)` of an allow.
fn allowed(
    response: &CheckResponse,
) -> (
    HashMap<String, String>,
    Vec<String>,
    HashMap<String, String>,
) {
    assert_eq!(code(response), 0, "{response:?}");
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("not an OK response: {response:?}")
    };
    let collect = |h: &[envoy_types::ext_authz::v3::pb::HeaderValueOption]| {
        h.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect::<HashMap<_, _>>()
    };
    (
        collect(&ok.headers),
        ok.headers_to_remove.clone(),
        collect(&ok.response_headers_to_add),
    )
}

fn audit_records(f: &Fixture) -> Vec<Value> {
    f.audit.flush().expect("flush");
    let records: Vec<Value> = std::fs::read_to_string(&f.audit_path)
        .expect("audit file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    overseer_policy::audit::verify(&f.audit_path).expect("the chain verifies");
    records
}

#[tokio::test]
async fn an_allowed_tool_call_passes_with_overseers_headers_and_without_the_agents_key() {
    let mut f = fixture().await;
    let response = mcp(
        &mut f,
        &tool_call(1, "read_ledger", json!({"month": "may"})),
    )
    .await;
    let (upstream, removed, back) = allowed(&response);
    assert_eq!(upstream["x-overseer-decision"], "allow");
    assert_eq!(upstream["x-overseer-agent"], "finance-bot");
    assert!(upstream["x-overseer-reasons"].contains("agents/finance#read"));
    assert_eq!(removed, ["authorization"]);
    let id = &upstream["x-overseer-decision-id"];
    assert_eq!(&back["x-overseer-decision-id"], id);

    let records = audit_records(&f);
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0]["decision_id"], id);
    assert_eq!(records[0]["result"], "allow");
    assert_eq!(records[0]["input"]["tool"], "read_ledger");
    assert_eq!(records[0]["input"]["server"], "ledger");
    assert_eq!(records[0]["input"]["principal"], "finance-bot");
    assert_eq!(records[0]["input"]["session"], "session-1");
}

#[tokio::test]
async fn a_denied_tool_call_gets_a_403_with_a_jsonrpc_error_carrying_the_reasons() {
    let mut f = fixture().await;
    let response = mcp(&mut f, &tool_call(42, "drop_users", json!({}))).await;
    assert_eq!(code(&response), tonic::Code::PermissionDenied as i32);
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(headers["x-overseer-decision"], "deny");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["x-overseer-reasons"].contains("never drop tables"));
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 42, "the JSON-RPC id is echoed");
    assert_eq!(body["error"]["code"], -32001);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("never drop tables")),
        "{body}"
    );
    assert_eq!(
        body["error"]["data"]["reasons"][0],
        "agents/finance#no-drop: never drop tables"
    );
    assert_eq!(
        body["error"]["data"]["decisionId"],
        headers["x-overseer-decision-id"]
    );

    // A tool no rule allows is denied by default, on the same path.
    let response = mcp(&mut f, &tool_call(43, "format_disk", json!({}))).await;
    let (status, _, body) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["data"]["decision"], "deny");
    let records = audit_records(&f);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["result"] == "deny"));
}

#[tokio::test]
async fn an_approval_required_call_carries_the_approval_id_and_passes_once_approved() {
    let mut f = fixture().await;
    let body = tool_call(7, "pay", json!({"amount": 120, "to": "acme"}));
    let response = mcp(&mut f, &body).await;
    let (status, headers, error) = denied(&response);
    assert_eq!(status, 403);
    assert_eq!(headers["x-overseer-decision"], "require_approval");
    let approval = error["error"]["data"]["approval"]["id"]
        .as_str()
        .expect("approval id in the body")
        .to_owned();
    assert_eq!(headers["x-overseer-approval-id"], approval);
    assert_eq!(error["error"]["code"], -32002);
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&approval))
    );

    // Another call (other arguments) is not covered by the approval.
    f.engine
        .approve(&approval, "alice", &[], chrono::Utc::now())
        .expect("alice approves");
    let other = mcp(
        &mut f,
        &tool_call(8, "pay", json!({"amount": 9999, "to": "acme"})),
    )
    .await;
    assert_eq!(denied(&other).1["x-overseer-decision"], "require_approval");
    // The same call now passes, once (raw body this time: pack_as_bytes).
    let again = check(
        &mut f,
        check_request("POST", "/mcp", Some(AGENT_KEY), &body, true),
    )
    .await;
    let (upstream, _, _) = allowed(&again);
    assert_eq!(upstream["x-overseer-decision"], "allow");
    let records = audit_records(&f);
    let results: Vec<&str> = records
        .iter()
        .filter_map(|r| r["result"].as_str())
        .collect();
    assert_eq!(results, ["require_approval", "require_approval", "allow"]);
}

#[tokio::test]
async fn a_post_without_its_body_is_denied_with_how_to_fix_envoy() {
    let mut f = fixture().await;
    let response = mcp(&mut f, "").await;
    assert_eq!(code(&response), tonic::Code::InvalidArgument as i32);
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 400);
    assert!(headers["x-overseer-reasons"].contains("with_request_body"));
    assert_eq!(body["error"]["data"]["code"], "missing_body");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("with_request_body")),
        "{body}"
    );
    let records = audit_records(&f);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["result"], "malformed");
    assert_eq!(records[0]["input"]["principal"], "finance-bot");
}

#[tokio::test]
async fn malformed_json_and_batches_are_denied_as_jsonrpc_errors() {
    let mut f = fixture().await;
    let response = mcp(&mut f, "{\"jsonrpc\": \"2.0\", \"method\": ").await;
    let (status, _, body) = denied(&response);
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32700);
    assert_eq!(body["id"], Value::Null);

    let batch = format!("[{}]", tool_call(1, "read_ledger", json!({})));
    let (_, _, body) = denied(&mcp(&mut f, &batch).await);
    assert_eq!(body["error"]["data"]["code"], "batch_not_supported");

    let (_, _, body) = denied(
        &mcp(
            &mut f,
            r#"{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"arguments":{}}}"#,
        )
        .await,
    );
    assert_eq!(body["error"]["code"], -32602);
    assert_eq!(body["id"], "x");

    let records = audit_records(&f);
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r["result"] == "malformed"));
}

#[tokio::test]
async fn unauthenticated_callers_get_a_401_and_are_audited() {
    let mut f = fixture().await;
    let body = tool_call(1, "read_ledger", json!({}));
    for authorization in [None, Some("Bearer not-a-key"), Some("Basic Zm9vOmJhcg==")] {
        let response = check(
            &mut f,
            check_request("POST", "/mcp", authorization, &body, false),
        )
        .await;
        assert_eq!(code(&response), tonic::Code::Unauthenticated as i32);
        let (status, headers, error) = denied(&response);
        assert_eq!(status, 401, "{authorization:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(error["error"]["data"]["code"], "unauthenticated");
    }
    // A gateway key must name the agent; an approver key may not call tools.
    let response = check(
        &mut f,
        check_request(
            "POST",
            "/mcp",
            Some("Bearer gateway-key-0123456789"),
            &body,
            false,
        ),
    )
    .await;
    assert_eq!(denied(&response).0, 401);
    let response = check(
        &mut f,
        check_request(
            "POST",
            "/mcp",
            Some("Bearer alice-key-0123456789ab"),
            &body,
            false,
        ),
    )
    .await;
    assert_eq!(denied(&response).0, 403);
    let mut named = check_request(
        "POST",
        "/mcp",
        Some("Bearer gateway-key-0123456789"),
        &body,
        false,
    );
    if let Some(http) = named
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers
            .insert("x-overseer-agent".into(), "finance-bot".into());
    }
    let (upstream, _, _) = allowed(&check(&mut f, named).await);
    assert_eq!(upstream["x-overseer-agent"], "finance-bot");

    let records = audit_records(&f);
    assert_eq!(records.len(), 6);
    assert!(records[..5].iter().all(|r| r["result"] == "deny"));
    assert_eq!(records[5]["result"], "allow");
}

#[tokio::test]
async fn plain_http_is_decided_as_method_and_path_and_mcp_protocol_messages_pass() {
    let mut f = fixture().await;
    let response = check(
        &mut f,
        check_request("GET", "/api/items?page=2", Some(AGENT_KEY), "", false),
    )
    .await;
    allowed(&response);
    let response = check(
        &mut f,
        check_request("DELETE", "/api/items/3", Some(AGENT_KEY), "", false),
    )
    .await;
    let (status, _, body) = denied(&response);
    assert_eq!(status, 403);
    assert!(body.get("jsonrpc").is_none(), "not MCP: a plain JSON body");
    assert_eq!(body["decision"], "deny");

    let response = mcp(
        &mut f,
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#,
    )
    .await;
    allowed(&response);
    let response = check(
        &mut f,
        check_request("GET", "/mcp", Some(AGENT_KEY), "", false),
    )
    .await;
    allowed(&response);

    let records = audit_records(&f);
    let tools: Vec<&str> = records
        .iter()
        .filter_map(|r| r["input"]["tool"].as_str())
        .collect();
    assert_eq!(
        tools,
        ["GET /api/items", "DELETE /api/items/3", "initialize", "GET"]
    );
    assert_eq!(records[0]["input"]["target"], "tools.internal");
}

async fn fail_closed_with(decider: RemoteDecider, audit: Arc<AuditLog>, path: &std::path::Path) {
    let mut f = fixture_with(Some(Arc::new(decider.with_audit(audit.clone())))).await;
    let response = mcp(&mut f, &tool_call(5, "read_ledger", json!({}))).await;
    assert_eq!(code(&response), tonic::Code::Unavailable as i32);
    let (status, headers, body) = denied(&response);
    assert_eq!(status, 503);
    assert_eq!(headers["x-overseer-decision"], "deny");
    assert_eq!(body["error"]["code"], -32004);
    assert_eq!(body["error"]["data"]["code"], UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("fail closed")),
        "{body}"
    );
    audit.flush().expect("flush");
    let records: Vec<Value> = std::fs::read_to_string(path)
        .expect("audit")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 1, "the fail-closed deny is audited");
    assert_eq!(records[0]["result"], "deny");
    assert_eq!(records[0]["input"]["tool"], "read_ledger");
    assert!(
        records[0]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with(UNAVAILABLE))
    );
}

fn local_audit(dir: &tempfile::TempDir) -> (Arc<AuditLog>, std::path::PathBuf) {
    let path = dir.path().join("ext-authz-audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&path)),
            ..AuditConfig::default()
        })
        .expect("audit"),
    );
    (audit, path)
}

#[tokio::test]
async fn an_unreachable_decision_service_denies_with_a_distinct_reason() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, path) = local_audit(&dir);
    let remote = RemoteDecider::new(
        &format!("http://{addr}"),
        Some("gateway-key-0123456789"),
        Duration::from_millis(500),
    )
    .expect("remote decider");
    fail_closed_with(remote, audit, &path).await;
}

#[tokio::test]
async fn a_decision_service_slower_than_the_deadline_denies_with_a_distinct_reason() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, path) = local_audit(&dir);
    let remote = RemoteDecider::new(&format!("http://{addr}"), None, Duration::from_millis(100))
        .expect("remote decider");
    let started = std::time::Instant::now();
    fail_closed_with(remote, audit, &path).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline bounds the wait"
    );
    hold.abort();
}

/// `request` with its `content-type` header replaced.
fn with_content_type(mut request: CheckRequest, content_type: &str) -> CheckRequest {
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers
            .insert("content-type".into(), content_type.into());
    }
    request
}

#[tokio::test]
async fn variants_of_an_mcp_path_are_decided_as_mcp_and_other_methods_on_it_are_denied() {
    let mut f = fixture().await;
    let paths = ["/MCP", "/mcp;x", "/mcp/", "/%6dcp", "//mcp", "/x/../mcp"];
    for path in paths {
        // Decided as the tool in the body (denied by policy), not as "POST <path>".
        let response = check(
            &mut f,
            check_request(
                "POST",
                path,
                Some(AGENT_KEY),
                &tool_call(9, "drop_users", json!({})),
                false,
            ),
        )
        .await;
        let (status, headers, body) = denied(&response);
        assert_eq!(status, 403, "{path}");
        assert!(
            headers["x-overseer-reasons"].contains("never drop tables"),
            "{path}: {headers:?}"
        );
        assert_eq!(body["id"], 9, "{path}: a JSON-RPC error: {body}");
        assert_eq!(body["error"]["code"], -32001, "{path}");
    }
    let methods = ["PUT", "PATCH", "HEAD", "OPTIONS", "TRACE"];
    for method in methods {
        let response = check(
            &mut f,
            check_request(method, "/Mcp/", Some(AGENT_KEY), "", false),
        )
        .await;
        assert_eq!(code(&response), tonic::Code::InvalidArgument as i32);
        let (status, headers, body) = denied(&response);
        assert_eq!(status, 405, "{method}");
        assert!(
            headers["x-overseer-reasons"].contains(method),
            "{headers:?}"
        );
        assert_eq!(body["error"]["data"]["code"], "method_not_allowed");
    }
    // GET and DELETE (the SSE stream, the end of a session) still pass on a variant.
    allowed(
        &check(
            &mut f,
            check_request("GET", "/MCP/", Some(AGENT_KEY), "", false),
        )
        .await,
    );
    let records = audit_records(&f);
    let tools: Vec<&str> = records[..paths.len()]
        .iter()
        .filter_map(|r| r["input"]["tool"].as_str())
        .collect();
    assert_eq!(tools, ["drop_users"; 6]);
    assert!(
        records[paths.len()..paths.len() + methods.len()]
            .iter()
            .all(|r| r["result"] == "malformed")
    );
}

#[tokio::test]
async fn a_body_another_parser_could_read_differently_is_denied() {
    let mut f = fixture().await;
    // Read as UTF-8 a ping (passed without a decision); read as UTF-7, as a TypeScript server
    // honouring the charset would, a tools/call of drop_users (`+ACIALAAi-` is `","`).
    let smuggled = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"name":"drop_users","arguments":{}},"x":"+ACIALAAi-method+ACIAOgAi-tools/call"}"#;
    let content_types = [
        "application/json; charset=utf-7",
        "application/json;charset=\"UTF-7\"",
        "text/plain",
        "application/json,application/json; charset=utf-7",
    ];
    for content_type in content_types {
        let request = with_content_type(
            check_request("POST", "/mcp", Some(AGENT_KEY), smuggled, false),
            content_type,
        );
        let (status, headers, body) = denied(&check(&mut f, request).await);
        assert_eq!(status, 415, "{content_type}");
        assert!(
            headers["x-overseer-reasons"].contains("application/json"),
            "{headers:?}"
        );
        assert_eq!(body["error"]["code"], -32600);
        assert_eq!(body["error"]["data"]["code"], "unsupported_media_type");
    }
    // UTF-8, spelled any way RFC 9110 allows, is read.
    let request = with_content_type(
        check_request(
            "POST",
            "/mcp",
            Some(AGENT_KEY),
            &tool_call(2, "read_ledger", json!({})),
            false,
        ),
        "Application/JSON ; charset=\"utf-8\"",
    );
    allowed(&check(&mut f, request).await);

    // Member names equal after case folding: one parser's tool is not another's.
    let colliding = [
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read_ledger","Name":"drop_users","arguments":{}}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping","Method":"tools/call","params":{"name":"drop_users"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"ping","method":"tools/call","params":{"name":"drop_users"}}"#,
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"read_ledger\",\"arguments\":{\"\u{212A}ey\":1,\"key\":2}}}",
    ];
    for body in colliding {
        let (status, _, error) = denied(&mcp(&mut f, body).await);
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"]["code"], -32600, "{body}");
        assert_eq!(
            error["error"]["data"]["code"], "colliding_members",
            "{body}"
        );
    }
    let records = audit_records(&f);
    let results: Vec<&str> = records
        .iter()
        .filter_map(|r| r["result"].as_str())
        .collect();
    assert_eq!(
        results,
        [
            "malformed",
            "malformed",
            "malformed",
            "malformed",
            "allow",
            "malformed",
            "malformed",
            "malformed",
            "malformed"
        ]
    );
}
