//! The decision request and response: what a caller (an agent, or the gateway in front of its
//! tools) sends to the decision service, and what it gets back.
//!
//! Requests are deserialized with `deny_unknown_fields` so that a misspelt field is rejected (a
//! 4xx at the HTTP edge) instead of silently ignored, and [`DecisionRequest::validate`] bounds
//! every string and the serialized size of the arguments before anything is evaluated.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Largest serialized size, in bytes, of a request's `arguments` object (64 KiB).
pub const MAX_ARGUMENTS_BYTES: usize = 64 * 1024;
/// Deepest nesting of objects and arrays allowed inside `arguments`.
pub const MAX_ARGUMENTS_DEPTH: usize = 32;
/// Longest principal id.
pub const MAX_PRINCIPAL_ID_LEN: usize = 512;
/// Longest tool name.
pub const MAX_TOOL_LEN: usize = 256;
/// Longest MCP server name.
pub const MAX_SERVER_LEN: usize = 253;
/// Longest target.
pub const MAX_TARGET_LEN: usize = 1024;
/// Longest user, tenant, session id, trace id, namespace and other short identifiers.
pub const MAX_NAME_LEN: usize = 256;
/// Longest SPIFFE ID.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Most labels on a principal.
pub const MAX_LABELS: usize = 64;
/// Longest label key (a DNS-subdomain prefix, `/`, and a 63-character name).
pub const MAX_LABEL_KEY_LEN: usize = 317;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

/// A request for a decision: may this principal call this tool, on this target, with these
/// arguments, now?
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionRequest {
    /// The agent that wants to act, as authenticated by the caller.
    pub principal: Principal,
    /// The tool it wants to call.
    pub tool: String,
    /// The MCP server that hosts the tool, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// What the call acts on (a resource name, URL, database...), when the caller knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The tool call's arguments (a JSON object). Omitted: no arguments.
    #[serde(default)]
    pub arguments: Map<String, Value>,
    /// End user on whose behalf the agent acts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Tenant of the request; counters are kept per tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The agent's session, for per-session rate limits and budgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Expected consumption of the call, reserved against budgets when it is allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_estimate: Option<Usage>,
    /// Trace id of the caller, copied into the audit trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// The agent a request is made for.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Principal {
    /// Agent identifier (an agent ID, a SPIFFE ID, a ServiceAccount username...).
    pub id: String,
    /// How the principal was identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<PrincipalKind>,
    /// Kubernetes namespace of the agent. Namespaced `AgentPolicy` objects only govern principals
    /// of their own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the ServiceAccount the agent runs as (in `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Name of the `EphemeralIdentity` the agent acts with (in `namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_identity: Option<String>,
    /// SPIFFE ID of the agent's workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Labels of the agent, matched by `agentSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// How a principal was identified.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
pub enum PrincipalKind {
    /// A Kubernetes ServiceAccount token.
    ServiceAccount,
    /// A token of an Overseer `EphemeralIdentity`.
    EphemeralIdentity,
    /// A SPIFFE SVID.
    Spiffe,
    /// An agent ID asserted by an authenticated gateway.
    Agent,
}

impl PrincipalKind {
    /// The name used in JSON and in Cedar (`principal.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "ServiceAccount",
            Self::EphemeralIdentity => "EphemeralIdentity",
            Self::Spiffe => "Spiffe",
            Self::Agent => "Agent",
        }
    }
}

impl Principal {
    /// The Kubernetes username the principal authenticates as, when it runs as a ServiceAccount
    /// (`system:serviceaccount:<namespace>:<name>`). Used to stop an agent approving itself.
    pub fn kubernetes_username(&self) -> Option<String> {
        match (&self.namespace, &self.service_account) {
            (Some(ns), Some(sa)) => Some(format!("system:serviceaccount:{ns}:{sa}")),
            _ => None,
        }
    }
}

/// Consumption of a call: LLM tokens and cost in integer micro-USD.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    /// LLM tokens.
    #[serde(default)]
    pub tokens: u64,
    /// Cost in micro-USD (1 USD = 1,000,000).
    #[serde(default)]
    pub cost_micro_usd: u64,
}

/// Why a request was rejected before it was evaluated. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A required string is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// JSON path of the field.
        field: String,
    },
    /// A string is longer than allowed.
    #[error("{field} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// JSON path of the field.
        field: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The principal has too many labels.
    #[error("principal.labels has {count} entries; at most {max} are allowed")]
    TooManyLabels {
        /// Number of labels.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The arguments are too large once serialized.
    #[error("arguments are {size} bytes serialized; at most {max} are allowed")]
    ArgumentsTooLarge {
        /// Serialized size (at least this many bytes; counting stops past the limit).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The arguments nest too deeply.
    #[error("arguments nest deeper than {max} levels")]
    ArgumentsTooDeep {
        /// The limit.
        max: usize,
    },
}

impl RequestError {
    /// A short, stable label for metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "empty_field",
            Self::TooLong { .. } => "field_too_long",
            Self::TooManyLabels { .. } => "too_many_labels",
            Self::ArgumentsTooLarge { .. } => "arguments_too_large",
            Self::ArgumentsTooDeep { .. } => "arguments_too_deep",
        }
    }
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), RequestError> {
    if value.len() > max {
        return Err(RequestError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn check_required(field: &str, value: &str, max: usize) -> Result<(), RequestError> {
    if value.is_empty() {
        return Err(RequestError::Empty {
            field: field.to_owned(),
        });
    }
    check_len(field, value, max)
}

fn check_opt(field: &str, value: &Option<String>, max: usize) -> Result<(), RequestError> {
    match value {
        Some(v) => check_len(field, v, max),
        None => Ok(()),
    }
}

/// Counts bytes written and refuses to go past a limit, so an oversized argument object is
/// rejected without serializing all of it.
struct BoundedCounter {
    count: usize,
    limit: usize,
}

impl io::Write for BoundedCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.count += buf.len();
        if self.count > self.limit {
            return Err(io::Error::other("limit exceeded"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn depth_exceeds(value: &Value, depth: usize) -> bool {
    if depth > MAX_ARGUMENTS_DEPTH {
        return true;
    }
    match value {
        Value::Array(items) => items.iter().any(|v| depth_exceeds(v, depth + 1)),
        Value::Object(map) => map.values().any(|v| depth_exceeds(v, depth + 1)),
        _ => false,
    }
}

impl DecisionRequest {
    /// Check every bound: required strings present, strings not too long, at most
    /// [`MAX_LABELS`] labels, arguments at most [`MAX_ARGUMENTS_BYTES`] serialized and
    /// [`MAX_ARGUMENTS_DEPTH`] deep.
    pub fn validate(&self) -> Result<(), RequestError> {
        let p = &self.principal;
        check_required("principal.id", &p.id, MAX_PRINCIPAL_ID_LEN)?;
        check_opt("principal.namespace", &p.namespace, MAX_NAME_LEN)?;
        check_opt("principal.serviceAccount", &p.service_account, MAX_NAME_LEN)?;
        check_opt(
            "principal.ephemeralIdentity",
            &p.ephemeral_identity,
            MAX_NAME_LEN,
        )?;
        check_opt("principal.spiffeId", &p.spiffe_id, MAX_SPIFFE_ID_LEN)?;
        if p.labels.len() > MAX_LABELS {
            return Err(RequestError::TooManyLabels {
                count: p.labels.len(),
                max: MAX_LABELS,
            });
        }
        for (k, v) in &p.labels {
            check_required("principal.labels key", k, MAX_LABEL_KEY_LEN)?;
            check_len(&format!("principal.labels[{k}]"), v, MAX_LABEL_VALUE_LEN)?;
        }
        check_required("tool", &self.tool, MAX_TOOL_LEN)?;
        check_opt("server", &self.server, MAX_SERVER_LEN)?;
        check_opt("target", &self.target, MAX_TARGET_LEN)?;
        check_opt("user", &self.user, MAX_NAME_LEN)?;
        check_opt("tenant", &self.tenant, MAX_NAME_LEN)?;
        check_opt("sessionId", &self.session_id, MAX_NAME_LEN)?;
        check_opt("traceId", &self.trace_id, MAX_NAME_LEN)?;
        if self.arguments.values().any(|v| depth_exceeds(v, 1)) {
            return Err(RequestError::ArgumentsTooDeep {
                max: MAX_ARGUMENTS_DEPTH,
            });
        }
        let mut counter = BoundedCounter {
            count: 0,
            limit: MAX_ARGUMENTS_BYTES,
        };
        if serde_json::to_writer(&mut counter, &self.arguments).is_err() {
            return Err(RequestError::ArgumentsTooLarge {
                size: counter.count,
                max: MAX_ARGUMENTS_BYTES,
            });
        }
        Ok(())
    }

    /// SHA-256 (lower-case hex) over the canonical JSON of the fields that identify a call:
    /// principal id, tool, server, target, arguments (object keys sorted at every level), user
    /// and tenant. An approval is bound to this digest: only the exact same call can use it.
    pub fn digest(&self) -> String {
        // Canonical JSON of {arguments, principal, server, target, tenant, tool, user}, keys in
        // sorted order, absent optional fields as `null`.
        let mut h = HashWriter(Sha256::new());
        h.0.update(b"{\"arguments\":");
        write_canonical_map(&self.arguments, &mut h);
        for (key, value) in [
            ("principal", Some(self.principal.id.as_str())),
            ("server", self.server.as_deref()),
            ("target", self.target.as_deref()),
            ("tenant", self.tenant.as_deref()),
            ("tool", Some(self.tool.as_str())),
            ("user", self.user.as_deref()),
        ] {
            h.0.update(b",\"");
            h.0.update(key.as_bytes());
            h.0.update(b"\":");
            match value {
                Some(v) => write_json_string(v, &mut h),
                None => h.0.update(b"null"),
            }
        }
        h.0.update(b"}");
        hex::encode(h.0.finalize())
    }

    /// SHA-256 (lower-case hex) of the canonical JSON of the arguments alone, for audit records
    /// that must not carry the arguments themselves.
    pub fn arguments_digest(&self) -> String {
        let mut h = HashWriter(Sha256::new());
        write_canonical_map(&self.arguments, &mut h);
        hex::encode(h.0.finalize())
    }
}

/// Feeds written bytes into a SHA-256.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_json_string(s: &str, h: &mut HashWriter) {
    // Writing a string into a hasher cannot fail.
    let _ = serde_json::to_writer(&mut *h, s);
}

fn write_canonical_map(map: &Map<String, Value>, h: &mut HashWriter) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    h.0.update(b"{");
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            h.0.update(b",");
        }
        write_json_string(k, h);
        h.0.update(b":");
        if let Some(v) = map.get(k) {
            write_canonical(v, h);
        }
    }
    h.0.update(b"}");
}

/// Write `value` as canonical JSON: no whitespace, object keys sorted by their UTF-8 bytes.
fn write_canonical(value: &Value, h: &mut HashWriter) {
    match value {
        Value::Object(map) => write_canonical_map(map, h),
        Value::Array(items) => {
            h.0.update(b"[");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    h.0.update(b",");
                }
                write_canonical(v, h);
            }
            h.0.update(b"]");
        }
        Value::String(s) => write_json_string(s, h),
        // null, booleans and numbers have one compact form.
        other => {
            let _ = serde_json::to_writer(&mut *h, other);
        }
    }
}

/// The answer to a decision request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call may proceed.
    Allow,
    /// The call must not proceed.
    Deny,
    /// The call must not proceed until a human approves this exact request.
    RequireApproval,
}

impl Outcome {
    /// The JSON name (`allow`, `deny`, `require_approval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::RequireApproval => "require_approval",
        }
    }

    /// Strictness order used to combine answers: deny > require_approval > allow.
    pub fn severity(self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::RequireApproval => 1,
            Self::Deny => 2,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a reason was given. Codes starting with `audit_` come from policies in `Audit` mode: they
/// say what the policy would have done and never change the answer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// An `Allow` rule (or a raw Cedar `permit`) matched.
    Allow,
    /// A `Deny` rule (or a raw Cedar `forbid`) matched.
    Deny,
    /// A `RequireApproval` rule (or a raw Cedar `forbid` with `@effect("require_approval")`)
    /// matched.
    RequireApproval,
    /// No policy allowed the call.
    DefaultDeny,
    /// The condition of a `Deny` or `RequireApproval` rule could not be evaluated; it counts as
    /// matched (fail closed).
    ConditionError,
    /// The call was made outside every time window that covers the tool.
    OutsideTimeWindow,
    /// A rate limit was exhausted.
    RateLimited,
    /// A budget would be exceeded.
    BudgetExceeded,
    /// An approved approval for this exact request was used.
    ApprovalGranted,
    /// Audit mode: a `Deny` rule matched.
    AuditDeny,
    /// Audit mode: a `RequireApproval` rule matched.
    AuditRequireApproval,
    /// Audit mode: a condition could not be evaluated.
    AuditConditionError,
    /// Audit mode: no rule allowed the call.
    AuditDefaultDeny,
    /// Audit mode: outside every time window.
    AuditOutsideTimeWindow,
    /// Audit mode: a rate limit is exhausted.
    AuditRateLimited,
    /// Audit mode: a budget would be exceeded.
    AuditBudgetExceeded,
}

impl ReasonCode {
    /// The code used when the same finding comes from an `Audit` mode policy.
    pub fn audit(self) -> Self {
        match self {
            Self::Deny => Self::AuditDeny,
            Self::RequireApproval => Self::AuditRequireApproval,
            Self::ConditionError => Self::AuditConditionError,
            Self::DefaultDeny => Self::AuditDefaultDeny,
            Self::OutsideTimeWindow => Self::AuditOutsideTimeWindow,
            Self::RateLimited => Self::AuditRateLimited,
            Self::BudgetExceeded => Self::AuditBudgetExceeded,
            other => other,
        }
    }

    /// Whether this code comes from an `Audit` mode policy.
    pub fn is_audit(self) -> bool {
        matches!(
            self,
            Self::AuditDeny
                | Self::AuditRequireApproval
                | Self::AuditConditionError
                | Self::AuditDefaultDeny
                | Self::AuditOutsideTimeWindow
                | Self::AuditRateLimited
                | Self::AuditBudgetExceeded
        )
    }
}

/// One reason for a decision: which policy and rule decided, and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reason {
    /// The deciding policy: `namespace/name` for an `AgentPolicy`, `name` for a
    /// `ClusterAgentPolicy`. Absent for the default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The deciding rule, rate limit, budget or time window (or the `@id` of a raw Cedar
    /// policy). Absent for the default deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why.
    pub code: ReasonCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Reason {
    /// The reason as one line of text, naming where it came from: `policy#rule: message`
    /// (`policy: message` without a rule, the message alone without a policy). Audit records
    /// and enforcement points' answers use it.
    pub fn text(&self) -> String {
        match (&self.policy, &self.rule) {
            (Some(p), Some(rule)) => format!("{p}#{rule}: {}", self.message),
            (Some(p), None) => format!("{p}: {}", self.message),
            _ => self.message.clone(),
        }
    }

    /// The code as its stable snake_case name (as serialized).
    pub fn code_str(&self) -> String {
        serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// How policy modes shaped the answer.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ModeInfo {
    /// What the answer would have been if every `Audit` mode policy were enforced, when that is
    /// stricter than the answer given ("would have denied"). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_have: Option<Outcome>,
}

/// A pending approval created for a `require_approval` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRef {
    /// Approval id.
    pub id: String,
    /// When it times out; the call is denied afterwards.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The decision returned for a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// `allow`, `deny` or `require_approval`.
    pub decision: Outcome,
    /// The deciding policies and rules, enforced ones first, then `audit_*` findings.
    pub reasons: Vec<Reason>,
    /// Unique id of this decision (UUID v7, time-ordered).
    pub decision_id: Uuid,
    /// Revision of the compiled policy set that decided.
    pub policy_revision: String,
    /// Audit-mode information.
    #[serde(default)]
    pub mode: ModeInfo,
    /// The pending approval, for `require_approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
}

impl Decision {
    /// The first enforced (non-audit) reason's rule, if any: the rule that decided.
    pub fn deciding_rule(&self) -> Option<&str> {
        self.reasons
            .iter()
            .find(|r| !r.code.is_audit())
            .and_then(|r| r.rule.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> DecisionRequest {
        DecisionRequest {
            principal: Principal {
                id: "agent-1".into(),
                ..Default::default()
            },
            tool: "search".into(),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<DecisionRequest>(
            r#"{"principal":{"id":"a"},"tool":"t","bogus":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = serde_json::from_str::<DecisionRequest>(
            r#"{"principal":{"id":"a","nope":true},"tool":"t"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `nope`"), "{err}");
    }

    #[test]
    fn missing_principal_is_rejected() {
        assert!(serde_json::from_str::<DecisionRequest>(r#"{"tool":"t"}"#).is_err());
    }

    #[test]
    fn full_request_parses() {
        let r: DecisionRequest = serde_json::from_str(
            r#"{"principal":{"id":"a","kind":"ServiceAccount","namespace":"ns","serviceAccount":"sa",
                "labels":{"team":"x"}},"tool":"t","server":"s","target":"db","arguments":{"a":1},
                "user":"u","tenant":"acme","sessionId":"s1","usageEstimate":{"tokens":5,"costMicroUsd":7},
                "traceId":"tr"}"#,
        )
        .unwrap();
        assert_eq!(r.principal.kind, Some(PrincipalKind::ServiceAccount));
        assert_eq!(
            r.usage_estimate,
            Some(Usage {
                tokens: 5,
                cost_micro_usd: 7
            })
        );
        assert_eq!(
            r.principal.kubernetes_username().as_deref(),
            Some("system:serviceaccount:ns:sa")
        );
        r.validate().unwrap();
    }

    #[test]
    fn size_limits_name_the_field() {
        let mut r = req();
        r.principal.id.clear();
        assert_eq!(
            r.validate(),
            Err(RequestError::Empty {
                field: "principal.id".into()
            })
        );
        let mut r = req();
        r.tool = "x".repeat(MAX_TOOL_LEN + 1);
        assert!(
            matches!(r.validate(), Err(RequestError::TooLong { field, .. }) if field == "tool")
        );
        let mut r = req();
        r.arguments.insert(
            "blob".into(),
            Value::String("x".repeat(MAX_ARGUMENTS_BYTES)),
        );
        assert!(matches!(
            r.validate(),
            Err(RequestError::ArgumentsTooLarge { .. })
        ));
        let mut r = req();
        let mut v = Value::Null;
        for _ in 0..40 {
            v = Value::Array(vec![v]);
        }
        r.arguments.insert("deep".into(), v);
        assert_eq!(
            r.validate(),
            Err(RequestError::ArgumentsTooDeep {
                max: MAX_ARGUMENTS_DEPTH
            })
        );
    }

    #[test]
    fn digest_ignores_key_order_but_not_values() {
        let a: DecisionRequest = serde_json::from_str(
            r#"{"principal":{"id":"a"},"tool":"t","arguments":{"x":1,"y":{"b":2,"a":1}}}"#,
        )
        .unwrap();
        let b: DecisionRequest = serde_json::from_str(
            r#"{"principal":{"id":"a"},"tool":"t","arguments":{"y":{"a":1,"b":2},"x":1}}"#,
        )
        .unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest().len(), 64);
        let mut c = a.clone();
        c.arguments.insert("x".into(), Value::from(2));
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.tenant = Some("other".into());
        assert_ne!(a.digest(), d.digest());
        // Fields outside the canonical set do not change the digest.
        let mut e = a.clone();
        e.trace_id = Some("t".into());
        assert_eq!(a.digest(), e.digest());
    }

    #[test]
    fn decision_serializes_with_snake_case_outcome() {
        let d = Decision {
            decision: Outcome::RequireApproval,
            reasons: vec![],
            decision_id: Uuid::nil(),
            policy_revision: "r".into(),
            mode: ModeInfo {
                would_have: Some(Outcome::Deny),
            },
            approval: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["decision"], "require_approval");
        assert_eq!(v["mode"]["wouldHave"], "deny");
        assert_eq!(v["policyRevision"], "r");
    }
}
