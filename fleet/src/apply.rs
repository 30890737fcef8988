//! Delivery of a rendered set of objects to one member cluster: server-side apply, prune, drift
//! detection and correction, and health read back with the kstatus rules of [`crate::health`].
//!
//! # Writes
//! Every object is server-side applied with the field manager [`FIELD_MANAGER`]
//! (`overseer-fleet`) and `force=true`: the rollout is the source of truth for the fields it
//! sets, so a conflict with another manager (a `kubectl edit`, another controller) is taken over
//! instead of failing the rollout. Fields the rollout does not set stay with their owners.
//! Namespaces and CustomResourceDefinitions are applied first; a kind the member does not serve
//! is an error for that object only.
//!
//! # Ownership labels
//! Each applied object carries the labels [`ROLLOUT_LABEL`] (`NAMESPACE.NAME` of the
//! `FleetRollout`), [`MEMBER_LABEL`] (the `FleetCluster` it was delivered through) and
//! [`REVISION_LABEL`], plus the full revision in the [`REVISION_ANNOTATION`] annotation. Values
//! longer than a label allows are shortened with a hash suffix ([`label_value`]). The member label
//! keeps two `FleetCluster`s registered for the same physical cluster from pruning each other's
//! objects; an object delivered identically through both belongs to whichever applied it last.
//!
//! # Prune
//! Once every object of the set was applied (prune is skipped when any failed, so old objects are
//! never removed before their replacements are in place), objects that carry this rollout's and
//! this member's labels but are not in the set are deleted (background propagation, with a `uid` precondition so an object re-created
//! meanwhile is left alone). Prune looks only in the kinds of the set and in the kinds the caller
//! names in [`ApplyRequest::prune_kinds`] (pass the kinds of the revision applied before, so a
//! kind that left the source entirely is cleaned up too); it never deletes an object without both
//! labels. Reverting is applying the older set with prune: objects only the newer one had go.
//!
//! # Drift
//! [`check_drift`] asks the member what our apply would change, with a server-side dry-run apply,
//! and compares the answer with the live object (ignoring `status` and server bookkeeping). This
//! is what `kubectl diff` does: defaulting and normalization (quantities, list merge keys) are the
//! API server's own, so they never read as drift. A missing object is drift too. With
//! [`DriftAction::Correct`] a drifted object is applied again.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use kube::{
    Api,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions},
    core::GroupVersionKind,
    discovery::{ApiCapabilities, ApiResource, Scope},
};
use overseer_crds::fleet::{DriftAction, DriftedObject};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::{
    health::{GateEvaluator, Health, HealthStatus, object_health},
    member::{Member, MemberError},
};

/// The field manager of every write to a member.
pub const FIELD_MANAGER: &str = "overseer-fleet";
/// Label naming the `FleetRollout` (`NAMESPACE.NAME`) an object was applied by.
pub const ROLLOUT_LABEL: &str = "fleet.overseer.dev/rollout";
/// Label naming the `FleetCluster` an object was delivered through.
pub const MEMBER_LABEL: &str = "fleet.overseer.dev/member";
/// Label carrying the revision (shortened to a label value).
pub const REVISION_LABEL: &str = "fleet.overseer.dev/revision";
/// Annotation carrying the full revision.
pub const REVISION_ANNOTATION: &str = "fleet.overseer.dev/revision";
/// Most drifted field paths reported per object.
pub const MAX_DRIFT_FIELDS: usize = 16;
/// Page size of prune's lists.
const LIST_PAGE: u32 = 500;

/// The `FleetRollout` objects are delivered for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RolloutRef {
    /// Namespace of the rollout (in the hub).
    pub namespace: String,
    /// Name of the rollout.
    pub name: String,
}

impl RolloutRef {
    /// The rollout `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The value of [`ROLLOUT_LABEL`]: `NAMESPACE.NAME`, shortened when too long for a label.
    pub fn label_value(&self) -> String {
        label_value(&format!("{}.{}", self.namespace, self.name))
    }
}

impl fmt::Display for RolloutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `value` as a valid label value: unchanged when it is one; otherwise characters outside
/// `[A-Za-z0-9._-]` become `-`, and a value still too long (or not starting and ending with an
/// alphanumeric) becomes its first characters, `-` and 12 hex digits of its SHA-256.
pub fn label_value(value: &str) -> String {
    let valid = |s: &str| {
        s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    if valid(value) {
        return value.to_owned();
    }
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if valid(&cleaned) {
        return cleaned;
    }
    let hash = hex::encode(Sha256::digest(value.as_bytes()));
    let prefix: String = cleaned
        .chars()
        .take(50)
        .collect::<String>()
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    if prefix.is_empty() {
        hash[..12].to_owned()
    } else {
        format!("{prefix}-{}", &hash[..12])
    }
}

/// Identity of an object on a member: `apiVersion/kind/namespace/name` (no namespace part for
/// cluster-scoped objects), the form of `status.drifted[].object`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, for namespaced objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a rendered or live object; an error names what is missing.
    pub fn of(obj: &DynamicObject) -> Result<Self, String> {
        let types = obj
            .types
            .as_ref()
            .ok_or("object has no apiVersion and kind")?;
        if types.api_version.is_empty() || types.kind.is_empty() {
            return Err("object has no apiVersion or kind".to_owned());
        }
        let name = obj
            .metadata
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{} has no metadata.name", types.kind))?;
        Ok(Self {
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            namespace: obj.metadata.namespace.clone().filter(|n| !n.is_empty()),
            name,
        })
    }

    /// Group, version and kind.
    pub fn gvk(&self) -> GroupVersionKind {
        let (group, version) = match self.api_version.rsplit_once('/') {
            Some((g, v)) => (g, v),
            None => ("", self.api_version.as_str()),
        };
        GroupVersionKind::gvk(group, version, &self.kind)
    }

    /// The same identity ignoring the version (objects are the same across versions of a kind).
    fn group_kind_key(&self) -> (String, String, Option<String>, String) {
        let gvk = self.gvk();
        (
            gvk.group,
            self.kind.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}/{}", self.api_version, self.kind, ns, self.name),
            None => write!(f, "{}/{}/{}", self.api_version, self.kind, self.name),
        }
    }
}

/// One delivery of a revision to one member.
#[derive(Clone, Copy, Debug)]
pub struct ApplyRequest<'a> {
    /// The rollout delivering.
    pub rollout: &'a RolloutRef,
    /// Revision (digest) of the set.
    pub revision: &'a str,
    /// The rendered objects, overrides for this member already applied.
    pub objects: &'a [DynamicObject],
    /// Delete objects of this rollout and member that are not in `objects`.
    pub prune: bool,
    /// Kinds to look for stale objects in, besides those of `objects` (e.g. the kinds of the
    /// revision applied before).
    pub prune_kinds: &'a [GroupVersionKind],
    /// Health judgment (a stage gate's); plain kstatus rules when `None`.
    pub gate: Option<&'a GateEvaluator>,
}

/// The health of one object on a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectHealth {
    /// The object.
    pub object: ObjectKey,
    /// Its health.
    pub health: Health,
}

/// An object found changed on a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// The object.
    pub object: ObjectKey,
    /// Paths of the fields that differ (`.spec.replicas`), at most [`MAX_DRIFT_FIELDS`];
    /// `["(missing)"]` when the object is gone.
    pub fields: Vec<String>,
    /// Whether it was applied again.
    pub corrected: bool,
}

/// An object that could not be applied, pruned or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    /// The object (`None` when the rendered object lacks its identity).
    pub object: Option<ObjectKey>,
    /// What failed.
    pub message: String,
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "{o}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What a delivery did on one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The `FleetCluster`.
    pub cluster: String,
    /// The revision delivered.
    pub revision: String,
    /// Objects applied (for a drift check: the ones corrected).
    pub applied: Vec<ObjectKey>,
    /// Objects deleted by prune.
    pub pruned: Vec<ObjectKey>,
    /// Objects found drifted (drift checks only).
    pub drifted: Vec<Drift>,
    /// Health of every object of the set that could be read.
    pub health: Vec<ObjectHealth>,
    /// What failed; the rest went on.
    pub errors: Vec<ObjectError>,
}

impl ApplyReport {
    fn new(cluster: &str, revision: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            revision: revision.to_owned(),
            ..Self::default()
        }
    }

    /// Whether nothing failed.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty()
    }

    /// The cluster's health as the planner's observation: `Failed` with the first error when
    /// anything failed, otherwise the worst object's health (`Deployment/ns/api: Updated: 1/3`).
    pub fn cluster_health(&self) -> Health {
        if let Some(first) = self.errors.first() {
            let more = match self.errors.len() {
                1 => String::new(),
                n => format!(" (and {} more errors)", n - 1),
            };
            return Health::failed(format!("{first}{more}"));
        }
        combined_health(&self.health)
    }

    /// The drifted objects in the form of `FleetRollout.status.drifted`.
    pub fn drifted_objects(&self) -> Vec<DriftedObject> {
        self.drifted
            .iter()
            .map(|d| DriftedObject {
                cluster: self.cluster.clone(),
                object: d.object.to_string(),
                corrected: d.corrected,
            })
            .collect()
    }

    /// The kinds of the objects applied, for the next delivery's [`ApplyRequest::prune_kinds`].
    pub fn kinds(&self) -> Vec<GroupVersionKind> {
        let mut seen = BTreeSet::new();
        self.applied
            .iter()
            .filter(|k| seen.insert((k.api_version.clone(), k.kind.clone())))
            .map(ObjectKey::gvk)
            .collect()
    }
}

/// The worst health among `objects`, its message prefixed with the object; no objects is
/// `Current`.
pub fn combined_health(objects: &[ObjectHealth]) -> Health {
    let worst = objects.iter().max_by_key(|o| {
        (
            severity(o.health.status),
            std::cmp::Reverse(o.object.clone()),
        )
    });
    match worst {
        None => Health::current("no objects"),
        Some(o) if o.health.is_current() => Health::current("all objects are current"),
        Some(o) => Health {
            status: o.health.status,
            message: format!("{}: {}", o.object, o.health.message),
        },
    }
}

fn severity(s: HealthStatus) -> u8 {
    match s {
        HealthStatus::Current => 0,
        HealthStatus::InProgress => 1,
        HealthStatus::Unknown => 2,
        HealthStatus::Failed => 3,
    }
}

/// A rendered object made ready to apply through `member`: its key, its API resource and the
/// apply body.
#[derive(Debug)]
struct Prepared {
    key: ObjectKey,
    resource: ApiResource,
    namespaced: bool,
    body: Value,
}

/// The body applied for `obj`: `obj` with the ownership labels and revision annotation added and
/// the fields only the server sets (`status`, `resourceVersion`, `uid`, `managedFields`, ...)
/// removed; `namespaced: false` also removes `metadata.namespace`.
pub fn apply_body(
    obj: &DynamicObject,
    rollout: &RolloutRef,
    member: &str,
    revision: &str,
    namespaced: bool,
) -> Result<Value, String> {
    let mut body = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let map = body.as_object_mut().ok_or("object is not a JSON object")?;
    map.remove("status");
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or("metadata is not an object")?;
    for server_field in [
        "resourceVersion",
        "uid",
        "managedFields",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        metadata.remove(server_field);
    }
    if !namespaced {
        metadata.remove("namespace");
    }
    let labels = string_map(metadata, "labels")?;
    labels.insert(ROLLOUT_LABEL.into(), rollout.label_value().into());
    labels.insert(MEMBER_LABEL.into(), label_value(member).into());
    labels.insert(REVISION_LABEL.into(), label_value(revision).into());
    let annotations = string_map(metadata, "annotations")?;
    annotations.insert(REVISION_ANNOTATION.into(), revision.into());
    Ok(body)
}

fn string_map<'a>(
    metadata: &'a mut Map<String, Value>,
    field: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let entry = metadata
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("metadata.{field} is not a map"))
}

/// The label selector of the objects `rollout` delivered through `member`.
pub fn ownership_selector(rollout: &RolloutRef, member: &str) -> String {
    format!(
        "{ROLLOUT_LABEL}={},{MEMBER_LABEL}={}",
        rollout.label_value(),
        label_value(member)
    )
}

/// Apply order: CRDs, then Namespaces, then the rest in the given order.
fn apply_rank(key: &ObjectKey) -> u8 {
    match (key.gvk().group.as_str(), key.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "Namespace") => 1,
        _ => 2,
    }
}

/// Resolve and build the apply body of every object; failures become report errors.
async fn prepare(
    member: &Member,
    req: &ApplyRequest<'_>,
    report: &mut ApplyReport,
) -> Result<Vec<Prepared>, MemberError> {
    let mut keyed = Vec::with_capacity(req.objects.len());
    for obj in req.objects {
        match ObjectKey::of(obj) {
            Ok(key) => keyed.push((key, obj)),
            Err(message) => report.errors.push(ObjectError {
                object: None,
                message,
            }),
        }
    }
    keyed.sort_by_key(|(key, _)| apply_rank(key));
    let mut prepared = Vec::with_capacity(keyed.len());
    for (mut key, obj) in keyed {
        let (resource, caps) = match member.resolve(&key.gvk()).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                report.errors.push(ObjectError {
                    message: format!(
                        "the cluster does not serve {} {}",
                        key.api_version, key.kind
                    ),
                    object: Some(key),
                });
                continue;
            }
            Err(e) => {
                record(report, &key, "discovery failed", e)?;
                continue;
            }
        };
        let namespaced = caps.scope == Scope::Namespaced;
        if namespaced && key.namespace.is_none() {
            report.errors.push(ObjectError {
                object: Some(key),
                message: "a namespaced object needs metadata.namespace".into(),
            });
            continue;
        }
        if !namespaced {
            key.namespace = None;
        }
        match apply_body(obj, req.rollout, member.name(), req.revision, namespaced) {
            Ok(body) => prepared.push(Prepared {
                key,
                resource,
                namespaced,
                body,
            }),
            Err(message) => report.errors.push(ObjectError {
                object: Some(key),
                message,
            }),
        }
    }
    Ok(prepared)
}

fn api_for(member: &Member, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(member.client().clone(), ns, resource),
        None => Api::all_with(member.client().clone(), resource),
    }
}

fn object_api(member: &Member, p: &Prepared) -> Api<DynamicObject> {
    api_for(
        member,
        &p.resource,
        if p.namespaced {
            p.key.namespace.as_deref()
        } else {
            None
        },
    )
}

fn judge(gate: Option<&GateEvaluator>, obj: &Value) -> Health {
    match gate {
        Some(gate) => gate.object_health(obj),
        None => object_health(obj),
    }
}

/// Server-side apply one prepared object (`dry_run`: ask what it would give).
async fn patch(member: &Member, p: &Prepared, dry_run: bool) -> Result<DynamicObject, MemberError> {
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let api = object_api(member, p);
    member
        .bounded(api.patch(&p.key.name, &params, &Patch::Apply(&p.body)))
        .await
}

/// Record a per-object failure, or stop the delivery when the member is unreachable.
fn record(
    report: &mut ApplyReport,
    key: &ObjectKey,
    what: &str,
    error: MemberError,
) -> Result<(), MemberError> {
    if error.is_unreachable() {
        return Err(error);
    }
    report.errors.push(ObjectError {
        object: Some(key.clone()),
        message: format!("{what}: {error}"),
    });
    Ok(())
}

/// Deliver `req` to `member`: apply every object, prune when asked and every object was applied,
/// and report each object's health as returned by the apply. Per-object failures are in [`ApplyReport::errors`]; an
/// unreachable member stops the delivery with the error (nothing after it was attempted).
pub async fn apply(member: &Member, req: &ApplyRequest<'_>) -> Result<ApplyReport, MemberError> {
    let mut report = ApplyReport::new(member.name(), req.revision);
    let prepared = prepare(member, req, &mut report).await?;
    for p in &prepared {
        match patch(member, p, false).await {
            Ok(applied) => {
                report.applied.push(p.key.clone());
                let health = judge(
                    req.gate,
                    &serde_json::to_value(&applied).unwrap_or_default(),
                );
                report.health.push(ObjectHealth {
                    object: p.key.clone(),
                    health,
                });
            }
            Err(e) => record(&mut report, &p.key, "apply failed", e)?,
        }
    }
    // Prune only once the whole set is in place: never remove the old objects when the new ones
    // could not all be applied.
    if req.prune && report.errors.is_empty() {
        // Objects that failed to prepare keep their identity where it is known: never prune them.
        let mut keep: HashSet<_> = prepared.iter().map(|p| p.key.group_kind_key()).collect();
        keep.extend(
            req.objects
                .iter()
                .filter_map(|o| ObjectKey::of(o).ok())
                .map(|k| k.group_kind_key()),
        );
        let kinds = prune_kinds(req.objects, req.prune_kinds);
        prune_into(member, req.rollout, &kinds, &keep, &mut report).await?;
    }
    Ok(report)
}

/// Delete every object `rollout` delivered through `member` in `kinds` (the cluster left the
/// rollout's targets). An unreachable member stops it with the error.
pub async fn prune_all(
    member: &Member,
    rollout: &RolloutRef,
    kinds: &[GroupVersionKind],
) -> Result<ApplyReport, MemberError> {
    let mut report = ApplyReport::new(member.name(), "");
    prune_into(member, rollout, kinds, &HashSet::new(), &mut report).await?;
    Ok(report)
}

/// The kinds of `objects` followed by `extra`, each (group, kind) once.
fn prune_kinds(objects: &[DynamicObject], extra: &[GroupVersionKind]) -> Vec<GroupVersionKind> {
    let mut seen = HashSet::new();
    objects
        .iter()
        .filter_map(|o| ObjectKey::of(o).ok().map(|k| k.gvk()))
        .chain(extra.iter().cloned())
        .filter(|gvk| seen.insert((gvk.group.clone(), gvk.kind.clone())))
        .collect()
}

/// Delete the objects of `kinds` labelled for `rollout` and `member` whose identity is not in
/// `keep`. Namespaced kinds go first, Namespaces and CRDs last.
async fn prune_into(
    member: &Member,
    rollout: &RolloutRef,
    kinds: &[GroupVersionKind],
    keep: &HashSet<(String, String, Option<String>, String)>,
    report: &mut ApplyReport,
) -> Result<(), MemberError> {
    let selector = ownership_selector(rollout, member.name());
    let want_rollout = rollout.label_value();
    let want_member = label_value(member.name());
    let mut resolved: Vec<(ApiResource, ApiCapabilities)> = Vec::new();
    for gvk in kinds {
        match member.resolve(gvk).await {
            Ok(Some(found)) => resolved.push(found),
            Err(e) => {
                let key = ObjectKey {
                    api_version: gvk.api_version(),
                    kind: gvk.kind.clone(),
                    namespace: None,
                    name: "*".into(),
                };
                record(report, &key, "discovery for prune failed", e)?;
            }
            Ok(None) => debug!(
                cluster = member.name(),
                ?gvk,
                "kind not served: nothing to prune"
            ),
        }
    }
    resolved.sort_by_key(|(ar, caps)| {
        (
            caps.scope != Scope::Namespaced,
            matches!(ar.kind.as_str(), "Namespace" | "CustomResourceDefinition"),
        )
    });
    for (resource, caps) in &resolved {
        let listed = match list_owned(member, resource, &selector).await {
            Ok(items) => items,
            Err(e) => {
                let key = ObjectKey {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                    namespace: None,
                    name: "*".into(),
                };
                record(report, &key, "listing for prune failed", e)?;
                continue;
            }
        };
        for obj in listed {
            let labels = obj.metadata.labels.as_ref();
            let ours = labels.and_then(|l| l.get(ROLLOUT_LABEL)) == Some(&want_rollout)
                && labels.and_then(|l| l.get(MEMBER_LABEL)) == Some(&want_member);
            if !ours || obj.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = obj.metadata.name.clone() else {
                continue;
            };
            let namespace = if caps.scope == Scope::Namespaced {
                obj.metadata.namespace.clone()
            } else {
                None
            };
            let key = ObjectKey {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
                namespace,
                name,
            };
            if keep.contains(&key.group_kind_key()) {
                continue;
            }
            let params = DeleteParams {
                preconditions: obj.metadata.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            let api = api_for(member, resource, key.namespace.as_deref());
            match member.bounded(api.delete(&key.name, &params)).await {
                Ok(_) => report.pruned.push(key),
                // Already gone, or replaced by a new object of the same name: not ours to delete.
                Err(MemberError::Api { source, .. }) if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 404 || s.code == 409) =>
                    {}
                Err(e) => record(report, &key, "prune failed", e)?,
            }
        }
    }
    Ok(())
}

/// Every object of `resource` matching `selector`, page by page.
async fn list_owned(
    member: &Member,
    resource: &ApiResource,
    selector: &str,
) -> Result<Vec<DynamicObject>, MemberError> {
    let api: Api<DynamicObject> = Api::all_with(member.client().clone(), resource);
    let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
    let mut items = Vec::new();
    loop {
        let page = member.bounded(api.list(&params)).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Compare the objects of `req` on `member` with what applying them would give (server-side
/// dry run), report the drifted ones and, with [`DriftAction::Correct`], apply them again.
/// Health is read from the live objects (or from the corrected ones). `req.prune` is ignored.
pub async fn check_drift(
    member: &Member,
    req: &ApplyRequest<'_>,
    action: DriftAction,
) -> Result<ApplyReport, MemberError> {
    let mut report = ApplyReport::new(member.name(), req.revision);
    let prepared = prepare(member, req, &mut report).await?;
    for p in &prepared {
        let live = match member
            .bounded(object_api(member, p).get_opt(&p.key.name))
            .await
        {
            Ok(live) => live,
            Err(e) => {
                record(&mut report, &p.key, "reading failed", e)?;
                continue;
            }
        };
        let fields = match &live {
            None => vec!["(missing)".to_owned()],
            Some(live) => match patch(member, p, true).await {
                Ok(would) => drifted_fields(
                    &serde_json::to_value(live).unwrap_or_default(),
                    &serde_json::to_value(&would).unwrap_or_default(),
                ),
                Err(e) => {
                    record(&mut report, &p.key, "dry-run apply failed", e)?;
                    continue;
                }
            },
        };
        let mut current = live.map(|l| serde_json::to_value(l).unwrap_or_default());
        if !fields.is_empty() {
            let mut corrected = false;
            if action == DriftAction::Correct {
                match patch(member, p, false).await {
                    Ok(applied) => {
                        corrected = true;
                        report.applied.push(p.key.clone());
                        current = Some(serde_json::to_value(applied).unwrap_or_default());
                    }
                    Err(e) => record(&mut report, &p.key, "correcting drift failed", e)?,
                }
            }
            report.drifted.push(Drift {
                object: p.key.clone(),
                fields,
                corrected,
            });
        }
        let health = match &current {
            Some(obj) => judge(req.gate, obj),
            None => Health::in_progress("not found on the cluster"),
        };
        report.health.push(ObjectHealth {
            object: p.key.clone(),
            health,
        });
    }
    Ok(report)
}

/// Read the health of `req`'s objects on `member` without writing anything: the observation the
/// planner waits for after an apply. A missing object is `InProgress`.
pub async fn read_health(
    member: &Member,
    req: &ApplyRequest<'_>,
) -> Result<ApplyReport, MemberError> {
    let mut report = ApplyReport::new(member.name(), req.revision);
    let prepared = prepare(member, req, &mut report).await?;
    for p in &prepared {
        match member
            .bounded(object_api(member, p).get_opt(&p.key.name))
            .await
        {
            Ok(live) => report.health.push(ObjectHealth {
                object: p.key.clone(),
                health: match live {
                    Some(obj) => judge(req.gate, &serde_json::to_value(obj).unwrap_or_default()),
                    None => Health::in_progress("not found on the cluster"),
                },
            }),
            Err(e) => record(&mut report, &p.key, "reading failed", e)?,
        }
    }
    Ok(report)
}

/// Paths where `would` (the dry-run result) differs from `live`, ignoring `status` and the
/// metadata the server keeps for itself; at most [`MAX_DRIFT_FIELDS`].
pub fn drifted_fields(live: &Value, would: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff(&comparable(live), &comparable(would), "", &mut out);
    out
}

fn comparable(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in ["managedFields", "resourceVersion", "generation"] {
                meta.remove(field);
            }
        }
    }
    obj
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= MAX_DRIFT_FIELDS || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let null = Value::Null;
                diff(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}{}", escape_key(k)),
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{path}[{i}]"), out);
            }
        }
        _ => out.push(if path.is_empty() {
            ".".into()
        } else {
            path.to_owned()
        }),
    }
}

fn escape_key(k: &str) -> String {
    if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!(".{k}")
    } else {
        format!("[{k:?}]")
    }
}

/// Group the objects of a set by kind, for callers that want [`ApplyRequest::prune_kinds`] of an
/// earlier set.
pub fn kinds_of(objects: &[DynamicObject]) -> Vec<GroupVersionKind> {
    prune_kinds(objects, &[])
}

/// Count objects by health status, e.g. for messages.
pub fn health_counts(objects: &[ObjectHealth]) -> BTreeMap<HealthStatus, usize> {
    let mut counts = BTreeMap::new();
    for o in objects {
        *counts.entry(o.health.status).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_values_stay_readable_and_valid() {
        assert_eq!(label_value("team-a.web"), "team-a.web");
        assert_eq!(label_value("sha256:abc"), "sha256-abc");
        let long = format!("sha256:{}", "a".repeat(64));
        let v = label_value(&long);
        assert!(v.len() <= 63, "{v}");
        assert!(v.starts_with("sha256-aaaa"), "{v}");
        assert_ne!(v, label_value(&format!("sha256:{}b", "a".repeat(63))));
        assert_eq!(label_value("/"), label_value("/"));
        assert!(label_value("/").chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn keys_print_as_in_status() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "pay"}
        }))
        .expect("object");
        let key = ObjectKey::of(&obj).expect("key");
        assert_eq!(key.to_string(), "apps/v1/Deployment/pay/api");
        assert_eq!(key.gvk(), GroupVersionKind::gvk("apps", "v1", "Deployment"));
        let nameless: DynamicObject = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
        )
        .expect("object");
        assert_eq!(
            ObjectKey::of(&nameless).expect_err("no name"),
            "ConfigMap has no metadata.name"
        );
    }

    #[test]
    fn bodies_carry_ownership_and_drop_server_fields() {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "r", "namespace": "stray", "resourceVersion": "9", "uid": "u",
                         "labels": {"app": "x"}, "annotations": null},
            "rules": [],
            "status": {"x": 1}
        }))
        .expect("object");
        let body = apply_body(
            &obj,
            &RolloutRef::new("team-a", "web"),
            "edge-1",
            "rev1",
            false,
        )
        .expect("body");
        assert_eq!(
            body,
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "r",
                    "labels": {"app": "x", ROLLOUT_LABEL: "team-a.web", MEMBER_LABEL: "edge-1", REVISION_LABEL: "rev1"},
                    "annotations": {REVISION_ANNOTATION: "rev1"}},
                "rules": []
            })
        );
    }

    #[test]
    fn drift_paths_name_the_changed_fields_only() {
        let live = json!({"metadata": {"name": "a", "resourceVersion": "1", "managedFields": [1]},
                          "spec": {"replicas": 5, "template": {"x": [1, 2]}}, "status": {"a": 1}});
        let would = json!({"metadata": {"name": "a", "resourceVersion": "2"},
                           "spec": {"replicas": 3, "template": {"x": [1, 3]}}, "status": {"a": 2}});
        assert_eq!(
            drifted_fields(&live, &would),
            vec![".spec.replicas", ".spec.template.x[1]"]
        );
        assert!(drifted_fields(&live, &live).is_empty());
        let labels = json!({"metadata": {"labels": {"app.kubernetes.io/name": "a"}}});
        assert_eq!(
            drifted_fields(&labels, &json!({"metadata": {"labels": {}}})),
            vec![".metadata.labels[\"app.kubernetes.io/name\"]"]
        );
    }

    #[test]
    fn the_worst_object_decides_and_errors_fail_the_cluster() {
        let key = |n: &str| ObjectKey {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("pay".into()),
            name: n.into(),
        };
        let mut report = ApplyReport::new("edge-1", "r1");
        assert_eq!(report.cluster_health(), Health::current("no objects"));
        report.health = vec![
            ObjectHealth {
                object: key("a"),
                health: Health::current("ok"),
            },
            ObjectHealth {
                object: key("b"),
                health: Health::in_progress("Updated: 1/3"),
            },
        ];
        assert_eq!(
            report.cluster_health(),
            Health::in_progress("apps/v1/Deployment/pay/b: Updated: 1/3")
        );
        report.errors.push(ObjectError {
            object: Some(key("c")),
            message: "apply failed: boom".into(),
        });
        report.errors.push(ObjectError {
            object: None,
            message: "x".into(),
        });
        assert_eq!(
            report.cluster_health(),
            Health::failed("apps/v1/Deployment/pay/c: apply failed: boom (and 1 more errors)")
        );
        assert_eq!(health_counts(&report.health)[&HealthStatus::Current], 1);
    }
}
