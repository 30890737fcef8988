//! Controller tests against the mock API server: the exact requests of issuing, refusing,
//! watching over and revoking an identity, of the orphan sweep and of the kill switch.

use std::{sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{Client, runtime::controller::Action};
use overseer_crds::agents::{
    EphemeralIdentity, EphemeralIdentityClass, EphemeralIdentityClassSpec, EphemeralIdentitySpec,
    EphemeralIdentityStatus, GrantRule, Grants, IdentityPhase, RoleKind, RoleRef,
};
use serde_json::{Value, json};

use super::{
    build::Owner,
    reconcile::{apply_at, cleanup_at, requeue_until},
    revoke::revoke_agent,
    sweep::sweep,
};
use crate::{
    controller::{
        Context, Diagnostics, EventRecorder,
        test_support::{ApiServerVerifier, BodyMatch, ExpectedRequest, timeout_after_1s},
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const NS: &str = "agents";
const NAME: &str = "fix-bug";
const UID: &str = "3f1c2d4e-uid";
const SECRET_UID: &str = "9a8b7c6d-secret-uid";
const CLASS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/ephemeralidentityclasses/standard";
const IDENTITY_PATH: &str =
    "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities/fix-bug";
const STATUS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities/fix-bug/status?&force=true&fieldManager=overseer-identity-status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/agents/events?";

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn at(offset_secs: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() + offset_secs).expect("timestamp")
}

fn context(client: Client) -> Context {
    let leader = LeaderState::fixed(true);
    Context {
        recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: Readiness::new(),
        diagnostics: Diagnostics::default(),
    }
}

fn pods_get() -> GrantRule {
    GrantRule {
        api_groups: vec![String::new()],
        resources: vec!["pods".into()],
        verbs: vec!["get".into()],
        resource_names: vec![],
    }
}

fn view() -> RoleRef {
    RoleRef {
        kind: RoleKind::ClusterRole,
        name: "view".into(),
    }
}

fn identity(status: Option<EphemeralIdentityStatus>) -> EphemeralIdentity {
    let mut id = EphemeralIdentity::new(
        NAME,
        EphemeralIdentitySpec {
            class_name: "standard".into(),
            agent: "coder".into(),
            ttl: Some("5m".parse().expect("duration")),
            audiences: Some(vec!["vault".into()]),
            grants: Grants {
                roles: vec![view()],
                rules: vec![pods_get()],
            },
            task: None,
            revoked: false,
        },
    );
    id.metadata.namespace = Some(NS.into());
    id.metadata.uid = Some(UID.into());
    id.metadata.generation = Some(1);
    id.metadata.finalizers = Some(vec![super::reconcile::FINALIZER.into()]);
    id.status = status;
    id
}

/// A class allowing nothing, with `max_ttl` (for tests of the class's own fields).
pub(super) fn bare_class(max_ttl: &str) -> EphemeralIdentityClass {
    EphemeralIdentityClass::new(
        "standard",
        EphemeralIdentityClassSpec {
            max_ttl: max_ttl.parse().expect("duration"),
            default_ttl: None,
            namespace_selector: None,
            namespaces: Vec::new(),
            allowed_roles: Vec::new(),
            allowed_rules: Vec::new(),
            allowed_audiences: Vec::new(),
            require_approval: false,
            approval: None,
            record_retention: None,
        },
    )
}

fn class() -> EphemeralIdentityClass {
    EphemeralIdentityClass::new(
        "standard",
        EphemeralIdentityClassSpec {
            max_ttl: "1h".parse().expect("duration"),
            default_ttl: None,
            namespace_selector: None,
            namespaces: vec![NS.into()],
            allowed_roles: vec![view()],
            allowed_rules: vec![GrantRule {
                verbs: vec!["get".into(), "list".into()],
                ..pods_get()
            }],
            allowed_audiences: vec!["vault".into()],
            require_approval: false,
            approval: None,
            record_retention: Some("2h".parse().expect("duration")),
        },
    )
}

fn owner() -> Owner {
    Owner::from_identity(&identity(None)).expect("owner")
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

fn get(path: String, response: (u16, Value)) -> ExpectedRequest {
    ExpectedRequest::get(leak(path)).respond(response.0, response.1)
}

fn apply(path: String, body: Value) -> ExpectedRequest {
    ExpectedRequest::apply(leak(path), body.clone()).respond(200, body)
}

fn delete(path: String, uid: &str) -> ExpectedRequest {
    ExpectedRequest {
        content_type: Some("application/json"),
        body: BodyMatch::Exact(
            json!({"propagationPolicy": "Background", "preconditions": {"uid": uid}}),
        ),
        ..ExpectedRequest::new("DELETE", leak(format!("{path}?")))
    }
    .respond(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
    )
}

fn event(reason: &str, type_: &str) -> ExpectedRequest {
    ExpectedRequest::post_containing(EVENTS_PATH, json!({"reason": reason, "type": type_}))
        .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}))
}

fn core(kind: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/{kind}/{name}")
}

fn rbac(kind: &str, name: &str) -> String {
    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/{kind}/{name}")
}

fn ssa(path: String) -> String {
    format!("{path}?&force=true&fieldManager=overseer-identity")
}

fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("json")
}

fn with_uid(mut value: Value, uid: &str) -> Value {
    value["metadata"]["uid"] = json!(uid);
    value
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": 1, "lastTransitionTime": "2030-01-01T00:00:00Z",
    })
}

fn status_body(status: Value) -> Value {
    json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "EphemeralIdentity", "status": status})
}

fn status_response(status: Value) -> (u16, Value) {
    let mut id = json_of(&identity(None));
    id["status"] = status;
    (200, id)
}

fn active_status(expires: Timestamp) -> EphemeralIdentityStatus {
    let o = owner();
    serde_json::from_value(json!({
        "phase": "Active",
        "issuedAt": at(-60).to_string(),
        "expiresAt": expires.to_string(),
        "serviceAccountName": o.names.service_account,
        "secretName": o.names.secret,
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "True", "Issued", "token issued"),
            condition("Issued", "True", "Issued", "token issued"),
        ],
    }))
    .expect("status")
}

async fn run_scenario<F, T>(expected: Vec<ExpectedRequest>, body: impl FnOnce(Context) -> F) -> T
where
    F: Future<Output = T>,
{
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(expected);
    let ctx = context(client);
    let out = tokio::time::timeout(Duration::from_secs(2), body(ctx))
        .await
        .expect("reconcile finished in time");
    timeout_after_1s(scenario).await;
    out
}

/// Every request of issuing after the class was read and allowed the identity.
fn issuing_requests() -> Vec<ExpectedRequest> {
    let o = owner();
    let names = o.names.clone();
    let view_binding = names.role_binding(&view());
    let issuing_status = json!({
        "phase": "Pending",
        "serviceAccountName": names.service_account,
        "secretName": names.secret,
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "Issuing", "creating the ServiceAccount, its bindings and the token Secret"),
            condition("Issued", "False", "Issuing", "creating the ServiceAccount, its bindings and the token Secret"),
        ],
    });
    let token_request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {},
        "spec": {
            "audiences": ["vault"],
            "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": names.secret, "uid": SECRET_UID},
            // The TTL is 5 minutes; the API server's minimum is 10.
            "expirationSeconds": 600,
        },
    });
    let token_response = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {},
        "spec": token_request["spec"],
        "status": {"token": "eyJhbGciOiJSUzI1NiJ9.secret-token", "expirationTimestamp": "2030-01-01T00:10:00Z"},
    });
    let token_secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": names.secret,
            "namespace": NS,
            "labels": o.labels(),
            "annotations": {
                "agents.overseer.dev/issued-at": "2030-01-01T00:00:00Z",
                // min(issuedAt + 5m, token expiry at +10m)
                "agents.overseer.dev/expires-at": "2030-01-01T00:05:00Z",
            },
            "ownerReferences": [{
                "apiVersion": "agents.overseer.dev/v1alpha1", "kind": "EphemeralIdentity",
                "name": NAME, "uid": UID, "controller": true,
            }],
        },
        "type": "Opaque",
        "data": {"token": "ZXlKaGJHY2lPaUpTVXpJMU5pSjkuc2VjcmV0LXRva2Vu"},
    });
    let active_message = "token issued; valid until 2030-01-01T00:05:00Z";
    let active = json!({
        "phase": "Active",
        "issuedAt": "2030-01-01T00:00:00Z",
        "expiresAt": "2030-01-01T00:05:00Z",
        "serviceAccountName": names.service_account,
        "secretName": names.secret,
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "True", "Issued", active_message),
            condition("Issued", "True", "Issued", active_message),
        ],
    });
    vec![
        get(core("secrets", &names.secret), not_found()),
        get(core("serviceaccounts", &names.service_account), not_found()),
        get(rbac("roles", &names.role), not_found()),
        get(rbac("rolebindings", &names.rules_binding), not_found()),
        get(rbac("rolebindings", &view_binding), not_found()),
        // The identity as the API server has it, before anything is created.
        get(IDENTITY_PATH.into(), (200, json_of(&identity(None)))),
        ExpectedRequest::apply(STATUS_PATH, status_body(issuing_status.clone()))
            .respond(200, status_response(issuing_status).1),
        apply(
            ssa(core("serviceaccounts", &names.service_account)),
            json_of(&o.service_account()),
        ),
        apply(
            ssa(rbac("roles", &names.role)),
            json_of(&o.role(&[pods_get()]).expect("role")),
        ),
        apply(
            ssa(rbac("rolebindings", &names.rules_binding)),
            json_of(&o.role_bindings(&[view()], true)[0]),
        ),
        apply(
            ssa(rbac("rolebindings", &view_binding)),
            json_of(&o.role_bindings(&[view()], true)[1]),
        ),
        ExpectedRequest::apply(
            leak(ssa(core("secrets", &names.secret))),
            json_of(&o.empty_secret()),
        )
        .respond(200, with_uid(json_of(&o.empty_secret()), SECRET_UID)),
        ExpectedRequest {
            content_type: Some("application/json"),
            body: BodyMatch::Exact(token_request),
            ..ExpectedRequest::new(
                "POST",
                leak(format!(
                    "{}/token?",
                    core("serviceaccounts", &names.service_account)
                )),
            )
        }
        .respond(201, token_response),
        ExpectedRequest::apply(
            leak(ssa(core("secrets", &names.secret))),
            token_secret.clone(),
        )
        .respond(200, with_uid(token_secret, SECRET_UID)),
        ExpectedRequest::apply(STATUS_PATH, status_body(active.clone()))
            .respond(200, status_response(active).1),
        event("Issued", "Normal"),
    ]
}

#[tokio::test]
async fn issuing_creates_everything_in_order_and_binds_the_token_to_the_secret() {
    let mut expected = vec![get(CLASS_PATH.into(), (200, json_of(&class())))];
    expected.extend(issuing_requests());
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    // Requeued exactly at expiresAt (the TTL), not polled.
    assert_eq!(
        action.expect("issued"),
        Action::requeue(Duration::from_secs(300))
    );
}

#[tokio::test]
async fn a_refused_request_creates_nothing_and_only_writes_status() {
    let mut c = class();
    c.spec.allowed_rules[0].verbs = vec!["list".into()];
    let message = "spec.grants.rules[0] (apiGroups [\"\"], resources [\"pods\"], verbs [\"get\"]): verb \"get\" on \"pods\" is not allowed by class \"standard\"";
    let denied = json!({
        "phase": "Denied",
        "endedAt": "2030-01-01T00:00:00Z",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "RuleNotAllowed", message),
            condition("Issued", "False", "RuleNotAllowed", message),
        ],
    });
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&c))),
        ExpectedRequest::apply(STATUS_PATH, status_body(denied.clone())).respond(200, status_response(denied).1),
        ExpectedRequest::post_containing(EVENTS_PATH, json!({"reason": "RuleNotAllowed", "type": "Warning", "note": message}))
            .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    // Kept as a record for the class's recordRetention (2h), then deleted.
    assert_eq!(
        action.expect("denied"),
        Action::requeue(Duration::from_secs(7200))
    );
}

#[tokio::test]
async fn a_missing_class_leaves_the_identity_pending() {
    let message =
        "EphemeralIdentityClass \"standard\" does not exist; create it or use another class";
    let pending = json!({
        "phase": "Pending",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "ClassNotFound", message),
            condition("Issued", "False", "ClassNotFound", message),
        ],
    });
    let expected = vec![
        get(CLASS_PATH.into(), not_found()),
        ExpectedRequest::apply(STATUS_PATH, status_body(pending.clone()))
            .respond(200, status_response(pending).1),
        event("ClassNotFound", "Warning"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    assert_eq!(action.expect("pending"), Action::await_change());
}

#[tokio::test]
async fn a_foreign_service_account_with_our_name_is_a_conflict() {
    let names = owner().names;
    let foreign = json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": names.service_account, "namespace": NS, "uid": "someone-else"},
    });
    let message = format!(
        "ServiceAccount {:?} already exists in namespace \"agents\" and does not belong to this identity; delete it or recreate the identity under another name",
        names.service_account
    );
    let denied = json!({
        "phase": "Denied",
        "endedAt": "2030-01-01T00:00:00Z",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "NameConflict", &message),
            condition("Issued", "False", "NameConflict", &message),
        ],
    });
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        get(core("secrets", &names.secret), not_found()),
        get(
            core("serviceaccounts", &names.service_account),
            (200, foreign),
        ),
        ExpectedRequest::apply(STATUS_PATH, status_body(denied.clone()))
            .respond(200, status_response(denied).1),
        event("NameConflict", "Warning"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    assert_eq!(
        action.expect("denied"),
        Action::requeue(Duration::from_secs(7200))
    );
}

fn owned_secret_with_token() -> Value {
    let o = owner();
    with_uid(
        json_of(&o.token_secret(&super::build::Token::new("t0k3n".into()), at(-60), at(240))),
        SECRET_UID,
    )
}

#[tokio::test]
async fn reconciling_an_active_identity_again_requests_no_token() {
    let names = owner().names;
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        get(
            core("secrets", &names.secret),
            (200, owned_secret_with_token()),
        ),
    ];
    let id = identity(Some(active_status(at(240))));
    let action = run_scenario(
        expected,
        |ctx| async move { apply_at(&id, &ctx, now()).await },
    )
    .await;
    assert_eq!(
        action.expect("active"),
        Action::requeue(Duration::from_secs(240))
    );
}

#[tokio::test]
async fn a_token_written_before_a_crash_is_adopted_not_minted_again() {
    let o = owner();
    let names = o.names.clone();
    let view_binding = names.role_binding(&view());
    let owned = |value: Value| (200, value);
    let message = format!("token issued; valid until {}", at(240));
    let active = json!({
        "phase": "Active",
        "issuedAt": at(-60).to_string(),
        "expiresAt": at(240).to_string(),
        "serviceAccountName": names.service_account,
        "secretName": names.secret,
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "True", "Issued", &message),
            condition("Issued", "True", "Issued", &message),
        ],
    });
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        get(
            core("secrets", &names.secret),
            owned(owned_secret_with_token()),
        ),
        get(
            core("serviceaccounts", &names.service_account),
            owned(json_of(&o.service_account())),
        ),
        get(
            rbac("roles", &names.role),
            owned(json_of(&o.role(&[pods_get()]).expect("role"))),
        ),
        get(
            rbac("rolebindings", &names.rules_binding),
            owned(json_of(&o.role_bindings(&[view()], true)[0])),
        ),
        get(
            rbac("rolebindings", &view_binding),
            owned(json_of(&o.role_bindings(&[view()], true)[1])),
        ),
        ExpectedRequest::apply(STATUS_PATH, status_body(active.clone()))
            .respond(200, status_response(active).1),
        event("Issued", "Normal"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    assert_eq!(
        action.expect("adopted"),
        Action::requeue(Duration::from_secs(240))
    );
}

#[tokio::test]
async fn an_empty_secret_left_by_a_crash_is_replaced_before_requesting() {
    let o = owner();
    let names = o.names.clone();
    let view_binding = names.role_binding(&view());
    let stale = with_uid(json_of(&o.empty_secret()), "stale-uid");
    let mut status = active_status(at(240));
    status.phase = Some(IdentityPhase::Pending);
    let expected_prefix = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        get(core("secrets", &names.secret), (200, stale)),
        get(core("serviceaccounts", &names.service_account), not_found()),
        get(rbac("roles", &names.role), not_found()),
        get(rbac("rolebindings", &names.rules_binding), not_found()),
        get(rbac("rolebindings", &view_binding), not_found()),
        get(IDENTITY_PATH.into(), (200, json_of(&identity(None)))),
        // Names already recorded: no Issuing status write.
        apply(ssa(core("serviceaccounts", &names.service_account)), json_of(&o.service_account())),
        apply(ssa(rbac("roles", &names.role)), json_of(&o.role(&[pods_get()]).expect("role"))),
        apply(ssa(rbac("rolebindings", &names.rules_binding)), json_of(&o.role_bindings(&[view()], true)[0])),
        apply(ssa(rbac("rolebindings", &view_binding)), json_of(&o.role_bindings(&[view()], true)[1])),
        delete(core("secrets", &names.secret), "stale-uid"),
        ExpectedRequest::apply(leak(ssa(core("secrets", &names.secret))), json_of(&o.empty_secret()))
            .respond(200, with_uid(json_of(&o.empty_secret()), SECRET_UID)),
        // The token request fails: the test stops here, having shown the order.
        ExpectedRequest {
            content_type: Some("application/json"),
            body: BodyMatch::Contains(json!({"spec": {"boundObjectRef": {"uid": SECRET_UID}}})),
            ..ExpectedRequest::new("POST", leak(format!("{}/token?", core("serviceaccounts", &names.service_account))))
        }
        .respond(503, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "message": "unavailable"})),
    ];
    let id = identity(Some(status));
    let result = run_scenario(expected_prefix, |ctx| async move {
        apply_at(&id, &ctx, now()).await
    })
    .await;
    assert_eq!(
        result.expect_err("token request failed").metric_label(),
        "kube_api_server_error"
    );
}

#[tokio::test]
async fn a_stale_pending_copy_of_an_ended_identity_is_not_issued_again() {
    // The cache still says Pending (issuing, names recorded), but the identity expired and was
    // revoked meanwhile: the fresh read stops the mint, and what the cached run could have
    // recreated is deleted again.
    let o = owner();
    let names = o.names.clone();
    let view_binding = names.role_binding(&view());
    let mut cached = active_status(at(240));
    cached.phase = Some(IdentityPhase::Pending);
    let mut live = active_status(at(-60));
    live.phase = Some(IdentityPhase::Expired);
    let mut expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        get(core("secrets", &names.secret), not_found()),
        get(core("serviceaccounts", &names.service_account), not_found()),
        get(rbac("roles", &names.role), not_found()),
        get(rbac("rolebindings", &names.rules_binding), not_found()),
        get(rbac("rolebindings", &view_binding), not_found()),
        get(IDENTITY_PATH.into(), (200, json_of(&identity(Some(live))))),
    ];
    expected.extend(revocation_requests(&o));
    let id = identity(Some(cached));
    let action = run_scenario(
        expected,
        |ctx| async move { apply_at(&id, &ctx, now()).await },
    )
    .await
    .expect("reconciled");
    assert_eq!(action, Action::await_change());
}

fn revocation_requests(o: &Owner) -> Vec<ExpectedRequest> {
    let names = &o.names;
    let view_binding = names.role_binding(&view());
    let owned = |value: Value, uid: &str| (200, with_uid(value, uid));
    vec![
        get(
            core("secrets", &names.secret),
            owned(json_of(&o.empty_secret()), "u-secret"),
        ),
        delete(core("secrets", &names.secret), "u-secret"),
        get(
            rbac("rolebindings", &names.rules_binding),
            owned(json_of(&o.role_bindings(&[view()], true)[0]), "u-rb0"),
        ),
        delete(rbac("rolebindings", &names.rules_binding), "u-rb0"),
        get(
            rbac("rolebindings", &view_binding),
            owned(json_of(&o.role_bindings(&[view()], true)[1]), "u-rb1"),
        ),
        delete(rbac("rolebindings", &view_binding), "u-rb1"),
        get(
            rbac("roles", &names.role),
            owned(json_of(&o.role(&[pods_get()]).expect("role")), "u-role"),
        ),
        delete(rbac("roles", &names.role), "u-role"),
        get(
            core("serviceaccounts", &names.service_account),
            owned(json_of(&o.service_account()), "u-sa"),
        ),
        delete(core("serviceaccounts", &names.service_account), "u-sa"),
    ]
}

#[tokio::test]
async fn expiry_revokes_secret_first_then_bindings_role_account_then_status() {
    let o = owner();
    let message = format!("the identity ended at {}", at(-1));
    let mut expected = revocation_requests(&o);
    let expired = json!({
        "phase": "Expired",
        "issuedAt": at(-60).to_string(),
        "expiresAt": at(-1).to_string(),
        "endedAt": "2030-01-01T00:00:00Z",
        "serviceAccountName": o.names.service_account,
        "secretName": o.names.secret,
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "Expired", &message),
            condition("Issued", "False", "Expired", &message),
            condition("Revoked", "True", "Expired", &message),
        ],
    });
    expected.push(
        ExpectedRequest::apply(STATUS_PATH, status_body(expired.clone()))
            .respond(200, status_response(expired).1),
    );
    expected.push(event("Expired", "Normal"));
    let id = identity(Some(active_status(at(-1))));
    let action = run_scenario(
        expected,
        |ctx| async move { apply_at(&id, &ctx, now()).await },
    )
    .await;
    assert_eq!(
        action.expect("expired"),
        Action::requeue(Duration::from_secs(24 * 3600))
    );
}

#[tokio::test]
async fn revoked_true_and_deletion_revoke_in_the_same_order() {
    for deleting in [false, true] {
        let o = owner();
        let (why, message) = if deleting {
            ("Deleted", "the identity is being deleted")
        } else {
            ("Revoked", "spec.revoked is true")
        };
        let mut expected = revocation_requests(&o);
        let revoked = json!({
            "phase": "Revoked",
            "issuedAt": at(-60).to_string(),
            "expiresAt": at(240).to_string(),
            "endedAt": "2030-01-01T00:00:00Z",
            "serviceAccountName": o.names.service_account,
            "secretName": o.names.secret,
            "observedGeneration": 1,
            "conditions": [
                condition("Ready", "False", why, message),
                condition("Issued", "False", why, message),
                condition("Revoked", "True", why, message),
            ],
        });
        expected.push(
            ExpectedRequest::apply(STATUS_PATH, status_body(revoked.clone()))
                .respond(200, status_response(revoked).1),
        );
        expected.push(event(why, "Normal"));
        let mut id = identity(Some(active_status(at(240))));
        id.spec.revoked = !deleting;
        let result = run_scenario(expected, |ctx| async move {
            if deleting {
                cleanup_at(&id, &ctx, now()).await
            } else {
                apply_at(&id, &ctx, now()).await
            }
        })
        .await;
        result.expect("revoked");
    }
}

#[tokio::test]
async fn a_finished_identity_is_deleted_after_its_retention() {
    let mut status = active_status(at(-10));
    status.phase = Some(IdentityPhase::Expired);
    status.ended_at = Some(at(-7200).to_string());
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&class()))),
        ExpectedRequest {
            content_type: Some("application/json"),
            body: BodyMatch::Exact(json!({"preconditions": {"uid": UID}})),
            ..ExpectedRequest::new(
                "DELETE",
                "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities/fix-bug?",
            )
        }
        .respond(200, json_of(&identity(None))),
    ];
    let id = identity(Some(status.clone()));
    let action = run_scenario(
        expected,
        |ctx| async move { apply_at(&id, &ctx, now()).await },
    )
    .await;
    assert_eq!(action.expect("deleted"), Action::await_change());

    // Not yet: requeued for the rest of the retention.
    status.ended_at = Some(at(-7000).to_string());
    let id = identity(Some(status));
    let expected = vec![get(CLASS_PATH.into(), (200, json_of(&class())))];
    let action = run_scenario(
        expected,
        |ctx| async move { apply_at(&id, &ctx, now()).await },
    )
    .await;
    assert_eq!(
        action.expect("kept"),
        Action::requeue(Duration::from_secs(200))
    );
}

#[test]
fn requeue_is_exact_and_never_zero() {
    assert_eq!(
        requeue_until(now(), at(90)),
        Action::requeue(Duration::from_secs(90))
    );
    assert_eq!(
        requeue_until(now(), at(-5)),
        Action::requeue(Duration::from_millis(1))
    );
}

#[tokio::test]
async fn the_kill_switch_marks_every_live_identity_of_the_agent() {
    let mut other_agent = identity(None);
    other_agent.metadata.name = Some("other".into());
    other_agent.spec.agent = "someone-else".into();
    let mut done = identity(Some(active_status(at(10))));
    done.metadata.name = Some("done".into());
    if let Some(s) = done.status.as_mut() {
        s.phase = Some(IdentityPhase::Expired);
    }
    let mut second = identity(Some(active_status(at(10))));
    second.metadata.name = Some("second".into());
    second.metadata.namespace = Some("team-b".into());
    let list = json!({
        "apiVersion": "agents.overseer.dev/v1alpha1", "kind": "EphemeralIdentityList", "metadata": {},
        "items": [json_of(&identity(None)), other_agent, done, second],
    });
    let patch = |path: &'static str| {
        ExpectedRequest {
            content_type: Some("application/merge-patch+json"),
            body: BodyMatch::Exact(json!({"spec": {"revoked": true}})),
            ..ExpectedRequest::new("PATCH", path)
        }
        .respond(200, json_of(&identity(None)))
    };
    let expected = vec![
        ExpectedRequest::get("/apis/agents.overseer.dev/v1alpha1/ephemeralidentities?")
            .respond(200, list),
        patch(
            "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/ephemeralidentities/fix-bug?&fieldManager=overseer-identity-kill-switch",
        ),
        patch(
            "/apis/agents.overseer.dev/v1alpha1/namespaces/team-b/ephemeralidentities/second?&fieldManager=overseer-identity-kill-switch",
        ),
    ];
    let count = run_scenario(expected, |ctx| async move {
        revoke_agent(&ctx.client, None, "coder").await
    })
    .await;
    assert_eq!(count.expect("revoked"), 2);
}

#[tokio::test]
async fn the_sweep_deletes_children_whose_identity_is_gone() {
    let selector = "?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Doverseer%2Cagents.overseer.dev%2Fephemeral-identity";
    let o = owner();
    let meta_list = |items: Vec<Value>| {
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut i| {
                i["apiVersion"] = json!("meta.k8s.io/v1");
                i["kind"] = json!("PartialObjectMetadata");
                i
            })
            .collect();
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": items})
    };
    let alive = with_uid(json_of(&o.service_account()), "sa-alive");
    let mut orphan = with_uid(json_of(&o.service_account()), "sa-orphan");
    orphan["metadata"]["name"] = json!("eid-gone-1234567890");
    orphan["metadata"]["ownerReferences"][0]["uid"] = json!("gone-uid");
    let identities = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {}, "items": [
        {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": NAME, "namespace": NS, "uid": UID}},
    ]});
    // Metadata-only lists (the client asks for PartialObjectMetadataList).
    let list = |path: String| ExpectedRequest {
        content_type: Some("application/json"),
        ..ExpectedRequest::get(leak(path))
    };
    let expected = vec![
        list(format!("/api/v1/serviceaccounts{selector}"))
            .respond(200, meta_list(vec![alive, orphan])),
        list(format!("/api/v1/secrets{selector}")).respond(200, meta_list(vec![])),
        list(format!(
            "/apis/rbac.authorization.k8s.io/v1/roles{selector}"
        ))
        .respond(200, meta_list(vec![])),
        list(format!(
            "/apis/rbac.authorization.k8s.io/v1/rolebindings{selector}"
        ))
        .respond(200, meta_list(vec![])),
        list("/apis/agents.overseer.dev/v1alpha1/ephemeralidentities?".into())
            .respond(200, identities),
        delete(core("serviceaccounts", "eid-gone-1234567890"), "sa-orphan"),
    ];
    let deleted = run_scenario(expected, |ctx| async move {
        sweep(&ctx.client, &ctx.leader).await
    })
    .await;
    assert_eq!(deleted.expect("swept"), 1);
}

// --- approval before issuing --------------------------------------------------------------

fn approval_class() -> EphemeralIdentityClass {
    let mut c = class();
    c.spec.require_approval = true;
    c.spec.approval = Some(overseer_crds::agents::ApprovalSettings {
        groups: vec!["platform-oncall".into()],
        timeout: Some("10m".parse().expect("duration")),
        ..Default::default()
    });
    c
}

fn approval_path(name: &str) -> String {
    format!("/apis/agents.overseer.dev/v1alpha1/namespaces/{NS}/agentapprovals/{name}")
}

fn approval_status_path(name: &str) -> &'static str {
    leak(format!(
        "{}/status?&force=true&fieldManager=overseer-identity-status",
        approval_path(name)
    ))
}

fn opened_approval() -> (String, Value) {
    let o = owner();
    let id = identity(None);
    let digest = super::approval::request_digest(&id, &o.uid);
    let request = super::approval::request(&o, &id, &approval_class(), &digest, now());
    let name = request.metadata.name.clone().expect("name");
    (name, json_of(&request))
}

fn reviewed(mut approval: Value, decision: &str, reviewer: &str) -> Value {
    approval["spec"]["review"] =
        json!({"decision": decision, "reviewer": reviewer, "comment": "checked"});
    approval
}

fn approval_status_body(status: Value) -> Value {
    json!({"apiVersion": "agents.overseer.dev/v1alpha1", "kind": "AgentApproval", "status": status})
}

#[tokio::test]
async fn a_class_requiring_approval_opens_a_request_bound_to_the_exact_grants() {
    let (name, request) = opened_approval();
    // The request names the approvers, is owned by the identity and times out with the class.
    assert_eq!(
        request["spec"]["approverGroups"],
        json!(["platform-oncall"])
    );
    assert_eq!(request["spec"]["expiresAt"], "2030-01-01T00:10:00Z");
    assert_eq!(request["metadata"]["ownerReferences"][0]["uid"], UID);
    let message = format!(
        "waiting until 2030-01-01T00:10:00Z for a listed approver to approve AgentApproval {name:?}: \
         kubectl patch agentapproval {name} -n {NS} --type merge -p \
         '{{\"spec\":{{\"review\":{{\"decision\":\"Approved\",\"reviewer\":\"<your username>\"}}}}}}'"
    );
    let pending = json!({
        "phase": "Pending",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "ApprovalRequired", &message),
            condition("Issued", "False", "ApprovalRequired", &message),
        ],
    });
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&approval_class()))),
        get(approval_path(&name), not_found()),
        apply(ssa(approval_path(&name)), request),
        ExpectedRequest::apply(STATUS_PATH, status_body(pending.clone()))
            .respond(200, status_response(pending).1),
        event("ApprovalRequired", "Warning"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    // Woken by the review (owned object) or exactly at the timeout.
    assert_eq!(
        action.expect("waiting"),
        Action::requeue(Duration::from_secs(600))
    );
}

#[tokio::test]
async fn a_denied_approval_denies_the_identity_and_records_the_reviewer() {
    let (name, request) = opened_approval();
    let denied_approval = reviewed(request, "Denied", "alice");
    let message = format!("alice denied AgentApproval {name:?}: checked");
    let denied = json!({
        "phase": "Denied",
        "endedAt": "2030-01-01T00:00:00Z",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "ApprovalDenied", &message),
            condition("Issued", "False", "ApprovalDenied", &message),
        ],
    });
    let approval_status =
        json!({"phase": "Denied", "reviewedBy": "alice", "reviewedAt": "2030-01-01T00:00:00Z"});
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&approval_class()))),
        get(approval_path(&name), (200, denied_approval.clone())),
        ExpectedRequest::apply(
            approval_status_path(&name),
            approval_status_body(approval_status),
        )
        .respond(200, denied_approval),
        ExpectedRequest::apply(STATUS_PATH, status_body(denied.clone()))
            .respond(200, status_response(denied).1),
        event("ApprovalDenied", "Warning"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    assert_eq!(
        action.expect("denied"),
        Action::requeue(Duration::from_secs(7200))
    );
}

#[tokio::test]
async fn an_unanswered_approval_times_out_into_a_denial() {
    let (name, request) = opened_approval();
    let message =
        format!("nobody reviewed AgentApproval {name:?} before it expired at 2030-01-01T00:10:00Z");
    let denied = json!({
        "phase": "Denied",
        "endedAt": "2030-01-01T00:10:00Z",
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "False", "ApprovalExpired", &message),
            condition("Issued", "False", "ApprovalExpired", &message),
        ],
    });
    let mut denied = denied;
    for c in denied["conditions"].as_array_mut().expect("conditions") {
        c["lastTransitionTime"] = json!("2030-01-01T00:10:00Z");
    }
    let expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&approval_class()))),
        get(approval_path(&name), (200, request.clone())),
        ExpectedRequest::apply(
            approval_status_path(&name),
            approval_status_body(json!({"phase": "Expired"})),
        )
        .respond(200, request),
        ExpectedRequest::apply(STATUS_PATH, status_body(denied.clone()))
            .respond(200, status_response(denied).1),
        event("ApprovalExpired", "Warning"),
    ];
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, at(600)).await
    })
    .await;
    assert!(action.is_ok(), "{action:?}");
}

#[tokio::test]
async fn an_approved_request_issues_the_token_then_marks_the_approval_consumed() {
    let (name, request) = opened_approval();
    let approved = reviewed(request, "Approved", "alice");
    let mut expected = vec![
        get(CLASS_PATH.into(), (200, json_of(&approval_class()))),
        get(approval_path(&name), (200, approved.clone())),
        ExpectedRequest::apply(
            approval_status_path(&name),
            approval_status_body(json!({
                "phase": "Approved", "reviewedBy": "alice", "reviewedAt": "2030-01-01T00:00:00Z",
            })),
        )
        .respond(200, approved.clone()),
    ];
    expected.extend(issuing_requests());
    // The approval object handed on is the one read before issuing (no status yet), so the
    // consumed write carries the review time as of now.
    expected.push(
        ExpectedRequest::apply(
            approval_status_path(&name),
            approval_status_body(json!({
                "phase": "Consumed", "reviewedBy": "alice", "reviewedAt": "2030-01-01T00:00:00Z",
                "consumedAt": "2030-01-01T00:00:00Z",
            })),
        )
        .respond(200, approved),
    );
    let action = run_scenario(expected, |ctx| async move {
        apply_at(&identity(None), &ctx, now()).await
    })
    .await;
    assert_eq!(
        action.expect("issued"),
        Action::requeue(Duration::from_secs(300))
    );
}
