//! The seam between the rollout controller and the member clusters: [`Delivery`] resolves a
//! rollout's source, renders it per cluster, applies it to a member, reads the applied objects
//! back and prunes. The controller only plans and records; everything that talks to a member or a
//! source goes through this trait, so a reconcile can be tested with a fake.

use std::future::Future;

use kube::api::DynamicObject;
use overseer_crds::fleet::{DriftAction, FleetCluster, FleetRollout, Override};
use serde_json::Value;

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

/// How one apply behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Delete objects this rollout applied earlier that are not in the set.
    pub prune: bool,
    /// What to do with objects changed on the member since they were applied.
    pub when_drifted: DriftAction,
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyOutcome {
    /// The objects as the member returned them after the apply (for health), in set order.
    pub live: Vec<Value>,
    /// Objects found drifted (`apiVersion/kind/namespace/name`).
    pub drifted: Vec<String>,
    /// Objects pruned (`apiVersion/kind/namespace/name`).
    pub pruned: Vec<String>,
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
/// long as the network does.
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

    /// Server-side apply `objects` (already rendered for the cluster) to the member.
    fn apply(
        &self,
        cluster: &FleetCluster,
        rollout: &RolloutKey,
        objects: &[DynamicObject],
        options: ApplyOptions,
    ) -> impl Future<Output = Result<ApplyOutcome, DeliveryError>> + Send;

    /// Read `objects` back from the member, in the same order (`None`: not found).
    fn live(
        &self,
        cluster: &FleetCluster,
        objects: &[DynamicObject],
    ) -> impl Future<Output = Result<Vec<Option<Value>>, DeliveryError>> + Send;

    /// Delete every object the rollout applied to the member (it left the rollout's targets).
    fn prune_all(
        &self,
        cluster: &FleetCluster,
        rollout: &RolloutKey,
    ) -> impl Future<Output = Result<Vec<String>, DeliveryError>> + Send;
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
