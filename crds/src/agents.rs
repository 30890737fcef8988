//! `agents.overseer.dev/v1alpha1`: runtime authorization of AI agents' tool calls and the
//! ephemeral identities they act with.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema, core::Duration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of this module's kinds.
pub const GROUP: &str = "agents.overseer.dev";

// ---------------------------------------------------------------------------------------------
// AgentPolicy / ClusterAgentPolicy
// ---------------------------------------------------------------------------------------------

/// `AgentPolicy` decides, at the moment an agent acts, whether a tool call in this namespace is
/// allowed, denied or needs a human's approval. Rules compile into a Cedar policy set; rate
/// limits, budgets and approvals are enforced by the decision service. Default deny: a call no
/// rule allows is denied; deny overrides require-approval, which overrides allow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "AgentPolicy",
    plural = "agentpolicies",
    namespaced,
    status = "AgentPolicyStatus",
    shortname = "apol",
    category = "overseer",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Rules", type_ = "integer", json_path = ".status.ruleCount"),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.policyRevision"
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
pub struct AgentPolicySpec {
    /// The rules of this policy.
    #[serde(flatten)]
    pub policy: PolicyRules,
}

/// `ClusterAgentPolicy` holds cluster-wide defaults and guard rails: it applies to agents in every
/// namespace selected by `namespaceSelector` (all namespaces when omitted), evaluated together with
/// the namespaced `AgentPolicy` objects. A cluster-wide deny can never be overridden by a
/// namespaced allow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "ClusterAgentPolicy",
    plural = "clusteragentpolicies",
    status = "AgentPolicyStatus",
    shortname = "capol",
    category = "overseer",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Rules", type_ = "integer", json_path = ".status.ruleCount"),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.policyRevision"
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
pub struct ClusterAgentPolicySpec {
    /// Namespaces whose agents this policy governs. Omitted: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The rules of this policy.
    #[serde(flatten)]
    pub policy: PolicyRules,
}

/// The rule body shared by `AgentPolicy` and `ClusterAgentPolicy`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    /// `Enforce` (default) answers with the policy's decision. `Audit` records what would have been
    /// denied or sent for approval, and allows the call.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Which agents this policy governs. Omitted: every agent in the policy's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subjects: Option<AgentSubjects>,
    /// Tool rules. A call is allowed only when at least one `Allow` rule matches and no `Deny` or
    /// `RequireApproval` rule does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub tools: Vec<ToolRule>,
    /// Rate limits, charged only for allowed calls. Each key (agent, agent+tool, user, tenant) has
    /// its own counter, so one tenant can never exhaust another's limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rate_limits: Vec<RateLimit>,
    /// Budgets over tokens, cost (integer micro-USD) or tool calls, per window or per session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub budgets: Vec<Budget>,
    /// Time windows in which the governed tools may be called. When any window is listed, a call
    /// to a tool it covers outside every window that covers it is denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub time_windows: Vec<TimeWindow>,
    /// Who may approve calls this policy sends for approval, and how long an approval may wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSettings>,
    /// Raw Cedar policies, evaluated together with the compiled rules. They are validated against
    /// the schema Overseer gives Cedar (see the documentation); `@id("...")` names each policy in
    /// reasons, `@reason("...")` gives its message and `@effect("require_approval")` on a `forbid`
    /// turns a deny into an approval requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub cedar: Option<String>,
}

/// Whether a policy's decisions are enforced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum PolicyMode {
    /// Deny and approval decisions are returned to the caller.
    #[default]
    Enforce,
    /// Decisions are recorded in the audit trail but the call is allowed.
    Audit,
}

/// The agents a policy governs. An agent matches when it matches any listed entry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.serviceAccounts) || has(self.ephemeralIdentities) || has(self.spiffeIds) || has(self.agentIds) || has(self.agentSelector)").message("subjects must list at least one of serviceAccounts, ephemeralIdentities, spiffeIds, agentIds or agentSelector; omit subjects to govern every agent"))]
pub struct AgentSubjects {
    /// Kubernetes ServiceAccounts, by name (and namespace for cluster-wide policies; a namespaced
    /// policy only ever matches ServiceAccounts of its own namespace).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub service_accounts: Vec<ServiceAccountSubject>,
    /// Names of `EphemeralIdentity` objects in the policy's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub ephemeral_identities: Vec<String>,
    /// SPIFFE IDs (`spiffe://trust-domain/path`); `*` matches any run of characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 2048)))]
    #[x_kube(validation = Rule::new("self.all(s, s.startsWith('spiffe://'))").message("every SPIFFE ID must start with spiffe://"))]
    pub spiffe_ids: Vec<String>,
    /// Agent IDs as asserted by an authenticated caller such as the MCP gateway; `*` matches any
    /// run of characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub agent_ids: Vec<String>,
    /// Matches the agent's labels (the labels of its `EphemeralIdentity`, or those asserted by an
    /// authenticated gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_selector: Option<LabelSelector>,
}

/// A ServiceAccount an agent runs as.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSubject {
    /// Name of the ServiceAccount; `*` matches every ServiceAccount of the namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the ServiceAccount. Only meaningful in a `ClusterAgentPolicy`; defaults to the
    /// policy's own namespace in an `AgentPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// One tool rule: which tools it covers and the effect when it matches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ToolRule {
    /// Name of the rule, unique within the policy. Decisions name it in their reasons.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Tool name globs (`*` any run of characters, `?` one character), e.g. `kubectl_*`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 256)))]
    pub tools: Vec<String>,
    /// MCP server name glob; omitted: tools of any server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server: Option<String>,
    /// What happens when the rule matches.
    pub effect: RuleEffect,
    /// Optional Cedar condition over the request (the body of a `when { ... }` clause), e.g.
    /// `context.arguments.amount_micro_usd > 1000000 || (context has target && context.target like "prod-*")`. The rule
    /// only matches when it holds. See the documentation for the attributes of `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
    /// Human-readable reason returned with decisions this rule determines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// The effect of a matching tool rule.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RuleEffect {
    /// Allow the call (subject to rate limits, budgets and time windows).
    Allow,
    /// Deny the call. Overrides every other effect.
    #[default]
    Deny,
    /// Hold the call until a human approves this exact request.
    RequireApproval,
}

/// A rate limit: at most `limit` allowed calls per `window` for each value of `key`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.window) >= duration('1s') && duration(self.window) <= duration('744h')").message("window must be between 1s and 744h"))]
pub struct RateLimit {
    /// Name of the limit, unique within the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What each counter is kept for.
    pub key: RateLimitKey,
    /// Tool name globs the limit counts; omitted: every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub tools: Vec<String>,
    /// Allowed calls per window.
    #[schemars(range(min = 1))]
    pub limit: i32,
    /// Length of the window (Go duration, e.g. `1m`). A fixed window opens at the first counted
    /// call of a key; once `limit` calls were allowed in it, later calls are denied until it ends.
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub window: Duration,
}

/// The key a rate limit or budget counter is kept for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RateLimitKey {
    /// One counter per agent.
    #[default]
    Agent,
    /// One counter per agent and tool.
    AgentTool,
    /// One counter per end user on whose behalf the agent acts (`user` in the request).
    User,
    /// One counter per tenant (`tenant` in the request).
    Tenant,
    /// One counter per agent session (`sessionId` in the request).
    Session,
}

/// A budget over consumed resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.window) || (duration(self.window) >= duration('1m') && duration(self.window) <= duration('8784h'))").message("window must be between 1m and 8784h"))]
pub struct Budget {
    /// Name of the budget, unique within the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// What is counted.
    pub metric: BudgetMetric,
    /// Whose consumption one counter holds. `Session` makes a per-session budget.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Tool name globs the budget counts; omitted: every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub tools: Vec<String>,
    /// The limit, in the metric's unit (tokens, micro-USD, calls).
    #[schemars(range(min = 1))]
    pub limit: i64,
    /// Fixed window after which the counter resets (Go duration, e.g. `24h`). Omitted: the budget
    /// never resets (for `key: Session`, it lasts as long as the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub window: Option<Duration>,
    /// What happens to a call that would exceed the budget.
    #[serde(default)]
    pub on_exceed: ExceedAction,
}

/// What is counted by a budget.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum BudgetMetric {
    /// LLM tokens, as estimated in the decision request and committed through `/v1/usage`.
    Tokens,
    /// Cost in integer micro-USD (1 USD = 1,000,000).
    CostMicroUsd,
    /// Allowed tool calls.
    #[default]
    ToolCalls,
}

/// What happens to a call that would exceed a budget.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ExceedAction {
    /// Deny the call.
    #[default]
    Deny,
    /// Send the call for a human's approval.
    RequireApproval,
}

/// A recurring window of time.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("start and end must differ; a window that ends before it starts wraps past midnight"))]
pub struct TimeWindow {
    /// Name of the window, unique within the policy.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Days of the week the window is open; omitted: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` (24-hour clock), inclusive.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), length(max = 5))]
    pub start: String,
    /// Closing time, `HH:MM`, exclusive. An `end` before `start` wraps past midnight.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), length(max = 5))]
    pub end: String,
    /// IANA time zone, e.g. `Europe/Berlin`. Defaults to `UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Tool name globs the window governs; omitted: every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub tools: Vec<String>,
}

/// A day of the week.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[allow(missing_docs)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Approval settings for calls sent for approval.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.timeout) || (duration(self.timeout) >= duration('10s') && duration(self.timeout) <= duration('168h'))").message("timeout must be between 10s and 168h"))]
pub struct ApprovalSettings {
    /// Kubernetes users allowed to approve (as the API server authenticates them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub users: Vec<String>,
    /// Kubernetes groups whose members may approve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,
    /// How long an approval request waits for a decision (Go duration). Defaults to `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub timeout: Option<Duration>,
    /// What a request that timed out becomes. Only `Deny` is offered: an unanswered request is
    /// never allowed.
    #[serde(default)]
    pub on_timeout: TimeoutAction,
}

/// The outcome of an approval request nobody answered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum TimeoutAction {
    /// The call is denied.
    #[default]
    Deny,
}

/// Observed state of an `AgentPolicy` or `ClusterAgentPolicy`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Content hash of the compiled policy (first 12 hex digits of its SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_revision: Option<String>,
    /// Number of compiled rules (tool rules plus raw Cedar policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_count: Option<i32>,
    /// `Ready` (compiled and serving), with the compiler's message and location when not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// AgentApproval
// ---------------------------------------------------------------------------------------------

/// `AgentApproval` is a pending human approval for one exact tool call, created by the decision
/// service when a policy answers `require_approval`. A human approves or denies it by setting
/// `spec.review` (`overseer approvals approve NAME` does this); the shipped
/// ValidatingAdmissionPolicy verifies that `review.reviewer` is the authenticated user and not the
/// agent itself. An approval is single-use, bound to the SHA-256 digest of the request, and
/// expires at `spec.expiresAt`, after which the call is denied.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "AgentApproval",
    namespaced,
    status = "AgentApprovalStatus",
    shortname = "aappr",
    category = "overseer",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.principal.id"),
    printcolumn(name = "Tool", type_ = "string", json_path = ".spec.tool"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Reviewer",
        type_ = "string",
        json_path = ".spec.review.reviewer"
    ),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.requestDigest == oldSelf.requestDigest && self.principal == oldSelf.principal && self.tool == oldSelf.tool && self.expiresAt == oldSelf.expiresAt").message("only spec.review may change after an approval is created"))]
#[x_kube(validation = Rule::new("!has(oldSelf.review) || (has(self.review) && self.review == oldSelf.review)").message("a review is final and cannot be changed"))]
#[serde(rename_all = "camelCase")]
pub struct AgentApprovalSpec {
    /// Decision id of the `require_approval` answer that created this request.
    #[schemars(length(min = 1, max = 64))]
    pub decision_id: String,
    /// Lower-case hex SHA-256 of the canonical request (principal, tool, server, target,
    /// arguments). Only a request with exactly this digest can use the approval.
    #[schemars(length(min = 64, max = 64), regex(pattern = r"^[0-9a-f]{64}$"))]
    pub request_digest: String,
    /// The agent that asked.
    pub principal: ApprovalPrincipal,
    /// The tool it wants to call.
    #[schemars(length(min = 1, max = 256))]
    pub tool: String,
    /// The MCP server of the tool, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub server: Option<String>,
    /// The target the call acts on, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub target: Option<String>,
    /// A bounded, redacted preview of the arguments for the reviewer (values of keys that look
    /// like secrets are replaced by `<redacted>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub arguments_preview: Option<String>,
    /// Why approval is required, as the deciding rules say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 1024)))]
    pub reasons: Vec<String>,
    /// Users allowed to review, copied from the deciding policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub approver_users: Vec<String>,
    /// Groups whose members may review, copied from the deciding policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub approver_groups: Vec<String>,
    /// When the request times out (RFC 3339); afterwards the call is denied.
    #[schemars(length(max = 64))]
    pub expires_at: String,
    /// The human decision. Set once; cannot be changed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ApprovalReview>,
}

/// The agent an approval was requested for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPrincipal {
    /// Agent identifier as the decision service knows it.
    #[schemars(length(min = 1, max = 512))]
    pub id: String,
    /// The Kubernetes username the agent authenticated as, when it used a token; used to stop an
    /// agent from approving its own request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub username: Option<String>,
    /// End user on whose behalf the agent acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub user: Option<String>,
    /// Tenant of the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub tenant: Option<String>,
}

/// A human's decision on an approval request.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalReview {
    /// `Approved` or `Denied`.
    pub decision: ReviewDecision,
    /// The reviewer's Kubernetes username. Admission verifies it is the user making the change.
    #[schemars(length(min = 1, max = 512))]
    pub reviewer: String,
    /// Free-form comment recorded in the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub comment: Option<String>,
}

/// A reviewer's verdict.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReviewDecision {
    /// The exact request may proceed, once.
    Approved,
    /// The request is denied.
    #[default]
    Denied,
}

/// Observed state of an `AgentApproval`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentApprovalStatus {
    /// `Pending`, `Approved`, `Denied`, `Expired` or `Consumed` (approved and used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ApprovalPhase>,
    /// The verified reviewer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_by: Option<String>,
    /// When the review was recorded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed_at: Option<String>,
    /// When the approved call was made (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumed_at: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, `Ready` among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of an approval request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum ApprovalPhase {
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
}

// ---------------------------------------------------------------------------------------------
// EphemeralIdentityClass / EphemeralIdentity
// ---------------------------------------------------------------------------------------------

/// `EphemeralIdentityClass` is the ceiling a platform admin sets for ephemeral identities: how
/// long they may live, which namespaces may use the class, which roles and rules may be granted
/// and to which audiences tokens may be issued.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "EphemeralIdentityClass",
    plural = "ephemeralidentityclasses",
    status = "EphemeralIdentityClassStatus",
    shortname = "eic",
    category = "overseer",
    printcolumn(name = "Max-TTL", type_ = "string", json_path = ".spec.maxTtl"),
    printcolumn(
        name = "Approval",
        type_ = "boolean",
        json_path = ".spec.requireApproval"
    ),
    printcolumn(
        name = "Active",
        type_ = "integer",
        json_path = ".status.activeIdentities"
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
#[x_kube(validation = Rule::new("duration(self.maxTtl) >= duration('1s') && duration(self.maxTtl) <= duration('168h')").message("maxTtl must be between 1s and 168h"))]
#[x_kube(validation = Rule::new("!has(self.defaultTtl) || (duration(self.defaultTtl) >= duration('1s') && duration(self.defaultTtl) <= duration(self.maxTtl))").message("defaultTtl must be at least 1s and must not exceed maxTtl"))]
#[x_kube(validation = Rule::new("size(self.allowedRoles) > 0 || size(self.allowedRules) > 0").message("a class must allow at least one role or rule"))]
#[x_kube(validation = Rule::new("!self.requireApproval || (has(self.approval) && ((has(self.approval.users) && size(self.approval.users) > 0) || (has(self.approval.groups) && size(self.approval.groups) > 0)))").message("requireApproval needs approval.users or approval.groups: someone must be able to approve"))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.recordRetention) || (duration(self.recordRetention) >= duration('0s') && duration(self.recordRetention) <= duration('8784h'))").message("recordRetention must be a duration between 0s and 8784h"))]
pub struct EphemeralIdentityClassSpec {
    /// The longest TTL an identity of this class may have (Go duration, at most `168h`).
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub max_ttl: Duration,
    /// TTL for identities that do not ask for one. Defaults to `maxTtl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub default_ttl: Option<Duration>,
    /// Namespaces whose identities may use this class, by label. Omitted together with
    /// `namespaces`: no namespace may (deny by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Namespaces, by name, whose identities may use this class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,
    /// Roles an identity may be bound to: ClusterRoles (bound in the identity's namespace with a
    /// RoleBinding) or Roles in the identity's namespace. The operator's `bind` permission must
    /// list each of them by name (see config/rbac).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub allowed_roles: Vec<RoleRef>,
    /// Explicit rules an identity may ask for; each requested rule must be covered by one of
    /// these. They are written into a Role owned by the identity.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub allowed_rules: Vec<GrantRule>,
    /// Audiences tokens may be issued for. Omitted: only the API server's default audience.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub allowed_audiences: Vec<String>,
    /// Whether each identity needs an approved `AgentApproval` before it is issued. The operator
    /// creates the request in the identity's namespace; `approval` names who may review it.
    #[serde(default)]
    pub require_approval: bool,
    /// Who may approve issuing identities of this class, and how long a request waits. Required
    /// when `requireApproval` is true; an unanswered request denies the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSettings>,
    /// How long a finished (expired, revoked or denied) identity stays as a record before it is
    /// deleted (Go duration). Defaults to `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub record_retention: Option<Duration>,
}

/// A reference to a vetted role.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// `ClusterRole` or `Role`.
    pub kind: RoleKind,
    /// Name of the role.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The kind of a referenced role.
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
pub enum RoleKind {
    /// A ClusterRole, bound in the identity's namespace only.
    #[default]
    ClusterRole,
    /// A Role in the identity's namespace.
    Role,
}

/// An RBAC rule (namespaced resources only: it is written into a Role).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantRule {
    /// API groups (`""` for the core group). `*` is allowed only in a class.
    #[schemars(length(min = 1, max = 32), inner(length(max = 253)))]
    pub api_groups: Vec<String>,
    /// Resources, e.g. `pods` or `pods/log`.
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    pub resources: Vec<String>,
    /// Verbs, e.g. `get`, `list`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 32)))]
    pub verbs: Vec<String>,
    /// Resource names the rule is limited to; omitted: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub resource_names: Vec<String>,
}

/// Observed state of an `EphemeralIdentityClass`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralIdentityClassStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Identities of this class that are currently active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_identities: Option<i32>,
    /// Conditions, `Ready` among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// `EphemeralIdentity` gives one agent, for one task, a time-boxed ServiceAccount token with just
/// the permissions the task needs, within the ceiling of its `EphemeralIdentityClass`. The token is
/// written to a Secret it is bound to; deleting that Secret (at expiry, on `revoked: true` or on
/// delete) invalidates it at the API server.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "EphemeralIdentity",
    plural = "ephemeralidentities",
    namespaced,
    status = "EphemeralIdentityStatus",
    shortname = "eid",
    category = "overseer",
    printcolumn(name = "Agent", type_ = "string", json_path = ".spec.agent"),
    printcolumn(name = "Class", type_ = "string", json_path = ".spec.className"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt"),
    printcolumn(
        name = "Secret",
        type_ = "string",
        json_path = ".status.secretName",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.className == oldSelf.className && self.agent == oldSelf.agent && self.grants == oldSelf.grants && (has(self.ttl) == has(oldSelf.ttl) && (!has(self.ttl) || self.ttl == oldSelf.ttl)) && (has(self.audiences) == has(oldSelf.audiences) && (!has(self.audiences) || self.audiences == oldSelf.audiences))").message("an identity is immutable once created, except for revoked and task"))]
#[x_kube(validation = Rule::new("!oldSelf.revoked || self.revoked").message("a revoked identity cannot be un-revoked; create a new one"))]
#[x_kube(validation = Rule::new("!has(self.ttl) || duration(self.ttl) >= duration('1s')").message("ttl must be at least 1s"))]
#[serde(rename_all = "camelCase")]
pub struct EphemeralIdentitySpec {
    /// Name of the `EphemeralIdentityClass` that caps this identity.
    #[schemars(length(min = 1, max = 253))]
    pub class_name: String,
    /// The agent the identity is for (its agent ID; used by the kill switch and in decisions).
    #[schemars(length(min = 1, max = 253))]
    pub agent: String,
    /// How long the identity lives (Go duration). Defaults to the class's `defaultTtl`; may not
    /// exceed its `maxTtl`. TTLs under the API server's 10-minute token minimum still end on time:
    /// the bound Secret is deleted at the TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        regex(pattern = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|μs|ms|s|m|h))+)$")
    )]
    pub ttl: Option<Duration>,
    /// Audiences of the token; each must be allowed by the class. Omitted: the API server's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub audiences: Option<Vec<String>>,
    /// The permissions asked for: a subset of the class's.
    pub grants: Grants,
    /// What the identity is for, recorded in Events and the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// Set to `true` to end the identity now (for example when the task is done). Cannot be undone.
    #[serde(default)]
    pub revoked: bool,
}

/// Permissions an identity asks for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.roles) + size(self.rules) > 0").message("grants must ask for at least one role or rule"))]
pub struct Grants {
    /// Roles (from the class's `allowedRoles`) to bind the identity's ServiceAccount to.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub roles: Vec<RoleRef>,
    /// Rules (each covered by the class's `allowedRules`) for a Role owned by the identity.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub rules: Vec<GrantRule>,
}

/// A task description.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskInfo {
    /// An identifier from the agent's orchestrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub id: Option<String>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,
}

/// Observed state of an `EphemeralIdentity`. The token itself never appears here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralIdentityStatus {
    /// `Pending`, `Active`, `Expired`, `Revoked` or `Denied`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<IdentityPhase>,
    /// When the token was issued (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// When the identity ends (RFC 3339): the earlier of the TTL and the token's real expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When the identity was revoked or expired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// Name of the generated ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Name of the Secret holding the token (key `token`) the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready` (the token is issued and valid), `Issued`, `Revoked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Lifecycle of an ephemeral identity.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[allow(missing_docs)]
pub enum IdentityPhase {
    Pending,
    Active,
    Expired,
    Revoked,
    Denied,
}

// ---------------------------------------------------------------------------------------------
// MCPServer
// ---------------------------------------------------------------------------------------------

/// `MCPServer` is an upstream MCP server (Streamable HTTP) that `overseer gateway` serves to
/// agents at `/mcp/{metadata.name}`: where it is, how long to wait for it, which agents may reach
/// it at all, and the credential the gateway injects into every request (agents never hold it).
/// The object's name is also the `server` that `AgentPolicy` tool rules match
/// (`tools[].server`), which decide every individual call. A gateway started with
/// `--mcp-servers-namespace` serves the `MCPServer` objects of that namespace and applies changes
/// without a restart.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agents.overseer.dev",
    version = "v1alpha1",
    kind = "MCPServer",
    plural = "mcpservers",
    namespaced,
    status = "MCPServerStatus",
    shortname = "mcps",
    category = "overseer",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tls) || self.url.startsWith('https://')").message("tls applies to https:// urls only; drop spec.tls or use an https:// url"))]
pub struct MCPServerSpec {
    /// The server's Streamable HTTP endpoint, an absolute `http://` or `https://` URL, e.g.
    /// `http://github-mcp.mcp-servers.svc:8080/mcp`. No user information (`user:password@`):
    /// put credentials in `credential`, which is kept in a Secret. `https://` servers are
    /// verified against the gateway's system roots, or against `tls.caSecretRef` only.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must be an absolute http:// or https:// URL"))]
    #[x_kube(validation = Rule::new("!self.matches('^https?://[^/?#]*@')").message("url must not carry user information; put the credential in credential.secretRef"))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#@]+')").message("url must name a host"))]
    pub url: String,
    /// Globs (`*` any run of characters, `?` one character) of the principal ids that may reach
    /// this server at all: an API-key agent's id (e.g. `support-bot-*`), a ServiceAccount's
    /// username (e.g. `system:serviceaccount:support:*`). Omitted or empty: every authenticated
    /// agent. Whatever this admits, `AgentPolicy` rules still decide every tool call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub agents: Vec<String>,
    /// Seconds to wait for the server's response headers before answering the agent with a
    /// timeout (1 to 3600). Defaults to 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// The credential the gateway injects into every request to the server. Omitted: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<MCPServerCredential>,
    /// How the gateway verifies an `https://` server. Omitted: against the gateway's system
    /// root certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MCPServerTLS>,
}

/// How the gateway verifies an `https://` MCP server, and the client certificate it presents.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.caSecretRef) || has(self.clientCertificateSecretName)").message("tls needs caSecretRef and/or clientCertificateSecretName"))]
pub struct MCPServerTLS {
    /// The Secret (in this object's namespace) and the key of its `data` holding the PEM CA
    /// certificate(s) the server's certificate must chain to — a private or cluster CA, e.g.
    /// the `ca.crt` key of the Secret cert-manager writes. Only these are trusted for this
    /// server (the system roots are not). Omitted: the gateway's system roots. Read like the
    /// credential Secret, and again within the gateway's refresh period after a change (CA
    /// rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<crate::common::SecretKeyRef>,
    /// For a server that requires mutual TLS: a `kubernetes.io/tls` Secret in this object's
    /// namespace whose `tls.crt` (the certificate chain, PEM) and `tls.key` (its private key,
    /// PEM) the gateway presents — e.g. the Secret of a cert-manager `Certificate`. Renewals are
    /// picked up within the gateway's refresh period. Agents never hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub client_certificate_secret_name: Option<String>,
}

/// A credential read from a Secret in the `MCPServer`'s namespace and sent as one header.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerCredential {
    /// The Secret (in this object's namespace) and the key of its `data` holding the credential.
    /// Trailing whitespace of the value is ignored. A change of the Secret reaches the gateway
    /// within its refresh period (`--mcp-servers-refresh-seconds`).
    pub secret_ref: crate::common::SecretKeyRef,
    /// The header to set. Defaults to `Authorization`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: Option<String>,
    /// Text put before the Secret's value, e.g. `"Bearer "`. Defaults to none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub prefix: Option<String>,
}

/// Observed state of an `MCPServer`. The credential itself never appears here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions: `Ready` is `True` (reason `Accepted`) when a gateway can serve the server,
    /// `False` with a reason (`CredentialMissing`, `CredentialInvalid`, `InvalidSpec`) and a
    /// message saying what to fix otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
