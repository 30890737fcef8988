//! Approvals as `AgentApproval` objects, so a human approves with `kubectl` and every replica of
//! the decision service sees the same approvals.
//!
//! [`KubeApprovals`] is an [`ApprovalStore`] (the policy engine's synchronous seam) backed by an
//! in-memory index that its [`ApprovalsDriver`] keeps in step with the API server:
//!
//! - **open**: a `require_approval` answer inserts a `Pending` approval into the index and queues
//!   its creation (bounded queue; when it is full the call is denied). The driver
//!   server-side-applies the object (field manager [`SPEC_MANAGER`], labels
//!   `app.kubernetes.io/managed-by: overseer`, `agents.overseer.dev/approval-for: tool-call`,
//!   `agents.overseer.dev/agent`), named by the approval id, in the agent's namespace (from its
//!   ServiceAccount username) or the configured default namespace, bound to the request digest,
//!   with its expiry and who may approve; then writes `status.phase: Pending`.
//! - **review**: a human sets `spec.review` (`kubectl patch agentapproval ID --type merge -p
//!   '{"spec":{"review":{"decision":"Approved","reviewer":"<you>"}}}'`). The shipped
//!   ValidatingAdmissionPolicy verifies the reviewer; the driver's watch checks again that the
//!   reviewer is not the agent itself (and, when the approval names only users, that it is one of
//!   them) and records `Approved` or `Denied` in the index and in the status. A review through
//!   the HTTP API is refused (`403`): in a cluster the reviewer's identity comes from the API
//!   server.
//! - **consume** is single-use across replicas: the engine takes the approval from the index
//!   (atomic within the replica), then [`ApprovalLedger::confirm_consumed`] writes
//!   `status.phase: Consumed` with a `metadata.resourceVersion` precondition before the decision
//!   service answers allow. Two replicas racing for one approval both send that write against the
//!   same resourceVersion; the API server accepts exactly one and the other gets `409` (it then
//!   re-reads the object: still `Approved` with a newer resourceVersion, e.g. after a status
//!   write, means it retries; `Consumed` means the loser answers deny). No window remains in
//!   which one approval allows two calls, provided the service is built with
//!   [`super::DecisionService::with_approval_ledger`]. An API server that cannot be reached fails
//!   closed: the answer is deny and the approval stays usable.
//! - **expiry**: past `spec.expiresAt` an approval is `Expired` for every decision at once (the
//!   index compares times); the driver also writes `status.phase: Expired` within a second.
//!
//! Every status write is a JSON merge patch carrying the resourceVersion it was computed from
//! (field manager [`STATUS_MANAGER`]), so a replica with a stale view can never move an object
//! backwards (e.g. `Consumed` back to `Approved`); such a write fails with `409` and the watch
//! brings the newer object. All replicas write; the writes are idempotent.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures::{StreamExt, future::BoxFuture};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use overseer_crds::{
    agents::{
        AgentApproval, AgentApprovalSpec, AgentApprovalStatus, ApprovalPhase, ApprovalPrincipal,
        ApprovalReview, ReviewDecision,
    },
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
};
use overseer_policy::approvals::{
    Approval, ApprovalError, ApprovalState, ApprovalStore, Verdict, state_name,
};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::ServiceAccountRef;

/// Label that says what an `AgentApproval` is for (shared with the identity controller's).
pub const APPROVAL_FOR_LABEL: &str = "agents.overseer.dev/approval-for";
/// Value of [`APPROVAL_FOR_LABEL`] on the decision service's approvals (tool calls).
pub const APPROVAL_FOR_TOOL_CALL: &str = "tool-call";
/// Label naming the agent (a label-safe form of the principal id).
pub const AGENT_LABEL: &str = "agents.overseer.dev/agent";
/// Field manager of the approval objects' spec and labels (server-side apply).
pub const SPEC_MANAGER: &str = "overseer-decision-approvals";
/// Field manager of the approval objects' status.
pub const STATUS_MANAGER: &str = "overseer-decision-approvals-status";

/// Finished approvals stay in the index this long after they expire.
const RETENTION: TimeDelta = TimeDelta::hours(1);
/// Attempts of the consume compare-and-swap when other writes keep changing the object.
const CONSUME_ATTEMPTS: usize = 3;

/// Records at the API server that an approval was used. Called by the decision service after
/// the engine consumed an approval and before it answers allow.
pub trait ApprovalLedger: Send + Sync + fmt::Debug {
    /// Mark approval `id` consumed at the API server, exactly once across replicas.
    fn confirm_consumed<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>>;
}

/// Why a use of an approval could not be confirmed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Another replica used it first, or it expired, was denied or deleted meanwhile.
    #[error("approval {0} was already used, or is no longer approved")]
    AlreadyUsed(String),
    /// The API server could not record the use; the approval stays usable.
    #[error("the use of approval {0} could not be recorded; try again")]
    Unavailable(String),
}

/// Settings of [`KubeApprovals`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeApprovalsConfig {
    /// Namespace of approvals whose agent has no ServiceAccount username (e.g. agents known only
    /// by an id asserted by a gateway). Usually the decision service's own namespace.
    pub default_namespace: String,
    /// Most approvals held in the index (finished ones are pruned first).
    pub max_approvals: usize,
    /// Most approvals waiting to be created; beyond it new approvals are refused (deny).
    pub create_queue: usize,
}

impl KubeApprovalsConfig {
    /// Defaults with approvals of unnamespaced agents in `default_namespace`.
    pub fn new(default_namespace: impl Into<String>) -> Self {
        Self {
            default_namespace: default_namespace.into(),
            max_approvals: overseer_policy::approvals::DEFAULT_MAX_APPROVALS,
            create_queue: 1024,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    approval: Approval,
    namespace: String,
    /// The object's resourceVersion as last seen; `None` until it exists.
    resource_version: Option<String>,
    /// `status.phase` at the API server as last seen.
    remote_phase: Option<ApprovalPhase>,
}

#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Entry>,
    by_digest: HashMap<String, Vec<String>>,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        let id = entry.approval.id.clone();
        let ids = self
            .by_digest
            .entry(entry.approval.request_digest.clone())
            .or_default();
        if !ids.contains(&id) {
            ids.push(id.clone());
        }
        self.by_id.insert(id, entry);
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(id)?;
        if let Some(ids) = self.by_digest.get_mut(&entry.approval.request_digest) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_digest.remove(&entry.approval.request_digest);
            }
        }
        Some(entry)
    }

    fn prune(&mut self, now: DateTime<Utc>) {
        let dead: Vec<String> = self
            .by_id
            .values()
            .filter(|e| {
                !is_open(&e.approval.state_at(now)) && now >= e.approval.expires_at + RETENTION
            })
            .map(|e| e.approval.id.clone())
            .collect();
        for id in dead {
            self.remove(&id);
        }
    }
}

fn is_open(state: &ApprovalState) -> bool {
    matches!(
        state,
        ApprovalState::Pending | ApprovalState::Approved { .. }
    )
}

/// How final a state is: a merge never moves an approval to a less final state.
fn rank(state: &ApprovalState) -> u8 {
    match state {
        ApprovalState::Pending => 0,
        ApprovalState::Approved { .. } | ApprovalState::Denied { .. } => 1,
        ApprovalState::Expired | ApprovalState::Consumed { .. } => 2,
    }
}

fn phase_of(state: &ApprovalState) -> ApprovalPhase {
    match state {
        ApprovalState::Pending => ApprovalPhase::Pending,
        ApprovalState::Approved { .. } => ApprovalPhase::Approved,
        ApprovalState::Denied { .. } => ApprovalPhase::Denied,
        ApprovalState::Expired => ApprovalPhase::Expired,
        ApprovalState::Consumed { .. } => ApprovalPhase::Consumed,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Cut `s` to at most `max` characters (the CRD's length limits).
fn bounded(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The namespace an approval object lives in: the agent's (from its ServiceAccount username),
/// else `default`.
pub fn namespace_for(approval: &Approval, default: &str) -> String {
    approval
        .principal_username
        .as_deref()
        .and_then(ServiceAccountRef::from_username)
        .map_or_else(|| default.to_owned(), |sa| sa.namespace)
}

/// The `AgentApproval` object of `approval` in `namespace` (what the store applies). Values are
/// cut to the CRD's length limits.
pub fn approval_object(approval: &Approval, namespace: &str) -> AgentApproval {
    let labels = [
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned()),
        (
            APPROVAL_FOR_LABEL.to_owned(),
            APPROVAL_FOR_TOOL_CALL.to_owned(),
        ),
        (
            AGENT_LABEL.to_owned(),
            crate::identity::names::label_value(&approval.principal_id),
        ),
    ];
    AgentApproval {
        metadata: ObjectMeta {
            name: Some(approval.id.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.into_iter().collect()),
            ..ObjectMeta::default()
        },
        spec: AgentApprovalSpec {
            decision_id: approval.decision_id.to_string(),
            request_digest: approval.request_digest.clone(),
            principal: ApprovalPrincipal {
                id: bounded(&approval.principal_id, 512),
                username: approval
                    .principal_username
                    .as_deref()
                    .map(|u| bounded(u, 512)),
                user: approval.user.as_deref().map(|u| bounded(u, 256)),
                tenant: approval.tenant.as_deref().map(|t| bounded(t, 256)),
            },
            tool: bounded(&approval.tool, 256),
            server: approval.server.as_deref().map(|s| bounded(s, 253)),
            target: approval.target.as_deref().map(|t| bounded(t, 1024)),
            arguments_preview: None,
            reasons: approval
                .reasons
                .iter()
                .take(32)
                .map(|r| bounded(r, 1024))
                .collect(),
            approver_users: approval
                .approver_users
                .iter()
                .take(64)
                .map(|u| bounded(u, 253))
                .collect(),
            approver_groups: approval
                .approver_groups
                .iter()
                .take(64)
                .map(|g| bounded(g, 253))
                .collect(),
            expires_at: rfc3339(approval.expires_at),
            review: None,
        },
        status: None,
    }
}

/// Why a review recorded on an object is not accepted, if it is not: the agent reviewing its own
/// request, or (when the approval names only users) a reviewer not among them. Group membership
/// is checked by the admission policy, which sees the reviewer's groups.
pub fn review_problem(approval: &Approval, review: &ApprovalReview) -> Option<String> {
    match approval.check_reviewer(&review.reviewer, &[]) {
        Ok(()) => None,
        Err(ApprovalError::NotAllowed { .. }) if !approval.approver_groups.is_empty() => None,
        Err(e) => Some(e.to_string()),
    }
}

/// The approval an object describes, as of `now` (`observed_at` stands in for times the object
/// does not record). `Err` when the object is not a valid tool-call approval.
pub fn approval_from_object(
    object: &AgentApproval,
    observed_at: DateTime<Utc>,
) -> Result<Approval, String> {
    let spec = &object.spec;
    let name = object.name_any();
    let expires_at = parse_time(&spec.expires_at)
        .ok_or_else(|| format!("spec.expiresAt {:?} is not RFC 3339", spec.expires_at))?;
    let decision_id = Uuid::parse_str(&spec.decision_id)
        .map_err(|e| format!("spec.decisionId is not a UUID: {e}"))?;
    let created_at = object
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| parse_time(&t.0.to_string()))
        .unwrap_or(observed_at);
    let status = object.status.clone().unwrap_or_default();
    let reviewed_at = status
        .reviewed_at
        .as_deref()
        .and_then(parse_time)
        .unwrap_or(observed_at);
    let mut approval = Approval {
        id: name,
        decision_id,
        request_digest: spec.request_digest.clone(),
        principal_id: spec.principal.id.clone(),
        principal_username: spec.principal.username.clone(),
        tool: spec.tool.clone(),
        server: spec.server.clone(),
        target: spec.target.clone(),
        user: spec.principal.user.clone(),
        tenant: spec.principal.tenant.clone(),
        reasons: spec.reasons.clone(),
        approver_users: spec.approver_users.clone(),
        approver_groups: spec.approver_groups.clone(),
        created_at,
        expires_at,
        state: ApprovalState::Pending,
    };
    let reviewer = spec
        .review
        .as_ref()
        .map(|r| r.reviewer.clone())
        .or(status.reviewed_by.clone())
        .unwrap_or_default();
    approval.state = match (status.phase, &spec.review) {
        (Some(ApprovalPhase::Consumed), _) => ApprovalState::Consumed {
            reviewer,
            at: status
                .consumed_at
                .as_deref()
                .and_then(parse_time)
                .unwrap_or(observed_at),
        },
        (Some(ApprovalPhase::Expired), _) => ApprovalState::Expired,
        (_, Some(review)) => match (review.decision, review_problem(&approval, review)) {
            (ReviewDecision::Approved, None) => ApprovalState::Approved {
                reviewer,
                at: reviewed_at,
            },
            (ReviewDecision::Approved, Some(problem)) => {
                tracing::warn!(approval = %approval.id, reviewer = %review.reviewer, %problem, "review refused; the approval is denied");
                ApprovalState::Denied {
                    reviewer,
                    at: reviewed_at,
                }
            }
            (ReviewDecision::Denied, _) => ApprovalState::Denied {
                reviewer,
                at: reviewed_at,
            },
        },
        (_, None) => ApprovalState::Pending,
    };
    Ok(approval)
}

/// The status the store writes for `state`.
fn status_for(state: &ApprovalState, generation: Option<i64>) -> AgentApprovalStatus {
    let mut status = AgentApprovalStatus {
        phase: Some(phase_of(state)),
        observed_generation: generation,
        ..AgentApprovalStatus::default()
    };
    match state {
        ApprovalState::Approved { reviewer, at } | ApprovalState::Denied { reviewer, at } => {
            status.reviewed_by = Some(reviewer.clone());
            status.reviewed_at = Some(rfc3339(*at));
        }
        ApprovalState::Consumed { reviewer, at } => {
            status.reviewed_by = Some(reviewer.clone());
            status.consumed_at = Some(rfc3339(*at));
        }
        ApprovalState::Pending | ApprovalState::Expired => {}
    }
    status
}

/// The body of a status write: the status, with the resourceVersion it was computed from as a
/// precondition.
pub fn status_patch(resource_version: &str, status: &AgentApprovalStatus) -> serde_json::Value {
    json!({
        "metadata": {"resourceVersion": resource_version},
        "status": status,
    })
}

/// A status write the driver owes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct StatusWrite {
    id: String,
    namespace: String,
    resource_version: String,
    status: AgentApprovalStatus,
}

/// An [`ApprovalStore`] of `AgentApproval` objects. See the module docs.
pub struct KubeApprovals {
    client: Client,
    config: KubeApprovalsConfig,
    index: Mutex<Index>,
    creates: mpsc::Sender<String>,
    synced: AtomicBool,
}

impl fmt::Debug for KubeApprovals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeApprovals")
            .field("config", &self.config)
            .field("approvals", &self.lock().by_id.len())
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

/// The background half of [`KubeApprovals`]: creates queued approvals, watches the objects and
/// writes their status. Run it (`tokio::spawn(driver.run())`) for as long as the store is used.
#[derive(Debug)]
pub struct ApprovalsDriver {
    store: Arc<KubeApprovals>,
    creates: mpsc::Receiver<String>,
    ready: Option<crate::health::ReadyHandle>,
}

impl KubeApprovals {
    /// A store writing through `client`, and the driver that must run beside it.
    pub fn new(client: Client, config: KubeApprovalsConfig) -> (Arc<Self>, ApprovalsDriver) {
        let (tx, rx) = mpsc::channel(config.create_queue.max(1));
        let store = Arc::new(Self {
            client,
            config,
            index: Mutex::new(Index::default()),
            creates: tx,
            synced: AtomicBool::new(false),
        });
        let driver = ApprovalsDriver {
            store: store.clone(),
            creates: rx,
            ready: None,
        };
        (store, driver)
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the watch has listed every existing approval once (before that, an approval
    /// reviewed earlier is not yet known and its request is answered `require_approval`).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn api(&self, namespace: &str) -> Api<AgentApproval> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Merge what the API server says about `object` into the index; returns the status write
    /// it calls for (a review not yet recorded in the status, an expiry, a missing phase).
    pub(super) fn observe(
        &self,
        object: &AgentApproval,
        now: DateTime<Utc>,
    ) -> Option<StatusWrite> {
        let (Some(namespace), id) = (object.namespace(), object.name_any()) else {
            return None;
        };
        let remote = match approval_from_object(object, now) {
            Ok(a) => a,
            Err(problem) => {
                tracing::warn!(approval = %id, %namespace, %problem, "ignoring an invalid AgentApproval");
                return None;
            }
        };
        let remote_phase = object.status.as_ref().and_then(|s| s.phase);
        let mut index = self.lock();
        let mut entry = match index.by_id.get(&id) {
            Some(local) if rank(&local.approval.state) >= rank(&remote.state) => local.clone(),
            _ => Entry {
                approval: remote,
                namespace: namespace.clone(),
                resource_version: None,
                remote_phase: None,
            },
        };
        entry.resource_version = object.resource_version();
        entry.remote_phase = remote_phase;
        let state = entry.approval.state_at(now);
        let write = match &state {
            // Consumed is written by the ledger only (it carries the precondition that makes
            // the use single).
            ApprovalState::Consumed { .. } => None,
            s if Some(phase_of(s)) != remote_phase => {
                entry.resource_version.clone().map(|rv| StatusWrite {
                    id: id.clone(),
                    namespace,
                    resource_version: rv,
                    status: status_for(s, object.metadata.generation),
                })
            }
            _ => None,
        };
        index.insert(entry);
        write
    }

    /// Status writes owed for approvals that expired: `Expired` for every open approval past its
    /// expiry whose object does not say so yet. Also prunes long-finished approvals.
    pub(super) fn expired(&self, now: DateTime<Utc>) -> Vec<StatusWrite> {
        let mut index = self.lock();
        index.prune(now);
        index
            .by_id
            .values()
            .filter(|e| {
                is_open(&e.approval.state)
                    && now >= e.approval.expires_at
                    && e.remote_phase != Some(ApprovalPhase::Expired)
            })
            .filter_map(|e| {
                Some(StatusWrite {
                    id: e.approval.id.clone(),
                    namespace: e.namespace.clone(),
                    resource_version: e.resource_version.clone()?,
                    status: status_for(&ApprovalState::Expired, None),
                })
            })
            .collect()
    }

    /// Create approval `id` (queued by `open`): apply the object, then its `Pending` status.
    pub(super) async fn create(&self, id: &str) {
        let Some(entry) = self.lock().by_id.get(id).cloned() else {
            return;
        };
        let object = approval_object(&entry.approval, &entry.namespace);
        let api = self.api(&entry.namespace);
        let applied = api
            .patch(
                id,
                &PatchParams::apply(SPEC_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await;
        let applied = match applied {
            Ok(o) => o,
            Err(e) => {
                // Nobody can approve what does not exist: drop it, so the next identical
                // request opens a new one.
                tracing::error!(approval = %id, namespace = %entry.namespace, error = %e, "cannot create the AgentApproval; dropping the approval");
                self.lock().remove(id);
                return;
            }
        };
        tracing::info!(approval = %id, namespace = %entry.namespace, agent = %entry.approval.principal_id, tool = %entry.approval.tool, "approval requested");
        let Some(rv) = applied.resource_version() else {
            return;
        };
        self.record(id, &rv, None);
        let status = status_for(&ApprovalState::Pending, applied.metadata.generation);
        self.write_status(&StatusWrite {
            id: id.to_owned(),
            namespace: entry.namespace,
            resource_version: rv,
            status,
        })
        .await;
    }

    /// Remember an object's resourceVersion (and the phase it now has) after a write.
    fn record(&self, id: &str, resource_version: &str, phase: Option<ApprovalPhase>) {
        if let Some(e) = self.lock().by_id.get_mut(id) {
            e.resource_version = Some(resource_version.to_owned());
            if phase.is_some() {
                e.remote_phase = phase;
            }
        }
    }

    pub(super) async fn write_status(&self, write: &StatusWrite) {
        let body = status_patch(&write.resource_version, &write.status);
        let params = PatchParams {
            field_manager: Some(STATUS_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        match self
            .api(&write.namespace)
            .patch_status(&write.id, &params, &Patch::Merge(&body))
            .await
        {
            Ok(o) => {
                if let Some(rv) = o.resource_version() {
                    self.record(&write.id, &rv, write.status.phase);
                }
            }
            // A newer version exists (another replica wrote it); the watch brings it.
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                tracing::debug!(approval = %write.id, code = s.code, "approval status write skipped: the object changed");
            }
            Err(e) => {
                tracing::warn!(approval = %write.id, error = %e, "cannot write the approval's status");
            }
        }
    }

    /// Put a use back (the confirmation failed for a reason other than another use).
    fn unconsume(&self, id: &str) {
        ApprovalStore::release(self, id);
    }

    async fn confirm(&self, id: &str) -> Result<(), LedgerError> {
        let mut refreshed: Option<String> = None;
        for _ in 0..CONSUME_ATTEMPTS {
            let Some(entry) = self.lock().by_id.get(id).cloned() else {
                return Err(LedgerError::AlreadyUsed(id.to_owned()));
            };
            let ApprovalState::Consumed { .. } = &entry.approval.state else {
                return Err(LedgerError::AlreadyUsed(id.to_owned()));
            };
            let Some(rv) = refreshed.take().or_else(|| entry.resource_version.clone()) else {
                return Err(LedgerError::AlreadyUsed(id.to_owned()));
            };
            let status = status_for(&entry.approval.state, None);
            let body = status_patch(&rv, &status);
            let params = PatchParams {
                field_manager: Some(STATUS_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let api = self.api(&entry.namespace);
            match api.patch_status(id, &params, &Patch::Merge(&body)).await {
                Ok(o) => {
                    if let Some(rv) = o.resource_version() {
                        self.record(id, &rv, Some(ApprovalPhase::Consumed));
                    }
                    tracing::info!(approval = %id, "approval used");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    self.lock().remove(id);
                    return Err(LedgerError::AlreadyUsed(id.to_owned()));
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Someone else wrote the object: read it and decide.
                    let current = match api.get(id).await {
                        Ok(o) => o,
                        Err(kube::Error::Api(s)) if s.code == 404 => {
                            self.lock().remove(id);
                            return Err(LedgerError::AlreadyUsed(id.to_owned()));
                        }
                        Err(e) => {
                            self.unconsume(id);
                            return Err(LedgerError::Unavailable(e.to_string()));
                        }
                    };
                    let now = Utc::now();
                    match approval_from_object(&current, now).map(|a| a.state_at(now)) {
                        Ok(ApprovalState::Approved { .. }) => {
                            refreshed = current.resource_version();
                        }
                        _ => {
                            // Used by another replica, expired or denied: take its state.
                            let mut index = self.lock();
                            if let (Ok(remote), Some(e)) =
                                (approval_from_object(&current, now), index.by_id.get_mut(id))
                            {
                                e.approval.state = remote.state;
                                e.resource_version = current.resource_version();
                                e.remote_phase = current.status.as_ref().and_then(|s| s.phase);
                            }
                            return Err(LedgerError::AlreadyUsed(id.to_owned()));
                        }
                    }
                }
                Err(e) => {
                    self.unconsume(id);
                    return Err(LedgerError::Unavailable(e.to_string()));
                }
            }
        }
        self.unconsume(id);
        Err(LedgerError::Unavailable(format!(
            "approval {id} kept changing; gave up after {CONSUME_ATTEMPTS} attempts"
        )))
    }
}

impl ApprovalLedger for KubeApprovals {
    fn confirm_consumed<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), LedgerError>> {
        Box::pin(self.confirm(id))
    }
}

impl ApprovalStore for KubeApprovals {
    fn open(&self, mut approval: Approval, now: DateTime<Utc>) -> Result<Approval, ApprovalError> {
        let mut index = self.lock();
        if let Some(ids) = index.by_digest.get(&approval.request_digest) {
            for id in ids {
                if let Some(e) = index.by_id.get(id)
                    && e.approval.state_at(now) == ApprovalState::Pending
                {
                    return Ok(e.approval.clone());
                }
            }
        }
        if index.by_id.len() >= self.config.max_approvals {
            index.prune(now);
            if index.by_id.len() >= self.config.max_approvals {
                return Err(ApprovalError::Full(self.config.max_approvals));
            }
        }
        approval.state = ApprovalState::Pending;
        let namespace = namespace_for(&approval, &self.config.default_namespace);
        if self.creates.try_send(approval.id.clone()).is_err() {
            return Err(ApprovalError::Full(self.config.create_queue));
        }
        index.insert(Entry {
            approval: approval.clone(),
            namespace,
            resource_version: None,
            remote_phase: None,
        });
        Ok(approval)
    }

    fn pending(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval> {
        let index = self.lock();
        index
            .by_digest
            .get(digest)?
            .iter()
            .filter_map(|id| index.by_id.get(id))
            .map(|e| &e.approval)
            .find(|a| a.state_at(now) == ApprovalState::Pending)
            .cloned()
    }

    fn get(&self, id: &str, now: DateTime<Utc>) -> Option<Approval> {
        self.lock().by_id.get(id).map(|e| {
            let mut a = e.approval.clone();
            a.state = a.state_at(now);
            a
        })
    }

    fn review(
        &self,
        id: &str,
        reviewer: &str,
        _verdict: Verdict,
        now: DateTime<Utc>,
    ) -> Result<Approval, ApprovalError> {
        let index = self.lock();
        let e = index
            .by_id
            .get(id)
            .ok_or_else(|| ApprovalError::NotFound(id.into()))?;
        let state = e.approval.state_at(now);
        if state != ApprovalState::Pending {
            return Err(ApprovalError::NotPending {
                id: id.into(),
                state: state_name(&state).into(),
            });
        }
        Err(ApprovalError::NotAllowed {
            reviewer: reviewer.into(),
            reason: format!(
                "in a cluster approvals are reviewed with kubectl, as yourself: kubectl -n {} patch agentapproval {id} --type merge -p '{{\"spec\":{{\"review\":{{\"decision\":\"Approved\",\"reviewer\":\"<your username>\"}}}}}}'",
                e.namespace
            ),
        })
    }

    fn consume(&self, digest: &str, now: DateTime<Utc>) -> Option<Approval> {
        let mut index = self.lock();
        let ids = index.by_digest.get(digest)?.clone();
        for id in ids {
            if let Some(e) = index.by_id.get_mut(&id)
                && let ApprovalState::Approved { reviewer, .. } = e.approval.state_at(now)
            {
                e.approval.state = ApprovalState::Consumed { reviewer, at: now };
                return Some(e.approval.clone());
            }
        }
        None
    }

    fn release(&self, id: &str) {
        let mut index = self.lock();
        if let Some(e) = index.by_id.get_mut(id)
            && e.remote_phase != Some(ApprovalPhase::Consumed)
            && let ApprovalState::Consumed { reviewer, at } = &e.approval.state
        {
            e.approval.state = ApprovalState::Approved {
                reviewer: reviewer.clone(),
                at: *at,
            };
        }
    }
}

impl ApprovalsDriver {
    /// Pass `ready` (a `/readyz` check) once the watch has listed every existing approval.
    pub fn with_ready(mut self, ready: crate::health::ReadyHandle) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Create queued approvals, watch every tool-call `AgentApproval` (all namespaces) and keep
    /// their status, until the store is dropped.
    pub async fn run(mut self) {
        let api: Api<AgentApproval> = Api::all(self.store.client.clone());
        let selector = format!("{APPROVAL_FOR_LABEL}={APPROVAL_FOR_TOOL_CALL}");
        let mut events = watcher(api, watcher::Config::default().labels(&selector))
            .default_backoff()
            .boxed();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                id = self.creates.recv() => match id {
                    Some(id) => self.store.create(&id).await,
                    None => return,
                },
                event = events.next() => match event {
                    Some(Ok(event)) => self.handle(event).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "AgentApproval watch failed; retrying"),
                    None => return,
                },
                _ = tick.tick() => {
                    for write in self.store.expired(Utc::now()) {
                        self.store.write_status(&write).await;
                    }
                }
            }
        }
    }

    async fn handle(&self, event: watcher::Event<AgentApproval>) {
        match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                if let Some(write) = self.store.observe(&o, Utc::now()) {
                    self.store.write_status(&write).await;
                }
            }
            watcher::Event::Delete(o) => {
                self.store.lock().remove(&o.name_any());
            }
            watcher::Event::Init => {}
            watcher::Event::InitDone => {
                if !self.store.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!("AgentApproval watch synced");
                }
                if let Some(ready) = &self.ready {
                    ready.set(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::test_support::{
        ApiServerVerifier, BodyMatch, ExpectedRequest, timeout_after_1s,
    };

    const DIGEST: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID: &str = "0190a000-0000-7000-8000-000000000001";
    const OBJ: &str = "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/agentapprovals/0190a000-0000-7000-8000-000000000001";

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_900_000_000 + secs, 0).expect("time")
    }

    fn approval() -> Approval {
        Approval {
            id: ID.into(),
            decision_id: Uuid::nil(),
            request_digest: DIGEST.into(),
            principal_id: "system:serviceaccount:agents:finance-bot".into(),
            principal_username: Some("system:serviceaccount:agents:finance-bot".into()),
            tool: "pay".into(),
            server: None,
            target: Some("invoice-7".into()),
            user: None,
            tenant: None,
            reasons: vec!["payments need a human".into()],
            approver_users: vec!["alice".into()],
            approver_groups: vec![],
            created_at: t(0),
            expires_at: t(900),
            state: ApprovalState::Pending,
        }
    }

    fn object_json(
        rv: &str,
        review: Option<(&str, &str)>,
        status: serde_json::Value,
    ) -> serde_json::Value {
        let mut spec = json!({
            "decisionId": Uuid::nil().to_string(),
            "requestDigest": DIGEST,
            "principal": {"id": "system:serviceaccount:agents:finance-bot",
                          "username": "system:serviceaccount:agents:finance-bot"},
            "tool": "pay",
            "target": "invoice-7",
            "reasons": ["payments need a human"],
            "approverUsers": ["alice"],
            "expiresAt": rfc3339(t(900)),
        });
        if let Some((decision, reviewer)) = review {
            spec["review"] = json!({"decision": decision, "reviewer": reviewer});
        }
        json!({
            "apiVersion": "agents.overseer.dev/v1alpha1", "kind": "AgentApproval",
            "metadata": {"name": ID, "namespace": "agents", "resourceVersion": rv, "generation": 1,
                         "labels": {APPROVAL_FOR_LABEL: APPROVAL_FOR_TOOL_CALL}},
            "spec": spec,
            "status": status,
        })
    }

    fn object(rv: &str, review: Option<(&str, &str)>, status: serde_json::Value) -> AgentApproval {
        serde_json::from_value(object_json(rv, review, status)).expect("object")
    }

    fn status_write(rv: &str, status: serde_json::Value) -> ExpectedRequest {
        ExpectedRequest {
            content_type: Some("application/merge-patch+json"),
            body: BodyMatch::Exact(json!({"metadata": {"resourceVersion": rv}, "status": status})),
            ..ExpectedRequest::new(
                "PATCH",
                Box::leak(format!("{OBJ}/status?&fieldManager={STATUS_MANAGER}").into_boxed_str()),
            )
        }
    }

    fn store(client: Client) -> (Arc<KubeApprovals>, ApprovalsDriver) {
        KubeApprovals::new(client, KubeApprovalsConfig::new("overseer-system"))
    }

    #[test]
    fn objects_carry_the_request_and_who_may_approve() {
        let object = serde_json::to_value(approval_object(&approval(), "agents")).expect("json");
        assert_eq!(
            object["metadata"]["labels"][APPROVAL_FOR_LABEL],
            APPROVAL_FOR_TOOL_CALL
        );
        assert_eq!(
            object["metadata"]["labels"][MANAGED_BY_LABEL],
            MANAGED_BY_VALUE
        );
        assert_eq!(object["spec"]["requestDigest"], DIGEST);
        assert_eq!(object["spec"]["approverUsers"], json!(["alice"]));
        let back = approval_from_object(&serde_json::from_value(object).expect("round trip"), t(0))
            .expect("valid");
        assert_eq!(back, approval());
        let mut gateway_asserted = approval();
        gateway_asserted.principal_username = None;
        assert_eq!(
            namespace_for(&gateway_asserted, "overseer-system"),
            "overseer-system"
        );
        assert_eq!(namespace_for(&approval(), "overseer-system"), "agents");
    }

    #[test]
    fn the_agent_cannot_approve_itself() {
        let a = approval_from_object(
            &object(
                "3",
                Some(("Approved", "system:serviceaccount:agents:finance-bot")),
                json!({}),
            ),
            t(10),
        )
        .expect("valid");
        assert!(
            matches!(a.state, ApprovalState::Denied { .. }),
            "{:?}",
            a.state
        );
        let a = approval_from_object(
            &object("3", Some(("Approved", "mallory")), json!({})),
            t(10),
        )
        .expect("valid");
        assert!(
            matches!(a.state, ApprovalState::Denied { .. }),
            "not an approver: {:?}",
            a.state
        );
        let a = approval_from_object(&object("3", Some(("Approved", "alice")), json!({})), t(10))
            .expect("valid");
        assert!(
            matches!(a.state, ApprovalState::Approved { .. }),
            "{:?}",
            a.state
        );
    }

    #[tokio::test]
    async fn open_review_consume_writes_exactly_these_requests() {
        let (client, verifier) = ApiServerVerifier::new();
        let mut created = object_json("1", None, json!(null));
        created.as_object_mut().map(|o| o.remove("status"));
        let scenario = verifier.run(vec![
            ExpectedRequest::apply(
                Box::leak(
                    format!("{OBJ}?&force=true&fieldManager={SPEC_MANAGER}").into_boxed_str(),
                ),
                serde_json::to_value(approval_object(&approval(), "agents")).expect("json"),
            )
            .respond(200, created),
            status_write("1", json!({"phase": "Pending", "observedGeneration": 1}))
                .respond(200, object_json("2", None, json!({"phase": "Pending"}))),
            // The watch shows alice's review: the store records it in the status.
            status_write(
                "3",
                json!({"phase": "Approved", "reviewedBy": "alice",
                       "reviewedAt": rfc3339(t(60)), "observedGeneration": 1}),
            )
            .respond(
                200,
                object_json(
                    "4",
                    Some(("Approved", "alice")),
                    json!({"phase": "Approved"}),
                ),
            ),
            // The use, conditional on the version this replica saw.
            status_write(
                "4",
                json!({"phase": "Consumed", "reviewedBy": "alice", "consumedAt": rfc3339(t(70))}),
            )
            .respond(
                200,
                object_json(
                    "5",
                    Some(("Approved", "alice")),
                    json!({"phase": "Consumed"}),
                ),
            ),
        ]);
        let (store, _driver) = store(client);
        let opened = store.open(approval(), t(0)).expect("opened");
        assert_eq!(opened.state, ApprovalState::Pending);
        // An identical request finds the same pending approval.
        assert_eq!(
            store.pending(DIGEST, t(1)).map(|a| a.id),
            Some(ID.to_owned())
        );
        store.create(ID).await;
        assert!(store.consume(DIGEST, t(30)).is_none(), "not approved yet");
        // A review through the HTTP API is refused in a cluster.
        assert!(matches!(
            store.review(ID, "alice", Verdict::Approve, t(40)),
            Err(ApprovalError::NotAllowed { .. })
        ));
        let write = store
            .observe(
                &object(
                    "3",
                    Some(("Approved", "alice")),
                    json!({"phase": "Pending"}),
                ),
                t(60),
            )
            .expect("status write owed");
        store.write_status(&write).await;
        let used = store.consume(DIGEST, t(70)).expect("approved");
        assert_eq!(used.id, ID);
        assert!(
            store.consume(DIGEST, t(71)).is_none(),
            "single use in this replica"
        );
        assert_eq!(store.confirm_consumed(ID).await, Ok(()));
        // The watch echoing an older version never moves it back.
        assert!(
            store
                .observe(
                    &object(
                        "4",
                        Some(("Approved", "alice")),
                        json!({"phase": "Approved"})
                    ),
                    t(72)
                )
                .is_none()
        );
        assert!(matches!(
            store.get(ID, t(72)).map(|a| a.state),
            Some(ApprovalState::Consumed { .. })
        ));
        drop(store);
        drop(_driver);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_use_that_another_replica_made_first_is_refused() {
        let (client, verifier) = ApiServerVerifier::new();
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        let consumed = |rv: &str| {
            status_write(
                rv,
                json!({"phase": "Consumed", "reviewedBy": "alice", "consumedAt": rfc3339(t(70))}),
            )
        };
        let scenario = verifier.run(vec![
            // First use: another replica consumed it (version 5 → 6).
            consumed("5").respond(409, conflict.clone()),
            ExpectedRequest::get(OBJ).respond(
                200,
                object_json(
                    "6",
                    Some(("Approved", "alice")),
                    json!({"phase": "Consumed"}),
                ),
            ),
        ]);
        let (store, _driver) = store(client);
        store.observe(
            &object(
                "5",
                Some(("Approved", "alice")),
                json!({"phase": "Approved"}),
            ),
            t(60),
        );
        assert!(store.consume(DIGEST, t(70)).is_some());
        assert_eq!(
            store.confirm_consumed(ID).await,
            Err(LedgerError::AlreadyUsed(ID.into()))
        );
        assert!(store.consume(DIGEST, t(80)).is_none());
        drop(store);
        drop(_driver);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_stale_version_is_retried_and_an_unreachable_server_keeps_the_approval() {
        let (client, verifier) = ApiServerVerifier::new();
        let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        let unavailable = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "ServiceUnavailable", "code": 503, "message": "etcd"});
        let consumed = |rv: &str, at: i64| {
            status_write(
                rv,
                json!({"phase": "Consumed", "reviewedBy": "alice", "consumedAt": rfc3339(t(at))}),
            )
        };
        let scenario = verifier.run(vec![
            consumed("5", 70).respond(503, unavailable),
            consumed("5", 80).respond(409, conflict),
            // Only the status changed (another replica recorded the review): still approved.
            ExpectedRequest::get(OBJ).respond(
                200,
                object_json(
                    "7",
                    Some(("Approved", "alice")),
                    json!({"phase": "Approved"}),
                ),
            ),
            consumed("7", 80).respond(
                200,
                object_json(
                    "8",
                    Some(("Approved", "alice")),
                    json!({"phase": "Consumed"}),
                ),
            ),
        ]);
        let (store, _driver) = store(client);
        store.observe(
            &object(
                "5",
                Some(("Approved", "alice")),
                json!({"phase": "Approved"}),
            ),
            t(60),
        );
        assert!(store.consume(DIGEST, t(70)).is_some());
        assert!(matches!(
            store.confirm_consumed(ID).await,
            Err(LedgerError::Unavailable(_))
        ));
        // Not recorded, so still usable.
        assert!(store.consume(DIGEST, t(80)).is_some());
        assert_eq!(store.confirm_consumed(ID).await, Ok(()));
        drop(store);
        drop(_driver);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn unanswered_approvals_expire_and_deny() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![
            status_write("2", json!({"phase": "Expired"}))
                .respond(200, object_json("3", None, json!({"phase": "Expired"}))),
        ]);
        let (store, _driver) = store(client);
        assert!(
            store
                .observe(&object("2", None, json!({"phase": "Pending"})), t(10))
                .is_none()
        );
        assert!(store.expired(t(899)).is_empty());
        let writes = store.expired(t(900));
        assert_eq!(writes.len(), 1);
        store.write_status(&writes[0]).await;
        assert!(store.expired(t(901)).is_empty(), "written once");
        assert_eq!(
            store.get(ID, t(901)).map(|a| a.state),
            Some(ApprovalState::Expired)
        );
        assert!(store.pending(DIGEST, t(901)).is_none());
        assert!(store.consume(DIGEST, t(901)).is_none());
        drop(store);
        drop(_driver);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn a_full_create_queue_refuses_new_approvals() {
        let (client, _verifier) = ApiServerVerifier::new();
        let (store, _driver) = KubeApprovals::new(
            client,
            KubeApprovalsConfig {
                create_queue: 1,
                ..KubeApprovalsConfig::new("overseer-system")
            },
        );
        assert!(store.open(approval(), t(0)).is_ok());
        let mut second = approval();
        second.id = "other".into();
        second.request_digest = "b".repeat(64);
        assert_eq!(store.open(second, t(0)), Err(ApprovalError::Full(1)));
    }
}
