//! End-to-end test harness for Overseer.
//!
//! Tests connect to the cluster named by `KUBECONFIG` (or `~/.kube/config`), work in a temporary
//! namespace labelled [`E2E_LABEL`]` = "true"` that is deleted when the test ends (also when it
//! panics), and wait for conditions with watches under timeouts, never with sleeps.
//!
//! Without a cluster every test prints [`SKIP_MESSAGE`] to stderr and returns; with
//! `OVERSEER_E2E_REQUIRED=1` (what CI on a cluster sets) a missing cluster is a failure instead.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let Some(cluster) = e2e::Cluster::connect_or_skip("my_test").await? else {
//!     return Ok(());
//! };
//! let ns = cluster.temp_namespace().await?;
//! // ... create objects in ns.name() ...
//! # Ok(()) }
//! ```

use std::{
    fmt::Debug,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{
        DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams, PostParams,
    },
    core::params::ValidationDirective,
    discovery::{ApiCapabilities, ApiResource, Scope},
    runtime::wait::{Condition, await_condition, conditions},
};
use serde::de::DeserializeOwned;

/// Field manager of every write the e2e tests make.
pub const FIELD_MANAGER: &str = "overseer-e2e";
/// Label (value `"true"`) on every namespace the e2e tests create.
pub const E2E_LABEL: &str = "overseer.dev/e2e";
/// Environment variable that turns a missing cluster into a test failure.
pub const REQUIRED_ENV: &str = "OVERSEER_E2E_REQUIRED";
/// What a test prints (to stderr) when it is skipped for want of a cluster.
pub const SKIP_MESSAGE: &str = "SKIPPED: no cluster (set KUBECONFIG to run e2e tests)";
/// How long waits for the API server take at most by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the parent of the `e2e` crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Whether `OVERSEER_E2E_REQUIRED` asks for a cluster (`1`, `true` or `yes`).
pub fn cluster_required() -> bool {
    std::env::var(REQUIRED_ENV)
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// Where a kubeconfig would come from: `KUBECONFIG` when set and non-empty, else
/// `~/.kube/config` when that file exists.
pub fn kubeconfig_source() -> Option<String> {
    if let Some(value) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Some(format!("KUBECONFIG={}", value.to_string_lossy()));
    }
    let home = std::env::var_os("HOME")?;
    let default = Path::new(&home).join(".kube").join("config");
    default.is_file().then(|| default.display().to_string())
}

/// Write one line to the process's stderr, bypassing the test harness's output capture (which
/// only intercepts `print!`/`eprint!`), so a skip is visible in a plain `cargo test` run.
pub fn report(line: &str) {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    // Nothing sensible can be done when stderr is gone; the test's result stands either way.
    let _ = writeln!(stderr, "{line}");
}

/// A connection to the cluster under test.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    config: Config,
}

impl Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("cluster_url", &self.config.cluster_url)
            .finish()
    }
}

impl Cluster {
    /// Connect to the cluster of the kubeconfig, or — when there is none — print
    /// [`SKIP_MESSAGE`] to stderr and return `None` so the test can return early. With
    /// `OVERSEER_E2E_REQUIRED=1` a missing kubeconfig is an error. A kubeconfig that is present
    /// but unusable, or a cluster that does not answer, is always an error: a configured cluster
    /// is never skipped silently.
    pub async fn connect_or_skip(test: &str) -> anyhow::Result<Option<Self>> {
        let Some(source) = kubeconfig_source() else {
            if cluster_required() {
                bail!(
                    "{test}: {REQUIRED_ENV} is set but no cluster is configured (set KUBECONFIG)"
                );
            }
            report(&format!("{test}: {SKIP_MESSAGE}"));
            return Ok(None);
        };
        let config = Config::infer()
            .await
            .with_context(|| format!("{test}: reading the kubeconfig from {source}"))?;
        let client = Client::try_from(config.clone()).context("building the Kubernetes client")?;
        let version = tokio::time::timeout(Duration::from_secs(20), client.apiserver_version())
            .await
            .map_err(|_| {
                anyhow!(
                    "{test}: the API server at {} did not answer within 20s",
                    config.cluster_url
                )
            })?
            .with_context(|| {
                format!(
                    "{test}: asking the API server at {} for its version",
                    config.cluster_url
                )
            })?;
        report(&format!(
            "{test}: running against {} (Kubernetes {})",
            config.cluster_url, version.git_version
        ));
        Ok(Some(Self { client, config }))
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Create a temporary namespace `overseer-e2e-<random>` labelled `overseer.dev/e2e=true`. It
    /// is deleted when the returned guard is dropped.
    pub async fn temp_namespace(&self) -> anyhow::Result<TempNamespace> {
        let name = format!("overseer-e2e-{}", random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(E2E_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                },
                &ns,
            )
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TempNamespace {
            name,
            config: self.config.clone(),
        })
    }

    /// Server-side apply every CRD in `config/crd/bases/` and wait until each is Established.
    /// Returns the CRDs' names.
    pub async fn install_crds(&self) -> anyhow::Result<Vec<String>> {
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        let mut names = Vec::new();
        for path in yaml_files(&repo_root().join("config/crd/bases"))? {
            let crd: CustomResourceDefinition = read_yaml(&path)?;
            let name = crd.name_any();
            api.patch(&name, &apply_params(false), &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name} from {}", path.display()))?;
            names.push(name);
        }
        for name in &names {
            wait_for(
                &api,
                name,
                conditions::is_crd_established(),
                DEFAULT_TIMEOUT,
            )
            .await
            .with_context(|| format!("waiting for CRD {name} to be Established"))?;
        }
        Ok(names)
    }

    /// Resolve the API resource of `apiVersion`/`kind` (from discovery, after the CRDs are in).
    pub async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> anyhow::Result<(ApiResource, ApiCapabilities)> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .with_context(|| format!("discovering {api_version} {kind}"))
    }

    /// An API for `object`'s kind: namespaced in `namespace` when the kind is namespaced.
    pub async fn api_for(
        &self,
        object: &DynamicObject,
        namespace: &str,
    ) -> anyhow::Result<(Api<DynamicObject>, Scope)> {
        let types = object
            .types
            .as_ref()
            .ok_or_else(|| anyhow!("object has no apiVersion/kind"))?;
        let (resource, caps) = self.resolve(&types.api_version, &types.kind).await?;
        let api = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(self.client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(self.client.clone(), &resource),
        };
        Ok((api, caps.scope))
    }

    /// Server-side apply `object` (with strict field validation). Namespaced objects are put
    /// into `namespace`; `dry_run` asks the API server to validate and admit without persisting.
    pub async fn apply(
        &self,
        object: &DynamicObject,
        namespace: &str,
        dry_run: bool,
    ) -> Result<DynamicObject, ApplyError> {
        let (api, scope) = self
            .api_for(object, namespace)
            .await
            .map_err(ApplyError::Setup)?;
        let mut object = object.clone();
        object.metadata.namespace = match scope {
            Scope::Namespaced => Some(namespace.to_string()),
            Scope::Cluster => None,
        };
        let name = object
            .metadata
            .name
            .clone()
            .ok_or_else(|| ApplyError::Setup(anyhow!("object has no name")))?;
        api.patch(&name, &apply_params(dry_run), &Patch::Apply(&object))
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => ApplyError::Rejected(status.message.clone()),
                other => {
                    ApplyError::Setup(anyhow::Error::new(other).context(format!("applying {name}")))
                }
            })
    }
}

/// Ten random lower-case hex digits. `RandomState` is seeded from the operating system's
/// randomness for every process; the clock and a counter separate calls within one. A clash is
/// not silent either: creating an existing namespace fails.
fn random_suffix() -> String {
    use std::{
        hash::{BuildHasher, Hasher},
        sync::atomic::{AtomicU64, Ordering},
    };
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())[..10].to_string()
}

/// Why an apply failed.
#[derive(Debug)]
pub enum ApplyError {
    /// The API server refused the object; its message.
    Rejected(String),
    /// Anything else: discovery, transport, a malformed sample.
    Setup(anyhow::Error),
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(message) => write!(f, "rejected by the API server: {message}"),
            Self::Setup(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ApplyError {}

/// Server-side apply parameters of the e2e tests: field manager [`FIELD_MANAGER`], forced,
/// strict field validation (unknown fields are errors, not silently pruned).
pub fn apply_params(dry_run: bool) -> PatchParams {
    let mut params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation(ValidationDirective::Strict);
    params.dry_run = dry_run;
    params
}

/// A namespace that exists for one test. Dropping it deletes the namespace (and everything in
/// it), also when the test panicked; the deletion is started, not awaited. Leftovers of an
/// aborted run can be removed with `kubectl delete namespace -l overseer.dev/e2e=true`.
#[derive(Debug)]
pub struct TempNamespace {
    name: String,
    config: Config,
}

impl TempNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        // Drop cannot await, and the test's own runtime may be the single thread blocked here (or
        // be unwinding), so the deletion runs on a fresh thread with its own runtime and client.
        let name = self.name.clone();
        let config = self.config.clone();
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = Client::try_from(config)?;
                let api = Api::<Namespace>::all(client);
                let params = DeleteParams::background();
                let delete = api.delete(&name, &params);
                match tokio::time::timeout(Duration::from_secs(30), delete).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(anyhow!("timed out")),
                }
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not delete e2e namespace {}: {e:#}", self.name),
            Err(_) => eprintln!(
                "could not delete e2e namespace {}: the cleanup thread panicked",
                self.name
            ),
        }
    }
}

/// Wait, with a watch, until `condition` holds for the object `name` of `api`, for at most
/// `timeout`. Returns the object as it was when the condition first held.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    condition: impl Condition<K>,
    timeout: Duration,
) -> anyhow::Result<K>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
{
    with_timeout(timeout, await_condition(api.clone(), name, condition))
        .await
        .with_context(|| format!("waiting for {name}"))?
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| anyhow!("{name} was deleted while waiting for it"))
}

/// Run `future` for at most `timeout`.
pub async fn with_timeout<T>(
    timeout: Duration,
    future: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, future)
        .await
        .map_err(|_| anyhow!("timed out after {timeout:?}"))
}

/// The `*.yaml` files of `dir`, sorted by name.
pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parse one YAML document from `path`.
pub fn read_yaml<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One sample from `examples/`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The file, relative to the repository root.
    pub path: PathBuf,
    /// The object.
    pub object: DynamicObject,
    /// For invalid samples: the substring the rejection must contain (the file's first line,
    /// `# expect: <substring>`). `None` for valid samples.
    pub expect: Option<String>,
}

impl Sample {
    /// `apiVersion` and `kind` of the object.
    pub fn kind(&self) -> String {
        self.object
            .types
            .as_ref()
            .map(|t| format!("{} {}", t.api_version, t.kind))
            .unwrap_or_default()
    }
}

/// Every sample under `examples/`: valid ones from every directory except `examples/invalid/`,
/// invalid ones (with their `# expect:` line, which is required) from `examples/invalid/`.
pub fn load_samples() -> anyhow::Result<(Vec<Sample>, Vec<Sample>)> {
    let root = repo_root();
    let examples = root.join("examples");
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&examples)
        .with_context(|| format!("reading {}", examples.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let is_invalid = dir.file_name().is_some_and(|n| n == "invalid");
        for path in yaml_files(&dir)? {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let relative = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
            let object: DynamicObject = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", relative.display()))?;
            if object.types.is_none() || object.metadata.name.is_none() {
                bail!(
                    "{}: a sample needs apiVersion, kind and metadata.name",
                    relative.display()
                );
            }
            if is_invalid {
                let expect = expectation(&text).ok_or_else(|| {
                    anyhow!(
                        "{}: the first line must be `# expect: <message>`",
                        relative.display()
                    )
                })?;
                invalid.push(Sample {
                    path: relative,
                    object,
                    expect: Some(expect),
                });
            } else {
                valid.push(Sample {
                    path: relative,
                    object,
                    expect: None,
                });
            }
        }
    }
    Ok((valid, invalid))
}

/// The expected error of an invalid sample: its first line `# expect: <substring>`.
pub fn expectation(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    let expect = first.strip_prefix("# expect:")?.trim();
    (!expect.is_empty()).then(|| expect.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectation_is_read_from_the_first_line_only() {
        assert_eq!(
            expectation("# expect: ttl must be at least 1s\nkind: X").as_deref(),
            Some("ttl must be at least 1s")
        );
        assert_eq!(expectation("kind: X\n# expect: late"), None);
        assert_eq!(expectation("# expect:   \nkind: X"), None);
        assert_eq!(expectation(""), None);
    }

    #[test]
    fn samples_load_and_every_invalid_one_names_its_error() {
        let (valid, invalid) = load_samples().expect("samples load");
        assert!(!valid.is_empty() && !invalid.is_empty());
        assert!(
            valid
                .iter()
                .all(|s| !s.path.starts_with("examples/invalid"))
        );
        assert!(invalid.iter().all(|s| s.expect.is_some()));
    }

    #[test]
    fn namespace_suffixes_are_short_hex_and_differ() {
        let suffixes: std::collections::BTreeSet<String> =
            (0..100).map(|_| random_suffix()).collect();
        assert_eq!(suffixes.len(), 100);
        assert!(suffixes.iter().all(|s| {
            s.len() == 10
                && s.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        }));
    }

    #[test]
    fn apply_params_are_strict_and_named() {
        let params = apply_params(true);
        assert_eq!(params.field_manager.as_deref(), Some(FIELD_MANAGER));
        assert!(params.force && params.dry_run);
        assert!(matches!(
            params.field_validation,
            Some(ValidationDirective::Strict)
        ));
    }
}
