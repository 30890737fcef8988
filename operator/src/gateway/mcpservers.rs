//! Upstreams from `MCPServer` objects: how one object becomes an [`Upstream`] (shared with the
//! operator's `MCPServer` controller, so `Ready=True` means exactly "a gateway serves it"), and
//! the watch that keeps a gateway's [`RouteTable`] current.
//!
//! * Every `MCPServer` of the watched namespace is served at `/mcp/{metadata.name}`, merged with
//!   the upstreams of the configuration file. **An object wins over a file upstream of the same
//!   name** (logged as a warning): objects are the live, declarative source, and creating one is
//!   how a file upstream is moved to the cluster without a restart.
//! * An object that cannot be served (credential Secret or key missing, a value that is no
//!   header, a bad glob) stays in the table as [`Route::Unavailable`], so agents are told why.
//! * The credential, the CA (`spec.tls.caSecretRef`) and the client certificate
//!   (`spec.tls.clientCertificateSecretName`) are read from their Secrets by name (`get`, never
//!   `list` or `watch`): when an object is new or changed, and every refresh period for all of
//!   them (rotation, a Secret created after its object). A Secret that cannot be read for a
//!   passing reason (API server unreachable) keeps the value last read. Values are never logged.
//!   Each distinct TLS setting gets one HTTPS client, kept across refreshes with its connections.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt as _,
    api::ListParams,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use overseer_crds::{
    agents::{MCPServer, MCPServerSpec, MCPServerTLS},
    common::SecretKeyRef,
};
use tracing::{info, warn};

use super::{
    config::{
        CredentialValueError, DEFAULT_UPSTREAM_TIMEOUT, Upstream, agent_globs, check_name,
        credential_header, credential_value, parse_url,
    },
    routes::{
        REASON_CA_INVALID, REASON_CA_MISSING, REASON_CA_UNREADABLE,
        REASON_CLIENT_CERTIFICATE_INVALID, REASON_CLIENT_CERTIFICATE_MISSING,
        REASON_CLIENT_CERTIFICATE_UNREADABLE, REASON_CREDENTIAL_INVALID, REASON_CREDENTIAL_MISSING,
        REASON_CREDENTIAL_UNREADABLE, REASON_INVALID_SPEC, Route, RouteTable, Routes, Unavailable,
    },
    tls::{ClientCache, TlsError, TlsMaterial, UpstreamClient},
};

/// The key of a `kubernetes.io/tls` Secret holding the certificate chain.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// The key of a `kubernetes.io/tls` Secret holding the private key.
pub const TLS_PRIVATE_KEY_KEY: &str = "tls.key";

/// Longest `timeoutSeconds` an object may ask for (the CRD's bound).
pub const MAX_TIMEOUT_SECONDS: i32 = 3600;
/// Default period after which every credential Secret is read again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// Longest one Secret read may take before the gateway moves on (keeping what it had).
const SECRET_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What a Secret key is read for: the noun of the messages and the `Ready` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretUse {
    /// `spec.credential.secretRef`: the header value injected into every request.
    Credential,
    /// `spec.tls.caSecretRef`: the CA certificates the server is verified against.
    Ca,
    /// `spec.tls.clientCertificateSecretName`: the client certificate and key presented.
    ClientCertificate,
}

impl SecretUse {
    fn noun(self) -> &'static str {
        match self {
            Self::Credential => "credential",
            Self::Ca => "CA",
            Self::ClientCertificate => "client certificate",
        }
    }

    fn missing(self) -> &'static str {
        match self {
            Self::Credential => REASON_CREDENTIAL_MISSING,
            Self::Ca => REASON_CA_MISSING,
            Self::ClientCertificate => REASON_CLIENT_CERTIFICATE_MISSING,
        }
    }

    fn invalid(self) -> &'static str {
        match self {
            Self::Credential => REASON_CREDENTIAL_INVALID,
            Self::Ca => REASON_CA_INVALID,
            Self::ClientCertificate => REASON_CLIENT_CERTIFICATE_INVALID,
        }
    }

    fn unreadable(self) -> &'static str {
        match self {
            Self::Credential => REASON_CREDENTIAL_UNREADABLE,
            Self::Ca => REASON_CA_UNREADABLE,
            Self::ClientCertificate => REASON_CLIENT_CERTIFICATE_UNREADABLE,
        }
    }
}

/// Why a Secret key gave no value. Kept apart from what the key is for, so one read of a Secret
/// serves every reference to it; [`Self::explain`] says it for one use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    /// The Secret does not exist.
    NoSecret,
    /// The Secret has no such key.
    NoKey,
    /// The key's value is not UTF-8.
    NotUtf8,
    /// The reader may not `get` the Secret (RBAC).
    Forbidden,
    /// The read failed (the API server unreachable, ...): why.
    Failed(String),
    /// The read took longer than this many seconds.
    Slow(u64),
    /// It has not been read yet.
    NotReadYet,
}

impl SecretProblem {
    /// The reason and message for `reference` (in `namespace`) used as `used`; never the value.
    pub fn explain(
        &self,
        namespace: &str,
        reference: &SecretKeyRef,
        used: SecretUse,
    ) -> Unavailable {
        let noun = used.noun();
        let secret = format!("{noun} Secret {namespace}/{}", reference.name);
        match self {
            Self::NoSecret => Unavailable::new(
                used.missing(),
                format!(
                    "{secret} not found; create it with the key {:?}",
                    reference.key
                ),
            ),
            Self::NoKey => Unavailable::new(
                used.missing(),
                format!("{secret} has no key {:?}", reference.key),
            ),
            Self::NotUtf8 => Unavailable::new(
                used.invalid(),
                format!(
                    "{} is not UTF-8 text",
                    secret_key_name(namespace, reference)
                ),
            ),
            Self::Forbidden => Unavailable::new(
                used.unreadable(),
                format!(
                    "the gateway may not read {secret}: give its ServiceAccount get on secrets \
                     in {namespace} (a Role whose resourceNames list {})",
                    reference.name
                ),
            ),
            Self::Failed(e) => {
                Unavailable::new(used.unreadable(), format!("cannot read {secret}: {e}"))
            }
            Self::Slow(seconds) => Unavailable::new(
                used.unreadable(),
                format!("reading {secret} took over {seconds}s"),
            ),
            Self::NotReadYet => {
                Unavailable::new(used.unreadable(), format!("{secret} has not been read yet"))
            }
        }
    }
}

/// The upstream `name` (an `MCPServer` of `namespace`) stands for, or why it cannot be served.
/// `secret` reads a referenced Secret key's value (see [`secret_value`]); it is only called
/// once everything else is valid. An `https://` server with `spec.tls` gets a client of its
/// own, trusting only its CA (if given) and presenting its client certificate (if given).
pub fn upstream_of(
    namespace: &str,
    name: &str,
    spec: &MCPServerSpec,
    secret: impl Fn(&SecretKeyRef) -> Result<String, SecretProblem>,
) -> Result<Upstream, Unavailable> {
    upstream_with_clients(namespace, name, spec, secret, &mut ClientCache::default())
}

/// [`upstream_of`], taking the client of an `https://` server with `spec.tls` from `clients`
/// when the same TLS material was read before (its connections are kept).
pub fn upstream_with_clients(
    namespace: &str,
    name: &str,
    spec: &MCPServerSpec,
    secret: impl Fn(&SecretKeyRef) -> Result<String, SecretProblem>,
    clients: &mut ClientCache,
) -> Result<Upstream, Unavailable> {
    let invalid = |message: String| Unavailable::new(REASON_INVALID_SPEC, message);
    check_name(name).map_err(|e| invalid(format!("metadata.name: {e}")))?;
    let uri = parse_url(&spec.url).map_err(|e| invalid(format!("spec.url: {e}")))?;
    let agents = agent_globs(&spec.agents).map_err(|e| invalid(format!("spec.agents: {e}")))?;
    let timeout = match spec.timeout_seconds {
        None => DEFAULT_UPSTREAM_TIMEOUT,
        Some(s @ 1..=MAX_TIMEOUT_SECONDS) => Duration::from_secs(s.unsigned_abs().into()),
        Some(s) => {
            return Err(invalid(format!(
                "spec.timeoutSeconds must be between 1 and {MAX_TIMEOUT_SECONDS}, not {s}"
            )));
        }
    };
    // The API server checks this too (a CEL rule); objects written without it are refused here.
    if spec.tls.is_some() && uri.scheme_str() != Some("https") {
        return Err(invalid(
            "spec.tls applies to https:// urls only; drop spec.tls or use an https:// url".into(),
        ));
    }
    let credential = match &spec.credential {
        None => None,
        Some(c) => {
            let header = credential_header(c.header.as_deref())
                .map_err(|e| invalid(format!("spec.credential.header: {e}")))?;
            let value = secret(&c.secret_ref)
                .map_err(|p| p.explain(namespace, &c.secret_ref, SecretUse::Credential))?;
            let at = secret_key_name(namespace, &c.secret_ref);
            let value = credential_value(c.prefix.as_deref(), &value).map_err(|e| match e {
                CredentialValueError::Empty => Unavailable::new(
                    REASON_CREDENTIAL_MISSING,
                    format!("{at} is empty; put the credential there"),
                ),
                CredentialValueError::NotAHeaderValue => Unavailable::new(
                    REASON_CREDENTIAL_INVALID,
                    format!(
                        "{at}, after spec.credential.prefix, is not a valid header value \
                         (control characters or line breaks)"
                    ),
                ),
            })?;
            Some((header, value))
        }
    };
    let client = match &spec.tls {
        None => None,
        Some(tls) => Some(tls_client(namespace, tls, &secret, clients)?),
    };
    Ok(Upstream {
        name: name.to_owned(),
        uri,
        agents,
        timeout,
        credential,
        client,
    })
}

/// A client trusting only the CA of `tls.caSecretRef` (else the system roots) and presenting
/// the client certificate of `tls.clientCertificateSecretName` (if any).
fn tls_client(
    namespace: &str,
    tls: &MCPServerTLS,
    secret: &impl Fn(&SecretKeyRef) -> Result<String, SecretProblem>,
    clients: &mut ClientCache,
) -> Result<UpstreamClient, Unavailable> {
    if tls.ca_secret_ref.is_none() && tls.client_certificate_secret_name.is_none() {
        // The API server checks this too (a CEL rule).
        return Err(Unavailable::new(
            REASON_INVALID_SPEC,
            "spec.tls needs caSecretRef and/or clientCertificateSecretName",
        ));
    }
    let ca = match &tls.ca_secret_ref {
        None => None,
        Some(reference) => Some((
            secret(reference).map_err(|p| p.explain(namespace, reference, SecretUse::Ca))?,
            secret_key_name(namespace, reference),
        )),
    };
    let identity = match &tls.client_certificate_secret_name {
        None => None,
        Some(name) => {
            let [cert, key] = client_certificate_refs(name);
            let used = SecretUse::ClientCertificate;
            Some((
                secret(&cert).map_err(|p| p.explain(namespace, &cert, used))?,
                secret(&key).map_err(|p| p.explain(namespace, &key, used))?,
                format!("Secret {namespace}/{name}"),
            ))
        }
    };
    clients
        .client(TlsMaterial::of(ca.as_ref(), identity.as_ref()))
        .map_err(|e| match e {
            TlsError::Ca(m) => {
                Unavailable::new(REASON_CA_INVALID, format!("spec.tls.caSecretRef: {m}"))
            }
            TlsError::Identity(m) => Unavailable::new(
                REASON_CLIENT_CERTIFICATE_INVALID,
                format!("spec.tls.clientCertificateSecretName: {m}"),
            ),
        })
}

/// The Secret keys `tls` references: its CA's, then its client certificate's.
fn tls_refs(tls: &MCPServerTLS) -> Vec<SecretKeyRef> {
    let mut refs: Vec<SecretKeyRef> = tls.ca_secret_ref.iter().cloned().collect();
    if let Some(name) = &tls.client_certificate_secret_name {
        refs.extend(client_certificate_refs(name));
    }
    refs
}

/// The keys of the `kubernetes.io/tls` Secret `name`: the certificate chain, the private key.
fn client_certificate_refs(name: &str) -> [SecretKeyRef; 2] {
    [TLS_CERT_KEY, TLS_PRIVATE_KEY_KEY].map(|key| SecretKeyRef {
        name: name.to_owned(),
        key: key.to_owned(),
    })
}

fn secret_key_name(namespace: &str, reference: &SecretKeyRef) -> String {
    format!(
        "key {:?} of Secret {namespace}/{}",
        reference.key, reference.name
    )
}

/// The value of `reference`'s key in `secret` (`None`: the Secret does not exist), or why there
/// is none.
pub fn secret_value(
    reference: &SecretKeyRef,
    secret: Option<&Secret>,
) -> Result<String, SecretProblem> {
    let secret = secret.ok_or(SecretProblem::NoSecret)?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|b| b.0.as_slice())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&reference.key))
                .map(|s| s.as_bytes())
        })
        .ok_or(SecretProblem::NoKey)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| SecretProblem::NotUtf8)
}

/// The Secret keys `spec` references: its credential's, its CA's, then its client
/// certificate's (`tls.crt`, `tls.key`).
pub fn secret_refs(spec: &MCPServerSpec) -> Vec<SecretKeyRef> {
    let mut refs: Vec<SecretKeyRef> = spec
        .credential
        .iter()
        .map(|c| c.secret_ref.clone())
        .collect();
    refs.extend(spec.tls.iter().flat_map(tls_refs));
    refs
}

/// One Secret key's value as last read (a credential or TLS material), or why there is none.
#[derive(Clone)]
struct Cached(Result<String, SecretProblem>);

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("Cached(<value>)"),
            Err(e) => write!(f, "Cached({e:?})"),
        }
    }
}

/// Keeps a [`RouteTable`] equal to the configuration file's upstreams plus the `MCPServer`
/// objects of one namespace.
#[derive(Debug)]
pub struct McpServerWatch {
    namespace: String,
    servers: Api<MCPServer>,
    secrets: Api<Secret>,
    file: HashMap<String, Arc<Upstream>>,
    table: RouteTable,
    refresh: Duration,
    /// `(Secret, key)` → the value (or why there is none): credentials and TLS material.
    values: HashMap<(String, String), Cached>,
    /// One client per distinct TLS material, kept across syncs so that their connections are
    /// too (dropped a sync after no server uses it).
    clients: ClientCache,
    /// `resourceVersion` of every object at the last sync: a changed object's Secret is re-read.
    seen: HashMap<String, Option<String>>,
    /// The configuration file's upstreams as reloaded ([`Self::with_file_updates`]).
    file_updates: Option<tokio::sync::watch::Receiver<FileUpstreams>>,
}

/// The configuration file's upstreams, as published by its reloader.
pub type FileUpstreams = Arc<HashMap<String, Arc<Upstream>>>;

impl McpServerWatch {
    /// Watch the `MCPServer` objects of `namespace` through `client`, merging them with the
    /// configuration file's `file` upstreams into `table`.
    pub fn new(
        client: Client,
        namespace: &str,
        file: HashMap<String, Upstream>,
        table: RouteTable,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            servers: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            file: file
                .into_iter()
                .map(|(name, u)| (name, Arc::new(u)))
                .collect(),
            table,
            refresh: DEFAULT_REFRESH,
            values: HashMap::new(),
            clients: ClientCache::default(),
            seen: HashMap::new(),
            file_updates: None,
        }
    }

    /// Serve the configuration file's upstreams from `updates` from now on (its reloader's
    /// channel), merged with the objects as before.
    pub fn with_file_updates(
        mut self,
        updates: tokio::sync::watch::Receiver<FileUpstreams>,
    ) -> Self {
        self.file_updates = Some(updates);
        self
    }

    /// Read every credential Secret again after `period` (default [`DEFAULT_REFRESH`]).
    pub fn with_refresh(mut self, period: Duration) -> Self {
        self.refresh = period.max(Duration::from_millis(100));
        self
    }

    /// The watched namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Check that `MCPServer` objects can be listed in the namespace, with a message saying
    /// what to fix when they cannot (the CRD not installed, RBAC missing).
    pub async fn check(&self) -> Result<(), String> {
        let ns = &self.namespace;
        match self.servers.list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Err(format!(
                "the MCPServer CRD (mcpservers.agents.overseer.dev) is not installed: \
                 kubectl apply -k config/crd ({})",
                status.message
            )),
            Err(kube::Error::Api(status)) if status.code == 403 || status.code == 401 => {
                Err(format!(
                    "the gateway may not list MCPServers in namespace {ns}: give its \
                     ServiceAccount a Role with get/list/watch on mcpservers.agents.overseer.dev \
                     and get on secrets there (see config/gateway/standalone) ({})",
                    status.message
                ))
            }
            Err(e) => Err(format!("cannot list MCPServers in namespace {ns}: {e}")),
        }
    }

    /// Rebuild the table from `servers` (every `MCPServer` of the namespace), reading the
    /// Secrets (credentials, TLS material) of new and changed objects, and of all of them when
    /// `refresh_all`.
    pub async fn sync(&mut self, servers: &[Arc<MCPServer>], refresh_all: bool) {
        // Which Secret keys are wanted, and which Secrets to read now.
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut read: BTreeSet<String> = BTreeSet::new();
        for server in servers {
            let changed = self.seen.get(&server.name_any()) != Some(&server.resource_version());
            for reference in secret_refs(&server.spec) {
                wanted
                    .entry(reference.name.clone())
                    .or_default()
                    .insert(reference.key.clone());
                let cached = self
                    .values
                    .contains_key(&(reference.name.clone(), reference.key.clone()));
                if refresh_all || changed || !cached {
                    read.insert(reference.name.clone());
                }
            }
        }
        for name in read {
            let keys = wanted.get(&name).cloned().unwrap_or_default();
            self.read_secret(&name, &keys).await;
        }
        self.values
            .retain(|(secret, key), _| wanted.get(secret).is_some_and(|keys| keys.contains(key)));
        self.seen = servers
            .iter()
            .map(|s| (s.name_any(), s.resource_version()))
            .collect();

        let previous = self.table.snapshot();
        let mut routes: Routes = self
            .file
            .iter()
            .map(|(name, u)| (name.clone(), Route::Serve(Arc::clone(u))))
            .collect();
        self.clients.next_round();
        for server in servers {
            let name = server.name_any();
            let lookup = |reference: &SecretKeyRef| {
                self.values
                    .get(&(reference.name.clone(), reference.key.clone()))
                    .map_or(Err(SecretProblem::NotReadYet), |c| c.0.clone())
            };
            // The client made before for the same TLS material, if there was one: its
            // connections survive the sync.
            let route = match upstream_with_clients(
                &self.namespace,
                &name,
                &server.spec,
                lookup,
                &mut self.clients,
            ) {
                Ok(upstream) => Route::Serve(Arc::new(upstream)),
                Err(why) => Route::Unavailable(Arc::new(why)),
            };
            if self.file.contains_key(&name) && !shadowed(&previous, &self.file, &name) {
                warn!(
                    server = %name,
                    namespace = %self.namespace,
                    "MCPServer replaces the --config upstream of the same name"
                );
            }
            log_change(previous.get(&name), &route, &name, &self.namespace);
            routes.insert(name, route);
        }
        for name in previous.keys().filter(|n| !routes.contains_key(*n)) {
            info!(server = %name, namespace = %self.namespace, "MCP server removed: no longer served");
        }
        self.table.store(routes);
    }

    /// Read the Secret `name` and remember the value of each of `keys`.
    async fn read_secret(&mut self, name: &str, keys: &BTreeSet<String>) {
        let read = tokio::time::timeout(SECRET_READ_TIMEOUT, self.secrets.get_opt(name)).await;
        // `Err((why, passing))`: a passing failure keeps the value read before (the Secret did
        // not change because the API server could not be reached).
        let outcome: Result<Option<Secret>, (SecretProblem, bool)> = match read {
            Ok(Ok(secret)) => Ok(secret),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 || status.code == 401 => {
                Err((SecretProblem::Forbidden, false))
            }
            Ok(Err(e)) => Err((SecretProblem::Failed(e.to_string()), true)),
            Err(_) => Err((SecretProblem::Slow(SECRET_READ_TIMEOUT.as_secs()), true)),
        };
        for key in keys {
            let entry = (name.to_owned(), key.clone());
            let reference = SecretKeyRef {
                name: name.to_owned(),
                key: key.clone(),
            };
            let value = match &outcome {
                Ok(secret) => secret_value(&reference, secret.as_ref()),
                Err((why, passing)) => {
                    if *passing && matches!(self.values.get(&entry), Some(Cached(Ok(_)))) {
                        warn!(secret = %name, namespace = %self.namespace, error = ?why,
                              "cannot read the Secret; keeping the value read before");
                        continue;
                    }
                    Err(why.clone())
                }
            };
            self.values.insert(entry, Cached(value));
        }
    }

    /// Publish the file's upstreams, then watch the namespace's `MCPServer` objects and keep the
    /// table current until `shutdown` resolves. `synced` is called once the first complete list
    /// is in the table. A failing watch is retried with backoff; the table keeps serving what
    /// it last knew meanwhile.
    pub async fn run(
        mut self,
        synced: impl FnOnce() + Send,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        self.sync(&[], false).await;
        let (reader, writer) = reflector::store();
        let stream = reflector(
            writer,
            watcher(self.servers.clone(), watcher::Config::default()).default_backoff(),
        );
        let mut stream = std::pin::pin!(stream);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.refresh, self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut synced = Some(synced);
        let mut file_updates = self.file_updates.take();
        loop {
            let file_changed = async {
                if let Some(updates) = &mut file_updates
                    && updates.changed().await.is_ok()
                {
                    return Some(updates.borrow_and_update().clone());
                }
                // No reloader, or it stopped: the file's upstreams stay as they are.
                std::future::pending::<Option<FileUpstreams>>().await
            };
            tokio::select! {
                () = &mut shutdown => return,
                Some(file) = file_changed => {
                    self.file = (*file).clone();
                    if synced.is_none() {
                        self.sync(&reader.state(), false).await;
                    }
                }
                _ = tick.tick() => {
                    if synced.is_none() {
                        self.sync(&reader.state(), true).await;
                    }
                }
                event = stream.next() => match event {
                    None => return,
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => {}
                    Some(Ok(watcher::Event::InitDone)) => {
                        self.sync(&reader.state(), false).await;
                        if let Some(done) = synced.take() {
                            info!(namespace = %self.namespace, servers = reader.state().len(), "MCPServer objects loaded");
                            done();
                        }
                    }
                    Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {
                        if synced.is_none() {
                            self.sync(&reader.state(), false).await;
                        }
                    }
                    Some(Err(e)) => warn!(
                        namespace = %self.namespace,
                        error = %e,
                        "watching MCPServer objects failed; retrying (serving what is known)"
                    ),
                },
            }
        }
    }
}

/// Whether the file upstream `name` was already replaced by an object in `previous`.
fn shadowed(previous: &Routes, file: &HashMap<String, Arc<Upstream>>, name: &str) -> bool {
    match (previous.get(name), file.get(name)) {
        (Some(Route::Serve(was)), Some(from_file)) => !Arc::ptr_eq(was, from_file),
        (Some(Route::Unavailable(_)), _) => true,
        _ => false,
    }
}

/// Log what changed for `name`: newly served, no longer served and why, or a new reason.
fn log_change(before: Option<&Route>, after: &Route, name: &str, namespace: &str) {
    match (before, after) {
        (Some(Route::Serve(a)), Route::Serve(b)) if a.uri == b.uri => {}
        (_, Route::Serve(u)) => {
            info!(server = %name, %namespace, url = %u.uri, "serving MCP server");
        }
        (Some(Route::Unavailable(a)), Route::Unavailable(b)) if a == b => {}
        (_, Route::Unavailable(why)) => warn!(
            server = %name,
            %namespace,
            reason = why.reason,
            message = %why.message,
            "MCP server not served"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use overseer_crds::agents::{MCPServerCredential, MCPServerTLS};

    use crate::controller::test_support::{ca_pem, client_certificate};

    fn spec(url: &str) -> MCPServerSpec {
        MCPServerSpec {
            url: url.into(),
            agents: vec!["support-*".into()],
            timeout_seconds: Some(5),
            credential: Some(MCPServerCredential {
                secret_ref: SecretKeyRef {
                    name: "gh".into(),
                    key: "token".into(),
                },
                header: None,
                prefix: Some("Bearer ".into()),
            }),
            tls: None,
        }
    }

    fn secret(key: &str, value: &[u8]) -> Secret {
        Secret {
            data: Some([(key.to_owned(), ByteString(value.to_vec()))].into()),
            ..Secret::default()
        }
    }

    #[test]
    fn an_object_with_its_secret_is_an_upstream() {
        let s = secret("token", b"s3cret\n");
        let up = upstream_of("mcp", "github", &spec("https://gh.example/mcp"), |r| {
            secret_value(r, Some(&s))
        })
        .expect("served");
        assert_eq!(up.name, "github");
        assert_eq!(up.uri.to_string(), "https://gh.example/mcp");
        assert!(up.admits("support-bot") && !up.admits("finance-bot"));
        assert_eq!(up.timeout, Duration::from_secs(5));
        let (header, value) = up.credential.expect("credential");
        assert_eq!(header, "authorization");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cret"));
        assert!(value.is_sensitive());
        // No credential, no timeout: none injected, the default wait.
        let open = MCPServerSpec {
            url: "http://docs:8080/mcp".into(),
            ..MCPServerSpec::default()
        };
        let up =
            upstream_of("mcp", "docs", &open, |_| unreachable!("no Secret read")).expect("served");
        assert!(up.credential.is_none() && up.agents.is_none());
        assert_eq!(up.timeout, DEFAULT_UPSTREAM_TIMEOUT);
    }

    #[test]
    fn what_cannot_be_served_says_why_without_the_value() {
        let cases: Vec<(MCPServerSpec, Option<Secret>, &str, &str)> = vec![
            (
                spec("http://x/mcp"),
                None,
                REASON_CREDENTIAL_MISSING,
                "credential Secret mcp/gh not found; create it with the key \"token\"",
            ),
            (
                spec("http://x/mcp"),
                Some(secret("other", b"v")),
                REASON_CREDENTIAL_MISSING,
                "credential Secret mcp/gh has no key \"token\"",
            ),
            (
                spec("http://x/mcp"),
                Some(secret("token", b"  \n")),
                REASON_CREDENTIAL_MISSING,
                "key \"token\" of Secret mcp/gh is empty",
            ),
            (
                spec("http://x/mcp"),
                Some(secret("token", &[0xff, 0xfe])),
                REASON_CREDENTIAL_INVALID,
                "not UTF-8",
            ),
            (
                spec("http://x/mcp"),
                Some(secret("token", b"top\nsecret-value")),
                REASON_CREDENTIAL_INVALID,
                "is not a valid header value",
            ),
            (
                MCPServerSpec {
                    agents: vec!["[".into()],
                    ..spec("http://x/mcp")
                },
                None,
                REASON_INVALID_SPEC,
                "spec.agents: agent glob",
            ),
            (spec("ftp://x/mcp"), None, REASON_INVALID_SPEC, "spec.url"),
            (
                spec("http://u:p@x/mcp"),
                None,
                REASON_INVALID_SPEC,
                "user information",
            ),
            (
                MCPServerSpec {
                    timeout_seconds: Some(0),
                    ..spec("http://x/mcp")
                },
                None,
                REASON_INVALID_SPEC,
                "spec.timeoutSeconds",
            ),
            (
                MCPServerSpec {
                    credential: spec("http://x/").credential.map(|c| MCPServerCredential {
                        header: Some("Host".into()),
                        ..c
                    }),
                    ..spec("http://x/mcp")
                },
                None,
                REASON_INVALID_SPEC,
                "spec.credential.header",
            ),
        ];
        for (spec, secret, reason, message) in cases {
            let why = upstream_of("mcp", "gh-server", &spec, |r| {
                secret_value(r, secret.as_ref())
            })
            .expect_err(message);
            assert_eq!(why.reason, reason, "{why}");
            assert!(why.message.contains(message), "{why}");
            assert!(!why.message.contains("secret-value"), "{why}");
        }
    }

    fn with_ca(url: &str) -> MCPServerSpec {
        MCPServerSpec {
            tls: Some(MCPServerTLS {
                ca_secret_ref: Some(SecretKeyRef {
                    name: "gh-ca".into(),
                    key: "ca.crt".into(),
                }),
                client_certificate_secret_name: None,
            }),
            ..spec(url)
        }
    }

    #[test]
    fn a_ca_gives_the_upstream_a_client_of_its_own() {
        let pem = ca_pem();
        let lookup = |r: &SecretKeyRef| match r.name.as_str() {
            "gh" => Ok("s3cret".to_owned()),
            "gh-ca" => Ok(pem.clone()),
            other => panic!("unexpected Secret {other}"),
        };
        let up = upstream_of("mcp", "github", &with_ca("https://gh.example/mcp"), lookup)
            .expect("served");
        assert!(up.client.is_some(), "its own client");
        assert!(up.credential.is_some());
        // Without tls: the gateway's shared client.
        let up =
            upstream_of("mcp", "github", &spec("https://gh.example/mcp"), lookup).expect("served");
        assert!(up.client.is_none());
    }

    #[test]
    fn a_ca_that_cannot_be_used_says_why() {
        let cases: Vec<(MCPServerSpec, Result<String, SecretProblem>, &str, &str)> = vec![
            (
                with_ca("http://gh.example/mcp"),
                Ok(ca_pem()),
                REASON_INVALID_SPEC,
                "spec.tls applies to https:// urls only",
            ),
            (
                with_ca("https://gh.example/mcp"),
                Err(SecretProblem::NoSecret),
                REASON_CA_MISSING,
                "CA Secret mcp/gh-ca not found; create it with the key \"ca.crt\"",
            ),
            (
                with_ca("https://gh.example/mcp"),
                Err(SecretProblem::NoKey),
                REASON_CA_MISSING,
                "CA Secret mcp/gh-ca has no key \"ca.crt\"",
            ),
            (
                with_ca("https://gh.example/mcp"),
                Err(SecretProblem::Forbidden),
                REASON_CA_UNREADABLE,
                "the gateway may not read CA Secret mcp/gh-ca",
            ),
            (
                with_ca("https://gh.example/mcp"),
                Ok("secret-value, not PEM".into()),
                REASON_CA_INVALID,
                "spec.tls.caSecretRef: key \"ca.crt\" of Secret mcp/gh-ca holds no PEM certificate",
            ),
            (
                with_ca("https://gh.example/mcp"),
                Ok(
                    "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
                        .into(),
                ),
                REASON_CA_INVALID,
                "spec.tls.caSecretRef: key \"ca.crt\" of Secret mcp/gh-ca",
            ),
        ];
        for (spec, ca, reason, message) in cases {
            let why = upstream_of("mcp", "github", &spec, |r| match r.name.as_str() {
                "gh" => Ok("token".to_owned()),
                _ => ca.clone(),
            })
            .expect_err(message);
            assert_eq!(why.reason, reason, "{why}");
            assert!(why.message.contains(message), "{why}");
            assert!(!why.message.contains("secret-value"), "{why}");
        }
    }

    fn with_client_certificate(url: &str) -> MCPServerSpec {
        MCPServerSpec {
            tls: Some(MCPServerTLS {
                ca_secret_ref: None,
                client_certificate_secret_name: Some("gh-client".into()),
            }),
            ..spec(url)
        }
    }

    #[test]
    fn secret_refs_lists_the_credential_the_ca_and_the_client_certificate() {
        let mut spec = with_ca("https://x/mcp");
        if let Some(tls) = &mut spec.tls {
            tls.client_certificate_secret_name = Some("gh-client".into());
        }
        let refs: Vec<(String, String)> = secret_refs(&spec)
            .into_iter()
            .map(|r| (r.name, r.key))
            .collect();
        let want = [
            ("gh", "token"),
            ("gh-ca", "ca.crt"),
            ("gh-client", "tls.crt"),
            ("gh-client", "tls.key"),
        ]
        .map(|(n, k)| (n.to_owned(), k.to_owned()));
        assert_eq!(refs, want);
        assert!(secret_refs(&MCPServerSpec::default()).is_empty());
    }

    #[test]
    fn a_client_certificate_is_read_from_its_tls_secret() {
        let (cert, key) = client_certificate();
        let lookup = |r: &SecretKeyRef| match (r.name.as_str(), r.key.as_str()) {
            ("gh", "token") => Ok("s3cret".to_owned()),
            ("gh-client", "tls.crt") => Ok(cert.clone()),
            ("gh-client", "tls.key") => Ok(key.clone()),
            other => panic!("unexpected Secret key {other:?}"),
        };
        let spec = with_client_certificate("https://gh.example/mcp");
        let up = upstream_of("mcp", "github", &spec, lookup).expect("served");
        assert!(up.client.is_some(), "its own client");
        // One client per TLS material: read again, the same; rotated, a new one, and the old
        // one is dropped a round after its last use.
        let mut clients = ClientCache::default();
        let (new_cert, new_key) = client_certificate();
        let rotated = |r: &SecretKeyRef| match r.key.as_str() {
            "tls.crt" => Ok(new_cert.clone()),
            "tls.key" => Ok(new_key.clone()),
            _ => lookup(r),
        };
        for _ in 0..2 {
            upstream_with_clients("mcp", "github", &spec, lookup, &mut clients).expect("served");
            assert_eq!(clients.len(), 1);
        }
        clients.next_round();
        upstream_with_clients("mcp", "github", &spec, rotated, &mut clients).expect("served");
        assert_eq!(
            clients.len(),
            2,
            "a new client for the new pair; the old one for a round"
        );
        clients.next_round();
        upstream_with_clients("mcp", "github", &spec, rotated, &mut clients).expect("served");
        assert_eq!(clients.len(), 1, "the old client is dropped");
        // A certificate with another pair's key is refused, and nothing is kept for it.
        let mismatched = |r: &SecretKeyRef| match r.key.as_str() {
            "tls.key" => Ok(new_key.clone()),
            _ => lookup(r),
        };
        upstream_with_clients("mcp", "github", &spec, mismatched, &mut clients)
            .expect_err("not a pair");
        assert_eq!(clients.len(), 1);
        clients.next_round();
        clients.next_round();
        assert!(clients.is_empty(), "unused for a round: dropped");
    }

    #[test]
    fn a_client_certificate_that_cannot_be_used_says_why() {
        let (cert, key) = client_certificate();
        let (_, other_key) = client_certificate();
        let cases: Vec<(Option<&str>, Option<&str>, &str, &str)> = vec![
            (
                None,
                Some(&key),
                REASON_CLIENT_CERTIFICATE_MISSING,
                "client certificate Secret mcp/gh-client has no key \"tls.crt\"",
            ),
            (
                Some(&cert),
                None,
                REASON_CLIENT_CERTIFICATE_MISSING,
                "client certificate Secret mcp/gh-client has no key \"tls.key\"",
            ),
            (
                Some(&cert),
                Some("secret-value"),
                REASON_CLIENT_CERTIFICATE_INVALID,
                "spec.tls.clientCertificateSecretName: the private key of Secret mcp/gh-client is not a PEM private key",
            ),
            (
                Some("secret-value"),
                Some(&key),
                REASON_CLIENT_CERTIFICATE_INVALID,
                "spec.tls.clientCertificateSecretName: the certificate of Secret mcp/gh-client holds no PEM certificate",
            ),
            (
                Some(&cert),
                Some(&other_key),
                REASON_CLIENT_CERTIFICATE_INVALID,
                "spec.tls.clientCertificateSecretName: the client certificate and key cannot be used",
            ),
        ];
        for (crt, tls_key, reason, message) in cases {
            let lookup = |r: &SecretKeyRef| {
                let value = match r.key.as_str() {
                    "tls.crt" => crt,
                    "tls.key" => tls_key,
                    _ => Some("token"),
                };
                value.map(str::to_owned).ok_or(SecretProblem::NoKey)
            };
            let spec = with_client_certificate("https://gh.example/mcp");
            let why = upstream_of("mcp", "github", &spec, lookup).expect_err(message);
            assert_eq!(why.reason, reason, "{why}");
            assert!(why.message.contains(message), "{why}");
            assert!(!why.message.contains("secret-value"), "{why}");
            assert!(!why.message.contains("PRIVATE KEY-----\n"), "{why}");
        }
        // tls naming neither a CA nor a client certificate.
        let mut spec = with_client_certificate("https://gh.example/mcp");
        if let Some(tls) = &mut spec.tls {
            tls.client_certificate_secret_name = None;
        }
        let why = upstream_of("mcp", "github", &spec, |_| Ok("token".into())).expect_err("neither");
        assert_eq!(why.reason, REASON_INVALID_SPEC, "{why}");
    }

    #[test]
    fn string_data_counts_too() {
        let s = Secret {
            string_data: Some([("token".to_owned(), "plain".to_owned())].into()),
            ..Secret::default()
        };
        let r = SecretKeyRef {
            name: "gh".into(),
            key: "token".into(),
        };
        assert_eq!(secret_value(&r, Some(&s)).as_deref(), Ok("plain"));
    }

    #[test]
    fn cached_credentials_never_print_their_value() {
        let text = format!("{:?}", Cached(Ok("hunter2".into())));
        assert!(!text.contains("hunter2"), "{text}");
    }
}
