//! The reconciler: one `InferenceRuntime` to its revisions, its endpoint and its status.
//!
//! Every reconcile recomputes from the cluster (level-triggered, idempotent):
//!
//! 1. validate the spec against its backend; an invalid spec writes only the status;
//! 2. read the runtime's revisions (its `ControllerRevision`s: a spec snapshot each, the switch
//!    state in annotations) and assign roles ([`plan::assign_roles`]);
//! 3. check by discovery that every backend in play (and the Gateway API, when a Gateway is
//!    configured) is served; the spec's revision is not created while its backend is missing;
//! 4. server-side apply each revision's `ControllerRevision` and its backend objects (owned by
//!    that `ControllerRevision`, so deleting a revision is one delete), after checking that no
//!    object of the same name belongs to someone else; readiness is read from the applied objects;
//! 5. decide the switch ([`plan::decide`]), running the smoke test when the candidate is ready;
//! 6. point the stable Service (and HTTPRoute) at the active revision, or at the candidate on
//!    cut-over; only then scale the old revision to zero and prune history;
//! 7. write the status (skipped when unchanged) and an Event per switch step.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    api::{apps::v1::ControllerRevision, core::v1::ObjectReference},
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        runtime::RawExtension,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Preconditions},
    runtime::{controller::Action, events::EventType},
};
use overseer_crds::{
    common::{CONDITION_READY, MANAGED_BY_LABEL, MANAGED_BY_VALUE},
    runway::{
        BackendKind, EndpointStatus, InferenceRuntime, InferenceRuntimeSpec,
        InferenceRuntimeStatus, RevisionRef, RevisionStatus, RuntimePhase,
    },
};
use runway_api::{
    BACKEND_LABEL, REVISION_LABEL, RUNTIME_LABEL, RenderInput, RequiredApi, RevisionReadiness,
    backend_for,
    endpoint::{self, WeightedBackend},
    label_value, served_name,
};
use serde_json::Value;
use tracing::warn;

use super::{
    plan::{self, ObservedRevision, RevisionPlan, Role, Roles, SmokeOutcome, Step},
    smoke::{SmokeTarget, SmokeTester},
};
use crate::controller::{
    Context, Error, Result,
    apply::{FieldManager, Ownership, apply, apply_status_if_changed},
    conditions::{ConditionStatus, DesiredCondition, set_condition},
    instrumented,
};

/// The controller's name (metric label, readiness check).
pub const CONTROLLER: &str = "inferenceruntime";
/// Field manager of every object the controller applies (revisions, backend objects, endpoint).
pub const FIELD_MANAGER: FieldManager = FieldManager::new("overseer-runway");
/// Field manager of the runtime's status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-runway-status");

/// Condition: the backend's APIs (and the Gateway API, when used) are served.
pub const CONDITION_BACKEND_AVAILABLE: &str = "BackendAvailable";
/// Condition: a switch or a first rollout is in progress.
pub const CONDITION_PROGRESSING: &str = "Progressing";
/// Condition: the runtime serves, but not what its spec asks for (a failed switch, a conflict,
/// a missing backend).
pub const CONDITION_DEGRADED: &str = "Degraded";

/// How often a runtime is reconciled when nothing wakes it: backend kinds installed after the
/// operator started are not watched, so their readiness is polled at this pace.
pub const RESYNC: Duration = Duration::from_secs(30);
/// How soon a runtime whose backend is missing is looked at again.
pub const BACKEND_RETRY: Duration = Duration::from_secs(60);

/// Condition and Event reasons.
pub mod reason {
    /// The spec cannot run on its backend.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A backend API is not served.
    pub const BACKEND_UNAVAILABLE: &str = "BackendUnavailable";
    /// Every API is served.
    pub const BACKEND_INSTALLED: &str = "BackendInstalled";
    /// An object of the same name belongs to someone else.
    pub const OBJECT_CONFLICT: &str = "ObjectConflict";
    /// The active revision serves what the spec asks for.
    pub const SERVING: &str = "Serving";
    /// The first revision's pods are starting.
    pub const PROVISIONING: &str = "Provisioning";
    /// A switch is in progress.
    pub const SWITCHING: &str = "Switching";
    /// A switch failed; the active revision still serves.
    pub const SWITCH_FAILED: &str = "SwitchFailed";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Event: a switch started.
    pub const SWITCH_STARTED: &str = "SwitchStarted";
    /// Event: the smoke test passed.
    pub const SMOKE_PASSED: &str = "SmokeTestPassed";
    /// Event: a canary step started.
    pub const CANARY_STEP: &str = "CanaryStep";
    /// Event: the endpoint moved to the candidate.
    pub const TRAFFIC_SHIFTED: &str = "TrafficShifted";
    /// Event: a previous revision was scaled to zero.
    pub const SCALED_DOWN: &str = "RevisionScaledDown";
    /// Event: a revision was deleted.
    pub const REVISION_DELETED: &str = "RevisionDeleted";
}

/// What the reconciler needs: the shared context and the smoke tester.
#[derive(Clone)]
pub struct RunwayContext {
    /// The shared controller context.
    pub ctx: Arc<Context>,
    /// Smoke-tests candidates before they receive traffic.
    pub smoke: Arc<dyn SmokeTester>,
}

impl std::fmt::Debug for RunwayContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunwayContext")
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

/// Reconcile one runtime: the entry point given to `kube::runtime::Controller::run`.
pub async fn reconcile(runtime: Arc<InferenceRuntime>, rctx: Arc<RunwayContext>) -> Result<Action> {
    let regarding = runtime.object_ref(&());
    instrumented(&rctx.ctx, CONTROLLER, &regarding, async {
        reconcile_at(&runtime, &rctx, Timestamp::now()).await
    })
    .await
}

/// What applying one revision found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionOutcome {
    /// Readiness judged from the applied objects (None when nothing was applied).
    pub readiness: Option<RevisionReadiness>,
    /// Objects that exist under the revision's names but belong to someone else.
    pub conflicts: Vec<String>,
    /// The objects rendered, as `apiVersion/kind/name`.
    pub objects: Vec<String>,
    /// The backend's APIs are not served: nothing was applied.
    pub unavailable: bool,
    /// The revision could not be rendered (message).
    pub render_error: Option<String>,
}

/// The plural of a rendered kind: the backends' required APIs name theirs; the rest follow
/// kube's pluralizer (Deployment, Service, ServiceAccount, Role, RoleBinding).
fn api_resource(object: &Value) -> Option<(ApiResource, String)> {
    let api_version = object.get("apiVersion")?.as_str()?;
    let kind = object.get("kind")?.as_str()?;
    let name = object.pointer("/metadata/name")?.as_str()?.to_string();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let known = [
        BackendKind::Vllm,
        BackendKind::Kaito,
        BackendKind::LlmD,
        BackendKind::Dynamo,
        BackendKind::Kserve,
    ]
    .into_iter()
    .flat_map(|k| backend_for(k).required_apis())
    .chain([endpoint::gateway_required_api()])
    .find(|a| a.group == group && a.kind == kind);
    let resource = match known {
        Some(api) => ApiResource::from_gvk_with_plural(&gvk, api.plural),
        None => ApiResource::from_gvk(&gvk),
    };
    Some((resource, name))
}

fn describe(object: &Value) -> String {
    format!(
        "{}/{}/{}",
        object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or(""),
        object.get("kind").and_then(Value::as_str).unwrap_or(""),
        object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
}

fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The `ControllerRevision`s of `runtime_uid` among `items`, as revisions. Ones another object
/// controls, or whose snapshot does not parse, are skipped.
pub fn observed_revisions(
    items: &[ControllerRevision],
    runtime_uid: &str,
) -> Vec<ObservedRevision> {
    items
        .iter()
        .filter(|cr| controller_uid(&cr.metadata) == Some(runtime_uid))
        .filter_map(|cr| {
            let name = cr.metadata.name.clone()?;
            let spec: InferenceRuntimeSpec = match cr
                .data
                .as_ref()
                .map(|d| serde_json::from_value(d.0.clone()))
            {
                Some(Ok(spec)) => spec,
                _ => {
                    warn!(revision = %name, "ControllerRevision without a readable spec snapshot: ignored");
                    return None;
                }
            };
            let hash = runway_api::revision_hash(&spec);
            Some(ObservedRevision {
                name,
                hash,
                spec,
                number: cr.revision,
                annotations: cr.metadata.annotations.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// The label value of a backend.
fn backend_label(kind: BackendKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The `ControllerRevision` of a revision.
pub fn controller_revision(
    runtime_name: &str,
    namespace: &str,
    owner: &OwnerReference,
    plan: &RevisionPlan,
) -> Result<ControllerRevision> {
    Ok(ControllerRevision {
        metadata: ObjectMeta {
            name: Some(plan.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                (RUNTIME_LABEL.to_string(), label_value(runtime_name)),
                (REVISION_LABEL.to_string(), plan.name.clone()),
                (BACKEND_LABEL.to_string(), backend_label(plan.backend())),
            ])),
            annotations: (!plan.annotations.is_empty()).then(|| plan.annotations.clone()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(serde_json::to_value(&plan.spec)?)),
        revision: plan.number,
    })
}

/// A background delete of exactly the object with `uid` (never a re-created namesake).
fn delete_params(uid: String) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

fn revision_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ControllerRevision".into(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// One reconcile of one runtime.
struct Run<'a> {
    rctx: &'a RunwayContext,
    name: String,
    namespace: String,
    uid: String,
    owner: OwnerReference,
    /// Events to publish at the end: (type, reason, note).
    events: Vec<(EventType, &'static str, String)>,
}

/// The result of discovery: APIs that are not served.
#[derive(Clone, Debug, Default)]
struct Discovery {
    missing: Vec<RequiredApi>,
}

impl Discovery {
    fn backend_missing(&self, kind: BackendKind) -> Vec<RequiredApi> {
        let needed = backend_for(kind).required_apis();
        self.missing
            .iter()
            .filter(|m| needed.contains(m))
            .cloned()
            .collect()
    }

    fn gateway_missing(&self) -> bool {
        self.missing.contains(&endpoint::gateway_required_api())
    }
}

fn install_message(missing: &[RequiredApi]) -> String {
    let mut hints: Vec<String> = Vec::new();
    for m in missing {
        let line = format!(
            "{}/{} {} is not served: {}",
            m.group, m.version, m.kind, m.install_hint
        );
        if !hints.contains(&line) {
            hints.push(line);
        }
    }
    hints.join("; ")
}

impl<'a> Run<'a> {
    fn client(&self) -> kube::Client {
        self.rctx.ctx.client.clone()
    }

    fn leader(&self) -> &crate::leader::LeaderState {
        &self.rctx.ctx.leader
    }

    /// Which of `apis` the API server does not serve (one discovery request per group/version).
    async fn discover(&self, apis: &[RequiredApi]) -> Result<Discovery> {
        let mut missing = Vec::new();
        let mut groups: BTreeMap<(String, String), Vec<&RequiredApi>> = BTreeMap::new();
        for api in apis {
            groups
                .entry((api.group.to_string(), api.version.to_string()))
                .or_default()
                .push(api);
        }
        for ((group, version), wanted) in groups {
            let served = match self
                .client()
                .list_api_group_resources(&format!("{group}/{version}"))
                .await
            {
                Ok(list) => list
                    .resources
                    .into_iter()
                    .map(|r| r.name)
                    .collect::<BTreeSet<_>>(),
                Err(kube::Error::Api(status)) if status.code == 404 => BTreeSet::new(),
                Err(e) => return Err(e.into()),
            };
            missing.extend(
                wanted
                    .into_iter()
                    .filter(|w| !served.contains(w.plural))
                    .cloned(),
            );
        }
        Ok(Discovery { missing })
    }

    fn dynamic(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client(), &self.namespace, resource)
    }

    fn render_input<'p>(
        &'p self,
        plan: &'p RevisionPlan,
        owner: Option<&'p OwnerReference>,
    ) -> RenderInput<'p> {
        RenderInput {
            runtime_name: &self.name,
            namespace: &self.namespace,
            revision_name: &plan.name,
            revision_hash: &plan.hash,
            spec: &plan.spec,
            replicas: plan.replicas,
            owner,
        }
    }

    /// Apply a revision's `ControllerRevision` when it is new or its state changed; returns its
    /// uid, or a conflict when a `ControllerRevision` of that name belongs to someone else.
    async fn apply_controller_revision(
        &self,
        plan: &RevisionPlan,
        observed: &[ObservedRevision],
        uids: &mut BTreeMap<String, String>,
    ) -> Result<std::result::Result<String, String>> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client(), &self.namespace);
        let unchanged = observed.iter().any(|o| {
            o.name == plan.name && o.number == plan.number && o.annotations == plan.annotations
        });
        if unchanged && let Some(uid) = uids.get(&plan.name) {
            return Ok(Ok(uid.clone()));
        }
        if plan.minted
            && let Some(existing) = api.get_opt(&plan.name).await?
            && controller_uid(&existing.metadata) != Some(self.uid.as_str())
        {
            return Ok(Err(format!(
                "apps/v1/ControllerRevision/{} exists and is not this runtime's",
                plan.name
            )));
        }
        let body = controller_revision(&self.name, &self.namespace, &self.owner, plan)?;
        let applied = apply(&api, self.leader(), FIELD_MANAGER, Ownership::Owned, &body).await?;
        let uid = applied
            .metadata
            .uid
            .ok_or(Error::MissingObjectKey("metadata.uid"))?;
        uids.insert(plan.name.clone(), uid.clone());
        Ok(Ok(uid))
    }

    /// Apply (or, for a failed candidate under `onFailure: Delete`, delete) a revision's
    /// backend objects. An object of one of the revision's names that its `ControllerRevision`
    /// does not control is a conflict, and then nothing of the revision is written (for a new
    /// revision, not even its `ControllerRevision`).
    async fn apply_revision(
        &self,
        plan: &RevisionPlan,
        observed: &[ObservedRevision],
        uids: &mut BTreeMap<String, String>,
        discovery: &Discovery,
    ) -> Result<RevisionOutcome> {
        let backend = backend_for(plan.backend());
        if !discovery.backend_missing(plan.backend()).is_empty() {
            return Ok(RevisionOutcome {
                unavailable: true,
                ..RevisionOutcome::default()
            });
        }
        let mut outcome = RevisionOutcome::default();
        // Names first (the owner reference needs the ControllerRevision's uid).
        let unowned = match backend.render(&self.render_input(plan, None)) {
            Ok(objects) => objects,
            Err(e) => {
                outcome.render_error = Some(format!("revision {}: {e}", plan.name));
                return Ok(outcome);
            }
        };
        outcome.objects = unowned.iter().map(describe).collect();
        let mut targets = Vec::with_capacity(unowned.len());
        for object in &unowned {
            let Some((resource, name)) = api_resource(object) else {
                outcome.render_error =
                    Some(format!("rendered object {} has no name", describe(object)));
                return Ok(outcome);
            };
            targets.push((self.dynamic(&resource), name, describe(object)));
        }
        let mut existing: Vec<Option<DynamicObject>> = Vec::with_capacity(targets.len());
        if plan.minted {
            // A new revision owns nothing yet: anything under its names is someone else's.
            for (api, name, what) in &targets {
                if api.get_opt(name).await?.is_some() {
                    outcome
                        .conflicts
                        .push(format!("{what} already exists and is not this runtime's"));
                }
                existing.push(None);
            }
            if !outcome.conflicts.is_empty() {
                return Ok(outcome);
            }
        }
        let uid = match self.apply_controller_revision(plan, observed, uids).await? {
            Ok(uid) => uid,
            Err(conflict) => {
                outcome.conflicts.push(conflict);
                return Ok(outcome);
            }
        };
        if !plan.minted {
            for (api, name, what) in &targets {
                let found = api.get_opt(name).await?;
                if let Some(found) = &found
                    && controller_uid(&found.metadata) != Some(uid.as_str())
                {
                    outcome.conflicts.push(format!(
                        "{what} exists and is not controlled by revision {}",
                        plan.name
                    ));
                }
                existing.push(found);
            }
            if !outcome.conflicts.is_empty() {
                // Nothing half-made: none of the revision's objects is written.
                return Ok(outcome);
            }
        }
        if !plan.objects {
            for ((api, name, _), found) in targets.iter().zip(existing) {
                if let Some(object_uid) = found.and_then(|f| f.metadata.uid) {
                    if !self.leader().is_leader() {
                        return Err(Error::NotLeader);
                    }
                    match api.delete(name, &delete_params(object_uid)).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            // Its objects are gone (onFailure: Delete); only the ControllerRevision remains.
            outcome.objects.clear();
            return Ok(outcome);
        }
        let owner = revision_owner(&plan.name, &uid);
        let input = self.render_input(plan, Some(&owner));
        let objects = match backend.render(&input) {
            Ok(objects) => objects,
            Err(e) => {
                outcome.render_error = Some(format!("revision {}: {e}", plan.name));
                return Ok(outcome);
            }
        };
        let mut live = Vec::with_capacity(objects.len());
        for ((api, _, _), object) in targets.iter().zip(&objects) {
            let body: DynamicObject = serde_json::from_value(object.clone())?;
            let applied = apply(api, self.leader(), FIELD_MANAGER, Ownership::Owned, &body).await?;
            live.push(serde_json::to_value(applied)?);
        }
        outcome.readiness = Some(backend.readiness(&input, &live));
        Ok(outcome)
    }

    /// Apply every revision of `roles` (reusing `done` outcomes for revisions whose replicas and
    /// object policy did not change) and delete the pruned ones.
    async fn converge(
        &mut self,
        roles: &Roles,
        observed: &[ObservedRevision],
        uids: &mut BTreeMap<String, String>,
        discovery: &Discovery,
        done: &BTreeMap<String, (RevisionPlan, RevisionOutcome)>,
        deleted: &[String],
    ) -> Result<BTreeMap<String, (RevisionPlan, RevisionOutcome)>> {
        let mut out = BTreeMap::new();
        for plan in &roles.revisions {
            let previous = done.get(&plan.name);
            let outcome = match previous {
                Some((before, outcome))
                    if before.replicas == plan.replicas && before.objects == plan.objects =>
                {
                    if before.annotations != plan.annotations || before.number != plan.number {
                        // A conflict here was reported when the revision was first applied.
                        if let Err(conflict) =
                            self.apply_controller_revision(plan, observed, uids).await?
                        {
                            warn!(%conflict, "revision state not recorded");
                        }
                    }
                    outcome.clone()
                }
                _ => {
                    let outcome = self.apply_revision(plan, observed, uids, discovery).await?;
                    if let Some((before, _)) = previous
                        && before.replicas > 0
                        && plan.replicas == 0
                        && outcome.readiness.is_some()
                    {
                        self.events.push((
                            EventType::Normal,
                            reason::SCALED_DOWN,
                            format!("revision {} scaled to zero", plan.name),
                        ));
                    }
                    outcome
                }
            };
            out.insert(plan.name.clone(), (plan.clone(), outcome));
        }
        for name in &roles.delete {
            if !deleted.contains(name) {
                let uid = uids.get(name).cloned();
                self.delete_revision(name, uid.as_ref()).await?;
            }
        }
        Ok(out)
    }

    async fn delete_revision(&mut self, name: &str, uid: Option<&String>) -> Result<()> {
        let Some(uid) = uid else {
            return Ok(());
        };
        if !self.leader().is_leader() {
            return Err(Error::NotLeader);
        }
        let api: Api<ControllerRevision> = Api::namespaced(self.client(), &self.namespace);
        match api.delete(name, &delete_params(uid.clone())).await {
            Ok(_) => self.events.push((
                EventType::Normal,
                reason::REVISION_DELETED,
                format!("revision {name} deleted with its objects"),
            )),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Apply an endpoint object (Service or HTTPRoute) unless an object of its name belongs to
    /// someone else; returns the conflict.
    async fn apply_endpoint_object(&self, object: &Value) -> Result<Option<String>> {
        let Some((resource, name)) = api_resource(object) else {
            return Ok(None);
        };
        let api = self.dynamic(&resource);
        if let Some(existing) = api.get_opt(&name).await?
            && controller_uid(&existing.metadata) != Some(self.uid.as_str())
        {
            return Ok(Some(format!(
                "{} exists and is not controlled by this runtime",
                describe(object)
            )));
        }
        let body: DynamicObject = serde_json::from_value(object.clone())?;
        apply(&api, self.leader(), FIELD_MANAGER, Ownership::Owned, &body).await?;
        Ok(None)
    }
}

/// What the status is computed from.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// The runtime.
    pub runtime: &'a InferenceRuntime,
    /// The roles after this reconcile.
    pub roles: &'a Roles,
    /// Each kept revision's outcome.
    pub outcomes: &'a BTreeMap<String, (RevisionPlan, RevisionOutcome)>,
    /// The switch step taken.
    pub step: &'a Step,
    /// Spec problems (InvalidSpec).
    pub invalid: Option<String>,
    /// Missing APIs of the spec's backend or the Gateway API.
    pub unavailable: Option<String>,
    /// Conflicts with objects of someone else.
    pub conflicts: Vec<String>,
    /// Now.
    pub now: Timestamp,
}

fn revision_ref(plan: &RevisionPlan) -> RevisionRef {
    RevisionRef {
        name: plan.name.clone(),
        backend: plan.backend(),
        hash: plan.hash.clone(),
    }
}

/// The runtime's status (pure).
pub fn build_status(input: &StatusInput<'_>) -> InferenceRuntimeStatus {
    let rt = input.runtime;
    let generation = rt.metadata.generation;
    let mut status = rt.status.clone().unwrap_or_default();
    let name = rt.name_any();
    let namespace = rt.namespace().unwrap_or_default();
    let active = input.roles.get(Role::Active);
    let candidate = input.roles.get(Role::Candidate);
    let failed = input.roles.get(Role::Failed);
    let active_outcome = active
        .and_then(|a| input.outcomes.get(&a.name))
        .map(|(_, o)| o);
    let active_applied = active_outcome.is_some_and(|o| o.readiness.is_some());
    let active_readiness = active_outcome
        .and_then(|o| o.readiness.clone())
        .unwrap_or_default();

    if input.invalid.is_none() {
        // The active revision is the switch's state: kept while its ControllerRevision exists,
        // even when its objects could not be applied this time.
        let known = active.filter(|a| !a.minted || active_applied);
        status.active_revision = known.map(revision_ref);
        status.candidate_revision = candidate.map(revision_ref);
        status.revisions = input
            .roles
            .revisions
            .iter()
            .filter_map(|plan| {
                let (_, outcome) = input.outcomes.get(&plan.name)?;
                let readiness = outcome.readiness.clone().unwrap_or_default();
                Some(RevisionStatus {
                    name: plan.name.clone(),
                    backend: plan.backend(),
                    replicas: plan.replicas,
                    ready_replicas: readiness.ready_replicas,
                    ready: readiness.ready,
                    objects: outcome.objects.clone(),
                })
            })
            .collect();
        if let Some(active) = known {
            let backend = backend_for(active.backend());
            let input_r = RenderInput {
                runtime_name: &name,
                namespace: &namespace,
                revision_name: &active.name,
                revision_hash: &active.hash,
                spec: &active.spec,
                replicas: active.replicas,
                owner: None,
            };
            let target = backend.endpoint(&input_r);
            status.selector = Some(
                target
                    .pod_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            status.replicas = Some(active_readiness.replicas);
            status.ready_replicas = Some(active_readiness.ready_replicas);
            status.endpoint = Some(EndpointStatus {
                url: endpoint::endpoint_url(&name, &namespace, &rt.spec),
                service: name.clone(),
                port: endpoint::endpoint_port(&rt.spec),
                model_name: served_name(&active.spec.model).unwrap_or_default(),
            });
        }
    }
    let has_active = status.active_revision.is_some();
    let active_ready =
        active_applied && (active_readiness.ready || (active.is_some_and(|a| a.replicas == 0)));
    let conflict = (!input.conflicts.is_empty()).then(|| input.conflicts.join("; "));
    let switch_failed = failed.map(|f| {
        let why = f
            .annotations
            .get(plan::FAILED)
            .cloned()
            .unwrap_or_else(|| reason::SWITCH_FAILED.to_string());
        format!(
            "the switch to revision {} failed ({why}); {} still serves. Change the spec, or delete ControllerRevision {} to retry",
            f.name,
            active.map_or("nothing", |a| a.name.as_str()),
            f.name
        )
    });
    let fail_now = match input.step {
        Step::Fail { reason, message } => Some(format!("{reason}: {message}")),
        _ => None,
    };

    // (phase, ready, ready reason, message, degraded)
    let (phase, ready, ready_reason, message, degraded): (RuntimePhase, bool, &str, String, bool) =
        if let Some(msg) = &input.invalid {
            let phase = if has_active {
                RuntimePhase::Degraded
            } else {
                RuntimePhase::Failed
            };
            (phase, false, reason::INVALID_SPEC, msg.clone(), has_active)
        } else if let Some(msg) = &input.unavailable {
            let phase = if has_active {
                RuntimePhase::Degraded
            } else {
                RuntimePhase::Pending
            };
            (
                phase,
                false,
                reason::BACKEND_UNAVAILABLE,
                msg.clone(),
                has_active,
            )
        } else if let Some(msg) = &conflict {
            let phase = if has_active && active_ready {
                RuntimePhase::Degraded
            } else {
                RuntimePhase::Failed
            };
            (
                phase,
                false,
                reason::OBJECT_CONFLICT,
                msg.clone(),
                has_active,
            )
        } else if let Some(msg) = fail_now.or(switch_failed) {
            (
                RuntimePhase::Degraded,
                false,
                reason::SWITCH_FAILED,
                msg,
                true,
            )
        } else if let Some(c) = candidate {
            let detail = match input.step {
                Step::WaitReady { message, .. } => {
                    format!("waiting for candidate {}: {message}", c.name)
                }
                Step::Canary { step, weight, .. } => {
                    format!(
                        "canary step {step}: candidate {} takes {weight}% of traffic",
                        c.name
                    )
                }
                Step::RetrySmoke { message } => {
                    format!("smoke test of {} pending: {message}", c.name)
                }
                _ => format!("switching to revision {}", c.name),
            };
            (
                RuntimePhase::Switching,
                false,
                reason::SWITCHING,
                detail,
                false,
            )
        } else if active_ready {
            let msg = active.map_or_else(String::new, |a| {
                format!("revision {} serves: {}", a.name, active_readiness.message)
            });
            (RuntimePhase::Serving, true, reason::SERVING, msg, false)
        } else {
            let msg = if active_readiness.message.is_empty() {
                "waiting for the first revision".to_string()
            } else {
                active_readiness.message.clone()
            };
            (
                RuntimePhase::Provisioning,
                false,
                reason::PROVISIONING,
                msg,
                false,
            )
        };
    status.phase = Some(phase);
    status.observed_generation = generation;
    let now = input.now;
    set_condition(
        &mut status.conditions,
        DesiredCondition::new(
            CONDITION_READY,
            ConditionStatus::from(ready),
            ready_reason,
            message.clone(),
        ),
        generation,
        now,
    );
    let backend_condition = match &input.unavailable {
        Some(msg) => DesiredCondition::new(
            CONDITION_BACKEND_AVAILABLE,
            ConditionStatus::False,
            reason::BACKEND_UNAVAILABLE,
            msg.clone(),
        ),
        None if input.invalid.is_some() => DesiredCondition::new(
            CONDITION_BACKEND_AVAILABLE,
            ConditionStatus::Unknown,
            reason::INVALID_SPEC,
            "not checked: the spec is invalid",
        ),
        None => DesiredCondition::new(
            CONDITION_BACKEND_AVAILABLE,
            ConditionStatus::True,
            reason::BACKEND_INSTALLED,
            format!(
                "the {} backend's APIs are served",
                backend_label(rt.spec.engine.backend)
            ),
        ),
    };
    set_condition(&mut status.conditions, backend_condition, generation, now);
    let progressing = matches!(phase, RuntimePhase::Switching | RuntimePhase::Provisioning);
    set_condition(
        &mut status.conditions,
        DesiredCondition::new(
            CONDITION_PROGRESSING,
            ConditionStatus::from(progressing),
            if progressing {
                ready_reason
            } else {
                reason::AS_EXPECTED
            },
            if progressing {
                message.clone()
            } else {
                String::new()
            },
        ),
        generation,
        now,
    );
    set_condition(
        &mut status.conditions,
        DesiredCondition::new(
            CONDITION_DEGRADED,
            ConditionStatus::from(degraded),
            if degraded {
                ready_reason
            } else {
                reason::AS_EXPECTED
            },
            if degraded { message } else { String::new() },
        ),
        generation,
        now,
    );
    status
}

/// While the spec's backend (or the Gateway API) is missing, nothing of the spec's revision is
/// created or switched to: no new revision, no candidate; the active one keeps serving at full
/// size.
fn withhold_desired(roles: &mut Roles, spec: &InferenceRuntimeSpec) {
    roles
        .revisions
        .retain(|r| !r.minted && r.role != Role::Candidate);
    if let Some(active) = roles.revisions.iter_mut().find(|r| r.role == Role::Active) {
        active.replicas = spec.replicas.max(0);
    }
}

/// Reconcile `runtime` as of `now`.
pub async fn reconcile_at(
    runtime: &InferenceRuntime,
    rctx: &RunwayContext,
    now: Timestamp,
) -> Result<Action> {
    if runtime.metadata.deletion_timestamp.is_some() {
        // Everything is owned by the runtime: garbage collection removes it.
        return Ok(Action::await_change());
    }
    let name = runtime.name_any();
    let namespace = runtime
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = runtime
        .uid()
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let owner = runtime
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let mut run = Run {
        rctx,
        name,
        namespace,
        uid,
        owner,
        events: Vec::new(),
    };
    let spec = &runtime.spec;
    let api: Api<InferenceRuntime> = Api::namespaced(run.client(), &run.namespace);
    let empty = BTreeMap::new();

    // 1. The spec against its backend (and the endpoint's name).
    let mut issues: Vec<String> = match backend_for(spec.engine.backend).validate(spec) {
        Ok(()) => Vec::new(),
        Err(issues) => issues.iter().map(ToString::to_string).collect(),
    };
    if !runway_api::is_dns1035_label(&run.name, 63) {
        issues.push(format!(
            "metadata.name: the endpoint Service is named after the runtime, so {:?} must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63 characters)",
            run.name
        ));
    }
    if !issues.is_empty() {
        let status = build_status(&StatusInput {
            runtime,
            roles: &Roles::default(),
            outcomes: &empty,
            step: &Step::Steady,
            invalid: Some(format!(
                "the spec cannot run on the {} backend: {}",
                backend_label(spec.engine.backend),
                issues.join("; ")
            )),
            unavailable: None,
            conflicts: Vec::new(),
            now,
        });
        apply_status_if_changed(&api, run.leader(), STATUS_MANAGER, runtime, &status).await?;
        return Ok(Action::await_change());
    }

    // 2. Revisions and roles.
    let revisions: Api<ControllerRevision> = Api::namespaced(run.client(), &run.namespace);
    let selector = format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{RUNTIME_LABEL}={}",
        label_value(&run.name)
    );
    let listed = revisions
        .list(&ListParams::default().labels(&selector))
        .await?;
    let observed = observed_revisions(&listed.items, &run.uid);
    let mut uids: BTreeMap<String, String> = listed
        .items
        .iter()
        .filter_map(|cr| Some((cr.metadata.name.clone()?, cr.metadata.uid.clone()?)))
        .collect();
    let status_active = runtime
        .status
        .as_ref()
        .and_then(|s| s.active_revision.as_ref())
        .map(|r| r.name.clone());
    let mut roles = plan::assign_roles(&run.name, spec, status_active.as_deref(), &observed, now);

    // 3. Discovery.
    let mut needed: Vec<RequiredApi> = Vec::new();
    for plan in &roles.revisions {
        for api in backend_for(plan.backend()).required_apis() {
            if !needed.contains(&api) {
                needed.push(api);
            }
        }
    }
    if spec.endpoint.gateway.is_some() {
        needed.push(endpoint::gateway_required_api());
    }
    let discovery = run.discover(&needed).await?;
    let mut unavailable_apis = discovery.backend_missing(spec.engine.backend);
    if spec.endpoint.gateway.is_some() && discovery.gateway_missing() {
        unavailable_apis.push(endpoint::gateway_required_api());
    }
    let unavailable = (!unavailable_apis.is_empty()).then(|| install_message(&unavailable_apis));
    if unavailable.is_some() {
        withhold_desired(&mut roles, spec);
    }

    // 4. Apply every revision.
    let first = run
        .converge(
            &roles,
            &observed,
            &mut uids,
            &discovery,
            &BTreeMap::new(),
            &[],
        )
        .await?;
    let mut conflicts: Vec<String> = first
        .values()
        .filter(|(plan, _)| matches!(plan.role, Role::Active | Role::Candidate))
        .flat_map(|(_, o)| o.conflicts.iter().cloned().chain(o.render_error.clone()))
        .collect();
    for (plan, outcome) in first.values() {
        let new_switch = observed
            .iter()
            .find(|o| o.name == plan.name)
            .is_none_or(|o| !o.annotations.contains_key(plan::SWITCH_STARTED));
        if new_switch && plan.role == Role::Candidate && outcome.readiness.is_some() {
            run.events.push((
                EventType::Normal,
                reason::SWITCH_STARTED,
                format!(
                    "switching to revision {} ({} backend) with strategy {:?}",
                    plan.name,
                    backend_label(plan.backend()),
                    spec.switch_strategy.type_
                ),
            ));
        }
    }

    // 5. The switch.
    let candidate = roles.get(Role::Candidate).cloned();
    let candidate_outcome = candidate
        .as_ref()
        .and_then(|c| first.get(&c.name))
        .map(|(_, o)| o.clone())
        .unwrap_or_default();
    let mut step = plan::decide(
        spec,
        &roles,
        candidate_outcome.readiness.as_ref(),
        None,
        now,
    );
    if step == Step::NeedSmoke
        && let (Some(c), Some(kind)) = (&candidate, spec.switch_strategy.smoke_test.as_ref())
    {
        let input = run.render_input(c, None);
        let target = backend_for(c.backend()).endpoint(&input);
        let outcome = rctx
            .smoke
            .check(&SmokeTarget {
                namespace: run.namespace.clone(),
                pod_selector: target.pod_selector,
                port: target.port,
                model: served_name(&c.spec.model).unwrap_or_default(),
                kind: kind.type_,
            })
            .await;
        if let SmokeOutcome::Passed(message) = &outcome {
            run.events.push((
                EventType::Normal,
                reason::SMOKE_PASSED,
                format!("candidate {}: {message}", c.name),
            ));
        }
        step = plan::decide(
            spec,
            &roles,
            candidate_outcome.readiness.as_ref(),
            Some(&outcome),
            now,
        );
    }

    // The state after the step: who is active, and the candidate's annotations.
    let mut after = observed.clone();
    let mut new_active = roles.get(Role::Active).map(|a| a.name.clone());
    if let Some(c) = &candidate {
        let annotations = plan::candidate_annotations(&c.annotations, &step, now);
        let entry = ObservedRevision {
            name: c.name.clone(),
            hash: c.hash.clone(),
            spec: c.spec.clone(),
            number: c.number,
            annotations,
        };
        after.retain(|o| o.name != c.name);
        after.push(entry);
        match &step {
            Step::Cutover => {
                new_active = Some(c.name.clone());
                run.events.push((
                    EventType::Normal,
                    reason::TRAFFIC_SHIFTED,
                    format!("endpoint {} now serves revision {}", run.name, c.name),
                ));
            }
            Step::Fail { reason, message } => {
                run.events.push((
                    EventType::Warning,
                    reason::SWITCH_FAILED,
                    format!("{reason}: {message}"),
                ));
            }
            Step::Canary {
                step: i, weight, ..
            } if c.annotations.get(plan::CANARY_STEP) != Some(&i.to_string()) => {
                run.events.push((
                    EventType::Normal,
                    reason::CANARY_STEP,
                    format!(
                        "canary step {i}: revision {} takes {weight}% of traffic",
                        c.name
                    ),
                ));
            }
            _ => {}
        }
    }
    let mut final_roles = plan::assign_roles(&run.name, spec, new_active.as_deref(), &after, now);
    if unavailable.is_some() {
        withhold_desired(&mut final_roles, spec);
    }
    if let Some(c) = final_roles
        .revisions
        .iter_mut()
        .find(|r| r.role == Role::Candidate)
        && let Some(o) = after.iter().find(|o| o.name == c.name)
    {
        c.annotations = o.annotations.clone();
    }

    // 6. The endpoint, then the rest of the state change.
    if let Some(active) = final_roles.get(Role::Active)
        && let Some((_, outcome)) = first.get(&active.name)
        && outcome.readiness.is_some()
    {
        let backend = backend_for(active.backend());
        let input = run.render_input(active, None);
        let target = backend.endpoint(&input);
        match endpoint::endpoint_service(&run.name, &run.namespace, spec, &target, Some(&run.owner))
        {
            Ok(service) => {
                if let Some(conflict) = run.apply_endpoint_object(&service).await? {
                    conflicts.push(conflict);
                }
            }
            Err(e) => conflicts.push(e.to_string()),
        }
        if let Some(gateway) = &spec.endpoint.gateway
            && !discovery.gateway_missing()
        {
            let mut backends = vec![WeightedBackend {
                backend: backend.route_backend(&input),
                weight: 100,
            }];
            if let (Step::Canary { weight, .. }, Some(c)) =
                (&step, final_roles.get(Role::Candidate))
            {
                let [a, b] = endpoint::split(Some(*weight), false);
                backends[0].weight = a;
                backends.push(WeightedBackend {
                    backend: backend_for(c.backend()).route_backend(&run.render_input(c, None)),
                    weight: b,
                });
            }
            match endpoint::http_route(
                &run.name,
                &run.namespace,
                gateway,
                &backends,
                Some(&run.owner),
            ) {
                Ok(route) => {
                    if let Some(conflict) = run.apply_endpoint_object(&route).await? {
                        conflicts.push(conflict);
                    }
                }
                Err(e) => conflicts.push(e.to_string()),
            }
        }
    }
    let outcomes = run
        .converge(
            &final_roles,
            &observed,
            &mut uids,
            &discovery,
            &first,
            &roles.delete,
        )
        .await?;

    // 7. Status, Events, when to come back.
    let status = build_status(&StatusInput {
        runtime,
        roles: &final_roles,
        outcomes: &outcomes,
        step: &step,
        invalid: None,
        unavailable: unavailable.clone(),
        conflicts,
        now,
    });
    apply_status_if_changed(&api, run.leader(), STATUS_MANAGER, runtime, &status).await?;
    let regarding: ObjectReference = runtime.object_ref(&());
    for (type_, reason, note) in std::mem::take(&mut run.events) {
        rctx.ctx
            .recorder
            .publish(&regarding, type_, reason, "Switch", Some(note))
            .await;
    }
    let wait = |until: Timestamp| {
        let secs = until.as_second().saturating_sub(now.as_second()).max(1);
        Duration::from_secs(u64::try_from(secs).unwrap_or(1))
    };
    Ok(match step {
        _ if unavailable.is_some() => Action::requeue(BACKEND_RETRY),
        Step::WaitReady { deadline, .. } => Action::requeue(wait(deadline).min(RESYNC)),
        Step::Canary { until, .. } => Action::requeue(wait(until).min(RESYNC)),
        Step::RetrySmoke { .. } => Action::requeue(plan::SMOKE_RETRY),
        _ if status.phase == Some(RuntimePhase::Provisioning) => Action::requeue(RESYNC),
        _ => Action::requeue(RESYNC * 10),
    })
}
