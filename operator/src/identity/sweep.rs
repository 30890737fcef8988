//! The orphan sweep: delete labelled ServiceAccounts, Secrets, Roles and RoleBindings whose
//! owning `EphemeralIdentity` no longer exists (garbage collection normally gets there first;
//! the sweep covers a lagging or disabled garbage collector and objects that lost their owner
//! reference).

use std::collections::BTreeSet;

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Secret, ServiceAccount},
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, ObjectMeta, Preconditions},
    core::PartialObjectMeta,
};
use overseer_crds::{
    agents::EphemeralIdentity,
    common::{MANAGED_BY_LABEL, MANAGED_BY_VALUE},
};
use serde::de::DeserializeOwned;
use tracing::info;

use super::build::IDENTITY_LABEL;
use crate::{
    controller::{Error, Result},
    leader::LeaderState,
};

/// The label selector of every object an identity owns.
pub fn child_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{IDENTITY_LABEL}")
}

/// The UID of the identity that controls `meta`, if an `EphemeralIdentity` does.
pub fn owning_identity(meta: &ObjectMeta) -> Option<&str> {
    let api_version = EphemeralIdentity::api_version(&());
    meta.owner_references.iter().flatten().find_map(|r| {
        (r.controller == Some(true)
            && r.kind == "EphemeralIdentity"
            && r.api_version == api_version)
            .then_some(r.uid.as_str())
    })
}

/// Whether a labelled child is an orphan: it is not being deleted already, and no identity in
/// `live` (UIDs) controls it.
pub fn is_orphan(meta: &ObjectMeta, live: &BTreeSet<String>) -> bool {
    meta.deletion_timestamp.is_none() && owning_identity(meta).is_none_or(|uid| !live.contains(uid))
}

/// Run one sweep over every namespace; returns how many objects were deleted.
///
/// Children are listed before identities, so a child made for an identity created during the
/// sweep always finds its owner in the second list.
pub async fn sweep(client: &Client, leader: &LeaderState) -> Result<usize> {
    let params = ListParams::default().labels(&child_selector());
    let service_accounts = list::<ServiceAccount>(client, &params).await?;
    let secrets = list::<Secret>(client, &params).await?;
    let roles = list::<Role>(client, &params).await?;
    let bindings = list::<RoleBinding>(client, &params).await?;
    let identities: Api<EphemeralIdentity> = Api::all(client.clone());
    let live: BTreeSet<String> = identities
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|m| m.metadata.uid)
        .collect();
    // Token Secrets first, ServiceAccounts last: the same order as a revocation.
    let mut deleted = delete_orphans(client, leader, secrets, &live).await?;
    deleted += delete_orphans(client, leader, bindings, &live).await?;
    deleted += delete_orphans(client, leader, roles, &live).await?;
    deleted += delete_orphans(client, leader, service_accounts, &live).await?;
    Ok(deleted)
}

async fn list<K>(client: &Client, params: &ListParams) -> Result<Vec<PartialObjectMeta<K>>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(Api::<K>::all(client.clone())
        .list_metadata(params)
        .await?
        .items)
}

async fn delete_orphans<K>(
    client: &Client,
    leader: &LeaderState,
    objects: Vec<PartialObjectMeta<K>>,
    live: &BTreeSet<String>,
) -> Result<usize>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut deleted = 0;
    for object in objects.into_iter().filter(|o| is_orphan(&o.metadata, live)) {
        let (Some(name), Some(namespace)) = (&object.metadata.name, &object.metadata.namespace)
        else {
            continue;
        };
        if !leader.is_leader() {
            return Err(Error::NotLeader);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: object.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match Api::<K>::namespaced(client.clone(), namespace)
            .delete(name, &params)
            .await
        {
            Ok(_) => {
                info!(kind = %K::kind(&()), name, namespace, "deleted an orphaned identity object");
                deleted += 1;
            }
            // Gone or replaced since the list: not ours to delete any more.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn meta(owner: Option<(&str, &str, bool)>) -> ObjectMeta {
        ObjectMeta {
            name: Some("eid-x".into()),
            namespace: Some("ns".into()),
            owner_references: owner.map(|(kind, uid, controller)| {
                vec![OwnerReference {
                    api_version: "agents.overseer.dev/v1alpha1".into(),
                    kind: kind.into(),
                    name: "x".into(),
                    uid: uid.into(),
                    controller: Some(controller),
                    block_owner_deletion: Some(true),
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn orphans_are_those_without_a_live_controlling_identity() {
        let live: BTreeSet<String> = ["alive".to_owned()].into();
        assert!(!is_orphan(
            &meta(Some(("EphemeralIdentity", "alive", true))),
            &live
        ));
        assert!(is_orphan(
            &meta(Some(("EphemeralIdentity", "gone", true))),
            &live
        ));
        assert!(
            is_orphan(&meta(None), &live),
            "a labelled object without owner"
        );
        assert!(
            is_orphan(&meta(Some(("EphemeralIdentity", "alive", false))), &live),
            "not a controller"
        );
        assert!(is_orphan(&meta(Some(("Deployment", "alive", true))), &live));
        let mut deleting = meta(Some(("EphemeralIdentity", "gone", true)));
        deleting.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!is_orphan(&deleting, &live), "already being deleted");
    }

    #[test]
    fn selector_requires_both_labels() {
        assert_eq!(
            child_selector(),
            "app.kubernetes.io/managed-by=overseer,agents.overseer.dev/ephemeral-identity"
        );
    }
}
