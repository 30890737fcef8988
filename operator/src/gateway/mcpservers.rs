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
//! * The credential is read from the Secret by name (`get`, never `list` or `watch`): when an
//!   object is new or changed, and every refresh period for all of them (rotation, a Secret
//!   created after its object). A Secret that cannot be read for a passing reason (API server
//!   unreachable) keeps the value last read. Values are never logged.

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
    agents::{MCPServer, MCPServerSpec},
    common::SecretKeyRef,
};
use tracing::{info, warn};

use super::{
    config::{
        CredentialValueError, DEFAULT_UPSTREAM_TIMEOUT, Upstream, agent_globs, check_name,
        credential_header, credential_value, parse_url,
    },
    routes::{
        REASON_CREDENTIAL_INVALID, REASON_CREDENTIAL_MISSING, REASON_CREDENTIAL_UNREADABLE,
        REASON_INVALID_SPEC, Route, RouteTable, Routes, Unavailable,
    },
};

/// Longest `timeoutSeconds` an object may ask for (the CRD's bound).
pub const MAX_TIMEOUT_SECONDS: i32 = 3600;
/// Default period after which every credential Secret is read again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// Longest one Secret read may take before the gateway moves on (keeping what it had).
const SECRET_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The upstream `name` (an `MCPServer` of `namespace`) stands for, or why it cannot be served.
/// `credential` reads the referenced Secret key's value (see [`credential_from_secret`]); it is
/// only called once everything else is valid.
pub fn upstream_of(
    namespace: &str,
    name: &str,
    spec: &MCPServerSpec,
    credential: impl FnOnce(&SecretKeyRef) -> Result<String, Unavailable>,
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
    let credential = match &spec.credential {
        None => None,
        Some(c) => {
            let header = credential_header(c.header.as_deref())
                .map_err(|e| invalid(format!("spec.credential.header: {e}")))?;
            let secret = credential(&c.secret_ref)?;
            let at = secret_key_name(namespace, &c.secret_ref);
            let value = credential_value(c.prefix.as_deref(), &secret).map_err(|e| match e {
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
    Ok(Upstream {
        name: name.to_owned(),
        uri,
        agents,
        timeout,
        credential,
        // MCPServer objects have no CA of their own yet: the system's roots.
        client: None,
    })
}

fn secret_key_name(namespace: &str, reference: &SecretKeyRef) -> String {
    format!(
        "key {:?} of Secret {namespace}/{}",
        reference.key, reference.name
    )
}

/// The value of `reference`'s key in `secret` (`None`: the Secret does not exist), or why there
/// is none. The message names the Secret and the key, never the value.
pub fn credential_from_secret(
    namespace: &str,
    reference: &SecretKeyRef,
    secret: Option<&Secret>,
) -> Result<String, Unavailable> {
    let Some(secret) = secret else {
        return Err(Unavailable::new(
            REASON_CREDENTIAL_MISSING,
            format!(
                "credential Secret {namespace}/{} not found; create it with the key {:?}",
                reference.name, reference.key
            ),
        ));
    };
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
        });
    let Some(bytes) = bytes else {
        return Err(Unavailable::new(
            REASON_CREDENTIAL_MISSING,
            format!(
                "credential Secret {namespace}/{} has no key {:?}",
                reference.name, reference.key
            ),
        ));
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Unavailable::new(
            REASON_CREDENTIAL_INVALID,
            format!(
                "{} is not UTF-8 text",
                secret_key_name(namespace, reference)
            ),
        )
    })
}

/// One credential as last read.
#[derive(Clone)]
struct Cached(Result<String, Unavailable>);

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(_) => f.write_str("Cached(<credential>)"),
            Err(e) => write!(f, "Cached({e})"),
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
    /// `(Secret, key)` → the value (or why there is none).
    credentials: HashMap<(String, String), Cached>,
    /// `resourceVersion` of every object at the last sync: a changed object's Secret is re-read.
    seen: HashMap<String, Option<String>>,
}

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
            credentials: HashMap::new(),
            seen: HashMap::new(),
        }
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
    /// credential Secrets of new and changed objects, and of all of them when `refresh_all`.
    pub async fn sync(&mut self, servers: &[Arc<MCPServer>], refresh_all: bool) {
        // Which Secret keys are wanted, and which Secrets to read now.
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut read: BTreeSet<String> = BTreeSet::new();
        for server in servers {
            let Some(credential) = &server.spec.credential else {
                continue;
            };
            let reference = &credential.secret_ref;
            wanted
                .entry(reference.name.clone())
                .or_default()
                .insert(reference.key.clone());
            let changed = self.seen.get(&server.name_any()) != Some(&server.resource_version());
            let cached = self
                .credentials
                .contains_key(&(reference.name.clone(), reference.key.clone()));
            if refresh_all || changed || !cached {
                read.insert(reference.name.clone());
            }
        }
        for name in read {
            let keys = wanted.get(&name).cloned().unwrap_or_default();
            self.read_secret(&name, &keys).await;
        }
        self.credentials
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
        for server in servers {
            let name = server.name_any();
            let route = match upstream_of(&self.namespace, &name, &server.spec, |reference| {
                self.credentials
                    .get(&(reference.name.clone(), reference.key.clone()))
                    .map(|c| c.0.clone())
                    .unwrap_or_else(|| {
                        Err(Unavailable::new(
                            REASON_CREDENTIAL_UNREADABLE,
                            format!(
                                "credential Secret {}/{} has not been read yet",
                                self.namespace, reference.name
                            ),
                        ))
                    })
            }) {
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
        let ns = self.namespace.clone();
        let read = tokio::time::timeout(SECRET_READ_TIMEOUT, self.secrets.get_opt(name)).await;
        // `Err((why, passing))`: a passing failure keeps the value read before (the Secret did
        // not change because the API server could not be reached).
        let outcome: Result<Option<Secret>, (Unavailable, bool)> = match read {
            Ok(Ok(secret)) => Ok(secret),
            Ok(Err(kube::Error::Api(status))) if status.code == 403 || status.code == 401 => Err((
                Unavailable::new(
                    REASON_CREDENTIAL_UNREADABLE,
                    format!(
                        "the gateway may not read credential Secret {ns}/{name}: give its \
                         ServiceAccount get on secrets in {ns} (a Role whose resourceNames list \
                         {name})"
                    ),
                ),
                false,
            )),
            Ok(Err(e)) => Err((
                Unavailable::new(
                    REASON_CREDENTIAL_UNREADABLE,
                    format!("cannot read credential Secret {ns}/{name}: {e}"),
                ),
                true,
            )),
            Err(_) => Err((
                Unavailable::new(
                    REASON_CREDENTIAL_UNREADABLE,
                    format!(
                        "reading credential Secret {ns}/{name} took over {}s",
                        SECRET_READ_TIMEOUT.as_secs()
                    ),
                ),
                true,
            )),
        };
        for key in keys {
            let entry = (name.to_owned(), key.clone());
            let reference = SecretKeyRef {
                name: name.to_owned(),
                key: key.clone(),
            };
            let value = match &outcome {
                Ok(secret) => credential_from_secret(&ns, &reference, secret.as_ref()),
                Err((why, passing)) => {
                    if *passing && matches!(self.credentials.get(&entry), Some(Cached(Ok(_)))) {
                        warn!(secret = %name, namespace = %ns, error = %why.message,
                              "cannot read the credential Secret; keeping the value read before");
                        continue;
                    }
                    Err(why.clone())
                }
            };
            self.credentials.insert(entry, Cached(value));
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
        loop {
            tokio::select! {
                () = &mut shutdown => return,
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
    use overseer_crds::agents::MCPServerCredential;

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
            credential_from_secret("mcp", r, Some(&s))
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
                credential_from_secret("mcp", r, secret.as_ref())
            })
            .expect_err(message);
            assert_eq!(why.reason, reason, "{why}");
            assert!(why.message.contains(message), "{why}");
            assert!(!why.message.contains("secret-value"), "{why}");
        }
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
        assert_eq!(
            credential_from_secret("mcp", &r, Some(&s)).as_deref(),
            Ok("plain")
        );
    }

    #[test]
    fn cached_credentials_never_print_their_value() {
        let text = format!("{:?}", Cached(Ok("hunter2".into())));
        assert!(!text.contains("hunter2"), "{text}");
    }
}
