//! `runway.overseer.dev/v1alpha1`: one `InferenceRuntime` spec over several inference engines.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{EnvVar, Toleration},
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// API group of this module's kinds.
pub const GROUP: &str = "runway.overseer.dev";

/// `InferenceRuntime` serves one model behind a stable OpenAI-compatible endpoint, on the engine
/// named by `spec.engine.backend`. Changing the backend, the model or the engine settings rolls the
/// runtime over to a new revision without dropping traffic: the endpoint Service moves to the new
/// revision only once it is ready.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "runway.overseer.dev",
    version = "v1alpha1",
    kind = "InferenceRuntime",
    namespaced,
    status = "InferenceRuntimeStatus",
    shortname = "irt",
    category = "overseer",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Backend", type_ = "string", json_path = ".spec.engine.backend"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint.url"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.profile != 'Cpu' || !has(self.resources.accelerator)").message("a Cpu profile cannot request accelerators; remove resources.accelerator or use profile Gpu"))]
#[x_kube(validation = Rule::new("self.switchStrategy.type != 'Canary' || has(self.endpoint.gateway)").message("the Canary strategy needs endpoint.gateway: weighted steps are HTTPRoute weights"))]
#[serde(rename_all = "camelCase")]
pub struct InferenceRuntimeSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// The engine that serves it. Changing it starts a switch to a new revision.
    pub engine: EngineSpec,
    /// `Gpu` (default) or `Cpu`: a small-language-model profile for clusters or edge sites without
    /// accelerators (vllm backend, CPU image).
    #[serde(default)]
    pub profile: Profile,
    /// Serving topology.
    #[serde(default)]
    pub serving: ServingSpec,
    /// Compute resources of each replica.
    #[serde(default)]
    pub resources: RuntimeResources,
    /// Number of serving replicas. Writable through the scale subresource.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1024))]
    pub replicas: i32,
    /// The stable endpoint the application talks to.
    #[serde(default)]
    pub endpoint: EndpointSpec,
    /// How a change of engine or model reaches the endpoint.
    #[serde(default)]
    pub switch_strategy: SwitchStrategy,
    /// Previous revisions kept at zero replicas for an instant rollback. Defaults to 1.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 10))]
    pub revision_history_limit: i32,
    /// Where the pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

fn default_replicas() -> i32 {
    1
}
fn default_history() -> i32 {
    1
}

/// The model to serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model location: `hf://org/name` (Hugging Face), `pvc://claim/path` or a KAITO preset name
    /// (`preset://name`, kaito backend only).
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^(hf|pvc|preset)://.+$"))]
    pub uri: String,
    /// Name the model is served under (`model` in OpenAI requests). Defaults to the last path
    /// segment of `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub served_name: Option<String>,
    /// Secret key holding a Hugging Face token for gated models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

/// The inference engine and its settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    /// The backend that runs the model: `vllm`, `kaito`, `llm-d`, `dynamo` or `kserve`.
    pub backend: BackendKind,
    /// Container image override for the model server. Defaults per backend and profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Engine arguments as `--key value` pairs (keys without the leading `--`; an empty value
    /// renders a bare flag). Rendered in sorted order so equal specs render identical objects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub args: BTreeMap<String, String>,
    /// Extra environment variables for the model server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
}

/// A supported inference backend.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
pub enum BackendKind {
    /// vLLM's OpenAI server as a Deployment and Service.
    #[default]
    #[serde(rename = "vllm")]
    Vllm,
    /// A KAITO `Workspace` (or `InferenceSet` for more than one replica).
    #[serde(rename = "kaito")]
    Kaito,
    /// llm-d: model-server Deployments behind a Gateway API Inference Extension `InferencePool`.
    #[serde(rename = "llm-d")]
    LlmD,
    /// An NVIDIA Dynamo `DynamoGraphDeployment`.
    #[serde(rename = "dynamo")]
    Dynamo,
    /// A KServe `InferenceService`.
    #[serde(rename = "kserve")]
    Kserve,
}

/// Hardware profile of a runtime.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Profile {
    /// Accelerated serving.
    #[default]
    Gpu,
    /// CPU-only serving, for small language models on edge or accelerator-less clusters.
    Cpu,
}

/// Serving topology.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServingSpec {
    /// `Aggregated` (default: prefill and decode in one server) or `Disaggregated` (separate
    /// prefill and decode workers; llm-d and dynamo only).
    #[serde(default)]
    pub mode: ServingMode,
    /// Prefill workers in `Disaggregated` mode. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub prefill_replicas: Option<i32>,
}

/// Serving topology mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ServingMode {
    /// One server does prefill and decode.
    #[default]
    Aggregated,
    /// Prefill and decode run in separate workers.
    Disaggregated,
}

/// Resources of each replica.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeResources {
    /// Accelerators per replica. Not allowed with `profile: Cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,
    /// CPU request per replica, e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request per replica, e.g. `16Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Accelerators per replica.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accelerator {
    /// Extended resource name. Defaults to `nvidia.com/gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub resource: Option<String>,
    /// Accelerators per replica.
    #[schemars(range(min = 1, max = 64))]
    pub count: i32,
    /// Accelerator product (e.g. `H100`), used by backends that pick instance types (KAITO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub product: Option<String>,
    /// Node instance type for backends that provision nodes (KAITO), e.g. `Standard_NC24ads_A100_v4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub instance_type: Option<String>,
}

/// The stable endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// Port of the ClusterIP Service named after the runtime. Defaults to 8000; never changes
    /// across switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Also expose the runtime through this Gateway API Gateway with an HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayRef>,
}

/// A Gateway API parent reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    /// Name of the Gateway.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Gateway. Defaults to the runtime's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Listener name on the Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    /// Hostnames the route serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
}

/// How a new revision replaces the active one.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Canary' || (has(self.canarySteps) && size(self.canarySteps) > 0)").message("the Canary strategy needs at least one canarySteps entry"))]
#[x_kube(validation = Rule::new("!has(self.progressDeadline) || (duration(self.progressDeadline) >= duration('1s') && duration(self.progressDeadline) <= duration('168h'))").message("progressDeadline must be a duration between 1s and 168h"))]
pub struct SwitchStrategy {
    /// `BlueGreen` (default): the candidate runs next to the active revision and takes all traffic
    /// once ready. `Recreate`: the active revision is scaled down first (for clusters without spare
    /// accelerators; traffic is interrupted). `Canary`: weighted HTTPRoute steps.
    #[serde(default, rename = "type")]
    pub type_: SwitchType,
    /// Canary traffic steps, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10))]
    pub canary_steps: Option<Vec<CanaryStep>>,
    /// Smoke test the candidate must pass before it receives traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke_test: Option<SmokeTest>,
    /// How long a candidate may take to become ready before the switch fails (Go duration).
    /// Defaults to `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub progress_deadline: Option<Duration>,
    /// What happens to a failed candidate: `Delete` (default) or `Keep` for debugging.
    #[serde(default)]
    pub on_failure: CandidateFailurePolicy,
}

/// Switch strategy type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum SwitchType {
    #[default]
    BlueGreen,
    Recreate,
    Canary,
}

/// One canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.pause) >= duration('0s') && duration(self.pause) <= duration('168h')").message("pause must be a duration between 0s and 168h"))]
pub struct CanaryStep {
    /// Percentage of traffic sent to the candidate.
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long to hold this step before the next (Go duration).
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub pause: Duration,
}

/// A smoke test against the candidate's pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmokeTest {
    /// `Models` (`GET /v1/models` lists the served model) or `Completion` (a one-token completion).
    #[serde(rename = "type")]
    pub type_: SmokeTestType,
}

/// Kind of smoke test.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum SmokeTestType {
    #[default]
    Models,
    Completion,
}

/// What happens to a failed candidate revision.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum CandidateFailurePolicy {
    #[default]
    Delete,
    Keep,
}

/// Scheduling constraints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

/// Observed state of an `InferenceRuntime`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceRuntimeStatus {
    /// `Pending`, `Provisioning`, `Serving`, `Switching`, `Degraded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RuntimePhase>,
    /// Where the application reaches the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointStatus>,
    /// The revision the endpoint serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_revision: Option<RevisionRef>,
    /// The revision being switched to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_revision: Option<RevisionRef>,
    /// Every revision that still has objects, with its readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionStatus>,
    /// Replicas of the active revision (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready replicas of the active revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Label selector of the active revision's pods (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready`, `BackendAvailable`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of a runtime.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum RuntimePhase {
    Pending,
    Provisioning,
    Serving,
    Switching,
    Degraded,
    Failed,
}

/// The endpoint as served.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// Base URL of the OpenAI-compatible API, e.g. `http://name.ns.svc:8000/v1`.
    pub url: String,
    /// Name of the stable Service.
    pub service: String,
    /// Port of the stable Service.
    pub port: i32,
    /// The model name to send in requests.
    pub model_name: String,
}

/// A revision: what one set of backend objects runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// Revision name, `<runtime>-<hash>`.
    pub name: String,
    /// Backend of the revision.
    pub backend: BackendKind,
    /// Hash of what the revision runs (engine, model, serving, resources).
    pub hash: String,
}

/// Readiness of one revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// Revision name.
    pub name: String,
    /// Backend of the revision.
    pub backend: BackendKind,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Whether the backend reports the revision ready.
    pub ready: bool,
    /// The objects rendered for the revision, as `apiVersion/kind/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}
