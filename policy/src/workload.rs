//! The shared benchmark workload (`../shared/bench/policy-workload/`, "bench-100-rules") mapped
//! into `AgentPolicy` form, so the in-process test and benchmarks and the HTTP benchmark run the
//! exact same policy and request stream.
//!
//! # Mapping
//!
//! * The policy becomes one `AgentPolicy` named after it in namespace [`NAMESPACE`], governing the
//!   workload's single agent through `subjects.agentIds`. Requests carry that agent as principal
//!   `{id: agent_did, kind: Agent, namespace: NAMESPACE}` and the workload's `args` as arguments.
//! * Rule `RNNN` becomes tool rule `rNNN` (rule names are lower-case DNS labels) for its one tool:
//!   `allow` → `Allow`, `deny` → `Deny`, `require_approval` → `RequireApproval`.
//! * A condition `{field: "args.X", op, value}` becomes the Cedar condition
//!   `context.arguments has X && context.arguments.X <op> value`, which holds only when `X` is
//!   present and numeric, as the workload's oracle requires.
//! * A rule's `limit: "N/period"` becomes a rate limit named like the rule (`key: AgentTool`,
//!   `tools: [its tool]`, `limit: N`, `window: period`), so a rate-limited deny names the rule.
//! * Approvers become the policy's `approval.groups`. Priorities are dropped: each tool matches one
//!   rule, and Overseer combines rules by deny-overrides rather than priority.

use std::path::{Path, PathBuf};
use std::process::Command;

use overseer_crds::agents::{
    AgentSubjects, ApprovalSettings, PolicyRules, RateLimit, RateLimitKey, RuleEffect, ToolRule,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::compile::PolicySource;
use crate::request::{Decision, DecisionRequest, Outcome, Principal, PrincipalKind, ReasonCode};

/// Namespace of the mapped `AgentPolicy` and of the workload's agent.
pub const NAMESPACE: &str = "overseer-bench";

/// `policy.json` of the workload.
#[derive(Deserialize, Clone, Debug)]
pub struct WorkloadPolicy {
    /// Policy name.
    pub name: String,
    /// The agent the policy governs.
    pub agent: String,
    /// Always `deny`.
    pub default_action: String,
    /// The rules.
    pub rules: Vec<WorkloadRule>,
}

/// One rule of `policy.json`.
#[derive(Deserialize, Clone, Debug)]
pub struct WorkloadRule {
    /// `RNNN`.
    pub name: String,
    /// The tool it covers.
    pub tool: String,
    /// `allow`, `deny` or `require_approval`.
    pub action: String,
    /// Ignored (see the module docs).
    #[serde(default)]
    pub priority: i64,
    /// Optional numeric condition on an argument.
    #[serde(default)]
    pub condition: Option<WorkloadCondition>,
    /// Optional rate limit, `N/period`.
    #[serde(default)]
    pub limit: Option<String>,
    /// Approver groups.
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// A rule condition of `policy.json`.
#[derive(Deserialize, Clone, Debug)]
pub struct WorkloadCondition {
    /// `args.<name>`.
    pub field: String,
    /// `<`, `<=`, `>`, `>=`, `==` or `!=`.
    pub op: String,
    /// An integer.
    pub value: i64,
}

/// One line of `requests.jsonl`.
#[derive(Deserialize, Clone, Debug)]
pub struct WorkloadRequest {
    /// Position in the stream.
    pub i: u64,
    /// `warmup` or `measure`.
    pub phase: String,
    /// Request class.
    pub class: String,
    /// The agent.
    pub agent_did: String,
    /// The tool.
    pub tool: String,
    /// The arguments.
    pub args: Map<String, Value>,
    /// Expected decision.
    pub expect: String,
    /// Expected deciding rule (`None` for a default deny).
    pub expect_rule: Option<String>,
    /// Whether the expected deny comes from the rate limit.
    pub expect_rate_limited: bool,
}

/// The tool-rule name a workload rule maps to.
pub fn rule_name(workload_rule: &str) -> String {
    workload_rule.to_ascii_lowercase()
}

fn period_to_duration(period: &str) -> Result<kube::core::Duration, String> {
    let go = match period {
        "second" | "sec" | "s" => "1s",
        "minute" | "min" | "m" => "1m",
        "hour" | "h" => "1h",
        "day" | "d" => "24h",
        other => return Err(format!("unknown rate-limit period {other:?}")),
    };
    go.parse().map_err(|e| format!("{e}"))
}

/// Map the workload policy into an `AgentPolicy` source.
pub fn to_policy_source(p: &WorkloadPolicy) -> Result<PolicySource, String> {
    if p.default_action != "deny" {
        return Err(format!(
            "default_action {:?} is not supported: Overseer denies by default",
            p.default_action
        ));
    }
    let mut rules = PolicyRules {
        subjects: Some(AgentSubjects {
            agent_ids: vec![p.agent.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut groups: Vec<String> = Vec::new();
    for r in &p.rules {
        let effect = match r.action.as_str() {
            "allow" => RuleEffect::Allow,
            "deny" => RuleEffect::Deny,
            "require_approval" => RuleEffect::RequireApproval,
            other => return Err(format!("rule {}: unknown action {other:?}", r.name)),
        };
        let when = match &r.condition {
            None => None,
            Some(c) => {
                let arg = c
                    .field
                    .strip_prefix("args.")
                    .filter(|a| {
                        !a.is_empty() && a.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                    })
                    .ok_or_else(|| {
                        format!("rule {}: unsupported condition field {:?}", r.name, c.field)
                    })?;
                if !matches!(c.op.as_str(), "<" | "<=" | ">" | ">=" | "==" | "!=") {
                    return Err(format!("rule {}: unsupported operator {:?}", r.name, c.op));
                }
                Some(format!(
                    "context.arguments has {arg} && context.arguments.{arg} {} {}",
                    c.op, c.value
                ))
            }
        };
        let name = rule_name(&r.name);
        if let Some(limit) = &r.limit {
            let (n, period) = limit
                .split_once('/')
                .ok_or_else(|| format!("rule {}: limit {limit:?} is not N/period", r.name))?;
            let n: i32 = n
                .parse()
                .map_err(|_| format!("rule {}: limit {limit:?} is not N/period", r.name))?;
            rules.rate_limits.push(RateLimit {
                name: name.clone(),
                key: RateLimitKey::AgentTool,
                tools: vec![r.tool.clone()],
                limit: n,
                window: period_to_duration(period)?,
            });
        }
        for g in &r.approvers {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        rules.tools.push(ToolRule {
            name,
            tools: vec![r.tool.clone()],
            server: None,
            effect,
            when,
            reason: None,
        });
    }
    if !groups.is_empty() {
        rules.approval = Some(ApprovalSettings {
            groups,
            ..Default::default()
        });
    }
    Ok(PolicySource::namespaced(NAMESPACE, p.name.clone(), rules))
}

impl WorkloadRequest {
    /// The decision request for this line.
    pub fn to_decision_request(&self) -> DecisionRequest {
        DecisionRequest {
            principal: Principal {
                id: self.agent_did.clone(),
                kind: Some(PrincipalKind::Agent),
                namespace: Some(NAMESPACE.to_owned()),
                ..Default::default()
            },
            tool: self.tool.clone(),
            arguments: self.args.clone(),
            ..Default::default()
        }
    }

    /// Check a decision against the line's expectation: the outcome, the deciding rule (none for
    /// a default deny) and whether it was rate limited.
    pub fn check(&self, d: &Decision) -> Result<(), String> {
        let outcome = match self.expect.as_str() {
            "allow" => Outcome::Allow,
            "deny" => Outcome::Deny,
            "require_approval" => Outcome::RequireApproval,
            other => return Err(format!("request {}: unknown expectation {other:?}", self.i)),
        };
        if d.decision != outcome {
            return Err(format!(
                "request {}: expected {outcome}, got {} ({:?})",
                self.i, d.decision, d.reasons
            ));
        }
        let first = d.reasons.first().map(|r| r.code);
        match &self.expect_rule {
            None => {
                if first != Some(ReasonCode::DefaultDeny) {
                    return Err(format!(
                        "request {}: expected a default deny, got {:?}",
                        self.i, d.reasons
                    ));
                }
            }
            Some(rule) => {
                let want = rule_name(rule);
                if d.deciding_rule() != Some(want.as_str()) {
                    return Err(format!(
                        "request {}: expected rule {want}, got {:?}",
                        self.i, d.reasons
                    ));
                }
            }
        }
        let limited = first == Some(ReasonCode::RateLimited);
        if limited != self.expect_rate_limited {
            return Err(format!(
                "request {}: expected rate_limited={}, got {:?}",
                self.i, self.expect_rate_limited, d.reasons
            ));
        }
        Ok(())
    }
}

/// The generated workload files.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The policy.
    pub policy: WorkloadPolicy,
    /// The request stream, in order.
    pub requests: Vec<WorkloadRequest>,
}

/// Where the workload generator lives: `$OVERSEER_WORKLOAD_DIR/gen_workload.py`, or the shared
/// directory next to the repository.
pub fn generator_path() -> PathBuf {
    match std::env::var_os("OVERSEER_WORKLOAD_DIR") {
        Some(dir) => PathBuf::from(dir).join("gen_workload.py"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/bench/policy-workload/gen_workload.py"),
    }
}

/// Why the workload could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// `python3` (or the generator) is not available; callers skip rather than fail.
    #[error("workload generator unavailable: {0}")]
    Unavailable(String),
    /// The generator ran but its output could not be read.
    #[error("workload: {0}")]
    Invalid(String),
}

/// Run the generator into `out` and load the files it wrote.
pub fn generate(out: &Path) -> Result<Workload, WorkloadError> {
    let script = generator_path();
    if !script.exists() {
        return Err(WorkloadError::Unavailable(format!(
            "{} does not exist",
            script.display()
        )));
    }
    let status = Command::new("python3")
        .arg(&script)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| WorkloadError::Unavailable(format!("cannot run python3: {e}")))?;
    if !status.success() {
        return Err(WorkloadError::Invalid(format!(
            "{} exited with {status}",
            script.display()
        )));
    }
    load(out)
}

/// Load `policy.json` and `requests.jsonl` from a generated directory.
pub fn load(dir: &Path) -> Result<Workload, WorkloadError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| WorkloadError::Invalid(format!("{name}: {e}")))
    };
    let policy: WorkloadPolicy = serde_json::from_str(&read("policy.json")?)
        .map_err(|e| WorkloadError::Invalid(format!("policy.json: {e}")))?;
    let requests = read("requests.jsonl")?
        .lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| WorkloadError::Invalid(format!("requests.jsonl line {}: {e}", n + 1)))
        })
        .collect::<Result<Vec<WorkloadRequest>, _>>()?;
    Ok(Workload { policy, requests })
}

/// A deterministic synthetic policy set of `rules` tool rules for scaling benchmarks, and
/// `requests` requests against it.
///
/// Rules are spread over policies of 100 rules each in namespace [`NAMESPACE`] (every policy
/// governs agents `agent-*`). Per 20 rules: 13 plain allows of one exact tool, 2 allows with an
/// argument condition, 2 denies, 1 require-approval, 1 allow of a prefix glob (`svc_K_*`) and 1
/// deny of a glob with an argument condition. Requests call a known tool 90 % of the time and
/// an unknown one otherwise, with an `amount` argument.
pub fn synthetic(rules: usize, requests: usize) -> (Vec<PolicySource>, Vec<DecisionRequest>) {
    // SplitMix64: a tiny, well-known deterministic generator.
    let mut state: u64 = 0x005e_ed0f_0be5;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut sources = Vec::new();
    let mut tools: Vec<String> = Vec::new();
    let per_policy = 100;
    for p in 0..rules.div_ceil(per_policy) {
        let mut pr = PolicyRules {
            subjects: Some(AgentSubjects {
                agent_ids: vec!["agent-*".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        for j in 0..per_policy.min(rules - p * per_policy) {
            let k = p * per_policy + j;
            let (tool, effect, when) = match k % 20 {
                0..=12 => (format!("tool_{k}"), RuleEffect::Allow, None),
                13 | 14 => (
                    format!("tool_{k}"),
                    RuleEffect::Allow,
                    Some(
                        "context.arguments has amount && context.arguments.amount < 1000"
                            .to_string(),
                    ),
                ),
                15 | 16 => (format!("tool_{k}"), RuleEffect::Deny, None),
                17 => (format!("tool_{k}"), RuleEffect::RequireApproval, None),
                18 => (format!("svc_{k}_*"), RuleEffect::Allow, None),
                _ => (
                    format!("svc_{}_*", k - 1),
                    RuleEffect::Deny,
                    Some(
                        "context.arguments has amount && context.arguments.amount > 5000"
                            .to_string(),
                    ),
                ),
            };
            tools.push(tool.replace('*', "call"));
            pr.tools.push(ToolRule {
                name: format!("r{k}"),
                tools: vec![tool],
                server: None,
                effect,
                when,
                reason: None,
            });
        }
        sources.push(PolicySource::namespaced(
            NAMESPACE,
            format!("synthetic-{p}"),
            pr,
        ));
    }
    let reqs = (0..requests)
        .map(|_| {
            let r = next();
            let tool = if r % 10 == 0 || tools.is_empty() {
                format!("unknown_{}", r % 1000)
            } else {
                tools[(r as usize / 10) % tools.len()].clone()
            };
            let mut arguments = Map::new();
            arguments.insert("amount".into(), Value::from((next() % 10_000) as i64));
            DecisionRequest {
                principal: Principal {
                    id: format!("agent-{}", next() % 4),
                    kind: Some(PrincipalKind::Agent),
                    namespace: Some(NAMESPACE.to_owned()),
                    ..Default::default()
                },
                tool,
                arguments,
                ..Default::default()
            }
        })
        .collect();
    (sources, reqs)
}
