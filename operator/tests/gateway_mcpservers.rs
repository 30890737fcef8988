//! The MCP gateway serving `MCPServer` objects: a fake Kubernetes API server on 127.0.0.1 lists
//! and watches the objects of namespace `mcp` (events pushed by the test) and answers Secret
//! reads; [`McpServerWatch`] keeps the gateway's table current; the gateway's router is driven
//! in-process with `oneshot` in front of fake MCP servers on 127.0.0.1.
//!
//! Covered: a call forwarded with the Secret's credential (and a rotated Secret picked up), an
//! object changed to another URL without a restart, a deleted object answered 404, a missing
//! credential (and a forbidden Secret) not served but refused with the reason and audited, an
//! object replacing a file upstream of the same name, Secrets only ever read by name, the
//! start-up check's messages, an `https://` server verified against the CA of its
//! `spec.tls.caSecretRef`, and one requiring mutual TLS given the client certificate of its
//! `spec.tls.clientCertificateSecretName`.

#[path = "support/https.rs"]
mod https;

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes, to_bytes},
    extract::{Path, RawQuery, State},
    http::{HeaderMap, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use operator::{
    decision::{auth::Authenticator, files::parse_policies},
    gateway::{
        config::{GatewayConfig, Upstream},
        decider::{Decider, LocalDecider},
        mcpservers::{FileUpstreams, McpServerWatch},
        proxy::{Gateway, router},
        routes::{Route, RouteTable},
        tls::ClientCache,
    },
};
use overseer_policy::compile::compile;
use overseer_policy::{
    audit::{AuditConfig, AuditLog, FileSinkConfig},
    engine::Engine,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tower::ServiceExt as _;

const NS: &str = "mcp";
const SERVERS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/namespaces/mcp/mcpservers";

const POLICIES: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: bots, namespace: default}
spec:
  mode: Enforce
  subjects:
    agentIds: ["bot-*"]
  tools:
    - {name: reads, tools: ["echo"], effect: Allow, reason: "bots may echo"}
"#;

const KEYS: &str = r#"
keys:
  - {name: bot-a, role: agent, agent: bot-a, key: "bot-a-key-0123456789"}
"#;
const BOT_A: &str = "bot-a-key-0123456789";

// ---------------------------------------------------------------------------------------------
// A fake Kubernetes API server: MCPServers of namespace `mcp` (list and watch) and Secrets.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ApiState {
    resource_version: u64,
    servers: BTreeMap<String, Value>,
    /// Secret name → its `data` (base64 values), or `None` for a Secret the gateway may not read.
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
    /// The status code every MCPServer list answers with instead of the list, if any.
    list_refused: Option<u16>,
    /// Every watch event sent, with its resourceVersion (replayed to a watch that starts after
    /// it, as the API server does from the watch's `resourceVersion`).
    history: Vec<(u64, String)>,
    /// Every request, as `METHOD path?query`.
    log: Vec<String>,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<ApiState>>,
    events: broadcast::Sender<(u64, String)>,
}

impl FakeApi {
    fn new() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(64).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Create or replace the MCPServer `name` with `spec`, and tell the watchers.
    fn apply(&self, name: &str, spec: Value) {
        let event = {
            let mut s = self.lock();
            s.resource_version += 1;
            let generation = s
                .servers
                .get(name)
                .and_then(|o| o.pointer("/metadata/generation").and_then(Value::as_i64))
                .unwrap_or(0)
                + 1;
            let object = json!({
                "apiVersion": "agents.overseer.dev/v1alpha1",
                "kind": "MCPServer",
                "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                             "generation": generation,
                             "resourceVersion": s.resource_version.to_string()},
                "spec": spec,
            });
            let kind = if s.servers.insert(name.to_owned(), object.clone()).is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let event = (
                s.resource_version,
                json!({"type": kind, "object": object}).to_string(),
            );
            s.history.push(event.clone());
            event
        };
        let _ = self.events.send(event);
    }

    fn delete(&self, name: &str) {
        let event = {
            let mut s = self.lock();
            s.resource_version += 1;
            let mut object = s.servers.remove(name).expect("object exists");
            object["metadata"]["resourceVersion"] = json!(s.resource_version.to_string());
            let event = (
                s.resource_version,
                json!({"type": "DELETED", "object": object}).to_string(),
            );
            s.history.push(event.clone());
            event
        };
        let _ = self.events.send(event);
    }

    fn put_secret(&self, name: &str, key: &str, value: &str) {
        self.lock().secrets.insert(
            name.to_owned(),
            Some([(key.to_owned(), base64_encode(value.as_bytes()))].into()),
        );
    }

    /// Create or replace the Secret `name` with `data` (key → text).
    fn put_secret_data(&self, name: &str, data: &[(&str, &str)]) {
        let data = data
            .iter()
            .map(|(k, v)| ((*k).to_owned(), base64_encode(v.as_bytes())))
            .collect();
        self.lock().secrets.insert(name.to_owned(), Some(data));
    }

    /// How often the Secret `name` was read.
    fn secret_log_count(&self, name: &str) -> usize {
        let path = format!("GET /api/v1/namespaces/{NS}/secrets/{name}");
        self.lock().log.iter().filter(|l| **l == path).count()
    }

    fn forbid_secret(&self, name: &str) {
        self.lock().secrets.insert(name.to_owned(), None);
    }

    fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

/// Standard base64 (the encoding of a Secret's `data`), without a dependency for it.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).expect("status code"),
        [(header::CONTENT_TYPE, "application/json")],
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
               "message": message, "code": code})
        .to_string(),
    )
        .into_response()
}

async fn servers(State(api): State<FakeApi>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let (list, refused) = {
        let mut s = api.lock();
        s.log.push(format!("GET {SERVERS_PATH}?{query}"));
        let items: Vec<Value> = s.servers.values().cloned().collect();
        (
            json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "MCPServerList",
                   "metadata": {"resourceVersion": s.resource_version.to_string()},
                   "items": items}),
            s.list_refused,
        )
    };
    if let Some(code) = refused {
        return match code {
            404 => status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
            _ => status(
                code,
                "Forbidden",
                "mcpservers.agents.overseer.dev is forbidden: User \"system:serviceaccount:mcp:gw\" cannot list resource \"mcpservers\"",
            ),
        };
    }
    if !watch {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            list.to_string(),
        )
            .into_response();
    }
    // Events after the watch's resourceVersion: those already sent, then live ones.
    let since: u64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let events = api.events.subscribe();
    let replay: std::collections::VecDeque<(u64, String)> = api
        .lock()
        .history
        .iter()
        .filter(|(rv, _)| *rv > since)
        .cloned()
        .collect();
    let last = replay.back().map_or(since, |(rv, _)| *rv);
    let stream = futures::stream::unfold(
        (events, replay, last),
        |(mut events, mut replay, last)| async move {
            if let Some((_, line)) = replay.pop_front() {
                let chunk = Ok::<_, Infallible>(Bytes::from(line + "\n"));
                return Some((chunk, (events, replay, last)));
            }
            loop {
                match events.recv().await {
                    Ok((rv, _)) if rv <= last => {}
                    Ok((rv, line)) => {
                        let chunk = Ok::<_, Infallible>(Bytes::from(line + "\n"));
                        return Some((chunk, (events, replay, rv)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn secret(State(api): State<FakeApi>, Path(name): Path<String>, method: Method) -> Response {
    let found = {
        let mut s = api.lock();
        s.log
            .push(format!("{method} /api/v1/namespaces/{NS}/secrets/{name}"));
        s.secrets.get(&name).cloned()
    };
    match found {
        None => status(404, "NotFound", &format!("secrets \"{name}\" not found")),
        Some(None) => status(
            403,
            "Forbidden",
            &format!(
                "secrets \"{name}\" is forbidden: User \"system:serviceaccount:mcp:gw\" cannot get resource \"secrets\""
            ),
        ),
        Some(Some(data)) => (
            [(header::CONTENT_TYPE, "application/json")],
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": name, "namespace": NS, "resourceVersion": "1"},
                   "type": "Opaque", "data": data})
            .to_string(),
        )
            .into_response(),
    }
}

async fn anything_else(
    State(api): State<FakeApi>,
    method: Method,
    uri: axum::http::Uri,
) -> Response {
    api.lock().log.push(format!("{method} {uri}"));
    status(404, "NotFound", "not served by this fake")
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

async fn kube_client(api: &FakeApi) -> kube::Client {
    let app = Router::new()
        .route(SERVERS_PATH, get(servers))
        .route("/api/v1/namespaces/mcp/secrets/{name}", get(secret))
        .fallback(anything_else)
        .with_state(api.clone());
    let addr = spawn(app).await;
    let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
    kube::Client::try_from(config).expect("client")
}

// ---------------------------------------------------------------------------------------------
// Fake MCP servers.
// ---------------------------------------------------------------------------------------------

/// The headers of every request a fake MCP server received.
type Seen = Arc<Mutex<Vec<HeaderMap>>>;

async fn fake_mcp(
    State((label, seen)): State<(&'static str, Seen)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(headers);
    let msg: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"jsonrpc": "2.0", "id": id,
               "result": {"content": [{"type": "text", "text": label}]}})
        .to_string(),
    )
        .into_response()
}

/// A fake MCP server answering every call with `label`; returns its URL and what it saw.
async fn mcp_server(label: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let addr = spawn(
        Router::new()
            .route("/mcp", post(fake_mcp))
            .with_state((label, seen.clone())),
    )
    .await;
    (format!("http://{addr}/mcp"), seen)
}

fn seen_credentials(seen: &Seen) -> Vec<Option<String>> {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|h| {
            h.get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The gateway under test.
// ---------------------------------------------------------------------------------------------

struct Fixture {
    api: FakeApi,
    app: Router,
    table: RouteTable,
    audit: Arc<AuditLog>,
    audit_path: std::path::PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Publishes a reloaded configuration file's upstreams to the watch.
    file_updates: tokio::sync::watch::Sender<FileUpstreams>,
    _dir: tempfile::TempDir,
}

fn engine() -> Arc<Engine> {
    let compilation = compile(&parse_policies(POLICIES).expect("policies parse"));
    assert!(compilation.is_ok(), "{:?}", compilation.reports);
    Arc::new(Engine::new(compilation.compiled))
}

/// A gateway watching namespace `mcp` of `api` (the objects and Secrets set up before are there
/// from the start), with the file upstreams of `file_yaml`.
async fn fixture(api: FakeApi, file_yaml: Option<&str>) -> Fixture {
    let client = kube_client(&api).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit_path = dir.path().join("audit.jsonl");
    let audit = Arc::new(
        AuditLog::open(AuditConfig {
            file: Some(FileSinkConfig::new(&audit_path)),
            ..AuditConfig::default()
        })
        .expect("audit"),
    );
    let file = match file_yaml {
        Some(yaml) => file_upstreams(yaml),
        None => HashMap::new(),
    };
    let table = RouteTable::default();
    let (file_updates, updates) = tokio::sync::watch::channel(FileUpstreams::default());
    let watch = McpServerWatch::new(client, NS, file, table.clone())
        .with_refresh(Duration::from_millis(200))
        .with_file_updates(updates);
    watch.check().await.expect("MCPServers can be listed");
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(watch.run(
        move || {
            let _ = synced_tx.send(());
        },
        async move {
            let _ = stopped.await;
        },
    ));
    tokio::time::timeout(Duration::from_secs(5), synced_rx)
        .await
        .expect("the first list is loaded in time")
        .expect("synced");
    let gateway = Gateway::new(
        Arc::new(LocalDecider::new(engine(), Arc::clone(&audit))) as Arc<dyn Decider>,
        Authenticator::from_yaml(KEYS).expect("keys"),
        HashMap::new(),
        Some("default".into()),
    )
    .with_routes(table.clone());
    Fixture {
        api,
        app: router(Arc::new(gateway)),
        table,
        audit,
        audit_path,
        stop,
        file_updates,
        _dir: dir,
    }
}

/// The upstreams of a configuration file.
fn file_upstreams(yaml: &str) -> HashMap<String, Upstream> {
    GatewayConfig::from_yaml(yaml)
        .expect("config")
        .resolve(|_| None, &mut ClientCache::default())
        .expect("resolve")
}

struct Answer {
    status: StatusCode,
    json: Value,
}

impl Answer {
    fn text(&self) -> &str {
        self.json
            .pointer("/result/content/0/text")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn error(&self) -> &str {
        self.json
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// `tools/call echo` on `/mcp/{server}` as bot-a (or with `credential`).
async fn call(f: &Fixture, server: &str, credential: &str) -> Answer {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/mcp/{server}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::AUTHORIZATION, format!("Bearer {credential}"))
        .body(Body::from(
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                   "params": {"name": "echo", "arguments": {}}})
            .to_string(),
        ))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), f.app.clone().oneshot(request))
        .await
        .expect("in time")
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Answer {
        status,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Wait (at most 5 s) until `check` holds for what a call to `server` answers.
async fn eventually(
    f: &Fixture,
    server: &str,
    what: &str,
    check: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = call(f, server, BOT_A).await;
        if check(&answer) {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {} {}",
            answer.status,
            answer.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn audit_text(f: &Fixture) -> String {
    f.audit.flush().expect("flush");
    std::fs::read_to_string(&f.audit_path).unwrap_or_default()
}

fn github(url: &str, secret: &str) -> Value {
    json!({"url": url, "agents": ["bot-*"], "timeoutSeconds": 5,
           "credential": {"secretRef": {"name": secret, "key": "token"}, "prefix": "Bearer "}})
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_mcpserver_is_served_with_the_credential_of_its_secret() {
    let (url, seen) = mcp_server("github").await;
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "upstream-secret-1\n");
    api.apply("github", github(&url, "github-token"));
    let f = fixture(api, None).await;

    let answer = call(&f, "github", BOT_A).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.text(), "github");
    // The Secret's value (trailing newline trimmed) with the prefix; the agent's key stays here.
    assert_eq!(
        seen_credentials(&seen),
        [Some("Bearer upstream-secret-1".to_owned())]
    );

    // A rotated Secret is sent once the refresh period has passed, without a restart.
    f.api
        .put_secret("github-token", "token", "upstream-secret-2");
    eventually(&f, "github", "the rotated credential", |_| {
        seen_credentials(&seen).last() == Some(&Some("Bearer upstream-secret-2".to_owned()))
    })
    .await;

    // Neither the agent's key nor the upstream's credential is audited.
    let audit = audit_text(&f);
    assert!(audit.contains("\"github\""), "{audit}");
    for secret in [BOT_A, "upstream-secret-1", "upstream-secret-2"] {
        assert!(!audit.contains(secret), "{secret} in the audit log");
    }
    // Secrets are only ever read by name: never listed or watched.
    let secret_requests: Vec<String> = f
        .api
        .log()
        .into_iter()
        .filter(|l| l.contains("/secrets"))
        .collect();
    assert!(!secret_requests.is_empty());
    assert!(
        secret_requests
            .iter()
            .all(|l| l == "GET /api/v1/namespaces/mcp/secrets/github-token"),
        "{secret_requests:?}"
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn an_updated_mcpserver_changes_the_target_without_a_restart() {
    let (first, first_seen) = mcp_server("first").await;
    let (second, second_seen) = mcp_server("second").await;
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "t-1");
    api.put_secret("other-token", "token", "t-2");
    api.apply("github", github(&first, "github-token"));
    let f = fixture(api, None).await;
    assert_eq!(call(&f, "github", BOT_A).await.text(), "first");

    // A new URL and another Secret: the next calls go there with that credential.
    f.api.apply("github", github(&second, "other-token"));
    eventually(&f, "github", "the new URL", |a| a.text() == "second").await;
    assert_eq!(
        seen_credentials(&second_seen).last(),
        Some(&Some("Bearer t-2".to_owned()))
    );
    // Until the change arrived, calls went to the first server, with its own credential.
    let first = seen_credentials(&first_seen);
    assert!(
        !first.is_empty() && first.iter().all(|c| c.as_deref() == Some("Bearer t-1")),
        "{first:?}"
    );

    // Narrowing who may reach it applies at once too.
    let mut narrowed = github(&second, "other-token");
    narrowed["agents"] = json!(["finance-*"]);
    f.api.apply("github", narrowed);
    let refused = eventually(&f, "github", "bot-a refused", |a| {
        a.status == StatusCode::FORBIDDEN
    })
    .await;
    assert!(
        refused.error().contains("may not reach MCP server"),
        "{}",
        refused.json
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn a_deleted_mcpserver_is_no_longer_served() {
    let (url, seen) = mcp_server("github").await;
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "t");
    api.apply("github", github(&url, "github-token"));
    let f = fixture(api, None).await;
    assert_eq!(call(&f, "github", BOT_A).await.status, StatusCode::OK);

    f.api.delete("github");
    let gone = eventually(&f, "github", "404 after the delete", |a| {
        a.status == StatusCode::NOT_FOUND
    })
    .await;
    assert!(
        gone.error()
            .contains("no upstream MCP server named \"github\""),
        "{}",
        gone.json
    );
    assert!(f.table.get("github").is_none());
    let forwarded = seen_credentials(&seen).len();
    assert_eq!(
        call(&f, "github", BOT_A).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        seen_credentials(&seen).len(),
        forwarded,
        "nothing forwarded after the delete"
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn an_mcpserver_without_its_credential_is_refused_with_the_reason() {
    let (url, seen) = mcp_server("github").await;
    let api = FakeApi::new();
    api.apply("github", github(&url, "github-token"));
    api.put_secret("wrong-key", "password", "x");
    api.apply("wrong-key", github(&url, "wrong-key"));
    api.forbid_secret("forbidden");
    api.apply("forbidden", github(&url, "forbidden"));
    let f = fixture(api, None).await;

    for (server, reason, names) in [
        (
            "github",
            "CredentialMissing",
            "credential Secret mcp/github-token not found; create it with the key \"token\"",
        ),
        (
            "wrong-key",
            "CredentialMissing",
            "credential Secret mcp/wrong-key has no key \"token\"",
        ),
        (
            "forbidden",
            "CredentialUnreadable",
            "the gateway may not read credential Secret mcp/forbidden",
        ),
    ] {
        let refused = call(&f, server, BOT_A).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.json);
        let message = refused.error();
        assert!(
            message.starts_with(&format!(
                "mcp_server_unavailable: MCP server \"{server}\" is not served ({reason}): "
            )),
            "{message}"
        );
        assert!(message.contains(names), "{message}");
        assert!(matches!(f.table.get(server), Some(Route::Unavailable(_))));
    }
    // An unauthenticated caller learns nothing about it.
    let anonymous = call(&f, "github", "not-a-key-0123456789").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(
        !anonymous.error().contains("github-token"),
        "{}",
        anonymous.json
    );
    assert!(seen_credentials(&seen).is_empty(), "nothing was forwarded");
    // Every refusal is audited with the agent and the server.
    let audit = audit_text(&f);
    let refusals: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &Value| r.to_string().contains("mcp_server_unavailable"))
        .collect();
    assert_eq!(refusals.len(), 3, "{audit}");
    assert!(
        refusals.iter().all(|r| r.to_string().contains("bot-a")),
        "{audit}"
    );

    // Creating the Secret serves the object within the refresh period, without touching it.
    f.api.put_secret("github-token", "token", "late-secret");
    let served = eventually(&f, "github", "served once the Secret exists", |a| {
        a.status == StatusCode::OK
    })
    .await;
    assert_eq!(served.text(), "github");
    assert_eq!(
        seen_credentials(&seen),
        [Some("Bearer late-secret".to_owned())]
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn an_mcpserver_replaces_the_file_upstream_of_the_same_name() {
    let (from_file, _) = mcp_server("file").await;
    let (from_object, _) = mcp_server("object").await;
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "t");
    api.apply("github", github(&from_object, "github-token"));
    let file = format!(
        "upstreams:\n  - {{name: github, url: '{from_file}'}}\n  - {{name: docs, url: '{from_file}'}}\n"
    );
    let f = fixture(api, Some(&file)).await;
    assert_eq!(call(&f, "github", BOT_A).await.text(), "object");
    assert_eq!(call(&f, "docs", BOT_A).await.text(), "file");

    // Without the object, the file's upstream of that name is served again.
    f.api.delete("github");
    eventually(&f, "github", "the file upstream back", |a| {
        a.text() == "file"
    })
    .await;
    assert_eq!(call(&f, "docs", BOT_A).await.text(), "file");
    let _ = f.stop.send(());
}

#[tokio::test]
async fn a_reloaded_configuration_file_is_merged_with_the_objects() {
    let (first, _) = mcp_server("file-1").await;
    let (second, _) = mcp_server("file-2").await;
    let (from_object, _) = mcp_server("object").await;
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "t");
    api.apply("github", github(&from_object, "github-token"));
    let f = fixture(
        api,
        Some(&format!("upstreams:\n  - {{name: docs, url: '{first}'}}\n")),
    )
    .await;
    assert_eq!(call(&f, "docs", BOT_A).await.text(), "file-1");
    assert_eq!(call(&f, "wiki", BOT_A).await.status, StatusCode::NOT_FOUND);

    // The file is reloaded: docs moves, wiki is added, and its github stays behind the object.
    let reloaded = file_upstreams(&format!(
        "upstreams:\n  - {{name: docs, url: '{second}'}}\n  - {{name: wiki, url: '{second}'}}\n  \
         - {{name: github, url: '{first}'}}\n"
    ));
    f.file_updates
        .send(Arc::new(
            reloaded
                .into_iter()
                .map(|(name, u)| (name, Arc::new(u)))
                .collect(),
        ))
        .expect("the watch listens");
    eventually(&f, "docs", "the moved file upstream", |a| {
        a.text() == "file-2"
    })
    .await;
    assert_eq!(call(&f, "wiki", BOT_A).await.text(), "file-2");
    assert_eq!(call(&f, "github", BOT_A).await.text(), "object");

    // Without the object, the reloaded file's github is served.
    f.api.delete("github");
    eventually(&f, "github", "the reloaded file's upstream", |a| {
        a.text() == "file-1"
    })
    .await;
    let _ = f.stop.send(());
}

#[tokio::test]
async fn the_start_up_check_says_what_to_fix() {
    for (code, expect) in [
        (404, "kubectl apply -k config/crd"),
        (403, "get/list/watch on mcpservers.agents.overseer.dev"),
    ] {
        let api = FakeApi::new();
        api.lock().list_refused = Some(code);
        let client = kube_client(&api).await;
        let watch = McpServerWatch::new(client, NS, HashMap::new(), RouteTable::default());
        let err = watch.check().await.expect_err("refused");
        assert!(err.contains(expect), "{code}: {err}");
        assert!(err.contains(NS) || code == 404, "{err}");
    }
}

#[tokio::test]
async fn an_https_upstream_is_spoken_to_over_tls() {
    // A plain-HTTP server named with https://: the gateway starts a TLS handshake, which fails,
    // so nothing reaches it in clear text and the agent is told the upstream failed.
    let (url, seen) = mcp_server("plain").await;
    let api = FakeApi::new();
    api.apply(
        "tls",
        json!({"url": url.replace("http://", "https://"), "timeoutSeconds": 2}),
    );
    let f = fixture(api, None).await;
    let answer = call(&f, "tls", BOT_A).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert!(
        answer.error().starts_with("upstream_error"),
        "{}",
        answer.json
    );
    assert!(seen_credentials(&seen).is_empty());
    let _ = f.stop.send(());
}

#[tokio::test]
async fn an_https_mcpserver_is_verified_against_the_ca_of_its_secret() {
    let seen: Seen = Arc::default();
    let server = https::serve(
        Router::new()
            .route("/mcp", post(fake_mcp))
            .with_state(("pinned", seen.clone())),
    )
    .await;
    let (ca_pem, other_ca) = (
        server.ca_pem.clone(),
        https::serve(Router::new()).await.ca_pem,
    );
    let url = format!("https://{}/mcp", server.addr);
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "upstream-secret-1");
    api.put_secret("github-ca", "ca.crt", &ca_pem);
    api.put_secret("wrong-ca", "ca.crt", &other_ca);
    let mut pinned = github(&url, "github-token");
    pinned["tls"] = json!({"caSecretRef": {"name": "github-ca", "key": "ca.crt"}});
    api.apply("pinned", pinned);
    // Verified against another CA, and against the system roots: the handshake fails.
    let mut wrong = github(&url, "github-token");
    wrong["tls"] = json!({"caSecretRef": {"name": "wrong-ca", "key": "ca.crt"}});
    api.apply("wrong", wrong);
    api.apply("roots", github(&url, "github-token"));
    // A CA Secret that is missing: not served, and the agent is told why.
    let mut missing = github(&url, "github-token");
    missing["tls"] = json!({"caSecretRef": {"name": "no-such-ca", "key": "ca.crt"}});
    api.apply("missing", missing);
    let f = fixture(api, None).await;

    let answer = call(&f, "pinned", BOT_A).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.text(), "pinned");
    assert_eq!(
        seen_credentials(&seen),
        [Some("Bearer upstream-secret-1".to_owned())]
    );
    for server in ["wrong", "roots"] {
        let answer = call(&f, server, BOT_A).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{server}: {}",
            answer.json
        );
        assert!(
            answer.error().starts_with("upstream_error"),
            "{}",
            answer.json
        );
    }
    assert_eq!(
        seen_credentials(&seen).len(),
        1,
        "nothing reached it unverified"
    );
    let answer = call(&f, "missing", BOT_A).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.json);
    assert!(
        answer.error().contains(
            "(CAMissing): CA Secret mcp/no-such-ca not found; create it with the key \"ca.crt\""
        ),
        "{}",
        answer.json
    );

    // The client made for the CA is kept across refreshes, and its connection with it: after
    // the Secrets were read again, the next call needs no new TLS handshake.
    let handshakes = server.handshakes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(handshakes, 1, "one connection so far");
    let reads = f.api.secret_log_count("github-ca");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while f.api.secret_log_count("github-ca") == reads {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the CA Secret was not read again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = call(&f, "pinned", BOT_A).await;
    assert_eq!(answer.text(), "pinned", "{}", answer.json);
    assert_eq!(
        server.handshakes.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the connection made before the refresh was reused"
    );
    let _ = f.stop.send(());
}

#[tokio::test]
async fn an_mcpserver_requiring_mutual_tls_gets_the_client_certificate_of_its_secret() {
    let seen: Seen = Arc::default();
    let server = https::serve_mutual(
        Router::new()
            .route("/mcp", post(fake_mcp))
            .with_state(("mutual", seen.clone())),
    )
    .await;
    let (cert, key) = server.client.clone().expect("client certificate");
    let url = format!("https://{}/mcp", server.addr);
    let api = FakeApi::new();
    api.put_secret("github-token", "token", "upstream-secret-1");
    // cert-manager style: one kubernetes.io/tls Secret with the CA, the certificate and its key.
    api.put_secret_data(
        "gateway-client",
        &[
            ("ca.crt", &server.ca_pem),
            ("tls.crt", &cert),
            ("tls.key", &key),
        ],
    );
    let mut mutual = github(&url, "github-token");
    mutual["tls"] = json!({"caSecretRef": {"name": "gateway-client", "key": "ca.crt"},
                           "clientCertificateSecretName": "gateway-client"});
    api.apply("mutual", mutual);
    // The CA alone: the server ends the handshake without a client certificate.
    let mut anonymous = github(&url, "github-token");
    anonymous["tls"] = json!({"caSecretRef": {"name": "gateway-client", "key": "ca.crt"}});
    api.apply("anonymous", anonymous);
    // A client certificate Secret without its key: not served, and the agent is told why.
    api.put_secret_data("half", &[("tls.crt", &cert)]);
    let mut half = github(&url, "github-token");
    half["tls"] = json!({"clientCertificateSecretName": "half"});
    api.apply("half", half);
    let f = fixture(api, None).await;

    let answer = call(&f, "mutual", BOT_A).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(answer.text(), "mutual");
    let answer = call(&f, "anonymous", BOT_A).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.json);
    assert_eq!(
        seen_credentials(&seen).len(),
        1,
        "only the mutual call reached it"
    );
    let answer = call(&f, "half", BOT_A).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{}", answer.json);
    assert!(
        answer.error().contains(
            "(ClientCertificateMissing): client certificate Secret mcp/half has no key \"tls.key\""
        ),
        "{}",
        answer.json
    );
    // The Secret holding the CA, the certificate and the key is read once per sync, by name.
    assert!(
        f.api
            .log()
            .iter()
            .all(|l| !l.contains("secrets?") && l.starts_with("GET")),
        "{:?}",
        f.api.log()
    );
    let _ = f.stop.send(());
}
