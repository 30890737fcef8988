//! Test helpers for the source tests: a scripted mock API server and a timeout.

#![allow(dead_code)]

use std::{future::Future, time::Duration};

use http::{Request, Response};
use kube::{Client, client::Body};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// One request the mock API server expects, and its answer.
#[derive(Debug)]
pub struct Expected {
    /// HTTP method.
    pub method: &'static str,
    /// Path (without the query).
    pub path: String,
    /// Status to answer.
    pub status: u16,
    /// Body to answer.
    pub body: Value,
}

impl Expected {
    /// A GET of `path` answered with `status` and `body`.
    pub fn get(path: impl Into<String>, status: u16, body: Value) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            status,
            body,
        }
    }
}

/// A Kubernetes `Status` for a 404.
pub fn not_found(resource: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound", "code": 404
    })
}

/// A client whose requests must be exactly `expected`, in order; the returned task fails when a
/// request differs or one is missing, and when an unexpected one arrives.
pub fn mock_client(expected: Vec<Expected>) -> (Client, JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let task = tokio::spawn(async move {
        for want in expected {
            let (request, send) = handle
                .next_request()
                .await
                .unwrap_or_else(|| panic!("expected {} {}", want.method, want.path));
            assert_eq!(request.method().as_str(), want.method);
            assert_eq!(request.uri().path(), want.path);
            send.send_response(
                Response::builder()
                    .status(want.status)
                    .body(Body::from(serde_json::to_vec(&want.body).expect("json")))
                    .expect("response"),
            );
        }
        // Nothing else may be asked: the client is dropped when the resolver is.
        if let Some((request, _)) = handle.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    });
    (client, task)
}

/// Awaits `f` for at most 10 seconds.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}
