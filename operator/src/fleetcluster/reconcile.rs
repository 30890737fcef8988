//! The heartbeat reconcile of one `FleetCluster`, and the pure status it computes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use fleet::member::{MemberError, MemberPool};
use k8s_openapi::{apimachinery::pkg::version::Info, jiff::Timestamp};
use kube::{Api, Resource, runtime::controller::Action};
use overseer_crds::{
    common::{CONDITION_READY, find_condition},
    fleet::{FleetCluster, FleetClusterSpec, FleetClusterStatus},
};
use tracing::debug;

use crate::controller::{
    Context, Error, Result,
    apply::{FieldManager, apply_status_if_changed},
    conditions::{ConditionStatus, DesiredCondition, Transition, set_condition},
    instrumented,
};

/// The controller's name (metric label, readiness check).
pub const CONTROLLER: &str = "fleetcluster";
/// Field manager of the cluster's status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-fleetcluster-status");
/// Condition: the last heartbeat reached the cluster.
pub const CONDITION_REACHABLE: &str = "Reachable";
/// Heartbeat period when `spec.heartbeatPeriod` is not set.
pub const DEFAULT_HEARTBEAT_PERIOD: Duration = Duration::from_secs(60);
/// Longest one heartbeat may take (reading the Secret, building the client, `GET /version`).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);
/// How soon a missing or wrong kubeconfig Secret is read again.
pub const CONFIG_RETRY: Duration = Duration::from_secs(15);

/// What the controller shares between reconciles.
#[derive(Clone, Debug)]
pub struct FleetClusterContext {
    /// The operator's context (hub client, leader state, Events, metrics).
    pub ctx: Arc<Context>,
    /// Member clients, one per cluster.
    pub pool: MemberPool,
    /// Deadline of one heartbeat.
    pub heartbeat_timeout: Duration,
    /// When each cluster's next heartbeat is due, for the generation it was scheduled for. A
    /// status write wakes the controller again; this keeps that wake from beating twice.
    schedule: Arc<Mutex<HashMap<String, Due>>>,
}

/// The generation a heartbeat was scheduled for, and when it is due.
type Due = (Option<i64>, Instant);

impl FleetClusterContext {
    /// A context whose member clients are built by `pool`.
    pub fn new(ctx: Arc<Context>, pool: MemberPool) -> Self {
        Self {
            ctx,
            pool,
            heartbeat_timeout: HEARTBEAT_TIMEOUT,
            schedule: Arc::default(),
        }
    }

    /// Time left before the heartbeat of `name` at `generation` is due, if one was scheduled.
    fn not_due_for(&self, name: &str, generation: Option<i64>, now: Instant) -> Option<Duration> {
        let schedule = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        match schedule.get(name) {
            Some((scheduled, due)) if *scheduled == generation && *due > now => Some(*due - now),
            _ => None,
        }
    }

    fn schedule(&self, name: &str, generation: Option<i64>, due: Instant) {
        self.schedule
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (generation, due));
    }
}

/// The heartbeat period of `spec`: 60s when unset or negative, and kept within the 5s to 1h the
/// CRD validates (so an object admitted without that validation cannot spin or stall).
pub fn heartbeat_period(spec: &FleetClusterSpec) -> Duration {
    spec.heartbeat_period
        .filter(|d| !d.is_negative())
        .map(Duration::from)
        .unwrap_or(DEFAULT_HEARTBEAT_PERIOD)
        .clamp(Duration::from_secs(5), Duration::from_secs(3600))
}

/// Reconcile one cluster: the entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(
    cluster: Arc<FleetCluster>,
    state: Arc<FleetClusterContext>,
) -> Result<Action> {
    let regarding = cluster.object_ref(&());
    instrumented(
        &state.ctx,
        CONTROLLER,
        &regarding,
        heartbeat_at(&cluster, &state, Timestamp::now()),
    )
    .await
}

/// Beat once (unless a heartbeat for this generation is not due yet) and write the status, as of
/// `now`. Requeues at the next heartbeat.
pub async fn heartbeat_at(
    cluster: &FleetCluster,
    state: &FleetClusterContext,
    now: Timestamp,
) -> Result<Action> {
    let name = cluster
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let generation = cluster.meta().generation;
    if let Some(left) = state.not_due_for(&name, generation, Instant::now()) {
        return Ok(Action::requeue(left));
    }
    let period = heartbeat_period(&cluster.spec);
    let outcome = match tokio::time::timeout(state.heartbeat_timeout, async {
        let member = state.pool.member(cluster).await?;
        member.version().await
    })
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(MemberError::TimedOut {
            cluster: name.clone(),
            after: state.heartbeat_timeout,
        }),
    };
    if let Err(e) = &outcome {
        debug!(cluster = %name, error = %e, "heartbeat failed");
    }
    let next = match &outcome {
        Err(e) if e.is_configuration() => CONFIG_RETRY.min(period),
        _ => period,
    };

    let previous = cluster.status.clone().unwrap_or_default();
    let (status, reachable) = desired_status(&previous, &cluster.spec, generation, &outcome, now);
    let api: Api<FleetCluster> = Api::all(state.ctx.client.clone());
    apply_status_if_changed(&api, &state.ctx.leader, STATUS_MANAGER, cluster, &status).await?;
    if let Some(condition) = find_condition(&status.conditions, CONDITION_REACHABLE) {
        state
            .ctx
            .recorder
            .condition_changed(&cluster.object_ref(&()), condition, &reachable, "Heartbeat")
            .await;
    }
    state.schedule(&name, generation, Instant::now() + next);
    Ok(Action::requeue(next))
}

/// The status after a heartbeat with `outcome`, and what happened to `Reachable`.
///
/// - reached: `Reachable=True`, the version and `now` as the last heartbeat; `Ready=True`, or
///   `Ready=False` (`Paused`) when `spec.paused`;
/// - a kubeconfig problem (Secret missing or unreadable, key missing, kubeconfig invalid):
///   `Reachable=Unknown` (nothing was tried) and `Ready=False`, both naming the Secret and the
///   problem;
/// - not reached (transport error, timeout, credentials refused): `Reachable=False` and
///   `Ready=False` with the error.
///
/// The version and last heartbeat time of the last success are kept through failures.
pub fn desired_status(
    previous: &FleetClusterStatus,
    spec: &FleetClusterSpec,
    generation: Option<i64>,
    outcome: &std::result::Result<Info, MemberError>,
    now: Timestamp,
) -> (FleetClusterStatus, Transition) {
    let mut status = previous.clone();
    status.observed_generation = generation;
    let (reachable, ready) = match outcome {
        Ok(info) => {
            status.kubernetes_version = Some(info.git_version.clone());
            status.last_heartbeat_time = Some(
                Timestamp::from_second(now.as_second())
                    .unwrap_or(now)
                    .to_string(),
            );
            let reachable = DesiredCondition::new(
                CONDITION_REACHABLE,
                ConditionStatus::True,
                "HeartbeatSucceeded",
                format!("the API server answered ({})", info.git_version),
            );
            let ready = if spec.paused {
                DesiredCondition::new(
                    CONDITION_READY,
                    ConditionStatus::False,
                    "Paused",
                    "spec.paused is true: deliveries to this cluster are frozen",
                )
            } else {
                DesiredCondition::new(
                    CONDITION_READY,
                    ConditionStatus::True,
                    "Ready",
                    "the cluster is reachable and accepts deliveries",
                )
            };
            (reachable, ready)
        }
        Err(e) => {
            let untried = e.is_configuration() || matches!(e, MemberError::SecretUnreadable { .. });
            let reachable = DesiredCondition::new(
                CONDITION_REACHABLE,
                if untried {
                    ConditionStatus::Unknown
                } else {
                    ConditionStatus::False
                },
                e.reason(),
                e.to_string(),
            );
            let ready = DesiredCondition::new(
                CONDITION_READY,
                ConditionStatus::False,
                e.reason(),
                e.to_string(),
            );
            (reachable, ready)
        }
    };
    let transition = set_condition(&mut status.conditions, reachable, generation, now);
    set_condition(&mut status.conditions, ready, generation, now);
    (status, transition)
}
