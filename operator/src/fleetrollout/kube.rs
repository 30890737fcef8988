//! The real [`Delivery`]: sources through [`fleet::source::SourceResolver`], overrides through
//! [`fleet::overrides::render_for_cluster`], members through [`fleet::member::MemberPool`] and
//! delivery through [`fleet::apply`].

use std::path::PathBuf;

use fleet::{
    apply::{self as deliver, ApplyReport, ApplyRequest, RolloutRef},
    health::Health,
    member::{MemberError, MemberPool},
    overrides::render_for_cluster,
    source::{SourceError, SourceResolver},
};
use kube::{
    Client, ResourceExt,
    api::{DynamicObject, GroupVersionKind},
};
use overseer_crds::fleet::{DriftAction, FleetCluster, FleetRollout, Override};

use super::delivery::{ApplyOutcome, Delivered, Delivery, DeliveryError, Rendered, RolloutKey};

/// Delivery to real member clusters.
#[derive(Clone, Debug)]
pub struct KubeDelivery {
    sources: SourceResolver,
    members: MemberPool,
}

impl KubeDelivery {
    /// Sources read through the hub `client` (Git repositories cached under `git_cache`);
    /// members reached with the kubeconfigs their `FleetCluster`s name.
    pub fn new(client: Client, git_cache: impl Into<PathBuf>) -> Result<Self, SourceError> {
        Ok(Self {
            sources: SourceResolver::new(client.clone(), git_cache)?,
            members: MemberPool::new(client),
        })
    }
}

fn source_error(e: &SourceError) -> DeliveryError {
    DeliveryError {
        message: e.to_string(),
        retryable: e.is_transient(),
    }
}

/// An unreachable member is retried; a kubeconfig or permission problem fails the cluster with
/// the reason (a human must fix it).
fn member_error(e: &MemberError) -> DeliveryError {
    DeliveryError {
        message: e.to_string(),
        retryable: e.is_unreachable() || matches!(e, MemberError::SecretUnreadable { .. }),
    }
}

fn rollout_ref(key: &RolloutKey) -> RolloutRef {
    RolloutRef::new(&key.namespace, &key.name)
}

fn outcome(report: &ApplyReport) -> ApplyOutcome {
    ApplyOutcome {
        health: report.cluster_health(),
        drifted: report.drifted_objects(),
        pruned: report.pruned.len(),
    }
}

impl KubeDelivery {
    async fn member(&self, cluster: &FleetCluster) -> Result<fleet::member::Member, DeliveryError> {
        self.members
            .member(cluster)
            .await
            .map_err(|e| member_error(&e))
    }
}

impl Delivery for KubeDelivery {
    async fn resolve(&self, rollout: &FleetRollout) -> Result<Rendered, DeliveryError> {
        let namespace = rollout.namespace().unwrap_or_default();
        let rendered = self
            .sources
            .resolve(&namespace, &rollout.spec.source)
            .await
            .map_err(|e| source_error(&e))?;
        Ok(Rendered {
            revision: rendered.revision,
            objects: rendered.objects,
        })
    }

    fn render(
        &self,
        objects: &[DynamicObject],
        overrides: &[Override],
        cluster: &FleetCluster,
    ) -> Result<Vec<DynamicObject>, DeliveryError> {
        render_for_cluster(objects, overrides, &cluster.name_any(), cluster.labels())
            .map_err(|e| DeliveryError::permanent(e.to_string()))
    }

    async fn apply(&self, req: Delivered<'_>) -> Result<ApplyOutcome, DeliveryError> {
        let member = self.member(req.cluster).await?;
        let rollout = rollout_ref(req.rollout);
        let report = deliver::apply(
            &member,
            &ApplyRequest {
                rollout: &rollout,
                revision: req.revision,
                objects: req.objects,
                prune: req.prune,
                prune_kinds: req.prune_kinds,
                gate: Some(req.gate),
            },
        )
        .await
        .map_err(|e| member_error(&e))?;
        Ok(outcome(&report))
    }

    async fn read_health(&self, req: Delivered<'_>) -> Result<Health, DeliveryError> {
        let member = self.member(req.cluster).await?;
        let rollout = rollout_ref(req.rollout);
        let report = deliver::read_health(
            &member,
            &ApplyRequest {
                rollout: &rollout,
                revision: req.revision,
                objects: req.objects,
                prune: false,
                prune_kinds: &[],
                gate: Some(req.gate),
            },
        )
        .await
        .map_err(|e| member_error(&e))?;
        Ok(report.cluster_health())
    }

    async fn check_drift(
        &self,
        req: Delivered<'_>,
        action: DriftAction,
    ) -> Result<ApplyOutcome, DeliveryError> {
        let member = self.member(req.cluster).await?;
        let rollout = rollout_ref(req.rollout);
        let report = deliver::check_drift(
            &member,
            &ApplyRequest {
                rollout: &rollout,
                revision: req.revision,
                objects: req.objects,
                prune: false,
                prune_kinds: &[],
                gate: Some(req.gate),
            },
            action,
        )
        .await
        .map_err(|e| member_error(&e))?;
        Ok(outcome(&report))
    }

    async fn prune_all(
        &self,
        cluster: &FleetCluster,
        rollout: &RolloutKey,
        kinds: &[GroupVersionKind],
    ) -> Result<usize, DeliveryError> {
        let member = self.member(cluster).await?;
        let report = deliver::prune_all(&member, &rollout_ref(rollout), kinds)
            .await
            .map_err(|e| member_error(&e))?;
        match report.errors.first() {
            Some(e) => Err(DeliveryError::permanent(e.to_string())),
            None => Ok(report.pruned.len()),
        }
    }
}
