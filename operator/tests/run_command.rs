//! `overseer run` as a process, against a kubeconfig pointing at an unreachable address or at a
//! small in-test fake of the Kubernetes API (CRDs, Leases, and empty lists and idle watches of
//! everything the controllers watch; no real cluster is needed).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

fn kubeconfig(server: &str, name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("kubeconfig-{name}-{}", std::process::id()));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: x\n"
    );
    std::fs::write(&path, yaml).expect("kubeconfig written");
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn overseer(kubeconfig: &PathBuf, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_overseer"));
    cmd.arg("run")
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_LOG")
        .env_remove("POD_NAME")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn wait_output(child: Child) -> Output {
    tokio::time::timeout(
        WAIT,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("overseer exited in time")
    .expect("join")
    .expect("output")
}

#[tokio::test]
async fn unreachable_cluster_fails_fast_with_a_clear_message() {
    let config = kubeconfig("https://127.0.0.1:1", "unreachable");
    let started = Instant::now();
    let child = overseer(&config, &["--startup-timeout-seconds", "30"])
        .spawn()
        .expect("spawned");
    let output = wait_output(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "overseer: error: cannot reach the Kubernetes API server at https://127.0.0.1:1/"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "no silent retry loop"
    );
}

#[tokio::test]
async fn a_missing_kubeconfig_fails_with_a_clear_message() {
    let missing = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-kubeconfig");
    let child = overseer(&missing, &[]).spawn().expect("spawned");
    let output = wait_output(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("overseer: error: cannot load the Kubernetes configuration"),
        "{stderr}"
    );
}

/// A fake API server: CRDs (all Established, or none) and Leases stored in memory, patched with
/// JSON merge semantics; the kinds the controllers watch are served as empty lists and
/// watches that stay open without events. Lists of `EphemeralIdentity` are held until
/// `identities_listable` is true, so a test can watch the controller's cache sync. Records every
/// request as `VERB path`, with `WATCH` for a watch.
#[derive(Clone, Default)]
struct FakeApi {
    crds_installed: bool,
    leases: Arc<Mutex<BTreeMap<String, Value>>>,
    identities_listable: Arc<tokio::sync::watch::Sender<bool>>,
    log: Arc<Mutex<Vec<String>>>,
}

/// The collections the controllers list and watch, cluster-wide.
const WATCHED: [&str; 18] = [
    "/apis/agents.overseer.dev/v1alpha1/agentapprovals",
    "/apis/agents.overseer.dev/v1alpha1/mcpservers",
    "/apis/fleet.overseer.dev/v1alpha1/fleetclusters",
    "/apis/fleet.overseer.dev/v1alpha1/fleetrollouts",
    "/apis/fleet.overseer.dev/v1alpha1/fleetapprovals",
    "/apis/runway.overseer.dev/v1alpha1/inferenceruntimes",
    "/apis/apps/v1/deployments",
    "/apis/apps/v1/controllerrevisions",
    "/api/v1/services",
    "/apis/agents.overseer.dev/v1alpha1/agentpolicies",
    "/apis/agents.overseer.dev/v1alpha1/clusteragentpolicies",
    "/api/v1/namespaces",
    "/apis/agents.overseer.dev/v1alpha1/ephemeralidentities",
    "/apis/agents.overseer.dev/v1alpha1/ephemeralidentityclasses",
    "/api/v1/serviceaccounts",
    "/api/v1/secrets",
    "/apis/rbac.authorization.k8s.io/v1/roles",
    "/apis/rbac.authorization.k8s.io/v1/rolebindings",
];

fn is_watch(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    })
}

/// An empty list of a watched collection, or a watch on it that stays open and sends nothing.
async fn empty_collection(api: &FakeApi, path: &str, watch: bool) -> Response {
    if watch {
        let idle = futures::stream::pending::<Result<Bytes, std::io::Error>>();
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(idle))
            .expect("watch response");
    }
    if path.ends_with("/ephemeralidentities") {
        let mut listable = api.identities_listable.subscribe();
        if listable.wait_for(|ok| *ok).await.is_err() {
            return status(503, "ServiceUnavailable", "the fake is shutting down");
        }
    }
    Json(json!({
        "kind": "List",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": [],
    }))
    .into_response()
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    (
        StatusCode::from_u16(code).expect("code"),
        Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": message})),
    )
        .into_response()
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn fake_handler(
    State(api): State<FakeApi>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let watch = method == Method::GET && is_watch(&uri);
    let verb = if watch { "WATCH" } else { method.as_str() };
    api.log.lock().expect("log").push(format!("{verb} {path}"));
    if method == Method::GET && WATCHED.contains(&path.as_str()) {
        return empty_collection(&api, &path, watch).await;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        (
            "GET",
            [
                "apis",
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                name,
            ],
        ) => {
            let found = overseer_crds::all_crds()
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(*name));
            match found {
                Some(crd) if api.crds_installed => {
                    let mut value = serde_json::to_value(crd).expect("json");
                    value["status"] = json!({
                        "conditions": [{"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}],
                        "acceptedNames": {"kind": "X", "plural": "xs"},
                    });
                    Json(value).into_response()
                }
                _ => status(
                    404,
                    "NotFound",
                    &format!("customresourcedefinitions.apiextensions.k8s.io \"{name}\" not found"),
                ),
            }
        }
        (
            "GET",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                ns,
                "leases",
                name,
            ],
        ) => {
            match api
                .leases
                .lock()
                .expect("leases")
                .get(&format!("{ns}/{name}"))
            {
                Some(lease) => Json(lease.clone()).into_response(),
                None => status(404, "NotFound", "lease not found"),
            }
        }
        (
            "POST",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                ns,
                "leases",
            ],
        ) => {
            let mut lease: Value = serde_json::from_slice(&body).expect("lease body");
            lease["metadata"]["namespace"] = json!(ns);
            lease["metadata"]["resourceVersion"] = json!("1");
            let name = lease["metadata"]["name"].as_str().expect("name").to_owned();
            api.leases
                .lock()
                .expect("leases")
                .insert(format!("{ns}/{name}"), lease.clone());
            (StatusCode::CREATED, Json(lease)).into_response()
        }
        (
            "PATCH",
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                ns,
                "leases",
                name,
            ],
        ) => {
            let patch: Value = serde_json::from_slice(&body).expect("patch body");
            let mut leases = api.leases.lock().expect("leases");
            match leases.get_mut(&format!("{ns}/{name}")) {
                Some(lease) => {
                    merge(lease, &patch);
                    Json(lease.clone()).into_response()
                }
                None => status(404, "NotFound", "lease not found"),
            }
        }
        ("POST", ["apis", "authentication.k8s.io", "v1", "tokenreviews"]) => {
            // One ServiceAccount token is valid; every other token is not.
            let review: Value = serde_json::from_slice(&body).expect("review body");
            let status = if review["spec"]["token"] == AGENT_TOKEN {
                json!({"authenticated": true, "user": {
                    "username": "system:serviceaccount:agents:support-bot",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:agents", "system:authenticated"]}})
            } else {
                json!({"authenticated": false, "error": "invalid bearer token"})
            };
            (
                StatusCode::CREATED,
                Json(
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                            "metadata": {}, "spec": review["spec"], "status": status}),
                ),
            )
                .into_response()
        }
        _ => {
            eprintln!("fake API: not served: {verb} {path}");
            status(404, "NotFound", "not served by the fake")
        }
    }
}

async fn start_fake(api: FakeApi) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().fallback(fake_handler).with_state(api);
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// The ServiceAccount token the fake's TokenReview accepts (as `agents/support-bot`).
const AGENT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.agents-support-bot.signature";

async fn http_post(port: u16, path: &str, token: &str, body: &Value) -> Option<(u16, Value)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, serde_json::from_str(&body).ok()?))
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn crd_less_cluster_names_the_missing_crds_and_how_to_install_them() {
    let api = FakeApi::default();
    let addr = start_fake(api.clone()).await;
    let config = kubeconfig(&format!("http://{addr}"), "crdless");
    let child = overseer(&config, &[]).spawn().expect("spawned");
    let output = wait_output(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for crd in overseer_crds::all_crds() {
        let name = crd.metadata.name.expect("named");
        assert!(stderr.contains(&name), "{name} not named: {stderr}");
    }
    assert!(stderr.contains("kubectl apply -k config/crd"), "{stderr}");
    // Only reads happened: nothing is written to a cluster the operator cannot serve.
    let log = api.log.lock().expect("log").clone();
    assert!(
        log.iter()
            .all(|l| l.starts_with("GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/")),
        "{log:?}"
    );
}

#[tokio::test]
async fn run_serves_probes_leads_and_releases_the_lease_on_sigterm() {
    let api = FakeApi {
        crds_installed: true,
        ..FakeApi::default()
    };
    let addr = start_fake(api.clone()).await;
    let config = kubeconfig(&format!("http://{addr}"), "healthy");
    let health = free_port();
    let metrics = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let child = overseer(
        &config,
        &[
            "--identity",
            "replica-a",
            "--lease-namespace",
            "ops",
            "--lease-name",
            "overseer-test",
            "--health-addr",
            &health_addr,
            "--metrics-addr",
            &metrics_addr,
            "--log-format",
            "json",
        ],
    )
    .spawn()
    .expect("spawned");
    let pid = child.id();

    // Until the identity cache has synced, the operator is not ready, and says why.
    eventually("/readyz to wait for the identity controller", || async {
        http_get(health, "/readyz").await
            == Some((503, "not ready: controller/ephemeralidentity\n".to_owned()))
    })
    .await;
    api.identities_listable.send_replace(true);
    eventually("/readyz to answer 200", || async {
        matches!(http_get(health, "/readyz").await, Some((200, _)))
    })
    .await;
    assert_eq!(
        http_get(health, "/healthz").await,
        Some((200, "ok\n".to_owned()))
    );
    eventually("leadership", || async {
        api.leases
            .lock()
            .expect("leases")
            .get("ops/overseer-test")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "replica-a")
    })
    .await;
    eventually("the leader gauge", || async {
        http_get(metrics, "/metrics")
            .await
            .is_some_and(|(code, body)| code == 200 && body.contains("overseer_leader 1"))
    })
    .await;
    let lease = api.leases.lock().expect("leases")["ops/overseer-test"].clone();
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    eventually(
        "a watch on every kind the identity controller watches",
        || async {
            let log = api.log.lock().expect("log");
            WATCHED
                .iter()
                .all(|path| log.iter().any(|l| l == &format!("WATCH {path}")))
        },
    )
    .await;

    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let output = wait_output(child).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("received shutdown signal"), "{stderr}");
    let started = stderr.lines().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["message"] == "starting controller" && v["controller"] == "ephemeralidentity"
        })
    });
    assert!(started, "the identity controller did not start: {stderr}");
    assert!(!stderr.contains("no controllers registered"), "{stderr}");
    // Every log line is JSON.
    for line in stderr.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    // The Lease was handed back so a follower need not wait for it to expire.
    let lease = api.leases.lock().expect("leases")["ops/overseer-test"].clone();
    assert!(lease["spec"].get("holderIdentity").is_none(), "{lease}");
    // The servers are gone.
    assert!(http_get(health, "/healthz").await.is_none());

    let log = api.log.lock().expect("log").clone();
    let verbs: std::collections::BTreeSet<_> = log
        .iter()
        .map(|l| {
            let (verb, path) = l.split_once(' ').expect("verb path");
            let resource = if path.contains("/leases") {
                "leases"
            } else if path.contains("/customresourcedefinitions/") {
                "customresourcedefinitions"
            } else if path.starts_with("/apis/") && path.split('/').count() == 4 {
                // `/apis/{group}/{version}`: the runtime controller's discovery of backends.
                "discovery"
            } else {
                path.rsplit('/').next().expect("a segment")
            };
            format!("{verb} {resource}")
        })
        .collect();
    // On an empty cluster the controllers only read and watch: the Lease is the only write.
    assert_eq!(
        verbs.into_iter().collect::<Vec<_>>(),
        [
            "GET agentapprovals",
            "GET agentpolicies",
            "GET clusteragentpolicies",
            "GET controllerrevisions",
            "GET customresourcedefinitions",
            "GET deployments",
            "GET discovery",
            "GET ephemeralidentities",
            "GET ephemeralidentityclasses",
            "GET fleetapprovals",
            "GET fleetclusters",
            "GET fleetrollouts",
            "GET inferenceruntimes",
            "GET leases",
            "GET mcpservers",
            "GET namespaces",
            "GET rolebindings",
            "GET roles",
            "GET secrets",
            "GET serviceaccounts",
            "GET services",
            "PATCH leases",
            "POST leases",
            "WATCH agentapprovals",
            "WATCH agentpolicies",
            "WATCH clusteragentpolicies",
            "WATCH controllerrevisions",
            "WATCH deployments",
            "WATCH ephemeralidentities",
            "WATCH ephemeralidentityclasses",
            "WATCH fleetapprovals",
            "WATCH fleetclusters",
            "WATCH fleetrollouts",
            "WATCH inferenceruntimes",
            "WATCH mcpservers",
            "WATCH namespaces",
            "WATCH rolebindings",
            "WATCH roles",
            "WATCH secrets",
            "WATCH serviceaccounts",
            "WATCH services",
        ],
        "{log:?}"
    );
}

#[tokio::test]
async fn run_serves_decisions_to_kubernetes_tokens_with_approvals_in_the_cluster() {
    let api = FakeApi {
        crds_installed: true,
        ..FakeApi::default()
    };
    api.identities_listable.send_replace(true);
    let addr = start_fake(api.clone()).await;
    let config = kubeconfig(&format!("http://{addr}"), "decisions");
    let health = free_port();
    let decisions = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let decision_addr = format!("127.0.0.1:{decisions}");
    let child = overseer(
        &config,
        &[
            "--identity",
            "replica-a",
            "--lease-namespace",
            "ops",
            "--health-addr",
            &health_addr,
            "--metrics-addr",
            &metrics_addr,
            "--decision-listen",
            &decision_addr,
            "--decision-audit-stdout",
            "--log-format",
            "json",
        ],
    )
    .spawn()
    .expect("spawned");
    let pid = child.id();

    eventually("/readyz to answer 200", || async {
        matches!(http_get(health, "/readyz").await, Some((200, _)))
    })
    .await;
    let request = json!({"principal": {"id": "system:serviceaccount:agents:support-bot"},
                         "tool": "tickets_search", "arguments": {}});
    // A ServiceAccount token is reviewed and decides for its own ServiceAccount (no policy
    // governs it yet: default deny).
    let (code, answer) = http_post(decisions, "/v1/decisions", AGENT_TOKEN, &request)
        .await
        .expect("an answer");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["decision"], "deny", "{answer}");
    // Within the cache's time the same token is not reviewed again.
    let (code, _) = http_post(decisions, "/v1/decisions", AGENT_TOKEN, &request)
        .await
        .expect("an answer");
    assert_eq!(code, 200);
    // It may not ask for anybody else.
    let other = json!({"principal": {"id": "finance-bot"}, "tool": "refund", "arguments": {}});
    let (code, answer) = http_post(decisions, "/v1/decisions", AGENT_TOKEN, &other)
        .await
        .expect("an answer");
    assert_eq!(code, 403, "{answer}");
    // A token the API server does not accept is refused.
    let (code, answer) = http_post(decisions, "/v1/decisions", "not-a-token", &request)
        .await
        .expect("an answer");
    assert_eq!(code, 401, "{answer}");

    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = wait_output(child).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // Every attempt is in the audit trail on stdout, and no token ever appears in it or the logs.
    let records: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["path"] == "overseer/decision")
        .collect();
    assert_eq!(records.len(), 4, "{stdout}");
    assert!(!stdout.contains(AGENT_TOKEN) && !stderr.contains(AGENT_TOKEN));
    assert!(!stdout.contains("not-a-token") && !stderr.contains("not-a-token"));

    let log = api.log.lock().expect("log").clone();
    let reviews = log
        .iter()
        .filter(|l| l.as_str() == "POST /apis/authentication.k8s.io/v1/tokenreviews")
        .count();
    assert_eq!(reviews, 2, "one review per distinct token: {log:?}");
    assert!(
        log.iter()
            .any(|l| l == "WATCH /apis/agents.overseer.dev/v1alpha1/agentapprovals"),
        "approvals are watched in the cluster: {log:?}"
    );
}
