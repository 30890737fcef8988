//! Determinism, validation of rejected combinations, readiness judgement and endpoints.

mod fixtures;

use k8s_openapi::api::core::v1::EnvVar;
use overseer_crds::{
    common::SecretKeyRef,
    runway::{
        Accelerator, BackendKind, CanaryStep, Placement, Profile, ServingMode, SwitchStrategy,
        SwitchType,
    },
};
use runway_api::{RenderError, RevisionReadiness, backend_for, endpoint, revision_hash};
use serde_json::{Value, json};

use fixtures::*;

const ALL: [BackendKind; 5] = [
    BackendKind::Vllm,
    BackendKind::Kaito,
    BackendKind::LlmD,
    BackendKind::Dynamo,
    BackendKind::Kserve,
];

fn render(
    spec: &overseer_crds::runway::InferenceRuntimeSpec,
    replicas: i32,
) -> Result<Vec<Value>, RenderError> {
    let owner = owner();
    let minted = mint(spec);
    backend_for(spec.engine.backend).render(&input(spec, &minted, replicas, &owner))
}

fn bytes(objects: &[Value]) -> Vec<u8> {
    serde_json::to_vec(objects).expect("serializes")
}

#[test]
fn rendering_is_byte_identical_across_calls_and_equal_specs() {
    for (label, spec, replicas) in cases() {
        let first = bytes(&render(&spec, replicas).expect("renders"));
        let second = bytes(&render(&spec.clone(), replicas).expect("renders"));
        assert_eq!(first, second, "{label}");
        // The same args inserted in another order are the same spec.
        let mut reordered = spec.clone();
        let args: Vec<_> = spec.engine.args.clone().into_iter().rev().collect();
        reordered.engine.args.clear();
        reordered.engine.args.extend(args);
        assert_eq!(
            bytes(&render(&reordered, replicas).expect("renders")),
            first,
            "{label}"
        );
    }
}

#[test]
fn engine_args_render_sorted_after_the_fixed_flags() {
    let spec = gpu(BackendKind::Vllm);
    let objects = render(&spec, 1).expect("renders");
    let args: Vec<&str> = objects[0]
        .pointer("/spec/template/spec/containers/0/args")
        .and_then(Value::as_array)
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "--model",
            "Qwen/Qwen3-0.6B",
            "--served-model-name",
            "qwen3",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--enforce-eager",
            "--gpu-memory-utilization",
            "0.9",
            "--max-model-len",
            "8192",
        ]
    );
    let container = &objects[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "vllm/vllm-openai:v0.14.1");
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/health", "port": 8000})
    );
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(
        container["env"][0],
        json!({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}})
    );
    assert_eq!(
        objects[0]["spec"]["template"]["spec"]["nodeSelector"],
        json!({"pool": "gpu"})
    );
}

#[test]
fn cpu_profile_renders_the_cpu_image_without_accelerators() {
    let objects = render(&cpu(BackendKind::Vllm), 1).expect("renders");
    let pod = &objects[0]["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.14.1"
    );
    assert_eq!(
        pod["containers"][0]["resources"],
        json!({"limits": {"memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}})
    );
    assert!(
        pod.get("volumes").is_none(),
        "no /dev/shm or model volume: {pod}"
    );
    // Served name derived from the URI.
    let args = pod["containers"][0]["args"].as_array().expect("args");
    assert_eq!(args[3], "Qwen3-0.6B");
}

#[test]
fn kaito_picks_workspace_for_one_replica_and_inferenceset_otherwise() {
    let spec = gpu(BackendKind::Kaito);
    let kinds = |replicas| -> Vec<String> {
        render(&spec, replicas)
            .expect("renders")
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(kinds(1), ["ConfigMap", "Workspace"]);
    assert_eq!(kinds(3), ["ConfigMap", "InferenceSet", "Service"]);
    assert_eq!(kinds(0), ["ConfigMap", "InferenceSet", "Service"]);
    let ws = &render(&spec, 1).expect("renders")[1];
    assert_eq!(
        ws["inference"]["preset"],
        json!({"name": "Qwen/Qwen3-0.6B", "presetOptions": {"modelAccessSecret": "hf"}})
    );
    assert_eq!(ws["resource"]["instanceType"], "Standard_NC24ads_A100_v4");
    let config = &render(&spec, 1).expect("renders")[0]["data"]["inference_config.yaml"];
    let config: Value =
        serde_json::from_str(config.as_str().expect("string")).expect("json is yaml");
    assert_eq!(config["vllm"]["served-model-name"], "qwen3");
    assert_eq!(config["vllm"]["enforce-eager"], true);
    assert_eq!(config["vllm"]["max-model-len"], "8192");
}

#[test]
fn disaggregated_renders_prefill_and_decode() {
    let llmd = render(&disaggregated(BackendKind::LlmD), 2).expect("renders");
    let names: Vec<&str> = llmd
        .iter()
        .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("-prefill"))
            && names.iter().any(|n| n.ends_with("-decode")),
        "{names:?}"
    );
    let decode = llmd
        .iter()
        .find(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-decode"))
        })
        .expect("decode");
    assert_eq!(
        decode["spec"]["template"]["spec"]["initContainers"][0]["name"],
        "routing-proxy"
    );
    let prefill = llmd
        .iter()
        .find(|o| {
            o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-prefill"))
        })
        .expect("prefill");
    assert_eq!(prefill["spec"]["replicas"], 2);
    let dgd = &render(&disaggregated(BackendKind::Dynamo), 2).expect("renders")[0];
    let types: Vec<&str> = dgd["spec"]["components"]
        .as_array()
        .expect("components")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert_eq!(types, ["frontend", "decode", "prefill"]);
}

/// Each rejected combination names the field to change.
#[test]
fn rejected_combinations() {
    type Mutate = fn(&mut overseer_crds::runway::InferenceRuntimeSpec);
    let cases: Vec<(&str, BackendKind, Mutate, &str)> = vec![
        (
            "disaggregated on vllm",
            BackendKind::Vllm,
            |s| s.serving.mode = ServingMode::Disaggregated,
            "spec.serving.mode",
        ),
        (
            "disaggregated on kserve",
            BackendKind::Kserve,
            |s| s.serving.mode = ServingMode::Disaggregated,
            "spec.serving.mode",
        ),
        (
            "disaggregated on kaito",
            BackendKind::Kaito,
            |s| s.serving.mode = ServingMode::Disaggregated,
            "spec.serving.mode",
        ),
        (
            "cpu on kaito",
            BackendKind::Kaito,
            |s| {
                s.profile = Profile::Cpu;
                s.resources.accelerator = None;
            },
            "spec.profile",
        ),
        (
            "cpu on llm-d",
            BackendKind::LlmD,
            |s| {
                s.profile = Profile::Cpu;
                s.resources.accelerator = None;
            },
            "spec.profile",
        ),
        (
            "cpu on dynamo",
            BackendKind::Dynamo,
            |s| {
                s.profile = Profile::Cpu;
                s.resources.accelerator = None;
            },
            "spec.profile",
        ),
        (
            "cpu with accelerator",
            BackendKind::Vllm,
            |s| s.profile = Profile::Cpu,
            "spec.resources.accelerator",
        ),
        (
            "gpu without accelerator",
            BackendKind::Vllm,
            |s| s.resources.accelerator = None,
            "spec.resources.accelerator",
        ),
        (
            "kaito pvc model",
            BackendKind::Kaito,
            |s| s.model.uri = "pvc://models/x".into(),
            "spec.model.uri",
        ),
        (
            "kaito without node choice",
            BackendKind::Kaito,
            |s| {
                s.resources.accelerator = Some(Accelerator {
                    count: 1,
                    ..Default::default()
                });
                s.placement = None;
            },
            "spec.resources.accelerator",
        ),
        (
            "kaito token key",
            BackendKind::Kaito,
            |s| {
                s.model.token_secret_ref = Some(SecretKeyRef {
                    name: "hf".into(),
                    key: "token".into(),
                })
            },
            "spec.model.tokenSecretRef.key",
        ),
        (
            "kaito env",
            BackendKind::Kaito,
            |s| {
                s.engine.env = vec![EnvVar {
                    name: "A".into(),
                    value: Some("1".into()),
                    value_from: None,
                }]
            },
            "spec.engine.env",
        ),
        (
            "kaito image",
            BackendKind::Kaito,
            |s| s.engine.image = Some("x/y:1".into()),
            "spec.engine.image",
        ),
        (
            "kaito tolerations",
            BackendKind::Kaito,
            |s| {
                s.placement = Some(Placement {
                    tolerations: vec![Default::default()],
                    ..Default::default()
                })
            },
            "spec.placement.tolerations",
        ),
        (
            "preset on vllm",
            BackendKind::Vllm,
            |s| s.model.uri = "preset://phi-4".into(),
            "spec.model.uri",
        ),
        (
            "preset on dynamo",
            BackendKind::Dynamo,
            |s| s.model.uri = "preset://phi-4".into(),
            "spec.model.uri",
        ),
        (
            "unknown scheme",
            BackendKind::Vllm,
            |s| s.model.uri = "s3://bucket/model".into(),
            "spec.model.uri",
        ),
        (
            "no served name derivable",
            BackendKind::LlmD,
            |s| {
                s.model.uri = "hf://".into();
                s.model.served_name = None;
            },
            "spec.model.servedName",
        ),
        (
            "reserved arg",
            BackendKind::Vllm,
            |s| {
                s.engine.args.insert("port".into(), "9000".into());
            },
            "spec.engine.args.port",
        ),
        (
            "reserved arg, underscore spelling",
            BackendKind::Kserve,
            |s| {
                s.engine.args.insert("served_model_name".into(), "x".into());
            },
            "spec.engine.args.served_model_name",
        ),
        (
            "arg with dashes",
            BackendKind::Vllm,
            |s| {
                s.engine.args.insert("--max-model-len".into(), "1".into());
            },
            "spec.engine.args.--max-model-len",
        ),
        (
            "duplicate env",
            BackendKind::Vllm,
            |s| s.engine.env.push(s.engine.env[0].clone()),
            "spec.engine.env[1].name",
        ),
        (
            "HF_TOKEN twice",
            BackendKind::Dynamo,
            |s| {
                s.engine.env.push(EnvVar {
                    name: "HF_TOKEN".into(),
                    value: Some("x".into()),
                    value_from: None,
                })
            },
            "spec.engine.env[1].name",
        ),
        (
            "prefill replicas when aggregated",
            BackendKind::LlmD,
            |s| s.serving.prefill_replicas = Some(2),
            "spec.serving.prefillReplicas",
        ),
        (
            "zero accelerators",
            BackendKind::Dynamo,
            |s| {
                if let Some(a) = s.resources.accelerator.as_mut() {
                    a.count = 0;
                }
            },
            "spec.resources.accelerator.count",
        ),
    ];
    for (label, backend, mutate, field) in cases {
        let mut spec = gpu(backend);
        mutate(&mut spec);
        let issues = backend_for(backend).validate(&spec).expect_err(label);
        assert!(
            issues.iter().any(|i| i.field == field),
            "{label}: wanted {field}, got {issues:?}"
        );
        assert!(issues.iter().all(|i| !i.message.is_empty()));
        // render refuses the same spec with the same issues, and never panics.
        match render(&spec, 1) {
            Err(RenderError::Invalid(render_issues)) => {
                assert_eq!(render_issues, issues, "{label}")
            }
            other => panic!("{label}: render gave {other:?}"),
        }
    }
    // The sample specs themselves are valid on their backend.
    for backend in ALL {
        assert_eq!(
            backend_for(backend).validate(&gpu(backend)),
            Ok(()),
            "{backend:?}"
        );
    }
}

#[test]
fn bad_names_are_errors_not_panics() {
    let spec = gpu(BackendKind::Vllm);
    let owner = owner();
    let minted = Minted {
        hash: revision_hash(&spec),
        name: "Not_A_Label".into(),
    };
    let err = backend_for(BackendKind::Vllm)
        .render(&input(&spec, &minted, 1, &owner))
        .expect_err("bad name");
    assert_eq!(err.metric_label(), "invalid_name");
    let target = backend_for(BackendKind::Vllm).endpoint(&input(&spec, &mint(&spec), 1, &owner));
    assert!(endpoint::endpoint_service("my.runtime", NAMESPACE, &spec, &target, None).is_err());
    assert!(endpoint::endpoint_service(&"a".repeat(64), NAMESPACE, &spec, &target, None).is_err());
}

#[test]
fn endpoint_service_keeps_name_and_port_and_selects_the_revision() {
    let owner = owner();
    for backend in ALL {
        let mut spec = gpu(backend);
        spec.endpoint.port = Some(9000);
        let minted = mint(&spec);
        let input = input(&spec, &minted, 1, &owner);
        let target = backend_for(backend).endpoint(&input);
        let svc = endpoint::endpoint_service(RUNTIME, NAMESPACE, &spec, &target, Some(&owner))
            .expect("service");
        assert_eq!(svc["metadata"]["name"], RUNTIME);
        assert_eq!(svc["spec"]["ports"][0]["port"], 9000);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], target.port);
        assert!(
            target.pod_selector.values().any(|v| v == &minted.name),
            "{backend:?}: {target:?}"
        );
    }
    assert_eq!(
        endpoint::endpoint_url("qwen3", "team-a", &gpu(BackendKind::Vllm)),
        "http://qwen3.team-a.svc:8000/v1"
    );
}

#[test]
fn canary_weights_follow_the_steps() {
    let strategy = SwitchStrategy {
        type_: SwitchType::Canary,
        canary_steps: Some(vec![
            CanaryStep {
                weight: 10,
                pause: "10m".parse().expect("duration"),
            },
            CanaryStep {
                weight: 50,
                pause: "10m".parse().expect("duration"),
            },
        ]),
        ..Default::default()
    };
    assert_eq!(endpoint::canary_weight(&strategy, 0), Some(10));
    assert_eq!(endpoint::canary_weight(&strategy, 1), Some(50));
    assert_eq!(endpoint::canary_weight(&strategy, 2), None);
    assert_eq!(endpoint::canary_weight(&SwitchStrategy::default(), 0), None);
    assert_eq!(endpoint::split(Some(10), false), [90, 10]);
    assert_eq!(endpoint::split(None, false), [100, 0]);
    assert_eq!(endpoint::split(Some(10), true), [0, 100]);
}

#[test]
fn required_apis_name_what_to_install() {
    assert!(backend_for(BackendKind::Vllm).required_apis().is_empty());
    for (backend, kind) in [
        (BackendKind::Kaito, "Workspace"),
        (BackendKind::LlmD, "InferencePool"),
        (BackendKind::Dynamo, "DynamoGraphDeployment"),
        (BackendKind::Kserve, "InferenceService"),
    ] {
        let apis = backend_for(backend).required_apis();
        assert!(
            apis.iter()
                .any(|a| a.kind == kind && a.install_hint.starts_with("install")),
            "{backend:?}: {apis:?}"
        );
        // Every kind the backend renders that is not built in is listed.
        for obj in render(&gpu(backend), 1).expect("renders") {
            let (api_version, kind) = (
                obj["apiVersion"].as_str().unwrap_or_default(),
                obj["kind"].as_str().unwrap_or_default(),
            );
            let builtin = matches!(
                api_version,
                "v1" | "apps/v1" | "rbac.authorization.k8s.io/v1"
            );
            assert!(
                builtin
                    || apis
                        .iter()
                        .any(|a| a.kind == kind
                            && api_version == format!("{}/{}", a.group, a.version)),
                "{backend:?} renders {api_version} {kind}"
            );
        }
    }
}

// ---- readiness judgement from sample statuses ----

fn judge(
    backend: BackendKind,
    spec: &overseer_crds::runway::InferenceRuntimeSpec,
    replicas: i32,
    live: &[Value],
) -> RevisionReadiness {
    let owner = owner();
    let minted = mint(spec);
    backend_for(backend).readiness(&input(spec, &minted, replicas, &owner), live)
}

fn with_status(mut obj: Value, generation: i64, status: Value) -> Value {
    obj["metadata"]["generation"] = json!(generation);
    obj["status"] = status;
    obj
}

#[test]
fn vllm_readiness_from_deployment_status() {
    let spec = gpu(BackendKind::Vllm);
    let objects = render(&spec, 2).expect("renders");
    let dep = objects[0].clone();
    let missing = judge(BackendKind::Vllm, &spec, 2, &[]);
    assert!(
        !missing.ready && missing.message.contains("waiting for Deployment"),
        "{missing:?}"
    );
    let partial = judge(
        BackendKind::Vllm,
        &spec,
        2,
        &[with_status(
            dep.clone(),
            1,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
        )],
    );
    assert_eq!(
        (partial.ready, partial.replicas, partial.ready_replicas),
        (false, 2, 1),
        "{partial:?}"
    );
    let stale = judge(
        BackendKind::Vllm,
        &spec,
        2,
        &[with_status(
            dep.clone(),
            2,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        )],
    );
    assert!(!stale.ready, "{stale:?}");
    let rolling = judge(
        BackendKind::Vllm,
        &spec,
        2,
        &[with_status(
            dep.clone(),
            1,
            json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2}),
        )],
    );
    assert!(!rolling.ready, "{rolling:?}");
    let ready = judge(
        BackendKind::Vllm,
        &spec,
        2,
        &[with_status(
            dep.clone(),
            1,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
        )],
    );
    assert_eq!(
        (ready.ready, ready.failed, ready.ready_replicas),
        (true, false, 2),
        "{ready:?}"
    );
    let failed = judge(
        BackendKind::Vllm,
        &spec,
        2,
        &[with_status(
            dep,
            1,
            json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 0,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet has timed out"}]}),
        )],
    );
    assert!(failed.failed && !failed.ready, "{failed:?}");
}

#[test]
fn kaito_readiness_from_workspace_conditions_and_inferenceset_replicas() {
    let spec = gpu(BackendKind::Kaito);
    let ws = render(&spec, 1).expect("renders")[1].clone();
    let cond = |t: &str, s: &str, r: &str| json!({"type": t, "status": s, "reason": r, "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let provisioning = judge(
        BackendKind::Kaito,
        &spec,
        1,
        &[with_status(
            ws.clone(),
            1,
            json!({"conditions": [cond("ResourceReady", "False", "NodeClaimNotReady")]}),
        )],
    );
    assert!(
        !provisioning.ready && provisioning.message.contains("NodeClaimNotReady"),
        "{provisioning:?}"
    );
    let ready = judge(
        BackendKind::Kaito,
        &spec,
        1,
        &[with_status(
            ws,
            1,
            json!({"conditions": [cond("ResourceReady", "True", "ok"), cond("InferenceReady", "True", "ok"), cond("WorkspaceSucceeded", "True", "ok")]}),
        )],
    );
    assert_eq!(
        (ready.ready, ready.replicas, ready.ready_replicas),
        (true, 1, 1),
        "{ready:?}"
    );
    let set = render(&spec, 3).expect("renders")[1].clone();
    let two = judge(
        BackendKind::Kaito,
        &spec,
        3,
        &[with_status(
            set.clone(),
            1,
            json!({"readyReplicas": 2, "replicas": 3}),
        )],
    );
    assert_eq!((two.ready, two.ready_replicas), (false, 2));
    let three = judge(
        BackendKind::Kaito,
        &spec,
        3,
        &[with_status(
            set,
            1,
            json!({"readyReplicas": 3, "replicas": 3}),
        )],
    );
    assert!(three.ready, "{three:?}");
}

#[test]
fn kserve_readiness_from_ready_condition() {
    let spec = gpu(BackendKind::Kserve);
    let isvc = render(&spec, 2).expect("renders")[0].clone();
    let not_ready = judge(
        BackendKind::Kserve,
        &spec,
        2,
        &[with_status(
            isvc.clone(),
            1,
            json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False", "reason": "PredictorNotReady"}]}),
        )],
    );
    assert!(
        !not_ready.ready && not_ready.message.contains("PredictorNotReady"),
        "{not_ready:?}"
    );
    let failed = judge(
        BackendKind::Kserve,
        &spec,
        2,
        &[with_status(
            isvc.clone(),
            1,
            json!({"observedGeneration": 1, "modelStatus": {"states": {"targetModelState": "FailedToLoad"}}}),
        )],
    );
    assert!(failed.failed, "{failed:?}");
    let ready = judge(
        BackendKind::Kserve,
        &spec,
        2,
        &[with_status(
            isvc,
            1,
            json!({"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}),
        )],
    );
    assert_eq!((ready.ready, ready.ready_replicas), (true, 2), "{ready:?}");
}

#[test]
fn dynamo_readiness_from_state_and_component_replicas() {
    let spec = gpu(BackendKind::Dynamo);
    let dgd = render(&spec, 2).expect("renders")[0].clone();
    let pending = judge(
        BackendKind::Dynamo,
        &spec,
        2,
        &[with_status(
            dgd.clone(),
            1,
            json!({"observedGeneration": 1, "state": "pending", "components": {"worker": {"readyReplicas": 1}}}),
        )],
    );
    assert_eq!(
        (pending.ready, pending.ready_replicas),
        (false, 1),
        "{pending:?}"
    );
    let failed = judge(
        BackendKind::Dynamo,
        &spec,
        2,
        &[with_status(
            dgd.clone(),
            1,
            json!({"observedGeneration": 1, "state": "failed"}),
        )],
    );
    assert!(failed.failed && !failed.ready, "{failed:?}");
    let ready = judge(
        BackendKind::Dynamo,
        &spec,
        2,
        &[with_status(
            dgd,
            1,
            json!({"observedGeneration": 1, "state": "successful", "components": {"worker": {"readyReplicas": 2}}}),
        )],
    );
    assert_eq!((ready.ready, ready.ready_replicas), (true, 2), "{ready:?}");
}

#[test]
fn llmd_readiness_needs_every_deployment_and_an_unrefused_pool() {
    let spec = gpu(BackendKind::LlmD);
    let objects = render(&spec, 2).expect("renders");
    let available = |o: &Value| {
        let n = o["spec"]["replicas"].clone();
        with_status(
            o.clone(),
            1,
            json!({"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "availableReplicas": n}),
        )
    };
    let mut live: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(available)
        .collect();
    let pool = objects
        .iter()
        .find(|o| o["kind"] == "InferencePool")
        .expect("pool")
        .clone();
    let no_pool = judge(BackendKind::LlmD, &spec, 2, &live);
    assert!(
        !no_pool.ready && no_pool.message.contains("InferencePool"),
        "{no_pool:?}"
    );
    live.push(with_status(pool.clone(), 1, json!({"parents": [{"parentRef": {"name": "gw"}, "conditions": [{"type": "Accepted", "status": "False", "reason": "NotSupported", "message": "no"}]}]})));
    let refused = judge(BackendKind::LlmD, &spec, 2, &live);
    assert!(
        !refused.ready && refused.message.contains("Accepted=False"),
        "{refused:?}"
    );
    live.pop();
    live.push(pool);
    let ready = judge(BackendKind::LlmD, &spec, 2, &live);
    assert_eq!(
        (ready.ready, ready.replicas, ready.ready_replicas),
        (true, 2, 2),
        "{ready:?}"
    );
    // Without the endpoint picker the revision is not ready.
    live.retain(|o| {
        !o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with("-epp"))
    });
    assert!(!judge(BackendKind::LlmD, &spec, 2, &live).ready);
}

#[test]
fn garbage_status_never_panics() {
    for backend in ALL {
        let spec = gpu(backend);
        for obj in render(&spec, 2).expect("renders") {
            for status in [
                json!(null),
                json!("x"),
                json!({"conditions": "no", "readyReplicas": "3", "state": 5, "parents": [1]}),
            ] {
                let r = judge(backend, &spec, 2, &[with_status(obj.clone(), 1, status)]);
                assert!(!r.ready, "{backend:?}: {r:?}");
            }
        }
    }
}
