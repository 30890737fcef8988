//! Rollout sources: a `FleetRollout`'s `spec.source` resolved into a [`RenderedSource`], the set
//! of objects to roll out and its revision.
//!
//! # Rendering
//! - Every document (inline item, ConfigMap value, file) is YAML; JSON is YAML too. A value or
//!   file may hold several documents separated by `---`; empty documents are skipped. A document
//!   that is a sequence, or a `v1` `List`, contributes each of its items.
//! - Every object must have `apiVersion`, `kind` and `metadata.name` (non-empty strings). Two
//!   objects with the same API group, kind, namespace and name are an error.
//! - **Nothing is rendered from a source that fails to render as a whole**: the first problem
//!   rejects the entire set, with an error naming the document (inline index, ConfigMap key or
//!   file, and the document's index in it) and, when known, the object's kind and name.
//! - The objects are sorted by API group, kind, namespace, name and apiVersion, so the order of
//!   documents, files or ConfigMap keys does not matter.
//! - [`RenderedSource::revision`] is `sha256:<hex>` over the sorted objects, each in canonical JSON
//!   (object keys sorted at every level, no whitespace). It is stable across document order and
//!   key order, and changes with any value.
//!
//! # Sources
//! - **inline**: `spec.source.inline`, items named `inline[i]`.
//! - **ConfigMap**: the named ConfigMap in the rollout's namespace; its `data` values, in key order
//!   (`binaryData` is ignored).
//! - **Git** ([`git`]): fetched with gitoxide into a cache directory, `ref` a branch, a tag or a
//!   commit (none: the remote's `HEAD`); the `*.yaml`, `*.yml` and `*.json` files under `path`,
//!   read straight from the commit's tree (no checkout), recursively, in path order. Hidden
//!   files and directories (name starting with `.`) and symlinks are skipped. HTTPS credentials
//!   come from the `secretRef` Secret: `username` and `password` (a token goes in `password`),
//!   sent over `https://` only. SSH URLs and `identity` keys are **not supported** (an error says
//!   so).
//! - **Flux** ([`flux`]): the `GitRepository` or `OCIRepository`'s `status.artifact.url` is
//!   downloaded, its `sha256:`/`sha384:`/`sha512:` `digest` checked before anything is read, and the
//!   tarball's files under `path` read as for Git.

pub mod flux;
pub mod git;
pub(crate) mod render;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, api::DynamicObject};
use overseer_crds::fleet::RolloutSource;

pub use render::{Document, render_documents, render_inline};

/// The objects a rollout source renders to, and its revision.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedSource {
    /// `sha256:<hex>` of the canonical rendered set (see the [module documentation](self)).
    pub revision: String,
    /// The objects, sorted by API group, kind, namespace, name and apiVersion.
    pub objects: Vec<DynamicObject>,
    /// Where the set came from, for messages: e.g. `commit 3f2a…` for Git, the artifact's
    /// revision for Flux. `None` for inline and ConfigMap sources.
    pub origin: Option<String>,
}

/// Why a source could not be rendered. Messages name the object and the problem.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `spec.source` sets none, or more than one, of its fields.
    #[error("spec.source: set exactly one of inline, configMap, git or flux")]
    InvalidSource,
    /// A document does not parse or is not a Kubernetes object.
    #[error("{document}{}: {message}", object.as_deref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Manifest {
        /// Where: `inline[2]`, `ConfigMap ns/name key "app.yaml" document 1`, `deploy/web.yaml
        /// document 0`.
        document: String,
        /// `kind name` when it could be read.
        object: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Two documents define the same object.
    #[error("{object} is defined twice: in {first} and in {second}")]
    Duplicate {
        /// `group kind namespace/name`.
        object: String,
        /// First document.
        first: String,
        /// Second document.
        second: String,
    },
    /// The source holds no object.
    #[error("{0}: the source renders no object")]
    Empty(String),
    /// The source is larger than the limits allow.
    #[error("{what}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// What is too large.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A Flux source in another namespace than the rollout's (or flux-system): the operator reads every namespace,
    /// so following the reference would deploy (and snapshot into the rollout's namespace) an
    /// artifact its author may not read — the confused deputy Flux's own
    /// `--no-cross-namespace-refs` prevents.
    #[error(
        "spec.source.flux.namespace {namespace:?} is neither the rollout's namespace {own:?} nor flux-system: a rollout may only use Flux sources of its own namespace or of flux-system; create the {kind} in {own:?} (and leave namespace empty)"
    )]
    CrossNamespace {
        /// The Flux source kind.
        kind: String,
        /// The namespace named.
        namespace: String,
        /// The rollout's namespace.
        own: String,
    },
    /// A referenced object (ConfigMap, Secret, Flux source) does not exist.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Its kind.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The Kubernetes API could not be read.
    #[error("reading {kind} {namespace}/{name}: {source}")]
    Kube {
        /// Kind read.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A credentials Secret lacks the keys needed or holds keys that are not supported.
    #[error("Secret {namespace}/{name}: {message}")]
    Credentials {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The Git source is not supported as configured (e.g. SSH).
    #[error("Git source {url}: {message}")]
    GitUnsupported {
        /// Repository URL.
        url: String,
        /// What is not supported.
        message: String,
    },
    /// The Git repository could not be reached or fetched.
    #[error("Git source {url} is unreachable: {message}")]
    GitUnreachable {
        /// Repository URL.
        url: String,
        /// The transport's error.
        message: String,
    },
    /// The ref does not exist in the repository.
    #[error("Git source {url}: {reference} not found")]
    GitRefNotFound {
        /// Repository URL.
        url: String,
        /// `branch main`, `tag v1`, `commit abc…` or `HEAD`.
        reference: String,
    },
    /// The repository could not be read locally (cache, objects).
    #[error("Git source {url}: {message}")]
    GitRepository {
        /// Repository URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// `path` is not a directory of the commit or artifact.
    #[error("{source_name}: path {path:?} is not a directory in {revision}")]
    PathNotFound {
        /// The source.
        source_name: String,
        /// The path asked for.
        path: String,
        /// Commit or artifact revision.
        revision: String,
    },
    /// The Flux source has no artifact (yet) or its artifact lacks a field.
    #[error("{kind} {namespace}/{name}: {message}")]
    FluxArtifact {
        /// `GitRepository` or `OCIRepository`.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is missing.
        message: String,
    },
    /// The artifact could not be downloaded.
    #[error("fetching artifact {url}: {message}")]
    ArtifactFetch {
        /// Artifact URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The downloaded artifact does not match its advertised digest; it is not used.
    #[error("artifact {url}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Artifact URL.
        url: String,
        /// Digest in the Flux source's status.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// The artifact is not a readable gzip-compressed tarball.
    #[error("artifact {url}: {message}")]
    Archive {
        /// Artifact URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("{0}: background task failed")]
    Task(String),
}

impl SourceError {
    /// A short label for metrics and condition/Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            SourceError::InvalidSource => "InvalidSource",
            SourceError::Manifest { .. } => "InvalidManifest",
            SourceError::Duplicate { .. } => "DuplicateObject",
            SourceError::Empty(_) => "EmptySource",
            SourceError::TooLarge { .. } => "SourceTooLarge",
            SourceError::NotFound { .. } => "SourceNotFound",
            SourceError::CrossNamespace { .. } => "CrossNamespaceSource",
            SourceError::Kube { .. } => "KubeError",
            SourceError::Credentials { .. } => "InvalidCredentials",
            SourceError::GitUnsupported { .. } => "GitUnsupported",
            SourceError::GitUnreachable { .. } => "GitUnreachable",
            SourceError::GitRefNotFound { .. } => "GitRefNotFound",
            SourceError::GitRepository { .. } => "GitError",
            SourceError::PathNotFound { .. } => "PathNotFound",
            SourceError::FluxArtifact { .. } => "ArtifactNotReady",
            SourceError::ArtifactFetch { .. } => "ArtifactUnreachable",
            SourceError::DigestMismatch { .. } => "DigestMismatch",
            SourceError::Archive { .. } => "InvalidArtifact",
            SourceError::Task(_) => "InternalError",
        }
    }

    /// Whether retrying later may help (network, API, a Flux source not ready yet) rather than
    /// the rollout's source needing a change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::Kube { .. }
                | SourceError::GitUnreachable { .. }
                | SourceError::FluxArtifact { .. }
                | SourceError::ArtifactFetch { .. }
                | SourceError::Task(_)
        )
    }
}

/// Limits on what a source may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest artifact download (compressed bytes).
    pub max_artifact_bytes: u64,
    /// Largest total size of the manifest files read from a Git tree or an artifact.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_artifact_bytes: 64 << 20,
            max_manifest_bytes: 32 << 20,
        }
    }
}

/// Resolves rollout sources. Holds the Kubernetes client (ConfigMaps, Secrets, Flux sources),
/// the Git cache directory and the HTTP client for artifacts. Cheap to clone.
#[derive(Clone)]
pub struct SourceResolver {
    client: Client,
    git_cache: PathBuf,
    http: reqwest::Client,
    limits: Limits,
    repo_locks: Arc<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for SourceResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceResolver")
            .field("git_cache", &self.git_cache)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' ring provider as the process default if none is installed yet (reqwest and
/// gitoxide's HTTP transport build their TLS configuration from it).
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl SourceResolver {
    /// A resolver reading the API through `client` and caching Git repositories under
    /// `git_cache` (created when needed).
    pub fn new(client: Client, git_cache: impl Into<PathBuf>) -> Result<Self, SourceError> {
        Self::with_limits(client, git_cache, Limits::default())
    }

    /// [`SourceResolver::new`] with explicit limits.
    pub fn with_limits(
        client: Client,
        git_cache: impl Into<PathBuf>,
        limits: Limits,
    ) -> Result<Self, SourceError> {
        ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| SourceError::ArtifactFetch {
                url: String::new(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(Self {
            client,
            git_cache: git_cache.into(),
            http,
            limits,
            repo_locks: Arc::default(),
        })
    }

    /// Renders `source` for a rollout in `namespace`. Secrets, ConfigMaps and (by default) Flux
    /// sources are read from that namespace.
    pub async fn resolve(
        &self,
        namespace: &str,
        source: &RolloutSource,
    ) -> Result<RenderedSource, SourceError> {
        match (
            &source.inline,
            &source.config_map,
            &source.git,
            &source.flux,
        ) {
            (Some(items), None, None, None) => render_inline(items),
            (None, Some(cm), None, None) => self.config_map(namespace, &cm.name).await,
            (None, None, Some(git), None) => self.git(namespace, git).await,
            (None, None, None, Some(flux)) => {
                flux::resolve(&self.client, &self.http, &self.limits, namespace, flux).await
            }
            _ => Err(SourceError::InvalidSource),
        }
    }

    async fn config_map(&self, namespace: &str, name: &str) -> Result<RenderedSource, SourceError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm = api
            .get_opt(name)
            .await
            .map_err(|source| SourceError::Kube {
                kind: "ConfigMap".into(),
                namespace: namespace.into(),
                name: name.into(),
                source: Box::new(source),
            })?
            .ok_or_else(|| SourceError::NotFound {
                kind: "ConfigMap".into(),
                namespace: namespace.into(),
                name: name.into(),
            })?;
        render_config_map(&cm)
    }

    async fn git(
        &self,
        namespace: &str,
        spec: &overseer_crds::fleet::GitSource,
    ) -> Result<RenderedSource, SourceError> {
        if let Some(shown) = git::with_userinfo(&spec.url) {
            return Err(SourceError::GitUnsupported {
                url: shown,
                message: "the URL carries a user name or password, which everyone who can read \
                          the FleetRollout sees: remove it and put the credentials in the Secret \
                          named by secretRef"
                    .into(),
            });
        }
        let credentials = match &spec.secret_ref {
            Some(name) => Some(self.git_credentials(namespace, name).await?),
            None => None,
        };
        let dir = git::cache_dir(&self.git_cache, &spec.url);
        let lock = {
            let mut locks = self
                .repo_locks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            locks.entry(dir.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let spec = spec.clone();
        let limits = self.limits;
        let task = format!("Git source {}", spec.url);
        tokio::task::spawn_blocking(move || git::render(&dir, &spec, credentials.as_ref(), &limits))
            .await
            .map_err(|_| SourceError::Task(task))?
    }

    async fn git_credentials(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<git::Credentials, SourceError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|source| SourceError::Kube {
                kind: "Secret".into(),
                namespace: namespace.into(),
                name: name.into(),
                source: Box::new(source),
            })?
            .ok_or_else(|| SourceError::NotFound {
                kind: "Secret".into(),
                namespace: namespace.into(),
                name: name.into(),
            })?;
        git::Credentials::from_secret(&secret).map_err(|message| SourceError::Credentials {
            namespace: namespace.into(),
            name: name.into(),
            message,
        })
    }
}

/// Renders a ConfigMap's `data` values, in key order, as documents named after the ConfigMap and
/// key.
pub fn render_config_map(cm: &ConfigMap) -> Result<RenderedSource, SourceError> {
    let ns = cm.metadata.namespace.as_deref().unwrap_or_default();
    let name = cm.metadata.name.as_deref().unwrap_or_default();
    let data = cm.data.clone().unwrap_or_default();
    // `data` is a BTreeMap: key order.
    let docs: Vec<Document> = data
        .into_iter()
        .map(|(key, content)| Document {
            origin: format!("ConfigMap {ns}/{name} key {key:?}"),
            content,
        })
        .collect();
    render_documents(&format!("ConfigMap {ns}/{name}"), docs)
}
