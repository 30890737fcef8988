//! The ValidatingAdmissionPolicy of `config/admission/` that guards AgentApproval reviews,
//! evaluated client-side (no cluster) with kube's CEL support against allowed and forbidden
//! requests, the way the API server would evaluate it.

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::core::cel::{
    AdmissionRequest, GroupVersionKind, GroupVersionResource, VapEvaluator, VapExpression,
};
use serde_json::{Value, json};

const POLICY_FILE: &str = "config/admission/agentapproval_policy.yaml";
const OPERATOR: &str = "system:serviceaccount:overseer-system:overseer";
const AGENT: &str = "system:serviceaccount:default:finance-agent";

/// The policy and its binding, parsed from the committed YAML.
fn load() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    load_file(POLICY_FILE)
}

/// The one policy and its binding in the committed YAML file `file` (relative to the repository).
fn load_file(file: &str) -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut policy = None;
    let mut binding = None;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::to_value(
            <serde_yaml::Value as serde::Deserialize>::deserialize(document)
                .expect("YAML document"),
        )
        .expect("JSON");
        match value["kind"].as_str() {
            Some("ValidatingAdmissionPolicy") => {
                policy = Some(serde_json::from_value(value).expect("policy"))
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                binding = Some(serde_json::from_value(value).expect("binding"))
            }
            other => panic!("unexpected document of kind {other:?} in {file}"),
        }
    }
    (
        policy.expect("a ValidatingAdmissionPolicy"),
        binding.expect("a ValidatingAdmissionPolicyBinding"),
    )
}

fn expressions() -> Vec<VapExpression> {
    let (policy, _) = load();
    let spec = policy.spec.expect("spec");
    assert!(
        spec.match_conditions.as_ref().is_none_or(Vec::is_empty),
        "matchConditions are not evaluated here"
    );
    assert!(
        spec.variables.as_ref().is_none_or(Vec::is_empty),
        "variables are not evaluated here"
    );
    vap_expressions(spec.validations.expect("validations"))
}

fn vap_expressions(
    validations: Vec<k8s_openapi::api::admissionregistration::v1::Validation>,
) -> Vec<VapExpression> {
    validations
        .into_iter()
        .map(|v| VapExpression {
            expression: v.expression,
            message: v.message,
            message_expression: v.message_expression,
        })
        .collect()
}

/// A pending approval as the operator creates it.
fn pending() -> Value {
    json!({
        "apiVersion": "agents.overseer.dev/v1alpha1",
        "kind": "AgentApproval",
        "metadata": {"name": "payment-c41d07", "namespace": "default"},
        "spec": {
            "decisionId": "01966b52-0b11-7e80-a3c4-5d6e7f8091a2",
            "requestDigest": "c41d0725e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5",
            "principal": {"id": "finance-agent", "username": AGENT},
            "tool": "payments_create",
            "approverUsers": ["maria.lopez@example.com"],
            "approverGroups": ["finance-controllers"],
            "expiresAt": "2026-11-22T14:00:00Z"
        }
    })
}

fn with_review(mut object: Value, reviewer: &str, decision: &str) -> Value {
    object["spec"]["review"] = json!({"decision": decision, "reviewer": reviewer});
    object
}

fn without(mut object: Value, field: &str) -> Value {
    if let Some(spec) = object["spec"].as_object_mut() {
        spec.remove(field);
    }
    object
}

fn request(operation: &str, username: &str, groups: &[&str]) -> AdmissionRequest {
    AdmissionRequest {
        operation: operation.into(),
        username: username.into(),
        uid: "0d0c9a9e-1b6b-4f0e-9d53-7f1d6a0d2c11".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        name: "payment-c41d07".into(),
        namespace: "default".into(),
        dry_run: false,
        kind: GroupVersionKind {
            group: "agents.overseer.dev".into(),
            version: "v1alpha1".into(),
            kind: "AgentApproval".into(),
        },
        resource: GroupVersionResource {
            group: "agents.overseer.dev".into(),
            version: "v1alpha1".into(),
            resource: "agentapprovals".into(),
        },
    }
}

/// The messages of the failed validations; empty when the request is admitted. An expression
/// that fails to compile or evaluate counts as a denial (the policy's failurePolicy is Fail).
fn denials(object: Value, old: Option<Value>, req: AdmissionRequest) -> Vec<String> {
    let mut builder = VapEvaluator::builder().object(object).request(req);
    if let Some(old) = old {
        builder = builder.old_object(old);
    }
    builder
        .build()
        .evaluate(&expressions())
        .into_iter()
        .filter(|r| !r.passed)
        .map(|r| {
            r.message
                .unwrap_or_else(|| format!("{} failed", r.expression))
        })
        .collect()
}

fn create(object: Value, username: &str, groups: &[&str]) -> Vec<String> {
    denials(object, None, request("CREATE", username, groups))
}

fn update(old: Value, new: Value, username: &str, groups: &[&str]) -> Vec<String> {
    denials(new, Some(old), request("UPDATE", username, groups))
}

fn assert_denied_with(denied: &[String], expected: &str) {
    assert!(
        denied.iter().any(|m| m.contains(expected)),
        "expected a denial containing {expected:?}, got {denied:?}"
    );
}

const HUMAN_GROUPS: &[&str] = &["system:authenticated", "finance-controllers"];

#[test]
fn policy_matches_agentapproval_writes_and_is_bound_to_deny() {
    let (policy, binding) = load();
    let spec = policy.spec.expect("spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .expect("resourceRules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["agents.overseer.dev".to_string()][..])
    );
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["agentapprovals".to_string()][..])
    );
    let mut operations = rule.operations.clone().unwrap_or_default();
    operations.sort();
    assert_eq!(operations, ["CREATE", "UPDATE"]);
    let binding = binding.spec.expect("binding spec");
    assert_eq!(
        binding.policy_name.as_deref(),
        policy.metadata.name.as_deref()
    );
    assert_eq!(
        binding.validation_actions.as_deref(),
        Some(&["Deny".to_string()][..])
    );
    assert!(
        binding.match_resources.is_none(),
        "the binding covers every namespace"
    );
}

#[test]
fn every_expression_compiles() {
    let expressions = expressions();
    assert_eq!(expressions.len(), 4);
    let compiled = VapEvaluator::builder()
        .build()
        .compile_expressions(&expressions);
    for (expression, result) in expressions.iter().zip(compiled) {
        assert!(
            result.is_ok(),
            "{}: {:?}",
            expression.expression,
            result.err()
        );
    }
}

#[test]
fn the_operator_creates_pending_approvals() {
    assert_eq!(
        create(pending(), OPERATOR, &["system:serviceaccounts"]),
        Vec::<String>::new()
    );
}

#[test]
fn nobody_else_creates_approvals() {
    for user in [
        "maria.lopez@example.com",
        AGENT,
        "system:serviceaccount:overseer-system:default",
        "admin",
    ] {
        assert_denied_with(
            &create(pending(), user, &["system:authenticated", "system:masters"]),
            "created only by the Overseer decision service",
        );
    }
}

#[test]
fn an_agent_cannot_create_an_approval_that_is_already_approved() {
    let forged = with_review(pending(), AGENT, "Approved");
    let denied = create(
        forged,
        AGENT,
        &["system:serviceaccounts", "finance-controllers"],
    );
    assert_denied_with(&denied, "created only by the Overseer decision service");
    assert_denied_with(&denied, "an agent cannot review its own approval request");
}

#[test]
fn the_operator_cannot_create_an_approval_with_a_review() {
    let approved = with_review(pending(), OPERATOR, "Approved");
    assert_denied_with(
        &create(approved, OPERATOR, &["system:serviceaccounts"]),
        "not an approver",
    );
}

#[test]
fn a_listed_user_approves_as_themselves() {
    let new = with_review(pending(), "maria.lopez@example.com", "Approved");
    assert_eq!(
        update(
            pending(),
            new,
            "maria.lopez@example.com",
            &["system:authenticated"]
        ),
        Vec::<String>::new()
    );
}

#[test]
fn a_member_of_a_listed_group_denies_as_themselves() {
    let new = with_review(pending(), "lee.chen@example.com", "Denied");
    assert_eq!(
        update(pending(), new, "lee.chen@example.com", HUMAN_GROUPS),
        Vec::<String>::new()
    );
}

#[test]
fn a_group_member_approves_when_no_users_are_listed() {
    let old = without(pending(), "approverUsers");
    let new = with_review(old.clone(), "lee.chen@example.com", "Approved");
    assert_eq!(
        update(old, new, "lee.chen@example.com", HUMAN_GROUPS),
        Vec::<String>::new()
    );
}

#[test]
fn the_reviewer_must_be_the_requesting_user() {
    let new = with_review(pending(), "maria.lopez@example.com", "Approved");
    let denied = update(pending(), new, "lee.chen@example.com", HUMAN_GROUPS);
    assert_eq!(denied.len(), 1, "{denied:?}");
    // messageExpression names the user who must be the reviewer.
    assert_denied_with(
        &denied,
        "must be the username of the user setting the review: lee.chen@example.com",
    );
}

#[test]
fn the_agent_cannot_approve_its_own_request_even_when_listed() {
    let mut old = pending();
    old["spec"]["approverUsers"] = json!(["maria.lopez@example.com", AGENT]);
    let new = with_review(old.clone(), AGENT, "Approved");
    let denied = update(
        old,
        new,
        AGENT,
        &["system:serviceaccounts", "system:authenticated"],
    );
    assert_eq!(
        denied,
        vec!["an agent cannot review its own approval request".to_string()]
    );
}

#[test]
fn the_agent_cannot_approve_through_a_group() {
    let mut old = pending();
    old["spec"]["approverGroups"] = json!(["system:serviceaccounts"]);
    let new = with_review(old.clone(), AGENT, "Approved");
    let denied = update(
        old,
        new,
        AGENT,
        &["system:serviceaccounts", "system:authenticated"],
    );
    assert_denied_with(&denied, "an agent cannot review its own approval request");
}

#[test]
fn an_unlisted_user_cannot_review() {
    let new = with_review(pending(), "mallory@example.com", "Approved");
    let denied = update(
        pending(),
        new,
        "mallory@example.com",
        &["system:authenticated", "developers"],
    );
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_denied_with(&denied, "the reviewer is not an approver of this request");
}

#[test]
fn nobody_can_review_when_no_approvers_are_listed() {
    let old = without(without(pending(), "approverUsers"), "approverGroups");
    let new = with_review(old.clone(), "maria.lopez@example.com", "Approved");
    let denied = update(old, new, "maria.lopez@example.com", HUMAN_GROUPS);
    assert_denied_with(&denied, "the reviewer is not an approver of this request");
}

#[test]
fn a_user_without_groups_is_judged_by_the_user_list() {
    let new = with_review(pending(), "maria.lopez@example.com", "Approved");
    assert_eq!(
        update(pending(), new.clone(), "maria.lopez@example.com", &[]),
        Vec::<String>::new()
    );
    let new = with_review(pending(), "lee.chen@example.com", "Approved");
    assert_denied_with(
        &update(pending(), new, "lee.chen@example.com", &[]),
        "not an approver",
    );
}

#[test]
fn the_principal_without_a_username_does_not_block_reviews() {
    let mut old = pending();
    if let Some(principal) = old["spec"]["principal"].as_object_mut() {
        principal.remove("username");
    }
    let new = with_review(old.clone(), "maria.lopez@example.com", "Approved");
    assert_eq!(
        update(old, new, "maria.lopez@example.com", &[]),
        Vec::<String>::new()
    );
}

#[test]
fn updates_that_leave_the_review_alone_are_not_judged() {
    // Labels or annotations change (by anyone RBAC allows), the review stays as it was: the
    // policy has nothing to say, whoever makes the change.
    let reviewed = with_review(pending(), "maria.lopez@example.com", "Approved");
    let mut relabelled = reviewed.clone();
    relabelled["metadata"]["labels"] = json!({"team": "finance"});
    assert_eq!(
        update(reviewed, relabelled, OPERATOR, &["system:serviceaccounts"]),
        Vec::<String>::new()
    );
    let mut annotated = pending();
    annotated["metadata"]["annotations"] = json!({"note": "escalated"});
    assert_eq!(
        update(pending(), annotated, "someone@example.com", &[]),
        Vec::<String>::new()
    );
}

#[test]
fn changing_a_review_is_judged_again() {
    // The CRD makes a review final; should that ever be bypassed, a changed review must still
    // come from its (new) reviewer, an approver who is not the agent.
    let approved = with_review(pending(), "maria.lopez@example.com", "Approved");
    let flipped = with_review(pending(), "maria.lopez@example.com", "Denied");
    assert_denied_with(
        &update(
            approved.clone(),
            flipped.clone(),
            "mallory@example.com",
            &[],
        ),
        "must be the username of the user setting the review",
    );
    assert_eq!(
        update(approved, flipped, "maria.lopez@example.com", &[]),
        Vec::<String>::new()
    );
}

/// `config/admission/operator_tokens_policy.yaml`: the operator's ServiceAccount requests tokens
/// and writes Secrets only for EphemeralIdentities' own `eid-*` objects.
mod operator_tokens {
    use super::*;

    const FILE: &str = "config/admission/operator_tokens_policy.yaml";

    fn policy() -> ValidatingAdmissionPolicy {
        let (policy, binding) = load_file(FILE);
        let spec = binding.spec.expect("binding spec");
        assert_eq!(
            spec.policy_name.as_deref(),
            Some("overseer-operator-tokens")
        );
        assert_eq!(spec.validation_actions, Some(vec!["Deny".to_owned()]));
        policy
    }

    fn request(operation: &str, username: &str, resource: &str, name: &str) -> AdmissionRequest {
        let (kind, resource_name) = match resource {
            "secrets" => ("Secret", "secrets"),
            _ => ("TokenRequest", "serviceaccounts"),
        };
        AdmissionRequest {
            operation: operation.into(),
            username: username.into(),
            uid: "5b0e3f1c-2f7a-4c61-9a0e-3d1f2a9c7b10".into(),
            groups: vec!["system:serviceaccounts".into()],
            name: name.into(),
            namespace: "agents".into(),
            dry_run: false,
            kind: GroupVersionKind {
                group: String::new(),
                version: "v1".into(),
                kind: kind.into(),
            },
            resource: GroupVersionResource {
                group: String::new(),
                version: "v1".into(),
                resource: resource_name.into(),
            },
        }
    }

    fn evaluate(expressions: &[VapExpression], req: &AdmissionRequest) -> Vec<(bool, String)> {
        VapEvaluator::builder()
            .object(json!({}))
            .request(req.clone())
            .build()
            .evaluate(expressions)
            .into_iter()
            .map(|r| (r.passed, r.message.unwrap_or(r.expression)))
            .collect()
    }

    /// `None` when the policy does not match the request (its matchConditions are false), else
    /// the messages of the failed validations.
    fn denials(operation: &str, username: &str, resource: &str, name: &str) -> Option<Vec<String>> {
        let spec = policy().spec.expect("spec");
        let conditions: Vec<VapExpression> = spec
            .match_conditions
            .unwrap_or_default()
            .into_iter()
            .map(|c| VapExpression {
                expression: c.expression,
                message: None,
                message_expression: None,
            })
            .collect();
        let validations = vap_expressions(spec.validations.unwrap_or_default());
        let req = request(operation, username, resource, name);
        if !evaluate(&conditions, &req)
            .iter()
            .all(|(passed, _)| *passed)
        {
            return None;
        }
        Some(
            evaluate(&validations, &req)
                .into_iter()
                .filter(|(passed, _)| !passed)
                .map(|(_, message)| message)
                .collect(),
        )
    }

    #[test]
    fn it_matches_token_requests_and_secret_writes_of_the_operator_only() {
        let spec = policy().spec.expect("spec");
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        let rules = spec
            .match_constraints
            .and_then(|m| m.resource_rules)
            .expect("resource rules");
        let matched: Vec<(Vec<String>, Vec<String>)> = rules
            .into_iter()
            .map(|r| {
                (
                    r.resources.unwrap_or_default(),
                    r.operations.unwrap_or_default(),
                )
            })
            .collect();
        assert!(matched.contains(&(vec!["serviceaccounts/token".into()], vec!["CREATE".into()])));
        assert!(matched.contains(&(
            vec!["secrets".into()],
            vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]
        )));
        // Nobody else's requests are evaluated at all.
        assert_eq!(denials("CREATE", AGENT, "secrets", "anything"), None);
        assert_eq!(denials("CREATE", AGENT, "token", "default"), None);
    }

    #[test]
    fn the_operator_mints_tokens_only_for_identity_service_accounts() {
        assert_eq!(
            denials("CREATE", OPERATOR, "token", "eid-build-fix-3f9a1c2b"),
            Some(vec![])
        );
        for name in ["default", "admin", "cluster-admin-sa"] {
            let denied = denials("CREATE", OPERATOR, "token", name).expect("matched");
            assert_denied_with(
                &denied,
                &format!("may not request a token for the ServiceAccount agents/{name}"),
            );
        }
    }

    #[test]
    fn the_operator_writes_only_identity_token_secrets() {
        for operation in ["CREATE", "UPDATE", "DELETE"] {
            assert_eq!(
                denials(
                    operation,
                    OPERATOR,
                    "secrets",
                    "eid-build-fix-3f9a1c2b-token"
                ),
                Some(vec![]),
                "{operation}"
            );
            let denied = denials(operation, OPERATOR, "secrets", "ingress-tls").expect("matched");
            assert_denied_with(&denied, "eid-*");
            let denied =
                denials(operation, OPERATOR, "secrets", "eid-build-fix-3f9a1c2b").expect("matched");
            assert_denied_with(&denied, "eid-*-token");
        }
    }
}
