//! The MCP gateway authenticating agents by their Kubernetes ServiceAccount (or
//! `EphemeralIdentity`) token: the TokenReview API is answered by a `tower-test` mock API server,
//! the gateway's router is driven in-process with `oneshot` in front of a fake MCP server on
//! 127.0.0.1, and a recording decider keeps every `DecisionRequest` the gateway built. The Envoy
//! ext_authz service takes the same tokens the same way (the last tests).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
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
use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, CheckResponse},
    pb::envoy::service::auth::v3::{
        AttributeContext,
        attribute_context::{HttpRequest, Request as EnvoyRequest},
    },
};
use futures::future::BoxFuture;
use operator::{
    decision::{
        auth::Authenticator,
        files::parse_policies,
        tokenreview::{TokenReviewConfig, TokenReviewer},
    },
    extauthz::{ExtAuthz, ExtAuthzConfig},
    gateway::{
        config::GatewayConfig,
        decider::{Decider, LocalDecider, Verdict},
        jsonrpc,
        proxy::{Gateway, router},
        tls::ClientCache,
    },
};
use overseer_policy::compile::compile;
use overseer_policy::{
    audit::{AuditConfig, AuditEvent, AuditLog, FileSinkConfig},
    engine::Engine,
    limits,
    request::{DecisionRequest, Principal, PrincipalKind},
};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: support, namespace: agents}
spec:
  mode: Enforce
  subjects:
    serviceAccounts: [{name: support-bot}]
  tools:
    - {name: reads, tools: ["echo"], effect: Allow, reason: "support may echo"}
    - {name: no-deletes, tools: ["delete_*"], effect: Deny, reason: "support never deletes"}
---
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: bots, namespace: default}
spec:
  mode: Enforce
  subjects:
    agentIds: ["bot-*"]
  tools:
    - {name: reads, tools: ["echo", "refund"], effect: Allow, reason: "bots may echo"}
"#;

const KEYS: &str = r#"
keys:
  - {name: bot-a, role: agent, agent: bot-a, key: "bot-a-key-0123456789"}
  - {name: impostor, role: agent, agent: "system:serviceaccount:agents:support-bot", key: "impostor-key-0123456789"}
"#;

/// An `agent` API key.
const BOT_A: &str = "bot-a-key-0123456789";
/// An `agent` API key whose agent id is a ServiceAccount username (it is still no ServiceAccount).
const IMPOSTOR: &str = "impostor-key-0123456789";
/// ServiceAccount tokens the mock API server accepts.
const SUPPORT: &str = "eyJ.sa-token-support-bot.sig";
const FINANCE: &str = "eyJ.sa-token-finance-bot.sig";
const INTRUDER: &str = "eyJ.sa-token-intruder.sig";
/// A token of a user that is no ServiceAccount.
const ALICE: &str = "eyJ.user-token-alice.sig";
/// A token the API server does not authenticate (expired, or of a deleted ServiceAccount).
const EXPIRED: &str = "eyJ.expired-token.sig";
/// A token the API server refuses to review (e.g. the gateway lacks RBAC).
const NO_RBAC: &str = "eyJ.review-forbidden.sig";
const AUDIENCE: &str = "overseer-gateway";

const SUPPORT_SA: &str = "system:serviceaccount:agents:support-bot";

/// How the mock API server answers a TokenReview of `token`.
fn review_answer(token: &str) -> (u16, Value) {
    let accepted = |username: &str| {
        (
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                   "status": {"authenticated": true, "audiences": [AUDIENCE],
                              "user": {"username": username,
                                       "groups": ["system:serviceaccounts", "system:authenticated"]}}}),
        )
    };
    match token {
        SUPPORT => accepted(SUPPORT_SA),
        FINANCE => accepted("system:serviceaccount:agents:finance-bot"),
        INTRUDER => accepted("system:serviceaccount:other:intruder"),
        ALICE => accepted("alice@example.com"),
        NO_RBAC => (
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:overseer-system:default\" cannot create resource \"tokenreviews\"",
                   "reason": "Forbidden", "code": 403}),
        ),
        _ => (
            201,
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
                   "status": {"authenticated": false, "error": "token has expired"}}),
        ),
    }
}

/// Every TokenReview the mock API server received (the request bodies).
type Reviews = Arc<Mutex<Vec<Value>>>;

/// A kube client whose requests reach a mock API server answering TokenReviews with
/// [`review_answer`] (anything else is a 404).
fn mock_api_server() -> (kube::Client, Reviews) {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    let reviews: Reviews = Arc::default();
    let seen = Arc::clone(&reviews);
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let is_review = request.method() == http::Method::POST
                && request.uri().path() == "/apis/authentication.k8s.io/v1/tokenreviews";
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .expect("request body");
            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
            let (status, answer) = if is_review {
                let token = review
                    .pointer("/spec/token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                review_answer(token)
            } else {
                (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}),
                )
            };
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(review);
            send.send_response(
                http::Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(kube::client::Body::from(
                        serde_json::to_vec(&answer).expect("answer serializes"),
                    ))
                    .expect("response builds"),
            );
        }
    });
    (kube::Client::new(service, "default"), reviews)
}

/// A kube client whose API server cannot be reached (the mock's other end is gone).
fn unreachable_api_server() -> kube::Client {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    drop(handle);
    kube::Client::new(service, "default")
}

/// Decides with the engine, keeping every request it was asked about.
#[derive(Debug)]
struct RecordingDecider {
    inner: LocalDecider,
    asked: Mutex<Vec<DecisionRequest>>,
}

impl Decider for RecordingDecider {
    fn decide<'a>(&'a self, request: &'a DecisionRequest) -> BoxFuture<'a, Verdict> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.clone());
        self.inner.decide(request)
    }

    fn commit_usage(
        &self,
        decision_id: Uuid,
        usage: limits::Usage,
    ) -> BoxFuture<'_, Result<(), String>> {
        self.inner.commit_usage(decision_id, usage)
    }

    fn permitted_tools<'a>(
        &'a self,
        principal: &'a Principal,
        server: Option<&'a str>,
        tools: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, String>> {
        self.inner.permitted_tools(principal, server, tools)
    }

    fn record(&self, event: AuditEvent) -> BoxFuture<'_, Result<(), String>> {
        self.inner.record(event)
    }
}

/// What the fake MCP server saw.
#[derive(Default, Debug)]
struct Seen {
    bodies: Vec<Bytes>,
    headers: Vec<HeaderMap>,
}

type Shared = Arc<Mutex<Seen>>;

async fn fake_mcp(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let n = {
        let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
        s.bodies.push(body.clone());
        s.headers.push(headers);
        s.bodies.len()
    };
    let msg: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let json = |v: Value| ([(header::CONTENT_TYPE, "application/json")], v.to_string());
    match msg.get("method").and_then(Value::as_str) {
        Some("initialize") => (
            [(
                header::HeaderName::from_static("mcp-session-id"),
                format!("sess-{n}"),
            )],
            json(
                json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"fake","version":"1"}}}),
            ),
        )
            .into_response(),
        Some("tools/list") => json(json!({"jsonrpc":"2.0","id":id,"result":{"tools":[
            {"name":"echo","inputSchema":{"type":"object"}},
            {"name":"refund","inputSchema":{"type":"object"}},
            {"name":"delete_all","inputSchema":{"type":"object"}}
        ]}}))
        .into_response(),
        Some("tools/call") => json(json!({"jsonrpc":"2.0","id":id,"result":{
            "content":[{"type":"text","text":msg.pointer("/params/arguments/text").cloned().unwrap_or(Value::Null)}]
        }}))
        .into_response(),
        _ => StatusCode::ACCEPTED.into_response(),
    }
}

struct Fixture {
    app: Router,
    seen: Shared,
    decider: Arc<RecordingDecider>,
    audit: Arc<AuditLog>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The audit log at `audit_path` and a recording decider over [`engine`] writing to it.
fn recording(audit_path: &std::path::Path) -> (Arc<AuditLog>, Arc<RecordingDecider>) {
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit"),
    );
    let decider = Arc::new(RecordingDecider {
        inner: LocalDecider::new(engine(), Arc::clone(&audit)),
        asked: Mutex::default(),
    });
    (audit, decider)
}

fn engine() -> Arc<Engine> {
    let compilation = compile(&parse_policies(POLICIES).expect("policies parse"));
    assert!(compilation.is_ok(), "{:?}", compilation.reports);
    Arc::new(Engine::new(compilation.compiled))
}

/// The gateway with API keys and a TokenReviewer over `client`, in front of the fake MCP server.
async fn fixture(client: kube::Client) -> Fixture {
    let seen: Shared = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream: SocketAddr = listener.local_addr().expect("addr");
    let mcp = Router::new()
        .route("/mcp", post(fake_mcp))
        .with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, mcp).await;
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let (audit, decider) = recording(&audit_path);
    let config = GatewayConfig::from_yaml(&format!(
        r#"
agentNamespace: default
upstreams:
  - name: fake
    url: http://{upstream}/mcp
    agents: ["bot-*", "system:serviceaccount:agents:*"]
    timeoutSeconds: 2
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
    let reviewer = TokenReviewer::new(
        client,
        TokenReviewConfig {
            audiences: vec![AUDIENCE.into()],
            ..TokenReviewConfig::default()
        },
    );
    let gateway = Gateway::new(
        Arc::clone(&decider) as Arc<dyn Decider>,
        Authenticator::from_yaml(KEYS).expect("keys"),
        upstreams,
        config.agent_namespace.clone(),
    )
    .with_token_review(reviewer);
    Fixture {
        app: router(Arc::new(gateway)),
        seen,
        decider,
        audit,
        audit_path,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(f: &Fixture, credential: &str, session: Option<&str>, message: Value) -> Answer {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri("/mcp/fake")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .header(header::AUTHORIZATION, format!("Bearer {credential}"));
    if let Some(s) = session {
        request = request.header("mcp-session-id", s);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        f.app.clone().oneshot(
            request
                .body(Body::from(message.to_string()))
                .expect("request"),
        ),
    )
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
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn initialize(f: &Fixture, credential: &str) -> String {
    let a = send(
        f,
        credential,
        None,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    a.headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned()
}

fn call(id: i64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

fn list(id: i64) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/list"})
}

fn reviewed_tokens(reviews: &Reviews) -> Vec<String> {
    reviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(|r| r.pointer("/spec/token").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn principals_asked(f: &Fixture) -> Vec<Principal> {
    f.decider
        .asked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|r| r.principal.clone())
        .collect()
}

fn forwarded_count(f: &Fixture) -> usize {
    f.seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .bodies
        .len()
}

fn audit_text(f: &Fixture) -> String {
    flushed(&f.audit, &f.audit_path)
}

/// The audit file's text once everything queued is written.
fn flushed(audit: &AuditLog, path: &std::path::Path) -> String {
    audit.flush().expect("flush");
    std::fs::read_to_string(path).unwrap_or_default()
}

fn error_message(a: &Answer) -> String {
    a.json["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn support_principal() -> Principal {
    Principal {
        id: SUPPORT_SA.into(),
        kind: Some(PrincipalKind::ServiceAccount),
        namespace: Some("agents".into()),
        service_account: Some("support-bot".into()),
        ..Principal::default()
    }
}

#[tokio::test]
async fn a_service_account_token_is_reviewed_once_and_its_service_account_is_the_principal() {
    let (client, reviews) = mock_api_server();
    let f = fixture(client).await;
    let sid = initialize(&f, SUPPORT).await;
    let ok = send(
        &f,
        SUPPORT,
        Some(&sid),
        call(1, "echo", json!({"text":"hi"})),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json);
    assert_eq!(ok.json["result"]["content"][0]["text"], "hi");
    let denied = send(&f, SUPPORT, Some(&sid), call(2, "delete_all", json!({}))).await;
    assert_eq!(denied.json["error"]["code"], jsonrpc::DENIED);
    assert!(
        error_message(&denied).contains("agents/support#no-deletes"),
        "{}",
        denied.json
    );
    // tools/list is filtered for the same principal.
    let tools = send(&f, SUPPORT, Some(&sid), list(3)).await;
    let names: Vec<&str> = tools.json["result"]["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["echo"]);

    // Four requests, one review: the rest came from the cache. The review asked for the
    // gateway's audience.
    assert_eq!(reviewed_tokens(&reviews), [SUPPORT]);
    let review = reviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .first()
        .cloned()
        .expect("one review");
    assert_eq!(review["spec"]["audiences"], json!([AUDIENCE]));
    assert_eq!(review["kind"], "TokenReview");

    // The decider was asked about exactly the ServiceAccount's principal.
    assert_eq!(
        principals_asked(&f),
        [support_principal(), support_principal()]
    );

    // The token never left the gateway: the upstream got its own credential only.
    let headers = f
        .seen
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .headers
        .clone();
    assert_eq!(headers.len(), 3, "initialize, echo, tools/list forwarded");
    for h in &headers {
        assert_eq!(
            h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
            Some("Bearer upstream-secret")
        );
        assert!(
            h.values()
                .all(|v| !String::from_utf8_lossy(v.as_bytes()).contains(SUPPORT)),
            "the agent's token was forwarded: {h:?}"
        );
    }
    // The audit trail names the principal, never the token.
    let audit = audit_text(&f);
    assert!(audit.contains(SUPPORT_SA), "{audit}");
    assert!(!audit.contains(SUPPORT), "the token is in the audit log");
}

#[tokio::test]
async fn api_keys_keep_working_next_to_token_review_without_any_review() {
    let (client, reviews) = mock_api_server();
    let f = fixture(client).await;
    let sid = initialize(&f, BOT_A).await;
    let ok = send(
        &f,
        BOT_A,
        Some(&sid),
        call(1, "echo", json!({"text":"key"})),
    )
    .await;
    assert_eq!(
        ok.json["result"]["content"][0]["text"], "key",
        "{}",
        ok.json
    );
    assert_eq!(
        principals_asked(&f),
        [Principal {
            id: "bot-a".into(),
            kind: Some(PrincipalKind::Agent),
            namespace: Some("default".into()),
            ..Principal::default()
        }]
    );
    assert!(
        reviewed_tokens(&reviews).is_empty(),
        "an API key was reviewed"
    );
}

#[tokio::test]
async fn refused_tokens_are_401_and_tokens_of_users_403() {
    let (client, reviews) = mock_api_server();
    let f = fixture(client).await;
    let expired = send(&f, EXPIRED, None, call(1, "echo", json!({}))).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{}", expired.json);
    assert_eq!(
        expired
            .headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    assert_eq!(expired.json["error"]["code"], jsonrpc::UNAUTHORIZED);
    assert!(
        error_message(&expired).contains("invalid, expired or revoked token"),
        "{}",
        expired.json
    );
    // A refusal is remembered briefly: the same token again is not reviewed again.
    let again = send(&f, EXPIRED, None, call(2, "echo", json!({}))).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    // A valid token of a user that is no ServiceAccount has no role at the gateway.
    let alice = send(&f, ALICE, None, call(3, "echo", json!({}))).await;
    assert_eq!(alice.status, StatusCode::FORBIDDEN, "{}", alice.json);
    assert!(
        error_message(&alice).contains("alice@example.com"),
        "{}",
        alice.json
    );
    assert_eq!(reviewed_tokens(&reviews), [EXPIRED, ALICE]);
    assert_eq!(
        forwarded_count(&f),
        0,
        "a refused caller reached the upstream"
    );
    assert!(principals_asked(&f).is_empty());
    let audit = audit_text(&f);
    assert_eq!(audit.lines().count(), 3, "{audit}");
    assert!(
        !audit.contains(EXPIRED) && !audit.contains(ALICE),
        "{audit}"
    );
}

#[tokio::test]
async fn a_review_that_cannot_be_done_is_503_audited_and_nothing_is_forwarded() {
    // The API server refuses the review (the gateway lacks RBAC): not cached, fail closed.
    let (client, reviews) = mock_api_server();
    let f = fixture(client).await;
    for id in [1, 2] {
        let a = send(&f, NO_RBAC, None, call(id, "echo", json!({}))).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
        assert_eq!(a.json["jsonrpc"], "2.0");
        assert_eq!(a.json["error"]["code"], jsonrpc::UNAUTHORIZED);
        let message = error_message(&a);
        assert!(
            message.contains("authentication_unavailable") && message.contains("403"),
            "{message}"
        );
        assert_eq!(
            a.headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }
    assert_eq!(
        reviewed_tokens(&reviews),
        [NO_RBAC, NO_RBAC],
        "errors are not cached"
    );
    assert_eq!(forwarded_count(&f), 0);
    let audit = audit_text(&f);
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("authentication_unavailable"))
            .count(),
        2,
        "{audit}"
    );
    assert!(!audit.contains(NO_RBAC), "{audit}");

    // The API server cannot be reached at all.
    let f = fixture(unreachable_api_server()).await;
    let a = send(&f, SUPPORT, None, call(1, "echo", json!({}))).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.json);
    assert!(
        error_message(&a).contains("cannot be reached"),
        "{}",
        a.json
    );
    assert_eq!(forwarded_count(&f), 0);
    assert!(principals_asked(&f).is_empty());
    let audit = audit_text(&f);
    assert!(audit.contains("authentication_unavailable"), "{audit}");
    assert!(!audit.contains(SUPPORT), "{audit}");
    // API keys do not need the API server.
    let sid = initialize(&f, BOT_A).await;
    let ok = send(&f, BOT_A, Some(&sid), call(2, "echo", json!({"text":"k"}))).await;
    assert_eq!(ok.json["result"]["content"][0]["text"], "k", "{}", ok.json);
}

#[tokio::test]
async fn a_service_account_the_upstream_does_not_admit_is_403() {
    let (client, reviews) = mock_api_server();
    let f = fixture(client).await;
    let a = send(
        &f,
        INTRUDER,
        None,
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.json);
    assert!(
        error_message(&a).contains("system:serviceaccount:other:intruder"),
        "{}",
        a.json
    );
    assert_eq!(reviewed_tokens(&reviews), [INTRUDER]);
    assert_eq!(forwarded_count(&f), 0);
    let audit = audit_text(&f);
    assert!(
        audit.contains("\"principal\":\"system:serviceaccount:other:intruder\""),
        "{audit}"
    );
}

#[tokio::test]
async fn a_session_of_one_service_account_is_refused_to_another() {
    let (client, _reviews) = mock_api_server();
    let f = fixture(client).await;
    let sid = initialize(&f, SUPPORT).await;
    let before = forwarded_count(&f);
    // Another ServiceAccount of the same namespace.
    let other = send(
        &f,
        FINANCE,
        Some(&sid),
        call(1, "echo", json!({"text":"x"})),
    )
    .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN, "{}", other.json);
    assert!(
        error_message(&other).contains("session_hijack"),
        "{}",
        other.json
    );
    // An API key whose agent id is the ServiceAccount's username is still another principal.
    let impostor = send(
        &f,
        IMPOSTOR,
        Some(&sid),
        call(2, "echo", json!({"text":"x"})),
    )
    .await;
    assert_eq!(impostor.status, StatusCode::FORBIDDEN, "{}", impostor.json);
    assert!(error_message(&impostor).contains("session_hijack"));
    assert_eq!(
        forwarded_count(&f),
        before,
        "a hijacked session was forwarded"
    );
    assert!(principals_asked(&f).is_empty());
    // The owner keeps using it.
    let ok = send(
        &f,
        SUPPORT,
        Some(&sid),
        call(3, "echo", json!({"text":"mine"})),
    )
    .await;
    assert_eq!(
        ok.json["result"]["content"][0]["text"], "mine",
        "{}",
        ok.json
    );
    assert_eq!(principals_asked(&f), [support_principal()]);
    let audit = audit_text(&f);
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("session_hijack"))
            .count(),
        2,
        "{audit}"
    );
}

/// The ext_authz service with the same keys, engine and TokenReviewer as the gateway fixture.
struct ExtFixture {
    service: ExtAuthz,
    decider: Arc<RecordingDecider>,
    audit: Arc<AuditLog>,
    audit_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn ext_fixture(client: kube::Client) -> ExtFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let (audit, decider) = recording(&audit_path);
    let service = ExtAuthz::new(
        Arc::clone(&decider) as Arc<dyn Decider>,
        Authenticator::from_yaml(KEYS).expect("keys"),
        ExtAuthzConfig {
            default_server: Some("fake".into()),
            agent_namespace: Some("default".into()),
            ..ExtAuthzConfig::default()
        },
    )
    .with_token_review(TokenReviewer::new(
        client,
        TokenReviewConfig {
            audiences: vec![AUDIENCE.into()],
            ..TokenReviewConfig::default()
        },
    ));
    ExtFixture {
        service,
        decider,
        audit,
        audit_path,
        _dir: dir,
    }
}

/// Ask ext_authz about an MCP `tools/call` of `tool` sent with `credential`; the gRPC status
/// code of the answer (0 OK, 7 permission denied, 14 unavailable, 16 unauthenticated).
async fn ext_check(f: &ExtFixture, credential: &str, tool: &str) -> (i32, CheckResponse) {
    let http = HttpRequest {
        id: "req-1".into(),
        method: "POST".into(),
        path: "/mcp".into(),
        host: "tools.internal".into(),
        headers: [
            ("content-type", "application/json".to_owned()),
            ("authorization", format!("Bearer {credential}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        body: call(1, tool, json!({})).to_string(),
        ..HttpRequest::default()
    };
    let response = f
        .service
        .check(CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(EnvoyRequest {
                    time: None,
                    http: Some(http),
                }),
                ..AttributeContext::default()
            }),
        })
        .await;
    (response.status.as_ref().map_or(-1, |s| s.code), response)
}

fn ext_audit(f: &ExtFixture) -> String {
    flushed(&f.audit, &f.audit_path)
}

#[tokio::test]
async fn ext_authz_takes_service_account_tokens_as_their_service_account() {
    let (client, reviews) = mock_api_server();
    let f = ext_fixture(client);
    // Reviewed once; the ServiceAccount is the principal, so its namespaced policy decides.
    let (code, answer) = ext_check(&f, SUPPORT, "echo").await;
    assert_eq!(code, 0, "{answer:?}");
    let (code, answer) = ext_check(&f, SUPPORT, "delete_all").await;
    assert_eq!(code, 7, "{answer:?}");
    // An API key still works, without any review.
    let (code, answer) = ext_check(&f, BOT_A, "refund").await;
    assert_eq!(code, 0, "{answer:?}");
    // An agent API key naming a ServiceAccount is still no ServiceAccount: no policy governs it.
    let (code, answer) = ext_check(&f, IMPOSTOR, "echo").await;
    assert_eq!(code, 7, "{answer:?}");
    let asked: Vec<Principal> = f
        .decider
        .asked
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|r| r.principal.clone())
        .collect();
    assert_eq!(asked[0], support_principal());
    assert_eq!(asked[1], support_principal());
    assert_eq!(asked[2].id, "bot-a");
    assert_eq!(asked[3].kind, Some(PrincipalKind::Agent));
    assert_eq!(asked[3].service_account, None);
    // Refused: an expired token (401), a user that is no ServiceAccount (403).
    let (code, answer) = ext_check(&f, EXPIRED, "echo").await;
    assert_eq!(code, 16, "{answer:?}");
    let (code, answer) = ext_check(&f, ALICE, "echo").await;
    assert_eq!(code, 7, "{answer:?}");
    assert_eq!(reviewed_tokens(&reviews), [SUPPORT, EXPIRED, ALICE]);
    assert_eq!(f.decider.asked.lock().map(|a| a.len()).unwrap_or(0), 4);
    let audit = ext_audit(&f);
    assert_eq!(audit.lines().count(), 6, "{audit}");
    for token in [SUPPORT, EXPIRED, ALICE, BOT_A] {
        assert!(
            !audit.contains(token),
            "a credential reached the audit log: {audit}"
        );
    }
}

#[tokio::test]
async fn ext_authz_fails_closed_when_a_token_cannot_be_reviewed() {
    // The API server refuses the review (no RBAC), or cannot be reached at all.
    for (client, token) in [
        (mock_api_server().0, NO_RBAC),
        (unreachable_api_server(), SUPPORT),
    ] {
        let f = ext_fixture(client);
        let (code, answer) = ext_check(&f, token, "echo").await;
        assert_eq!(code, 14, "{answer:?}");
        assert!(
            f.decider
                .asked
                .lock()
                .map(|a| a.is_empty())
                .unwrap_or(false)
        );
        let audit = ext_audit(&f);
        assert!(audit.contains("authentication_unavailable"), "{audit}");
        assert!(!audit.contains(token), "{audit}");
    }
}
