//! Compilation of `AgentPolicy` / `ClusterAgentPolicy` rules into one immutable, indexed
//! [`CompiledPolicies`] revision, and the rule evaluation a decision starts from.
//!
//! # From rules to Cedar
//!
//! Every `spec.tools[]` rule becomes one Cedar policy over the schema in [`crate::schema`]:
//!
//! ```cedar
//! @policy("payments/finance-agent") @rule("large-transfers")
//! forbid (principal, action == Action::"call_tool", resource)
//! when { context.arguments has amount && context.arguments.amount > 1000000 };
//! ```
//!
//! `Allow` becomes `permit`, `Deny` becomes `forbid` and `RequireApproval` becomes a `forbid`
//! annotated `@effect("require_approval")`. The rule's `when` is the body of the `when {}` clause
//! (absent: no clause). Raw `spec.cedar` policies are taken as written (see
//! [`overseer_crds::agents::PolicyRules::cedar`]). Each condition is parsed once, validated against
//! the schema, and kept; nothing is parsed per request.
//!
//! # Indexing
//!
//! Which rules a request can match is decided in Rust, not by Cedar: exact tool names are looked
//! up in a hash map, tool globs in one [`globset::GlobSet`], and the MCP server glob and the
//! policy's scope and subjects then filter the candidates. Rules without a condition are decided
//! by the index alone (their Cedar body is `true`). The conditions of the candidate rules are
//! evaluated by Cedar's evaluator (`eval_expression` on the pre-parsed condition, against the
//! request's Cedar context and principal entity); the raw Cedar policies of the policies that
//! govern the principal go to Cedar's authorizer, as a policy set built once per distinct set and
//! cached (bounded). Only the parts of the Cedar input some candidate can read are built.
//!
//! # Scope
//!
//! A namespaced `AgentPolicy` governs only principals whose `namespace` is its own; a
//! `ClusterAgentPolicy` governs principals of the namespaces its selector matched (resolved by
//! the caller into [`NamespaceScope`]), or every principal for [`NamespaceScope::All`]. Within
//! the scope, `subjects` narrows the principals (omitted: every principal in scope).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cedar_policy::{
    Authorizer, Expression, Policy, PolicyId, PolicySet, ValidationError, ValidationMode, Validator,
};
use chrono::{DateTime, Utc};
use globset::{GlobSet, GlobSetBuilder};
use miette::Diagnostic;
use overseer_crds::agents::{
    BudgetMetric, ExceedAction, PolicyMode, PolicyRules, RateLimitKey, RuleEffect,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::matchers::{Subjects, ToolFilter, Window, glob, is_glob};
use crate::request::{DecisionRequest, Outcome, Principal, ReasonCode};
use crate::schema::{self, CedarInput};

/// Default time an approval request waits (15 minutes).
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Most cached candidate policy sets per revision.
const SET_CACHE_CAPACITY: usize = 4096;

/// Where a policy applies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PolicyScope {
    /// An `AgentPolicy`: principals of this namespace only.
    Namespaced {
        /// The policy's namespace.
        namespace: String,
    },
    /// A `ClusterAgentPolicy`: principals of the namespaces its `namespaceSelector` matched.
    Cluster {
        /// The namespaces, as resolved by the caller.
        namespaces: NamespaceScope,
    },
}

/// The namespaces a cluster-wide policy applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceScope {
    /// Every principal, including those without a namespace (no `namespaceSelector`).
    All,
    /// Principals of these namespaces.
    Only(BTreeSet<String>),
}

/// One policy object to compile.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySource {
    /// Namespaced or cluster-wide, and where it applies.
    pub scope: PolicyScope,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.generation`, reported back with the compile result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The policy's rules.
    pub rules: PolicyRules,
}

impl PolicySource {
    /// A namespaced `AgentPolicy`.
    pub fn namespaced(
        namespace: impl Into<String>,
        name: impl Into<String>,
        rules: PolicyRules,
    ) -> Self {
        Self {
            scope: PolicyScope::Namespaced {
                namespace: namespace.into(),
            },
            name: name.into(),
            generation: None,
            rules,
        }
    }

    /// A `ClusterAgentPolicy`.
    pub fn cluster(
        name: impl Into<String>,
        namespaces: NamespaceScope,
        rules: PolicyRules,
    ) -> Self {
        Self {
            scope: PolicyScope::Cluster { namespaces },
            name: name.into(),
            generation: None,
            rules,
        }
    }

    /// The name decisions use for the policy: `namespace/name` for an `AgentPolicy`, `name` for
    /// a `ClusterAgentPolicy`.
    pub fn key(&self) -> String {
        match &self.scope {
            PolicyScope::Namespaced { namespace } => format!("{namespace}/{}", self.name),
            PolicyScope::Cluster { .. } => self.name.clone(),
        }
    }

    /// Content hash of the policy (first 12 hex digits of the SHA-256 of its canonical JSON,
    /// generation excluded).
    pub fn revision(&self) -> String {
        let mut h = Sha256::new();
        let canonical = serde_json::json!({
            "scope": self.scope,
            "name": self.name,
            "rules": self.rules,
        });
        h.update(canonical.to_string().as_bytes());
        hex::encode(h.finalize())[..12].to_string()
    }
}

/// One problem found in a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CompileError {
    /// The field, e.g. `spec.tools[2].when` or `spec.cedar`.
    pub field: String,
    /// What is wrong (Cedar's message where Cedar found it).
    pub message: String,
    /// 1-based line within the field's text, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// 1-based column (in characters) within the field's text, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl CompileError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.field)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, " (line {l}, column {c})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The compile result of one policy, for its status (`Ready`, `ruleCount`, `policyRevision`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// The policy (`namespace/name` or `name`).
    pub policy: String,
    /// The generation that was compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Content hash of the policy.
    pub revision: String,
    /// Tool rules plus raw Cedar policies.
    pub rule_count: usize,
    /// Empty when the policy compiled and is part of the revision.
    pub errors: Vec<CompileError>,
}

impl PolicyReport {
    /// Whether the policy compiled.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// All errors as one message (for a `Ready=False` condition).
    pub fn message(&self) -> String {
        self.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The result of [`compile`]: the revision built from every valid policy, and a report per
/// policy. Invalid policies are left out of the revision; the caller decides whether to serve it
/// or keep the last good one.
#[derive(Debug)]
pub struct Compilation {
    /// The compiled revision (valid policies only).
    pub compiled: CompiledPolicies,
    /// One report per input policy, in input order.
    pub reports: Vec<PolicyReport>,
}

impl Compilation {
    /// Whether every policy compiled.
    pub fn is_ok(&self) -> bool {
        self.reports.iter().all(PolicyReport::is_ok)
    }

    /// Reports of the policies that failed.
    pub fn failures(&self) -> impl Iterator<Item = &PolicyReport> {
        self.reports.iter().filter(|r| !r.is_ok())
    }
}

#[derive(Debug)]
pub(crate) enum Scope {
    Namespace(String),
    All,
    Namespaces(HashSet<String>),
}

/// A compiled rate limit.
#[derive(Debug)]
pub(crate) struct RateLimitSpec {
    pub(crate) name: Arc<str>,
    pub(crate) key: RateLimitKey,
    pub(crate) tools: ToolFilter,
    pub(crate) limit: u64,
    pub(crate) window: Duration,
}

/// A compiled budget.
#[derive(Debug)]
pub(crate) struct BudgetSpec {
    pub(crate) name: Arc<str>,
    pub(crate) metric: BudgetMetric,
    pub(crate) key: RateLimitKey,
    pub(crate) tools: ToolFilter,
    pub(crate) limit: u64,
    pub(crate) window: Option<Duration>,
    pub(crate) on_exceed: ExceedAction,
}

/// Who may approve, and how long a request waits.
#[derive(Debug, Clone)]
pub(crate) struct ApprovalSpec {
    pub(crate) users: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) timeout: Duration,
}

#[derive(Debug)]
pub(crate) struct CompiledPolicy {
    pub(crate) key: Arc<str>,
    scope: Scope,
    pub(crate) mode: PolicyMode,
    subjects: Option<Subjects>,
    pub(crate) windows: Vec<Window>,
    pub(crate) rate_limits: Vec<RateLimitSpec>,
    pub(crate) budgets: Vec<BudgetSpec>,
    pub(crate) approval: ApprovalSpec,
    raw_cedar: Vec<u32>,
}

impl CompiledPolicy {
    fn governs(&self, p: &Principal) -> bool {
        let in_scope = match &self.scope {
            Scope::Namespace(ns) => p.namespace.as_deref() == Some(ns.as_str()),
            Scope::All => true,
            Scope::Namespaces(set) => p.namespace.as_ref().is_some_and(|ns| set.contains(ns)),
        };
        in_scope && self.subjects.as_ref().is_none_or(|s| s.matches(p))
    }

    fn has_constraints(&self) -> bool {
        !self.windows.is_empty() || !self.rate_limits.is_empty() || !self.budgets.is_empty()
    }
}

#[derive(Debug)]
enum Server {
    Any,
    Exact(String),
    Glob(globset::GlobMatcher),
}

impl Server {
    fn matches(&self, server: Option<&str>) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(s) => server == Some(s.as_str()),
            Self::Glob(g) => server.is_some_and(|s| g.is_match(s)),
        }
    }
}

#[derive(Debug)]
struct CompiledRule {
    policy: u32,
    name: String,
    effect: Outcome,
    server: Server,
    cedar: Option<u32>,
    reason: Option<String>,
}

#[derive(Debug)]
struct CedarEntry {
    owner: u32,
    /// The rule (tool rules) or `@id` / `cedar[i]` (raw policies).
    name: String,
    effect: Outcome,
    reason: Option<String>,
    policy: Policy,
    /// The `when` condition of a tool rule, evaluated directly (the rule's tools, server and
    /// subjects are matched by the index). `None` for raw policies, which go through the
    /// authorizer.
    condition: Option<Expression>,
    /// Which parts of the Cedar input the policy can read ([`schema::needs_of`]).
    needs: u8,
}

/// Tool name → candidate rules.
#[derive(Debug, Default)]
struct ToolIndex {
    exact: HashMap<String, Vec<u32>>,
    globs: Option<GlobSet>,
    glob_rules: Vec<Vec<u32>>,
}

/// One finding of the rule evaluation.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub(crate) policy: u32,
    pub(crate) rule: String,
    pub(crate) effect: Outcome,
    pub(crate) code: ReasonCode,
    pub(crate) message: String,
}

/// What the rules say about a request, before limits and approvals.
#[derive(Debug, Default)]
pub(crate) struct Evaluation {
    /// Findings of `Enforce` policies.
    pub(crate) enforce: Vec<Finding>,
    /// Findings of `Audit` policies.
    pub(crate) audit: Vec<Finding>,
    /// Governing policies that have rate limits, budgets or time windows.
    pub(crate) constrained: Vec<u32>,
}

/// The strictest effect among findings (`None` when there are none).
pub(crate) fn strictest(findings: &[Finding]) -> Option<Outcome> {
    findings
        .iter()
        .map(|f| f.effect)
        .max_by_key(|e| e.severity())
}

/// One immutable compiled revision of the policy set. Cheap to share (`Arc`), evaluated
/// concurrently without locks except the candidate-set cache.
pub struct CompiledPolicies {
    revision: String,
    policies: Vec<CompiledPolicy>,
    rules: Vec<CompiledRule>,
    cedar: Vec<CedarEntry>,
    index: ToolIndex,
    constrained: Vec<u32>,
    raw: Vec<u32>,
    set_cache: RwLock<HashMap<Box<[u32]>, Arc<PolicySet>>>,
    authorizer: Authorizer,
}

impl fmt::Debug for CompiledPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPolicies")
            .field("revision", &self.revision)
            .field("policies", &self.policies.len())
            .field("rules", &self.rules.len())
            .field("cedar_policies", &self.cedar.len())
            .finish_non_exhaustive()
    }
}

impl CompiledPolicies {
    /// An empty revision: every call is denied by default.
    pub fn empty() -> Self {
        compile(&[]).compiled
    }

    /// The revision: first 12 hex digits of the SHA-256 over the compiled policies' keys and
    /// content hashes, in key order.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Number of compiled policies.
    pub fn policy_count(&self) -> usize {
        self.policies.len()
    }

    /// Number of tool rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The Cedar text of every compiled Cedar policy (tool rules and raw policies).
    pub fn cedar_text(&self) -> String {
        self.cedar
            .iter()
            .map(|c| format!("{}\n", c.policy))
            .collect()
    }

    /// Whether some call of `tool` on MCP server `server` by `principal` can ever be allowed by
    /// this revision: an `Enforce` policy governing the principal has an `Allow` or
    /// `RequireApproval` rule covering the tool and server (a condition may hold, an approval may
    /// be granted), or raw Cedar that might permit it; and no `Enforce` policy governing it has an
    /// unconditional `Deny` rule covering them (deny overrides). Rate limits, budgets and time
    /// windows are temporary, so they do not hide a tool. Used by the MCP gateway to filter
    /// `tools/list`; every call is still decided on its own.
    pub fn may_allow(&self, principal: &Principal, server: Option<&str>, tool: &str) -> bool {
        let mut candidates: Vec<u32> = Vec::new();
        if let Some(rules) = self.index.exact.get(tool) {
            candidates.extend_from_slice(rules);
        }
        if let Some(globs) = &self.index.globs {
            for h in globs.matches(tool) {
                candidates.extend_from_slice(&self.index.glob_rules[h]);
            }
        }
        let enforced = |p: u32| {
            let policy = &self.policies[p as usize];
            policy.mode == PolicyMode::Enforce && policy.governs(principal)
        };
        let mut allowed = false;
        for r in candidates {
            let rule = &self.rules[r as usize];
            if !rule.server.matches(server) || !enforced(rule.policy) {
                continue;
            }
            match rule.effect {
                Outcome::Deny if rule.cedar.is_none() => return false,
                Outcome::Deny => {}
                Outcome::Allow | Outcome::RequireApproval => allowed = true,
            }
        }
        allowed || self.raw.iter().any(|&p| enforced(p))
    }

    /// The tools of `tools` (listed by MCP server `server`) that `principal` may ever call
    /// ([`Self::may_allow`]), in the order given.
    pub fn permitted(
        &self,
        principal: &Principal,
        server: Option<&str>,
        tools: Vec<String>,
    ) -> Vec<String> {
        tools
            .into_iter()
            .filter(|tool| self.may_allow(principal, server, tool))
            .collect()
    }

    pub(crate) fn policy(&self, idx: u32) -> &CompiledPolicy {
        &self.policies[idx as usize]
    }

    /// Evaluate the rules for a request (no limits, no approvals).
    pub(crate) fn evaluate(&self, req: &DecisionRequest, now: DateTime<Utc>) -> Evaluation {
        let mut eval = Evaluation::default();
        let mut governed: Vec<(u32, bool)> = Vec::new();
        let mut governs = |idx: u32| -> bool {
            if let Some((_, g)) = governed.iter().find(|(i, _)| *i == idx) {
                return *g;
            }
            let g = self.policies[idx as usize].governs(&req.principal);
            governed.push((idx, g));
            g
        };

        // Candidate rules from the tool index.
        let mut candidates: Vec<u32> = Vec::new();
        if let Some(rules) = self.index.exact.get(req.tool.as_str()) {
            candidates.extend_from_slice(rules);
        }
        if let Some(globs) = &self.index.globs {
            let mut hits = Vec::new();
            globs.matches_into(req.tool.as_str(), &mut hits);
            if !hits.is_empty() {
                for h in hits {
                    candidates.extend_from_slice(&self.index.glob_rules[h]);
                }
                candidates.sort_unstable();
                candidates.dedup();
            }
        }

        // Conditions of candidate tool rules, and raw policies, per mode.
        let mut enforce_conds: Vec<u32> = Vec::new();
        let mut audit_conds: Vec<u32> = Vec::new();
        let mut enforce_set: Vec<u32> = Vec::new();
        let mut audit_set: Vec<u32> = Vec::new();
        for r in candidates {
            let rule = &self.rules[r as usize];
            if !rule.server.matches(req.server.as_deref()) || !governs(rule.policy) {
                continue;
            }
            let audit = self.policies[rule.policy as usize].mode == PolicyMode::Audit;
            match rule.cedar {
                Some(c) => if audit {
                    &mut audit_conds
                } else {
                    &mut enforce_conds
                }
                .push(c),
                None => {
                    let f = finding(
                        rule.policy,
                        &rule.name,
                        rule.effect,
                        rule.reason.as_deref(),
                        false,
                    );
                    if audit {
                        &mut eval.audit
                    } else {
                        &mut eval.enforce
                    }
                    .push(f);
                }
            }
        }
        for &p in &self.raw {
            if governs(p) {
                let policy = &self.policies[p as usize];
                let set = if policy.mode == PolicyMode::Audit {
                    &mut audit_set
                } else {
                    &mut enforce_set
                };
                set.extend_from_slice(&policy.raw_cedar);
            }
        }

        let lists = [&enforce_conds, &audit_conds, &enforce_set, &audit_set];
        if lists.iter().any(|v| !v.is_empty()) {
            let needs = lists
                .into_iter()
                .flatten()
                .fold(0, |n, &c| n | self.cedar[c as usize].needs);
            match schema::cedar_input_for(req, now, needs) {
                Ok(input) => {
                    self.run_conditions(&input, &enforce_conds, &mut eval.enforce);
                    self.run_conditions(&input, &audit_conds, &mut eval.audit);
                    self.run_cedar(&input, enforce_set, &mut eval.enforce);
                    self.run_cedar(&input, audit_set, &mut eval.audit);
                }
                Err(e) => {
                    // A request Cedar cannot represent: every conditional rule is treated as an
                    // evaluation error (deny and approval rules match, allow rules do not).
                    enforce_set.extend(enforce_conds);
                    audit_set.extend(audit_conds);
                    for (set, out) in [
                        (enforce_set, &mut eval.enforce),
                        (audit_set, &mut eval.audit),
                    ] {
                        for c in set {
                            let entry = &self.cedar[c as usize];
                            if entry.effect != Outcome::Allow {
                                out.push(error_finding(entry, &e));
                            }
                        }
                    }
                }
            }
        }

        for &p in &self.constrained {
            if !governs(p) {
                continue;
            }
            eval.constrained.push(p);
            let policy = &self.policies[p as usize];
            let covering: Vec<&Window> = policy
                .windows
                .iter()
                .filter(|w| w.tools.is_match(&req.tool))
                .collect();
            if !covering.is_empty() && !covering.iter().any(|w| w.is_open(now)) {
                let names: Vec<&str> = covering.iter().map(|w| w.name.as_str()).collect();
                let f = Finding {
                    policy: p,
                    rule: names.join(","),
                    effect: Outcome::Deny,
                    code: ReasonCode::OutsideTimeWindow,
                    message: format!(
                        "tool {:?} may only be called inside the time windows {}",
                        req.tool,
                        names.join(", ")
                    ),
                };
                if policy.mode == PolicyMode::Audit {
                    &mut eval.audit
                } else {
                    &mut eval.enforce
                }
                .push(f);
            }
        }
        eval
    }

    fn policy_set(&self, mut ids: Vec<u32>) -> Arc<PolicySet> {
        ids.sort_unstable();
        ids.dedup();
        if let Ok(cache) = self.set_cache.read()
            && let Some(set) = cache.get(ids.as_slice())
        {
            return Arc::clone(set);
        }
        let mut set = PolicySet::new();
        for &c in &ids {
            // Ids are unique indexes, so adding cannot conflict.
            let _ = set.add(self.cedar[c as usize].policy.clone());
        }
        let set = Arc::new(set);
        if let Ok(mut cache) = self.set_cache.write()
            && cache.len() < SET_CACHE_CAPACITY
        {
            cache.insert(ids.into_boxed_slice(), Arc::clone(&set));
        }
        set
    }

    /// Evaluate tool-rule conditions with Cedar's evaluator.
    fn run_conditions(&self, input: &CedarInput, conds: &[u32], out: &mut Vec<Finding>) {
        for &c in conds {
            let entry = &self.cedar[c as usize];
            let Some(expr) = &entry.condition else {
                continue;
            };
            match cedar_policy::eval_expression(&input.request, &input.entities, expr) {
                Ok(cedar_policy::EvalResult::Bool(true)) => {
                    out.push(finding(
                        entry.owner,
                        &entry.name,
                        entry.effect,
                        entry.reason.as_deref(),
                        true,
                    ));
                }
                Ok(cedar_policy::EvalResult::Bool(false)) => {}
                Ok(other) if entry.effect != Outcome::Allow => {
                    out.push(error_finding(
                        entry,
                        &format!("the condition gave {other}, not a boolean"),
                    ));
                }
                Ok(_) => {}
                Err(e) if entry.effect != Outcome::Allow => {
                    out.push(error_finding(entry, &e.to_string()))
                }
                Err(_) => {}
            }
        }
    }

    fn run_cedar(&self, input: &CedarInput, set: Vec<u32>, out: &mut Vec<Finding>) {
        if set.is_empty() {
            return;
        }
        let pset = self.policy_set(set);
        let response = self
            .authorizer
            .is_authorized(&input.request, &pset, &input.entities);
        let diag = response.diagnostics();
        for id in diag.reason() {
            if let Some(entry) = self.entry(id) {
                out.push(finding(
                    entry.owner,
                    &entry.name,
                    entry.effect,
                    entry.reason.as_deref(),
                    true,
                ));
            }
        }
        for err in diag.errors() {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = err;
            if let Some(entry) = self.entry(e.policy_id())
                && entry.effect != Outcome::Allow
            {
                out.push(error_finding(entry, &e.inner().to_string()));
            }
        }
    }

    fn entry(&self, id: &PolicyId) -> Option<&CedarEntry> {
        let idx: usize = id.to_string().parse().ok()?;
        self.cedar.get(idx)
    }
}

fn finding(
    policy: u32,
    rule: &str,
    effect: Outcome,
    reason: Option<&str>,
    conditional: bool,
) -> Finding {
    let code = match effect {
        Outcome::Allow => ReasonCode::Allow,
        Outcome::Deny => ReasonCode::Deny,
        Outcome::RequireApproval => ReasonCode::RequireApproval,
    };
    let message = match reason {
        Some(r) => r.to_owned(),
        None => {
            let verb = match effect {
                Outcome::Allow => "allows",
                Outcome::Deny => "denies",
                Outcome::RequireApproval => "requires approval for",
            };
            if conditional {
                format!("rule {rule} {verb} this call (its condition holds)")
            } else {
                format!("rule {rule} {verb} this call")
            }
        }
    };
    Finding {
        policy,
        rule: rule.to_owned(),
        effect,
        code,
        message,
    }
}

fn error_finding(entry: &CedarEntry, err: &str) -> Finding {
    Finding {
        policy: entry.owner,
        rule: entry.name.clone(),
        effect: entry.effect,
        code: ReasonCode::ConditionError,
        message: format!(
            "the condition of rule {} could not be evaluated, so it counts as matched: {err}",
            entry.name
        ),
    }
}

/// 1-based line and column (in characters) of a byte offset in `text`.
fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let mut line = 1u32;
    let mut col = 1u32;
    for (i, ch) in text.char_indices() {
        if i >= offset {
            break;
        }
        if ch == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Cedar's message, with its help text when it has one.
fn diag_message(d: &dyn Diagnostic) -> String {
    match d.help() {
        Some(help) => format!("{d}; {help}"),
        None => d.to_string(),
    }
}

/// The first labelled byte offset (and length) of a diagnostic.
fn diag_span(d: &dyn Diagnostic) -> Option<(usize, usize)> {
    d.labels()?.next().map(|l| (l.offset(), l.len()))
}

/// Attach a location to an error: `offset` is relative to `text`; `base` is where the field's
/// text starts inside `text` (the generated prefix of a rule's Cedar policy).
fn locate(
    mut err: CompileError,
    field_text: &str,
    offset: Option<usize>,
    base: usize,
) -> CompileError {
    if let Some(off) = offset
        && off >= base
    {
        let (l, c) = line_col(field_text, off - base);
        err.line = Some(l);
        err.column = Some(c);
    }
    err
}

/// Escape a string for a Cedar string literal.
fn cedar_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn duration_of(
    d: &kube::core::Duration,
    field: &str,
    errors: &mut Vec<CompileError>,
) -> Option<Duration> {
    if d.is_negative() {
        errors.push(CompileError::new(field, "must not be negative"));
        return None;
    }
    let std: Duration = (*d).into();
    if std.is_zero() {
        errors.push(CompileError::new(field, "must be longer than zero"));
        return None;
    }
    Some(std)
}

/// What one policy compiles into, before it is merged into a revision.
struct PolicyParts {
    policy: CompiledPolicy,
    rules: Vec<(CompiledRule, Vec<String>)>,
    /// Tool-rule conditions (by rule position) and raw policies, with their own local ids.
    cedar: Vec<CedarEntry>,
}

/// Compile one policy on its own (for admission checks and status): its report, and the parts
/// when it is valid.
fn compile_one(src: &PolicySource, validator: &Validator) -> (PolicyReport, Option<PolicyParts>) {
    let key = src.key();
    let mut errors = Vec::new();
    let r = &src.rules;
    let own_ns = match &src.scope {
        PolicyScope::Namespaced { namespace } => Some(namespace.as_str()),
        PolicyScope::Cluster { .. } => None,
    };
    let scope = match &src.scope {
        PolicyScope::Namespaced { namespace } => Scope::Namespace(namespace.clone()),
        PolicyScope::Cluster {
            namespaces: NamespaceScope::All,
        } => Scope::All,
        PolicyScope::Cluster {
            namespaces: NamespaceScope::Only(set),
        } => Scope::Namespaces(set.iter().cloned().collect()),
    };
    let subjects = match &r.subjects {
        None => None,
        Some(s) => match Subjects::new(s, own_ns) {
            Ok(s) => Some(s),
            Err((field, msg)) => {
                errors.push(CompileError::new(format!("spec.subjects.{field}"), msg));
                None
            }
        },
    };

    // Unique names.
    let check_unique = |list: &str, names: Vec<&str>, errors: &mut Vec<CompileError>| {
        let mut seen = HashSet::new();
        for (i, n) in names.into_iter().enumerate() {
            if n.is_empty() {
                errors.push(CompileError::new(
                    format!("spec.{list}[{i}].name"),
                    "must not be empty",
                ));
            } else if !seen.insert(n) {
                errors.push(CompileError::new(
                    format!("spec.{list}[{i}].name"),
                    format!("duplicate name {n:?}"),
                ));
            }
        }
    };
    check_unique(
        "tools",
        r.tools.iter().map(|t| t.name.as_str()).collect(),
        &mut errors,
    );
    check_unique(
        "rateLimits",
        r.rate_limits.iter().map(|t| t.name.as_str()).collect(),
        &mut errors,
    );
    check_unique(
        "budgets",
        r.budgets.iter().map(|t| t.name.as_str()).collect(),
        &mut errors,
    );
    check_unique(
        "timeWindows",
        r.time_windows.iter().map(|t| t.name.as_str()).collect(),
        &mut errors,
    );

    let mut windows = Vec::new();
    for (i, w) in r.time_windows.iter().enumerate() {
        match Window::new(w) {
            Ok(w) => windows.push(w),
            Err((f, m)) => errors.push(CompileError::new(format!("spec.timeWindows[{i}].{f}"), m)),
        }
    }
    let mut rate_limits = Vec::new();
    for (i, l) in r.rate_limits.iter().enumerate() {
        let field = format!("spec.rateLimits[{i}]");
        let tools = ToolFilter::new(&l.tools)
            .map_err(|(j, e)| errors.push(CompileError::new(format!("{field}.tools[{j}]"), e)))
            .ok();
        let window = duration_of(&l.window, &format!("{field}.window"), &mut errors);
        if l.limit < 1 {
            errors.push(CompileError::new(
                format!("{field}.limit"),
                "must be at least 1",
            ));
        }
        if let (Some(tools), Some(window), Ok(limit)) = (tools, window, u64::try_from(l.limit))
            && limit >= 1
        {
            rate_limits.push(RateLimitSpec {
                name: l.name.as_str().into(),
                key: l.key,
                tools,
                limit,
                window,
            });
        }
    }
    let mut budgets = Vec::new();
    for (i, b) in r.budgets.iter().enumerate() {
        let field = format!("spec.budgets[{i}]");
        let tools = ToolFilter::new(&b.tools)
            .map_err(|(j, e)| errors.push(CompileError::new(format!("{field}.tools[{j}]"), e)))
            .ok();
        let window = match &b.window {
            Some(w) => duration_of(w, &format!("{field}.window"), &mut errors).map(Some),
            None => Some(None),
        };
        if b.limit < 1 {
            errors.push(CompileError::new(
                format!("{field}.limit"),
                "must be at least 1",
            ));
        }
        if let (Some(tools), Some(window), Ok(limit)) = (tools, window, u64::try_from(b.limit))
            && limit >= 1
        {
            budgets.push(BudgetSpec {
                name: b.name.as_str().into(),
                metric: b.metric,
                key: b.key,
                tools,
                limit,
                window,
                on_exceed: b.on_exceed,
            });
        }
    }
    let approval = match &r.approval {
        None => ApprovalSpec {
            users: vec![],
            groups: vec![],
            timeout: DEFAULT_APPROVAL_TIMEOUT,
        },
        Some(a) => ApprovalSpec {
            users: a.users.clone(),
            groups: a.groups.clone(),
            timeout: match &a.timeout {
                Some(t) => duration_of(t, "spec.approval.timeout", &mut errors)
                    .unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
                None => DEFAULT_APPROVAL_TIMEOUT,
            },
        },
    };

    // Tool rules.
    let mut rules = Vec::new();
    let mut cedar: Vec<CedarEntry> = Vec::new();
    let mut sources: HashMap<usize, (String, String, usize)> = HashMap::new(); // cedar idx -> (field, text, base)
    for (i, t) in r.tools.iter().enumerate() {
        let field = format!("spec.tools[{i}]");
        if t.tools.is_empty() {
            errors.push(CompileError::new(
                format!("{field}.tools"),
                "must list at least one tool name or glob",
            ));
        }
        let mut ok = true;
        for (j, p) in t.tools.iter().enumerate() {
            if p.is_empty() {
                errors.push(CompileError::new(
                    format!("{field}.tools[{j}]"),
                    "must not be empty",
                ));
                ok = false;
            } else if is_glob(p)
                && let Err(e) = glob(p)
            {
                errors.push(CompileError::new(format!("{field}.tools[{j}]"), e));
                ok = false;
            }
        }
        let server = match &t.server {
            None => Server::Any,
            Some(s) if !is_glob(s) => Server::Exact(s.clone()),
            Some(s) => match glob(s) {
                Ok(g) => Server::Glob(g.compile_matcher()),
                Err(e) => {
                    errors.push(CompileError::new(format!("{field}.server"), e));
                    ok = false;
                    Server::Any
                }
            },
        };
        let effect = match t.effect {
            RuleEffect::Allow => Outcome::Allow,
            RuleEffect::Deny => Outcome::Deny,
            RuleEffect::RequireApproval => Outcome::RequireApproval,
        };
        let mut cedar_idx = None;
        if let Some(when) = &t.when {
            let wfield = format!("{field}.when");
            let parsed = when.parse::<Expression>();
            if let Err(e) = &parsed {
                for pe in e.iter() {
                    let span = diag_span(pe).map(|s| s.0);
                    errors.push(locate(
                        CompileError::new(&wfield, diag_message(pe)),
                        when,
                        span,
                        0,
                    ));
                }
                ok = false;
            } else {
                let head = match effect {
                    Outcome::Allow => "permit",
                    Outcome::Deny => "forbid",
                    Outcome::RequireApproval => "@effect(\"require_approval\")\nforbid",
                };
                let prefix = format!(
                    "@policy({})\n@rule({})\n{head} (principal, action == Action::\"call_tool\", resource)\nwhen {{ ",
                    cedar_string(&key),
                    cedar_string(&t.name)
                );
                let text = format!("{prefix}{when}\n}};");
                let idx = cedar.len();
                match Policy::parse(Some(PolicyId::new(idx.to_string())), &text) {
                    Ok(policy) => {
                        sources.insert(idx, (wfield, when.clone(), prefix.len()));
                        cedar.push(CedarEntry {
                            owner: 0,
                            name: t.name.clone(),
                            effect,
                            reason: t.reason.clone(),
                            policy,
                            condition: parsed.ok(),
                            needs: schema::needs_of(when),
                        });
                        cedar_idx = Some(idx as u32);
                    }
                    Err(e) => {
                        for pe in e.iter() {
                            let span = diag_span(pe).map(|s| s.0);
                            errors.push(locate(
                                CompileError::new(&wfield, diag_message(pe)),
                                when,
                                span,
                                prefix.len(),
                            ));
                        }
                        ok = false;
                    }
                }
            }
        }
        if ok {
            rules.push((
                CompiledRule {
                    policy: 0,
                    name: t.name.clone(),
                    effect,
                    server,
                    cedar: cedar_idx,
                    reason: t.reason.clone(),
                },
                t.tools.clone(),
            ));
        }
    }

    // Raw Cedar.
    let mut raw_cedar = Vec::new();
    if let Some(text) = &r.cedar {
        match text.parse::<PolicySet>() {
            Err(e) => {
                for pe in e.iter() {
                    let span = diag_span(pe).map(|s| s.0);
                    errors.push(locate(
                        CompileError::new("spec.cedar", diag_message(pe)),
                        text,
                        span,
                        0,
                    ));
                }
            }
            Ok(set) => {
                if set.templates().next().is_some() {
                    errors.push(CompileError::new(
                        "spec.cedar",
                        "templates (policies with ?principal or ?resource slots) are not supported",
                    ));
                }
                let mut parsed: Vec<(usize, Policy)> = set
                    .policies()
                    .map(|p| {
                        let n = p
                            .id()
                            .to_string()
                            .trim_start_matches("policy")
                            .parse()
                            .unwrap_or(usize::MAX);
                        (n, p.clone())
                    })
                    .collect();
                parsed.sort_by_key(|(n, _)| *n);
                for (n, p) in parsed {
                    let effect_ann = p.annotation("effect");
                    let effect = match (p.effect(), effect_ann) {
                        (cedar_policy::Effect::Permit, None) => Outcome::Allow,
                        (cedar_policy::Effect::Forbid, None) => Outcome::Deny,
                        (cedar_policy::Effect::Forbid, Some("require_approval")) => {
                            Outcome::RequireApproval
                        }
                        (_, Some(other)) => {
                            let name = p
                                .annotation("id")
                                .map_or_else(|| format!("cedar[{n}]"), str::to_owned);
                            let what = if p.effect() == cedar_policy::Effect::Permit {
                                format!("policy {name}: @effect is only allowed on forbid policies")
                            } else {
                                format!(
                                    "policy {name}: unknown @effect({other:?}); the only one is \"require_approval\""
                                )
                            };
                            errors.push(CompileError::new("spec.cedar", what));
                            continue;
                        }
                    };
                    let name = p
                        .annotation("id")
                        .map_or_else(|| format!("cedar[{n}]"), str::to_owned);
                    let idx = cedar.len();
                    sources.insert(idx, ("spec.cedar".into(), text.clone(), 0));
                    cedar.push(CedarEntry {
                        owner: 0,
                        name,
                        effect,
                        reason: p.annotation("reason").map(str::to_owned),
                        policy: p.new_id(PolicyId::new(idx.to_string())),
                        condition: None,
                        needs: schema::NEED_ALL,
                    });
                    raw_cedar.push(idx as u32);
                }
            }
        }
    }

    // Validate every Cedar policy of this policy against the schema.
    if !cedar.is_empty() {
        let mut pset = PolicySet::new();
        for c in &cedar {
            let _ = pset.add(c.policy.clone());
        }
        let result = validator.validate(&pset, ValidationMode::Strict);
        for err in result.validation_errors() {
            let Ok(idx) = err.policy_id().to_string().parse::<usize>() else {
                continue;
            };
            let Some((field, field_text, base)) = sources.get(&idx) else {
                continue;
            };
            let span = diag_span(err);
            if is_argument_access(err, span) {
                continue;
            }
            errors.push(locate(
                CompileError::new(field, diag_message(err)),
                field_text,
                span.map(|s| s.0),
                *base,
            ));
        }
    }

    let rule_count = r.tools.len() + raw_cedar.len();
    let report = PolicyReport {
        policy: key.clone(),
        generation: src.generation,
        revision: src.revision(),
        rule_count,
        errors,
    };
    if !report.is_ok() {
        return (report, None);
    }
    let policy = CompiledPolicy {
        key: key.into(),
        scope,
        mode: r.mode,
        subjects,
        windows,
        rate_limits,
        budgets,
        approval,
        raw_cedar,
    };
    (
        report,
        Some(PolicyParts {
            policy,
            rules,
            cedar,
        }),
    )
}

/// Whether a validation error is an access to an attribute of `context.arguments`, which the
/// schema cannot type (arguments are arbitrary JSON).
fn is_argument_access(err: &ValidationError, span: Option<(usize, usize)>) -> bool {
    if !matches!(
        err,
        ValidationError::UnsafeAttributeAccess(_)
            | ValidationError::UnsafeOptionalAttributeAccess(_)
    ) {
        return false;
    }
    let (Some((off, len)), Some(src)) = (span, err.source_code()) else {
        return false;
    };
    let Ok(contents) = src.read_span(&miette::SourceSpan::from((off, len)), 0, 0) else {
        return false;
    };
    let snippet: String = String::from_utf8_lossy(contents.data())
        .split_whitespace()
        .collect();
    snippet.starts_with("context.arguments.") || snippet.starts_with("context.arguments[")
}

/// Compile a set of policies into one revision. Policies with errors are reported and left out;
/// the others are compiled. Policy order does not matter: the revision depends only on content.
pub fn compile(sources: &[PolicySource]) -> Compilation {
    let schema = schema::schema();
    let mut reports = Vec::with_capacity(sources.len());
    let mut parts: Vec<PolicyParts> = Vec::new();
    match schema {
        Err(e) => {
            for s in sources {
                reports.push(PolicyReport {
                    policy: s.key(),
                    generation: s.generation,
                    revision: s.revision(),
                    rule_count: 0,
                    errors: vec![CompileError::new("spec", e.clone())],
                });
            }
        }
        Ok(schema) => {
            let validator = Validator::new(schema.clone());
            // Duplicate keys: the first occurrence wins; the others are errors.
            let mut seen = HashSet::new();
            for s in sources {
                if !seen.insert(s.key()) {
                    reports.push(PolicyReport {
                        policy: s.key(),
                        generation: s.generation,
                        revision: s.revision(),
                        rule_count: 0,
                        errors: vec![CompileError::new(
                            "metadata.name",
                            "duplicate policy in the input",
                        )],
                    });
                    continue;
                }
                let (report, p) = compile_one(s, &validator);
                reports.push(report);
                if let Some(p) = p {
                    parts.push(p);
                }
            }
        }
    }
    // Deterministic order: by key.
    parts.sort_by(|a, b| a.policy.key.cmp(&b.policy.key));

    let mut hasher = Sha256::new();
    let mut by_key: HashMap<&str, &str> = HashMap::new();
    for r in &reports {
        if r.is_ok() {
            by_key.insert(&r.policy, &r.revision);
        }
    }
    for p in &parts {
        hasher.update(p.policy.key.as_bytes());
        hasher.update(b"\0");
        hasher.update(by_key.get(&*p.policy.key).copied().unwrap_or("").as_bytes());
        hasher.update(b"\n");
    }
    let revision = hex::encode(hasher.finalize())[..12].to_string();

    let mut policies = Vec::with_capacity(parts.len());
    let mut rules = Vec::new();
    let mut cedar = Vec::new();
    let mut exact: HashMap<String, Vec<u32>> = HashMap::new();
    let mut glob_ids: HashMap<String, usize> = HashMap::new();
    let mut glob_builder = GlobSetBuilder::new();
    let mut glob_rules: Vec<Vec<u32>> = Vec::new();
    for (pi, part) in parts.into_iter().enumerate() {
        let pi = pi as u32;
        let base = cedar.len() as u32;
        let mut policy = part.policy;
        policy.raw_cedar = policy.raw_cedar.iter().map(|c| c + base).collect();
        for mut entry in part.cedar {
            entry.owner = pi;
            let id = PolicyId::new(cedar.len().to_string());
            entry.policy = entry.policy.new_id(id);
            cedar.push(entry);
        }
        for (mut rule, tools) in part.rules {
            rule.policy = pi;
            rule.cedar = rule.cedar.map(|c| c + base);
            let ri = rules.len() as u32;
            for t in tools {
                if is_glob(&t) {
                    let gi = *glob_ids.entry(t.clone()).or_insert_with(|| {
                        // Validated in compile_one.
                        if let Ok(g) = glob(&t) {
                            glob_builder.add(g);
                        }
                        glob_rules.push(Vec::new());
                        glob_rules.len() - 1
                    });
                    if glob_rules[gi].last() != Some(&ri) {
                        glob_rules[gi].push(ri);
                    }
                } else {
                    let list = exact.entry(t).or_default();
                    if list.last() != Some(&ri) {
                        list.push(ri);
                    }
                }
            }
            rules.push(rule);
        }
        policies.push(policy);
    }
    let globs = if glob_rules.is_empty() {
        None
    } else {
        glob_builder.build().ok()
    };
    let constrained = (0..policies.len() as u32)
        .filter(|&i| policies[i as usize].has_constraints())
        .collect();
    let raw = (0..policies.len() as u32)
        .filter(|&i| !policies[i as usize].raw_cedar.is_empty())
        .collect();
    Compilation {
        compiled: CompiledPolicies {
            revision,
            policies,
            rules,
            cedar,
            index: ToolIndex {
                exact,
                globs,
                glob_rules,
            },
            constrained,
            raw,
            set_cache: RwLock::new(HashMap::new()),
            authorizer: Authorizer::new(),
        },
        reports,
    }
}
