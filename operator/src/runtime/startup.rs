//! Start-up checks of `overseer run`: load the cluster configuration, reach the API server within
//! a bounded time, and verify that every Overseer CRD is installed, Established and serving the
//! versions this binary speaks. Every failure is a [`StartupError`] whose message says what to do.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, ResourceExt};

/// How to install the CRDs, quoted in error messages.
pub const INSTALL_HINT: &str = "install them with `kubectl apply -k config/crd` (or `overseer crd | kubectl apply --server-side -f -`)";

/// Why `overseer run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Neither KUBECONFIG nor the in-cluster configuration could be loaded.
    #[error(
        "cannot load the Kubernetes configuration (from KUBECONFIG, ~/.kube/config or the in-cluster service account)"
    )]
    Config(#[source] kube::config::InferConfigError),
    /// The configuration could not make a client (bad certificates, unsupported auth).
    #[error("cannot create a Kubernetes client from the configuration")]
    Client(#[source] kube::Error),
    /// The API server did not answer in time.
    #[error("cannot reach the Kubernetes API server at {url}: no answer within {}s", timeout.as_secs_f32())]
    Timeout {
        /// The server's URL.
        url: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The API server could not be reached (connection refused, DNS, TLS, authentication).
    #[error("cannot reach the Kubernetes API server at {url}")]
    Unreachable {
        /// The server's URL.
        url: String,
        /// What failed.
        #[source]
        source: kube::Error,
    },
    /// The API server refused to let this identity read CRDs.
    #[error(
        "the Kubernetes API server at {url} refused to show CustomResourceDefinition {name}: {message}; \
         the operator needs `get` on customresourcedefinitions.apiextensions.k8s.io (see config/rbac)"
    )]
    Forbidden {
        /// The server's URL.
        url: String,
        /// The CRD being read.
        name: String,
        /// The API server's message.
        message: String,
    },
    /// The API server answered reading a CRD with an unexpected error.
    #[error("reading CustomResourceDefinition {name} from {url} failed")]
    Api {
        /// The server's URL.
        url: String,
        /// The CRD being read.
        name: String,
        /// The API server's answer.
        #[source]
        source: kube::Error,
    },
    /// Some CRDs are missing, not Established, or do not serve a needed version.
    #[error("{}", crds_not_ready_message(missing, not_ready))]
    CrdsNotReady {
        /// Names of CRDs that are not installed.
        missing: Vec<String>,
        /// `name: why` for CRDs that are installed but unusable.
        not_ready: Vec<String>,
    },
}

fn crds_not_ready_message(missing: &[String], not_ready: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "Overseer's CRDs are not installed in this cluster: {}",
            missing.join(", ")
        ));
    }
    if !not_ready.is_empty() {
        parts.push(format!(
            "Overseer's CRDs are not usable: {}",
            not_ready.join("; ")
        ));
    }
    format!("{}; {INSTALL_HINT}, then start again", parts.join("; "))
}

/// Load the configuration from KUBECONFIG (or `~/.kube/config`), falling back to the in-cluster
/// service account.
pub async fn load_config() -> Result<kube::Config, StartupError> {
    kube::Config::infer().await.map_err(StartupError::Config)
}

/// A client for `config`.
pub fn client(config: kube::Config) -> Result<Client, StartupError> {
    Client::try_from(config).map_err(StartupError::Client)
}

/// Verify that every CRD in `expected` is installed, Established and serves every version
/// `expected` serves; the whole check must finish within `timeout`.
///
/// Issues one `GET /apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}` per CRD, in
/// order. `url` is only used in messages.
pub async fn verify_crds(
    client: &Client,
    expected: &[CustomResourceDefinition],
    url: &str,
    timeout: Duration,
) -> Result<(), StartupError> {
    let check = check_crds(client, expected, url);
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(StartupError::Timeout {
            url: url.to_owned(),
            timeout,
        }),
    }
}

async fn check_crds(
    client: &Client,
    expected: &[CustomResourceDefinition],
    url: &str,
) -> Result<(), StartupError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut not_ready = Vec::new();
    for want in expected {
        let name = want.name_any();
        match api.get_opt(&name).await {
            Ok(Some(installed)) => {
                if let Some(why) = unusable(want, &installed) {
                    not_ready.push(format!("{name}: {why}"));
                }
            }
            Ok(None) => missing.push(name),
            Err(kube::Error::Api(status)) if status.code == 403 || status.code == 401 => {
                return Err(StartupError::Forbidden {
                    url: url.to_owned(),
                    name,
                    message: status.message,
                });
            }
            Err(source @ kube::Error::Api(_)) => {
                return Err(StartupError::Api {
                    url: url.to_owned(),
                    name,
                    source,
                });
            }
            Err(source) => {
                return Err(StartupError::Unreachable {
                    url: url.to_owned(),
                    source,
                });
            }
        }
    }
    if missing.is_empty() && not_ready.is_empty() {
        Ok(())
    } else {
        Err(StartupError::CrdsNotReady { missing, not_ready })
    }
}

/// Why an installed CRD cannot be used, if it cannot.
fn unusable(
    want: &CustomResourceDefinition,
    installed: &CustomResourceDefinition,
) -> Option<String> {
    let established = installed
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Established"))
        .is_some_and(|c| c.status == "True");
    if !established {
        return Some("not Established yet".to_owned());
    }
    let not_served: Vec<&str> = want
        .spec
        .versions
        .iter()
        .filter(|v| v.served)
        .filter(|v| {
            !installed
                .spec
                .versions
                .iter()
                .any(|i| i.name == v.name && i.served)
        })
        .map(|v| v.name.as_str())
        .collect();
    if not_served.is_empty() {
        None
    } else {
        Some(format!(
            "does not serve {} (an older version is installed)",
            not_served.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};
    use serde_json::{Value, json};

    const URL: &str = "https://k8s.example:6443";

    fn installed(crd: &CustomResourceDefinition, established: bool) -> Value {
        let mut value = serde_json::to_value(crd).expect("json");
        value["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"},
                {"type": "Established", "status": if established { "True" } else { "False" }, "reason": "InitialNamesAccepted", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"},
            ],
            "acceptedNames": {"kind": crd.spec.names.kind, "plural": crd.spec.names.plural},
            "storedVersions": ["v1alpha1"],
        });
        value
    }

    fn not_found(name: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
            "message": format!("customresourcedefinitions.apiextensions.k8s.io \"{name}\" not found"),
        })
    }

    fn path(name: &str) -> &'static str {
        Box::leak(
            format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
                .into_boxed_str(),
        )
    }

    #[tokio::test]
    async fn all_installed_and_established_passes() {
        let crds = overseer_crds::all_crds();
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(
            crds.iter()
                .map(|crd| {
                    ExpectedRequest::get(path(&crd.name_any())).respond(200, installed(crd, true))
                })
                .collect(),
        );
        verify_crds(&client, &crds, URL, Duration::from_secs(5))
            .await
            .expect("all CRDs verified");
        drop(client);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn missing_and_unestablished_crds_are_named_with_the_install_command() {
        let crds = overseer_crds::all_crds();
        let (client, verifier) = ApiServerVerifier::new();
        let mut expected = Vec::new();
        for (i, crd) in crds.iter().enumerate() {
            let name = crd.name_any();
            expected.push(match i {
                0 => ExpectedRequest::get(path(&name)).respond(404, not_found(&name)),
                1 => ExpectedRequest::get(path(&name)).respond(200, installed(crd, false)),
                2 => {
                    let mut old = installed(crd, true);
                    old["spec"]["versions"][0]["name"] = json!("v1alpha0");
                    ExpectedRequest::get(path(&name)).respond(200, old)
                }
                _ => ExpectedRequest::get(path(&name)).respond(200, installed(crd, true)),
            });
        }
        let scenario = verifier.run(expected);
        let err = verify_crds(&client, &crds, URL, Duration::from_secs(5))
            .await
            .expect_err("not ready");
        let StartupError::CrdsNotReady { missing, not_ready } = &err else {
            panic!("unexpected error {err:?}")
        };
        assert_eq!(missing, &[crds[0].name_any()]);
        assert_eq!(
            not_ready,
            &[
                format!("{}: not Established yet", crds[1].name_any()),
                format!(
                    "{}: does not serve v1alpha1 (an older version is installed)",
                    crds[2].name_any()
                ),
            ]
        );
        let message = err.to_string();
        assert!(
            message.contains("agentpolicies.agents.overseer.dev"),
            "{message}"
        );
        assert!(message.contains("kubectl apply -k config/crd"), "{message}");
        assert!(
            message.contains("overseer crd | kubectl apply --server-side -f -"),
            "{message}"
        );
        drop(client);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn forbidden_stops_at_once_and_names_the_permission() {
        let crds = overseer_crds::all_crds();
        let (client, verifier) = ApiServerVerifier::new();
        let name = crds[0].name_any();
        let scenario = verifier.run(vec![ExpectedRequest::get(path(&name)).respond(
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "customresourcedefinitions.apiextensions.k8s.io is forbidden"}),
        )]);
        let err = verify_crds(&client, &crds, URL, Duration::from_secs(5))
            .await
            .expect_err("forbidden");
        assert!(matches!(err, StartupError::Forbidden { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("`get` on customresourcedefinitions"),
            "{err}"
        );
        drop(client);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let (client, verifier) = ApiServerVerifier::new();
        // The verifier holds the request without answering.
        let _held = tokio::spawn(async move {
            let mut handle = std::pin::pin!(verifier.into_handle());
            let pending = handle.next_request().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(pending);
        });
        let err = verify_crds(
            &client,
            &overseer_crds::all_crds(),
            URL,
            Duration::from_millis(100),
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, StartupError::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot reach the Kubernetes API server at https://k8s.example:6443: no answer within 0.1s"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_fails_fast() {
        let config = kube::Config::new("https://127.0.0.1:1".parse().expect("uri"));
        let client = client(config).expect("client");
        let started = std::time::Instant::now();
        let err = verify_crds(
            &client,
            &overseer_crds::all_crds(),
            "https://127.0.0.1:1",
            Duration::from_secs(10),
        )
        .await
        .expect_err("unreachable");
        assert!(matches!(err, StartupError::Unreachable { .. }), "{err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not retry until the deadline"
        );
        assert!(
            err.to_string()
                .starts_with("cannot reach the Kubernetes API server at https://127.0.0.1:1")
        );
    }
}
