//! The Argo CD health check shipped in `config/argocd/` (one Lua script, registered for every
//! Overseer kind in `argocd-cm`), run in Lua 5.1 — the dialect of Argo CD's gopher-lua — against
//! objects shaped as the operator writes them. No cluster needed.

use std::{collections::BTreeSet, path::PathBuf};

use mlua::{Lua, LuaSerdeExt, SerializeOptions};
use overseer_crds::{
    agents::{ApprovalPhase, IdentityPhase},
    fleet::RolloutPhase,
    runway::RuntimePhase,
};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script() -> String {
    std::fs::read_to_string(root().join("config/argocd/health.lua")).expect("health.lua")
}

/// Argo CD's verdict for `obj`: (status, message).
fn health(obj: &Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("object into Lua");
    lua.globals().set("obj", value).expect("global obj");
    let hs: mlua::Table = lua
        .load(script())
        .set_name("health.lua")
        .eval()
        .unwrap_or_else(|e| panic!("health.lua failed on {obj}: {e}"));
    let status: String = hs.get("status").expect("hs.status");
    let message: String = hs.get("message").unwrap_or_default();
    assert!(
        [
            "Healthy",
            "Progressing",
            "Degraded",
            "Suspended",
            "Missing",
            "Unknown"
        ]
        .contains(&status.as_str()),
        "not an Argo CD health status: {status}"
    );
    (status, message)
}

fn object(group: &str, kind: &str, generation: i64, spec: Value, status: Option<Value>) -> Value {
    let mut obj = json!({
        "apiVersion": format!("{group}/v1alpha1"),
        "kind": kind,
        "metadata": {"name": "x", "namespace": "team-a", "generation": generation},
        "spec": spec,
    });
    if let Some(status) = status {
        obj["status"] = status;
    }
    obj
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-12-04T10:00:00Z", "observedGeneration": 3})
}

fn phase<T: serde::Serialize>(p: T) -> Value {
    serde_json::to_value(p).expect("phase")
}

#[test]
fn every_overseer_kind_is_registered_with_the_one_script() {
    let kustomization =
        std::fs::read_to_string(root().join("config/argocd/kustomization.yaml")).expect("read");
    let doc: Value = serde_yaml::from_str(&kustomization).expect("yaml");
    assert_eq!(doc["namespace"], "argocd");
    let generators = doc["configMapGenerator"].as_array().expect("generators");
    assert_eq!(generators.len(), 1);
    assert_eq!(generators[0]["name"], "argocd-cm");
    assert_eq!(
        doc["generatorOptions"]["disableNameSuffixHash"], true,
        "argocd-cm must keep its name"
    );
    assert_eq!(
        doc["generatorOptions"]["labels"]["app.kubernetes.io/part-of"], "argocd",
        "Argo CD reads only ConfigMaps labelled part-of: argocd"
    );
    let registered: BTreeSet<String> = generators[0]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            let (key, file) = f
                .as_str()
                .expect("string")
                .split_once('=')
                .expect("key=file");
            assert_eq!(file, "health.lua", "{key}");
            key.to_owned()
        })
        .collect();
    let expected: BTreeSet<String> = overseer_crds::all_crds()
        .iter()
        .map(|crd| {
            format!(
                "resource.customizations.health.{}_{}",
                crd.spec.group, crd.spec.names.kind
            )
        })
        .collect();
    assert_eq!(registered, expected);
}

#[test]
fn no_status_or_a_stale_one_is_progressing() {
    let fresh = object("agents.overseer.dev", "AgentPolicy", 1, json!({}), None);
    assert_eq!(health(&fresh).0, "Progressing");
    let stale = object(
        "agents.overseer.dev",
        "AgentPolicy",
        4,
        json!({}),
        Some(json!({"observedGeneration": 3,
                    "conditions": [condition("Ready", "True", "Compiled", "12 rules")]})),
    );
    let (status, message) = health(&stale);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 4"), "{message}");
}

#[test]
fn configuration_kinds_follow_ready() {
    for (group, kind) in [
        ("agents.overseer.dev", "AgentPolicy"),
        ("agents.overseer.dev", "ClusterAgentPolicy"),
        ("agents.overseer.dev", "EphemeralIdentityClass"),
        ("agents.overseer.dev", "MCPServer"),
        ("fleet.overseer.dev", "FleetCluster"),
    ] {
        let ok = object(
            group,
            kind,
            3,
            json!({}),
            Some(json!({"observedGeneration": 3,
                        "conditions": [condition("Ready", "True", "Accepted", "ok")]})),
        );
        assert_eq!(health(&ok).0, "Healthy", "{kind}");
        let broken = object(
            group,
            kind,
            3,
            json!({}),
            Some(json!({"observedGeneration": 3,
                        "conditions": [condition("Ready", "False", "Invalid", "tools[2].when: line 1, column 9: unexpected token")]})),
        );
        let (status, message) = health(&broken);
        assert_eq!(status, "Degraded", "{kind}");
        assert!(message.contains("tools[2].when"), "{kind}: {message}");
    }
}

#[test]
fn a_paused_fleet_cluster_is_suspended() {
    let paused = object(
        "fleet.overseer.dev",
        "FleetCluster",
        3,
        json!({"paused": true}),
        Some(json!({"observedGeneration": 3,
                    "conditions": [condition("Ready", "False", "Paused", "paused")]})),
    );
    assert_eq!(health(&paused).0, "Suspended");
}

#[test]
fn fleet_rollouts_by_phase() {
    let rollout = |spec: Value, phase_: RolloutPhase, conditions: Value| {
        object(
            "fleet.overseer.dev",
            "FleetRollout",
            3,
            spec,
            Some(
                json!({"observedGeneration": 3, "phase": phase(phase_), "conditions": conditions}),
            ),
        )
    };
    let succeeded = rollout(
        json!({}),
        RolloutPhase::Succeeded,
        json!([condition("Ready", "True", "Succeeded", "40/40 clusters")]),
    );
    assert_eq!(health(&succeeded).0, "Healthy");
    let moving = rollout(
        json!({}),
        RolloutPhase::Progressing,
        json!([
            condition("Ready", "False", "Progressing", "stage canary"),
            condition("Reconciling", "True", "Progressing", "stage canary: 2/5")
        ]),
    );
    assert_eq!(
        health(&moving),
        ("Progressing".into(), "stage canary: 2/5".into())
    );
    for failed in [
        RolloutPhase::Failed,
        RolloutPhase::RollingBack,
        RolloutPhase::RolledBack,
        RolloutPhase::Abandoned,
    ] {
        let r = rollout(
            json!({}),
            failed,
            json!([condition(
                "Stalled",
                "True",
                "RolledBack",
                "edge-7: Deployment agents/bot not healthy"
            )]),
        );
        let (status, message) = health(&r);
        assert_eq!(status, "Degraded", "{failed:?}");
        assert!(message.contains("edge-7"), "{message}");
    }
    let waiting = rollout(json!({}), RolloutPhase::WaitingForApproval, json!([]));
    assert_eq!(health(&waiting).0, "Suspended");
    let paused_by_spec = rollout(
        json!({"state": "Pause"}),
        RolloutPhase::Progressing,
        json!([condition("Reconciling", "True", "Progressing", "x")]),
    );
    assert_eq!(health(&paused_by_spec).0, "Suspended");
}

#[test]
fn inference_runtimes_by_phase() {
    let runtime = |p: RuntimePhase, conditions: Value| {
        object(
            "runway.overseer.dev",
            "InferenceRuntime",
            2,
            json!({}),
            Some(json!({"observedGeneration": 2, "phase": phase(p), "conditions": conditions})),
        )
    };
    let serving = runtime(
        RuntimePhase::Serving,
        json!([condition(
            "Ready",
            "True",
            "Serving",
            "revision abc serving"
        )]),
    );
    assert_eq!(health(&serving).0, "Healthy");
    let switching = runtime(
        RuntimePhase::Switching,
        json!([
            condition("Ready", "True", "Serving", "old revision serving"),
            condition(
                "Progressing",
                "True",
                "CandidateStarting",
                "candidate 2/3 ready"
            )
        ]),
    );
    assert_eq!(
        health(&switching),
        ("Progressing".into(), "candidate 2/3 ready".into())
    );
    let degraded = runtime(
        RuntimePhase::Degraded,
        json!([
            condition("Ready", "True", "Serving", "old revision serving"),
            condition(
                "Degraded",
                "True",
                "SmokeTestFailed",
                "GET /v1/models answered 500"
            )
        ]),
    );
    assert_eq!(
        health(&degraded),
        ("Degraded".into(), "GET /v1/models answered 500".into())
    );
    assert_eq!(
        health(&runtime(RuntimePhase::Failed, json!([]))).0,
        "Degraded"
    );
}

#[test]
fn identities_and_approvals_by_phase() {
    let identity = |p: IdentityPhase| {
        object(
            "agents.overseer.dev",
            "EphemeralIdentity",
            1,
            json!({}),
            Some(json!({"observedGeneration": 1, "phase": phase(p),
                        "conditions": [condition("Ready", if p == IdentityPhase::Active { "True" } else { "False" }, "X", "m")]})),
        )
    };
    assert_eq!(health(&identity(IdentityPhase::Active)).0, "Healthy");
    assert_eq!(health(&identity(IdentityPhase::Pending)).0, "Progressing");
    assert_eq!(health(&identity(IdentityPhase::Denied)).0, "Degraded");
    assert_eq!(health(&identity(IdentityPhase::Expired)).0, "Healthy");
    assert_eq!(health(&identity(IdentityPhase::Revoked)).0, "Healthy");

    let approval = |p: ApprovalPhase| {
        object(
            "agents.overseer.dev",
            "AgentApproval",
            1,
            json!({}),
            Some(json!({"observedGeneration": 1, "phase": phase(p)})),
        )
    };
    assert_eq!(health(&approval(ApprovalPhase::Pending)).0, "Suspended");
    assert_eq!(health(&approval(ApprovalPhase::Approved)).0, "Healthy");
    assert_eq!(health(&approval(ApprovalPhase::Consumed)).0, "Healthy");
    assert_eq!(health(&approval(ApprovalPhase::Denied)).0, "Degraded");
    assert_eq!(health(&approval(ApprovalPhase::Expired)).0, "Degraded");
}

#[test]
fn fleet_approvals_follow_their_review() {
    let approval = |review: Option<Value>| {
        let spec = match review {
            Some(r) => json!({"review": r}),
            None => json!({}),
        };
        object("fleet.overseer.dev", "FleetApproval", 1, spec, None)
    };
    assert_eq!(health(&approval(None)).0, "Suspended");
    assert_eq!(
        health(&approval(Some(
            json!({"decision": "Approved", "reviewer": "alice"})
        ))),
        ("Healthy".into(), "Approved by alice".into())
    );
    assert_eq!(
        health(&approval(Some(
            json!({"decision": "Rejected", "reviewer": "bob"})
        )))
        .0,
        "Degraded"
    );
}
