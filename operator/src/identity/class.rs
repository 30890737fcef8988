//! `EphemeralIdentityClass` status: how many identities of the class are active, and whether
//! the operator may actually bind every ClusterRole the class allows.
//!
//! Kubernetes lets the operator create a RoleBinding to a ClusterRole only when it holds `bind`
//! on that ClusterRole (or every permission in it); config/rbac grants `bind` by name. A class
//! naming a ClusterRole missing from that list would refuse every identity at issuing time, so
//! the class itself reports it: `Ready=False`, reason `CannotBind`, naming the roles and the
//! ClusterRole to extend. The check is a SelfSubjectAccessReview per allowed ClusterRole, redone
//! when the class changes and every [`RECHECK`] (RBAC may change under it).
//!
//! The count comes from the identity controller's cache; the class is revisited on every
//! identity change (debounced), so it converges within a second of one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::{controller::Action, reflector::Store},
};
use overseer_crds::{
    agents::{
        EphemeralIdentity, EphemeralIdentityClass, EphemeralIdentityClassStatus, IdentityPhase,
        RoleKind,
    },
    common::CONDITION_READY,
};

use crate::controller::{
    Context, Result,
    apply::{FieldManager, apply_status_if_changed},
    conditions::{ConditionStatus, DesiredCondition, Transition, set_condition},
    instrumented,
};

/// The class controller's name (metric label).
pub const CONTROLLER: &str = "ephemeralidentityclass";
/// Field manager of class status.
pub const STATUS_MANAGER: FieldManager = FieldManager::new("overseer-identity-class-status");
/// How long a bind check is trusted.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Condition reasons.
pub mod reason {
    /// The class is usable.
    pub const ACCEPTED: &str = "Accepted";
    /// The operator may not bind some allowed ClusterRoles.
    pub const CANNOT_BIND: &str = "CannotBind";
}

/// One class's bind check: the generation checked, when, and the ClusterRoles it may not bind.
#[derive(Debug)]
struct BindCheck {
    generation: i64,
    at: Instant,
    missing: Vec<String>,
}

/// Results of bind checks, per class UID and generation.
#[derive(Debug, Default, Clone)]
pub struct BindChecks(Arc<Mutex<HashMap<String, BindCheck>>>);

impl BindChecks {
    fn cached(&self, uid: &str, generation: i64) -> Option<Vec<String>> {
        let map = self.0.lock().ok()?;
        map.get(uid)
            .filter(|c| c.generation == generation && c.at.elapsed() < RECHECK)
            .map(|c| c.missing.clone())
    }

    fn store(&self, uid: &str, generation: i64, missing: Vec<String>) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(
                uid.to_owned(),
                BindCheck {
                    generation,
                    at: Instant::now(),
                    missing,
                },
            );
        }
    }
}

/// What the class controller reads besides its context.
#[derive(Clone, Debug)]
pub struct ClassState {
    /// The identity controller's cache.
    pub identities: Store<EphemeralIdentity>,
    /// Cached bind checks.
    pub checks: BindChecks,
}

/// Identities of `class` that are active.
pub fn active_identities<'a>(
    class: &str,
    identities: impl IntoIterator<Item = &'a EphemeralIdentity>,
) -> i32 {
    let n = identities
        .into_iter()
        .filter(|i| i.spec.class_name == class)
        .filter(|i| i.status.as_ref().and_then(|s| s.phase) == Some(IdentityPhase::Active))
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status of `class` given the active count and the ClusterRoles the operator may not bind,
/// and what happened to its `Ready` condition.
pub fn desired_status(
    class: &EphemeralIdentityClass,
    active: i32,
    cannot_bind: &[String],
    now: Timestamp,
) -> (EphemeralIdentityClassStatus, Transition) {
    let current = class.status.clone().unwrap_or_default();
    let generation = class.metadata.generation;
    let mut status = EphemeralIdentityClassStatus {
        observed_generation: generation,
        active_identities: Some(active),
        conditions: current.conditions,
    };
    let condition = if cannot_bind.is_empty() {
        DesiredCondition::new(
            CONDITION_READY,
            ConditionStatus::True,
            reason::ACCEPTED,
            "the operator may bind every allowed ClusterRole",
        )
    } else {
        DesiredCondition::new(
            CONDITION_READY,
            ConditionStatus::False,
            reason::CANNOT_BIND,
            format!(
                "the operator may not bind ClusterRole(s) {}: identities asking for them would be refused; \
                 add them to the resourceNames of the `bind` rule in ClusterRole overseer-identity-manager \
                 (config/rbac/identity_role.yaml) or remove them from allowedRoles",
                cannot_bind.join(", ")
            ),
        )
    };
    let transition = set_condition(&mut status.conditions, condition, generation, now);
    (status, transition)
}

/// The allowed ClusterRoles the operator may not bind, by SelfSubjectAccessReview.
pub async fn cannot_bind(client: &Client, class: &EphemeralIdentityClass) -> Result<Vec<String>> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for role in &class.spec.allowed_roles {
        if role.kind != RoleKind::ClusterRole {
            continue;
        }
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("rbac.authorization.k8s.io".into()),
                    resource: Some("clusterroles".into()),
                    verb: Some("bind".into()),
                    name: Some(role.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            missing.push(role.name.clone());
        }
    }
    Ok(missing)
}

/// Reconcile one class: count, check, write the status when it changed.
pub async fn reconcile(
    class: Arc<EphemeralIdentityClass>,
    ctx: Arc<Context>,
    state: Arc<ClassState>,
) -> Result<Action> {
    let regarding = class.object_ref(&());
    instrumented(&ctx, CONTROLLER, &regarding, async {
        let uid = class.uid().unwrap_or_default();
        let generation = class.metadata.generation.unwrap_or_default();
        let missing = match state.checks.cached(&uid, generation) {
            Some(missing) => missing,
            None => {
                let missing = cannot_bind(&ctx.client, &class).await?;
                state.checks.store(&uid, generation, missing.clone());
                missing
            }
        };
        let identities = state.identities.state();
        let active = active_identities(&class.name_any(), identities.iter().map(|i| &**i));
        let now = Timestamp::now();
        let (desired, transition) = desired_status(&class, active, &missing, now);
        let api: Api<EphemeralIdentityClass> = Api::all(ctx.client.clone());
        let written = apply_status_if_changed(&api, &ctx.leader, STATUS_MANAGER, &class, &desired)
            .await?
            .is_some();
        if written
            && let Some(ready) = desired
                .conditions
                .iter()
                .find(|c| c.type_ == CONDITION_READY)
        {
            ctx.recorder
                .condition_changed(&regarding, ready, &transition, "Validate")
                .await;
        }
        // RBAC can change without the class changing: look again later.
        Ok(Action::requeue(RECHECK))
    })
    .await
}

#[cfg(test)]
mod tests {
    use overseer_crds::agents::{
        EphemeralIdentityClassSpec, EphemeralIdentitySpec, EphemeralIdentityStatus, Grants, RoleRef,
    };
    use serde_json::json;

    use super::*;
    use crate::controller::test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s};

    fn class() -> EphemeralIdentityClass {
        let mut class = EphemeralIdentityClass::new(
            "ops",
            EphemeralIdentityClassSpec {
                max_ttl: "1h".parse().expect("duration"),
                default_ttl: None,
                namespace_selector: None,
                namespaces: vec!["default".into()],
                allowed_roles: vec![
                    RoleRef {
                        kind: RoleKind::ClusterRole,
                        name: "view".into(),
                    },
                    RoleRef {
                        kind: RoleKind::Role,
                        name: "local".into(),
                    },
                    RoleRef {
                        kind: RoleKind::ClusterRole,
                        name: "edit".into(),
                    },
                ],
                allowed_rules: vec![],
                allowed_audiences: vec![],
                require_approval: false,
                approval: None,
                record_retention: None,
            },
        );
        class.metadata.generation = Some(3);
        class
    }

    fn identity(class: &str, phase: Option<IdentityPhase>) -> EphemeralIdentity {
        let mut i = EphemeralIdentity::new(
            "i",
            EphemeralIdentitySpec {
                class_name: class.into(),
                agent: "a".into(),
                ttl: None,
                audiences: None,
                grants: Grants::default(),
                task: None,
                revoked: false,
            },
        );
        i.status = phase.map(|p| EphemeralIdentityStatus {
            phase: Some(p),
            ..EphemeralIdentityStatus::default()
        });
        i
    }

    #[test]
    fn only_active_identities_of_the_class_count() {
        let all = [
            identity("ops", Some(IdentityPhase::Active)),
            identity("ops", Some(IdentityPhase::Active)),
            identity("ops", Some(IdentityPhase::Expired)),
            identity("ops", None),
            identity("other", Some(IdentityPhase::Active)),
        ];
        assert_eq!(active_identities("ops", &all), 2);
        assert_eq!(active_identities("none", &all), 0);
    }

    #[test]
    fn a_role_the_operator_cannot_bind_makes_the_class_not_ready() {
        let now: Timestamp = "2030-01-01T00:00:00Z".parse().expect("time");
        let (status, transition) = desired_status(&class(), 4, &["edit".into()], now);
        assert!(transition.is_transition());
        assert_eq!(status.active_identities, Some(4));
        assert_eq!(status.observed_generation, Some(3));
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "CannotBind")
        );
        assert!(
            ready.message.contains("ClusterRole(s) edit"),
            "{}",
            ready.message
        );
        assert!(ready.message.contains("overseer-identity-manager"));
        let (ok, _) = desired_status(&class(), 0, &[], now);
        assert_eq!(ok.conditions[0].status, "True");
        assert_eq!(ok.conditions[0].observed_generation, Some(3));
    }

    #[tokio::test]
    async fn bind_checks_ask_one_access_review_per_cluster_role() {
        let (client, verifier) = ApiServerVerifier::new();
        let review = |name: &str| {
            json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "metadata": {},
                "spec": {"resourceAttributes": {
                    "group": "rbac.authorization.k8s.io", "name": name,
                    "resource": "clusterroles", "verb": "bind",
                }},
            })
        };
        let answer = |name: &str, allowed: bool| {
            let mut r = review(name);
            r["status"] = json!({"allowed": allowed});
            r
        };
        const PATH: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews?";
        let scenario = verifier.run(vec![
            ExpectedRequest::post_containing(PATH, review("view"))
                .respond(201, answer("view", true)),
            ExpectedRequest::post_containing(PATH, review("edit"))
                .respond(201, answer("edit", false)),
        ]);
        let missing = cannot_bind(&client, &class()).await.expect("checked");
        assert_eq!(missing, vec!["edit".to_owned()]);
        drop(client);
        timeout_after_1s(scenario).await;
    }
}
