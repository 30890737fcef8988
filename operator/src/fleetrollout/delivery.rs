//! The seam between the rollout controller and the member clusters: [`Delivery`] resolves a
//! rollout's source, renders it per cluster, applies it to a member, reads the applied objects
//! back and prunes. The controller only plans and records; everything that talks to a member or a
//! source goes through this trait, so a reconcile can be tested with a fake.

use std::future::Future;

pub use fleet::health::{GateEvaluator, Health};
use kube::api::{DynamicObject, GroupVersionKind};
use overseer_crds::fleet::{DriftAction, DriftedObject, FleetCluster, FleetRollout, Override};

/// The rendered source of a rollout: every object of one revision, before per-cluster overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Digest of the rendered set (e.g. `sha256:...`); the rollout's target revision.
    pub revision: String,
    /// The objects, in source order.
    pub objects: Vec<DynamicObject>,
}

/// Which rollout an apply is for: the inventory key on the member (objects carry it so prune
/// finds what the rollout put there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutKey {
    /// Namespace of the `FleetRollout` in the hub.
    pub namespace: String,
    /// Name of the `FleetRollout`.
    pub name: String,
}

/// One delivery of a revision to one member.
#[derive(Clone, Copy, Debug)]
pub struct Delivered<'a> {
    /// The member.
    pub cluster: &'a FleetCluster,
    /// The rollout delivering.
    pub rollout: &'a RolloutKey,
    /// The revision of `objects`.
    pub revision: &'a str,
    /// The objects, already rendered for the member.
    pub objects: &'a [DynamicObject],
    /// Delete objects this rollout applied earlier that are not in the set.
    pub prune: bool,
    /// Kinds to look for such objects in, besides those of `objects`.
    pub prune_kinds: &'a [GroupVersionKind],
    /// The stage gate that judges the objects' health.
    pub gate: &'a GateEvaluator,
}

/// What an apply, a drift check or a health read found.
#[derive(Clone, Debug, PartialEq)]
pub struct ApplyOutcome {
    /// The cluster's health: the worst object's, `Failed` naming the first object that could not
    /// be applied.
    pub health: Health,
    /// Objects found changed since they were applied (drift checks).
    pub drifted: Vec<DriftedObject>,
    /// How many objects prune deleted.
    pub pruned: usize,
}

impl ApplyOutcome {
    /// An outcome with only a health verdict.
    pub fn health(health: Health) -> Self {
        Self {
            health,
            drifted: Vec::new(),
            pruned: 0,
        }
    }
}

/// A failure talking to a source or a member.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// What went wrong, naming the object (`ConfigMap/ns/name: ...`, `Deployment/ns/api: ...`).
    pub message: String,
    /// Whether trying again later may succeed (a transport error, a timeout, a throttled API)
    /// rather than needing a change by a human (an invalid manifest, a rejected object).
    pub retryable: bool,
}

impl DeliveryError {
    /// A failure a retry will not fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }

    /// A failure a retry may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Everything the rollout controller needs from sources and member clusters.
///
/// Methods that reach a member receive its `FleetCluster`; the implementation finds (and caches)
/// the client for it. Callers bound every call with a timeout, so an implementation may block as
/// long as the network does. An unreachable member is a retryable error; an object the member
/// refuses is a `Failed` health in the outcome.
pub trait Delivery: Send + Sync + 'static {
    /// Resolve the rollout's source into its rendered objects and revision. An error names the
    /// object and the problem; nothing is applied from a source that fails as a whole.
    fn resolve(
        &self,
        rollout: &FleetRollout,
    ) -> impl Future<Output = Result<Rendered, DeliveryError>> + Send;

    /// The objects for one cluster: `objects` with the `overrides` that select `cluster` applied.
    fn render(
        &self,
        objects: &[DynamicObject],
        overrides: &[Override],
        cluster: &FleetCluster,
    ) -> Result<Vec<DynamicObject>, DeliveryError>;

    /// Server-side apply the objects to the member (pruning when asked) and judge what the
    /// member returned.
    fn apply(
        &self,
        req: Delivered<'_>,
    ) -> impl Future<Output = Result<ApplyOutcome, DeliveryError>> + Send;

    /// Read the objects back from the member and judge them (a missing object is in progress).
    fn read_health(
        &self,
        req: Delivered<'_>,
    ) -> impl Future<Output = Result<Health, DeliveryError>> + Send;

    /// Compare the objects on the member with what applying them would give; with
    /// [`DriftAction::Correct`] apply the drifted ones again.
    fn check_drift(
        &self,
        req: Delivered<'_>,
        action: DriftAction,
    ) -> impl Future<Output = Result<ApplyOutcome, DeliveryError>> + Send;

    /// Delete every object of `kinds` the rollout applied to the member (it left the targets).
    fn prune_all(
        &self,
        cluster: &FleetCluster,
        rollout: &RolloutKey,
        kinds: &[GroupVersionKind],
    ) -> impl Future<Output = Result<usize, DeliveryError>> + Send;
}

/// The kinds of `objects`, each once, in first-seen order.
pub fn kinds_of<'a>(objects: impl IntoIterator<Item = &'a DynamicObject>) -> Vec<GroupVersionKind> {
    let mut out: Vec<GroupVersionKind> = Vec::new();
    for o in objects {
        let Some(t) = o.types.as_ref() else { continue };
        let (group, version) = t
            .api_version
            .rsplit_once('/')
            .unwrap_or(("", &t.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &t.kind);
        if !out
            .iter()
            .any(|k| k.group == gvk.group && k.kind == gvk.kind)
        {
            out.push(gvk);
        }
    }
    out
}

/// `apiVersion/kind/namespace/name` (or `apiVersion/kind/name`) of an object, for messages.
pub fn object_key(obj: &DynamicObject) -> String {
    let (api_version, kind) = obj
        .types
        .as_ref()
        .map_or(("?", "?"), |t| (t.api_version.as_str(), t.kind.as_str()));
    let name = obj.metadata.name.as_deref().unwrap_or("?");
    match obj.metadata.namespace.as_deref() {
        Some(ns) => format!("{api_version}/{kind}/{ns}/{name}"),
        None => format!("{api_version}/{kind}/{name}"),
    }
}
