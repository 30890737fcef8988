//! Member clusters: a [`kube::Client`] per `FleetCluster`, built from the kubeconfig Secret the
//! cluster references in the hub, and a [`MemberPool`] that caches those clients.
//!
//! - Every client has connect and read timeouts ([`Timeouts`]), and every call made through
//!   [`Member`] is also bounded by a deadline, so one unreachable edge cluster never holds up the
//!   others.
//! - The pool caches a client per `FleetCluster` name, keyed by the Secret's reference, `uid` and
//!   `resourceVersion`: rotating the Secret (or pointing the cluster at another one) builds a new
//!   client on the next call.
//! - Nothing assumes one member per cluster: the same kubeconfig may back several
//!   `FleetCluster`s, each with its own client and cache entry.
//!
//! # What a kubeconfig in a Secret may contain
//!
//! The kubeconfig must carry its credentials inline (`token`, `client-certificate-data` /
//! `client-key-data`, `username`/`password`) and its CA as `certificate-authority-data`. Exec
//! plugins, auth providers and file references (`tokenFile`, `client-certificate`, `client-key`,
//! `certificate-authority`) are refused: they would run programs or read files inside the
//! operator's pod (a `tokenFile` pointing at the operator's own ServiceAccount token would hand
//! that token to whatever server the kubeconfig names).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::version::Info};
use kube::{
    Api, Client, Config, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
    core::{GroupVersion, GroupVersionKind},
    discovery::{self, ApiCapabilities, ApiGroup, ApiResource},
};
use overseer_crds::{common::NamespacedSecretKeyRef, fleet::FleetCluster};

/// Default time allowed to open a connection to a member's API server.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time allowed for one request to a member (also the deadline of [`Member::version`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeouts of member clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (TCP and TLS).
    pub connect: Duration,
    /// One request, from sending it to reading the whole response.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Why a member cluster cannot be used. Every variant names the cluster.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The kubeconfig Secret does not exist in the hub.
    #[error("cluster {cluster}: kubeconfig Secret {namespace}/{name} not found")]
    SecretNotFound {
        /// `FleetCluster` name.
        cluster: String,
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// The Secret could not be read (RBAC, hub API down).
    #[error("cluster {cluster}: cannot read kubeconfig Secret {namespace}/{name}: {source}")]
    SecretUnreadable {
        /// `FleetCluster` name.
        cluster: String,
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The hub API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The Secret lacks the key.
    #[error(
        "cluster {cluster}: kubeconfig Secret {namespace}/{name} has no key {key:?} in data (keys: {present})"
    )]
    SecretKeyMissing {
        /// `FleetCluster` name.
        cluster: String,
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The key looked for.
        key: String,
        /// The keys the Secret has, comma-separated (never their values).
        present: String,
    },
    /// The kubeconfig does not parse, has no usable context, or uses a refused feature.
    #[error(
        "cluster {cluster}: kubeconfig in Secret {namespace}/{name} key {key:?} is invalid: {message}"
    )]
    InvalidKubeconfig {
        /// `FleetCluster` name.
        cluster: String,
        /// Secret namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// Secret key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The member's API server could not be reached (connection refused, DNS, TLS).
    #[error("cluster {cluster} is unreachable: {message}")]
    Unreachable {
        /// `FleetCluster` name.
        cluster: String,
        /// The transport error.
        message: String,
    },
    /// The member did not answer within the deadline.
    #[error("cluster {cluster} did not answer within {after:?}")]
    TimedOut {
        /// `FleetCluster` name.
        cluster: String,
        /// The deadline.
        after: Duration,
    },
    /// The member refused the credentials (401/403).
    #[error("cluster {cluster} refused the kubeconfig's credentials: {message}")]
    Unauthorized {
        /// `FleetCluster` name.
        cluster: String,
        /// The API server's message.
        message: String,
    },
    /// Any other API error from the member.
    #[error("cluster {cluster}: request failed: {source}")]
    Api {
        /// `FleetCluster` name.
        cluster: String,
        /// The error.
        #[source]
        source: Box<kube::Error>,
    },
}

impl MemberError {
    /// A short UpperCamelCase reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound { .. } => "KubeconfigSecretNotFound",
            Self::SecretUnreadable { .. } => "KubeconfigSecretUnreadable",
            Self::SecretKeyMissing { .. } => "KubeconfigKeyMissing",
            Self::InvalidKubeconfig { .. } => "InvalidKubeconfig",
            Self::Unreachable { .. } => "Unreachable",
            Self::TimedOut { .. } => "TimedOut",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::Api { .. } => "ApiError",
        }
    }

    /// Whether the problem is in the kubeconfig Secret (a user must fix it), rather than in
    /// reaching the member.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::SecretNotFound { .. }
                | Self::SecretKeyMissing { .. }
                | Self::InvalidKubeconfig { .. }
        )
    }

    /// Whether the member could not be reached at all (transport failure or timeout).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::TimedOut { .. })
    }

    /// Classify an error from a request to the member `cluster`.
    pub fn from_kube(cluster: &str, error: kube::Error) -> Self {
        let cluster = cluster.to_owned();
        match error {
            kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
                Self::Unauthorized {
                    cluster,
                    message: status.message.clone(),
                }
            }
            kube::Error::HyperError(e) => Self::Unreachable {
                cluster,
                message: error_chain(&e),
            },
            kube::Error::Service(e) => Self::Unreachable {
                cluster,
                message: error_chain(e.as_ref()),
            },
            source => Self::Api {
                cluster,
                source: Box::new(source),
            },
        }
    }
}

/// An error and its sources, `: `-separated (hyper hides the useful part in the sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// Where a cluster's kubeconfig lives, for messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SecretLocation {
    cluster: String,
    namespace: String,
    name: String,
    key: String,
}

impl SecretLocation {
    fn new(cluster: &str, secret_ref: &NamespacedSecretKeyRef) -> Self {
        Self {
            cluster: cluster.to_owned(),
            namespace: secret_ref.namespace.clone(),
            name: secret_ref.name.clone(),
            key: secret_ref.key_or_default().to_owned(),
        }
    }

    fn invalid(&self, message: impl Into<String>) -> MemberError {
        MemberError::InvalidKubeconfig {
            cluster: self.cluster.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key: self.key.clone(),
            message: message.into(),
        }
    }
}

/// Read and check the kubeconfig in `secret` under `secret_ref`'s key (default `value`).
pub fn kubeconfig_from_secret(
    cluster: &str,
    secret_ref: &NamespacedSecretKeyRef,
    secret: &Secret,
) -> Result<Kubeconfig, MemberError> {
    let at = SecretLocation::new(cluster, secret_ref);
    let data = secret.data.as_ref();
    let Some(bytes) = data.and_then(|d| d.get(&at.key)) else {
        let present = data
            .map(|d| d.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        return Err(MemberError::SecretKeyMissing {
            cluster: at.cluster,
            namespace: at.namespace,
            name: at.name,
            key: at.key,
            present: if present.is_empty() {
                "none".to_owned()
            } else {
                present
            },
        });
    };
    let text = std::str::from_utf8(&bytes.0).map_err(|_| at.invalid("not UTF-8 text"))?;
    parse_kubeconfig(&at, text)
}

/// Parse a kubeconfig and refuse what must not run inside the operator (see the module docs).
fn parse_kubeconfig(at: &SecretLocation, text: &str) -> Result<Kubeconfig, MemberError> {
    if text.trim().is_empty() {
        return Err(at.invalid("the value is empty"));
    }
    let config = Kubeconfig::from_yaml(text).map_err(|e| at.invalid(e.to_string()))?;
    if config.clusters.is_empty() {
        return Err(at.invalid("it defines no clusters"));
    }
    for named in &config.auth_infos {
        let Some(auth) = &named.auth_info else {
            continue;
        };
        let refused = [
            (
                auth.exec.is_some(),
                "exec (an exec plugin would run a program in the operator)",
            ),
            (auth.auth_provider.is_some(), "auth-provider"),
            (auth.token_file.is_some(), "tokenFile (use token)"),
            (
                auth.client_certificate.is_some(),
                "client-certificate (use client-certificate-data)",
            ),
            (
                auth.client_key.is_some(),
                "client-key (use client-key-data)",
            ),
        ];
        if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
            return Err(at.invalid(format!(
                "user {:?} uses {what}; a kubeconfig in a Secret must carry its credentials inline",
                named.name
            )));
        }
    }
    for named in &config.clusters {
        if named
            .cluster
            .as_ref()
            .is_some_and(|c| c.certificate_authority.is_some())
        {
            return Err(at.invalid(format!(
                "cluster {:?} uses certificate-authority (a file); use certificate-authority-data",
                named.name
            )));
        }
    }
    Ok(config)
}

/// Builds a member's client from its [`Config`] (the kubeconfig's current context with the
/// pool's timeouts). The default connects for real; tests substitute mock clients.
pub type Connector =
    Arc<dyn Fn(&str, Config) -> BoxFuture<'static, Result<Client, MemberError>> + Send + Sync>;

/// The default [`Connector`]: a real client for the kubeconfig.
pub fn default_connector() -> Connector {
    Arc::new(|cluster: &str, config: Config| {
        let cluster = cluster.to_owned();
        Box::pin(async move {
            Client::try_from(config).map_err(|e| MemberError::Unreachable {
                cluster,
                message: format!("cannot build a client: {e}"),
            })
        })
    })
}

/// The [`Config`] for `kubeconfig`'s current context, with `timeouts`.
pub async fn config_for(
    cluster: &str,
    secret_ref: &NamespacedSecretKeyRef,
    kubeconfig: Kubeconfig,
    timeouts: Timeouts,
) -> Result<Config, MemberError> {
    let at = SecretLocation::new(cluster, secret_ref);
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| at.invalid(e.to_string()))?;
    config.connect_timeout = Some(timeouts.connect);
    config.read_timeout = Some(timeouts.request);
    config.write_timeout = Some(timeouts.request);
    Ok(config)
}

/// A member cluster's client, with a per-member discovery cache. Cheap to clone.
#[derive(Clone)]
pub struct Member {
    name: String,
    client: Client,
    timeout: Duration,
    discovery: Arc<Mutex<HashMap<GroupVersion, Arc<ApiGroup>>>>,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member named `name` reached through `client`; calls made by [`Member::version`] give up
    /// after `timeout`.
    pub fn new(name: impl Into<String>, client: Client, timeout: Duration) -> Self {
        Self {
            name: name.into(),
            client,
            timeout,
            discovery: Arc::default(),
        }
    }

    /// The `FleetCluster` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Classify a request error.
    pub fn error(&self, error: kube::Error) -> MemberError {
        MemberError::from_kube(&self.name, error)
    }

    /// Run `call` against this member under its deadline.
    pub async fn bounded<T, F>(&self, call: F) -> Result<T, MemberError>
    where
        F: Future<Output = Result<T, kube::Error>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(MemberError::TimedOut {
                cluster: self.name.clone(),
                after: self.timeout,
            }),
        }
    }

    /// The member's version (`GET /version`): the heartbeat.
    pub async fn version(&self) -> Result<Info, MemberError> {
        self.bounded(self.client.apiserver_version()).await
    }

    /// The API resource for `gvk` (one discovery request per group-version, cached; a kind the
    /// cache lacks is looked up again, as it may belong to a CRD installed since).
    pub async fn resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, MemberError> {
        let gv = GroupVersion::gv(&gvk.group, &gvk.version);
        let cached = self
            .discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&gv)
            .cloned();
        if let Some(group) = &cached
            && let Some(found) = find_kind(group, &gv.version, &gvk.kind)
        {
            return Ok(Some(found));
        }
        let fetched = match self
            .bounded(discovery::pinned_group(&self.client, &gv))
            .await
        {
            Ok(group) => Arc::new(group),
            // The group-version is not served at all.
            Err(MemberError::Api { source, .. }) if matches!(source.as_ref(), kube::Error::Api(status) if status.code == 404) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let found = find_kind(&fetched, &gv.version, &gvk.kind);
        self.discovery
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(gv, fetched);
        Ok(found)
    }
}

fn find_kind(
    group: &ApiGroup,
    version: &str,
    kind: &str,
) -> Option<(ApiResource, ApiCapabilities)> {
    group
        .versioned_resources(version)
        .into_iter()
        .find(|(ar, _)| ar.kind == kind)
}

/// Identifies the Secret version a cached client was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CacheKey {
    location: SecretLocation,
    uid: Option<String>,
    resource_version: Option<String>,
}

/// Member clients by `FleetCluster` name, rebuilt when the kubeconfig Secret changes. Cheap to
/// clone (clones share the cache).
#[derive(Clone)]
pub struct MemberPool {
    hub: Client,
    timeouts: Timeouts,
    connector: Connector,
    entries: Arc<Mutex<HashMap<String, (CacheKey, Member)>>>,
}

impl fmt::Debug for MemberPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberPool")
            .field("timeouts", &self.timeouts)
            .field("members", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemberPool {
    /// A pool that reads kubeconfig Secrets through the `hub` client, with default timeouts.
    pub fn new(hub: Client) -> Self {
        Self {
            hub,
            timeouts: Timeouts::default(),
            connector: default_connector(),
            entries: Arc::default(),
        }
    }

    /// Use `timeouts` for clients built from now on.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Build clients with `connector` (tests use it to hand out mock clients).
    pub fn with_connector(mut self, connector: Connector) -> Self {
        self.connector = connector;
        self
    }

    /// The timeouts of new clients.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The member for `cluster`: reads its kubeconfig Secret from the hub and returns the cached
    /// client when the Secret is the one it was built from, a new client otherwise.
    pub async fn member(&self, cluster: &FleetCluster) -> Result<Member, MemberError> {
        let name = cluster.name_any();
        let secret_ref = &cluster.spec.kubeconfig_secret_ref;
        let api: Api<Secret> = Api::namespaced(self.hub.clone(), &secret_ref.namespace);
        let secret = match api.get_opt(&secret_ref.name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                self.forget(&name);
                return Err(MemberError::SecretNotFound {
                    cluster: name,
                    namespace: secret_ref.namespace.clone(),
                    name: secret_ref.name.clone(),
                });
            }
            Err(source) => {
                return Err(MemberError::SecretUnreadable {
                    cluster: name,
                    namespace: secret_ref.namespace.clone(),
                    name: secret_ref.name.clone(),
                    source: Box::new(source),
                });
            }
        };
        self.member_with_secret(&name, secret_ref, &secret).await
    }

    /// The member `cluster` whose kubeconfig is in `secret` (already read by the caller).
    pub async fn member_with_secret(
        &self,
        cluster: &str,
        secret_ref: &NamespacedSecretKeyRef,
        secret: &Secret,
    ) -> Result<Member, MemberError> {
        let key = CacheKey {
            location: SecretLocation::new(cluster, secret_ref),
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        };
        if let Some((cached_key, member)) = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(cluster)
            && *cached_key == key
        {
            return Ok(member.clone());
        }
        let built = self.build(cluster, secret_ref, secret).await;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match built {
            Ok(member) => {
                entries.insert(cluster.to_owned(), (key, member.clone()));
                Ok(member)
            }
            Err(e) => {
                entries.remove(cluster);
                Err(e)
            }
        }
    }

    async fn build(
        &self,
        cluster: &str,
        secret_ref: &NamespacedSecretKeyRef,
        secret: &Secret,
    ) -> Result<Member, MemberError> {
        let kubeconfig = kubeconfig_from_secret(cluster, secret_ref, secret)?;
        let config = config_for(cluster, secret_ref, kubeconfig, self.timeouts).await?;
        let client = (self.connector)(cluster, config).await?;
        Ok(Member::new(cluster, client, self.timeouts.request))
    }

    /// Drop the cached client of `cluster` (e.g. when its `FleetCluster` is deleted). Returns
    /// whether one was cached.
    pub fn forget(&self, cluster: &str) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(cluster)
            .is_some()
    }

    /// How many clients are cached.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no client is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret_ref() -> NamespacedSecretKeyRef {
        NamespacedSecretKeyRef {
            name: "edge-1".into(),
            namespace: "fleet-system".into(),
            key: None,
        }
    }

    fn secret(key: &str, value: &str) -> Secret {
        Secret {
            data: Some([(key.to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: edge
  cluster:
    server: https://edge-1.example:6443
contexts:
- name: edge
  context: {cluster: edge, user: fleet}
current-context: edge
users:
- name: fleet
  user:
    token: abc
"#;

    #[test]
    fn a_valid_kubeconfig_is_read_from_the_default_key() {
        let config = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", KUBECONFIG))
            .expect("valid");
        assert_eq!(config.current_context.as_deref(), Some("edge"));
    }

    #[test]
    fn problems_name_the_cluster_the_secret_and_the_problem() {
        let missing = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("other", "x"))
            .expect_err("no key");
        assert_eq!(missing.reason(), "KubeconfigKeyMissing");
        assert_eq!(
            missing.to_string(),
            "cluster edge-1: kubeconfig Secret fleet-system/edge-1 has no key \"value\" in data (keys: other)"
        );
        assert!(missing.is_configuration());

        let empty = kubeconfig_from_secret("edge-1", &secret_ref(), &Secret::default())
            .expect_err("no data");
        assert!(empty.to_string().ends_with("(keys: none)"), "{empty}");

        let garbage = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", "{{{"))
            .expect_err("garbage");
        assert_eq!(garbage.reason(), "InvalidKubeconfig");
        assert!(
            garbage
                .to_string()
                .starts_with("cluster edge-1: kubeconfig in Secret fleet-system/edge-1 key \"value\" is invalid: "),
            "{garbage}"
        );

        let binary = Secret {
            data: Some([("value".to_owned(), ByteString(vec![0xff, 0xfe]))].into()),
            ..Secret::default()
        };
        let binary = kubeconfig_from_secret("edge-1", &secret_ref(), &binary).expect_err("binary");
        assert!(binary.to_string().ends_with("not UTF-8 text"), "{binary}");

        let blank = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", "  \n"))
            .expect_err("blank");
        assert!(blank.to_string().ends_with("the value is empty"), "{blank}");
    }

    #[test]
    fn programs_and_files_are_refused() {
        let cases = [
            (
                "users:\n- name: u\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}\n",
                "exec",
            ),
            (
                "users:\n- name: u\n  user:\n    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
                "tokenFile",
            ),
            (
                "users:\n- name: u\n  user:\n    client-certificate: /etc/cert\n",
                "client-certificate",
            ),
            (
                "users:\n- name: u\n  user:\n    client-key: /etc/key\n",
                "client-key",
            ),
            (
                "users:\n- name: u\n  user:\n    auth-provider: {name: gcp}\n",
                "auth-provider",
            ),
        ];
        for (users, what) in cases {
            let text = format!(
                "clusters:\n- name: c\n  cluster: {{server: 'https://x'}}\n{users}contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
            );
            let err = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", &text))
                .expect_err(what);
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        let ca_file = "clusters:\n- name: c\n  cluster: {server: 'https://x', certificate-authority: /etc/ca}\n";
        let err = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", ca_file))
            .expect_err("ca file");
        assert!(
            err.to_string().contains("certificate-authority-data"),
            "{err}"
        );
        let no_clusters = kubeconfig_from_secret(
            "edge-1",
            &secret_ref(),
            &secret("value", "apiVersion: v1\nkind: Config\n"),
        )
        .expect_err("no clusters");
        assert!(no_clusters.to_string().ends_with("it defines no clusters"));
    }

    #[tokio::test]
    async fn a_context_without_a_cluster_is_invalid() {
        let text = "clusters:\n- name: c\n  cluster: {server: 'https://x'}\ncontexts:\n- name: c\n  context: {cluster: missing}\ncurrent-context: c\n";
        let kubeconfig = kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", text))
            .expect("parses");
        let err = config_for("edge-1", &secret_ref(), kubeconfig, Timeouts::default())
            .await
            .expect_err("no such cluster");
        assert_eq!(err.reason(), "InvalidKubeconfig");
    }

    #[tokio::test]
    async fn the_config_carries_the_timeouts() {
        let kubeconfig =
            kubeconfig_from_secret("edge-1", &secret_ref(), &secret("value", KUBECONFIG))
                .expect("valid");
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(7),
        };
        let config = config_for("edge-1", &secret_ref(), kubeconfig, timeouts)
            .await
            .expect("config");
        assert_eq!(
            config.cluster_url.to_string(),
            "https://edge-1.example:6443/"
        );
        assert_eq!(config.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.read_timeout, Some(Duration::from_secs(7)));
    }
}
