//! The reconciler: one planning-and-delivery pass over one `FleetRollout`.
//!
//! Level-triggered. Every reconcile:
//! 1. resolves the source through [`Delivery::resolve`] (a failure is the `SourceReady`
//!    condition naming the object and the problem; nothing is applied, progress is kept);
//! 2. compiles every stage's gate (a CEL expression that does not compile is a condition too);
//! 3. observes the clusters whose health matters now: it re-reads the applied objects of the
//!    clusters of the active stage (and of clusters never observed by this process) and keeps
//!    earlier observations for the rest;
//! 4. runs the pure planner ([`fleet::planner::plan`]), renders the target revision for every
//!    staged cluster before anything is applied (a patch that does not apply is a condition naming
//!    the cluster and the object, and nothing is applied), snapshots a new revision so a rollback
//!    can re-apply it later, and executes the plan: approvals are server-side applied, applies and
//!    rollbacks run concurrently, each bounded by a timeout, so a slow or dead member never holds
//!    up the others; a successful apply is observed at once from what the member returned, and the
//!    planner runs again (a rollout without gates goes through all its waves in one reconcile);
//! 5. writes the planner's status (leader-gated server-side apply, skipped when nothing changed),
//!    then publishes the planner's Events;
//! 6. requeues at the planner's next timer, or sooner while it waits on member health (members
//!    are not watched), never on a fixed poll when nothing is in flight.
//!
//! Everything that must survive a restart lives in the status (the planner's contract) and in the
//! revision snapshots; what this process remembers ([`Memory`]) only saves reads.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use fleet::{
    health::{GateEvaluator, Health},
    overrides,
    planner::{
        self, Action as PlanAction, ClusterObservation, EventType, MemberCluster, PlanInput,
    },
};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, ObjectReference},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DynamicObject, ObjectMeta},
    runtime::{controller::Action, events::EventType as KubeEventType},
};
use overseer_crds::{
    common::CONDITION_READY,
    fleet::{
        DriftAction, DriftedObject, FleetApproval, FleetApprovalSpec, FleetCluster, FleetRollout,
        FleetRolloutStatus, RolloutPhase, RolloutState, TaskWhen,
    },
};
use tracing::{debug, warn};

use super::{
    delivery::{Delivered, Delivery, DeliveryError, Rendered, RolloutKey, kinds_of},
    snapshot,
};
use crate::controller::{
    Context, Error, Result,
    apply::{FieldManager, Ownership, apply, apply_status_if_changed},
    conditions::{ConditionStatus, DesiredCondition, Transition, set_condition},
};

/// The controller's name (metric label, readiness check).
pub const CONTROLLER: &str = "fleetrollout";
/// Field manager of the `FleetApproval`s the controller creates.
pub const APPROVAL_MANAGER: FieldManager = FieldManager::new("overseer-fleetrollout");
/// Field manager of the rollout's status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-fleetrollout-status");
/// Condition: the source resolved and rendered (for every targeted cluster).
pub const CONDITION_SOURCE_READY: &str = "SourceReady";
/// Condition: objects changed on members since they were applied.
pub const CONDITION_DRIFT_DETECTED: &str = "DriftDetected";
/// How often a finished rollout's members are checked for drift by default.
pub const DEFAULT_DRIFT_CHECK_INTERVAL: Duration = Duration::from_secs(300);
/// Event `action` of everything this controller publishes.
pub const EVENT_ACTION: &str = "Rollout";

/// Reasons of the conditions this shell (not the planner) writes.
pub mod reason {
    /// The source resolved and rendered.
    pub const RESOLVED: &str = "Resolved";
    /// The source could not be fetched or parsed.
    pub const SOURCE_FAILED: &str = "SourceFailed";
    /// An override does not apply to an object for a cluster.
    pub const RENDER_FAILED: &str = "RenderFailed";
    /// A gate's CEL health expression does not compile.
    pub const INVALID_HEALTH_EXPRESSION: &str = "InvalidHealthExpression";
    /// The revision cannot be kept for rollback.
    pub const SNAPSHOT_FAILED: &str = "SnapshotFailed";
    /// A rollback target's snapshot is gone.
    pub const SNAPSHOT_MISSING: &str = "SnapshotMissing";
    /// Drift found.
    pub const DRIFTED: &str = "Drifted";
    /// No drift.
    pub const NO_DRIFT: &str = "NoDrift";
}

/// Bounds on the work one reconcile does against members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a source resolution may take.
    pub resolve_timeout: Duration,
    /// Longest one apply to one member may take; a timed-out apply is retried later.
    pub apply_timeout: Duration,
    /// Longest reading one member's objects back may take.
    pub read_timeout: Duration,
    /// Members talked to at the same time.
    pub parallel: usize,
    /// How often health is re-read while clusters are in flight or a stage bakes.
    pub health_poll: Duration,
    /// When to retry after a retryable failure.
    pub retry: Duration,
    /// How often a ConfigMap, Git or Flux source is resolved again for a new revision.
    pub source_poll: Duration,
    /// How long an observation of a cluster outside the active stage is trusted.
    pub observation_ttl: Duration,
    /// Planning passes in one reconcile (each pass that applied something plans again).
    pub max_passes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            resolve_timeout: Duration::from_secs(120),
            apply_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(15),
            parallel: 32,
            health_poll: Duration::from_secs(10),
            retry: Duration::from_secs(10),
            source_poll: Duration::from_secs(60),
            observation_ttl: Duration::from_secs(300),
            max_passes: 64,
        }
    }
}

#[derive(Clone, Debug)]
struct Observed {
    obs: ClusterObservation,
    at: Instant,
}

#[derive(Debug, Default)]
struct RolloutMemory {
    /// Last observation per cluster (after a completed apply or a read).
    observed: HashMap<String, Observed>,
    /// Rendered objects and their overrides by revision (as snapshotted).
    snapshots: HashMap<String, Arc<snapshot::Snapshot>>,
    /// When members were last checked for drift.
    drift_checked: Option<Instant>,
}

/// What this process remembers between reconciles, by rollout UID. Losing it (a restart) costs
/// reads and idempotent re-applies, never progress.
#[derive(Debug, Default)]
pub struct Memory(Mutex<HashMap<String, RolloutMemory>>);

impl Memory {
    fn with<T>(&self, uid: &str, f: impl FnOnce(&mut RolloutMemory) -> T) -> T {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(map.entry(uid.to_owned()).or_default())
    }

    /// Forget rollouts whose UID is not in `live`.
    pub fn retain(&self, live: &HashSet<String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|uid, _| live.contains(uid));
    }
}

/// The rollout controller's own state: the delivery, what it remembers and its limits.
#[derive(Debug)]
pub struct Fleet<D> {
    /// Sources and members.
    pub delivery: D,
    /// What this process remembers.
    pub memory: Memory,
    /// Timeouts and bounds.
    pub limits: Limits,
}

impl<D> Fleet<D> {
    /// A fleet with default limits and an empty memory.
    pub fn new(delivery: D) -> Self {
        Self {
            delivery,
            memory: Memory::default(),
            limits: Limits::default(),
        }
    }
}

/// The hub objects a reconcile reads (from the controller's caches).
#[derive(Clone, Copy, Debug)]
pub struct World<'a> {
    /// Every registered member cluster.
    pub clusters: &'a [FleetCluster],
    /// `FleetApproval`s in the rollout's namespace.
    pub approvals: &'a [FleetApproval],
}

/// A `FleetCluster` as the planner sees it: reachable when its `Reachable` condition is `True`.
pub fn member(cluster: &FleetCluster) -> MemberCluster {
    let reachable = cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Reachable" && c.status == "True")
    });
    MemberCluster {
        name: cluster.name_any(),
        labels: cluster.labels().clone(),
        reachable,
        paused: cluster.spec.paused,
    }
}

fn timestamp(now: DateTime<Utc>) -> Timestamp {
    Timestamp::new(
        now.timestamp(),
        i32::try_from(now.timestamp_subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Reconcile `rollout` as of `now`.
pub async fn reconcile_at<D: Delivery>(
    rollout: &FleetRollout,
    world: World<'_>,
    fleet: &Fleet<D>,
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<Action> {
    let run = Run::new(rollout, world, fleet, ctx, now)?;
    run.reconcile().await
}

/// An apply (or a rollback's re-apply) to one member.
struct Job {
    cluster: String,
    revision: String,
    objects: Vec<DynamicObject>,
}

/// The result of one job.
enum JobResult {
    /// Applied: observe what came back.
    Observed {
        cluster: String,
        observation: ClusterObservation,
        drifted: Vec<DriftedObject>,
    },
    /// A retryable failure: try again later.
    Retry { cluster: String, message: String },
}

struct Run<'a, D> {
    rollout: &'a FleetRollout,
    world: World<'a>,
    fleet: &'a Fleet<D>,
    ctx: &'a Context,
    now: DateTime<Utc>,
    key: RolloutKey,
    uid: String,
    regarding: ObjectReference,
    members: Vec<MemberCluster>,
    by_name: HashMap<String, &'a FleetCluster>,
    /// Events to publish after the status is written.
    events: Vec<(KubeEventType, String, String)>,
}

impl<'a, D: Delivery> Run<'a, D> {
    fn new(
        rollout: &'a FleetRollout,
        world: World<'a>,
        fleet: &'a Fleet<D>,
        ctx: &'a Context,
        now: DateTime<Utc>,
    ) -> Result<Self> {
        let name = rollout
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.name"))?;
        let namespace = rollout
            .metadata
            .namespace
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
        let uid = rollout
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingObjectKey("metadata.uid"))?;
        let members: Vec<MemberCluster> = world.clusters.iter().map(member).collect();
        let by_name = world.clusters.iter().map(|c| (c.name_any(), c)).collect();
        Ok(Self {
            regarding: rollout.object_ref(&()),
            rollout,
            world,
            fleet,
            ctx,
            now,
            key: RolloutKey { namespace, name },
            uid,
            members,
            by_name,
            events: Vec::new(),
        })
    }

    fn limits(&self) -> &Limits {
        &self.fleet.limits
    }

    fn status(&self) -> FleetRolloutStatus {
        self.rollout.status.clone().unwrap_or_default()
    }

    fn generation(&self) -> Option<i64> {
        self.rollout.metadata.generation
    }

    fn api(&self) -> Api<FleetRollout> {
        Api::namespaced(self.ctx.client.clone(), &self.key.namespace)
    }

    fn snapshots(&self) -> Api<ConfigMap> {
        Api::namespaced(self.ctx.client.clone(), &self.key.namespace)
    }

    /// How often the source is looked at again for a new revision (inline sources change only
    /// with the spec, which wakes the controller).
    fn source_poll(&self) -> Option<Duration> {
        let source = &self.rollout.spec.source;
        if source.inline.is_some() {
            return None;
        }
        let interval = source
            .git
            .as_ref()
            .and_then(|g| g.interval.as_ref())
            .filter(|d| !d.is_negative())
            .map(|d| Duration::from(*d));
        Some(interval.unwrap_or(self.limits().source_poll))
    }

    async fn reconcile(mut self) -> Result<Action> {
        // 1. The source.
        let mut rendered = match tokio::time::timeout(
            self.limits().resolve_timeout,
            self.fleet.delivery.resolve(self.rollout),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.blocked(reason::SOURCE_FAILED, &e).await,
            Err(_) => {
                let e = DeliveryError::retryable(format!(
                    "source: not resolved within {}s",
                    self.limits().resolve_timeout.as_secs()
                ));
                return self.blocked(reason::SOURCE_FAILED, &e).await;
            }
        };
        // The overrides are part of the revision: editing them is a new revision, rolled out
        // through the stages, gates and approvals, and snapshotted with the objects.
        rendered.revision =
            overrides::revision_with_overrides(&rendered.revision, &self.rollout.spec.overrides);
        // 2. The gates.
        let mut gates = Vec::with_capacity(self.rollout.spec.stages.len());
        for stage in &self.rollout.spec.stages {
            match GateEvaluator::new(&stage.gate) {
                Ok(g) => gates.push(g),
                Err(e) => {
                    let e = DeliveryError::permanent(format!("stages[{}].gate: {e}", stage.name));
                    return self.blocked(reason::INVALID_HEALTH_EXPRESSION, &e).await;
                }
            }
        }
        let mut status = self.status();
        let new_revision = status.target_revision.as_deref() != Some(rendered.revision.as_str());
        let rendered_objects = Arc::new(snapshot::Snapshot {
            objects: rendered.objects.clone(),
            overrides: Some(self.rollout.spec.overrides.clone()),
        });
        if !new_revision {
            self.fleet.memory.with(&self.uid, |m| {
                m.snapshots
                    .entry(rendered.revision.clone())
                    .or_insert_with(|| rendered_objects.clone());
            });
        }

        // 3. Observe.
        let (mut observations, drift_found) = self.observe(&status, &rendered, &gates).await;
        let mut per_cluster: HashMap<String, Vec<DynamicObject>> = HashMap::new();
        let mut requeue: Option<Duration> = None;
        let mut retry = false;
        let mut drifted: Vec<DriftedObject> = drift_found.unwrap_or_else(|| status.drifted.clone());
        let mut first = true;
        let mut approvals_created = HashSet::new();
        let mut pending_jobs = Vec::new();

        // 4. Plan and execute.
        for _ in 0..self.limits().max_passes.max(1) {
            let plan = planner::plan(&PlanInput {
                rollout: &self.key.name,
                generation: self.generation(),
                spec: &self.rollout.spec,
                target_revision: &rendered.revision,
                clusters: &self.members,
                status: &status,
                observations: &observations,
                approvals: self.world.approvals,
                now: self.now,
            });
            if first {
                first = false;
                // Render for every staged cluster before anything is applied.
                for c in plan.status.stages.iter().flat_map(|s| &s.clusters) {
                    let Some(fc) = self.by_name.get(&c.name).copied() else {
                        continue;
                    };
                    match self.fleet.delivery.render(
                        &rendered.objects,
                        &self.rollout.spec.overrides,
                        fc,
                    ) {
                        Ok(objects) => {
                            per_cluster.insert(c.name.clone(), objects);
                        }
                        Err(e) => {
                            let e = DeliveryError {
                                message: format!("cluster {}: {}", c.name, e.message),
                                retryable: e.retryable,
                            };
                            return self.blocked(reason::RENDER_FAILED, &e).await;
                        }
                    }
                }
                pending_jobs = self
                    .reapply_jobs(&status, &observations, &rendered.revision, &per_cluster)
                    .await?;
                if new_revision {
                    match snapshot::build(self.rollout, &rendered, &self.rollout.spec.overrides) {
                        Ok(cm) => {
                            snapshot::save(&self.snapshots(), &self.ctx.leader, &cm).await?;
                            self.fleet.memory.with(&self.uid, |m| {
                                m.snapshots
                                    .insert(rendered.revision.clone(), rendered_objects.clone());
                            });
                            self.collect_snapshots(&status, &rendered.revision).await;
                        }
                        Err(e) => {
                            let e = DeliveryError::permanent(e.to_string());
                            return self.blocked(reason::SNAPSHOT_FAILED, &e).await;
                        }
                    }
                }
            }
            let mut jobs = std::mem::take(&mut pending_jobs);
            for action in plan.actions {
                match action {
                    PlanAction::Apply { cluster, revision } => {
                        if let Some(objects) = per_cluster.get(&cluster) {
                            jobs.retain(|j| j.cluster != cluster);
                            jobs.push(Job {
                                objects: objects.clone(),
                                cluster,
                                revision,
                            });
                        }
                    }
                    PlanAction::Rollback { cluster, revision } => {
                        match self.rollback_objects(&cluster, &revision).await? {
                            Ok(objects) => {
                                jobs.retain(|j| j.cluster != cluster);
                                jobs.push(Job {
                                    cluster,
                                    revision,
                                    objects,
                                });
                            }
                            Err(message) => {
                                // Without the objects the rollback of this cluster cannot
                                // happen; fail it so the planner moves on (and says so).
                                observations.insert(
                                    cluster.clone(),
                                    ClusterObservation {
                                        revision,
                                        health: Health::failed(message.clone()),
                                    },
                                );
                                self.events.push((
                                    KubeEventType::Warning,
                                    reason::SNAPSHOT_MISSING.into(),
                                    format!("cluster {cluster}: {message}"),
                                ));
                            }
                        }
                    }
                    PlanAction::CreateApproval {
                        name,
                        stage,
                        when,
                        revision,
                    } => {
                        if approvals_created.insert(name.clone()) {
                            self.create_approval(&name, &stage, when, &revision).await?;
                        }
                    }
                    PlanAction::Prune { cluster } => self.prune(&cluster).await,
                    PlanAction::Event {
                        type_,
                        reason,
                        message,
                    } => {
                        let type_ = match type_ {
                            EventType::Normal => KubeEventType::Normal,
                            EventType::Warning => KubeEventType::Warning,
                        };
                        self.events.push((type_, reason, message));
                    }
                    PlanAction::RequeueAfter(d) => {
                        requeue = Some(requeue.map_or(d, |r| r.min(d)));
                    }
                }
            }
            status = plan.status;
            if jobs.is_empty() {
                break;
            }
            // A later pass's timers replace this one's.
            requeue = None;
            // What a cluster showed before this apply or rollback says nothing about its outcome:
            // an old (revision, Healthy) would otherwise mark a rollback to that revision done
            // though its apply timed out. Only the job's own result (or a later read) counts.
            for job in &jobs {
                observations.remove(&job.cluster);
                self.forget(&job.cluster);
            }
            let results = self.run_jobs(jobs, &status, &gates).await;
            let mut observed_any = false;
            for result in results {
                match result {
                    JobResult::Observed {
                        cluster,
                        observation,
                        drifted: changed,
                    } => {
                        observed_any = true;
                        // A fresh apply corrects whatever had drifted.
                        drifted.retain(|d| d.cluster != cluster);
                        drifted.extend(changed);
                        self.remember(&cluster, &observation);
                        observations.insert(cluster, observation);
                    }
                    JobResult::Retry { cluster, message } => {
                        retry = true;
                        warn!(rollout = %self.key.name, namespace = %self.key.namespace, cluster, error = %message, "apply failed; retrying later");
                    }
                }
            }
            if !observed_any {
                break;
            }
        }

        // 5. Status.
        let staged: HashSet<&str> = status
            .stages
            .iter()
            .flat_map(|s| &s.clusters)
            .map(|c| c.name.as_str())
            .collect();
        drifted.retain(|d| staged.contains(d.cluster.as_str()));
        drifted.sort_by(|a, b| (&a.cluster, &a.object).cmp(&(&b.cluster, &b.object)));
        status.drifted = drifted;
        self.shell_conditions(&mut status, &rendered);
        self.write_status(&status).await?;
        self.publish_events().await;

        // 6. When to look again.
        Ok(self.next_wakeup(&status, requeue, retry))
    }

    /// Clusters the status says are being applied or rolled back, of which this process has seen
    /// no completed apply (it restarted, or the apply timed out or failed to reach the member):
    /// apply again (server-side apply is idempotent).
    async fn reapply_jobs(
        &self,
        status: &FleetRolloutStatus,
        observations: &HashMap<String, ClusterObservation>,
        target: &str,
        per_cluster: &HashMap<String, Vec<DynamicObject>>,
    ) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        for c in status.stages.iter().flat_map(|s| &s.clusters) {
            let Some(revision) = observed_revision(status, c) else {
                continue;
            };
            let member = self.members.iter().find(|m| m.name == c.name);
            if !member.is_some_and(|m| m.reachable && !m.paused)
                || observations
                    .get(&c.name)
                    .is_some_and(|o| o.revision == revision)
            {
                continue;
            }
            match c.phase.as_str() {
                "Applying" if revision == target => {
                    if let Some(objects) = per_cluster.get(&c.name) {
                        jobs.push(Job {
                            cluster: c.name.clone(),
                            revision,
                            objects: objects.clone(),
                        });
                    }
                }
                "RollingBack" => {
                    if let Ok(objects) = self.rollback_objects(&c.name, &revision).await? {
                        jobs.push(Job {
                            cluster: c.name.clone(),
                            revision,
                            objects,
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(jobs)
    }

    /// The objects of `revision` for `cluster`, from its snapshot. The outer error is an API
    /// failure; the inner one a snapshot that is gone.
    async fn rollback_objects(
        &self,
        cluster: &str,
        revision: &str,
    ) -> Result<Result<Vec<DynamicObject>, String>> {
        let snap = match self
            .fleet
            .memory
            .with(&self.uid, |m| m.snapshots.get(revision).cloned())
        {
            Some(o) => o,
            None => match snapshot::load(&self.snapshots(), &self.key.name, revision).await? {
                Some(o) => {
                    let o = Arc::new(o);
                    self.fleet.memory.with(&self.uid, |m| {
                        m.snapshots.insert(revision.to_owned(), o.clone());
                    });
                    o
                }
                None => {
                    return Ok(Err(format!(
                        "the snapshot of revision {revision} ({}) is gone; cannot roll back",
                        snapshot::snapshot_name(&self.key.name, revision)
                    )));
                }
            },
        };
        let Some(fc) = self.by_name.get(cluster).copied() else {
            return Ok(Err(format!("cluster {cluster} is not registered")));
        };
        // The revision's own overrides; the current ones only for a snapshot from before they
        // were kept.
        let overrides = snap
            .overrides
            .as_deref()
            .unwrap_or(&self.rollout.spec.overrides);
        Ok(self
            .fleet
            .delivery
            .render(&snap.objects, overrides, fc)
            .map_err(|e| format!("cannot render revision {revision}: {}", e.message)))
    }

    /// Drops the remembered observation of `cluster`.
    fn forget(&self, cluster: &str) {
        self.fleet.memory.with(&self.uid, |m| {
            m.observed.remove(cluster);
        });
    }

    fn remember(&self, cluster: &str, observation: &ClusterObservation) {
        self.fleet.memory.with(&self.uid, |m| {
            m.observed.insert(
                cluster.to_owned(),
                Observed {
                    obs: observation.clone(),
                    at: Instant::now(),
                },
            );
        });
    }

    /// How often a finished rollout's members are checked for drift.
    fn drift_interval(&self) -> Duration {
        self.rollout
            .spec
            .apply_strategy
            .drift_check_interval
            .as_ref()
            .filter(|d| !d.is_negative())
            .map_or(DEFAULT_DRIFT_CHECK_INTERVAL, |d| Duration::from(*d))
            .max(Duration::from_secs(10))
    }

    /// Whether a finished rollout is due a drift check.
    /// Never while `state` is `Pause` (which holds every apply) or `Abandon` (which leaves members
    /// as they are): a drift check with `whenDrifted: Correct` re-applies.
    fn drift_due(&self, status: &FleetRolloutStatus) -> bool {
        self.rollout.spec.state == RolloutState::Execute
            && status.phase == Some(RolloutPhase::Succeeded)
            && status.target_revision == status.last_succeeded_revision
            && self.fleet.memory.with(&self.uid, |m| {
                m.drift_checked
                    .is_none_or(|at| at.elapsed() >= self.drift_interval())
            })
    }

    /// Observations for the planner: remembered ones, refreshed by reading members for clusters
    /// whose health matters now. A finished rollout due a drift check checks (and, with
    /// `whenDrifted: Correct`, corrects) its members instead of reading them, and returns the
    /// drift found.
    async fn observe(
        &self,
        status: &FleetRolloutStatus,
        rendered: &Rendered,
        gates: &[GateEvaluator],
    ) -> (
        HashMap<String, ClusterObservation>,
        Option<Vec<DriftedObject>>,
    ) {
        let drift = self.drift_due(status);
        let remembered: HashMap<String, Observed> =
            self.fleet.memory.with(&self.uid, |m| m.observed.clone());
        let mut observations: HashMap<String, ClusterObservation> = HashMap::new();
        let mut reads = Vec::new();
        for (i, stage) in status.stages.iter().enumerate() {
            let active = matches!(
                stage.phase.as_str(),
                "Progressing" | "Baking" | "RollingBack"
            );
            for c in &stage.clusters {
                let Some(revision) = observed_revision(status, c) else {
                    continue;
                };
                let old = remembered
                    .get(&c.name)
                    .filter(|o| o.obs.revision == revision);
                if let Some(o) = old {
                    observations.insert(c.name.clone(), o.obs.clone());
                }
                // Clusters being applied are observed by their apply; the planner reads other
                // clusters' observations only for the target revision.
                if matches!(c.phase.as_str(), "Applying" | "RollingBack")
                    || revision != rendered.revision
                {
                    continue;
                }
                let fresh = old.is_some_and(|o| o.at.elapsed() < self.limits().observation_ttl);
                // A fresh observation is enough outside the active stage and for a failed cluster
                // (re-reading could only hide the failure).
                let trusted = fresh && (!active || c.phase == "Failed") && !drift;
                if trusted || !self.reachable(&c.name) {
                    continue;
                }
                reads.push((i, c.name.clone()));
            }
        }
        let action = self.rollout.spec.apply_strategy.when_drifted;
        let results: Vec<(
            String,
            Option<ClusterObservation>,
            Option<Vec<DriftedObject>>,
        )> = futures::stream::iter(reads)
            .map(|(i, cluster)| async move {
                if drift {
                    match self.check_drift(i, &cluster, rendered, gates, action).await {
                        Some((obs, found)) => (cluster, Some(obs), Some(found)),
                        None => (cluster, None, None),
                    }
                } else {
                    let obs = self.read_health(i, &cluster, rendered, gates).await;
                    (cluster, obs, None)
                }
            })
            .buffer_unordered(self.limits().parallel.max(1))
            .collect()
            .await;
        let mut drifted: Option<Vec<DriftedObject>> = drift.then(|| status.drifted.clone());
        for (cluster, obs, found) in results {
            if let Some(obs) = obs {
                self.remember(&cluster, &obs);
                observations.insert(cluster.clone(), obs);
            }
            if let (Some(all), Some(found)) = (drifted.as_mut(), found) {
                all.retain(|d| d.cluster != cluster);
                all.extend(found);
            }
        }
        if drift {
            self.fleet
                .memory
                .with(&self.uid, |m| m.drift_checked = Some(Instant::now()));
        }
        (observations, drifted)
    }

    /// Check one cluster for drift (correcting it when the spec says so).
    async fn check_drift(
        &self,
        i: usize,
        cluster: &str,
        rendered: &Rendered,
        gates: &[GateEvaluator],
        action: DriftAction,
    ) -> Option<(ClusterObservation, Vec<DriftedObject>)> {
        let fc = self.by_name.get(cluster).copied()?;
        if fc.spec.paused {
            return None;
        }
        let objects = self
            .fleet
            .delivery
            .render(&rendered.objects, &self.rollout.spec.overrides, fc)
            .ok()?;
        let req = Delivered {
            cluster: fc,
            rollout: &self.key,
            revision: &rendered.revision,
            objects: &objects,
            prune: false,
            prune_kinds: &[],
            gate: gates.get(i)?,
        };
        let checked = tokio::time::timeout(
            self.limits().apply_timeout,
            self.fleet.delivery.check_drift(req, action),
        )
        .await;
        match checked {
            Ok(Ok(outcome)) => Some((
                ClusterObservation {
                    revision: rendered.revision.clone(),
                    health: outcome.health,
                },
                outcome.drifted,
            )),
            Ok(Err(e)) => {
                debug!(cluster, error = %e, "drift check failed");
                None
            }
            Err(_) => {
                debug!(cluster, "drift check timed out");
                None
            }
        }
    }

    fn reachable(&self, cluster: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.name == cluster && m.reachable)
    }

    /// Read one cluster's objects of the target revision back and judge them with stage `i`'s
    /// gate. `None` when the member cannot be read now.
    async fn read_health(
        &self,
        i: usize,
        cluster: &str,
        rendered: &Rendered,
        gates: &[GateEvaluator],
    ) -> Option<ClusterObservation> {
        let fc = self.by_name.get(cluster).copied()?;
        let objects = self
            .fleet
            .delivery
            .render(&rendered.objects, &self.rollout.spec.overrides, fc)
            .ok()?;
        let req = Delivered {
            cluster: fc,
            rollout: &self.key,
            revision: &rendered.revision,
            objects: &objects,
            prune: false,
            prune_kinds: &[],
            gate: gates.get(i)?,
        };
        let read = tokio::time::timeout(
            self.limits().read_timeout,
            self.fleet.delivery.read_health(req),
        )
        .await;
        match read {
            Ok(Ok(health)) => Some(ClusterObservation {
                revision: rendered.revision.clone(),
                health,
            }),
            Ok(Err(e)) => {
                debug!(cluster, error = %e, "cannot read objects back");
                None
            }
            Err(_) => {
                debug!(cluster, "reading objects back timed out");
                None
            }
        }
    }

    /// Kinds this rollout may have left on members: those of every revision this process holds.
    fn known_kinds(&self) -> Vec<kube::api::GroupVersionKind> {
        let snapshots: Vec<Arc<snapshot::Snapshot>> = self
            .fleet
            .memory
            .with(&self.uid, |m| m.snapshots.values().cloned().collect());
        kinds_of(snapshots.iter().flat_map(|s| s.objects.iter()))
    }

    /// Apply concurrently, each job under the apply timeout.
    async fn run_jobs(
        &self,
        jobs: Vec<Job>,
        status: &FleetRolloutStatus,
        gates: &[GateEvaluator],
    ) -> Vec<JobResult> {
        let stage_of: HashMap<&str, usize> = status
            .stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.clusters.iter().map(move |c| (c.name.as_str(), i)))
            .collect();
        let prune = self.rollout.spec.apply_strategy.prune.unwrap_or(true);
        let prune_kinds = self.known_kinds();
        let stage_of = &stage_of;
        let prune_kinds = &prune_kinds;
        futures::stream::iter(jobs)
            .map(
                |Job {
                     cluster,
                     revision,
                     objects,
                 }| async move {
                    let Some(fc) = self.by_name.get(&cluster).copied() else {
                        return JobResult::Retry {
                            message: "cluster is not registered".into(),
                            cluster,
                        };
                    };
                    let Some(gate) = stage_of.get(cluster.as_str()).and_then(|i| gates.get(*i))
                    else {
                        return JobResult::Retry {
                            message: "cluster is in no stage".into(),
                            cluster,
                        };
                    };
                    let req = Delivered {
                        cluster: fc,
                        rollout: &self.key,
                        revision: &revision,
                        objects: &objects,
                        prune,
                        prune_kinds,
                        gate,
                    };
                    let applied = tokio::time::timeout(
                        self.limits().apply_timeout,
                        self.fleet.delivery.apply(req),
                    )
                    .await;
                    match applied {
                        Ok(Ok(outcome)) => JobResult::Observed {
                            cluster,
                            observation: ClusterObservation {
                                revision,
                                health: outcome.health,
                            },
                            drifted: outcome.drifted,
                        },
                        Ok(Err(e)) if e.retryable => JobResult::Retry {
                            cluster,
                            message: e.message,
                        },
                        Ok(Err(e)) => JobResult::Observed {
                            cluster,
                            observation: ClusterObservation {
                                revision,
                                health: Health::failed(format!("apply failed: {}", e.message)),
                            },
                            drifted: Vec::new(),
                        },
                        Err(_) => JobResult::Retry {
                            cluster,
                            message: format!(
                                "apply did not finish within {}s",
                                self.limits().apply_timeout.as_secs()
                            ),
                        },
                    }
                },
            )
            .buffer_unordered(self.limits().parallel.max(1))
            .collect()
            .await
    }

    async fn create_approval(
        &self,
        name: &str,
        stage: &str,
        when: TaskWhen,
        revision: &str,
    ) -> Result<()> {
        let owner = self
            .rollout
            .controller_owner_ref(&())
            .ok_or(Error::MissingObjectKey("metadata.uid"))?;
        let approval = FleetApproval {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.key.namespace.clone()),
                labels: Some(
                    [(
                        snapshot::ROLLOUT_LABEL.to_owned(),
                        snapshot::label_value(&self.key.name),
                    )]
                    .into(),
                ),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            spec: FleetApprovalSpec {
                rollout: self.key.name.clone(),
                stage: stage.to_owned(),
                when,
                revision: revision.to_owned(),
                review: None,
            },
            status: None,
        };
        let api: Api<FleetApproval> = Api::namespaced(self.ctx.client.clone(), &self.key.namespace);
        apply(
            &api,
            &self.ctx.leader,
            APPROVAL_MANAGER,
            Ownership::Owned,
            &approval,
        )
        .await?;
        Ok(())
    }

    async fn prune(&mut self, cluster: &str) {
        let Some(fc) = self.by_name.get(cluster).copied() else {
            // Deregistered: nothing can be reached.
            return;
        };
        let kinds = self.known_kinds();
        let pruned = tokio::time::timeout(
            self.limits().apply_timeout,
            self.fleet.delivery.prune_all(fc, &self.key, &kinds),
        )
        .await;
        match pruned {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.events.push((
                KubeEventType::Warning,
                "PruneFailed".into(),
                format!("cluster {cluster}: {}", e.message),
            )),
            Err(_) => self.events.push((
                KubeEventType::Warning,
                "PruneFailed".into(),
                format!("cluster {cluster}: prune timed out"),
            )),
        }
    }

    /// Best effort: keep the snapshots of revisions the status may still need.
    async fn collect_snapshots(&self, status: &FleetRolloutStatus, target: &str) {
        let mut keep: Vec<&str> = vec![target];
        keep.extend(status.last_succeeded_revision.as_deref());
        keep.extend(status.target_revision.as_deref());
        let limit = usize::try_from(self.rollout.spec.revision_history_limit.max(1)).unwrap_or(1);
        keep.extend(
            status
                .history
                .iter()
                .filter(|h| h.result == "Succeeded")
                .take(limit)
                .map(|h| h.revision.as_str()),
        );
        if let Err(e) =
            snapshot::collect_garbage(&self.snapshots(), &self.ctx.leader, self.rollout, &keep)
                .await
        {
            debug!(error = %e, "snapshot garbage collection failed");
        }
    }

    /// `SourceReady` and `DriftDetected`, the conditions the planner does not write.
    fn shell_conditions(&self, status: &mut FleetRolloutStatus, rendered: &Rendered) {
        let now = timestamp(self.now);
        let generation = self.generation();
        set_condition(
            &mut status.conditions,
            DesiredCondition::new(
                CONDITION_SOURCE_READY,
                ConditionStatus::True,
                reason::RESOLVED,
                format!(
                    "revision {} ({} objects)",
                    rendered.revision,
                    rendered.objects.len()
                ),
            ),
            generation,
            now,
        );
        let drift = if status.drifted.is_empty() {
            DesiredCondition::new(
                CONDITION_DRIFT_DETECTED,
                ConditionStatus::False,
                reason::NO_DRIFT,
                "no drift found",
            )
        } else {
            let list: Vec<String> = status
                .drifted
                .iter()
                .take(5)
                .map(|d| format!("{} on {}", d.object, d.cluster))
                .collect();
            DesiredCondition::new(
                CONDITION_DRIFT_DETECTED,
                ConditionStatus::True,
                reason::DRIFTED,
                format!(
                    "{} object(s) changed on members since applied: {}",
                    status.drifted.len(),
                    list.join(", ")
                ),
            )
        };
        set_condition(&mut status.conditions, drift, generation, now);
    }

    /// The source or the spec cannot be used: keep all progress, say why in `SourceReady`, `Ready`
    /// and `Stalled`, apply nothing.
    async fn blocked(mut self, why: &'static str, e: &DeliveryError) -> Result<Action> {
        let mut status = self.status();
        status.observed_generation = self.generation();
        let now = timestamp(self.now);
        let generation = self.generation();
        let message = e.message.clone();
        let source = set_condition(
            &mut status.conditions,
            DesiredCondition::new(
                CONDITION_SOURCE_READY,
                ConditionStatus::False,
                why,
                message.clone(),
            ),
            generation,
            now,
        );
        set_condition(
            &mut status.conditions,
            DesiredCondition::new(
                CONDITION_READY,
                ConditionStatus::False,
                why,
                message.clone(),
            ),
            generation,
            now,
        );
        set_condition(
            &mut status.conditions,
            DesiredCondition::new(
                "Stalled",
                ConditionStatus::from(!e.retryable),
                why,
                message.clone(),
            ),
            generation,
            now,
        );
        for type_ in ["Reconciling", "Progressing"] {
            set_condition(
                &mut status.conditions,
                DesiredCondition::new(
                    type_,
                    ConditionStatus::from(e.retryable),
                    why,
                    message.clone(),
                ),
                generation,
                now,
            );
        }
        if status.phase.is_none() {
            status.phase = Some(RolloutPhase::Pending);
        }
        let changed = !matches!(source, Transition::Unchanged)
            && (source.is_transition()
                || self
                    .rollout
                    .status
                    .as_ref()
                    .and_then(|s| {
                        s.conditions
                            .iter()
                            .find(|c| c.type_ == CONDITION_SOURCE_READY)
                    })
                    .is_none_or(|c| c.message != message));
        if changed {
            self.events
                .push((KubeEventType::Warning, why.to_owned(), message.clone()));
        }
        self.write_status(&status).await?;
        self.publish_events().await;
        let after = if e.retryable {
            self.limits().retry
        } else {
            self.source_poll().unwrap_or(self.limits().source_poll)
        };
        Ok(Action::requeue(after))
    }

    async fn write_status(&self, status: &FleetRolloutStatus) -> Result<()> {
        apply_status_if_changed(
            &self.api(),
            &self.ctx.leader,
            STATUS_MANAGER,
            self.rollout,
            status,
        )
        .await?;
        Ok(())
    }

    async fn publish_events(&mut self) {
        for (type_, reason, message) in std::mem::take(&mut self.events) {
            self.ctx
                .recorder
                .publish(&self.regarding, type_, &reason, EVENT_ACTION, Some(message))
                .await;
        }
    }

    /// The earliest of: the planner's timer, a health poll while clusters are in flight or a
    /// stage bakes, a retry after a retryable failure, and the source's poll interval.
    fn next_wakeup(
        &self,
        status: &FleetRolloutStatus,
        planned: Option<Duration>,
        retry: bool,
    ) -> Action {
        let mut next = planned;
        let mut at = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        let terminal = matches!(
            status.phase,
            Some(RolloutPhase::Paused | RolloutPhase::Abandoned)
        );
        let waiting_on_health = status.stages.iter().any(|s| {
            s.phase == "Baking"
                || s.clusters
                    .iter()
                    .any(|c| matches!(c.phase.as_str(), "Applying" | "Applied" | "RollingBack"))
        });
        if waiting_on_health && !terminal {
            at(self.limits().health_poll);
        }
        if retry {
            at(self.limits().retry);
        }
        if status.phase == Some(RolloutPhase::Succeeded) {
            at(self.drift_interval());
        }
        if let Some(d) = self.source_poll() {
            at(d);
        }
        match next {
            Some(d) => Action::requeue(d.max(Duration::from_secs(1))),
            None => Action::await_change(),
        }
    }
}

/// The revision whose objects are on the cluster per the status: the applied revision, or the
/// rollback target while it is being rolled back.
fn observed_revision(
    status: &FleetRolloutStatus,
    c: &overseer_crds::fleet::ClusterRolloutStatus,
) -> Option<String> {
    if c.phase == "RollingBack" {
        return status.last_succeeded_revision.clone();
    }
    c.applied_revision.clone()
}
