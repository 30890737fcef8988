//! `dynamo`: an NVIDIA Dynamo `DynamoGraphDeployment` (`nvidia.com/v1beta1`).

use std::collections::BTreeMap;

use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec, ServingMode};
use serde_json::{Map, Value, json};

use crate::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue,
    backend::{finish, refuse_preset, require_gpu, validate_spec},
    meta::{map, object, object_meta, pod_labels},
    model::ModelSource,
    pod::{self, MODEL_MOUNT, VLLM_PORT},
    readiness::{self, Part},
};

/// API version rendered: v1beta1 is the storage version; v1alpha1 is deprecated and needs the
/// Dynamo conversion webhook.
const API_VERSION: &str = "nvidia.com/v1beta1";
/// Dynamo's vLLM runtime image, pinned (a semantic-version tag, so the operator can infer the
/// runtime version without `runtimeVersionOverride`).
pub const DYNAMO_VLLM_IMAGE: &str = "nvcr.io/nvidia/ai-dynamo/vllm-runtime:1.3.0";
/// Label Dynamo puts on every pod of a graph.
const GRAPH_LABEL: &str = "nvidia.com/dynamo-graph-deployment-name";
/// Label Dynamo puts on a pod naming its component type.
const COMPONENT_TYPE_LABEL: &str = "nvidia.com/dynamo-component-type";
/// NIXL KV transfer between prefill and decode workers.
const KV_TRANSFER_CONFIG: &str = r#"{"kv_connector":"NixlConnector","kv_role":"kv_both"}"#;

/// The `dynamo` backend: one `DynamoGraphDeployment` named after the revision, with a
/// `frontend` component (Dynamo's OpenAI HTTP server on port 8000) and vLLM workers — one
/// `worker` component (`Aggregated`) or `decode` and `prefill` components (`Disaggregated`,
/// NIXL KV transfer). The Dynamo operator creates the Deployments and the frontend Service
/// `<rev>-frontend`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dynamo;

fn disaggregated(spec: &InferenceRuntimeSpec) -> bool {
    spec.serving.mode == ServingMode::Disaggregated
}

/// The component whose replicas are the revision's replicas.
fn serving_component(spec: &InferenceRuntimeSpec) -> &'static str {
    if disaggregated(spec) {
        "decode"
    } else {
        "worker"
    }
}

/// Arguments of `python3 -m dynamo.vllm`: the model, its served name, the role's flags, the
/// user's args in sorted order. Dynamo workers take vLLM's engine arguments.
fn worker_args(spec: &InferenceRuntimeSpec, role: &str) -> Vec<String> {
    let model = ModelSource::parse(&spec.model.uri)
        .map(|m| m.server_model_arg(MODEL_MOUNT))
        .unwrap_or_else(|_| spec.model.uri.clone());
    let mut args = vec![
        "--model".to_string(),
        model,
        "--served-model-name".to_string(),
        pod::served(spec),
    ];
    if disaggregated(spec) {
        if role == "prefill" {
            args.push("--is-prefill-worker".into());
        }
        args.push("--kv-transfer-config".into());
        args.push(KV_TRANSFER_CONFIG.into());
    }
    args.extend(pod::user_args(spec));
    args
}

fn component(input: &RenderInput<'_>, role: &str, replicas: i32) -> Value {
    let spec = input.spec;
    let image = spec
        .engine
        .image
        .clone()
        .unwrap_or_else(|| DYNAMO_VLLM_IMAGE.to_string());
    let mut main = Map::new();
    main.insert("name".into(), "main".into());
    main.insert("image".into(), image.into());
    let mut pod_spec = Map::new();
    if role == "frontend" {
        main.insert(
            "command".into(),
            json!(["python3", "-m", "dynamo.frontend"]),
        );
        main.insert("args".into(), json!(["--http-port", VLLM_PORT.to_string()]));
        main.insert(
            "ports".into(),
            json!([{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}]),
        );
    } else {
        let (volumes, mounts) = pod::volumes(spec);
        main.insert("command".into(), json!(["python3", "-m", "dynamo.vllm"]));
        main.insert("args".into(), json!(worker_args(spec, role)));
        let env = pod::env(spec);
        if !env.is_empty() {
            main.insert("env".into(), Value::Array(env));
        }
        main.insert("resources".into(), pod::resources(spec));
        if !mounts.is_empty() {
            main.insert("volumeMounts".into(), Value::Array(mounts));
        }
        if !volumes.is_empty() {
            pod_spec.insert("volumes".into(), Value::Array(volumes));
        }
        pod::add_placement(spec, &mut pod_spec);
    }
    pod_spec.insert("containers".into(), Value::Array(vec![Value::Object(main)]));
    map([
        ("name", role.into()),
        ("type", role.into()),
        ("replicas", replicas.into()),
        (
            "podTemplate",
            map([
                ("metadata", map([("labels", pod_labels(input, role, &[]))])),
                ("spec", Value::Object(pod_spec)),
            ]),
        ),
    ])
}

fn prefill_replicas(input: &RenderInput<'_>) -> i32 {
    if input.replicas() == 0 {
        0
    } else {
        input.spec.serving.prefill_replicas.unwrap_or(1).max(1)
    }
}

impl Backend for Dynamo {
    fn kind(&self) -> BackendKind {
        BackendKind::Dynamo
    }

    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>> {
        let mut own = Vec::new();
        require_gpu(spec, "dynamo", &mut own);
        refuse_preset(spec, "dynamo", &mut own);
        finish(validate_spec(spec), own)
    }

    fn render(&self, input: &RenderInput<'_>) -> Result<Vec<Value>, RenderError> {
        input.check_names()?;
        self.validate(input.spec).map_err(RenderError::Invalid)?;
        let replicas = input.replicas();
        let mut components = vec![component(input, "frontend", i32::from(replicas > 0))];
        if disaggregated(input.spec) {
            components.push(component(input, "decode", replicas));
            components.push(component(input, "prefill", prefill_replicas(input)));
        } else {
            components.push(component(input, "worker", replicas));
        }
        Ok(vec![object(
            API_VERSION,
            "DynamoGraphDeployment",
            object_meta(input, input.revision_name, None),
            [(
                "spec",
                map([
                    ("backendFramework", "vllm".into()),
                    ("components", Value::Array(components)),
                ]),
            )],
        )])
    }

    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness {
        let name = input.revision_name;
        let desired = input.replicas();
        let part = match readiness::find(live, "DynamoGraphDeployment", name) {
            None => Part::missing("DynamoGraphDeployment", name, desired),
            Some(dgd) => {
                let state = dgd
                    .pointer("/status/state")
                    .and_then(Value::as_str)
                    .unwrap_or("initializing");
                let serving = serving_component(input.spec);
                let ready_replicas =
                    readiness::int32(dgd, &format!("/status/components/{serving}/readyReplicas"));
                let observed = readiness::generation_observed(dgd);
                let ready =
                    state == "successful" && observed && desired > 0 && ready_replicas >= desired;
                let detail = readiness::condition(dgd, "Ready")
                    .filter(|(s, _, _)| *s != "True")
                    .map(|(_, reason, msg)| format!(" ({reason}: {msg})"))
                    .unwrap_or_default();
                Part {
                    ready,
                    failed: state == "failed",
                    desired,
                    ready_replicas,
                    message: format!(
                        "DynamoGraphDeployment {name}: state {state}, {serving} {ready_replicas}/{desired} ready{detail}"
                    ),
                }
            }
        };
        readiness::combine(vec![part], 0)
    }

    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget {
        EndpointTarget {
            pod_selector: BTreeMap::from([
                (GRAPH_LABEL.to_string(), input.revision_name.to_string()),
                (COMPONENT_TYPE_LABEL.to_string(), "frontend".to_string()),
            ]),
            port: VLLM_PORT,
        }
    }

    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend {
        RouteBackend {
            group: String::new(),
            kind: "Service".into(),
            name: format!("{}-frontend", input.revision_name),
            port: Some(VLLM_PORT),
        }
    }

    fn required_apis(&self) -> Vec<RequiredApi> {
        vec![RequiredApi {
            group: "nvidia.com",
            version: "v1beta1",
            kind: "DynamoGraphDeployment",
            plural: "dynamographdeployments",
            install_hint: "install the NVIDIA Dynamo platform (the dynamo-platform Helm chart from https://github.com/ai-dynamo/dynamo), which serves nvidia.com/v1beta1 DynamoGraphDeployment",
        }]
    }
}
