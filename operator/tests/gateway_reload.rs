//! `overseer gateway --config-reload-seconds`: the configuration file and the files it names
//! are read again while the gateway serves — a rotated credential file is injected, a new
//! upstream is served, and an invalid change is refused while the last valid configuration
//! keeps serving; both are counted in the gateway's metrics.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::post,
};
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use operator::gateway::run::{GatewayArgs, run_gateway};
use serde_json::{Value, json};

const POLICY: &str = r#"
apiVersion: agents.overseer.dev/v1alpha1
kind: AgentPolicy
metadata: {name: reload, namespace: default}
spec:
  mode: Enforce
  subjects:
    agentIds: ["agent-a"]
  tools:
    - {name: echo, tools: ["echo"], effect: Allow, reason: "harmless"}
"#;

const KEYS: &str = r#"
keys:
  - {name: agent-a, role: agent, agent: agent-a, key: "agent-a-key-0123456789"}
"#;

#[derive(Parser)]
struct Gateway {
    #[command(flatten)]
    args: GatewayArgs,
}

/// The `Authorization` header of every request the upstream got.
type Seen = Arc<Mutex<Vec<String>>>;

async fn upstream(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if let Ok(mut s) = seen.lock() {
        s.push(authorization);
    }
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|m| m.get("id").cloned())
        .unwrap_or(Value::Null);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("mcp-session-id"), "s-1"),
        ],
        json!({"jsonrpc":"2.0","id":id,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"fake","version":"1"}}})
            .to_string(),
    )
}

async fn serve_upstream(seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route("/mcp", post(upstream)).with_state(seen);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// `initialize` through the gateway to `/mcp/{server}` as agent A: the status.
async fn initialize(gateway: SocketAddr, server: &str) -> StatusCode {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::post(format!("http://{gateway}/mcp/{server}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .header(header::AUTHORIZATION, "Bearer agent-a-key-0123456789")
        .body(Full::new(Bytes::from(
            json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})
                .to_string(),
        )))
        .expect("request");
    match client.request(request).await {
        Ok(response) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Call `server` until `done` says the answer and what the upstream saw are what is wanted, for
/// at most 15 s (the reload period is 1 s).
async fn until(
    gateway: SocketAddr,
    server: &str,
    seen: &Seen,
    what: &str,
    done: impl Fn(StatusCode, Option<String>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = initialize(gateway, server).await;
        let last = seen.lock().ok().and_then(|s| s.last().cloned());
        if done(status, last.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 15 s (last answer {status}, upstream last saw {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`until`] a call to upstream `one` is answered and the upstream got `credential`.
async fn until_injected(gateway: SocketAddr, seen: &Seen, what: &str, credential: &str) {
    until(gateway, "one", seen, what, |status, last| {
        status == StatusCode::OK && last.as_deref() == Some(credential)
    })
    .await;
}

/// Replace `path` with `text` the way Kubernetes updates a mounted Secret or ConfigMap: whole,
/// never half-written.
fn put(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// Assert that the gateway's `/metrics` text holds each of `lines`.
async fn assert_metrics(addr: SocketAddr, lines: &[&str]) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = hyper::Request::get(format!("http://{addr}/metrics"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.request(request).await.expect("metrics served");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    for line in lines {
        assert!(text.contains(line), "{line} is missing from\n{text}");
    }
}

fn config(dir: &Path, upstreams: &[(&str, SocketAddr)]) -> String {
    let mut text = "agentNamespace: default\nupstreams:\n".to_owned();
    for (name, addr) in upstreams {
        text.push_str(&format!(
            "  - name: {name}\n    url: http://{addr}/mcp\n    credential: {{prefix: \"Bearer \", fromFile: \"{}\"}}\n",
            dir.join("token").display()
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configuration_is_served_without_a_restart_and_an_invalid_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("policies")).expect("mkdir");
    std::fs::write(d.join("policies/reload.yaml"), POLICY).expect("policy");
    std::fs::write(d.join("keys.yaml"), KEYS).expect("keys");
    std::fs::write(d.join("token"), "first\n").expect("token");
    let seen: Seen = Arc::default();
    let first = serve_upstream(seen.clone()).await;
    let second = serve_upstream(seen.clone()).await;
    std::fs::write(d.join("gateway.yaml"), config(d, &[("one", first)])).expect("config");

    let listen = free_port();
    let metrics_at = free_port();
    let w = d.display().to_string();
    let args = Gateway::try_parse_from([
        "gateway".to_owned(),
        format!("--config={w}/gateway.yaml"),
        "--config-reload-seconds=1".to_owned(),
        format!("--listen={listen}"),
        format!("--metrics-listen={metrics_at}"),
        format!("--api-keys={w}/keys.yaml"),
        format!("--policies={w}/policies"),
        format!("--decision-listen={}", free_port()),
        format!("--audit-file={w}/audit.jsonl"),
        format!("--state-file={w}/limits.json"),
    ])
    .expect("flags")
    .args;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let gateway = tokio::spawn(run_gateway(args, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    until_injected(listen, &seen, "the gateway serves", "Bearer first").await;
    assert_eq!(initialize(listen, "two").await, StatusCode::NOT_FOUND);

    // The mounted credential is rotated: the new one is injected.
    put(&d.join("token"), "second\n");
    until_injected(listen, &seen, "the rotated credential", "Bearer second").await;

    // A second upstream is added to the file: served.
    put(
        &d.join("gateway.yaml"),
        &config(d, &[("one", first), ("two", second)]),
    );
    until(listen, "two", &seen, "the added upstream", |status, _| {
        status == StatusCode::OK
    })
    .await;

    // An invalid change (and a credential rotated meanwhile) is not applied: the last valid
    // configuration keeps serving. Nothing can be awaited to show that a change was *not*
    // applied; three reload periods pass.
    put(
        &d.join("gateway.yaml"),
        "upstreams:\n  - name: one\n    url: ftp://nowhere/mcp\n",
    );
    put(&d.join("token"), "third\n");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(initialize(listen, "two").await, StatusCode::OK);
    assert_eq!(initialize(listen, "one").await, StatusCode::OK);
    assert_eq!(
        seen.lock().ok().and_then(|s| s.last().cloned()).as_deref(),
        Some("Bearer second"),
        "the invalid configuration was not applied"
    );
    assert_metrics(
        metrics_at,
        &[
            r#"overseer_gateway_config_reloads_total{outcome="applied"} 2"#,
            r#"overseer_gateway_config_reloads_total{outcome="invalid"} 1"#,
            "overseer_gateway_config_last_reload_successful 0",
        ],
    )
    .await;

    // Fixed: the new configuration (one upstream, the third credential) is served.
    put(&d.join("gateway.yaml"), &config(d, &[("one", first)]));
    until_injected(listen, &seen, "the fixed configuration", "Bearer third").await;
    assert_eq!(initialize(listen, "two").await, StatusCode::NOT_FOUND);
    assert_metrics(
        metrics_at,
        &[
            r#"overseer_gateway_config_reloads_total{outcome="applied"} 3"#,
            "overseer_gateway_config_last_reload_successful 1",
        ],
    )
    .await;

    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .expect("the gateway stops")
        .expect("joined")
        .expect("the gateway ran without error");
}
