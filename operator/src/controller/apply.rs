//! Server-side apply: every write Overseer makes is a `Patch::Apply` under a field manager named
//! for its write site, gated on leadership. `force` is used only for fields the write site owns
//! outright ([`Ownership::Owned`]), such as a controller's own status or children it created.

use std::fmt::Debug;

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
    core::object::HasStatus,
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    conditions::status_unchanged,
    error::{Error, Result},
};
use crate::leader::LeaderState;

/// The name of a field manager. Give every write site its own, e.g. `overseer/agentpolicy-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldManager(&'static str);

impl FieldManager {
    /// A field manager named `name` (at most 128 characters, as the API server requires).
    pub const fn new(name: &'static str) -> Self {
        Self(name)
    }

    /// The name sent as `fieldManager`.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

/// Whether a write site owns the fields it applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// The fields are this write site's alone: take them over from any other manager (`force`).
    Owned,
    /// Other managers may own some of the fields: a conflict is an error, not a takeover.
    Shared,
}

impl Ownership {
    fn params(self, manager: FieldManager) -> PatchParams {
        let params = PatchParams::apply(manager.as_str());
        match self {
            Self::Owned => params.force(),
            Self::Shared => params,
        }
    }
}

/// Server-side apply `object` (which carries `apiVersion`, `kind` and `metadata.name`) through
/// `api`. Refuses with [`Error::NotLeader`] unless this replica leads.
pub async fn apply<K>(
    api: &Api<K>,
    leader: &LeaderState,
    manager: FieldManager,
    ownership: Ownership,
    object: &K,
) -> Result<K>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = object
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    if !leader.is_leader() {
        return Err(Error::NotLeader);
    }
    Ok(api
        .patch(name, &ownership.params(manager), &Patch::Apply(object))
        .await?)
}

/// The body of a status apply: `apiVersion`, `kind` and `status` only.
pub fn status_patch<K, S>(status: &S) -> Result<serde_json::Value>
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    Ok(serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": serde_json::to_value(status)?,
    }))
}

/// Server-side apply `status` to the status subresource of the object `name`. Status belongs to
/// the controller that computes it, so the apply is forced.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    leader: &LeaderState,
    manager: FieldManager,
    name: &str,
    status: &S,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let body = status_patch::<K, S>(status)?;
    if !leader.is_leader() {
        return Err(Error::NotLeader);
    }
    Ok(api
        .patch_status(
            name,
            &Ownership::Owned.params(manager),
            &Patch::Apply(&body),
        )
        .await?)
}

/// Apply `desired` as the status of `current` unless it equals the current status apart from
/// timestamps. Returns the updated object, or `None` when the write was skipped.
pub async fn apply_status_if_changed<K>(
    api: &Api<K>,
    leader: &LeaderState,
    manager: FieldManager,
    current: &K,
    desired: &K::Status,
) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + HasStatus + Clone + DeserializeOwned + Debug,
    K::Status: Serialize,
{
    if status_unchanged(current.status(), desired) {
        return Ok(None);
    }
    let name = current
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    apply_status(api, leader, manager, name, desired)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{
        conditions::{ConditionStatus, DesiredCondition, set_condition},
        test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s},
    };
    use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
    use kube::{Client, api::ObjectMeta};
    use overseer_crds::agents::{AgentPolicy, AgentPolicySpec, AgentPolicyStatus};
    use serde_json::json;

    const MANAGER: FieldManager = FieldManager::new("overseer/test-writer");

    fn config_map() -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("child".into()),
                namespace: Some("team-a".into()),
                ..ObjectMeta::default()
            },
            data: Some([("k".to_owned(), "v".to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn policy_with_status(status: Option<AgentPolicyStatus>) -> AgentPolicy {
        let mut policy = AgentPolicy::new("support", AgentPolicySpec::default());
        policy.metadata.namespace = Some("team-a".into());
        policy.metadata.generation = Some(4);
        policy.status = status;
        policy
    }

    fn ready_status(at: i64) -> AgentPolicyStatus {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            DesiredCondition::new("Ready", ConditionStatus::True, "Compiled", "3 rules"),
            Some(4),
            Timestamp::from_second(at).expect("timestamp"),
        );
        AgentPolicyStatus {
            observed_generation: Some(4),
            rule_count: Some(3),
            conditions,
            ..AgentPolicyStatus::default()
        }
    }

    #[tokio::test]
    async fn owned_apply_is_a_forced_server_side_apply() {
        let (client, verifier) = ApiServerVerifier::new();
        let object = config_map();
        let returned = serde_json::to_value(&object).expect("json");
        let scenario = verifier.run(vec![
            ExpectedRequest::apply(
                "/api/v1/namespaces/team-a/configmaps/child?&force=true&fieldManager=overseer%2Ftest-writer",
                json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "child", "namespace": "team-a"},
                    "data": {"k": "v"},
                }),
            )
            .respond(200, returned),
        ]);
        let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
        let applied = apply(
            &api,
            &LeaderState::fixed(true),
            MANAGER,
            Ownership::Owned,
            &object,
        )
        .await
        .expect("applied");
        assert_eq!(applied.data, object.data);
        drop(api);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn shared_apply_does_not_force() {
        let (client, verifier) = ApiServerVerifier::new();
        let object = config_map();
        let scenario = verifier.run(vec![
            ExpectedRequest::apply(
                "/api/v1/namespaces/team-a/configmaps/child?&fieldManager=overseer%2Ftest-writer",
                serde_json::to_value(&object).expect("json"),
            )
            .respond(200, serde_json::to_value(&object).expect("json")),
        ]);
        let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
        apply(
            &api,
            &LeaderState::fixed(true),
            MANAGER,
            Ownership::Shared,
            &object,
        )
        .await
        .expect("applied");
        drop(api);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn status_apply_targets_the_status_subresource() {
        let (client, verifier) = ApiServerVerifier::new();
        let current = policy_with_status(None);
        let desired = ready_status(1_700_000_000);
        let mut returned = current.clone();
        returned.status = Some(desired.clone());
        let scenario = verifier.run(vec![
            ExpectedRequest::apply(
                "/apis/agents.overseer.dev/v1alpha1/namespaces/team-a/agentpolicies/support/status?&force=true&fieldManager=overseer%2Ftest-writer",
                json!({
                "apiVersion": "agents.overseer.dev/v1alpha1",
                "kind": "AgentPolicy",
                "status": {
                    "observedGeneration": 4,
                    "ruleCount": 3,
                    "conditions": [{
                        "type": "Ready",
                        "status": "True",
                        "reason": "Compiled",
                        "message": "3 rules",
                        "observedGeneration": 4,
                        "lastTransitionTime": "2023-11-14T22:13:20Z",
                    }],
                },
            }),
            )
            .respond(200, serde_json::to_value(&returned).expect("json")),
        ]);
        let api: Api<AgentPolicy> = Api::namespaced(client, "team-a");
        let updated =
            apply_status_if_changed(&api, &LeaderState::fixed(true), MANAGER, &current, &desired)
                .await
                .expect("applied");
        assert_eq!(updated.and_then(|p| p.status), Some(desired));
        drop(api);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn unchanged_status_sends_nothing() {
        let (client, verifier) = ApiServerVerifier::new();
        // Recomputed later: only the transition time would differ.
        let current = policy_with_status(Some(ready_status(1_700_000_000)));
        let desired = ready_status(1_700_000_500);
        let scenario = verifier.run(vec![]);
        let api: Api<AgentPolicy> = Api::namespaced(client, "team-a");
        let updated =
            apply_status_if_changed(&api, &LeaderState::fixed(true), MANAGER, &current, &desired)
                .await
                .expect("no error");
        assert!(updated.is_none());
        drop(api);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn followers_do_not_write() {
        let (client, verifier) = ApiServerVerifier::new();
        let scenario = verifier.run(vec![]);
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "team-a");
        let err = apply(
            &api,
            &LeaderState::fixed(false),
            MANAGER,
            Ownership::Owned,
            &config_map(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, Error::NotLeader));
        let policies: Api<AgentPolicy> = Api::namespaced(client, "team-a");
        let err = apply_status(
            &policies,
            &LeaderState::fixed(false),
            MANAGER,
            "support",
            &ready_status(1),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, Error::NotLeader));
        drop((api, policies));
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn api_errors_surface_with_their_label() {
        let (client, verifier) = ApiServerVerifier::new();
        let object = config_map();
        let scenario = verifier.run(vec![
            ExpectedRequest::apply(
                "/api/v1/namespaces/team-a/configmaps/child?&fieldManager=overseer%2Ftest-writer",
                serde_json::to_value(&object).expect("json"),
            )
            .respond(
                409,
                json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "Apply failed with 1 conflict: conflict with \"kubectl\": .data.k",
                    "reason": "Conflict", "code": 409,
                }),
            ),
        ]);
        let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
        let err = apply(
            &api,
            &LeaderState::fixed(true),
            MANAGER,
            Ownership::Shared,
            &object,
        )
        .await
        .expect_err("conflict");
        assert_eq!(err.metric_label(), "kube_api_conflict");
        drop(api);
        timeout_after_1s(scenario).await;
    }

    #[tokio::test]
    async fn nameless_objects_are_refused() {
        let client = Client::new(
            tower_test::mock::pair::<
                http::Request<kube::client::Body>,
                http::Response<kube::client::Body>,
            >()
            .0,
            "default",
        );
        let api: Api<ConfigMap> = Api::namespaced(client, "team-a");
        let err = apply(
            &api,
            &LeaderState::fixed(true),
            MANAGER,
            Ownership::Owned,
            &ConfigMap::default(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(err, Error::MissingObjectKey("metadata.name")));
    }
}
