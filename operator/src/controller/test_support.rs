//! A mock Kubernetes API server for tests (kube's `tower-test` pattern from controller-rs's
//! `fixtures.rs`): the test lists the exact requests it expects and the responses to give; the
//! verifier fails on any difference and on any request beyond the list.

use std::{pin::pin, time::Duration};

use http::{Request, Response};
use kube::{Client, client::Body};
use tokio::task::JoinHandle;

/// How a request body is compared.
#[derive(Debug, Clone)]
pub enum BodyMatch {
    /// The request has no body.
    Empty,
    /// The body equals this JSON exactly.
    Exact(serde_json::Value),
    /// Every field of this JSON is present with the same value (for bodies carrying
    /// timestamps or generated names); arrays must match exactly.
    Contains(serde_json::Value),
}

/// One request the mock API server expects, and its answer.
#[derive(Debug, Clone)]
pub struct ExpectedRequest {
    /// HTTP method, e.g. `PATCH`.
    pub method: &'static str,
    /// Path and query exactly as the client sends them.
    pub path_and_query: &'static str,
    /// Expected `Content-Type`, when the request has a body.
    pub content_type: Option<&'static str>,
    /// Expected body.
    pub body: BodyMatch,
    /// Status code and JSON body of the response.
    pub response: (u16, serde_json::Value),
}

impl ExpectedRequest {
    /// A request with no body, answered `200 {}` unless [`Self::respond`] says otherwise.
    pub fn new(method: &'static str, path_and_query: &'static str) -> Self {
        Self {
            method,
            path_and_query,
            content_type: None,
            body: BodyMatch::Empty,
            response: (200, serde_json::json!({})),
        }
    }

    /// A GET of `path_and_query`.
    pub fn get(path_and_query: &'static str) -> Self {
        Self::new("GET", path_and_query)
    }

    /// A server-side apply (`PATCH`, `application/apply-patch+yaml`) with exactly this body.
    pub fn apply(path_and_query: &'static str, body: serde_json::Value) -> Self {
        Self {
            content_type: Some("application/apply-patch+yaml"),
            body: BodyMatch::Exact(body),
            ..Self::new("PATCH", path_and_query)
        }
    }

    /// A `POST` (`application/json`) whose body contains `body`.
    pub fn post_containing(path_and_query: &'static str, body: serde_json::Value) -> Self {
        Self {
            content_type: Some("application/json"),
            body: BodyMatch::Contains(body),
            ..Self::new("POST", path_and_query)
        }
    }

    /// Answer with `status` and `body`.
    pub fn respond(self, status: u16, body: serde_json::Value) -> Self {
        Self {
            response: (status, body),
            ..self
        }
    }
}

fn contains(got: &serde_json::Value, want: &serde_json::Value) -> bool {
    match (got, want) {
        (serde_json::Value::Object(got), serde_json::Value::Object(want)) => want
            .iter()
            .all(|(k, w)| got.get(k).is_some_and(|g| contains(g, w))),
        _ => got == want,
    }
}

/// The server side of a mocked [`Client`].
#[derive(Debug)]
pub struct ApiServerVerifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServerVerifier {
    /// A client whose requests reach the returned verifier.
    pub fn new() -> (Client, Self) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self(handle))
    }

    /// The raw mock handle, for tests that answer by hand.
    pub fn into_handle(self) -> tower_test::mock::Handle<Request<Body>, Response<Body>> {
        self.0
    }

    /// Answer `expected` in order, asserting each request; then assert that no other request
    /// arrives before every clone of the client is dropped. Await the handle (under a timeout)
    /// after dropping the client.
    pub fn run(self, expected: Vec<ExpectedRequest>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut handle = pin!(self.0);
            for (i, want) in expected.into_iter().enumerate() {
                let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                    panic!(
                        "request #{i} ({} {}) never came",
                        want.method, want.path_and_query
                    )
                });
                assert_eq!(
                    request.method().as_str(),
                    want.method,
                    "request #{i} method"
                );
                assert_eq!(
                    request.uri().path_and_query().map(|p| p.as_str()),
                    Some(want.path_and_query),
                    "request #{i} path and query"
                );
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                assert_eq!(
                    content_type.as_deref(),
                    want.content_type,
                    "request #{i} content type"
                );
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("request body readable");
                match want.body {
                    BodyMatch::Empty => {
                        assert!(bytes.is_empty(), "request #{i} has an unexpected body");
                    }
                    BodyMatch::Exact(body) => {
                        let got: serde_json::Value =
                            serde_json::from_slice(&bytes).expect("request body is JSON");
                        assert_eq!(got, body, "request #{i} body");
                    }
                    BodyMatch::Contains(body) => {
                        let got: serde_json::Value =
                            serde_json::from_slice(&bytes).expect("request body is JSON");
                        assert!(
                            contains(&got, &body),
                            "request #{i} body {got:#} lacks {body:#}"
                        );
                    }
                }
                let (status, body) = want.response;
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(
                        serde_json::to_vec(&body).expect("response serializes"),
                    ))
                    .expect("response builds");
                send.send_response(response);
            }
            if let Some((request, _)) = handle.next_request().await {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
        })
    }
}

/// Await a verifier scenario, failing the test if it takes over a second (a request that never
/// came) or if it panicked (a request that differed).
pub async fn timeout_after_1s(scenario: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(1), scenario).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!(
            "mock API scenario timed out: a request never came or the client was not dropped"
        ),
    }
}

/// The PEM certificate of a new self-signed CA (for objects that name a CA Secret).
pub fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("CA certificate").pem()
}

/// A self-signed client certificate (PEM) and its private key (PKCS#8 PEM).
pub fn client_certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("client key");
    let cert = rcgen::CertificateParams::new(vec!["overseer-gateway".to_owned()])
        .expect("client params")
        .self_signed(&key)
        .expect("client certificate");
    (cert.pem(), key.serialize_pem())
}
