//! The switching state machine, pure: given a runtime's spec, the revision its status calls
//! active and the revisions that exist (their `ControllerRevision`s), which revision plays which
//! role at how many replicas ([`assign_roles`]); given the revisions' readiness (and a smoke
//! test's outcome), what the switch does next ([`decide`]).
//!
//! State lives in the cluster, never in memory: the active revision in `status.activeRevision`,
//! every revision's spec snapshot in its `ControllerRevision`, and the progress of a switch in
//! annotations on the candidate's `ControllerRevision` ([`SWITCH_STARTED`], [`CANARY_STEP`],
//! [`STEP_STARTED`], [`FAILED`]). An operator restarted at any point resumes from there.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::jiff::Timestamp;
use overseer_crds::runway::{
    BackendKind, CandidateFailurePolicy, InferenceRuntimeSpec, SwitchType,
};
use runway_api::{RevisionReadiness, revision_hash, revision_name};

/// Annotation on a candidate's `ControllerRevision`: when the switch to it started (RFC 3339).
pub const SWITCH_STARTED: &str = "runway.overseer.dev/switch-started";
/// Annotation on a candidate's `ControllerRevision`: the canary step it is at (0-based).
pub const CANARY_STEP: &str = "runway.overseer.dev/canary-step";
/// Annotation on a candidate's `ControllerRevision`: when its current canary step started.
pub const STEP_STARTED: &str = "runway.overseer.dev/step-started";
/// Annotation on a failed candidate's `ControllerRevision`: why the switch to it failed. While
/// the spec still asks for that revision it is not retried; change the spec (or delete the
/// `ControllerRevision`) to try again.
pub const FAILED: &str = "runway.overseer.dev/failed";

/// How long a candidate may take when `switchStrategy.progressDeadline` is unset.
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// How soon to retry a smoke test that could not reach the candidate.
pub const SMOKE_RETRY: Duration = Duration::from_secs(5);

/// A revision as it exists in the cluster: its `ControllerRevision`.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedRevision {
    /// Revision name (`<runtime>-<hash>`), also the `ControllerRevision`'s name.
    pub name: String,
    /// Revision hash.
    pub hash: String,
    /// The spec the revision was minted from.
    pub spec: InferenceRuntimeSpec,
    /// The `ControllerRevision`'s `revision` number (higher is more recent).
    pub number: i64,
    /// Its annotations (switch state).
    pub annotations: BTreeMap<String, String>,
}

/// The part a revision plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The endpoint serves it.
    Active,
    /// A switch to it is in progress.
    Candidate,
    /// Kept at zero replicas for a rollback.
    History,
    /// A switch to it failed; kept (objects per `onFailure`) so it is not retried.
    Failed,
}

/// What one revision should look like after this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionPlan {
    /// Revision name.
    pub name: String,
    /// Revision hash.
    pub hash: String,
    /// The spec it renders from (its snapshot; the current spec for a new revision).
    pub spec: InferenceRuntimeSpec,
    /// `ControllerRevision.revision`.
    pub number: i64,
    /// Its role.
    pub role: Role,
    /// Replicas to render.
    pub replicas: i32,
    /// The switch-state annotations its `ControllerRevision` carries.
    pub annotations: BTreeMap<String, String>,
    /// Whether its backend objects exist (false: delete them, keep the `ControllerRevision`).
    pub objects: bool,
    /// Whether the `ControllerRevision` is new.
    pub minted: bool,
}

impl RevisionPlan {
    /// Backend of the revision.
    pub fn backend(&self) -> BackendKind {
        self.spec.engine.backend
    }
}

/// Every revision's role, and the revisions to delete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Roles {
    /// Revisions kept, active first, then the candidate, the failed one and history.
    pub revisions: Vec<RevisionPlan>,
    /// `ControllerRevision`s (with their objects) to delete: history beyond
    /// `revisionHistoryLimit`, and failed revisions the spec no longer asks for.
    pub delete: Vec<String>,
}

impl Roles {
    /// The revision in `role`, if any.
    pub fn get(&self, role: Role) -> Option<&RevisionPlan> {
        self.revisions.iter().find(|r| r.role == role)
    }
}

/// The revision name and hash the spec asks for.
pub fn desired_revision(runtime_name: &str, spec: &InferenceRuntimeSpec) -> (String, String) {
    let hash = revision_hash(spec);
    (revision_name(runtime_name, &hash), hash)
}

fn timestamp(value: Timestamp) -> String {
    value.to_string()
}

fn parse_time(annotations: &BTreeMap<String, String>, key: &str) -> Option<Timestamp> {
    annotations.get(key).and_then(|v| v.parse().ok())
}

/// Assign roles: the spec's revision is the active one when nothing is active (first
/// provisioning, no traffic to protect) or when it already is; otherwise it is the candidate of a
/// switch, unless a switch to it already failed. Every other revision is history, newest first,
/// up to `revisionHistoryLimit`; older ones and failed ones no longer asked for are deleted.
///
/// `active` is the revision `status.activeRevision` names (ignored when its `ControllerRevision`
/// is gone).
pub fn assign_roles(
    runtime_name: &str,
    spec: &InferenceRuntimeSpec,
    active: Option<&str>,
    observed: &[ObservedRevision],
    now: Timestamp,
) -> Roles {
    let (desired_name, desired_hash) = desired_revision(runtime_name, spec);
    let active = active.and_then(|a| observed.iter().find(|o| o.name == a));
    let desired = observed.iter().find(|o| o.name == desired_name);
    let next_number = observed.iter().map(|o| o.number).max().unwrap_or(0) + 1;
    let replicas = spec.replicas.max(0);
    let mut revisions = Vec::new();

    let new_desired = |role: Role, annotations: BTreeMap<String, String>, number: i64| {
        let (spec, minted) = match desired {
            Some(o) => (o.spec.clone(), false),
            None => (spec.clone(), true),
        };
        RevisionPlan {
            name: desired_name.clone(),
            hash: desired_hash.clone(),
            spec,
            number,
            role,
            replicas,
            annotations,
            objects: true,
            minted,
        }
    };

    match active {
        None => revisions.push(new_desired(
            Role::Active,
            BTreeMap::new(),
            desired.map_or(next_number, |d| d.number),
        )),
        Some(a) if a.name == desired_name => {
            revisions.push(new_desired(Role::Active, BTreeMap::new(), a.number))
        }
        Some(a) => {
            let failed = desired.is_some_and(|d| d.annotations.contains_key(FAILED));
            let recreate = spec.switch_strategy.type_ == SwitchType::Recreate;
            revisions.push(RevisionPlan {
                name: a.name.clone(),
                hash: a.hash.clone(),
                spec: a.spec.clone(),
                number: a.number,
                role: Role::Active,
                replicas: if recreate && !failed { 0 } else { replicas },
                annotations: BTreeMap::new(),
                objects: true,
                minted: false,
            });
            if failed {
                let keep = spec.switch_strategy.on_failure == CandidateFailurePolicy::Keep;
                let mut plan = new_desired(
                    Role::Failed,
                    desired.map(|d| d.annotations.clone()).unwrap_or_default(),
                    desired.map_or(next_number, |d| d.number),
                );
                plan.objects = keep;
                plan.replicas = if keep { replicas } else { 0 };
                revisions.push(plan);
            } else {
                // A switch in progress keeps its start, step and number; a new one (or a
                // rollback to a history revision) starts now with the next number.
                let in_progress = desired
                    .filter(|d| d.annotations.contains_key(SWITCH_STARTED))
                    .map(|d| (d.annotations.clone(), d.number));
                let (annotations, number) = in_progress.unwrap_or_else(|| {
                    (
                        BTreeMap::from([(SWITCH_STARTED.to_string(), timestamp(now))]),
                        next_number,
                    )
                });
                revisions.push(new_desired(Role::Candidate, annotations, number));
            }
        }
    }

    let mut rest: Vec<&ObservedRevision> = observed
        .iter()
        .filter(|o| revisions.iter().all(|r| r.name != o.name))
        .collect();
    rest.sort_by(|a, b| b.number.cmp(&a.number).then_with(|| a.name.cmp(&b.name)));
    let limit = usize::try_from(spec.revision_history_limit.max(0)).unwrap_or(0);
    let mut delete = Vec::new();
    let mut kept = 0;
    for o in rest {
        if o.annotations.contains_key(FAILED) || kept >= limit {
            delete.push(o.name.clone());
            continue;
        }
        kept += 1;
        revisions.push(RevisionPlan {
            name: o.name.clone(),
            hash: o.hash.clone(),
            spec: o.spec.clone(),
            number: o.number,
            role: Role::History,
            replicas: 0,
            annotations: BTreeMap::new(),
            objects: true,
            minted: false,
        });
    }
    Roles { revisions, delete }
}

/// The outcome of a smoke test against a candidate's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SmokeOutcome {
    /// The candidate answered as expected.
    Passed(String),
    /// The candidate answered wrongly: the switch fails.
    Failed(String),
    /// The candidate could not be reached (no ready pod, connection refused, timeout): retried
    /// until the progress deadline.
    Unreachable(String),
}

/// What the switch does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No switch in progress.
    Steady,
    /// The candidate is not ready yet; wait for a change, at the latest until `deadline`.
    WaitReady {
        /// When the switch fails if the candidate is still not ready.
        deadline: Timestamp,
        /// The candidate's readiness message.
        message: String,
    },
    /// The candidate is ready and a smoke test is configured: run it, then decide again.
    NeedSmoke,
    /// The smoke test could not reach the candidate: retry soon.
    RetrySmoke {
        /// Why.
        message: String,
    },
    /// Canary: hold the candidate at `weight` percent of the route until `until`.
    Canary {
        /// Step index.
        step: usize,
        /// Candidate's share of traffic, percent.
        weight: i32,
        /// When the step started.
        started: Timestamp,
        /// When the next step begins.
        until: Timestamp,
    },
    /// Move the endpoint to the candidate, then scale the old revision down.
    Cutover,
    /// The switch failed: traffic stays on the active revision.
    Fail {
        /// Condition/Event reason.
        reason: &'static str,
        /// What happened.
        message: String,
    },
}

/// Reasons of a failed switch.
pub mod reason {
    /// The candidate was not ready within `progressDeadline`.
    pub const DEADLINE: &str = "ProgressDeadlineExceeded";
    /// The backend reported a failure waiting will not fix.
    pub const CANDIDATE_FAILED: &str = "CandidateFailed";
    /// The smoke test failed.
    pub const SMOKE_FAILED: &str = "SmokeTestFailed";
}

/// The progress deadline of a switch.
pub fn progress_deadline(spec: &InferenceRuntimeSpec) -> Duration {
    match spec.switch_strategy.progress_deadline {
        Some(d) if !d.is_negative() => d.into(),
        Some(_) => Duration::ZERO,
        None => DEFAULT_PROGRESS_DEADLINE,
    }
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    Timestamp::from_second(t.as_second().saturating_add(secs)).unwrap_or(Timestamp::MAX)
}

/// Decide the next step of the switch to `roles`' candidate from its `readiness`, the smoke
/// test's outcome (once [`Step::NeedSmoke`] asked for it) and `now`. The current spec's strategy
/// applies (a strategy edited mid-switch takes effect at once).
pub fn decide(
    spec: &InferenceRuntimeSpec,
    roles: &Roles,
    candidate_readiness: Option<&RevisionReadiness>,
    smoke: Option<&SmokeOutcome>,
    now: Timestamp,
) -> Step {
    let Some(candidate) = roles.get(Role::Candidate) else {
        return Step::Steady;
    };
    let started = parse_time(&candidate.annotations, SWITCH_STARTED).unwrap_or(now);
    let deadline = plus(started, progress_deadline(spec));
    let readiness = candidate_readiness.cloned().unwrap_or_default();
    if readiness.failed {
        return Step::Fail {
            reason: reason::CANDIDATE_FAILED,
            message: format!("candidate {} failed: {}", candidate.name, readiness.message),
        };
    }
    // Once a canary step has started the candidate already passed its smoke test.
    let canary_step = candidate
        .annotations
        .get(CANARY_STEP)
        .and_then(|s| s.parse::<usize>().ok());
    if !readiness.ready {
        if now >= deadline && canary_step.is_none() {
            return Step::Fail {
                reason: reason::DEADLINE,
                message: format!(
                    "candidate {} was not ready within the progress deadline ({}s): {}",
                    candidate.name,
                    progress_deadline(spec).as_secs(),
                    readiness.message
                ),
            };
        }
        return Step::WaitReady {
            deadline,
            message: readiness.message,
        };
    }
    if canary_step.is_none() && spec.switch_strategy.smoke_test.is_some() {
        match smoke {
            None => return Step::NeedSmoke,
            Some(SmokeOutcome::Passed(_)) => {}
            Some(SmokeOutcome::Failed(message)) => {
                return Step::Fail {
                    reason: reason::SMOKE_FAILED,
                    message: format!(
                        "smoke test of candidate {} failed: {message}",
                        candidate.name
                    ),
                };
            }
            Some(SmokeOutcome::Unreachable(message)) => {
                if now >= deadline {
                    return Step::Fail {
                        reason: reason::SMOKE_FAILED,
                        message: format!(
                            "smoke test of candidate {} could not reach it before the progress deadline: {message}",
                            candidate.name
                        ),
                    };
                }
                return Step::RetrySmoke {
                    message: message.clone(),
                };
            }
        }
    }
    let steps = match spec.switch_strategy.type_ {
        SwitchType::Canary if spec.endpoint.gateway.is_some() => spec
            .switch_strategy
            .canary_steps
            .as_deref()
            .unwrap_or_default(),
        _ => &[],
    };
    let (mut step, mut step_started) = match canary_step {
        Some(step) => (
            step,
            parse_time(&candidate.annotations, STEP_STARTED).unwrap_or(now),
        ),
        None => (0, now),
    };
    loop {
        let Some(current) = steps.get(step) else {
            return Step::Cutover;
        };
        let pause: Duration = if current.pause.is_negative() {
            Duration::ZERO
        } else {
            current.pause.into()
        };
        let until = plus(step_started, pause);
        if now < until {
            return Step::Canary {
                step,
                weight: current.weight.clamp(0, 100),
                started: step_started,
                until,
            };
        }
        step += 1;
        step_started = until.min(now);
    }
}

/// The annotations the candidate's `ControllerRevision` carries after `step`.
pub fn candidate_annotations(
    current: &BTreeMap<String, String>,
    step: &Step,
    now: Timestamp,
) -> BTreeMap<String, String> {
    let mut out = current.clone();
    match step {
        Step::Canary { step, started, .. } => {
            out.insert(CANARY_STEP.into(), step.to_string());
            out.insert(STEP_STARTED.into(), timestamp(*started));
        }
        Step::Fail { reason, .. } => {
            out.insert(FAILED.into(), (*reason).to_string());
            out.insert(STEP_STARTED.into(), timestamp(now));
            out.remove(CANARY_STEP);
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use overseer_crds::runway::{
        CanaryStep, EngineSpec, GatewayRef, ModelSpec, Profile, SmokeTest, SmokeTestType,
    };

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_900_000_000 + secs).expect("timestamp")
    }

    fn spec(backend: BackendKind) -> InferenceRuntimeSpec {
        InferenceRuntimeSpec {
            model: ModelSpec {
                uri: "hf://Qwen/Qwen3-0.6B".into(),
                ..Default::default()
            },
            engine: EngineSpec {
                backend,
                ..Default::default()
            },
            profile: Profile::Cpu,
            replicas: 2,
            revision_history_limit: 1,
            ..Default::default()
        }
    }

    fn observed(spec: &InferenceRuntimeSpec, number: i64) -> ObservedRevision {
        let (name, hash) = desired_revision("chat", spec);
        ObservedRevision {
            name,
            hash,
            spec: spec.clone(),
            number,
            annotations: BTreeMap::new(),
        }
    }

    fn ready() -> RevisionReadiness {
        RevisionReadiness {
            ready: true,
            replicas: 2,
            ready_replicas: 2,
            message: "ok".into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_revision_is_active_at_once() {
        let s = spec(BackendKind::Vllm);
        let roles = assign_roles("chat", &s, None, &[], t(0));
        assert_eq!(roles.revisions.len(), 1);
        let r = &roles.revisions[0];
        assert_eq!(r.role, Role::Active);
        assert!(r.minted);
        assert_eq!(r.number, 1);
        assert_eq!(r.replicas, 2);
        assert!(r.annotations.is_empty());
        assert_eq!(decide(&s, &roles, None, None, t(0)), Step::Steady);
    }

    #[test]
    fn a_changed_backend_mints_a_candidate_next_to_the_active_one() {
        let old = spec(BackendKind::Vllm);
        let new = spec(BackendKind::Kserve);
        let active = observed(&old, 1);
        let roles = assign_roles(
            "chat",
            &new,
            Some(&active.name),
            std::slice::from_ref(&active),
            t(5),
        );
        assert_eq!(roles.revisions.len(), 2);
        assert_eq!(roles.revisions[0].name, active.name);
        assert_eq!(roles.revisions[0].role, Role::Active);
        assert_eq!(
            roles.revisions[0].replicas, 2,
            "blue-green keeps the active serving"
        );
        let candidate = roles.get(Role::Candidate).expect("candidate");
        assert!(candidate.minted);
        assert_eq!(candidate.number, 2);
        assert_eq!(candidate.backend(), BackendKind::Kserve);
        assert_eq!(
            candidate
                .annotations
                .get(SWITCH_STARTED)
                .map(String::as_str),
            Some(t(5).to_string().as_str())
        );
        assert!(roles.delete.is_empty());
    }

    #[test]
    fn recreate_scales_the_active_down_first() {
        let old = spec(BackendKind::Vllm);
        let mut new = spec(BackendKind::Kserve);
        new.switch_strategy.type_ = SwitchType::Recreate;
        let active = observed(&old, 1);
        let roles = assign_roles("chat", &new, Some(&active.name.clone()), &[active], t(0));
        assert_eq!(roles.get(Role::Active).map(|r| r.replicas), Some(0));
        assert_eq!(roles.get(Role::Candidate).map(|r| r.replicas), Some(2));
    }

    #[test]
    fn a_switch_in_progress_keeps_its_start_and_number() {
        let old = spec(BackendKind::Vllm);
        let new = spec(BackendKind::Kserve);
        let active = observed(&old, 1);
        let mut cand = observed(&new, 2);
        cand.annotations
            .insert(SWITCH_STARTED.into(), t(0).to_string());
        let roles = assign_roles(
            "chat",
            &new,
            Some(&active.name.clone()),
            &[active, cand],
            t(100),
        );
        let c = roles.get(Role::Candidate).expect("candidate");
        assert!(!c.minted);
        assert_eq!(c.number, 2);
        assert_eq!(c.annotations[SWITCH_STARTED], t(0).to_string());
    }

    #[test]
    fn history_is_kept_to_the_limit_newest_first() {
        let s1 = spec(BackendKind::Vllm);
        let mut s2 = s1.clone();
        s2.engine.args.insert("max-model-len".into(), "2048".into());
        let mut s3 = s1.clone();
        s3.engine.args.insert("max-model-len".into(), "4096".into());
        let r1 = observed(&s1, 1);
        let r2 = observed(&s2, 2);
        let r3 = observed(&s3, 3);
        let roles = assign_roles(
            "chat",
            &s3,
            Some(&r3.name),
            &[r1.clone(), r2.clone(), r3.clone()],
            t(0),
        );
        assert_eq!(roles.revisions.len(), 2);
        assert_eq!(roles.revisions[1].name, r2.name);
        assert_eq!(roles.revisions[1].role, Role::History);
        assert_eq!(roles.revisions[1].replicas, 0);
        assert_eq!(roles.delete, vec![r1.name.clone()]);

        let mut none = s3.clone();
        none.revision_history_limit = 0;
        let roles = assign_roles("chat", &none, Some(&r3.name.clone()), &[r1, r2, r3], t(0));
        assert_eq!(roles.revisions.len(), 1);
        assert_eq!(roles.delete.len(), 2);
    }

    #[test]
    fn rolling_back_reuses_a_history_revision_with_a_fresh_start() {
        let s1 = spec(BackendKind::Vllm);
        let s2 = spec(BackendKind::Kserve);
        let r1 = observed(&s1, 1);
        let r2 = observed(&s2, 2);
        let roles = assign_roles("chat", &s1, Some(&r2.name.clone()), &[r1.clone(), r2], t(9));
        let c = roles.get(Role::Candidate).expect("candidate");
        assert_eq!(c.name, r1.name);
        assert!(!c.minted);
        assert_eq!(c.number, 3, "a rollback is the newest revision");
        assert_eq!(c.annotations[SWITCH_STARTED], t(9).to_string());
    }

    #[test]
    fn a_failed_candidate_is_not_retried_and_cleaned_per_policy() {
        let old = spec(BackendKind::Vllm);
        let mut new = spec(BackendKind::Kserve);
        let active = observed(&old, 1);
        let mut failed = observed(&new, 2);
        failed
            .annotations
            .insert(FAILED.into(), reason::DEADLINE.into());
        let roles = assign_roles(
            "chat",
            &new,
            Some(&active.name),
            &[active.clone(), failed.clone()],
            t(0),
        );
        assert!(roles.get(Role::Candidate).is_none());
        let f = roles.get(Role::Failed).expect("failed");
        assert!(!f.objects, "Delete policy removes its objects");
        assert_eq!(roles.get(Role::Active).map(|r| r.replicas), Some(2));
        assert_eq!(decide(&new, &roles, None, None, t(0)), Step::Steady);

        new.switch_strategy.on_failure = CandidateFailurePolicy::Keep;
        let roles = assign_roles(
            "chat",
            &new,
            Some(&active.name),
            &[active.clone(), failed.clone()],
            t(0),
        );
        let f = roles.get(Role::Failed).expect("failed");
        assert!(f.objects);
        assert_eq!(f.replicas, 2);

        // Asking for another revision deletes the failed one.
        let mut other = new.clone();
        other.engine.backend = BackendKind::Vllm;
        other.engine.args.insert("seed".into(), "1".into());
        let roles = assign_roles(
            "chat",
            &other,
            Some(&active.name.clone()),
            &[active, failed.clone()],
            t(0),
        );
        assert_eq!(roles.delete, vec![failed.name]);
    }

    fn switching(new: &InferenceRuntimeSpec, started: i64) -> Roles {
        let old = spec(BackendKind::Vllm);
        let active = observed(&old, 1);
        let mut cand = observed(new, 2);
        cand.annotations
            .insert(SWITCH_STARTED.into(), t(started).to_string());
        assign_roles(
            "chat",
            new,
            Some(&active.name.clone()),
            &[active, cand],
            t(started),
        )
    }

    #[test]
    fn a_ready_candidate_is_cut_over_and_an_unready_one_waits_until_the_deadline() {
        let mut new = spec(BackendKind::Kserve);
        new.switch_strategy.progress_deadline = Some("10m".parse().expect("duration"));
        let roles = switching(&new, 0);
        let waiting = RevisionReadiness {
            message: "waiting".into(),
            ..Default::default()
        };
        assert_eq!(
            decide(&new, &roles, Some(&waiting), None, t(60)),
            Step::WaitReady {
                deadline: t(600),
                message: "waiting".into()
            }
        );
        assert!(matches!(
            decide(&new, &roles, Some(&waiting), None, t(600)),
            Step::Fail {
                reason: reason::DEADLINE,
                ..
            }
        ));
        assert_eq!(
            decide(&new, &roles, Some(&ready()), None, t(60)),
            Step::Cutover
        );
        let broken = RevisionReadiness {
            failed: true,
            message: "crash".into(),
            ..Default::default()
        };
        assert!(matches!(
            decide(&new, &roles, Some(&broken), None, t(1)),
            Step::Fail {
                reason: reason::CANDIDATE_FAILED,
                ..
            }
        ));
    }

    #[test]
    fn the_smoke_test_gates_the_cutover() {
        let mut new = spec(BackendKind::Kserve);
        new.switch_strategy.smoke_test = Some(SmokeTest {
            type_: SmokeTestType::Models,
        });
        let roles = switching(&new, 0);
        assert_eq!(
            decide(&new, &roles, Some(&ready()), None, t(1)),
            Step::NeedSmoke
        );
        let pass = SmokeOutcome::Passed("ok".into());
        assert_eq!(
            decide(&new, &roles, Some(&ready()), Some(&pass), t(1)),
            Step::Cutover
        );
        let fail = SmokeOutcome::Failed("no model".into());
        assert!(matches!(
            decide(&new, &roles, Some(&ready()), Some(&fail), t(1)),
            Step::Fail {
                reason: reason::SMOKE_FAILED,
                ..
            }
        ));
        let down = SmokeOutcome::Unreachable("refused".into());
        assert_eq!(
            decide(&new, &roles, Some(&ready()), Some(&down), t(1)),
            Step::RetrySmoke {
                message: "refused".into()
            }
        );
        assert!(matches!(
            decide(&new, &roles, Some(&ready()), Some(&down), t(3600)),
            Step::Fail { .. }
        ));
    }

    fn canary_spec() -> InferenceRuntimeSpec {
        let mut new = spec(BackendKind::Kserve);
        new.endpoint.gateway = Some(GatewayRef {
            name: "gw".into(),
            ..Default::default()
        });
        new.switch_strategy.type_ = SwitchType::Canary;
        new.switch_strategy.canary_steps = Some(vec![
            CanaryStep {
                weight: 10,
                pause: "1m".parse().expect("duration"),
            },
            CanaryStep {
                weight: 50,
                pause: "2m".parse().expect("duration"),
            },
        ]);
        new
    }

    #[test]
    fn canary_walks_its_steps_then_cuts_over() {
        let new = canary_spec();
        let mut roles = switching(&new, 0);
        let step = decide(&new, &roles, Some(&ready()), None, t(10));
        assert_eq!(
            step,
            Step::Canary {
                step: 0,
                weight: 10,
                started: t(10),
                until: t(70)
            }
        );
        // Persist the step like the reconciler does, then come back later.
        let candidate = roles
            .revisions
            .iter_mut()
            .find(|r| r.role == Role::Candidate)
            .expect("candidate");
        candidate.annotations = candidate_annotations(&candidate.annotations, &step, t(10));
        assert!(matches!(
            decide(&new, &roles, Some(&ready()), None, t(69)),
            Step::Canary { step: 0, .. }
        ));
        assert_eq!(
            decide(&new, &roles, Some(&ready()), None, t(70)),
            Step::Canary {
                step: 1,
                weight: 50,
                started: t(70),
                until: t(190)
            }
        );
        assert_eq!(
            decide(&new, &roles, Some(&ready()), None, t(190)),
            Step::Cutover
        );
        // A candidate that stops being ready mid-canary waits (its weight is withdrawn).
        assert!(matches!(
            decide(
                &new,
                &roles,
                Some(&RevisionReadiness::default()),
                None,
                t(5000)
            ),
            Step::WaitReady { .. }
        ));
    }

    #[test]
    fn failure_annotations_record_the_reason() {
        let out = candidate_annotations(
            &BTreeMap::from([(SWITCH_STARTED.to_string(), t(0).to_string())]),
            &Step::Fail {
                reason: reason::SMOKE_FAILED,
                message: "x".into(),
            },
            t(5),
        );
        assert_eq!(out[FAILED], reason::SMOKE_FAILED);
        assert_eq!(out[SWITCH_STARTED], t(0).to_string());
    }
}
