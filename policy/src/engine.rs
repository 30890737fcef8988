//! The decision engine: the current compiled revision (swapped atomically), the rate-limit and
//! budget state, and the approvals store.
//!
//! # How a decision is made
//!
//! 1. The request is validated ([`DecisionRequest::validate`]).
//! 2. The rules of the `Enforce` policies that govern the principal are evaluated
//!    ([`CompiledPolicies`]): deny overrides require-approval overrides allow; nothing matching
//!    is a default deny. Time windows that cover the tool and are all closed deny.
//! 3. If the answer is allow, the rate limits and budgets of the governing policies that cover the
//!    tool are charged atomically ([`LimitState::check_and_charge`]): all or nothing. An exhausted
//!    rate limit or a `Deny` budget denies (and charges nothing); a `RequireApproval` budget asks
//!    for approval.
//! 4. A require-approval answer consumes an approved approval bound to the same request digest if
//!    there is one (the call is then allowed, and charged, exactly once; budgets that asked for the
//!    approval are not held against it), and otherwise opens (or returns the already open) pending
//!    approval, whose timeout is the shortest `approval.timeout` of the deciding policies.
//! 5. `Audit` policies never change the answer: their findings are added to the reasons with
//!    `audit_*` codes, and `mode.wouldHave` says what the answer would have been had they been
//!    enforced, when that is stricter. Their limits are charged when the call is allowed and has
//!    room in them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chrono::{DateTime, TimeDelta, Utc};
use overseer_crds::agents::{ExceedAction, PolicyMode, RateLimitKey};
use uuid::Uuid;

use crate::approvals::{
    Approval, ApprovalError, ApprovalState, ApprovalStore, InMemoryApprovals, Verdict,
};
use crate::compile::{CompiledPolicies, Evaluation, Finding, strictest};
use crate::limits::{
    self, Charge, CommitError, CommitReport, CounterKey, Exceeded, LimitState, ReservationId,
    Subject,
};
use crate::request::{
    ApprovalRef, Decision, DecisionRequest, ModeInfo, Outcome, Reason, ReasonCode, RequestError,
};

/// A time-ordered UUID v7 without a system call per id: 48 bits of milliseconds, then the
/// SplitMix64 mix of a per-process random seed plus a counter (distinct for every id of the
/// process).
pub fn new_uuid_v7(now: DateTime<Utc>) -> Uuid {
    static SEED: LazyLock<u64> = LazyLock::new(|| {
        let (a, b) = Uuid::new_v4().as_u64_pair();
        a ^ b
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let x = mix(SEED.wrapping_add(n));
    let y = mix(x);
    let mut bytes = [0u8; 10];
    bytes[..2].copy_from_slice(&y.to_le_bytes()[..2]);
    bytes[2..].copy_from_slice(&x.to_le_bytes());
    let millis = u64::try_from(now.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

/// How many decision → reservation mappings are kept for [`Engine::commit_usage`].
const MAX_RESERVATIONS: usize = 100_000;

/// Why usage could not be committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The decision reserved no token or cost budget, or is unknown or too old.
    #[error("decision {0} has no open budget reservation")]
    UnknownDecision(Uuid),
    /// The limits state refused the commit.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The committer is not the principal the decision was made for.
    #[error("decision {0} was made for another principal; an agent may only commit its own usage")]
    NotYours(Uuid),
}

#[derive(Debug, Clone, Copy)]
enum LimitRole {
    RateLimit,
    Budget(ExceedAction),
}

#[derive(Debug)]
struct ChargeMeta {
    policy: u32,
    name: Arc<str>,
    role: LimitRole,
}

#[derive(Debug, Default)]
struct Charges {
    charges: Vec<Charge>,
    meta: Vec<ChargeMeta>,
}

impl Charges {
    fn remove(&mut self, i: usize) -> ChargeMeta {
        self.charges.remove(i);
        self.meta.remove(i)
    }
    fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }
}

#[derive(Debug, Default)]
struct ReservationMap {
    /// Decision id → its reservation and the id of the principal it was made for.
    map: HashMap<Uuid, (ReservationId, Arc<str>)>,
    order: VecDeque<Uuid>,
}

/// The decision engine. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Engine {
    compiled: ArcSwap<CompiledPolicies>,
    limits: Arc<LimitState>,
    approvals: Arc<dyn ApprovalStore>,
    reservations: Mutex<ReservationMap>,
}

impl Engine {
    /// An engine serving `compiled`, with fresh limits and in-memory approvals.
    pub fn new(compiled: CompiledPolicies) -> Self {
        Self::with_state(
            compiled,
            Arc::new(LimitState::default()),
            Arc::new(InMemoryApprovals::default()),
        )
    }

    /// An engine with the given limits state (e.g. restored from disk) and approvals store.
    pub fn with_state(
        compiled: CompiledPolicies,
        limits: Arc<LimitState>,
        approvals: Arc<dyn ApprovalStore>,
    ) -> Self {
        Self {
            compiled: ArcSwap::from_pointee(compiled),
            limits,
            approvals,
            reservations: Mutex::new(ReservationMap::default()),
        }
    }

    /// Swap in a new revision atomically; decisions in flight finish on the old one. Returns the
    /// old revision.
    pub fn swap(&self, compiled: CompiledPolicies) -> Arc<CompiledPolicies> {
        self.compiled.swap(Arc::new(compiled))
    }

    /// The revision currently served.
    pub fn current(&self) -> Arc<CompiledPolicies> {
        self.compiled.load_full()
    }

    /// The rate-limit and budget state.
    pub fn limits(&self) -> &Arc<LimitState> {
        &self.limits
    }

    /// The approvals store.
    pub fn approvals(&self) -> &Arc<dyn ApprovalStore> {
        &self.approvals
    }

    /// Decide a request at `now`. Errors only for invalid requests (the caller answers 4xx).
    pub fn decide(
        &self,
        req: &DecisionRequest,
        now: DateTime<Utc>,
    ) -> Result<Decision, RequestError> {
        req.validate()?;
        let compiled = self.compiled.load();
        let eval = compiled.evaluate(req, now);
        Ok(self.finish(&compiled, req, eval, now))
    }

    fn reason(compiled: &CompiledPolicies, f: &Finding, audit: bool) -> Reason {
        Reason {
            policy: Some(compiled.policy(f.policy).key.to_string()),
            rule: Some(f.rule.clone()),
            code: if audit { f.code.audit() } else { f.code },
            message: f.message.clone(),
        }
    }

    fn limit_reason(
        compiled: &CompiledPolicies,
        meta: &ChargeMeta,
        ex: &Exceeded,
        audit: bool,
    ) -> (Outcome, Reason) {
        let (effect, code) = match meta.role {
            LimitRole::RateLimit => (Outcome::Deny, ReasonCode::RateLimited),
            LimitRole::Budget(ExceedAction::Deny) => (Outcome::Deny, ReasonCode::BudgetExceeded),
            LimitRole::Budget(ExceedAction::RequireApproval) => {
                (Outcome::RequireApproval, ReasonCode::BudgetExceeded)
            }
        };
        let reason = Reason {
            policy: Some(compiled.policy(meta.policy).key.to_string()),
            rule: Some(meta.name.to_string()),
            code: if audit { code.audit() } else { code },
            message: ex.to_string(),
        };
        (effect, reason)
    }

    fn charges(
        compiled: &CompiledPolicies,
        req: &DecisionRequest,
        eval: &Evaluation,
        mode: PolicyMode,
    ) -> Charges {
        let mut out = Charges::default();
        let subject = |key: RateLimitKey| -> Subject {
            let or_empty = |v: &Option<String>| v.as_deref().unwrap_or("").into();
            match key {
                RateLimitKey::Agent => Subject::Agent(req.principal.id.as_str().into()),
                RateLimitKey::AgentTool => Subject::agent_tool(&req.principal.id, &req.tool),
                RateLimitKey::User => Subject::User(or_empty(&req.user)),
                RateLimitKey::Tenant => Subject::Tenant(or_empty(&req.tenant)),
                RateLimitKey::Session => Subject::Session(or_empty(&req.session_id)),
            }
        };
        let usage = req.usage_estimate.unwrap_or_default();
        for &p in &eval.constrained {
            let policy = compiled.policy(p);
            if policy.mode != mode {
                continue;
            }
            for rl in &policy.rate_limits {
                if rl.tools.is_match(&req.tool) {
                    out.charges.push(Charge::rate_limit(
                        Arc::clone(&policy.key),
                        Arc::clone(&rl.name),
                        subject(rl.key),
                        rl.limit,
                        rl.window,
                    ));
                    out.meta.push(ChargeMeta {
                        policy: p,
                        name: Arc::clone(&rl.name),
                        role: LimitRole::RateLimit,
                    });
                }
            }
            for b in &policy.budgets {
                if b.tools.is_match(&req.tool) {
                    let (metric, amount) = match b.metric {
                        overseer_crds::agents::BudgetMetric::Tokens => {
                            (limits::BudgetMetric::Tokens, usage.tokens)
                        }
                        overseer_crds::agents::BudgetMetric::CostMicroUsd => {
                            (limits::BudgetMetric::CostMicroUsd, usage.cost_micro_usd)
                        }
                        overseer_crds::agents::BudgetMetric::ToolCalls => {
                            (limits::BudgetMetric::ToolCalls, 1)
                        }
                    };
                    let key = CounterKey::budget(
                        Arc::clone(&policy.key),
                        Arc::clone(&b.name),
                        metric,
                        subject(b.key),
                    );
                    out.charges
                        .push(Charge::budget(key, amount, b.limit, b.window));
                    out.meta.push(ChargeMeta {
                        policy: p,
                        name: Arc::clone(&b.name),
                        role: LimitRole::Budget(b.on_exceed),
                    });
                }
            }
        }
        out
    }

    fn remember_reservation(&self, decision_id: Uuid, id: ReservationId, principal: &str) {
        let mut r = self
            .reservations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if r.order.len() >= MAX_RESERVATIONS
            && let Some(old) = r.order.pop_front()
        {
            r.map.remove(&old);
        }
        r.map.insert(decision_id, (id, Arc::from(principal)));
        r.order.push_back(decision_id);
    }

    /// Charge `charges`; charges that fail with a role `skippable` says may be dropped are dropped
    /// (and reported) and the rest retried. Returns the first non-skippable failure.
    fn charge_dropping(
        &self,
        charges: &mut Charges,
        now: DateTime<Utc>,
        skippable: impl Fn(LimitRole) -> bool,
        dropped: &mut Vec<(ChargeMeta, Exceeded)>,
    ) -> Result<Option<ReservationId>, (usize, Box<Exceeded>)> {
        loop {
            if charges.is_empty() {
                return Ok(None);
            }
            match self.limits.check_and_charge(&charges.charges, now) {
                Ok(res) => return Ok(res.id),
                Err(ex) => {
                    let i = ex.index;
                    if i < charges.meta.len() && skippable(charges.meta[i].role) {
                        let meta = charges.remove(i);
                        dropped.push((meta, *ex));
                    } else {
                        return Err((i, ex));
                    }
                }
            }
        }
    }

    fn finish(
        &self,
        compiled: &CompiledPolicies,
        req: &DecisionRequest,
        eval: Evaluation,
        now: DateTime<Utc>,
    ) -> Decision {
        let decision_id = new_uuid_v7(now);
        let mut reasons: Vec<Reason> = Vec::new();
        let mut outcome = strictest(&eval.enforce).unwrap_or(Outcome::Deny);
        // Policies whose rules or budgets asked for approval.
        let mut approval_policies: Vec<u32> = Vec::new();
        if eval.enforce.is_empty() {
            reasons.push(Reason {
                policy: None,
                rule: None,
                code: ReasonCode::DefaultDeny,
                message: format!(
                    "no policy governing agent {:?} allows tool {:?}",
                    req.principal.id, req.tool
                ),
            });
        } else {
            for f in eval.enforce.iter().filter(|f| f.effect == outcome) {
                reasons.push(Self::reason(compiled, f, false));
                if outcome == Outcome::RequireApproval && !approval_policies.contains(&f.policy) {
                    approval_policies.push(f.policy);
                }
            }
        }

        let mut enforce = if outcome == Outcome::Deny {
            Charges::default()
        } else {
            Self::charges(compiled, req, &eval, PolicyMode::Enforce)
        };
        let mut approval = None;

        if outcome == Outcome::Allow && !enforce.is_empty() {
            match self.limits.check_and_charge(&enforce.charges, now) {
                Ok(res) => {
                    if let Some(id) = res.id {
                        self.remember_reservation(decision_id, id, &req.principal.id);
                    }
                }
                Err(ex) => {
                    let meta = &enforce.meta[ex.index.min(enforce.meta.len().saturating_sub(1))];
                    let (effect, reason) = Self::limit_reason(compiled, meta, &ex, false);
                    if effect == Outcome::RequireApproval {
                        // Deny-type limits override: check them without charging.
                        let deny_only: Vec<usize> = (0..enforce.meta.len())
                            .filter(|&i| {
                                !matches!(
                                    enforce.meta[i].role,
                                    LimitRole::Budget(ExceedAction::RequireApproval)
                                )
                            })
                            .collect();
                        let subset: Vec<Charge> = deny_only
                            .iter()
                            .map(|&i| enforce.charges[i].clone())
                            .collect();
                        match self.limits.check(&subset, now) {
                            Err(ex2) => {
                                let meta2 = &enforce.meta
                                    [deny_only[ex2.index.min(deny_only.len().saturating_sub(1))]];
                                let (_, r2) = Self::limit_reason(compiled, meta2, &ex2, false);
                                outcome = Outcome::Deny;
                                reasons = vec![r2];
                            }
                            Ok(()) => {
                                outcome = Outcome::RequireApproval;
                                reasons = vec![reason];
                                approval_policies = vec![meta.policy];
                            }
                        }
                    } else {
                        outcome = Outcome::Deny;
                        reasons = vec![reason];
                    }
                }
            }
        }

        if outcome == Outcome::RequireApproval {
            let digest = req.digest();
            if let Some(granted) = self.approvals.consume(&digest, now) {
                let mut dropped = Vec::new();
                let approval_budget =
                    |r: LimitRole| matches!(r, LimitRole::Budget(ExceedAction::RequireApproval));
                match self.charge_dropping(&mut enforce, now, approval_budget, &mut dropped) {
                    Ok(res) => {
                        if let Some(id) = res {
                            self.remember_reservation(decision_id, id, &req.principal.id);
                        }
                        let reviewer = match &granted.state {
                            ApprovalState::Consumed { reviewer, .. } => reviewer.clone(),
                            _ => String::new(),
                        };
                        outcome = Outcome::Allow;
                        reasons.insert(
                            0,
                            Reason {
                                policy: None,
                                rule: Some(granted.id.clone()),
                                code: ReasonCode::ApprovalGranted,
                                message: format!(
                                    "approval {} by {reviewer} used for this exact request",
                                    granted.id
                                ),
                            },
                        );
                    }
                    Err((i, ex)) => {
                        self.approvals.release(&granted.id);
                        let (_, r) = Self::limit_reason(compiled, &enforce.meta[i], &ex, false);
                        outcome = Outcome::Deny;
                        reasons = vec![r];
                    }
                }
            } else if let Some(pending) = self.approvals.pending(&digest, now) {
                approval = Some(ApprovalRef {
                    id: pending.id,
                    expires_at: pending.expires_at,
                });
            } else {
                match self.open_approval(
                    compiled,
                    req,
                    &digest,
                    decision_id,
                    &approval_policies,
                    &reasons,
                    now,
                ) {
                    Ok(a) => {
                        approval = Some(ApprovalRef {
                            id: a.id,
                            expires_at: a.expires_at,
                        })
                    }
                    Err(e) => {
                        outcome = Outcome::Deny;
                        reasons.push(Reason {
                            policy: None,
                            rule: None,
                            code: ReasonCode::RequireApproval,
                            message: format!("approval required but none could be opened: {e}"),
                        });
                    }
                }
            }
        }

        // Audit-mode findings: never change the answer.
        let mut would_have = outcome;
        let mut more = |effect: Outcome, r: Reason, reasons: &mut Vec<Reason>| {
            if effect.severity() > would_have.severity() {
                would_have = effect;
            }
            reasons.push(r);
        };
        for f in eval.audit.iter().filter(|f| f.effect != Outcome::Allow) {
            more(f.effect, Self::reason(compiled, f, true), &mut reasons);
        }
        if outcome == Outcome::Allow {
            let mut audit = Self::charges(compiled, req, &eval, PolicyMode::Audit);
            let mut dropped = Vec::new();
            // Every audit limit may be dropped, so this cannot fail.
            let _ = self.charge_dropping(&mut audit, now, |_| true, &mut dropped);
            for (meta, ex) in dropped {
                let (effect, r) = Self::limit_reason(compiled, &meta, &ex, true);
                more(effect, r, &mut reasons);
            }
        }
        let mode = ModeInfo {
            would_have: (would_have != outcome).then_some(would_have),
        };

        Decision {
            decision: outcome,
            reasons,
            decision_id,
            policy_revision: compiled.revision().to_owned(),
            mode,
            approval,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn open_approval(
        &self,
        compiled: &CompiledPolicies,
        req: &DecisionRequest,
        digest: &str,
        decision_id: Uuid,
        policies: &[u32],
        reasons: &[Reason],
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError> {
        let mut users: Vec<String> = Vec::new();
        let mut groups: Vec<String> = Vec::new();
        let mut timeout = None;
        for &p in policies {
            let a = &compiled.policy(p).approval;
            for u in &a.users {
                if !users.contains(u) {
                    users.push(u.clone());
                }
            }
            for g in &a.groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            timeout = Some(timeout.map_or(a.timeout, |t: std::time::Duration| t.min(a.timeout)));
        }
        let timeout = timeout.unwrap_or(crate::compile::DEFAULT_APPROVAL_TIMEOUT);
        let expires_at = now + TimeDelta::from_std(timeout).unwrap_or(TimeDelta::minutes(15));
        let approval = Approval {
            id: new_uuid_v7(now).to_string(),
            decision_id,
            request_digest: digest.to_owned(),
            principal_id: req.principal.id.clone(),
            principal_username: req.principal.kubernetes_username(),
            tool: req.tool.clone(),
            server: req.server.clone(),
            target: req.target.clone(),
            user: req.user.clone(),
            tenant: req.tenant.clone(),
            reasons: reasons.iter().map(|r| r.message.clone()).collect(),
            approver_users: users,
            approver_groups: groups,
            created_at: now,
            expires_at,
            state: ApprovalState::Pending,
        };
        self.approvals.open(approval, now)
    }

    /// Commit the actual usage of an allowed call (reserve → commit), by an enforcement point
    /// trusted to commit for any principal.
    pub fn commit_usage(
        &self,
        decision_id: Uuid,
        actual: limits::Usage,
        now: DateTime<Utc>,
    ) -> Result<CommitReport, UsageError> {
        self.commit_usage_as(decision_id, actual, now, None)
    }

    /// [`Self::commit_usage`], by `principal` when it is `Some`: the decision must have been made
    /// for that principal id (decision ids are not secret, so an agent must not be able to spend
    /// another's budget by naming its decision).
    pub fn commit_usage_as(
        &self,
        decision_id: Uuid,
        actual: limits::Usage,
        now: DateTime<Utc>,
        principal: Option<&str>,
    ) -> Result<CommitReport, UsageError> {
        let (id, owner) = {
            let r = self
                .reservations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            r.map.get(&decision_id).cloned()
        }
        .ok_or(UsageError::UnknownDecision(decision_id))?;
        if principal.is_some_and(|p| p != &*owner) {
            return Err(UsageError::NotYours(decision_id));
        }
        Ok(self.limits.commit(id, actual, now)?)
    }

    /// The approval with this id, as of `now`.
    pub fn approval(&self, id: &str, now: DateTime<Utc>) -> Option<Approval> {
        self.approvals.get(id, now)
    }

    /// Review a pending approval as `reviewer` (member of `groups`): the reviewer must be allowed
    /// by the deciding policies' approval settings and must not be the agent itself.
    pub fn review(
        &self,
        id: &str,
        reviewer: &str,
        groups: &[String],
        verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError> {
        let approval = self
            .approvals
            .get(id, now)
            .ok_or_else(|| ApprovalError::NotFound(id.into()))?;
        approval.check_reviewer(reviewer, groups)?;
        self.approvals.review(id, reviewer, verdict, now)
    }

    /// Approve a pending approval (see [`review`](Self::review)).
    pub fn approve(
        &self,
        id: &str,
        reviewer: &str,
        groups: &[String],
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError> {
        self.review(id, reviewer, groups, Verdict::Approve, now)
    }
}
