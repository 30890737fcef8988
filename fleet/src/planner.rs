//! The rollout planner: a pure function from a `FleetRollout`, its member clusters and what was
//! observed on them to the next status and the actions to take.
//!
//! # Contract with the caller (the operator's apply shell)
//! - Call [`plan`] on every reconcile (level-triggered), with `now`, the rollout's current status
//!   and fresh observations. Execute the returned [`Action`]s, then write [`Plan::status`].
//! - [`Action::Apply`] and [`Action::Rollback`] are idempotent server-side applies. The planner
//!   emits each once per cluster and revision and then waits for an observation: report, per
//!   cluster, the health of the objects of the revision last applied to it
//!   ([`ClusterObservation`]); a failed apply is a `Failed` observation with the error as message.
//! - [`Action::CreateApproval`] creates (idempotently, by its deterministic name) a
//!   `FleetApproval`; it is emitted again while the approval is awaited and not yet observed.
//! - All progress lives in the status: feeding the produced status back with the same inputs
//!   yields no new Apply, Rollback, CreateApproval, Prune or Event, so a restarted operator never
//!   repeats approvals or bake time already served.
//!
//! # Semantics
//! - **Targets**: clusters matching `targets.clusterSelector` plus those named in
//!   `targets.clusterNames`. Each belongs to the first stage whose selector matches (no selector:
//!   all remaining); clusters no stage takes, and named clusters that are not registered, are
//!   reported in the `TargetsResolved` condition and are never updated.
//! - **Order** within a stage: by the `sortingLabelKey` label, as integers when both values
//!   parse, else as text; to keep the order total, values that parse as integers come before
//!   other values, and clusters without the label come last; ties by name.
//! - **`maxConcurrency`** (default 1): clusters applied but not yet healthy, failed or
//!   unreachable. A percentage of the stage's clusters is rounded down (Kubernetes' rule for
//!   `maxUnavailable`, as Azure Fleet does for this field), with a minimum of 1; an integer must be
//!   at least 1; more than the stage holds means all of them.
//! - **`maxUnavailable`** (default 0): stage clusters that may be failed, unreachable or paused
//!   while the gate still holds; a percentage is rounded down. More *failed* clusters than that
//!   fails the stage at once; unreachable or paused ones only hold the gate (until the timeout).
//! - **Tasks** run in order, before the stage applies anything and after its gate passed.
//!   `Approval` waits for a `FleetApproval` for this rollout, stage, `when` and target revision
//!   (approvals for another revision are ignored); a rejection fails the stage. `TimedWait` waits
//!   `waitTime` from its recorded start.
//! - **Gate**: every stage cluster is healthy (by the caller's observation) or unavailable within
//!   `maxUnavailable`, and nothing is pending or in flight. It must then hold for `minBakeTime`;
//!   a flap clears `gateSatisfiedSince` and the bake starts again. `timeout` (default 30m),
//!   counted from the stage's `startTime` (set when the stage starts applying), fails the stage
//!   when the gate does not hold by then; it is not checked while the gate holds (baking).
//!   Once the gate passed it is no longer evaluated for that stage.
//! - **Failure** (`failurePolicy`): `Pause` stops in phase `Failed`; `Continue` marks the stage
//!   `Failed` and goes on (the rollout ends `Failed`, not `Succeeded`); `Rollback` re-applies
//!   `lastSucceededRevision` to every cluster whose applied revision differs from it, stage by
//!   stage in reverse order (within `maxConcurrency`), and ends `RolledBack`. Unreachable or paused
//!   clusters are skipped and named in an Event. Without a last succeeded revision it behaves as
//!   `Pause`.
//! - **`state`**: `Pause` holds everything (no applies, no task or stage transitions, no
//!   timeout). On resume the current stage's timeout and bake clocks start again (a `TimedWait`
//!   keeps counting wall-clock time from its start), and a stage that failed under
//!   `failurePolicy: Pause` is retried: its failed clusters are applied again (a rejected approval
//!   stays rejected). `Abandon` ends the rollout of this revision for good (phase `Abandoned`),
//!   leaving members as they are; a new revision starts a new rollout.
//! - **Supersede**: a new target revision while the rollout is not finished records the old one
//!   as `Superseded` in `history` and starts again from the first stage.
//! - A finished (`Succeeded`) rollout still applies its revision to clusters that join later.
//!   Clusters that leave the targets after being updated are pruned when `applyStrategy.prune`
//!   (default true) is set, but not while `state` is `Pause` or `Abandon`: such a cluster stays
//!   in the status (and its objects on the member) until the rollout executes again.
//! - **Conditions**: `Ready` is `True` only when the target revision completed every stage;
//!   `Reconciling` and `Progressing` are `True` while it moves (kstatus reads `Reconciling`);
//!   `Stalled` is `True` when it failed, rolled back, was abandoned, or the spec is invalid.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::{
    apimachinery::pkg::{
        apis::meta::v1::{Condition, LabelSelector, Time},
        util::intstr::IntOrString,
    },
    jiff,
};
use kube::core::{Selector, SelectorExt};
use overseer_crds::fleet::{
    ClusterRolloutStatus, FailurePolicy, FleetApproval, FleetDecision, FleetRolloutSpec,
    FleetRolloutStatus, RevisionHistory, RolloutPhase, RolloutState, RolloutSummary, Stage,
    StageStatus, StageTaskType, TaskStatus, TaskWhen,
};

use crate::health::{Health, HealthStatus};

/// A member cluster as the planner sees it (from its `FleetCluster`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberCluster {
    /// `FleetCluster` name.
    pub name: String,
    /// `FleetCluster` labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the last heartbeat reached it.
    pub reachable: bool,
    /// `spec.paused`: deliveries are frozen.
    pub paused: bool,
}

/// What was last observed on a cluster: the health of the objects of the revision last applied
/// to it (by an `Apply` or a `Rollback`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterObservation {
    /// The revision the objects belong to.
    pub revision: String,
    /// Their combined health (see [`crate::health::GateEvaluator::cluster_health`]).
    pub health: Health,
}

/// Everything one planning step reads.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// Name of the `FleetRollout` (approvals are matched and named with it).
    pub rollout: &'a str,
    /// `metadata.generation` of the rollout.
    pub generation: Option<i64>,
    /// The rollout's spec.
    pub spec: &'a FleetRolloutSpec,
    /// Revision (digest) of the rendered source.
    pub target_revision: &'a str,
    /// All registered member clusters.
    pub clusters: &'a [MemberCluster],
    /// The rollout's current status (default when new).
    pub status: &'a FleetRolloutStatus,
    /// Observations by cluster name.
    pub observations: &'a HashMap<String, ClusterObservation>,
    /// `FleetApproval`s in the rollout's namespace (others' are ignored).
    pub approvals: &'a [FleetApproval],
    /// The current time.
    pub now: DateTime<Utc>,
}

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Progress.
    Normal,
    /// Something needs attention.
    Warning,
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Server-side apply `revision` (with the cluster's overrides) to `cluster`, pruning objects
    /// of earlier revisions that left the source when `applyStrategy.prune` is set.
    Apply {
        /// Cluster name.
        cluster: String,
        /// Revision to apply.
        revision: String,
    },
    /// Re-apply an earlier `revision` to `cluster` (automatic rollback).
    Rollback {
        /// Cluster name.
        cluster: String,
        /// Revision to restore.
        revision: String,
    },
    /// Create the `FleetApproval` `name` (if absent) for the stage's task.
    CreateApproval {
        /// Deterministic name, see [`approval_name`].
        name: String,
        /// Stage name.
        stage: String,
        /// Before or after the stage.
        when: TaskWhen,
        /// Revision being approved.
        revision: String,
    },
    /// Delete every object this rollout applied to `cluster`, which left the targets.
    Prune {
        /// Cluster name.
        cluster: String,
    },
    /// Record an Event on the rollout.
    Event {
        /// Normal or Warning.
        type_: EventType,
        /// CamelCase reason.
        reason: String,
        /// Human-readable message.
        message: String,
    },
    /// Plan again after this long (the earliest timer: bake, wait, timeout).
    RequeueAfter(std::time::Duration),
}

/// The result of one planning step.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The status to write.
    pub status: FleetRolloutStatus,
    /// What to do, in order.
    pub actions: Vec<Action>,
}

/// A spec the planner cannot execute (reported in the `Stalled` condition, reason `InvalidSpec`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A label selector does not parse.
    #[error("{field}: invalid label selector: {message}")]
    Selector {
        /// Where it is.
        field: String,
        /// Why.
        message: String,
    },
    /// An int-or-percent value is invalid.
    #[error("{field}: {message}")]
    IntOrPercent {
        /// Where it is.
        field: String,
        /// Why.
        message: String,
    },
    /// Two stages have the same name.
    #[error("stages: duplicate stage name {0:?}")]
    DuplicateStage(String),
}

impl PlanError {
    /// A short label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            PlanError::Selector { .. } => "InvalidSelector",
            PlanError::IntOrPercent { .. } => "InvalidIntOrPercent",
            PlanError::DuplicateStage(_) => "DuplicateStage",
        }
    }
}

/// Default stage timeout.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Resolves an int-or-percent against `total` (Kubernetes' `GetScaledValueFromIntOrPercent`):
/// an integer as is, `"N%"` as `total * N / 100` rounded up or down. Negative values and strings
/// that are not a percentage are errors.
pub fn scaled_value(value: &IntOrString, total: usize, round_up: bool) -> Result<usize, String> {
    match value {
        IntOrString::Int(i) => {
            usize::try_from(*i).map_err(|_| format!("must not be negative, got {i}"))
        }
        IntOrString::String(s) => {
            let pct: u64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    format!("{s:?} is neither an integer nor a percentage like \"25%\"")
                })?;
            let scaled = (total as u64).saturating_mul(pct);
            let v = if round_up {
                scaled.div_ceil(100)
            } else {
                scaled / 100
            };
            Ok(usize::try_from(v).unwrap_or(usize::MAX))
        }
    }
}

/// The `FleetApproval` name for a stage task: `<rollout>-<stage>-<before|after>-<revision>`, the
/// revision shortened to its first 12 lowercase alphanumerics (after any `algo:` prefix), the
/// rollout part shortened so the name fits 253 characters.
pub fn approval_name(rollout: &str, stage: &str, when: TaskWhen, revision: &str) -> String {
    let rev = revision.rsplit_once(':').map_or(revision, |(_, r)| r);
    let rev: String = rev
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect();
    let when = match when {
        TaskWhen::Before => "before",
        TaskWhen::After => "after",
    };
    let suffix = format!("-{stage}-{when}-{rev}");
    let room = 253usize.saturating_sub(suffix.len());
    let mut prefix: String = rollout.chars().take(room).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

/// Runs one planning step.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut p = Planner {
        input,
        st: input.status.clone(),
        actions: Vec::new(),
        requeue: None,
        problems: Vec::new(),
        members: input
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c))
            .collect(),
        limits: Vec::new(),
    };
    match compile(input.spec) {
        Ok(compiled) => p.run(&compiled),
        Err(e) => p.invalid(&e),
    }
    p.finish()
}

// ---------------------------------------------------------------------------------------------
// Compiled spec
// ---------------------------------------------------------------------------------------------

struct Compiled {
    targets: Option<Selector>,
    stages: Vec<Option<Selector>>,
}

fn selector(s: &LabelSelector, field: String) -> Result<Selector, PlanError> {
    Selector::try_from(s.clone()).map_err(|e| PlanError::Selector {
        field,
        message: e.to_string(),
    })
}

fn compile(spec: &FleetRolloutSpec) -> Result<Compiled, PlanError> {
    let mut seen = HashSet::new();
    for s in &spec.stages {
        if !seen.insert(s.name.as_str()) {
            return Err(PlanError::DuplicateStage(s.name.clone()));
        }
        for (field, v) in [
            ("maxConcurrency", &s.max_concurrency),
            ("maxUnavailable", &s.max_unavailable),
        ] {
            if let Some(v) = v {
                let at = |message| PlanError::IntOrPercent {
                    field: format!("stages[{}].{field}", s.name),
                    message,
                };
                scaled_value(v, 100, false).map_err(at)?;
                if field == "maxConcurrency" && *v == IntOrString::Int(0) {
                    return Err(at("must be at least 1".into()));
                }
            }
        }
    }
    Ok(Compiled {
        targets: spec
            .targets
            .cluster_selector
            .as_ref()
            .map(|s| selector(s, "targets.clusterSelector".into()))
            .transpose()?,
        stages: spec
            .stages
            .iter()
            .map(|s| {
                s.cluster_selector
                    .as_ref()
                    .map(|sel| selector(sel, format!("stages[{}].clusterSelector", s.name)))
                    .transpose()
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Position of a cluster within its stage by the sorting label.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey<'a> {
    Int(i64),
    Text(&'a str),
    Missing,
}

/// Stage limits resolved against the stage's cluster count.
#[derive(Clone, Copy)]
struct Limits {
    max_concurrency: usize,
    max_unavailable: usize,
}

fn limits(stage: &Stage, total: usize) -> Limits {
    // Validated in `compile`; an error here cannot happen, fall back to the defaults.
    let max_concurrency = stage
        .max_concurrency
        .as_ref()
        .and_then(|v| scaled_value(v, total, false).ok())
        .unwrap_or(1)
        .max(1);
    let max_unavailable = stage
        .max_unavailable
        .as_ref()
        .and_then(|v| scaled_value(v, total, false).ok())
        .unwrap_or(0)
        .min(total);
    Limits {
        max_concurrency,
        max_unavailable,
    }
}

// ---------------------------------------------------------------------------------------------
// Phase names
// ---------------------------------------------------------------------------------------------

mod cp {
    //! Cluster phases.
    pub const PENDING: &str = "Pending";
    pub const APPLYING: &str = "Applying";
    pub const APPLIED: &str = "Applied";
    pub const HEALTHY: &str = "Healthy";
    pub const FAILED: &str = "Failed";
    pub const UNREACHABLE: &str = "Unreachable";
    pub const PAUSED: &str = "Paused";
    pub const ROLLING_BACK: &str = "RollingBack";
    pub const ROLLED_BACK: &str = "RolledBack";
}

mod sp {
    //! Stage phases.
    pub const PENDING: &str = "Pending";
    pub const WAITING_FOR_APPROVAL: &str = "WaitingForApproval";
    pub const WAITING: &str = "Waiting";
    pub const PROGRESSING: &str = "Progressing";
    pub const BAKING: &str = "Baking";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";
    pub const ROLLING_BACK: &str = "RollingBack";
    pub const ROLLED_BACK: &str = "RolledBack";
}

mod tp {
    //! Task phases.
    pub const PENDING: &str = "Pending";
    pub const WAITING: &str = "Waiting";
    pub const COMPLETED: &str = "Completed";
    pub const REJECTED: &str = "Rejected";
}

fn phase_name(p: RolloutPhase) -> &'static str {
    match p {
        RolloutPhase::Pending => "Pending",
        RolloutPhase::Progressing => "Progressing",
        RolloutPhase::WaitingForApproval => "WaitingForApproval",
        RolloutPhase::Paused => "Paused",
        RolloutPhase::Succeeded => "Succeeded",
        RolloutPhase::Failed => "Failed",
        RolloutPhase::RollingBack => "RollingBack",
        RolloutPhase::RolledBack => "RolledBack",
        RolloutPhase::Abandoned => "Abandoned",
    }
}

fn is_terminal(p: Option<RolloutPhase>) -> bool {
    matches!(
        p,
        Some(
            RolloutPhase::Succeeded
                | RolloutPhase::Failed
                | RolloutPhase::RolledBack
                | RolloutPhase::Abandoned
        )
    )
}

fn when_name(w: TaskWhen) -> &'static str {
    match w {
        TaskWhen::Before => "Before",
        TaskWhen::After => "After",
    }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn to_chrono(d: Option<&kube::core::Duration>, default: std::time::Duration) -> chrono::Duration {
    let d = match d {
        Some(d) if d.is_negative() => std::time::Duration::ZERO,
        Some(d) => std::time::Duration::from(*d),
        None => default,
    };
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Lists names for messages, at most five.
fn names<'a>(it: impl IntoIterator<Item = &'a str>) -> String {
    let all: Vec<&str> = it.into_iter().collect();
    let mut s = all.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if all.len() > 5 {
        s.push_str(&format!(" and {} more", all.len() - 5));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The planner
// ---------------------------------------------------------------------------------------------

/// What a stage step ended in.
enum StageOutcome {
    /// Waiting for something; stop here.
    Blocked,
    /// The stage finished (succeeded, or failed under `Continue`); go on.
    Done,
    /// The rollout stopped (failure under `Pause`, or rollback started).
    Stopped,
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    st: FleetRolloutStatus,
    actions: Vec<Action>,
    requeue: Option<chrono::Duration>,
    /// Problems with targets, for the `TargetsResolved` condition.
    problems: Vec<(&'static str, String)>,
    members: HashMap<&'a str, &'a MemberCluster>,
    /// Per stage, resolved against its current cluster count.
    limits: Vec<Limits>,
}

impl<'a> Planner<'a> {
    fn now(&self) -> DateTime<Utc> {
        self.input.now
    }

    fn now_str(&self) -> String {
        fmt_time(self.input.now)
    }

    fn target(&self) -> &'a str {
        self.input.target_revision
    }

    fn event(&mut self, type_: EventType, reason: &str, message: String) {
        self.actions.push(Action::Event {
            type_,
            reason: reason.into(),
            message,
        });
    }

    fn requeue_in(&mut self, d: chrono::Duration) {
        let d = d.max(chrono::Duration::seconds(1));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    /// Parses a recorded timestamp; an unreadable one counts as now (the clock starts again).
    fn parse_time(&self, s: Option<&str>) -> DateTime<Utc> {
        s.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(self.input.now, |t| t.with_timezone(&Utc))
    }

    fn push_history(&mut self, revision: &str, result: &str) {
        self.st.history.insert(
            0,
            RevisionHistory {
                revision: revision.to_string(),
                result: result.to_string(),
                completed_at: Some(self.now_str()),
            },
        );
    }

    fn invalid(&mut self, e: &PlanError) {
        let message = format!("invalid spec: {e}");
        let old = self
            .input
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Stalled");
        if !old.is_some_and(|c| c.status == "True" && c.message == message) {
            self.event(EventType::Warning, "InvalidSpec", message.clone());
        }
        self.problems.push(("InvalidSpec", message));
    }

    fn run(&mut self, compiled: &Compiled) {
        let spec = self.input.spec;
        let assigned = self.assign(compiled);
        self.start_revision_if_new();
        self.sync_stages(&assigned);
        self.limits = spec
            .stages
            .iter()
            .zip(&self.st.stages)
            .map(|(s, ss)| limits(s, ss.clusters.len()))
            .collect();
        let total: usize = self.st.stages.iter().map(|s| s.clusters.len()).sum();

        if spec.state == RolloutState::Abandon {
            if !is_terminal(self.st.phase) {
                self.st.phase = Some(RolloutPhase::Abandoned);
                self.push_history(self.target(), "Abandoned");
                self.event(
                    EventType::Warning,
                    "Abandoned",
                    format!("rollout of revision {} abandoned", self.target()),
                );
            }
            self.refresh_clusters();
            return;
        }
        let stopped_at_failure = self.st.phase == Some(RolloutPhase::Failed)
            && spec.failure_policy != FailurePolicy::Pause;
        match self.st.phase {
            _ if stopped_at_failure => {
                // Went through every stage with failures (`Continue`): final for this revision.
                self.refresh_clusters();
                return;
            }
            Some(RolloutPhase::Abandoned | RolloutPhase::RolledBack) => {
                self.refresh_clusters();
                return;
            }
            Some(RolloutPhase::Succeeded) => {
                self.refresh_clusters();
                if spec.state == RolloutState::Execute {
                    self.maintain();
                }
                return;
            }
            _ => {}
        }
        if spec.state == RolloutState::Pause {
            if self.st.phase != Some(RolloutPhase::Paused) {
                self.st.phase = Some(RolloutPhase::Paused);
                self.event(EventType::Normal, "Paused", "rollout paused".into());
            }
            self.refresh_clusters();
            return;
        }
        // Execute.
        if self.st.phase == Some(RolloutPhase::Paused) {
            self.resume();
        }
        if self.st.phase == Some(RolloutPhase::Failed) {
            // Stopped under failurePolicy Pause; a Pause/Execute toggle or a new revision resumes.
            self.refresh_clusters();
            return;
        }
        if self.st.stages.iter().any(|s| s.phase == sp::ROLLING_BACK) {
            self.st.phase = Some(RolloutPhase::RollingBack);
            self.rollback_step();
            return;
        }
        if total == 0 {
            self.st.phase = Some(RolloutPhase::Pending);
            self.st.current_stage = None;
            return;
        }
        self.refresh_clusters();
        self.st.phase = Some(RolloutPhase::Progressing);
        loop {
            let Some(i) = self
                .st
                .stages
                .iter()
                .position(|s| s.phase != sp::SUCCEEDED && s.phase != sp::FAILED)
            else {
                self.complete();
                return;
            };
            self.st.current_stage = Some(self.st.stages[i].name.clone());
            match self.stage_step(i) {
                StageOutcome::Blocked | StageOutcome::Stopped => return,
                StageOutcome::Done => {}
            }
        }
    }

    /// Targets and stage assignment: per stage, its clusters in order.
    fn assign(&mut self, compiled: &Compiled) -> Vec<Vec<&'a MemberCluster>> {
        let spec = self.input.spec;
        let named: HashSet<&str> = spec
            .targets
            .cluster_names
            .iter()
            .map(String::as_str)
            .collect();
        let missing: Vec<&str> = spec
            .targets
            .cluster_names
            .iter()
            .map(String::as_str)
            .filter(|n| !self.members.contains_key(n))
            .collect();
        if !missing.is_empty() {
            self.problems.push((
                "ClustersNotFound",
                format!("targeted clusters not registered: {}", names(missing)),
            ));
        }
        let mut stages: Vec<Vec<&MemberCluster>> = vec![Vec::new(); spec.stages.len()];
        let mut unstaged = Vec::new();
        let mut targeted = 0usize;
        for c in self.input.clusters {
            let selected = named.contains(c.name.as_str())
                || compiled
                    .targets
                    .as_ref()
                    .is_some_and(|s| s.matches(&c.labels));
            if !selected {
                continue;
            }
            targeted += 1;
            match compiled
                .stages
                .iter()
                .position(|s| s.as_ref().is_none_or(|s| s.matches(&c.labels)))
            {
                Some(i) => stages[i].push(c),
                None => unstaged.push(c.name.as_str()),
            }
        }
        if targeted == 0 {
            self.problems.push((
                "NoClustersTargeted",
                "targets select no registered cluster".into(),
            ));
        }
        if !unstaged.is_empty() {
            unstaged.sort_unstable();
            self.problems.push((
                "ClustersUnstaged",
                format!(
                    "clusters matched by no stage (not updated): {}",
                    names(unstaged)
                ),
            ));
        }
        for (stage, clusters) in spec.stages.iter().zip(&mut stages) {
            let key = stage.sorting_label_key.as_deref();
            // A total order (sorting must never see an inconsistent comparison): integers
            // numerically, then other values as text, then clusters without the label; ties by name.
            let mut keyed: Vec<(SortKey<'a>, &'a MemberCluster)> = clusters
                .iter()
                .map(|c| {
                    let k = match key.and_then(|k| c.labels.get(k)) {
                        Some(v) => match v.parse::<i64>() {
                            Ok(n) => SortKey::Int(n),
                            Err(_) => SortKey::Text(v.as_str()),
                        },
                        None => SortKey::Missing,
                    };
                    (k, *c)
                })
                .collect();
            keyed.sort_unstable_by(|(ka, a), (kb, b)| ka.cmp(kb).then_with(|| a.name.cmp(&b.name)));
            *clusters = keyed.into_iter().map(|(_, c)| c).collect();
        }
        stages
    }

    /// A new target revision: supersede the old one (if unfinished) and start at stage one.
    fn start_revision_if_new(&mut self) {
        let target = self.target();
        if self.st.target_revision.as_deref() == Some(target) {
            return;
        }
        if let Some(old) = self.st.target_revision.clone()
            && !is_terminal(self.st.phase)
        {
            self.push_history(&old, "Superseded");
            self.event(
                EventType::Normal,
                "Superseded",
                format!(
                    "revision {old} superseded by {target}; starting again from the first stage"
                ),
            );
        }
        self.event(
            EventType::Normal,
            "RolloutStarted",
            format!("rolling out revision {target}"),
        );
        self.st.target_revision = Some(target.to_string());
        self.st.phase = Some(RolloutPhase::Progressing);
        self.st.current_stage = None;
        for stage in &mut self.st.stages {
            stage.phase = sp::PENDING.into();
            stage.start_time = None;
            stage.gate_satisfied_since = None;
            stage.completion_time = None;
            stage.tasks.clear();
            for c in &mut stage.clusters {
                c.phase = cp::PENDING.into();
                c.health = None;
                c.message = None;
            }
        }
    }

    /// Aligns `status.stages` with the spec's stages and the current assignment, keeping what was
    /// recorded; prunes clusters that left after being updated.
    fn sync_stages(&mut self, assigned: &[Vec<&'a MemberCluster>]) {
        let spec = self.input.spec;
        let mut old: HashMap<String, StageStatus> = std::mem::take(&mut self.st.stages)
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let mut old_clusters: HashMap<String, ClusterRolloutStatus> = HashMap::new();
        let mut old_stage_of: HashMap<String, String> = HashMap::new();
        for s in old.values_mut() {
            for c in s.clusters.drain(..) {
                old_stage_of.insert(c.name.clone(), s.name.clone());
                old_clusters.insert(c.name.clone(), c);
            }
        }
        for (stage, clusters) in spec.stages.iter().zip(assigned) {
            let mut ss = old.remove(&stage.name).unwrap_or_else(|| StageStatus {
                name: stage.name.clone(),
                phase: sp::PENDING.into(),
                ..StageStatus::default()
            });
            let wanted = tasks_for(stage);
            let same_shape = ss.tasks.len() == wanted.len()
                && ss
                    .tasks
                    .iter()
                    .zip(&wanted)
                    .all(|(a, b)| a.when == b.when && a.type_ == b.type_);
            if !same_shape {
                ss.tasks = wanted;
            }
            ss.clusters = clusters
                .iter()
                .map(|c| {
                    old_clusters
                        .remove(&c.name)
                        .unwrap_or_else(|| ClusterRolloutStatus {
                            name: c.name.clone(),
                            phase: cp::PENDING.into(),
                            ..ClusterRolloutStatus::default()
                        })
                })
                .collect();
            self.st.stages.push(ss);
        }
        let prune = spec.apply_strategy.prune.unwrap_or(true);
        let mut left: Vec<ClusterRolloutStatus> = old_clusters
            .into_values()
            .filter(|c| c.applied_revision.is_some())
            .collect();
        left.sort_by(|a, b| a.name.cmp(&b.name));
        // `state: Pause` holds every change to members and `Abandon` leaves them as they are: a
        // cluster that left the targets keeps its place (and its objects) until the rollout
        // executes again, and is pruned then.
        let hold = spec.state != RolloutState::Execute;
        for c in left {
            if hold {
                let stage = old_stage_of
                    .get(&c.name)
                    .and_then(|name| self.st.stages.iter_mut().find(|s| &s.name == name));
                if let Some(stage) = stage {
                    stage.clusters.push(c);
                    continue;
                }
                if let Some(stage) = self.st.stages.last_mut() {
                    stage.clusters.push(c);
                    continue;
                }
            }
            if prune {
                self.actions.push(Action::Prune {
                    cluster: c.name.clone(),
                });
                self.event(
                    EventType::Normal,
                    "Pruned",
                    format!(
                        "cluster {} left the rollout's targets; removing its objects",
                        c.name
                    ),
                );
            }
        }
    }

    /// Recomputes every cluster's phase from what is recorded and observed.
    fn refresh_clusters(&mut self) {
        let target = self.target();
        for stage in &mut self.st.stages {
            if stage.phase == sp::ROLLING_BACK || stage.phase == sp::ROLLED_BACK {
                continue;
            }
            for c in &mut stage.clusters {
                if c.phase == cp::ROLLING_BACK || c.phase == cp::ROLLED_BACK {
                    continue;
                }
                let member = self.members.get(c.name.as_str());
                let reachable = member.is_some_and(|m| m.reachable);
                let paused = member.is_some_and(|m| m.paused);
                let updated = c.applied_revision.as_deref() == Some(target);
                let obs = self
                    .input
                    .observations
                    .get(&c.name)
                    .filter(|o| o.revision == target);
                let (phase, health, message) = if !reachable {
                    (
                        cp::UNREACHABLE,
                        Some("Unknown"),
                        Some("cluster is unreachable".to_string()),
                    )
                } else if !updated {
                    if paused {
                        (cp::PAUSED, None, Some("cluster is paused".to_string()))
                    } else {
                        (cp::PENDING, None, None)
                    }
                } else {
                    match obs {
                        None => (cp::APPLYING, None, None),
                        Some(o) => (
                            match o.health.status {
                                HealthStatus::Current => cp::HEALTHY,
                                HealthStatus::Failed => cp::FAILED,
                                HealthStatus::InProgress | HealthStatus::Unknown => cp::APPLIED,
                            },
                            Some(o.health.status.as_str()),
                            Some(o.health.message.clone()).filter(|m| !m.is_empty()),
                        ),
                    }
                };
                if c.phase != phase {
                    c.phase = phase.into();
                }
                if c.health.as_deref() != health {
                    c.health = health.map(str::to_string);
                }
                if c.message != message {
                    c.message = message;
                }
            }
        }
    }

    /// Resuming from `state: Pause`: timers of the current stage start again; a stage that failed
    /// under `failurePolicy: Pause` is retried (unless an approval rejected it).
    fn resume(&mut self) {
        self.event(EventType::Normal, "Resumed", "rollout resumed".into());
        let rolling_back = self.st.stages.iter().any(|s| s.phase == sp::ROLLING_BACK);
        self.st.phase = Some(if rolling_back {
            RolloutPhase::RollingBack
        } else {
            RolloutPhase::Progressing
        });
        if rolling_back {
            return;
        }
        let now = self.now_str();
        let retry_failed = self.input.spec.failure_policy == FailurePolicy::Pause;
        let target = self.input.target_revision;
        let Some(stage) = self
            .st
            .stages
            .iter_mut()
            .find(|s| s.phase != sp::SUCCEEDED && (retry_failed || s.phase != sp::FAILED))
        else {
            return;
        };
        if stage.phase == sp::FAILED {
            if stage.tasks.iter().any(|t| t.phase == tp::REJECTED) {
                // A rejection is final for this revision.
                self.st.phase = Some(RolloutPhase::Failed);
                return;
            }
            stage.phase = sp::PROGRESSING.into();
            stage.completion_time = None;
            for c in &mut stage.clusters {
                if c.phase == cp::FAILED {
                    // Apply again.
                    c.phase = cp::PENDING.into();
                    if c.applied_revision.as_deref() == Some(target) {
                        c.applied_revision = None;
                    }
                }
            }
        }
        if stage.start_time.is_some() {
            stage.start_time = Some(now);
        }
        stage.gate_satisfied_since = None;
    }

    /// One step of stage `i`.
    fn stage_step(&mut self, i: usize) -> StageOutcome {
        let stage_spec = &self.input.spec.stages[i];
        // Tasks before.
        if self.st.stages[i].start_time.is_none() {
            match self.tasks_step(i, TaskWhen::Before) {
                TaskOutcome::Waiting => return StageOutcome::Blocked,
                TaskOutcome::Rejected(msg) => return self.fail_stage(i, msg),
                TaskOutcome::Done => {}
            }
            let ss = &mut self.st.stages[i];
            ss.start_time = Some(fmt_time(self.input.now));
            ss.phase = sp::PROGRESSING.into();
            let msg = format!("stage {} started ({} clusters)", ss.name, ss.clusters.len());
            self.event(EventType::Normal, "StageStarted", msg);
        }
        // Gate.
        let gate_passed = self.st.stages[i]
            .tasks
            .iter()
            .any(|t| t.when == "After" && t.phase != tp::PENDING);
        if !gate_passed {
            match self.gate_step(i, stage_spec) {
                GateOutcome::Waiting => return StageOutcome::Blocked,
                GateOutcome::Failed(msg) => return self.fail_stage(i, msg),
                GateOutcome::Passed => {}
            }
        }
        // Tasks after.
        match self.tasks_step(i, TaskWhen::After) {
            TaskOutcome::Waiting => return StageOutcome::Blocked,
            TaskOutcome::Rejected(msg) => return self.fail_stage(i, msg),
            TaskOutcome::Done => {}
        }
        let now = self.now_str();
        let ss = &mut self.st.stages[i];
        ss.phase = sp::SUCCEEDED.into();
        ss.completion_time = Some(now);
        let msg = format!("stage {} succeeded", ss.name);
        self.event(EventType::Normal, "StageSucceeded", msg);
        StageOutcome::Done
    }

    /// Applies within concurrency and judges the gate of stage `i`.
    fn gate_step(&mut self, i: usize, stage_spec: &Stage) -> GateOutcome {
        let target = self.target();
        let Limits {
            max_concurrency,
            max_unavailable,
        } = self.limits[i];
        let mut in_flight = 0usize;
        let mut failed = Vec::new();
        let mut unavailable = 0usize;
        let mut pending = 0usize;
        for c in &self.st.stages[i].clusters {
            match c.phase.as_str() {
                cp::APPLYING | cp::APPLIED => in_flight += 1,
                cp::FAILED => {
                    failed.push(c.name.as_str());
                    unavailable += 1;
                }
                cp::UNREACHABLE | cp::PAUSED => unavailable += 1,
                cp::PENDING => pending += 1,
                _ => {}
            }
        }
        if failed.len() > max_unavailable {
            return GateOutcome::Failed(format!(
                "{} cluster(s) failed ({}), more than maxUnavailable {max_unavailable}",
                failed.len(),
                names(failed)
            ));
        }
        let mut applied = Vec::new();
        for c in &mut self.st.stages[i].clusters {
            if in_flight >= max_concurrency {
                break;
            }
            if c.phase == cp::PENDING {
                c.phase = cp::APPLYING.into();
                c.applied_revision = Some(target.to_string());
                c.health = None;
                c.message = None;
                applied.push(c.name.clone());
                in_flight += 1;
                pending -= 1;
            }
        }
        for cluster in applied {
            self.actions.push(Action::Apply {
                cluster,
                revision: target.to_string(),
            });
        }
        let now = self.now();
        let holds = in_flight == 0 && pending == 0 && unavailable <= max_unavailable;
        let ss = &mut self.st.stages[i];
        if holds {
            let since = match ss.gate_satisfied_since.as_deref() {
                Some(s) => DateTime::parse_from_rfc3339(s).map_or(now, |t| t.with_timezone(&Utc)),
                None => {
                    ss.gate_satisfied_since = Some(fmt_time(now));
                    now
                }
            };
            let bake = to_chrono(
                stage_spec.gate.min_bake_time.as_ref(),
                std::time::Duration::ZERO,
            );
            let left = since + bake - now;
            if left <= chrono::Duration::zero() {
                return GateOutcome::Passed;
            }
            ss.phase = sp::BAKING.into();
            self.requeue_in(left);
            return GateOutcome::Waiting;
        }
        ss.phase = sp::PROGRESSING.into();
        if ss.gate_satisfied_since.take().is_some() {
            let msg = format!(
                "stage {}: gate no longer holds; the bake clock starts again",
                ss.name
            );
            self.event(EventType::Warning, "GateFlapped", msg);
        }
        let start = self.parse_time(self.st.stages[i].start_time.as_deref());
        let timeout = to_chrono(stage_spec.gate.timeout.as_ref(), DEFAULT_TIMEOUT);
        let left = start + timeout - now;
        if left <= chrono::Duration::zero() {
            let waiting = self.st.stages[i]
                .clusters
                .iter()
                .filter(|c| c.phase != cp::HEALTHY)
                .map(|c| c.name.as_str());
            return GateOutcome::Failed(format!(
                "gate did not hold within {}; not healthy: {}",
                humantime(timeout),
                names(waiting)
            ));
        }
        self.requeue_in(left);
        GateOutcome::Waiting
    }

    /// Runs the tasks of one side of stage `i`, in order.
    fn tasks_step(&mut self, i: usize, when: TaskWhen) -> TaskOutcome {
        let spec = &self.input.spec.stages[i];
        let specs = match when {
            TaskWhen::Before => &spec.before_tasks,
            TaskWhen::After => &spec.after_tasks,
        };
        let wname = when_name(when);
        let positions: Vec<usize> = self.st.stages[i]
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.when == wname)
            .map(|(k, _)| k)
            .collect();
        for (n, k) in positions.into_iter().enumerate() {
            let task = self.st.stages[i].tasks[k].clone();
            let outcome = match task.type_ {
                StageTaskType::Approval => self.approval_task(i, k, when),
                StageTaskType::TimedWait => {
                    let wait = specs.get(n).and_then(|t| t.wait_time.as_ref());
                    self.timed_wait_task(i, k, wait)
                }
            };
            match outcome {
                TaskOutcome::Done => {}
                other => return other,
            }
        }
        TaskOutcome::Done
    }

    fn approval_task(&mut self, i: usize, k: usize, when: TaskWhen) -> TaskOutcome {
        let stage = self.st.stages[i].name.clone();
        let target = self.target();
        match self.st.stages[i].tasks[k].phase.as_str() {
            tp::COMPLETED => return TaskOutcome::Done,
            tp::REJECTED => {
                return TaskOutcome::Rejected(format!("approval for stage {stage} was rejected"));
            }
            _ => {}
        }
        let name = approval_name(self.input.rollout, &stage, when, target);
        let matching: Vec<&FleetApproval> = self
            .input
            .approvals
            .iter()
            .filter(|a| {
                a.spec.rollout == self.input.rollout
                    && a.spec.stage == stage
                    && a.spec.when == when
                    && a.spec.revision == target
            })
            .collect();
        let review = matching
            .iter()
            .filter_map(|a| a.spec.review.as_ref())
            .max_by_key(|r| r.decision == FleetDecision::Rejected);
        let now = self.now_str();
        let task = &mut self.st.stages[i].tasks[k];
        let wname = when_name(when);
        match review {
            Some(r) if r.decision == FleetDecision::Approved => {
                task.phase = tp::COMPLETED.into();
                task.approved_by = Some(r.reviewer.clone());
                task.since = Some(now);
                let mut msg = format!("stage {stage} ({wname}) approved by {}", r.reviewer);
                if let Some(c) = &r.comment {
                    msg.push_str(&format!(": {c}"));
                }
                self.event(EventType::Normal, "Approved", msg);
                TaskOutcome::Done
            }
            Some(r) => {
                task.phase = tp::REJECTED.into();
                task.approved_by = None;
                task.since = Some(now);
                let mut msg = format!("stage {stage} ({wname}) rejected by {}", r.reviewer);
                if let Some(c) = &r.comment {
                    msg.push_str(&format!(": {c}"));
                }
                self.event(EventType::Warning, "ApprovalRejected", msg.clone());
                TaskOutcome::Rejected(msg)
            }
            None => {
                let first = task.phase == tp::PENDING;
                if first {
                    task.phase = tp::WAITING.into();
                    task.since = Some(now);
                    task.approval_name = Some(name.clone());
                }
                if first || matching.is_empty() {
                    self.actions.push(Action::CreateApproval {
                        name: name.clone(),
                        stage: stage.clone(),
                        when,
                        revision: target.to_string(),
                    });
                }
                if first {
                    self.event(
                        EventType::Normal,
                        "ApprovalRequested",
                        format!("stage {stage} ({wname}) waits for approval {name}"),
                    );
                }
                self.st.stages[i].phase = sp::WAITING_FOR_APPROVAL.into();
                self.st.phase = Some(RolloutPhase::WaitingForApproval);
                TaskOutcome::Waiting
            }
        }
    }

    fn timed_wait_task(
        &mut self,
        i: usize,
        k: usize,
        wait: Option<&kube::core::Duration>,
    ) -> TaskOutcome {
        let now = self.now();
        let task = &mut self.st.stages[i].tasks[k];
        match task.phase.as_str() {
            tp::COMPLETED => return TaskOutcome::Done,
            tp::PENDING => {
                task.phase = tp::WAITING.into();
                task.since = Some(fmt_time(now));
            }
            _ => {}
        }
        let since = task
            .since
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(now, |t| t.with_timezone(&Utc));
        let left = since + to_chrono(wait, std::time::Duration::ZERO) - now;
        if left <= chrono::Duration::zero() {
            task.phase = tp::COMPLETED.into();
            task.since = Some(fmt_time(now));
            return TaskOutcome::Done;
        }
        self.st.stages[i].phase = sp::WAITING.into();
        self.requeue_in(left);
        TaskOutcome::Waiting
    }

    /// Stage `i` failed with `msg`: apply the failure policy.
    fn fail_stage(&mut self, i: usize, msg: String) -> StageOutcome {
        let now = self.now_str();
        let name = self.st.stages[i].name.clone();
        {
            let ss = &mut self.st.stages[i];
            ss.phase = sp::FAILED.into();
            ss.completion_time = Some(now);
            ss.gate_satisfied_since = None;
        }
        self.event(
            EventType::Warning,
            "StageFailed",
            format!("stage {name} failed: {msg}"),
        );
        match self.input.spec.failure_policy {
            FailurePolicy::Continue => StageOutcome::Done,
            FailurePolicy::Pause => {
                self.stop_failed();
                StageOutcome::Stopped
            }
            FailurePolicy::Rollback => {
                let Some(to) = self
                    .st
                    .last_succeeded_revision
                    .clone()
                    .filter(|r| r != self.target())
                else {
                    self.event(
                        EventType::Warning,
                        "RollbackImpossible",
                        "no earlier successful revision to roll back to; pausing".into(),
                    );
                    self.stop_failed();
                    return StageOutcome::Stopped;
                };
                let mut any = false;
                for stage in &mut self.st.stages {
                    if stage
                        .clusters
                        .iter()
                        .any(|c| c.applied_revision.as_ref().is_some_and(|r| *r != to))
                    {
                        stage.phase = sp::ROLLING_BACK.into();
                        any = true;
                    }
                }
                self.st.phase = Some(RolloutPhase::RollingBack);
                self.event(
                    EventType::Warning,
                    "RollbackStarted",
                    format!("rolling back to revision {to} in reverse stage order"),
                );
                if any {
                    self.rollback_step();
                } else {
                    self.rolled_back();
                }
                StageOutcome::Stopped
            }
        }
    }

    fn stop_failed(&mut self) {
        self.st.phase = Some(RolloutPhase::Failed);
        self.push_history(self.target(), "Failed");
    }

    /// One step of an automatic rollback: the last stage still rolling back, within its
    /// `maxConcurrency`.
    fn rollback_step(&mut self) {
        let Some(to) = self.st.last_succeeded_revision.clone() else {
            // Cannot happen (a rollback starts only with one); stop rather than loop.
            for s in &mut self.st.stages {
                if s.phase == sp::ROLLING_BACK {
                    s.phase = sp::FAILED.into();
                }
            }
            self.stop_failed();
            return;
        };
        while let Some(i) = self
            .st
            .stages
            .iter()
            .rposition(|s| s.phase == sp::ROLLING_BACK)
        {
            self.st.current_stage = Some(self.st.stages[i].name.clone());
            let max_concurrency = self.limits.get(i).map_or(1, |l| l.max_concurrency);
            let mut in_flight = 0usize;
            let mut skipped = Vec::new();
            let mut outstanding = 0usize;
            // Observe completed rollbacks.
            for c in &mut self.st.stages[i].clusters {
                if c.phase == cp::ROLLING_BACK {
                    match self
                        .input
                        .observations
                        .get(&c.name)
                        .filter(|o| o.revision == to)
                    {
                        Some(o) => {
                            c.phase = cp::ROLLED_BACK.into();
                            c.applied_revision = Some(to.clone());
                            c.health = Some(o.health.status.as_str().into());
                            c.message = Some(o.health.message.clone()).filter(|m| !m.is_empty());
                        }
                        None => in_flight += 1,
                    }
                }
            }
            let mut started = Vec::new();
            for c in &mut self.st.stages[i].clusters {
                let needs = c.phase != cp::ROLLING_BACK
                    && c.phase != cp::ROLLED_BACK
                    && c.applied_revision.as_ref().is_some_and(|r| *r != to);
                if !needs {
                    continue;
                }
                let member = self.members.get(c.name.as_str());
                if !member.is_some_and(|m| m.reachable && !m.paused) {
                    skipped.push(c.name.clone());
                    continue;
                }
                outstanding += 1;
                if in_flight < max_concurrency {
                    c.phase = cp::ROLLING_BACK.into();
                    c.message = Some(format!("rolling back to {to}"));
                    started.push(c.name.clone());
                    in_flight += 1;
                }
            }
            for cluster in started {
                self.actions.push(Action::Rollback {
                    cluster,
                    revision: to.clone(),
                });
            }
            if in_flight > 0 || outstanding > 0 {
                return;
            }
            let name = self.st.stages[i].name.clone();
            for c in &mut self.st.stages[i].clusters {
                if skipped.contains(&c.name) {
                    c.phase = if self
                        .members
                        .get(c.name.as_str())
                        .is_some_and(|m| m.reachable)
                    {
                        cp::PAUSED.into()
                    } else {
                        cp::UNREACHABLE.into()
                    };
                    c.message = Some(format!(
                        "not rolled back to {to}: cluster was not available"
                    ));
                }
            }
            if !skipped.is_empty() {
                self.event(
                    EventType::Warning,
                    "RollbackSkipped",
                    format!(
                        "stage {name}: not rolled back (unavailable): {}",
                        names(skipped.iter().map(String::as_str))
                    ),
                );
            }
            let now = self.now_str();
            let ss = &mut self.st.stages[i];
            ss.phase = sp::ROLLED_BACK.into();
            ss.completion_time = Some(now);
            self.event(
                EventType::Normal,
                "StageRolledBack",
                format!("stage {name} rolled back to {to}"),
            );
        }
        self.rolled_back();
    }

    fn rolled_back(&mut self) {
        let to = self.st.last_succeeded_revision.clone().unwrap_or_default();
        self.st.phase = Some(RolloutPhase::RolledBack);
        self.st.current_stage = None;
        self.push_history(self.target(), "RolledBack");
        self.event(
            EventType::Warning,
            "RolledBack",
            format!("revision {} rolled back to {to}", self.target()),
        );
    }

    /// Every stage finished.
    fn complete(&mut self) {
        let target = self.target().to_string();
        self.st.current_stage = None;
        if self.st.stages.iter().any(|s| s.phase == sp::FAILED) {
            self.st.phase = Some(RolloutPhase::Failed);
            self.push_history(&target, "Failed");
            self.event(
                EventType::Warning,
                "RolloutFailed",
                format!("revision {target} went through every stage, some failed"),
            );
        } else {
            self.st.phase = Some(RolloutPhase::Succeeded);
            self.st.last_succeeded_revision = Some(target.clone());
            self.push_history(&target, "Succeeded");
            self.event(
                EventType::Normal,
                "RolloutSucceeded",
                format!("revision {target} rolled out through every stage"),
            );
        }
    }

    /// A finished rollout delivers its revision to clusters that joined since, per stage
    /// within `maxConcurrency`.
    fn maintain(&mut self) {
        let target = self.target();
        let mut applied = Vec::new();
        for (i, stage) in self.st.stages.iter_mut().enumerate() {
            let max_concurrency = self.limits.get(i).map_or(1, |l| l.max_concurrency);
            let mut in_flight = stage
                .clusters
                .iter()
                .filter(|c| c.phase == cp::APPLYING || c.phase == cp::APPLIED)
                .count();
            for c in &mut stage.clusters {
                if in_flight >= max_concurrency {
                    break;
                }
                if c.phase == cp::PENDING {
                    c.phase = cp::APPLYING.into();
                    c.applied_revision = Some(target.to_string());
                    applied.push(c.name.clone());
                    in_flight += 1;
                }
            }
        }
        for cluster in applied {
            self.actions.push(Action::Apply {
                cluster,
                revision: target.to_string(),
            });
        }
    }

    fn finish(mut self) -> Plan {
        let target = self.target();
        let limit = usize::try_from(self.input.spec.revision_history_limit.max(1)).unwrap_or(1);
        self.st.history.truncate(limit);
        self.st.observed_generation = self.input.generation;
        if self.st.phase.is_none() {
            self.st.phase = Some(RolloutPhase::Pending);
        }

        // Summary over staged clusters.
        let mut summary = RolloutSummary::default();
        for c in self.st.stages.iter().flat_map(|s| &s.clusters) {
            summary.total += 1;
            let updated = c.applied_revision.as_deref() == Some(target);
            summary.updated += i32::from(updated);
            summary.healthy += i32::from(updated && c.phase == cp::HEALTHY);
            summary.failed += i32::from(c.phase == cp::FAILED);
            summary.unreachable += i32::from(
                !self
                    .members
                    .get(c.name.as_str())
                    .is_some_and(|m| m.reachable),
            );
        }
        self.st.progress = Some(format!("{}/{}", summary.healthy, summary.total));
        self.st.summary = Some(summary);

        // Conditions.
        let phase = self.st.phase.unwrap_or(RolloutPhase::Pending);
        let invalid = self
            .problems
            .iter()
            .find(|(r, _)| *r == "InvalidSpec")
            .cloned();
        let no_targets = self
            .problems
            .iter()
            .find(|(r, _)| *r == "NoClustersTargeted")
            .cloned();
        let pname = phase_name(phase);
        let stage_msg = self
            .st
            .current_stage
            .as_ref()
            .map(|s| format!(" (stage {s})"))
            .unwrap_or_default();
        let progress = self.st.progress.clone().unwrap_or_default();
        let (ready, ready_reason, ready_msg) = match (&invalid, phase) {
            (Some((_, m)), _) => ("False", "InvalidSpec", m.clone()),
            (None, RolloutPhase::Succeeded) => (
                "True",
                "Succeeded",
                format!("revision {target} rolled out to every stage ({progress} healthy)"),
            ),
            (None, _) => (
                "False",
                pname,
                format!("revision {target}: {pname}{stage_msg}, {progress} updated and healthy"),
            ),
        };
        let moving = invalid.is_none()
            && no_targets.is_none()
            && matches!(
                phase,
                RolloutPhase::Pending
                    | RolloutPhase::Progressing
                    | RolloutPhase::WaitingForApproval
                    | RolloutPhase::RollingBack
            );
        let (stalled, stalled_reason, stalled_msg) = match (&invalid, &no_targets, phase) {
            (Some((_, m)), _, _) => ("True", "InvalidSpec", m.clone()),
            (None, Some((_, m)), _) => ("True", "NoClustersTargeted", m.clone()),
            (
                None,
                None,
                RolloutPhase::Failed | RolloutPhase::RolledBack | RolloutPhase::Abandoned,
            ) => (
                "True",
                pname,
                format!("revision {target}: {pname}{stage_msg}"),
            ),
            _ => ("False", pname, format!("revision {target}: {pname}")),
        };
        let moving_status = if moving { "True" } else { "False" };
        let moving_msg = format!("revision {target}: {pname}{stage_msg}");
        let targets_problem = self
            .problems
            .iter()
            .filter(|(r, _)| *r != "InvalidSpec")
            .collect::<Vec<_>>();
        let (tr_status, tr_reason, tr_msg) = match targets_problem.first() {
            None => (
                "True",
                "Resolved",
                format!(
                    "{} clusters in {} stages",
                    summary_total(&self.st),
                    self.st.stages.len()
                ),
            ),
            Some((reason, _)) => (
                "False",
                *reason,
                targets_problem
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        let mut conditions = Vec::new();
        for (type_, status, reason, message) in [
            ("Ready", ready, ready_reason, ready_msg),
            ("Reconciling", moving_status, pname, moving_msg.clone()),
            ("Progressing", moving_status, pname, moving_msg),
            ("Stalled", stalled, stalled_reason, stalled_msg),
            ("TargetsResolved", tr_status, tr_reason, tr_msg),
        ] {
            conditions.push(self.condition(type_, status, reason, message));
        }
        // Keep conditions written by others (e.g. DriftDetected by the apply shell).
        for c in &self.input.status.conditions {
            if !conditions.iter().any(|n: &Condition| n.type_ == c.type_) {
                conditions.push(c.clone());
            }
        }
        self.st.conditions = conditions;

        if let Some(d) = self.requeue
            && let Ok(d) = d.to_std()
        {
            self.actions.push(Action::RequeueAfter(d));
        }
        Plan {
            status: self.st,
            actions: self.actions,
        }
    }

    /// A condition, keeping `lastTransitionTime` when the status did not change.
    fn condition(&self, type_: &str, status: &str, reason: &str, message: String) -> Condition {
        let old = self
            .input
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == type_);
        let last_transition_time = match old {
            Some(o) if o.status == status => o.last_transition_time.clone(),
            _ => Time(
                jiff::Timestamp::new(
                    self.input.now.timestamp(),
                    i32::try_from(self.input.now.timestamp_subsec_nanos()).unwrap_or(0),
                )
                .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            ),
        };
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: self.input.generation,
            last_transition_time,
        }
    }
}

fn summary_total(st: &FleetRolloutStatus) -> usize {
    st.stages.iter().map(|s| s.clusters.len()).sum()
}

enum GateOutcome {
    Waiting,
    Passed,
    Failed(String),
}

enum TaskOutcome {
    Waiting,
    Done,
    Rejected(String),
}

fn tasks_for(stage: &Stage) -> Vec<TaskStatus> {
    let mk = |when: &str, t: &overseer_crds::fleet::StageTask| TaskStatus {
        when: when.into(),
        type_: t.type_,
        phase: tp::PENDING.into(),
        ..TaskStatus::default()
    };
    stage
        .before_tasks
        .iter()
        .map(|t| mk("Before", t))
        .chain(stage.after_tasks.iter().map(|t| mk("After", t)))
        .collect()
}

/// `1h30m`-style rendering of a duration for messages.
fn humantime(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}
