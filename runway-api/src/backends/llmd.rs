//! `llm-d`: model-server Deployments behind a Gateway API Inference Extension `InferencePool`
//! and its endpoint picker, rendered directly (what llm-d's Helm charts would install).

use std::collections::BTreeMap;

use overseer_crds::runway::{BackendKind, InferenceRuntimeSpec, ServingMode};
use serde_json::{Map, Value, json};

use crate::{
    Backend, EndpointTarget, RenderError, RenderInput, RequiredApi, RevisionReadiness,
    RouteBackend, ValidationIssue,
    backend::{finish, refuse_preset, require_gpu, validate_spec},
    meta::{
        REVISION_LABEL, RUNTIME_LABEL, label_value, object, object_meta, pod_labels,
        revision_labels, selector_json,
    },
    pod::{self, VLLM_PORT},
    readiness::{self, Part},
};

/// API version of the InferencePool.
const POOL_API_VERSION: &str = "inference.networking.k8s.io/v1";
/// The llm-d vLLM image (CUDA), pinned.
pub const LLMD_IMAGE: &str = "ghcr.io/llm-d/llm-d-cuda:v0.4.0";
/// The llm-d inference scheduler (an endpoint picker built on the GAIE framework), pinned.
pub const EPP_IMAGE: &str = "ghcr.io/llm-d/llm-d-inference-scheduler:v0.4.0";
/// The llm-d routing sidecar of decode pods in Disaggregated mode, pinned.
pub const ROUTING_SIDECAR_IMAGE: &str = "ghcr.io/llm-d/llm-d-routing-sidecar:v0.4.0";
/// Port vLLM listens on behind the routing sidecar of a decode pod.
const DECODE_VLLM_PORT: i32 = 8200;
/// ext-proc gRPC port of the endpoint picker.
const EPP_GRPC_PORT: i32 = 9002;
/// gRPC health port of the endpoint picker.
const EPP_HEALTH_PORT: i32 = 9003;
/// Metrics port of the endpoint picker.
const EPP_METRICS_PORT: i32 = 9090;
/// NIXL KV transfer between prefill and decode workers.
const KV_TRANSFER_CONFIG: &str = r#"{"kv_connector":"NixlConnector","kv_role":"kv_both"}"#;

/// Endpoint picker configuration for one model server role.
const EPP_CONFIG_AGGREGATED: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: kv-cache-utilization-scorer
    weight: 1
  - pluginRef: prefix-cache-scorer
    weight: 1
  - pluginRef: max-score-picker
";

/// Endpoint picker configuration for prefill/decode disaggregation.
const EPP_CONFIG_DISAGGREGATED: &str = "apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: prefill-header-handler
- type: prefill-filter
- type: decode-filter
- type: queue-scorer
- type: max-score-picker
- type: pd-profile-handler
  parameters:
    threshold: 0
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: queue-scorer
    weight: 1
  - pluginRef: max-score-picker
";

/// The `llm-d` backend.
///
/// Renders, per revision: decode model servers (`<rev>-decode`, vLLM from the llm-d image) and,
/// for `Disaggregated`, prefill servers (`<rev>-prefill`) with NIXL KV transfer and llm-d's
/// routing sidecar in front of decode; an `InferencePool` (`inference.networking.k8s.io/v1`)
/// named after the revision selecting both; and its endpoint picker (llm-d's inference
/// scheduler: ServiceAccount, Role, RoleBinding, Deployment and Service `<rev>-epp`). The
/// stable Service reaches the decode pods directly on port 8000; an `HTTPRoute` reaches the pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlmD;

fn disaggregated(spec: &InferenceRuntimeSpec) -> bool {
    spec.serving.mode == ServingMode::Disaggregated
}

fn epp_name(revision: &str) -> String {
    format!("{revision}-epp")
}

/// Labels the pool selects model servers by.
fn pool_selector(input: &RenderInput<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUNTIME_LABEL.to_string(), label_value(input.runtime_name)),
        (REVISION_LABEL.to_string(), input.revision_name.to_string()),
        ("llm-d.ai/inferenceServing".to_string(), "true".to_string()),
    ])
}

/// A model server Deployment for `role` (`decode` or `prefill`).
fn model_server(input: &RenderInput<'_>, role: &str, replicas: i32) -> Value {
    let spec = input.spec;
    let image = spec
        .engine
        .image
        .clone()
        .unwrap_or_else(|| LLMD_IMAGE.to_string());
    let (volumes, mounts) = pod::volumes(spec);
    let pd = disaggregated(spec);
    let sidecar = pd && role == "decode";
    let vllm_port = if sidecar { DECODE_VLLM_PORT } else { VLLM_PORT };
    let extra: &[&str] = if pd {
        &["--kv-transfer-config", KV_TRANSFER_CONFIG]
    } else {
        &[]
    };
    let container = pod::vllm_container(
        spec,
        "vllm",
        &image,
        vllm_port,
        pod::vllm_args(spec, vllm_port, extra),
        &mounts,
        true,
    );
    let mut pod_spec = Map::new();
    if sidecar {
        pod_spec.insert(
            "initContainers".into(),
            json!([{
                "name": "routing-proxy",
                "image": ROUTING_SIDECAR_IMAGE,
                "restartPolicy": "Always",
                "args": [
                    format!("--port={VLLM_PORT}"),
                    format!("--vllm-port={DECODE_VLLM_PORT}"),
                    "--connector=nixlv2",
                    "--secure-proxy=false",
                ],
                "ports": [{"name": "http", "containerPort": VLLM_PORT, "protocol": "TCP"}],
            }]),
        );
    }
    pod_spec.insert("containers".into(), Value::Array(vec![container]));
    if !volumes.is_empty() {
        pod_spec.insert("volumes".into(), Value::Array(volumes));
    }
    pod::add_placement(spec, &mut pod_spec);
    let selector = revision_labels(input.runtime_name, input.revision_name, role);
    pod::deployment(
        input,
        &format!("{}-{role}", input.revision_name),
        role,
        replicas,
        &selector,
        pod_labels(
            input,
            role,
            &[
                ("llm-d.ai/inferenceServing", "true"),
                ("llm-d.ai/role", role),
            ],
        ),
        pod_spec,
    )
}

/// The endpoint picker's ServiceAccount, Role, RoleBinding, Deployment and Service.
fn endpoint_picker(input: &RenderInput<'_>, replicas: i32) -> [Value; 5] {
    let name = epp_name(input.revision_name);
    let meta = || object_meta(input, &name, Some("epp"));
    let config = if disaggregated(input.spec) {
        EPP_CONFIG_DISAGGREGATED
    } else {
        EPP_CONFIG_AGGREGATED
    };
    let selector = revision_labels(input.runtime_name, input.revision_name, "epp");
    let health = json!({"grpc": {"port": EPP_HEALTH_PORT, "service": "inference-extension"}, "periodSeconds": 10});
    let container = json!({
        "name": "epp",
        "image": EPP_IMAGE,
        "args": [
            "--pool-name", input.revision_name,
            "--pool-namespace", input.namespace,
            "--pool-group", "inference.networking.k8s.io",
            "--zap-encoder", "json",
            "--grpc-port", EPP_GRPC_PORT.to_string(),
            "--grpc-health-port", EPP_HEALTH_PORT.to_string(),
            "--metrics-port", EPP_METRICS_PORT.to_string(),
            "--config-text", config,
        ],
        "ports": [
            {"name": "grpc", "containerPort": EPP_GRPC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": EPP_HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": EPP_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": health,
        "livenessProbe": health,
    });
    let mut pod_spec = Map::new();
    pod_spec.insert("serviceAccountName".into(), name.clone().into());
    pod_spec.insert("containers".into(), Value::Array(vec![container]));
    let read = json!(["get", "list", "watch"]);
    [
        object("v1", "ServiceAccount", meta(), []),
        object(
            "rbac.authorization.k8s.io/v1",
            "Role",
            meta(),
            [(
                "rules",
                json!([
                    {"apiGroups": [""], "resources": ["pods"], "verbs": read},
                    {"apiGroups": ["inference.networking.k8s.io"], "resources": ["inferencepools"], "verbs": read},
                    {"apiGroups": ["inference.networking.x-k8s.io", "llm-d.ai"], "resources": ["inferenceobjectives", "inferencemodelrewrites"], "verbs": read},
                ]),
            )],
        ),
        object(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            meta(),
            [
                (
                    "roleRef",
                    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}),
                ),
                (
                    "subjects",
                    json!([{"kind": "ServiceAccount", "name": name, "namespace": input.namespace}]),
                ),
            ],
        ),
        pod::deployment(
            input,
            &name,
            "epp",
            replicas,
            &selector,
            pod_labels(input, "epp", &[]),
            pod_spec,
        ),
        pod::service(
            input,
            &name,
            "epp",
            &selector,
            json!([
                {"name": "grpc-ext-proc", "port": EPP_GRPC_PORT, "targetPort": EPP_GRPC_PORT, "protocol": "TCP", "appProtocol": "http2"},
                {"name": "http-metrics", "port": EPP_METRICS_PORT, "targetPort": EPP_METRICS_PORT, "protocol": "TCP"},
            ]),
        ),
    ]
}

fn prefill_replicas(input: &RenderInput<'_>) -> i32 {
    if input.replicas() == 0 {
        0
    } else {
        input.spec.serving.prefill_replicas.unwrap_or(1).max(1)
    }
}

impl Backend for LlmD {
    fn kind(&self) -> BackendKind {
        BackendKind::LlmD
    }

    fn validate(&self, spec: &InferenceRuntimeSpec) -> Result<(), Vec<ValidationIssue>> {
        let mut own = Vec::new();
        require_gpu(spec, "llm-d", &mut own);
        refuse_preset(spec, "llm-d", &mut own);
        finish(validate_spec(spec), own)
    }

    fn render(&self, input: &RenderInput<'_>) -> Result<Vec<Value>, RenderError> {
        input.check_names()?;
        self.validate(input.spec).map_err(RenderError::Invalid)?;
        let replicas = input.replicas();
        let mut objects: Vec<Value> = endpoint_picker(input, i32::from(replicas > 0)).into();
        objects.push(model_server(input, "decode", replicas));
        if disaggregated(input.spec) {
            objects.push(model_server(input, "prefill", prefill_replicas(input)));
        }
        objects.push(object(
            POOL_API_VERSION,
            "InferencePool",
            object_meta(input, input.revision_name, None),
            [(
                "spec",
                json!({
                    "selector": {"matchLabels": selector_json(&pool_selector(input))},
                    "targetPorts": [{"number": VLLM_PORT}],
                    "endpointPickerRef": {
                        "name": epp_name(input.revision_name),
                        "port": {"number": EPP_GRPC_PORT},
                        "failureMode": "FailOpen",
                    },
                }),
            )],
        ));
        Ok(objects)
    }

    fn readiness(&self, input: &RenderInput<'_>, live: &[Value]) -> RevisionReadiness {
        let rev = input.revision_name;
        let mut parts = vec![readiness::deployment(
            live,
            &format!("{rev}-decode"),
            input.replicas(),
        )];
        if disaggregated(input.spec) {
            parts.push(readiness::deployment(
                live,
                &format!("{rev}-prefill"),
                prefill_replicas(input),
            ));
        }
        parts.push(readiness::deployment(
            live,
            &epp_name(rev),
            i32::from(input.replicas() > 0),
        ));
        parts.push(match readiness::find(live, "InferencePool", rev) {
            None => Part::missing("InferencePool", rev, 0),
            Some(pool) => inference_pool(pool, rev),
        });
        readiness::combine(parts, 0)
    }

    fn endpoint(&self, input: &RenderInput<'_>) -> EndpointTarget {
        EndpointTarget {
            pod_selector: revision_labels(input.runtime_name, input.revision_name, "decode"),
            port: VLLM_PORT,
        }
    }

    fn route_backend(&self, input: &RenderInput<'_>) -> RouteBackend {
        RouteBackend {
            group: "inference.networking.k8s.io".into(),
            kind: "InferencePool".into(),
            name: input.revision_name.to_string(),
            port: None,
        }
    }

    fn required_apis(&self) -> Vec<RequiredApi> {
        vec![RequiredApi {
            group: "inference.networking.k8s.io",
            version: "v1",
            kind: "InferencePool",
            plural: "inferencepools",
            install_hint: "install the Gateway API Inference Extension CRDs v1.0 or later (the manifests.yaml of a release of https://github.com/kubernetes-sigs/gateway-api-inference-extension)",
        }]
    }
}

/// An InferencePool is usable unless a Gateway that references it refused it (any parent
/// condition `False`); with no parents yet it is usable through the stable Service.
fn inference_pool(pool: &Value, name: &str) -> Part {
    let refused = pool
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p.get("conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|c| c.get("status").and_then(Value::as_str) == Some("False"));
    match refused {
        Some(c) => Part {
            ready: false,
            failed: false,
            desired: 0,
            ready_replicas: 0,
            message: format!(
                "InferencePool {name}: {}=False {}: {}",
                c.get("type").and_then(Value::as_str).unwrap_or("?"),
                c.get("reason").and_then(Value::as_str).unwrap_or(""),
                c.get("message").and_then(Value::as_str).unwrap_or("")
            ),
        },
        None => Part {
            ready: true,
            failed: false,
            desired: 0,
            ready_replicas: 0,
            message: format!("InferencePool {name} accepted"),
        },
    }
}
