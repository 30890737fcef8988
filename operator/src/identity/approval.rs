//! Human approval before issuing, for classes with `requireApproval: true`.
//!
//! The controller opens one `AgentApproval` per identity *and exact request* (class, agent, TTL,
//! audiences and grants, bound by their SHA-256 digest together with the identity's UID) in the
//! identity's namespace, owned by the identity. A human listed in the class's `approval.users` or
//! `approval.groups` sets `spec.review` with kubectl; the shipped ValidatingAdmissionPolicy checks
//! that the reviewer is the authenticated user, is an approver, and is not the identity's own
//! ServiceAccount. Then:
//!
//! - `Approved` → the token is issued and the approval is marked `Consumed`;
//! - `Denied` → the identity ends `Denied` (reason `ApprovalDenied`, naming the reviewer);
//! - nobody answers before `spec.expiresAt` → the identity ends `Denied` (`ApprovalExpired`).
//!
//! Changing what the identity asks for changes the digest, so an approval never covers grants
//! its reviewer did not see. Everything here is pure; [`super::reconcile`] does the I/O.

use std::collections::BTreeMap;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::{SignedDuration, Timestamp},
};
use kube::Resource;
use overseer_crds::agents::{
    AgentApproval, AgentApprovalSpec, AgentApprovalStatus, ApprovalPhase, ApprovalPrincipal,
    EphemeralIdentity, EphemeralIdentityClass, ReviewDecision,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::build::Owner;

/// `spec.tool` of an identity approval request.
pub const TOOL: &str = "overseer.dev/issue-ephemeral-identity";
/// Label that marks an `AgentApproval` as an identity's (the decision service ignores these).
pub const APPROVAL_FOR_LABEL: &str = "agents.overseer.dev/approval-for";
/// Value of [`APPROVAL_FOR_LABEL`] on identity approvals.
pub const APPROVAL_FOR_IDENTITY: &str = "ephemeralidentity";
/// How long a request waits when the class's `approval.timeout` is not set.
pub const DEFAULT_TIMEOUT: SignedDuration = SignedDuration::from_mins(15);
/// Longest arguments preview the CRD accepts.
const PREVIEW_MAX: usize = 4096;

/// What the approval for the identity's current request says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalState {
    /// No approval request exists yet: create [`request`].
    Missing,
    /// Waiting for a reviewer until `expires_at`.
    Waiting {
        /// The request's name.
        name: String,
        /// When it times out.
        expires_at: Timestamp,
    },
    /// Approved by `reviewer`: issue.
    Approved {
        /// The verified reviewer.
        reviewer: String,
    },
    /// Denied by `reviewer`.
    Denied {
        /// The reviewer.
        reviewer: String,
        /// Their comment.
        comment: Option<String>,
    },
    /// Nobody answered before `expires_at`.
    Expired {
        /// When it timed out.
        expires_at: Timestamp,
    },
}

/// SHA-256 (hex) of what the identity asks for, bound to its UID: approving it covers exactly
/// this request of this object.
pub fn request_digest(identity: &EphemeralIdentity, uid: &str) -> String {
    let spec = &identity.spec;
    let canonical = json!({
        "uid": uid,
        "namespace": identity.metadata.namespace,
        "name": identity.metadata.name,
        "class": spec.class_name,
        "agent": spec.agent,
        "ttl": spec.ttl.map(|d| d.to_string()),
        "audiences": spec.audiences,
        "grants": spec.grants,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The approval request's name: the identity's name and the digest's first 10 hex digits,
/// within the 253 characters an object name may have.
pub fn approval_name(owner: &Owner, digest: &str) -> String {
    let stem: String = owner.name.chars().take(230).collect();
    let stem = stem.trim_end_matches(['-', '.']);
    format!("{stem}-approval-{}", &digest[..10.min(digest.len())])
}

/// The `AgentApproval` to create for `identity` under `class`, opened at `now`.
pub fn request(
    owner: &Owner,
    identity: &EphemeralIdentity,
    class: &EphemeralIdentityClass,
    digest: &str,
    now: Timestamp,
) -> AgentApproval {
    let settings = class.spec.approval.clone().unwrap_or_default();
    let timeout = settings
        .timeout
        .and_then(|d| SignedDuration::try_from(std::time::Duration::from(d)).ok())
        .filter(|d| d.is_positive())
        .unwrap_or(DEFAULT_TIMEOUT);
    let expires_at = now
        .checked_add(timeout)
        .unwrap_or(Timestamp::MAX)
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(now);
    let spec = &identity.spec;
    let preview = serde_json::to_string(&json!({
        "class": spec.class_name,
        "ttl": spec.ttl.map(|d| d.to_string()),
        "audiences": spec.audiences,
        "grants": spec.grants,
        "task": spec.task,
    }))
    .unwrap_or_default();
    let preview = truncate(&preview, PREVIEW_MAX);
    let mut labels = owner.labels();
    labels.insert(
        APPROVAL_FOR_LABEL.to_owned(),
        APPROVAL_FOR_IDENTITY.to_owned(),
    );
    let mut approval = AgentApproval::new(
        &approval_name(owner, digest),
        AgentApprovalSpec {
            decision_id: format!("identity/{}", owner.uid),
            request_digest: digest.to_owned(),
            principal: ApprovalPrincipal {
                id: spec.agent.clone(),
                // The identity's own ServiceAccount may never approve its issuing.
                username: Some(format!(
                    "system:serviceaccount:{}:{}",
                    owner.namespace, owner.names.service_account
                )),
                user: None,
                tenant: None,
            },
            tool: TOOL.to_owned(),
            server: None,
            target: Some(format!(
                "ephemeralidentities/{}/{}",
                owner.namespace, owner.name
            )),
            arguments_preview: Some(preview),
            reasons: vec![format!(
                "EphemeralIdentityClass {:?} requires an approval before issuing identity {}/{} for agent {:?}",
                class.metadata.name.as_deref().unwrap_or_default(),
                owner.namespace,
                owner.name,
                spec.agent
            )],
            approver_users: settings.users,
            approver_groups: settings.groups,
            expires_at: expires_at.to_string(),
            review: None,
        },
    );
    approval.metadata = ObjectMeta {
        name: approval.metadata.name.take(),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        owner_references: identity.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    };
    approval
}

/// Where the approval for `digest` stands at `now`. `existing` is the object named
/// [`approval_name`], if any; one bound to another digest counts as missing.
pub fn state(existing: Option<&AgentApproval>, digest: &str, now: Timestamp) -> ApprovalState {
    let Some(approval) = existing.filter(|a| a.spec.request_digest == digest) else {
        return ApprovalState::Missing;
    };
    let recorded = approval.status.as_ref().and_then(|s| s.phase);
    let expires_at = approval
        .spec
        .expires_at
        .parse::<Timestamp>()
        .unwrap_or(Timestamp::MIN);
    match &approval.spec.review {
        // Seen approved before it expired (recorded), or seen approved in time now.
        Some(review)
            if review.decision == ReviewDecision::Approved
                && (matches!(
                    recorded,
                    Some(ApprovalPhase::Approved | ApprovalPhase::Consumed)
                ) || now < expires_at) =>
        {
            ApprovalState::Approved {
                reviewer: review.reviewer.clone(),
            }
        }
        Some(review) if review.decision == ReviewDecision::Denied => ApprovalState::Denied {
            reviewer: review.reviewer.clone(),
            comment: review.comment.clone(),
        },
        _ if now >= expires_at || recorded == Some(ApprovalPhase::Expired) => {
            ApprovalState::Expired { expires_at }
        }
        _ => ApprovalState::Waiting {
            name: approval.metadata.name.clone().unwrap_or_default(),
            expires_at,
        },
    }
}

/// The status the controller records on the approval for `state` (`consumed` once the token
/// was issued). `None` when there is nothing to record.
pub fn status_for(
    current: Option<&AgentApprovalStatus>,
    state: &ApprovalState,
    consumed: bool,
    now: Timestamp,
) -> Option<AgentApprovalStatus> {
    let current = current.cloned().unwrap_or_default();
    let stamp = |t: &Option<String>| t.clone().or_else(|| Some(now.to_string()));
    let desired = match state {
        ApprovalState::Missing => return None,
        ApprovalState::Waiting { .. } => AgentApprovalStatus {
            phase: Some(ApprovalPhase::Pending),
            ..current.clone()
        },
        ApprovalState::Approved { reviewer } => AgentApprovalStatus {
            phase: Some(if consumed {
                ApprovalPhase::Consumed
            } else {
                ApprovalPhase::Approved
            }),
            reviewed_by: Some(reviewer.clone()),
            reviewed_at: stamp(&current.reviewed_at),
            consumed_at: if consumed {
                stamp(&current.consumed_at)
            } else {
                current.consumed_at.clone()
            },
            ..current.clone()
        },
        ApprovalState::Denied { reviewer, .. } => AgentApprovalStatus {
            phase: Some(ApprovalPhase::Denied),
            reviewed_by: Some(reviewer.clone()),
            reviewed_at: stamp(&current.reviewed_at),
            ..current.clone()
        },
        ApprovalState::Expired { .. } => AgentApprovalStatus {
            phase: Some(ApprovalPhase::Expired),
            ..current.clone()
        },
    };
    (desired != current).then_some(desired)
}

/// A selector for identity approvals (what the controller watches).
pub fn selector() -> String {
    format!("{APPROVAL_FOR_LABEL}={APPROVAL_FOR_IDENTITY}")
}

/// The labels an identity approval carries, for tests and tooling.
pub fn labels(owner: &Owner) -> BTreeMap<String, String> {
    let mut labels = owner.labels();
    labels.insert(
        APPROVAL_FOR_LABEL.to_owned(),
        APPROVAL_FOR_IDENTITY.to_owned(),
    );
    labels
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use overseer_crds::agents::{
        ApprovalReview, ApprovalSettings, EphemeralIdentityClassSpec, EphemeralIdentitySpec,
        GrantRule, Grants, RoleKind, RoleRef,
    };

    use super::*;

    fn identity() -> EphemeralIdentity {
        let mut identity = EphemeralIdentity::new(
            "scale-checkout",
            EphemeralIdentitySpec {
                class_name: "ops-deploy".into(),
                agent: "ops-bot".into(),
                ttl: Some("20m".parse().expect("duration")),
                audiences: None,
                grants: Grants {
                    roles: vec![],
                    rules: vec![GrantRule {
                        api_groups: vec!["apps".into()],
                        resources: vec!["deployments/scale".into()],
                        verbs: vec!["patch".into()],
                        resource_names: vec!["checkout".into()],
                    }],
                },
                task: None,
                revoked: false,
            },
        );
        identity.metadata.namespace = Some("shop".into());
        identity.metadata.uid = Some("6a1c9a0e-0000-4000-8000-000000000001".into());
        identity
    }

    fn class() -> EphemeralIdentityClass {
        EphemeralIdentityClass::new(
            "ops-deploy",
            EphemeralIdentityClassSpec {
                max_ttl: "30m".parse().expect("duration"),
                default_ttl: None,
                namespace_selector: None,
                namespaces: vec!["shop".into()],
                allowed_roles: vec![RoleRef {
                    kind: RoleKind::ClusterRole,
                    name: "view".into(),
                }],
                allowed_rules: vec![],
                allowed_audiences: vec![],
                require_approval: true,
                approval: Some(ApprovalSettings {
                    users: vec!["alice".into()],
                    groups: vec!["platform-oncall".into()],
                    timeout: Some("10m".parse().expect("duration")),
                    ..ApprovalSettings::default()
                }),
                record_retention: None,
            },
        )
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn the_request_is_bound_to_the_exact_grants_and_names_the_approvers() {
        let identity = identity();
        let owner = Owner::from_identity(&identity).expect("owner");
        let digest = request_digest(&identity, &owner.uid);
        let approval = request(
            &owner,
            &identity,
            &class(),
            &digest,
            t("2026-11-22T03:00:00Z"),
        );
        assert_eq!(approval.spec.request_digest, digest);
        assert_eq!(approval.spec.expires_at, "2026-11-22T03:10:00Z");
        assert_eq!(approval.spec.approver_users, vec!["alice"]);
        assert_eq!(approval.spec.approver_groups, vec!["platform-oncall"]);
        assert_eq!(approval.spec.tool, TOOL);
        assert_eq!(
            approval.spec.principal.username.as_deref(),
            Some(format!("system:serviceaccount:shop:{}", owner.names.service_account).as_str())
        );
        assert!(
            approval
                .spec
                .arguments_preview
                .as_deref()
                .is_some_and(|p| p.contains("deployments/scale"))
        );
        let meta = &approval.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        assert_eq!(meta.labels.as_ref(), Some(&labels(&owner)));
        assert!(owner.controls(meta), "owned by the identity");
        assert!(
            meta.name
                .as_deref()
                .is_some_and(|n| n.starts_with("scale-checkout-approval-"))
        );

        // Asking for more changes the digest, so the old approval does not cover it.
        let mut wider = identity.clone();
        wider.spec.grants.rules[0].verbs.push("delete".into());
        assert_ne!(request_digest(&wider, &owner.uid), digest);
        // So does another object with the same spec.
        assert_ne!(request_digest(&identity, "other-uid"), digest);
    }

    #[test]
    fn states_follow_the_review_and_the_clock() {
        let identity = identity();
        let owner = Owner::from_identity(&identity).expect("owner");
        let digest = request_digest(&identity, &owner.uid);
        let opened = t("2026-11-22T03:00:00Z");
        let mut approval = request(&owner, &identity, &class(), &digest, opened);
        let before = t("2026-11-22T03:05:00Z");
        let after = t("2026-11-22T03:11:00Z");

        assert_eq!(state(None, &digest, before), ApprovalState::Missing);
        assert_eq!(
            state(Some(&approval), "0".repeat(64).as_str(), before),
            ApprovalState::Missing,
            "an approval for another request does not count"
        );
        assert!(matches!(
            state(Some(&approval), &digest, before),
            ApprovalState::Waiting { .. }
        ));
        assert!(matches!(
            state(Some(&approval), &digest, after),
            ApprovalState::Expired { .. }
        ));

        approval.spec.review = Some(ApprovalReview {
            decision: ReviewDecision::Approved,
            reviewer: "alice".into(),
            comment: None,
        });
        assert_eq!(
            state(Some(&approval), &digest, before),
            ApprovalState::Approved {
                reviewer: "alice".into()
            }
        );
        // First seen after the deadline: too late.
        assert!(matches!(
            state(Some(&approval), &digest, after),
            ApprovalState::Expired { .. }
        ));
        // Seen (and recorded) in time: still good after the deadline.
        approval.status = status_for(
            None,
            &ApprovalState::Approved {
                reviewer: "alice".into(),
            },
            false,
            before,
        );
        assert_eq!(
            state(Some(&approval), &digest, after),
            ApprovalState::Approved {
                reviewer: "alice".into()
            }
        );

        approval.status = None;
        approval.spec.review = Some(ApprovalReview {
            decision: ReviewDecision::Denied,
            reviewer: "bob".into(),
            comment: Some("too broad".into()),
        });
        assert_eq!(
            state(Some(&approval), &digest, before),
            ApprovalState::Denied {
                reviewer: "bob".into(),
                comment: Some("too broad".into())
            }
        );
    }

    #[test]
    fn status_records_each_step_once() {
        let now = t("2026-11-22T03:05:00Z");
        let approved = ApprovalState::Approved {
            reviewer: "alice".into(),
        };
        let first = status_for(None, &approved, false, now).expect("recorded");
        assert_eq!(first.phase, Some(ApprovalPhase::Approved));
        assert_eq!(first.reviewed_by.as_deref(), Some("alice"));
        assert_eq!(first.reviewed_at.as_deref(), Some("2026-11-22T03:05:00Z"));
        assert_eq!(status_for(Some(&first), &approved, false, now), None);
        let later = t("2026-11-22T03:06:00Z");
        let consumed = status_for(Some(&first), &approved, true, later).expect("consumed");
        assert_eq!(consumed.phase, Some(ApprovalPhase::Consumed));
        assert_eq!(
            consumed.reviewed_at, first.reviewed_at,
            "the review time stays"
        );
        assert_eq!(
            consumed.consumed_at.as_deref(),
            Some("2026-11-22T03:06:00Z")
        );
        assert_eq!(status_for(Some(&consumed), &approved, true, later), None);
    }

    #[test]
    fn long_names_stay_valid() {
        let mut identity = identity();
        identity.metadata.name = Some("x".repeat(253));
        let owner = Owner::from_identity(&identity).expect("owner");
        let name = approval_name(&owner, &request_digest(&identity, &owner.uid));
        assert!(name.len() <= 253, "{}", name.len());
    }
}
