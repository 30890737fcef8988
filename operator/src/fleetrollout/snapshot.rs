//! Revision snapshots: the rendered objects of every revision a rollout started, kept in a
//! ConfigMap in the hub (owned by the rollout) so an automatic rollback can re-apply a revision
//! that has left the source, and a restarted operator can still read what it applied.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, ObjectMeta},
};
use overseer_crds::fleet::{FleetRollout, Override};

use super::delivery::Rendered;
use crate::{
    controller::{
        Error, Result,
        apply::{FieldManager, Ownership, apply},
    },
    leader::LeaderState,
};

/// Label on every snapshot: the rollout's name (shortened to a valid label value).
pub const ROLLOUT_LABEL: &str = "fleet.overseer.dev/rollout";
/// Annotation on every snapshot: the full revision.
pub const REVISION_ANNOTATION: &str = "fleet.overseer.dev/revision";
/// The key holding the objects (a JSON array), as binary data so nothing re-encodes it.
pub const DATA_KEY: &str = "objects.json";
/// The key holding the rollout's `spec.overrides` the revision was rendered with (a JSON array):
/// a rollback renders the old objects with the old overrides. Snapshots written before it existed
/// lack it.
pub const OVERRIDES_KEY: &str = "overrides.json";
/// What a ConfigMap can hold (the API server refuses objects over 1 MiB); a little room is left
/// for metadata.
pub const MAX_SNAPSHOT_BYTES: usize = 1_000_000;
/// Field manager of snapshot writes.
pub const FIELD_MANAGER: FieldManager = FieldManager::new("overseer-fleetrollout-snapshot");

/// A snapshot that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The rendered set is too large for a ConfigMap.
    #[error(
        "the rendered source is {size} bytes, more than the {MAX_SNAPSHOT_BYTES} bytes a revision snapshot (ConfigMap) can hold; split the rollout"
    )]
    TooLarge {
        /// Size of the serialized objects.
        size: usize,
    },
    /// The rollout has no name, namespace or UID.
    #[error("rollout has no {0}")]
    MissingKey(&'static str),
    /// Serialization failed.
    #[error("cannot serialize the rendered objects: {0}")]
    Json(#[from] serde_json::Error),
}

/// What a snapshot holds: the source's objects of one revision and the overrides it was rendered
/// with.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The rendered objects, before per-cluster overrides.
    pub objects: Vec<DynamicObject>,
    /// The rollout's `spec.overrides` of the revision; `None` for a snapshot written before
    /// overrides were kept (the rollout's current overrides are used then).
    pub overrides: Option<Vec<Override>>,
}

/// A valid label value for `name`: at most 63 characters, alphanumeric at both ends.
pub fn label_value(name: &str) -> String {
    let mut v: String = name.chars().take(63).collect();
    while v.ends_with(['-', '.', '_']) {
        v.pop();
    }
    v
}

/// The short form of a revision: its first 12 lowercase alphanumerics after any `algo:` prefix.
pub fn short_revision(revision: &str) -> String {
    let rev = revision.rsplit_once(':').map_or(revision, |(_, r)| r);
    rev.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(12)
        .collect()
}

/// The snapshot's name: `<rollout>-rev-<short revision>`, the rollout part shortened to fit.
pub fn snapshot_name(rollout: &str, revision: &str) -> String {
    let suffix = format!("-rev-{}", short_revision(revision));
    let room = 253usize.saturating_sub(suffix.len());
    let mut prefix: String = rollout.chars().take(room).collect();
    while prefix.ends_with(['-', '.']) {
        prefix.pop();
    }
    format!("{prefix}{suffix}")
}

/// The snapshot ConfigMap of `rendered`, rendered with `overrides`, for `rollout`, controlled by
/// it.
pub fn build(
    rollout: &FleetRollout,
    rendered: &Rendered,
    overrides: &[Override],
) -> Result<ConfigMap, SnapshotError> {
    let name = rollout
        .metadata
        .name
        .as_deref()
        .ok_or(SnapshotError::MissingKey("name"))?;
    let namespace = rollout
        .metadata
        .namespace
        .clone()
        .ok_or(SnapshotError::MissingKey("namespace"))?;
    let owner: OwnerReference = rollout
        .controller_owner_ref(&())
        .ok_or(SnapshotError::MissingKey("uid"))?;
    let bytes = serde_json::to_vec(&rendered.objects)?;
    let override_bytes = serde_json::to_vec(overrides)?;
    let size = bytes.len() + override_bytes.len();
    if size > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge { size });
    }
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(snapshot_name(name, &rendered.revision)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "overseer".to_owned(),
                ),
                (ROLLOUT_LABEL.to_owned(), label_value(name)),
            ])),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_owned(),
                rendered.revision.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        binary_data: Some(BTreeMap::from([
            (DATA_KEY.to_owned(), ByteString(bytes)),
            (OVERRIDES_KEY.to_owned(), ByteString(override_bytes)),
        ])),
        immutable: Some(true),
        ..ConfigMap::default()
    })
}

/// Write the snapshot (idempotent: the same revision always has the same content).
pub async fn save(api: &Api<ConfigMap>, leader: &LeaderState, snapshot: &ConfigMap) -> Result<()> {
    apply(api, leader, FIELD_MANAGER, Ownership::Owned, snapshot).await?;
    Ok(())
}

/// Read the snapshot of `revision` for `rollout`; `None` when no snapshot of it exists (or the
/// one found belongs to another revision or cannot be read).
pub async fn load(api: &Api<ConfigMap>, rollout: &str, revision: &str) -> Result<Option<Snapshot>> {
    let Some(cm) = api.get_opt(&snapshot_name(rollout, revision)).await? else {
        return Ok(None);
    };
    if cm
        .annotations()
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
        != Some(revision)
    {
        return Ok(None);
    }
    Ok(parse(&cm))
}

/// The snapshot a ConfigMap holds; `None` when it holds none that can be read.
pub fn parse(cm: &ConfigMap) -> Option<Snapshot> {
    let data = cm.binary_data.as_ref()?;
    let objects = serde_json::from_slice(&data.get(DATA_KEY)?.0).ok()?;
    let overrides = match data.get(OVERRIDES_KEY) {
        Some(bytes) => Some(serde_json::from_slice(&bytes.0).ok()?),
        None => None,
    };
    Some(Snapshot { objects, overrides })
}

/// Delete the rollout's snapshots of revisions not in `keep`. Returns how many were deleted.
pub async fn collect_garbage(
    api: &Api<ConfigMap>,
    leader: &LeaderState,
    rollout: &FleetRollout,
    keep: &[&str],
) -> Result<usize> {
    let name = rollout
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let uid = rollout.metadata.uid.as_deref();
    let selector = format!("{ROLLOUT_LABEL}={}", label_value(name));
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    let mut deleted = 0;
    for cm in list.items {
        let ours = cm
            .owner_references()
            .iter()
            .any(|o| Some(o.uid.as_str()) == uid && o.controller == Some(true));
        let revision = cm.annotations().get(REVISION_ANNOTATION);
        if !ours || revision.is_some_and(|r| keep.contains(&r.as_str())) {
            continue;
        }
        if !leader.is_leader() {
            return Err(Error::NotLeader);
        }
        let cm_name = cm.name_any();
        match api.delete(&cm_name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_carry_the_short_revision() {
        assert_eq!(
            snapshot_name("payments", "sha256:ABCdef0123456789"),
            "payments-rev-abcdef012345"
        );
        let long = "x".repeat(300);
        let name = snapshot_name(&long, "sha256:1");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with("-rev-1"));
        assert_eq!(label_value(&format!("{}-", "a".repeat(62))), "a".repeat(62));
    }

    #[test]
    fn oversized_sets_are_refused_with_their_size() {
        let mut rollout = FleetRollout::new("big", Default::default());
        rollout.metadata.namespace = Some("ns".into());
        rollout.metadata.uid = Some("u".into());
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"k": "v".repeat(MAX_SNAPSHOT_BYTES)},
        }))
        .expect("object");
        let err = build(
            &rollout,
            &Rendered {
                revision: "sha256:1".into(),
                objects: vec![obj],
            },
            &[],
        )
        .expect_err("too large");
        assert!(matches!(err, SnapshotError::TooLarge { size } if size > MAX_SNAPSHOT_BYTES));
        assert!(err.to_string().contains("split the rollout"));
    }
}
