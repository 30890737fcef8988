//! The [`Backend`] trait and the types it speaks.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec, Profile, ServingMode};
use serde_json::Value;

use crate::{
    backends::{Dynamo, Kaito, Kserve, LlmD, Vllm},
    model::{ModelSource, served_name},
    revision::{MAX_REVISION_NAME_LEN, is_dns1035_label},
};

/// One thing wrong with a spec, for a backend: the field (a JSON path under `spec`, e.g.
/// `spec.serving.mode`) and a message that says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationIssue {
    /// The offending field, e.g. `spec.resources.accelerator`.
    pub field: String,
    /// What is wrong and what to change.
    pub message: String,
}

impl ValidationIssue {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a revision could not be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The spec cannot run on the backend (or is self-contradictory).
    #[error("invalid spec: {}", join_issues(.0))]
    Invalid(Vec<ValidationIssue>),
    /// A name handed to the renderer cannot name the objects it would create.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What a valid one looks like.
        reason: String,
    },
}

impl RenderError {
    /// A short, stable label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_spec",
            Self::InvalidName { .. } => "invalid_name",
        }
    }
}

fn join_issues(issues: &[ValidationIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one revision is rendered from.
#[derive(Clone, Copy, Debug)]
pub struct RenderInput<'a> {
    /// Name of the `InferenceRuntime`.
    pub runtime_name: &'a str,
    /// Namespace of the `InferenceRuntime` (and of everything rendered).
    pub namespace: &'a str,
    /// The revision name ([`crate::revision_name`]); the primary object of the revision is named
    /// after it.
    pub revision_name: &'a str,
    /// The revision hash ([`crate::revision_hash`]).
    pub revision_hash: &'a str,
    /// The spec the revision runs.
    pub spec: &'a InferenceRuntimeSpec,
    /// Replicas to render: the spec's for the serving revision, 0 for a revision kept for
    /// rollback.
    pub replicas: i32,
    /// Controller owner reference to the `InferenceRuntime`, set on every rendered object.
    pub owner: Option<&'a OwnerReference>,
}

impl RenderInput<'_> {
    /// Replicas clamped to be non-negative.
    pub(crate) fn replicas(&self) -> i32 {
        self.replicas.max(0)
    }

    /// Checks the names the renderer will derive object names from.
    pub(crate) fn check_names(&self) -> Result<(), RenderError> {
        if !is_dns1035_label(self.revision_name, MAX_REVISION_NAME_LEN) {
            return Err(RenderError::InvalidName {
                name: self.revision_name.to_string(),
                reason: format!(
                    "a revision name must be a DNS-1035 label of at most {MAX_REVISION_NAME_LEN} characters; mint it with revision_name()"
                ),
            });
        }
        if !crate::meta::is_dns1123_label(self.namespace) {
            return Err(RenderError::InvalidName {
                name: self.namespace.to_string(),
                reason: "a namespace must be a DNS-1123 label".into(),
            });
        }
        Ok(())
    }
}

/// Readiness of one revision, judged from its live objects' status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionReadiness {
    /// The backend reports the revision serving its desired replicas (and at least one).
    pub ready: bool,
    /// The backend reports a failure that waiting will not fix (e.g. a Deployment past its
    /// progress deadline, a `DynamoGraphDeployment` in state `failed`): a switch to this revision
    /// can fail now instead of at its deadline.
    pub failed: bool,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// A human summary: why it is not ready, or that it is.
    pub message: String,
}

/// The pods behind the stable endpoint Service while this revision is active, and the port they
/// serve the OpenAI API on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointTarget {
    /// Labels of the serving pods (the stable Service's selector).
    pub pod_selector: BTreeMap<String, String>,
    /// Container port of the OpenAI-compatible server (the stable Service's `targetPort`).
    pub port: i32,
}

/// The per-revision backend an `HTTPRoute` sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteBackend {
    /// API group of the referent (`""` for core Services).
    pub group: String,
    /// Kind of the referent (`Service` or `InferencePool`).
    pub kind: String,
    /// Name of the referent.
    pub name: String,
    /// Port of the referent (required for Services, absent for InferencePools).
    pub port: Option<i32>,
}

/// An API that must be served for a backend to work (checked by discovery before anything is
/// rendered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredApi {
    /// API group, e.g. `kaito.sh`.
    pub group: &'static str,
    /// Version, e.g. `v1beta1`.
    pub version: &'static str,
    /// Kind, e.g. `Workspace`.
    pub kind: &'static str,
    /// Resource plural, e.g. `workspaces`.
    pub plural: &'static str,
    /// What to install when it is missing.
    pub install_hint: &'static str,
}

/// An inference backend.
///
/// The trait is object-safe and its implementations are zero-sized unit structs handed out as
/// `&'static dyn Backend` by [`backend_for`]: the controller dispatches on the spec's
/// `engine.backend` at run time, holds two revisions of different backends side by side during a
/// switch, and its tests can substitute a fake backend — none of which a generic parameter or a
/// closed enum would allow as simply. Every method is pure.
pub trait Backend: std::fmt::Debug + Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// Whether `spec` can run on this backend, with every problem found (not just the first).
    /// Includes the checks every backend shares ([`validate_spec`]).
    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>>;

    /// The revision's objects, complete (`apiVersion`, `kind`, `metadata` with the runway labels
    /// and the owner reference), in a stable order. Validates first.
    fn render(&self, input: &RenderInput<'_>) -> Result<Vec<Value>, RenderError>;

    /// The revision's readiness, judged from the status of its live objects (those `render`
    /// produced, as read back from the cluster; others are ignored). An expected object that is
    /// missing means not ready.
    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness;

    /// The pods behind the stable endpoint Service and their OpenAI API port.
    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget;

    /// The per-revision backend an `HTTPRoute` sends this revision's share of traffic to.
    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend;

    /// The custom APIs this backend renders objects of (core and `apps` kinds are always there).
    fn required_apis(&self) -> Vec<RequiredApi>;
}

static VLLM: Vllm = Vllm;
static KAITO: Kaito = Kaito;
static LLM_D: LlmD = LlmD;
static DYNAMO: Dynamo = Dynamo;
static KSERVE: Kserve = Kserve;

/// The backend implementation for `kind`.
pub fn backend_for(kind: BackendKind) -> &'static dyn Backend {
    match kind {
        BackendKind::Vllm => &VLLM,
        BackendKind::Kaito => &KAITO,
        BackendKind::LlmD => &LLM_D,
        BackendKind::Dynamo => &DYNAMO,
        BackendKind::Kserve => &KSERVE,
    }
}

/// Engine argument keys the renderers set themselves; setting them in `engine.args` conflicts.
pub(crate) const RESERVED_ARGS: &[(&str, &str)] = &[
    ("model", "set spec.model.uri instead"),
    ("served-model-name", "set spec.model.servedName instead"),
    ("host", "the server always listens on 0.0.0.0"),
    (
        "port",
        "the server port is fixed per backend; set spec.endpoint.port for the Service",
    ),
    (
        "kv-transfer-config",
        "set by the llm-d/dynamo renderers for Disaggregated serving",
    ),
];

/// Checks every backend shares: the model URI and the served name, engine args and env, the
/// profile against the resources, and the serving topology fields.
pub fn validate_spec(spec: &InferenceRuntimeSpec) -> Vec<ValidationIssue> {
    let mut issues = Vec::new();
    if let Err(e) = ModelSource::parse(&spec.model.uri) {
        issues.push(ValidationIssue::new("spec.model.uri", e));
    }
    match &spec.model.served_name {
        Some(name)
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            issues.push(ValidationIssue::new(
                "spec.model.servedName",
                "the served name must be non-empty and hold no whitespace",
            ));
        }
        Some(_) => {}
        None => {
            if served_name(&spec.model).is_none() {
                issues.push(ValidationIssue::new(
                    "spec.model.servedName",
                    format!(
                        "no served name can be derived from {:?} (it has no last path segment); set spec.model.servedName",
                        spec.model.uri
                    ),
                ));
            }
        }
    }
    for key in spec.engine.args.keys() {
        let field = format!("spec.engine.args.{key}");
        if key.is_empty()
            || key.starts_with('-')
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            issues.push(ValidationIssue::new(
                field,
                "argument keys are flag names without the leading `--` (letters, digits, `-`, `_`, `.`)",
            ));
        } else if let Some((_, why)) = RESERVED_ARGS
            .iter()
            .find(|(k, _)| *k == key.replace('_', "-"))
        {
            issues.push(ValidationIssue::new(
                field,
                format!("`--{key}` is set by the renderer: {why}"),
            ));
        }
    }
    for (key, value) in &spec.engine.args {
        if value.chars().any(|c| c.is_control()) {
            issues.push(ValidationIssue::new(
                format!("spec.engine.args.{key}"),
                "argument values cannot hold control characters",
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, env) in spec.engine.env.iter().enumerate() {
        if !seen.insert(env.name.as_str()) {
            issues.push(ValidationIssue::new(
                format!("spec.engine.env[{i}].name"),
                format!("environment variable {} is set twice", env.name),
            ));
        }
        if env.name == crate::pod::HF_TOKEN_ENV && spec.model.token_secret_ref.is_some() {
            issues.push(ValidationIssue::new(
                format!("spec.engine.env[{i}].name"),
                "HF_TOKEN conflicts with spec.model.tokenSecretRef, which sets it; remove one",
            ));
        }
        if env.value.is_some() && env.value_from.is_some() {
            issues.push(ValidationIssue::new(
                format!("spec.engine.env[{i}]"),
                "set value or valueFrom, not both",
            ));
        }
    }
    if spec.profile == Profile::Cpu && spec.resources.accelerator.is_some() {
        issues.push(ValidationIssue::new(
            "spec.resources.accelerator",
            "a Cpu profile cannot request accelerators; remove resources.accelerator or use profile Gpu",
        ));
    }
    if let Some(acc) = &spec.resources.accelerator {
        if acc.count < 1 {
            issues.push(ValidationIssue::new(
                "spec.resources.accelerator.count",
                "request at least one accelerator",
            ));
        }
        if acc.resource.as_deref().is_some_and(|r| !r.contains('/')) {
            issues.push(ValidationIssue::new(
                "spec.resources.accelerator.resource",
                "an accelerator is an extended resource with a domain, e.g. nvidia.com/gpu",
            ));
        }
    }
    if spec.serving.mode == ServingMode::Aggregated && spec.serving.prefill_replicas.is_some() {
        issues.push(ValidationIssue::new(
            "spec.serving.prefillReplicas",
            "prefillReplicas only applies to serving.mode Disaggregated; remove it or change the mode",
        ));
    }
    if spec.serving.prefill_replicas.is_some_and(|n| n < 1) {
        issues.push(ValidationIssue::new(
            "spec.serving.prefillReplicas",
            "at least one prefill worker",
        ));
    }
    if spec.replicas < 0 {
        issues.push(ValidationIssue::new(
            "spec.replicas",
            "replicas cannot be negative",
        ));
    }
    issues
}

/// Shared helper for backends: common issues plus the backend's own, as a `Result`.
pub(crate) fn finish(
    mut issues: Vec<ValidationIssue>,
    own: Vec<ValidationIssue>,
) -> Result<(), Vec<ValidationIssue>> {
    issues.extend(own);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// Issues every accelerator-only backend raises for a `Cpu` profile or a missing accelerator.
pub(crate) fn require_gpu(
    spec: &InferenceRuntimeSpec,
    backend: &str,
    issues: &mut Vec<ValidationIssue>,
) {
    if spec.profile == Profile::Cpu {
        issues.push(ValidationIssue::new(
            "spec.profile",
            format!("the {backend} backend needs accelerators; use the vllm or kserve backend for a Cpu profile"),
        ));
    } else if spec.resources.accelerator.is_none() {
        issues.push(ValidationIssue::new(
            "spec.resources.accelerator",
            format!("the {backend} backend serves on accelerators; set resources.accelerator (e.g. count 1) or use profile Cpu with the vllm backend"),
        ));
    }
}

/// Issue for a backend that cannot serve a `Disaggregated` topology.
pub(crate) fn refuse_disaggregated(
    spec: &InferenceRuntimeSpec,
    backend: &str,
    issues: &mut Vec<ValidationIssue>,
) {
    if spec.serving.mode == ServingMode::Disaggregated {
        issues.push(ValidationIssue::new(
            "spec.serving.mode",
            format!("the {backend} backend cannot serve Disaggregated (separate prefill and decode workers); use llm-d or dynamo, or mode Aggregated"),
        ));
    }
}

/// Issue for a backend that only runs Hugging Face or PVC models (not KAITO presets).
pub(crate) fn refuse_preset(
    spec: &InferenceRuntimeSpec,
    backend: &str,
    issues: &mut Vec<ValidationIssue>,
) {
    if let Ok(ModelSource::Preset(_)) = ModelSource::parse(&spec.model.uri) {
        issues.push(ValidationIssue::new(
            "spec.model.uri",
            format!("preset:// models are KAITO presets; the {backend} backend needs hf://org/name or pvc://claim/path"),
        ));
    }
}
