//! The smoke test a candidate passes before it receives traffic: `GET /v1/models` must list the
//! served model, or a one-token completion must answer. It runs against one ready pod of the
//! candidate (found by the candidate's endpoint selector), never through the stable endpoint.
//!
//! [`SmokeTester`] is the seam: the controller holds an `Arc<dyn SmokeTester>` so tests can
//! answer without a network; [`HttpSmokeTester`] is the real one.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use overseer_crds::runway::SmokeTestType;
use serde_json::{Value, json};

use super::plan::SmokeOutcome;

/// How long one smoke request may take (connect included) by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response body read.
const MAX_BODY: usize = 1 << 20;

/// What to smoke-test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmokeTarget {
    /// Namespace of the candidate's pods.
    pub namespace: String,
    /// Labels of the candidate's serving pods.
    pub pod_selector: BTreeMap<String, String>,
    /// Port of their OpenAI-compatible server.
    pub port: i32,
    /// The model name they must serve.
    pub model: String,
    /// Which test.
    pub kind: SmokeTestType,
}

/// Runs a smoke test.
pub trait SmokeTester: Send + Sync + 'static {
    /// Test `target`.
    fn check<'a>(&'a self, target: &'a SmokeTarget) -> BoxFuture<'a, SmokeOutcome>;
}

/// The real smoke tester: lists the candidate's ready pods and sends the request to the first
/// one over plain HTTP/1.1, within a timeout.
#[derive(Clone)]
pub struct HttpSmokeTester {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for HttpSmokeTester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSmokeTester")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSmokeTester {
    /// A tester listing pods with `client`, each request bounded by `timeout`.
    pub fn new(client: Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn ready_pod_ip(&self, target: &SmokeTarget) -> Result<IpAddr, String> {
        let selector = target
            .pod_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &target.namespace);
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list the candidate's pods: {e}"))?;
        pods.items
            .iter()
            .filter(|p| is_ready(p))
            .find_map(|p| p.status.as_ref()?.pod_ip.as_deref()?.parse().ok())
            .ok_or_else(|| format!("no ready pod matches {selector}"))
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a smoke request is: method, path and body.
pub fn request_for(
    kind: SmokeTestType,
    model: &str,
) -> (&'static str, &'static str, Option<Value>) {
    match kind {
        SmokeTestType::Models => ("GET", "/v1/models", None),
        SmokeTestType::Completion => (
            "POST",
            "/v1/completions",
            Some(json!({"model": model, "prompt": "ping", "max_tokens": 1})),
        ),
    }
}

/// Judge a smoke response.
pub fn judge(kind: SmokeTestType, model: &str, status: u16, body: &[u8]) -> SmokeOutcome {
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
        return SmokeOutcome::Failed(format!("HTTP {status}: {text}"));
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return SmokeOutcome::Failed("the response is not JSON".into());
    };
    match kind {
        SmokeTestType::Models => {
            let ids: Vec<&str> = value
                .get("data")
                .and_then(Value::as_array)
                .map(|d| d.iter().filter_map(|m| m.get("id")?.as_str()).collect())
                .unwrap_or_default();
            if ids.contains(&model) {
                SmokeOutcome::Passed(format!("GET /v1/models lists {model}"))
            } else {
                SmokeOutcome::Failed(format!(
                    "GET /v1/models lists {ids:?}, not the served model {model}"
                ))
            }
        }
        SmokeTestType::Completion => {
            if value
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty())
            {
                SmokeOutcome::Passed("a one-token completion answered".into())
            } else {
                SmokeOutcome::Failed("the completion response has no choices".into())
            }
        }
    }
}

async fn send(
    ip: IpAddr,
    port: u16,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("cannot connect to {ip}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {ip}:{port} failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("{ip}:{port}"))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {ip}:{port} failed: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("cannot read the response: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

impl SmokeTester for HttpSmokeTester {
    fn check<'a>(&'a self, target: &'a SmokeTarget) -> BoxFuture<'a, SmokeOutcome> {
        Box::pin(async move {
            let Ok(port) = u16::try_from(target.port) else {
                return SmokeOutcome::Failed(format!("port {} is out of range", target.port));
            };
            let (method, path, body) = request_for(target.kind, &target.model);
            let attempt = async {
                let ip = self.ready_pod_ip(target).await?;
                send(ip, port, method, path, body).await
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Err(_) => SmokeOutcome::Unreachable(format!(
                    "{method} {path} timed out after {}s",
                    self.timeout.as_secs()
                )),
                Ok(Err(message)) => SmokeOutcome::Unreachable(message),
                Ok(Ok((status, body))) => judge(target.kind, &target.model, status, &body),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn models_must_list_the_served_model() {
        let body = br#"{"object":"list","data":[{"id":"qwen3"}]}"#;
        assert!(matches!(
            judge(SmokeTestType::Models, "qwen3", 200, body),
            SmokeOutcome::Passed(_)
        ));
        assert!(matches!(
            judge(SmokeTestType::Models, "llama", 200, body),
            SmokeOutcome::Failed(_)
        ));
        assert!(matches!(
            judge(SmokeTestType::Models, "qwen3", 503, b"loading"),
            SmokeOutcome::Failed(m) if m.contains("503")
        ));
        assert!(matches!(
            judge(SmokeTestType::Models, "qwen3", 200, b"<html>"),
            SmokeOutcome::Failed(_)
        ));
    }

    #[test]
    fn completions_must_answer_with_a_choice() {
        assert!(matches!(
            judge(
                SmokeTestType::Completion,
                "m",
                200,
                br#"{"choices":[{"text":"!"}]}"#
            ),
            SmokeOutcome::Passed(_)
        ));
        assert!(matches!(
            judge(SmokeTestType::Completion, "m", 200, br#"{"choices":[]}"#),
            SmokeOutcome::Failed(_)
        ));
        let (method, path, body) = request_for(SmokeTestType::Completion, "m");
        assert_eq!((method, path), ("POST", "/v1/completions"));
        assert_eq!(
            body,
            Some(json!({"model": "m", "prompt": "ping", "max_tokens": 1}))
        );
    }

    #[tokio::test]
    async fn send_talks_http_to_a_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = r#"{"data":[{"id":"qwen3"}]}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.expect("write");
            request
        });
        let (status, body) = send(addr.ip(), addr.port(), "GET", "/v1/models", None)
            .await
            .expect("sent");
        assert_eq!(status, 200);
        assert!(matches!(
            judge(SmokeTestType::Models, "qwen3", status, &body),
            SmokeOutcome::Passed(_)
        ));
        let request = server.await.expect("server");
        assert!(request.starts_with("GET /v1/models HTTP/1.1"), "{request}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_failed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = send(addr.ip(), addr.port(), "GET", "/v1/models", None)
            .await
            .expect_err("refused");
        assert!(err.contains("cannot connect"), "{err}");
    }
}
