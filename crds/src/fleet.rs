//! `fleet.overseer.dev/v1alpha1`: member clusters and staged rollouts across them.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, LabelSelector},
    util::intstr::IntOrString,
};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::NamespacedSecretKeyRef;

/// API group of this module's kinds.
pub const GROUP: &str = "fleet.overseer.dev";

// ---------------------------------------------------------------------------------------------
// FleetCluster
// ---------------------------------------------------------------------------------------------

/// `FleetCluster` registers a member cluster in the hub. The hub pushes to it with the kubeconfig
/// in the referenced Secret. Its labels (env, tier, region, ring, ...) are what rollouts select on.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "fleet.overseer.dev",
    version = "v1alpha1",
    kind = "FleetCluster",
    status = "FleetClusterStatus",
    shortname = "fc",
    category = "overseer",
    printcolumn(
        name = "Reachable",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Reachable\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.kubernetesVersion"
    ),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.heartbeatPeriod) || (duration(self.heartbeatPeriod) >= duration('5s') && duration(self.heartbeatPeriod) <= duration('1h'))").message("heartbeatPeriod must be between 5s and 1h"))]
#[serde(rename_all = "camelCase")]
pub struct FleetClusterSpec {
    /// The Secret in the hub holding a kubeconfig for this cluster (push mode).
    pub kubeconfig_secret_ref: NamespacedSecretKeyRef,
    /// `true` freezes deliveries to this cluster; rollouts wait for it (or count it against
    /// `maxUnavailable`).
    #[serde(default)]
    pub paused: bool,
    /// How often the hub checks the cluster (Go duration). Defaults to `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub heartbeat_period: Option<Duration>,
}

/// Observed state of a member cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetClusterStatus {
    /// Kubernetes version the member reports (`gitVersion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// When the hub last reached the cluster (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Reachable` (last heartbeat succeeded) and `Ready` (reachable and not paused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// FleetRollout
// ---------------------------------------------------------------------------------------------

/// `FleetRollout` carries a set of resources through ordered stages of member clusters, proving
/// each wave healthy before the next, with approval gates, overrides and automatic rollback.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "fleet.overseer.dev",
    version = "v1alpha1",
    kind = "FleetRollout",
    namespaced,
    status = "FleetRolloutStatus",
    shortname = "fro",
    category = "overseer",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.currentStage"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.targetRevision"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutSpec {
    /// What is rolled out.
    pub source: RolloutSource,
    /// Which member clusters take part.
    pub targets: RolloutTargets,
    /// Stages, run in order. Every targeted cluster belongs to the first stage whose selector
    /// matches it; clusters no stage matches are not updated (reported in status).
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub stages: Vec<Stage>,
    /// Per-cluster changes to the rendered objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub overrides: Vec<Override>,
    /// How objects are written to members.
    #[serde(default)]
    pub apply_strategy: ApplyStrategy,
    /// What happens when a stage fails: `Pause` (default), `Rollback` or `Continue`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// `Execute` (default), `Pause` (hold where it is) or `Abandon` (stop for good, leaving members
    /// as they are).
    #[serde(default)]
    pub state: RolloutState,
    /// Completed revisions kept in `status.history` (and as rollback targets). Defaults to 10.
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,
}

fn default_history() -> i32 {
    10
}

/// Where the rolled-out objects come from. Exactly one source must be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.inline), has(self.configMap), has(self.git), has(self.flux)].filter(x, x).size() == 1").message("set exactly one of source.inline, source.configMap, source.git or source.flux"))]
pub struct RolloutSource {
    /// Objects written inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    #[schemars(schema_with = "embedded_objects")]
    pub inline: Option<Vec<serde_json::Value>>,
    /// A ConfigMap in the rollout's namespace whose data values are YAML manifests (multi-document
    /// values allowed), read in key order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
    /// A Git repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
    /// A Flux `GitRepository` or `OCIRepository`, whose artifact is fetched from its status URL and
    /// checked against its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flux: Option<FluxSource>,
}

fn embedded_objects(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 500,
        "items": {
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// A ConfigMap holding manifests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A Git repository source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.url.startsWith('https://') || self.url.startsWith('http://') || self.url.startsWith('ssh://')").message("url must be an https://, http:// or ssh:// URL"))]
#[x_kube(validation = Rule::new("!self.url.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("url must not carry a user name or password: put the credentials in the Secret named by secretRef"))]
#[x_kube(validation = Rule::new("!has(self.interval) || (duration(self.interval) >= duration('10s') && duration(self.interval) <= duration('24h'))").message("interval must be a duration between 10s and 24h"))]
pub struct GitSource {
    /// Repository URL.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// What to check out.
    #[serde(default, rename = "ref")]
    pub ref_: GitRef,
    /// Directory inside the repository whose `*.yaml`/`*.yml`/`*.json` files are the manifests.
    /// Defaults to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,
    /// Secret in the rollout's namespace with credentials: `username`/`password` (HTTPS) or
    /// `identity`/`known_hosts` (SSH).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_ref: Option<String>,
    /// How often to look for a new commit (Go duration). Defaults to `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub interval: Option<Duration>,
}

/// A Git reference. At most one may be set; none means the remote's default branch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.branch), has(self.tag), has(self.commit)].filter(x, x).size() <= 1").message("set at most one of branch, tag or commit"))]
pub struct GitRef {
    /// Branch to follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub branch: Option<String>,
    /// Tag to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub tag: Option<String>,
    /// Full commit SHA to check out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 40, max = 64), regex(pattern = r"^[0-9a-f]{40,64}$"))]
    pub commit: Option<String>,
}

/// A Flux source object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluxSource {
    /// `GitRepository` or `OCIRepository` (source.toolkit.fluxcd.io).
    pub kind: FluxSourceKind,
    /// Name of the source object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the source object: the rollout's own (the default) or `flux-system`. Any
    /// other is refused (`CrossNamespaceSource`): a rollout must not deploy another team's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Directory inside the artifact holding the manifests. Defaults to the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,
}

/// Kind of a Flux source.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum FluxSourceKind {
    #[default]
    GitRepository,
    OCIRepository,
}

/// Which clusters a rollout targets: those matching the selector and those named.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clusterSelector) || (has(self.clusterNames) && size(self.clusterNames) > 0)").message("targets needs a clusterSelector or clusterNames"))]
pub struct RolloutTargets {
    /// Label selector over `FleetCluster` objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// `FleetCluster` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(min = 1, max = 253)))]
    pub cluster_names: Vec<String>,
}

/// One stage (wave) of a rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// Name of the stage, unique within the rollout.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Targeted clusters this stage takes. Omitted: all targeted clusters not taken by an earlier
    /// stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Label whose value orders clusters within the stage: values that parse as integers first
    /// (numerically), then other values (as text), then clusters without the label; ties by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub sorting_label_key: Option<String>,
    /// Clusters updated at the same time: a count or a percentage of the stage. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<IntOrString>,
    /// Clusters in the stage that may be unreachable, paused or failed while the stage still
    /// passes: a count or a percentage. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Tasks that must complete before the stage starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub before_tasks: Vec<StageTask>,
    /// Tasks that must complete after the stage's gate holds, before the next stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub after_tasks: Vec<StageTask>,
    /// When the stage counts as healthy.
    #[serde(default)]
    pub gate: StageGate,
}

/// A task before or after a stage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'TimedWait' || has(self.waitTime)").message("a TimedWait task needs waitTime"))]
#[x_kube(validation = Rule::new("!has(self.waitTime) || (duration(self.waitTime) >= duration('0s') && duration(self.waitTime) <= duration('720h'))").message("waitTime must be a duration between 0s and 720h"))]
pub struct StageTask {
    /// `Approval` (a `FleetApproval` must be approved) or `TimedWait`.
    #[serde(rename = "type")]
    pub type_: StageTaskType,
    /// How long a `TimedWait` waits (Go duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub wait_time: Option<Duration>,
}

/// Kind of stage task.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum StageTaskType {
    #[default]
    Approval,
    TimedWait,
}

/// The health gate of a stage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minBakeTime) || (duration(self.minBakeTime) >= duration('0s') && duration(self.minBakeTime) <= duration('168h'))").message("minBakeTime must be a duration between 0s and 168h"))]
#[x_kube(validation = Rule::new("!has(self.timeout) || (duration(self.timeout) >= duration('1s') && duration(self.timeout) <= duration('720h'))").message("timeout must be a duration between 1s and 720h"))]
pub struct StageGate {
    /// Require every applied object healthy by kstatus rules (Deployment, StatefulSet, DaemonSet,
    /// Job, and a `Ready` condition for other kinds, Overseer's included). Defaults to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_healthy: Option<bool>,
    /// Extra CEL health expressions over applied objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub health_expressions: Vec<HealthExpression>,
    /// How long the gate must hold without interruption before the stage passes (Go duration). A
    /// flap restarts the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub min_bake_time: Option<Duration>,
    /// How long the stage may take to pass its gate before it fails (Go duration). Defaults to
    /// `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub timeout: Option<Duration>,
}

/// A CEL health expression over applied objects of one kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthExpression {
    /// `apiVersion` of the objects.
    #[schemars(length(min = 1, max = 253))]
    pub api_version: String,
    /// `kind` of the objects.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Only the object of this name; omitted: every applied object of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// CEL over `self` (the live object) that is true when the object is healthy.
    #[schemars(length(min = 1, max = 1024))]
    pub healthy: String,
    /// CEL that is true when the object has failed for good (fails the stage at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub failed: Option<String>,
}

/// A per-cluster change to rendered objects.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// Name of the override, unique within the rollout.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Clusters the override applies to (by their `FleetCluster` labels).
    pub cluster_selector: LabelSelector,
    /// Objects the patch applies to.
    pub target: OverrideTarget,
    /// RFC 6902 JSON patch operations. String values may use `${CLUSTER_NAME}` and
    /// `${CLUSTER_LABEL[key]}`, replaced per cluster.
    #[schemars(length(min = 1, max = 64))]
    pub json_patch: Vec<JsonPatchOp>,
}

/// Which rendered objects an override patches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverrideTarget {
    /// API group (`""` for core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    /// Kind.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,
    /// Name; omitted: every object of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// Namespace; omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// One RFC 6902 operation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(self.op in ['add', 'replace', 'test']) || has(self.value)").message("add, replace and test operations need a value"))]
#[x_kube(validation = Rule::new("!(self.op in ['move', 'copy']) || has(self.from)").message("move and copy operations need from"))]
pub struct JsonPatchOp {
    /// `add`, `remove`, `replace`, `move`, `copy` or `test`.
    pub op: JsonPatchOpKind,
    /// JSON pointer to the target location.
    #[schemars(length(max = 1024))]
    pub path: String,
    /// JSON pointer to the source location (`move`, `copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub from: Option<String>,
    /// The value (`add`, `replace`, `test`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub value: Option<serde_json::Value>,
}

fn any_value(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// RFC 6902 operation kind.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum JsonPatchOpKind {
    #[default]
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

/// How objects are written to member clusters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.driftCheckInterval) || (duration(self.driftCheckInterval) >= duration('10s') && duration(self.driftCheckInterval) <= duration('24h'))").message("driftCheckInterval must be a duration between 10s and 24h"))]
pub struct ApplyStrategy {
    /// Delete objects that left the source (only objects Overseer applied). Defaults to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// `Correct` (default: re-apply drifted objects) or `Report` (list them in status only).
    #[serde(default)]
    pub when_drifted: DriftAction,
    /// How often members are checked for drift once a rollout has finished (Go duration). Defaults
    /// to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub drift_check_interval: Option<Duration>,
}

/// Drift handling.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum DriftAction {
    #[default]
    Correct,
    Report,
}

/// What happens when a stage fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum FailurePolicy {
    /// Stop where it is.
    #[default]
    Pause,
    /// Re-apply the last successful revision to every updated cluster, in reverse stage order.
    Rollback,
    /// Record the failure and go on with the next stage.
    Continue,
}

/// Desired execution state of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum RolloutState {
    #[default]
    Execute,
    Pause,
    Abandon,
}

/// Observed state of a rollout. All progress lives here, so a restarted operator resumes exactly
/// where it was.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetRolloutStatus {
    /// Overall phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Digest of the rendered source being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// The last revision that completed every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_succeeded_revision: Option<String>,
    /// The stage in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_stage: Option<String>,
    /// Clusters updated and healthy out of clusters targeted, e.g. `12/40`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// Per-stage progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// Counts over all targeted clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<RolloutSummary>,
    /// Objects found changed on members since they were applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<DriftedObject>,
    /// Completed revisions, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionHistory>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready` (kstatus: the target revision is fully rolled out), `Progressing`,
    /// `Stalled`, `DriftDetected`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Phase of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum RolloutPhase {
    Pending,
    Progressing,
    WaitingForApproval,
    Paused,
    Succeeded,
    Failed,
    RollingBack,
    RolledBack,
    Abandoned,
}

/// Progress of one stage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// `Pending`, `WaitingForApproval`, `Progressing`, `Baking`, `Succeeded`, `Failed`,
    /// `RolledBack`.
    pub phase: String,
    /// When the stage started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// Since when the gate has held without interruption (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_satisfied_since: Option<String>,
    /// When the stage finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Tasks before and after the stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
    /// Per-cluster progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterRolloutStatus>,
}

/// Progress of a stage task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// `Before` or `After`.
    pub when: String,
    /// Task type.
    #[serde(rename = "type")]
    pub type_: StageTaskType,
    /// `Pending`, `Waiting`, `Completed` or `Rejected`.
    pub phase: String,
    /// The `FleetApproval` for an `Approval` task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_name: Option<String>,
    /// Who approved (from the `FleetApproval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When a `TimedWait` started or the task completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Progress on one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRolloutStatus {
    /// `FleetCluster` name.
    pub name: String,
    /// `Pending`, `Applying`, `Applied`, `Healthy`, `Failed`, `Unreachable`, `Paused`,
    /// `RolledBack`.
    pub phase: String,
    /// The revision last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// `Healthy`, `Progressing`, `Unhealthy` or `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// What went wrong, or what is awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Counts over targeted clusters.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    /// Targeted clusters.
    pub total: i32,
    /// Clusters running the target revision.
    pub updated: i32,
    /// Updated clusters whose gate holds.
    pub healthy: i32,
    /// Clusters that failed.
    pub failed: i32,
    /// Clusters that could not be reached.
    pub unreachable: i32,
}

/// An object found drifted on a member.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftedObject {
    /// Cluster name.
    pub cluster: String,
    /// `apiVersion/kind/namespace/name` of the object.
    pub object: String,
    /// Whether it was corrected.
    pub corrected: bool,
}

/// A completed revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionHistory {
    /// Source digest.
    pub revision: String,
    /// `Succeeded`, `Failed`, `RolledBack`, `Superseded` or `Abandoned`.
    pub result: String,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// FleetApproval
// ---------------------------------------------------------------------------------------------

/// `FleetApproval` gates a rollout stage. The controller creates it when a stage's `Approval` task
/// is reached; a human approves with `kubectl` (or commits the approved object to Git).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "fleet.overseer.dev",
    version = "v1alpha1",
    kind = "FleetApproval",
    namespaced,
    status = "FleetApprovalStatus",
    shortname = "fap",
    category = "overseer",
    printcolumn(name = "Rollout", type_ = "string", json_path = ".spec.rollout"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".spec.stage"),
    printcolumn(name = "When", type_ = "string", json_path = ".spec.when"),
    printcolumn(
        name = "Decision",
        type_ = "string",
        json_path = ".spec.review.decision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.rollout == oldSelf.rollout && self.stage == oldSelf.stage && self.when == oldSelf.when && self.revision == oldSelf.revision").message("only spec.review may change"))]
#[x_kube(validation = Rule::new("!has(oldSelf.review) || (has(self.review) && self.review == oldSelf.review)").message("a review is final and cannot be changed"))]
#[serde(rename_all = "camelCase")]
pub struct FleetApprovalSpec {
    /// The `FleetRollout` in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub rollout: String,
    /// The stage.
    #[schemars(length(min = 1, max = 63))]
    pub stage: String,
    /// `Before` or `After` the stage.
    pub when: TaskWhen,
    /// The source revision the approval is for; an approval never carries over to another one.
    #[schemars(length(min = 1, max = 128))]
    pub revision: String,
    /// The decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<FleetReview>,
}

/// Before or after a stage.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum TaskWhen {
    #[default]
    Before,
    After,
}

/// A decision on a fleet approval.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetReview {
    /// `Approved` or `Rejected`.
    pub decision: FleetDecision,
    /// Who decided.
    #[schemars(length(min = 1, max = 512))]
    pub reviewer: String,
    /// Free-form comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// Decision on a fleet approval.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum FleetDecision {
    Approved,
    #[default]
    Rejected,
}

/// Observed state of a `FleetApproval`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetApprovalStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Approved`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
