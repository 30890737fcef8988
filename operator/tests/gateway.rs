//! The MCP gateway in-process: a real fake MCP server on 127.0.0.1 behind the gateway's router,
//! driven with `oneshot`. Allow, deny, approval, tools/list filtering, session binding,
//! fail-closed decisions, upstream failures and bad input — each audited.

// Shared with gateway_mcpservers.rs, which also counts handshakes.
#[path = "support/https.rs"]
#[allow(dead_code)]
mod https;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, to_bytes},
    extract::State,
    http::{HeaderMap, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::Utc;
use clap::Parser as _;
use operator::{
    decision::{auth::Authenticator, files::parse_policies},
    gateway::{
        config::GatewayConfig,
        decider::{Decider, LocalDecider, RemoteDecider, UNAVAILABLE},
        jsonrpc,
        metrics::GatewayMetrics,
        proxy::{Gateway, router},
        tls::ClientCache,
    },
};
use overseer_policy::compile::compile;
use overseer_policy::{
    approvals::Verdict as Review,
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
    limits::{BudgetMetric, CounterKey, Subject},
};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// `overseer serve`'s flags, parsed as the command line would.
#[derive(clap::Parser)]
struct ServeWrapper {
    #[command(flatten)]
    serve: operator::decision::standalone::ServeArgs,
}

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: bots, namespace: default}
spec:
  mode: Enforce
  subjects:
    agentIds: ["bot-*"]
  tools:
    - {name: reads, tools: ["echo", "slow"], effect: Allow, reason: "bots may echo"}
    - {name: refunds, tools: ["refund"], effect: RequireApproval, reason: "refunds need a human"}
    - {name: no-deletes, tools: ["delete_*"], effect: Deny, reason: "bots never delete"}
  budgets:
    - {name: tokens, metric: Tokens, key: Agent, limit: 1000, window: 1h, onExceed: Deny}
  approval:
    users: ["alice"]
    timeout: 30m
"#;

const KEYS: &str = r#"
keys:
  - {name: bot-a, role: agent, agent: bot-a, key: "bot-a-key-0123456789"}
  - {name: bot-b, role: agent, agent: bot-b, key: "bot-b-key-0123456789"}
  - {name: edge, role: gateway, key: "gateway-key-0123456789"}
"#;

const A: &str = "bot-a-key-0123456789";
const B: &str = "bot-b-key-0123456789";

/// What the fake MCP server saw.
#[derive(Default, Debug)]
struct Seen {
    bodies: Vec<Bytes>,
    headers: Vec<HeaderMap>,
}

type Shared = Arc<Mutex<Seen>>;

fn sse(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        format!("event: message\ndata: {value}\n\n"),
    )
        .into_response()
}

async fn fake_mcp(
    State(seen): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Ok(mut s) = seen.lock() {
        s.bodies.push(body.clone());
        s.headers.push(headers.clone());
    }
    match method {
        Method::GET => {
            return sse(
                &json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}}),
            );
        }
        Method::DELETE => return StatusCode::OK.into_response(),
        _ => {}
    }
    let msg: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => {
            let n = seen.lock().map(|s| s.bodies.len()).unwrap_or(0);
            (
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::HeaderName::from_static("mcp-session-id"), format!("sess-{n}")),
                ],
                json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"fake","version":"1"}}}).to_string(),
            )
                .into_response()
        }
        Some("tools/list") => tools_list(&msg, id),
        Some("tools/call") => {
            if msg.pointer("/params/name") == Some(&json!("slow")) {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let text = msg
                .pointer("/params/arguments/text")
                .cloned()
                .unwrap_or(Value::Null);
            (
                [(header::CONTENT_TYPE, "application/json")],
                json!({"jsonrpc":"2.0","id":id,"result":{
                    "content":[{"type":"text","text":text}],
                    "_meta":{"overseer.dev/usage":{"tokens":40}}
                }})
                .to_string(),
            )
                .into_response()
        }
        Some(_) if id.is_null() => StatusCode::ACCEPTED.into_response(),
        Some(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"jsonrpc":"2.0","id":id,"result":{}}).to_string(),
        )
            .into_response(),
        None => StatusCode::ACCEPTED.into_response(),
    }
}

/// The fake server's answer to `tools/list`: an SSE stream listing four tools, or, as
/// `params.cursor` asks, an answer the gateway must still filter or withhold.
fn tools_list(msg: &Value, id: Value) -> Response {
    let tools = json!([
        {"name":"echo","inputSchema":{"type":"object"}},
        {"name":"refund","inputSchema":{"type":"object"}},
        {"name":"delete_all","inputSchema":{"type":"object"}},
        {"name":"shell","inputSchema":{"type":"object"}}
    ]);
    let answer = |id: Value| json!({"jsonrpc":"2.0","id":id,"result":{"tools":tools}});
    let typed = |content_type: &'static str, body: String| {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    match msg.pointer("/params/cursor").and_then(Value::as_str) {
        // The id as an integer (the request's was `1.0`).
        Some("integer-id") => typed(
            "application/json",
            answer(json!(id.as_f64().map_or(0, |f| f as i64))).to_string(),
        ),
        // A content type in capitals, with a parameter.
        Some("sse-params") => typed(
            "Text/Event-Stream; charset=UTF-8",
            format!("event: message\ndata: {}\n\n", answer(id)),
        ),
        // A second list, under another id, in the same stream.
        Some("two-lists") => typed(
            "text/event-stream",
            format!(
                "data: {}\n\ndata: {}\n\n",
                answer(json!("other")),
                answer(id)
            ),
        ),
        // Not an answer to this request.
        Some("other-id") => sse(&answer(json!("not-the-request"))),
        Some("not-json") => typed("text/event-stream", format!("data: {{\"id\":{id},\n\n")),
        Some("octet-stream") => typed("application/octet-stream", answer(id).to_string()),
        Some("no-type") => Response::new(Body::from(answer(id).to_string())),
        Some("encoded") => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            answer(id).to_string(),
        )
            .into_response(),
        Some("case-variant") => typed(
            "application/json",
            format!(
                r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[]}},"Result":{{"tools":{tools}}}}}"#
            ),
        ),
        _ => sse(&answer(id)),
    }
}

async fn spawn(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

struct Fixture {
    app: Router,
    seen: Shared,
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
    audit_path: std::path::PathBuf,
    registry: prometheus_client::registry::Registry,
    _dir: tempfile::TempDir,
}

fn engine() -> Arc<Engine> {
    let compilation = compile(&parse_policies(POLICIES).expect("policies parse"));
    assert!(compilation.is_ok(), "{:?}", compilation.reports);
    Arc::new(Engine::new(compilation.compiled))
}

async fn fixture_with(
    decider: impl FnOnce(Arc<Engine>, Arc<AuditLog>) -> Arc<dyn Decider>,
) -> Fixture {
    let seen: Shared = Arc::default();
    let upstream = spawn(
        Router::new()
            .route("/mcp", post(fake_mcp).get(fake_mcp).delete(fake_mcp))
            .with_state(seen.clone()),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit"),
    );
    let engine = engine();
    let config = GatewayConfig::from_yaml(&format!(
        r#"
agentNamespace: default
upstreams:
  - name: fake
    url: http://{upstream}/mcp
    agents: ["bot-*"]
    timeoutSeconds: 1
    credential: {{prefix: "Bearer ", fromEnv: FAKE_TOKEN}}
"#
    ))
    .expect("config");
    let upstreams = config
        .resolve(
            |v| (v == "FAKE_TOKEN").then(|| "upstream-secret".to_owned()),
            &mut ClientCache::default(),
        )
        .expect("resolve");
    let gateway = Gateway::new(
        decider(engine.clone(), audit.clone()),
        Authenticator::from_yaml(KEYS).expect("keys"),
        upstreams,
        config.agent_namespace.clone(),
    )
    .with_max_body(128 * 1024);
    let mut registry = prometheus_client::registry::Registry::with_prefix("overseer");
    let gateway = gateway.with_metrics(GatewayMetrics::register(&mut registry));
    Fixture {
        app: router(Arc::new(gateway)),
        seen,
        engine,
        audit,
        audit_path,
        registry,
        _dir: dir,
    }
}

/// The fixture's metrics, as `/metrics` serves them.
fn metrics_text(f: &Fixture) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &f.registry).expect("encode");
    out
}

async fn fixture() -> Fixture {
    fixture_with(|e, a| Arc::new(LocalDecider::new(e, a))).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    /// The JSON-RPC message in the body (JSON or the first SSE event carrying one).
    fn json(&self) -> Value {
        let sse = self
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        jsonrpc::messages_in(self.text.as_bytes(), sse)
            .into_iter()
            .next()
            .unwrap_or(Value::Null)
    }
}

/// A request to `/mcp/fake` as an agent's client sends it (JSON, the protocol version).
fn request_to(method: Method, key: Option<&str>, session: Option<&str>) -> http::request::Builder {
    let mut request = Request::builder()
        .method(method)
        .uri("/mcp/fake")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(k) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    if let Some(s) = session {
        request = request.header("mcp-session-id", s);
    }
    request
}

async fn send(
    f: &Fixture,
    method: Method,
    key: Option<&str>,
    session: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let request = request_to(method, key, session)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("request");
    send_request(f, request).await
}

async fn send_request(f: &Fixture, request: Request<Body>) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(10), f.app.clone().oneshot(request))
        .await
        .expect("in time")
        .expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn rpc(f: &Fixture, key: &str, session: Option<&str>, message: Value) -> Answer {
    send(f, Method::POST, Some(key), session, message.to_string()).await
}

async fn initialize(f: &Fixture, key: &str) -> String {
    let a = rpc(f, key, None, json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned()
}

fn call(id: i64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

fn tool_calls_seen(f: &Fixture) -> Vec<Value> {
    f.seen
        .lock()
        .map(|s| {
            s.bodies
                .iter()
                .filter_map(|b| serde_json::from_slice::<Value>(b).ok())
                .filter(|v| v["method"] == "tools/call")
                .collect()
        })
        .unwrap_or_default()
}

fn audit_records(f: &Fixture) -> Vec<Value> {
    f.audit.flush().expect("flush");
    std::fs::read_to_string(&f.audit_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn allowed_call_forwards_the_exact_bytes_with_the_upstream_credential() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    // Odd spacing and key order: the bytes decided are the bytes forwarded.
    let raw = r#"{ "jsonrpc":"2.0", "method":"tools/call","id":7,"params":{"arguments":{"text":"hi"},"name":"echo","_meta":{"overseer.dev/usage":{"tokens":50}}} }"#;
    let a = send(&f, Method::POST, Some(A), Some(&sid), raw).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["result"]["content"][0]["text"], "hi");
    let seen = f
        .seen
        .lock()
        .map(|s| (s.bodies.last().cloned(), s.headers.last().cloned()))
        .expect("seen");
    assert_eq!(seen.0.as_deref(), Some(raw.as_bytes()));
    let headers = seen.1.expect("headers");
    assert_eq!(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        Some("Bearer upstream-secret")
    );
    assert_eq!(
        headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok()),
        Some("2025-06-18")
    );
    assert_eq!(
        headers.get("mcp-session-id").and_then(|v| v.to_str().ok()),
        Some(sid.as_str())
    );
    let records = audit_records(&f);
    let allow = records
        .iter()
        .find(|r| r["result"] == "allow")
        .expect("allow audited");
    assert_eq!(allow["input"]["tool"], "echo");
    assert_eq!(allow["input"]["server"], "fake");
    assert_eq!(allow["input"]["principal"], "bot-a");
    // The usage the server reported (40 tokens, estimate 50) was committed: the budget shows 40.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let key = CounterKey::budget(
        "default/bots".into(),
        "tokens".into(),
        BudgetMetric::Tokens,
        Subject::Agent("bot-a".into()),
    );
    assert_eq!(f.engine.limits().usage(&key, Utc::now()), 40);
}

#[tokio::test]
async fn denied_call_is_a_jsonrpc_error_with_the_reason_and_never_forwarded() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let a = rpc(&f, A, Some(&sid), call(3, "delete_all", json!({}))).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["id"], 3);
    assert_eq!(v["error"]["code"], jsonrpc::DENIED);
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("bots never delete"), "{message}");
    assert!(message.contains("default/bots#no-deletes"), "{message}");
    assert_eq!(v["error"]["data"]["decision"], "deny");
    assert!(
        tool_calls_seen(&f).is_empty(),
        "a denied call reached the upstream"
    );
    // A tool no rule allows: default deny.
    let v = rpc(&f, A, Some(&sid), call(4, "shell", json!({"cmd":"id"})))
        .await
        .json();
    assert_eq!(v["error"]["data"]["reasons"][0]["code"], "default_deny");
    assert!(tool_calls_seen(&f).is_empty());
    let records = audit_records(&f);
    assert_eq!(records.iter().filter(|r| r["result"] == "deny").count(), 2);
}

#[tokio::test]
async fn approval_required_then_the_same_call_succeeds_once_approved() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let args = json!({"order":"o-1","amount":30});
    let v = rpc(&f, A, Some(&sid), call(5, "refund", args.clone()))
        .await
        .json();
    assert_eq!(v["error"]["code"], jsonrpc::APPROVAL_REQUIRED, "{v}");
    let approval = v["error"]["data"]["approvalId"]
        .as_str()
        .expect("approval id")
        .to_owned();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&approval)
    );
    assert!(tool_calls_seen(&f).is_empty());
    // Asking again before approval gives the same pending approval.
    let again = rpc(&f, A, Some(&sid), call(6, "refund", args.clone()))
        .await
        .json();
    assert_eq!(again["error"]["data"]["approvalId"], approval.as_str());
    f.engine
        .review(&approval, "alice", &[], Review::Approve, Utc::now())
        .expect("alice approves");
    // Different arguments are a different call: still needs approval.
    let other = rpc(
        &f,
        A,
        Some(&sid),
        call(7, "refund", json!({"order":"o-2","amount":30})),
    )
    .await
    .json();
    assert_eq!(other["error"]["code"], jsonrpc::APPROVAL_REQUIRED);
    let ok = rpc(&f, A, Some(&sid), call(8, "refund", args.clone()))
        .await
        .json();
    assert!(ok.get("result").is_some(), "{ok}");
    assert_eq!(tool_calls_seen(&f).len(), 1);
    // Single use.
    let used = rpc(&f, A, Some(&sid), call(9, "refund", args)).await.json();
    assert_eq!(used["error"]["code"], jsonrpc::APPROVAL_REQUIRED);
}

#[tokio::test]
async fn tools_list_is_filtered_to_tools_the_agent_may_ever_call() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let a = rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
    );
    let names: Vec<String> = a.json()["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["echo", "refund"]);
}

#[tokio::test]
async fn a_session_of_another_agent_is_refused() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let a = rpc(&f, B, Some(&sid), call(1, "echo", json!({"text":"x"}))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("session_hijack")
    );
    let g = send(&f, Method::GET, Some(B), Some(&sid), Body::empty()).await;
    assert_eq!(g.status, StatusCode::FORBIDDEN);
    let d = send(&f, Method::DELETE, Some(B), Some(&sid), Body::empty()).await;
    assert_eq!(d.status, StatusCode::FORBIDDEN);
    // Unknown ids are not guessed into.
    let u = rpc(&f, A, Some("sess-999"), call(1, "echo", json!({}))).await;
    assert_eq!(u.status, StatusCode::NOT_FOUND);
    assert!(tool_calls_seen(&f).is_empty());
    // The owner keeps using it; GET streams, DELETE ends it.
    let g = send(&f, Method::GET, Some(A), Some(&sid), Body::empty()).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.json()["method"], "notifications/message");
    let d = send(&f, Method::DELETE, Some(A), Some(&sid), Body::empty()).await;
    assert_eq!(d.status, StatusCode::OK);
    let after = rpc(&f, A, Some(&sid), call(1, "echo", json!({}))).await;
    assert_eq!(after.status, StatusCode::NOT_FOUND);
    let records = audit_records(&f);
    assert!(records.iter().any(|r| {
        r["reasons"][0]
            .as_str()
            .unwrap_or_default()
            .contains("session_hijack")
    }));
}

#[tokio::test]
async fn unauthenticated_and_non_agent_callers_are_refused() {
    let f = fixture().await;
    let a = send(
        &f,
        Method::POST,
        None,
        None,
        call(1, "echo", json!({})).to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let a = rpc(&f, "wrong-key-0123456789", None, call(1, "echo", json!({}))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = rpc(
        &f,
        "gateway-key-0123456789",
        None,
        call(1, "echo", json!({})),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(tool_calls_seen(&f).is_empty());
    assert_eq!(audit_records(&f).len(), 3);
}

#[tokio::test]
async fn fail_closed_when_the_decision_service_is_unreachable() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let f = fixture_with(|_, audit| {
        Arc::new(
            RemoteDecider::new(
                &format!("http://{closed}"),
                Some("gateway-key-0123456789"),
                Duration::from_millis(200),
            )
            .expect("remote")
            .with_audit(audit),
        )
    })
    .await;
    let sid = initialize(&f, A).await;
    let v = rpc(&f, A, Some(&sid), call(1, "echo", json!({"text":"x"})))
        .await
        .json();
    assert_eq!(v["error"]["code"], jsonrpc::DENIED);
    assert_eq!(v["error"]["data"]["reasons"][0]["code"], UNAVAILABLE);
    assert!(tool_calls_seen(&f).is_empty());
    // Which tools the agent may see cannot be told either: the list is withheld, and audited.
    let before = audit_records(&f).len();
    let list = rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}),
    )
    .await
    .json();
    assert_eq!(list["id"], 2, "{list}");
    assert!(list.get("result").is_none(), "{list}");
    assert_eq!(list["error"]["code"], jsonrpc::DENIED);
    assert!(
        list["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with(UNAVAILABLE),
        "{list}"
    );
    assert_eq!(audit_records(&f).len(), before + 1);
}

#[tokio::test]
async fn fail_closed_when_the_decision_service_is_slow_or_failing() {
    let slow = spawn(Router::new().route(
        "/v1/decisions",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            "{}"
        }),
    ))
    .await;
    let failing = spawn(Router::new().route(
        "/v1/decisions",
        post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
    ))
    .await;
    for addr in [slow, failing] {
        let remote =
            RemoteDecider::new(&format!("http://{addr}/"), None, Duration::from_millis(100))
                .expect("remote");
        let request = overseer_policy::request::DecisionRequest {
            principal: overseer_policy::request::Principal {
                id: "bot-a".into(),
                ..Default::default()
            },
            tool: "echo".into(),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let verdict = remote.decide(&request).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!verdict.is_allowed());
        assert_eq!(verdict.reasons()[0].0, UNAVAILABLE, "{verdict:?}");
    }
}

#[tokio::test]
async fn remote_decider_gets_real_decisions_from_the_decision_service() {
    // tools/list filtered from a local compile of the policies, and by asking the service.
    for local_policies in [true, false] {
        remote_decider_case(local_policies).await;
    }
}

async fn remote_decider_case(local_policies: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("mkdir");
    std::fs::write(policies.join("bots.yaml"), POLICIES).expect("write");
    std::fs::write(dir.path().join("keys.yaml"), KEYS).expect("write");
    let args = ServeWrapper::try_parse_from([
        "serve".as_ref(),
        "--policies".as_ref(),
        policies.as_os_str(),
        "--api-keys".as_ref(),
        dir.path().join("keys.yaml").as_os_str(),
        "--audit-file".as_ref(),
        dir.path().join("audit.jsonl").as_os_str(),
        "--state-file".as_ref(),
        dir.path().join("limits.json").as_os_str(),
    ] as [&std::ffi::OsStr; 9])
    .expect("serve flags")
    .serve;
    let (service, _catalog, _dir, _persister) = operator::decision::standalone::build(
        &args,
        &mut prometheus_client::registry::Registry::default(),
    )
    .expect("decision service");
    let addr = spawn(operator::decision::router(service)).await;
    let f = fixture_with(|e, audit| {
        let remote = RemoteDecider::new(
            &format!("http://{addr}"),
            Some("gateway-key-0123456789"),
            Duration::from_secs(2),
        )
        .expect("remote")
        .with_audit(audit);
        Arc::new(if local_policies {
            remote.with_policies(e)
        } else {
            remote
        })
    })
    .await;
    let sid = initialize(&f, A).await;
    let ok = rpc(&f, A, Some(&sid), call(1, "echo", json!({"text":"remote"})))
        .await
        .json();
    assert_eq!(ok["result"]["content"][0]["text"], "remote", "{ok}");
    let no = rpc(&f, A, Some(&sid), call(2, "delete_all", json!({})))
        .await
        .json();
    assert!(
        no["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("bots never delete")
    );
    let list = rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}),
    )
    .await
    .json();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 2, "local policies: {local_policies}: {list}");
    assert!(!names.contains(&"delete_all"), "{list}");
}

#[tokio::test]
async fn upstream_timeouts_are_answered_and_audited() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let a = rpc(&f, A, Some(&sid), call(1, "slow", json!({}))).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.json()["error"]["code"], jsonrpc::UPSTREAM_ERROR);
    assert_eq!(a.json()["id"], 1);
    let records = audit_records(&f);
    assert!(records.iter().any(|r| {
        r["reasons"][0]
            .as_str()
            .unwrap_or_default()
            .contains("upstream_timeout")
    }));
}

#[tokio::test]
async fn bad_input_is_refused_audited_and_never_forwarded() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let before = f.seen.lock().map(|s| s.bodies.len()).unwrap_or(0);
    let cases: Vec<(String, StatusCode, i64)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, jsonrpc::PARSE_ERROR),
        (json!([call(1, "echo", json!({}))]).to_string(), StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc":"2.0","id":1}).to_string(), StatusCode::BAD_REQUEST, jsonrpc::INVALID_REQUEST),
        (json!({"jsonrpc":"2.0","id":1,"method":"tools/execute","params":{"name":"echo"}}).to_string(), StatusCode::OK, jsonrpc::METHOD_NOT_FOUND),
        (json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}).to_string(), StatusCode::OK, jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":[1]}}).to_string(), StatusCode::OK, jsonrpc::INVALID_PARAMS),
        (json!({"jsonrpc":"2.0","method":"tools/call"}).to_string(), StatusCode::BAD_REQUEST, jsonrpc::METHOD_NOT_FOUND),
        (format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"t\":\"{}\"}}}}}}", "x".repeat(130 * 1024)), StatusCode::PAYLOAD_TOO_LARGE, jsonrpc::INVALID_REQUEST),
    ];
    for (body, status, code) in &cases {
        let a = send(&f, Method::POST, Some(A), Some(&sid), body.clone()).await;
        assert_eq!(
            a.status,
            *status,
            "{}: {}",
            &body[..body.len().min(80)],
            a.text
        );
        assert_eq!(a.json()["error"]["code"], *code, "{}", a.text);
    }
    // Arguments over the policy core's limit, in a body under the gateway's: refused by the
    // decision, never forwarded.
    let v = rpc(
        &f,
        A,
        Some(&sid),
        call(2, "echo", json!({"text": "y".repeat(65 * 1024)})),
    )
    .await
    .json();
    assert_eq!(
        v["error"]["data"]["reasons"][0]["code"], "arguments_too_large",
        "{}",
        v["error"]["message"]
    );
    let after = f.seen.lock().map(|s| s.bodies.len()).unwrap_or(0);
    assert_eq!(before, after, "nothing was forwarded");
    let refusals = audit_records(&f)
        .iter()
        .filter(|r| r["path"] == "overseer/gateway")
        .count();
    assert_eq!(refusals, cases.len());
    // Other methods, notifications and unsupported verbs.
    let ping = rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":9,"method":"ping"}),
    )
    .await;
    assert_eq!(ping.json()["result"], json!({}));
    let note = rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(note.status, StatusCode::ACCEPTED);
    let put = send(&f, Method::PUT, Some(A), Some(&sid), "{}").await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    let unknown = Request::builder()
        .method(Method::POST)
        .uri("/mcp/nope")
        .body(Body::empty())
        .expect("req");
    let r = f.app.clone().oneshot(unknown).await.expect("response");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_count_requests_by_server_method_and_outcome() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let ok = rpc(&f, A, Some(&sid), call(1, "echo", json!({"text":"m"}))).await;
    assert_eq!(
        ok.json()["result"]["content"][0]["text"],
        "m",
        "{}",
        ok.text
    );
    rpc(&f, A, Some(&sid), call(2, "delete_all", json!({}))).await;
    rpc(&f, A, Some(&sid), call(3, "refund", json!({"amount": 1}))).await;
    rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":4,"method":"tools/list"}),
    )
    .await;
    rpc(
        &f,
        A,
        Some(&sid),
        json!({"jsonrpc":"2.0","id":5,"method":"sampling/createMessage"}),
    )
    .await;
    rpc(
        &f,
        "no-such-key-0123456789",
        None,
        call(6, "echo", json!({})),
    )
    .await;
    // The fake server takes 5 s over `slow`; the upstream's timeout is 1 s.
    let slow = rpc(&f, A, Some(&sid), call(7, "slow", json!({}))).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT, "{}", slow.text);
    // A name no upstream has is counted under `unknown`, never under the name sent.
    let nowhere = f
        .app
        .clone()
        .oneshot(
            Request::post("/mcp/no-such-server")
                .header(header::AUTHORIZATION, format!("Bearer {A}"))
                .body(Body::from(call(8, "echo", json!({})).to_string()))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let text = metrics_text(&f);
    for line in [
        r#"overseer_gateway_requests_total{server="fake",method="initialize",outcome="forwarded"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="tools/call",outcome="forwarded"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="tools/call",outcome="denied"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="tools/call",outcome="approval_required"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="tools/list",outcome="forwarded"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="other",outcome="refused"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="none",outcome="refused"} 1"#,
        r#"overseer_gateway_requests_total{server="fake",method="tools/call",outcome="upstream_error"} 1"#,
        // initialize, echo, tools/list and the timed-out call went upstream.
        r#"overseer_gateway_upstream_duration_seconds_count{server="fake"} 4"#,
        r#"overseer_gateway_requests_total{server="unknown",method="none",outcome="refused"} 1"#,
    ] {
        assert!(text.contains(line), "{line} is missing from\n{text}");
    }
    assert!(
        !text.contains("delete_all") && !text.contains("bot-a"),
        "{text}"
    );
}

/// A private CA (its PEM) and the fake MCP server behind https://127.0.0.1:PORT/mcp with a
/// certificate it signed.
async fn https_upstream(seen: Shared) -> (String, SocketAddr) {
    let served = https::serve(Router::new().route("/mcp", post(fake_mcp)).with_state(seen)).await;
    (served.ca_pem, served.addr)
}

/// A gateway in front of the upstreams of `config`, auditing into `dir`.
fn tls_gateway(config: &GatewayConfig, dir: &std::path::Path) -> Router {
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(dir.join("audit.jsonl"))),
            ..AuditConfig::default()
        })
        .expect("audit"),
    );
    let gateway = Gateway::new(
        Arc::new(LocalDecider::new(engine(), audit)),
        Authenticator::from_yaml(KEYS).expect("keys"),
        config
            .resolve(|_| None, &mut ClientCache::default())
            .expect("resolve"),
        Some("default".into()),
    );
    router(Arc::new(gateway))
}

/// An `initialize` request to `/mcp/{server}` as agent A.
fn initialize_request(server: &str) -> Request<Body> {
    Request::post(format!("/mcp/{server}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::AUTHORIZATION, format!("Bearer {A}"))
        .body(Body::from(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}).to_string(),
        ))
        .expect("request")
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_own_ca() {
    let seen: Shared = Arc::default();
    let (ca_pem, addr) = https_upstream(seen.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).expect("write CA");
    let config = GatewayConfig::from_yaml(&format!(
        r#"
upstreams:
  - name: pinned
    url: https://{addr}/mcp
    tls: {{caFile: "{}"}}
  - name: system-roots
    url: https://{addr}/mcp
"#,
        ca_file.display()
    ))
    .expect("config");
    let app = tls_gateway(&config, dir.path());
    // Verified against the private CA: the exchange goes through.
    let ok = app
        .clone()
        .oneshot(initialize_request("pinned"))
        .await
        .expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(ok.headers().contains_key("mcp-session-id"));
    // The same server is no system root's: the handshake fails, answered 502, nothing reaches it.
    let seen_before = seen.lock().map(|s| s.bodies.len()).unwrap_or(0);
    let refused = app
        .oneshot(initialize_request("system-roots"))
        .await
        .expect("answer");
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        seen.lock().map(|s| s.bodies.len()).unwrap_or(0),
        seen_before
    );

    // Bad TLS configurations are refused at start-up, saying what to fix.
    for (tls, url, want) in [
        (
            r#"{caFile: "/nonexistent/ca.crt"}"#,
            format!("https://{addr}/mcp"),
            "cannot read",
        ),
        (
            r#"{caFile: "@NOT_PEM@"}"#,
            format!("https://{addr}/mcp"),
            "holds no PEM certificate",
        ),
        (
            r#"{caFile: "@CA@"}"#,
            format!("http://{addr}/mcp"),
            "https:// urls only",
        ),
    ] {
        let tls = tls
            .replace(
                "@NOT_PEM@",
                &dir.path().join("audit.jsonl").display().to_string(),
            )
            .replace("@CA@", &ca_file.display().to_string());
        let err = GatewayConfig::from_yaml(&format!(
            "upstreams:\n  - name: bad\n    url: {url}\n    tls: {tls}\n"
        ))
        .expect("parses")
        .resolve(|_| None, &mut ClientCache::default())
        .expect_err("refused");
        assert!(
            err.contains(want) && err.contains("upstreams[0] (bad)"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_upstream_requiring_mutual_tls_gets_the_configured_client_certificate() {
    let seen: Shared = Arc::default();
    let server = https::serve_mutual(
        Router::new()
            .route("/mcp", post(fake_mcp))
            .with_state(seen.clone()),
    )
    .await;
    let (cert, key) = server.client.clone().expect("a client certificate");
    // A key of another client: not the certificate's.
    let other = https::serve_mutual(Router::new()).await;
    let (_, other_key) = other.client.expect("another client certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let (ca, cert, key, other_key) = (
        write("ca.crt", &server.ca_pem),
        write("tls.crt", &cert),
        write("tls.key", &key),
        write("other.key", &other_key),
    );
    let addr = server.addr;
    let config = GatewayConfig::from_yaml(&format!(
        r#"
upstreams:
  - name: mutual
    url: https://{addr}/mcp
    tls: {{caFile: "{ca}", certFile: "{cert}", keyFile: "{key}"}}
  - name: no-certificate
    url: https://{addr}/mcp
    tls: {{caFile: "{ca}"}}
"#
    ))
    .expect("config");
    let app = tls_gateway(&config, dir.path());
    let ok = app
        .clone()
        .oneshot(initialize_request("mutual"))
        .await
        .expect("answer");
    assert_eq!(ok.status(), StatusCode::OK);
    let reached = seen.lock().map(|s| s.bodies.len()).unwrap_or(0);
    assert_eq!(reached, 1);
    // Without a client certificate the server ends the handshake: 502, nothing reaches it.
    let refused = app
        .oneshot(initialize_request("no-certificate"))
        .await
        .expect("answer");
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(seen.lock().map(|s| s.bodies.len()).unwrap_or(0), reached);

    // Bad client certificate settings are refused at start-up, saying what to fix.
    for (tls, want) in [
        (
            format!(r#"{{certFile: "{cert}"}}"#),
            "tls.certFile needs tls.keyFile",
        ),
        (
            format!(r#"{{keyFile: "{key}"}}"#),
            "tls.keyFile needs tls.certFile",
        ),
        (
            "{}".to_owned(),
            "tls needs caFile (a private CA) and/or certFile",
        ),
        (
            format!(r#"{{certFile: "{ca}", keyFile: "{ca}"}}"#),
            "tls.certFile/keyFile: the private key of",
        ),
        (
            format!(r#"{{certFile: "{key}", keyFile: "{key}"}}"#),
            "holds no PEM certificate",
        ),
        (
            format!(r#"{{certFile: "{cert}", keyFile: "{other_key}"}}"#),
            "the client certificate and key cannot be used",
        ),
    ] {
        let err = GatewayConfig::from_yaml(&format!(
            "upstreams:\n  - name: bad\n    url: https://{addr}/mcp\n    tls: {tls}\n"
        ))
        .expect("parses")
        .resolve(|_| None, &mut ClientCache::default())
        .expect_err("refused");
        assert!(
            err.contains(want) && err.contains("upstreams[0] (bad)"),
            "{tls}: {err}"
        );
        assert!(!err.contains("PRIVATE KEY-----\n"), "{err}");
    }
}

/// The body of the request the fake server saw last, and its headers.
fn last_seen(f: &Fixture) -> (Option<Bytes>, HeaderMap) {
    f.seen
        .lock()
        .map(|s| {
            (
                s.bodies.last().cloned(),
                s.headers.last().cloned().unwrap_or_default(),
            )
        })
        .expect("seen")
}

fn seen_count(f: &Fixture) -> usize {
    f.seen.lock().map(|s| s.bodies.len()).unwrap_or(0)
}

/// A POST to `/mcp/fake` as agent A in session `sid` with `content_type` (none when `None`).
async fn post_typed(f: &Fixture, sid: &str, content_type: Option<&str>, body: &str) -> Answer {
    let mut request = request_to(Method::POST, Some(A), Some(sid));
    if let Some(ct) = content_type {
        request = request.header(header::CONTENT_TYPE, ct);
    }
    send_request(
        f,
        request.body(Body::from(body.to_owned())).expect("request"),
    )
    .await
}

#[tokio::test]
async fn a_body_in_another_charset_is_refused_and_the_upstream_gets_exactly_application_json() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let before = seen_count(&f);
    // Read as UTF-8 this is a ping; read as UTF-7 (as the TypeScript SDK would, honouring the
    // charset) `+ACIALAAi-` is `","` and `+ACIAOgAi-` is `":"`, so the message ends with a second
    // "method":"tools/call" that wins, and delete_all would run undecided.
    let smuggled = r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"name":"delete_all","arguments":{}},"x":"+ACIALAAi-method+ACIAOgAi-tools/call"}"#;
    let cases = [
        Some("application/json; charset=utf-7"),
        Some("application/json;charset=\"UTF-7\""),
        Some("application/json; charset=utf-16"),
        Some("text/plain"),
        Some("text/plain; x=application/json"),
        None,
    ];
    for content_type in cases {
        let a = post_typed(&f, &sid, content_type, smuggled).await;
        assert_eq!(
            a.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {}",
            a.text
        );
        assert_eq!(a.json()["error"]["code"], jsonrpc::INVALID_REQUEST);
        assert!(
            a.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("application/json")),
            "{}",
            a.text
        );
    }
    // Two Content-Type headers are refused too.
    let two = request_to(Method::POST, Some(A), Some(&sid))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-7")
        .body(Body::from(smuggled))
        .expect("request");
    assert_eq!(
        send_request(&f, two).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(seen_count(&f), before, "nothing was forwarded");
    let refusals = audit_records(&f)
        .into_iter()
        .filter(|r| r["result"] == "malformed" && r["path"] == "overseer/gateway")
        .count();
    assert_eq!(refusals, cases.len() + 1, "each refusal is audited");

    // UTF-8 JSON however it is spelled is accepted, and the upstream is told exactly
    // `application/json`: what it decodes is what was decided.
    for content_type in [
        "application/json; charset=utf-8",
        "Application/JSON ; Charset=\"UTF-8\"",
    ] {
        let raw = call(2, "echo", json!({"text":"t"})).to_string();
        let a = post_typed(&f, &sid, Some(content_type), &raw).await;
        assert_eq!(a.status, StatusCode::OK, "{content_type}: {}", a.text);
        let (body, headers) = last_seen(&f);
        assert_eq!(body.as_deref(), Some(raw.as_bytes()));
        let types: Vec<_> = headers.get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(types, ["application/json"], "{content_type}");
    }
}

#[tokio::test]
async fn member_names_that_collide_under_case_folding_are_refused_before_any_decision() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let before = seen_count(&f);
    let decisions_before = audit_records(&f).len();
    let cases = [
        // Decided as echo, run as delete_all by a Go server (case-insensitive, last match wins).
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_all","arguments":{}}}"#,
        // A ping to the gateway, a tools/call to a Go server.
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"delete_all"}}"#,
        // A tools/call to JavaScript and Python, which keep the last duplicate.
        r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"delete_all"}}"#,
        // Unicode folding: ſ (U+017F) is s, K (U+212A) is k; arguments too.
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"na\u{17F}me\":\"x\",\"arguments\":{\"kind\":1,\"\u{212A}ind\":2}}}",
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"kind\":1,\"\u{212A}ind\":2}}}",
        // Escaped names are the names they decode to.
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","\u004eame":"delete_all"}}"#,
    ];
    for body in cases {
        let a = send(&f, Method::POST, Some(A), Some(&sid), body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert_eq!(
            a.json()["error"]["code"],
            jsonrpc::INVALID_REQUEST,
            "{body}"
        );
    }
    assert_eq!(seen_count(&f), before, "nothing was forwarded");
    let records = audit_records(&f);
    let new = &records[decisions_before..];
    assert_eq!(new.len(), cases.len(), "each refusal is audited, once");
    assert!(
        new.iter()
            .all(|r| r["result"] == "malformed" && r["input"]["tool"].is_null()),
        "refused before any decision: {new:?}"
    );
    // Distinct names that merely look alike still pass.
    let ok = send(
        &f,
        Method::POST,
        Some(A),
        Some(&sid),
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","text2":"b"}}}"#,
    )
    .await;
    assert_eq!(
        ok.json()["result"]["content"][0]["text"],
        "a",
        "{}",
        ok.text
    );
}

async fn list_names(f: &Fixture, sid: &str, request: Value) -> (Answer, Vec<String>) {
    let a = rpc(f, A, Some(sid), request).await;
    let names = jsonrpc::messages_in(
        a.text.as_bytes(),
        a.headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"text/event-stream"),
    )
    .iter()
    .flat_map(|m| {
        m.pointer("/result/tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str().map(str::to_owned))
    })
    .collect();
    (a, names)
}

#[tokio::test]
async fn tools_list_answers_are_matched_by_id_value_and_content_type() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    // The request's id is 1.0, the answer's 1: the same id, so the answer is filtered.
    let (a, names) = list_names(
        &f,
        &sid,
        json!({"jsonrpc":"2.0","id":1.0,"method":"tools/list","params":{"cursor":"integer-id"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(names, ["echo", "refund"], "{}", a.text);
    assert_eq!(
        a.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    // `Text/Event-Stream; charset=UTF-8` is SSE.
    let (a, names) = list_names(
        &f,
        &sid,
        json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"sse-params"}}),
    )
    .await;
    assert_eq!(names, ["echo", "refund"], "{}", a.text);
    assert_eq!(
        a.headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    // Every tool list in the stream is filtered, not only the answer's.
    let (a, names) = list_names(
        &f,
        &sid,
        json!({"jsonrpc":"2.0","id":3,"method":"tools/list","params":{"cursor":"two-lists"}}),
    )
    .await;
    assert_eq!(names, ["echo", "refund", "echo", "refund"], "{}", a.text);
    assert!(!a.text.contains("delete_all") && !a.text.contains("shell"));
}

#[tokio::test]
async fn a_tools_list_answer_that_cannot_be_filtered_is_withheld() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let before = audit_records(&f).len();
    let cases = [
        "other-id",
        "not-json",
        "octet-stream",
        "no-type",
        "encoded",
        "case-variant",
    ];
    for (n, cursor) in cases.into_iter().enumerate() {
        let a = rpc(
            &f,
            A,
            Some(&sid),
            json!({"jsonrpc":"2.0","id":n,"method":"tools/list","params":{"cursor":cursor}}),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{cursor}: {}", a.text);
        let v: Value = serde_json::from_str(&a.text).expect("a JSON-RPC error");
        assert_eq!(v["id"], n, "{cursor}");
        assert_eq!(v["error"]["code"], jsonrpc::INTERNAL_ERROR, "{cursor}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be filtered")),
            "{cursor}: {v}"
        );
        assert!(
            !a.text.contains("delete_all") && !a.text.contains("shell"),
            "{cursor}: {}",
            a.text
        );
    }
    let records = audit_records(&f);
    assert_eq!(records.len(), before + cases.len(), "each is audited");
    assert!(records[before..].iter().all(|r| r["result"] == "deny"));
}

#[tokio::test]
async fn accept_encoding_and_last_event_id_never_reach_the_upstream() {
    let f = fixture().await;
    let sid = initialize(&f, A).await;
    let get = request_to(Method::GET, Some(A), Some(&sid))
        .header("last-event-id", "stream-1:42")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send_request(&f, get).await.status, StatusCode::OK);
    let (_, headers) = last_seen(&f);
    assert!(!headers.contains_key("last-event-id"), "{headers:?}");
    assert!(
        !headers.contains_key(header::ACCEPT_ENCODING),
        "{headers:?}"
    );
    assert!(
        !headers.contains_key(header::CONTENT_TYPE),
        "a GET has no body: {headers:?}"
    );
    let list = request_to(Method::POST, Some(A), Some(&sid))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT_ENCODING, "gzip")
        .body(Body::from(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string(),
        ))
        .expect("request");
    let a = send_request(&f, list).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let (_, headers) = last_seen(&f);
    assert!(
        !headers.contains_key(header::ACCEPT_ENCODING),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_request_carries_one_visible_ascii_session_id_and_that_one_is_forwarded() {
    let f = fixture().await;
    let mine = initialize(&f, A).await;
    let theirs = initialize(&f, B).await;
    let before = seen_count(&f);
    let body = call(1, "echo", json!({"text":"x"})).to_string();
    // Two values: the first (A's own) would be checked, and the second (B's) used upstream.
    let two = request_to(Method::POST, Some(A), Some(&mine))
        .header("mcp-session-id", theirs.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.clone()))
        .expect("request");
    let a = send_request(&f, two).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json()["error"]["code"], jsonrpc::INVALID_REQUEST);
    // Not visible ASCII: never checked against the sessions before, yet forwarded.
    for bad in [&b"sess-1\xe9"[..], b"sess 1", b"sess-1\t"] {
        let value = http::HeaderValue::from_bytes(bad).expect("a header value");
        for method in [Method::POST, Method::GET, Method::DELETE] {
            let mut request = Request::builder()
                .method(method.clone())
                .uri("/mcp/fake")
                .header(header::AUTHORIZATION, format!("Bearer {A}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("mcp-session-id", value.clone());
            if method != Method::POST {
                request = request.header(header::ACCEPT, "text/event-stream");
            }
            let body = if method == Method::POST {
                Body::from(body.clone())
            } else {
                Body::empty()
            };
            let a = send_request(&f, request.body(body).expect("request")).await;
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{method} {bad:?}: {}",
                a.text
            );
        }
    }
    assert_eq!(seen_count(&f), before, "nothing was forwarded");
    // One good value: forwarded, alone.
    let a = rpc(&f, A, Some(&mine), call(2, "echo", json!({"text":"y"}))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let (_, headers) = last_seen(&f);
    let sent: Vec<_> = headers.get_all("mcp-session-id").iter().collect();
    assert_eq!(sent, [mine.as_str()]);
    let refusals = audit_records(&f)
        .into_iter()
        .filter(|r| r["result"] == "malformed")
        .count();
    assert_eq!(refusals, 1 + 3 * 3, "each refusal is audited");
}
