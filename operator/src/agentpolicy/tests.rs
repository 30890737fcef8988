//! The controller against the mock API server (the exact status patches and Events for a valid
//! policy, a broken update and its fix), followers writing nothing while still serving, and the
//! decision router of `overseer run` answering from watched policies (`oneshot`).

use std::sync::Arc;

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
};
use k8s_openapi::{api::core::v1::Namespace, jiff::Timestamp};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{reflector, watcher},
};
use overseer_crds::agents::{
    AgentPolicy, AgentPolicySpec, AgentPolicyStatus, ClusterAgentPolicy, ClusterAgentPolicySpec,
    PolicyRules, RuleEffect, ToolRule,
};
use overseer_policy::{compile::CompiledPolicies, engine::Engine};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{
    controller::{PolicyStores, write_status, write_statuses},
    index::PolicyIndex,
    service::{DecisionArgs, build},
    source::agent_policy_source,
};
use crate::{
    controller::{
        Context, Diagnostics, EventRecorder,
        test_support::{ApiServerVerifier, ExpectedRequest, timeout_after_1s},
    },
    health::Readiness,
    leader::LeaderState,
    metrics::Metrics,
};

const STATUS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/namespaces/agents/agentpolicies/support/status?&force=true&fieldManager=overseer-agentpolicy-status";
const CLUSTER_STATUS_PATH: &str = "/apis/agents.overseer.dev/v1alpha1/clusteragentpolicies/guardrails/status?&force=true&fieldManager=overseer-agentpolicy-status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/agents/events?";
const BROKEN_WHEN: &str = "context.amount <";

fn now() -> Timestamp {
    "2030-01-01T00:00:00Z".parse().expect("timestamp")
}

fn later() -> Timestamp {
    "2030-01-01T00:05:00Z".parse().expect("timestamp")
}

fn context(client: Client, leader: bool) -> Context {
    let leader = LeaderState::fixed(leader);
    Context {
        recorder: EventRecorder::new(client.clone(), "overseer-0", leader.clone()),
        client,
        metrics: Arc::new(Metrics::new()),
        leader,
        readiness: Readiness::new(),
        diagnostics: Diagnostics::default(),
    }
}

fn rules(effect: RuleEffect, when: Option<&str>) -> PolicyRules {
    PolicyRules {
        tools: vec![ToolRule {
            name: "read".into(),
            tools: vec!["read_*".into()],
            effect,
            when: when.map(Into::into),
            ..ToolRule::default()
        }],
        ..PolicyRules::default()
    }
}

fn policy(generation: i64, policy: PolicyRules, status: Option<AgentPolicyStatus>) -> AgentPolicy {
    let mut object = AgentPolicy::new("support", AgentPolicySpec { policy });
    object.metadata.namespace = Some("agents".into());
    object.metadata.uid = Some("policy-uid".into());
    object.metadata.generation = Some(generation);
    object.status = status;
    object
}

fn engine() -> Arc<Engine> {
    Arc::new(Engine::new(CompiledPolicies::empty()))
}

fn revision_of(object: &AgentPolicy) -> String {
    match agent_policy_source(object) {
        super::source::Source::Policy(source) => source.revision(),
        super::source::Source::Invalid(report) => panic!("{report:?}"),
    }
}

fn returned(object: &AgentPolicy, status: &Value) -> Value {
    let mut value = serde_json::to_value(object).expect("json");
    value["status"] = status.clone();
    value
}

/// One step of the scenario: sync the index to `object`, expect exactly `status` to be
/// applied and an Event with `event`, and return the object as the API server would now hold it.
async fn step(
    index: &mut PolicyIndex,
    object: AgentPolicy,
    status: Value,
    event: Value,
    at: Timestamp,
) -> AgentPolicy {
    index.sync(vec![agent_policy_source(&object)]);
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::apply(
            STATUS_PATH,
            json!({
                "apiVersion": "agents.overseer.dev/v1alpha1",
                "kind": "AgentPolicy",
                "status": status,
            }),
        )
        .respond(200, returned(&object, &status)),
        ExpectedRequest::post_containing(EVENTS_PATH, event).respond(
            201,
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}),
        ),
    ]);
    let ctx = context(client, true);
    let api: Api<AgentPolicy> = Api::namespaced(ctx.client.clone(), "agents");
    let key = "agents/support";
    let written = write_status(&ctx, &api, &object, index, key, at)
        .await
        .expect("status written");
    assert!(written);
    drop((ctx, api));
    timeout_after_1s(scenario).await;
    let mut object = object;
    object.status = Some(serde_json::from_value(status).expect("status"));
    object
}

#[tokio::test]
async fn valid_then_invalid_then_fixed_policy_statuses_are_exact() {
    let engine = engine();
    let mut index = PolicyIndex::new(engine.clone());
    let valid = policy(1, rules(RuleEffect::Allow, None), None);
    let good = revision_of(&valid);
    let valid = step(
        &mut index,
        valid,
        json!({
            "observedGeneration": 1,
            "policyRevision": good,
            "ruleCount": 1,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "Compiled",
                "message": format!("compiled 1 rule; revision {good} serves decisions"),
                "observedGeneration": 1,
                "lastTransitionTime": "2030-01-01T00:00:00Z",
            }],
        }),
        json!({"type": "Normal", "reason": "Compiled", "action": "Compile",
               "note": format!("Ready=True: compiled 1 rule; revision {good} serves decisions"),
               "regarding": {"kind": "AgentPolicy", "name": "support", "namespace": "agents"}}),
        now(),
    )
    .await;
    let serving = engine.current().revision().to_owned();

    // An invalid change: Ready=False with the compiler's field, line and column; the last good
    // revision is still the one reported (and served).
    let invalid = policy(
        2,
        rules(RuleEffect::Allow, Some(BROKEN_WHEN)),
        valid.status.clone(),
    );
    let message = format!(
        "spec.tools[0].when (line 1, column 17): unexpected end of input; the last good revision {good} keeps serving decisions until this is fixed"
    );
    let invalid = step(
        &mut index,
        invalid,
        json!({
            "observedGeneration": 2,
            "policyRevision": good,
            "ruleCount": 1,
            "conditions": [{
                "type": "Ready",
                "status": "False",
                "reason": "InvalidPolicy",
                "message": message,
                "observedGeneration": 2,
                "lastTransitionTime": "2030-01-01T00:05:00Z",
            }],
        }),
        json!({"type": "Warning", "reason": "InvalidPolicy", "action": "Compile",
               "note": format!("Ready=False: {message}")}),
        later(),
    )
    .await;
    assert_eq!(
        index.revision(),
        serving,
        "the last good revision keeps serving"
    );

    // Fixed again, with a different rule: Ready=True at the new revision.
    let fixed = policy(3, rules(RuleEffect::Deny, None), invalid.status.clone());
    let new = revision_of(&fixed);
    assert_ne!(new, good);
    step(
        &mut index,
        fixed,
        json!({
            "observedGeneration": 3,
            "policyRevision": new,
            "ruleCount": 1,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "Compiled",
                "message": format!("compiled 1 rule; revision {new} serves decisions"),
                "observedGeneration": 3,
                "lastTransitionTime": "2030-01-01T00:05:00Z",
            }],
        }),
        json!({"type": "Normal", "reason": "Compiled"}),
        later(),
    )
    .await;
}

fn stores_with(
    policies: &[AgentPolicy],
    cluster: &[ClusterAgentPolicy],
) -> (
    PolicyStores,
    reflector::store::Writer<AgentPolicy>,
    reflector::store::Writer<ClusterAgentPolicy>,
) {
    let (p, mut pw) = reflector::store::<AgentPolicy>();
    let (c, mut cw) = reflector::store::<ClusterAgentPolicy>();
    let (n, mut nw) = reflector::store::<PartialObjectMeta<Namespace>>();
    for (writer, objects) in [(&mut pw, policies)] {
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }
    cw.apply_watcher_event(&watcher::Event::Init);
    for o in cluster {
        cw.apply_watcher_event(&watcher::Event::InitApply(o.clone()));
    }
    cw.apply_watcher_event(&watcher::Event::InitDone);
    nw.apply_watcher_event(&watcher::Event::Init);
    nw.apply_watcher_event(&watcher::Event::InitDone);
    (
        PolicyStores {
            policies: p,
            cluster_policies: c,
            namespaces: n,
        },
        pw,
        cw,
    )
}

fn guardrails(generation: i64) -> ClusterAgentPolicy {
    let mut object = ClusterAgentPolicy::new(
        "guardrails",
        ClusterAgentPolicySpec {
            namespace_selector: None,
            policy: PolicyRules {
                tools: vec![ToolRule {
                    name: "no-drop".into(),
                    tools: vec!["drop_*".into()],
                    effect: RuleEffect::Deny,
                    ..ToolRule::default()
                }],
                ..PolicyRules::default()
            },
        },
    );
    object.metadata.uid = Some("cluster-uid".into());
    object.metadata.generation = Some(generation);
    object
}

#[tokio::test]
async fn followers_serve_the_new_revision_but_write_nothing() {
    let (stores, _pw, _cw) = stores_with(
        &[policy(1, rules(RuleEffect::Allow, None), None)],
        &[guardrails(1)],
    );
    assert!(stores.is_ready());
    let engine = engine();
    let mut index = PolicyIndex::new(engine.clone());
    let outcome = index.sync(stores.sources());
    assert!(outcome.swapped.is_some(), "followers swap too");
    assert_eq!(engine.current().policy_count(), 2);

    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![]);
    let ctx = context(client, false);
    assert_eq!(write_statuses(&ctx, &stores, &index, now()).await, 0);
    drop(ctx);
    timeout_after_1s(scenario).await;
}

#[tokio::test]
async fn the_leader_writes_cluster_policy_status_and_skips_unchanged_ones() {
    let engine = engine();
    let mut index = PolicyIndex::new(engine.clone());
    let (stores, _pw, _cw) = stores_with(&[], &[guardrails(4)]);
    index.sync(stores.sources());
    let revision = index
        .serving("guardrails")
        .expect("serving")
        .revision
        .clone();
    let status = json!({
        "observedGeneration": 4,
        "policyRevision": revision,
        "ruleCount": 1,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "Compiled",
            "message": format!("compiled 1 rule; revision {revision} serves decisions"),
            "observedGeneration": 4,
            "lastTransitionTime": "2030-01-01T00:00:00Z",
        }],
    });
    let mut returned = serde_json::to_value(guardrails(4)).expect("json");
    returned["status"] = status.clone();
    let (client, verifier) = ApiServerVerifier::new();
    let scenario = verifier.run(vec![
        ExpectedRequest::apply(
            CLUSTER_STATUS_PATH,
            json!({
                "apiVersion": "agents.overseer.dev/v1alpha1",
                "kind": "ClusterAgentPolicy",
                "status": status,
            }),
        )
        .respond(200, returned.clone()),
        ExpectedRequest::post_containing(
            "/apis/events.k8s.io/v1/namespaces/default/events?",
            json!({"type": "Normal", "reason": "Compiled"}),
        )
        .respond(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null})),
    ]);
    let ctx = context(client, true);
    assert_eq!(write_statuses(&ctx, &stores, &index, now()).await, 0);

    // The watch now shows the written status: recomputing it later writes nothing.
    let mut written = guardrails(4);
    written.status = Some(serde_json::from_value(status).expect("status"));
    let (stores, _pw, _cw) = stores_with(&[], &[written]);
    assert!(!index.sync(stores.sources()).compiled);
    assert_eq!(write_statuses(&ctx, &stores, &index, later()).await, 0);
    drop(ctx);
    timeout_after_1s(scenario).await;
}

const KEYS: &str = r#"
keys:
  - {name: gateway, role: gateway, key: "gateway-key-0123456789"}
"#;

async fn decide(router: &axum::Router, tool: &str) -> (StatusCode, Value) {
    let body = json!({"principal": {"id": "support-bot", "namespace": "agents"}, "tool": tool});
    let response = router
        .clone()
        .oneshot(
            Request::post("/v1/decisions")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::AUTHORIZATION, "Bearer gateway-key-0123456789")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, serde_json::from_slice(&bytes).expect("json"))
}

#[tokio::test]
async fn the_run_decision_router_answers_from_watched_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keys.yaml"), KEYS).expect("keys");
    let args = DecisionArgs {
        decision_listen: Some("127.0.0.1:0".parse().expect("addr")),
        decision_api_keys: Some(dir.path().join("keys.yaml")),
        decision_audit_file: Some(dir.path().join("audit.jsonl")),
        decision_state_file: Some(dir.path().join("limits.json")),
        ..DecisionArgs::default()
    };
    let engine = super::service::engine(
        &args,
        std::sync::Arc::new(overseer_policy::approvals::InMemoryApprovals::default()),
    )
    .expect("engine");
    let runtime = build(&args, engine.clone(), &mut Registry::default(), |s| s)
        .expect("builds")
        .expect("enabled");
    let router = runtime.router();
    let mut index = PolicyIndex::new(engine);

    let (stores, mut pw, _cw) =
        stores_with(&[policy(1, rules(RuleEffect::Allow, None), None)], &[]);
    index.sync(stores.sources());
    let (status, answer) = decide(&router, "read_ticket").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["decision"], "allow", "{answer}");
    let good = index.revision();
    assert_eq!(answer["policyRevision"], good.as_str());

    // A broken update arrives through the watch: old answers continue.
    pw.apply_watcher_event(&watcher::Event::Apply(policy(
        2,
        rules(RuleEffect::Allow, Some(BROKEN_WHEN)),
        None,
    )));
    index.sync(stores.sources());
    let (_, answer) = decide(&router, "read_ticket").await;
    assert_eq!(answer["decision"], "allow", "{answer}");
    assert_eq!(answer["policyRevision"], good.as_str());

    // The fix turns the rule into a deny; deleting the policy falls back to default deny.
    pw.apply_watcher_event(&watcher::Event::Apply(policy(
        3,
        rules(RuleEffect::Deny, None),
        None,
    )));
    index.sync(stores.sources());
    let (_, answer) = decide(&router, "read_ticket").await;
    assert_eq!(answer["decision"], "deny", "{answer}");
    assert_ne!(answer["policyRevision"], good.as_str());
    pw.apply_watcher_event(&watcher::Event::Delete(policy(
        3,
        rules(RuleEffect::Deny, None),
        None,
    )));
    index.sync(stores.sources());
    assert_eq!(index.engine().current().policy_count(), 0);
    let (_, answer) = decide(&router, "read_ticket").await;
    assert_eq!(answer["decision"], "deny", "{answer}");

    runtime.stop().expect("stops");
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit");
    assert_eq!(audit.lines().count(), 4, "every decision is audited");
}
